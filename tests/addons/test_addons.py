"""The gateway's addons in mitmproxy's test harness (no network, no subprocess)."""

from __future__ import annotations

import json

from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from addons.calls import Call
from addons.config import load_text
from addons.config_watch import ConfigWatch
from addons.router import Router, ServiceProxy
from addons.state import Gateway
from addons.streaming import StreamOwner
from providers import sse
from providers.base import ProviderError

CONFIG = """
services:
  - name: web
    url: http://backend.internal:8080/base
    routes:
      - name: plain
        paths: ["/plain"]
      - name: kept
        paths: ["/kept"]
        strip_path: false
        preserve_host: true
  - name: llm
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: mock, name: m}
"""


def _gateway() -> Gateway:
    gw = Gateway()
    gw.config = load_text(CONFIG)
    return gw


def _flow(path: str, mode: str = "reverse:http://127.0.0.1:9", host: str = "api.example.com"):
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.request.path = path
    f.request.headers["host"] = host
    return f


def test_reverse_mode_without_route_is_an_openai_404() -> None:
    gw = _gateway()
    f = _flow("/nothing-here")
    Router(gw).requestheaders(f)
    assert f.response is not None and f.response.status_code == 404
    assert json.loads(f.response.content)["error"]["code"] == "route_not_found"


def test_forward_mode_without_route_is_left_alone() -> None:
    gw = _gateway()
    f = _flow("/nothing-here", mode="regular")
    Router(gw).requestheaders(f)
    assert f.response is None and gw.calls.get(f) is None


def test_route_is_recorded_on_the_flow() -> None:
    gw = _gateway()
    f = _flow("/v1/chat/completions")
    Router(gw).requestheaders(f)
    assert f.metadata["llmitm.route"] == "chat"
    assert gw.calls.get(f).route.name == "chat"


def test_plain_route_is_proxied_to_its_service_url() -> None:
    gw = _gateway()
    f = _flow("/plain/items?x=1")
    Router(gw).requestheaders(f)
    ServiceProxy(gw).request(f)
    assert f.request.url == "http://backend.internal:8080/base/items?x=1"
    assert f.request.host_header == "backend.internal:8080"


def test_preserve_host_and_no_strip_path() -> None:
    gw = _gateway()
    f = _flow("/kept/a", host="public.example.com")
    Router(gw).requestheaders(f)
    ServiceProxy(gw).request(f)
    assert f.request.url == "http://backend.internal:8080/base/kept/a"
    assert f.request.host_header == "public.example.com"


class _Broken:
    usage = None
    error = None
    started = False

    def feed(self, data: bytes) -> list[bytes]:
        raise ValueError("translator bug")

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        raise ValueError("translator bug")

    def assembled(self) -> dict:
        return {}


def _call() -> Call:
    return Call(config=load_text(CONFIG), route=None, match=None, started_at=0.0)


def test_stream_owner_survives_a_translator_bug() -> None:
    call = _call()
    owner = StreamOwner(call, _Broken())
    assert owner(b"data: {}\n\n") == []  # held back, never b"" (that would end the body)
    tail = owner(b"")
    assert tail[-1] == sse.DONE
    assert json.loads(tail[0].removeprefix(b"data: "))["error"]["message"]
    assert call.error is not None and call.error_source == "gateway"


def test_stream_owner_passthrough_returns_bytes_unchanged() -> None:
    from providers.base import CallSpec, RouteType
    from providers.openai import PROVIDER
    from providers.options import ModelOptions

    spec = CallSpec(RouteType.CHAT, {}, "m", ModelOptions(), True)
    call = _call()
    owner = StreamOwner(call, PROVIDER.stream_translator(spec), passthrough=True)
    data = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    assert owner(data) == [data]
    assert call.first_token is not None
    assert owner(b"") == []


def test_bad_config_at_startup_is_logged_not_raised(tmp_path, caplog) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [{routes: [{paths: [nope]}]}]")
    gw = Gateway()
    watch = ConfigWatch(gw)
    with taddons.context(watch) as tctx:
        tctx.configure(watch, llmitm_config=str(bad))
    assert gw.config is None
    assert "path 'nope' must start with '/'" in caplog.text


def test_good_config_is_applied_and_host_header_kept(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG)
    gw = Gateway()
    watch = ConfigWatch(gw)
    from mitmproxy.addons.proxyserver import Proxyserver

    with taddons.context(Proxyserver(), watch) as tctx:
        tctx.configure(watch, llmitm_config=str(good))
        assert tctx.options.keep_host_header is True
    assert [r.name for r in gw.config.routes] == ["plain", "kept", "chat"]


def test_an_error_carries_its_own_headers_to_the_client() -> None:
    """An adapter can attach headers to an error (a Retry-After it read from the body);
    they reach the client and win over the upstream's."""
    from addons.errors import from_provider_error
    from providers.base import ProviderError

    err = ProviderError(503, "model loading", headers={"retry-after": "21"})
    resp = from_provider_error(err, {"retry-after": "1", "x-request-id": "abc"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "21"
    assert resp.headers["x-request-id"] == "abc"
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.content)["error"]["message"] == "model loading"


def test_usage_of_a_native_request_is_estimated_from_its_text() -> None:
    """A provider's own format reports no usage (TGI without details, say): the
    estimate counts the request's text wherever that format keeps it."""
    from addons.calls import Call
    from addons.recorder import _estimate
    from providers.base import CallSpec, RouteType
    from providers.options import ModelOptions

    text = "word " * 400  # 2000 characters: about 500 tokens
    for body in (
        {"inputs": text, "parameters": {"max_new_tokens": 20}},
        {"contents": [{"role": "user", "parts": [{"text": text}]}]},
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]},
    ):
        spec = CallSpec(RouteType.CHAT, body, "m", ModelOptions(), False, llm_format="huggingface")
        call = Call(config=None, route=None, match=None, started_at=0.0, spec=spec)  # type: ignore[arg-type]
        usage = _estimate(call, None)
        assert usage is not None and usage.estimated
        assert 480 <= usage.prompt_tokens <= 520, body


def test_request_parameters_are_recorded_without_content() -> None:
    """Sampling parameters reach every sink even when payloads are not logged; the
    messages, tools and user id never do."""
    from addons.recorder import request_params

    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "secret question"}],
        "temperature": 0.2,
        "max_tokens": 256,
        "stop": ["END"],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "user": "user-42",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        "generationConfig": {"topK": 5, "responseSchema": {"type": "object"}},
    }
    assert request_params(body) == {
        "temperature": 0.2,
        "max_tokens": 256,
        "stop": ["END"],
        "tool_choice": "auto",
        "response_format": "json_schema",
        "generationConfig": {"topK": 5},
    }
