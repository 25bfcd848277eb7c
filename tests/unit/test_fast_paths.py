"""The hot path's shortcuts give what the slow ways gave: answers built without
mitmproxy's debug type checks, request headers read from their raw fields, upstream
bodies encoded by orjson; and the upstream client keeps no cookies between calls."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.errors import error_response, make_response
from addons.llm_request import header_dict, parse_json
from addons.upstream import Timeouts, Upstream
from providers.base import ProviderError, UpstreamRequest, json_body


def _state(response: http.Response) -> dict:
    state = response.get_state()
    del state["timestamp_start"], state["timestamp_end"]
    return state


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (200, b'{"id": "chatcmpl-1"}', {"content-type": "application/json", "x-llm-model": "é"}),
        (404, b"", {}),
        (429, b"slow down", {"retry-after": "3", "x-llmitm-proxy-latency": "1"}),
        (599, b"x", {}),  # no reason phrase known
        (200, b"abc", {"content-encoding": "gzip"}),  # encoded: Response.make's own way
    ],
)
def test_make_response_builds_what_response_make_builds(status, body, headers):
    assert _state(make_response(status, body, headers)) == _state(
        http.Response.make(status, body, headers)
    )


def test_make_response_replaces_a_given_content_length_and_survives_a_flow_copy():
    response = make_response(200, b"hello", {"Content-Length": "99", "x-a": "1"})
    assert response.headers.get_all("content-length") == ["5"]
    assert response.content == b"hello" and response.reason == "OK"
    flow = tflow.tflow()
    flow.response = response
    copy = flow.copy()  # mitmweb's duplicate, -w: through get_state and from_state
    assert copy.response.content == b"hello" and copy.response.status_code == 200
    assert copy.response.headers["x-a"] == "1"


def test_gateway_errors_are_openai_shaped_with_their_length():
    response = error_response(413, "too large", code="request_too_large", headers={"x-a": "b"})
    assert response.status_code == 413 and response.reason == "Payload Too Large"
    assert response.headers["content-length"] == str(len(response.content))
    assert json.loads(response.content)["error"]["code"] == "request_too_large"


def test_header_dict_is_what_headers_items_gives_lower_cased():
    request = tutils.treq(
        headers=(
            (b"Host", b"example.com"),
            (b"Authorization", b"Bearer sk-1"),
            (b"X-Tag", b"a"),
            (b"x-tag", b"b"),  # a repeated name, another case
            (b"X-Raw", b"caf\xe9"),  # not UTF-8
        )
    )
    expected = {k.lower(): v for k, v in request.headers.items()}
    assert header_dict(request.headers) == expected
    assert expected["x-tag"] == "a, b"


def test_json_body_is_compact_json_and_falls_back_for_what_orjson_refuses():
    assert json_body({"model": "m", "text": "é"}) == '{"model":"m","text":"é"}'.encode()
    # an integer beyond 64 bits and a lone surrogate (both read by json.loads) survive
    body = json.loads('{"seed": 123456789012345678901234567890, "t": "\\ud800"}')
    assert json.loads(json_body(body)) == body


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_request_with_nan_is_a_400_not_json_sent_on(constant):
    with pytest.raises(ProviderError) as e:
        parse_json(f'{{"model": "m", "temperature": {constant}}}'.encode())
    assert e.value.status == 400 and e.value.code == "invalid_json"
    assert constant in e.value.message


async def test_the_upstream_client_keeps_no_cookie_between_calls():
    """A provider's load balancer sets a cookie: it must not ride on the next call, which
    may be another client's."""
    cookies: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("lb", "node-7")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream = Upstream()
    try:
        # a host name, not an IP: aiohttp's default jar keeps no cookie of an IP anyway
        url = f"http://localhost:{port}/v1/chat/completions"
        for _ in range(2):
            resp = await upstream.send(UpstreamRequest("POST", url, {}, b"{}", False), Timeouts())
            assert resp.status == 200
    finally:
        await upstream.stop()
        await runner.cleanup()
    assert cookies == [None, None]
