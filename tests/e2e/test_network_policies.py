"""request-size-limiting, ip-restriction and cors through a real mitmdump.

One gateway for the module: `mock` provider routes (no upstream needed) and plain
service routes to the fake upstream (to check what reached it). Clients: the `openai`
SDK, httpx (chunked uploads, streams, preflights) and raw sockets where the point is
what happens before a body has been sent.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, free_port
from tests.fakes.upstream import FakeUpstream, Reply
from tests.policy_helpers import MessageTag, module_gateway

MOCK = "{provider: mock, name: mock-gpt}"

CONFIG = f"""
_format_version: "3.0"
services:
  - name: mock
    routes:
      - name: small-ai
        paths: ["/small/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: request-size-limiting
            config: {{allowed_payload_size: 2, size_unit: kilobytes}}
      - name: ip-loopback
        paths: ["/ip/loopback/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: ip-restriction
            config: {{allow: ["127.0.0.0/8", "::1"]}}
      - name: ip-deny-me
        paths: ["/ip/deny/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: ip-restriction
            config: {{allow: ["127.0.0.0/8"], deny: ["127.0.0.1/32"]}}
      - name: ip-ten-only
        paths: ["/ip/ten/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: ip-restriction
            config: {{allow: ["10.0.0.0/8", "2001:db8::/32"]}}
      - name: ip-custom
        paths: ["/ip/custom/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: ip-restriction
            config: {{deny: ["127.0.0.1"], status: 451, message: "Not from here"}}
      - name: ip-no-v6-loopback
        paths: ["/ip/no-v6/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: ip-restriction
            config: {{deny: ["::1/128"]}}
      - name: ip-mapped
        paths: ["/ip/mapped/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: ip-restriction
            config: {{allow: ["::ffff:127.0.0.1"]}}
      - name: browser
        paths: ["/browser/v1/chat/completions"]
        methods: [POST]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: cors
            config:
              origins: ["https://app.example.com", "https://.*\\\\.example\\\\.org"]
              credentials: true
              exposed_headers: [x-llmitm-proxy-latency, x-request-id]
              max_age: 600
      - name: browser-guarded
        paths: ["/guarded/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: cors
            config: {{origins: ["*"]}}
          - name: ip-restriction
            config: {{allow: ["10.0.0.0/8"]}}
      - name: browser-small
        paths: ["/browser-small/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {MOCK}}}
          - name: cors
            config: {{}}
          - name: request-size-limiting
            config: {{allowed_payload_size: 100, size_unit: bytes}}
  - name: backend
    url: UPSTREAM
    routes:
      - name: small-plain
        paths: ["/plain"]
        plugins:
          - name: request-size-limiting
            config: {{allowed_payload_size: 2, size_unit: kilobytes}}
      - name: need-length
        paths: ["/length"]
        plugins:
          - name: request-size-limiting
            config: {{require_content_length: true}}
      - name: cors-plain
        paths: ["/cors-plain"]
        plugins:
          - name: cors
            config: {{origins: ["https://app.example.com"], headers: [content-type, x-custom]}}
      - name: cors-continue
        paths: ["/cors-continue"]
        plugins:
          - name: cors
            config: {{preflight_continue: true}}
  - name: gone
    url: DEAD
    routes:
      - name: dead
        paths: ["/dead"]
        plugins:
          - name: request-size-limiting
            config: {{allowed_payload_size: 2, size_unit: kilobytes}}
plugins:
  - name: file-log
    config: {{path: "{{records}}"}}
"""

LIMIT = 2048  # the 2-kilobyte routes


def ipv6_loopback_port() -> int | None:
    """A free port on the IPv6 loopback `::1`, or None when the machine has none."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


#: the module gateway's second listener, on ::1 (None: no IPv6 loopback here)
V6_PORT = ipv6_loopback_port()


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = CONFIG.replace("DEAD", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    # clients reach it over IPv6 too (mitmproxy takes the bare address in a mode's listen spec)
    extra = ["--mode", f"reverse:http://127.0.0.1:9@::1:{V6_PORT}"] if V6_PORT else []
    with module_gateway(tmp_path_factory, config, upstream, extra=extra) as g:
        yield g
    assert "Traceback" not in g.log(), g.log()  # no hook crashed along the way


TAG = MessageTag()


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG.new()


tagged = TAG.headers


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": text}], **extra}


@contextlib.contextmanager
def client(gw: Gateway, prefix: str) -> Iterator[openai.OpenAI]:
    with TAG.client(gw, prefix, api_key="k") as c:
        yield c


def pieces(data: bytes, size: int = 500) -> Iterator[bytes]:
    """A body httpx sends chunked (a generator has no length)."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and whatever body bytes came with them."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = sock.recv(65536)
        assert got, f"connection closed before a response: {buf!r}"
        buf += got
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ")[1]), headers, rest


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """A whole response with a Content-Length body."""
    status, headers, body = read_head(sock)
    while len(body) < int(headers.get("content-length", "0")):
        got = sock.recv(65536)
        assert got, "connection closed mid-body"
        body += got
    return status, headers, body


def assert_error(resp: httpx.Response, status: int, message: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] == message
    assert set(err) == {"message", "type", "param", "code"}
    return err


# ------------------------------------------------------------ request-size-limiting


def test_content_length_over_the_limit_is_refused_and_nothing_goes_upstream(
    gw: Gateway, fake: FakeUpstream
) -> None:
    resp = httpx.post(f"{gw.url}/plain", content=b"x" * (LIMIT + 1), headers=tagged())
    err = assert_error(resp, 413, "Request size limit exceeded")
    assert err["code"] == "request_too_large" and err["type"] == "request_too_large"
    assert fake.received == []

    record = TAG.record(gw)
    assert record["response"]["status"] == 413
    assert record["error"]["source"] == "gateway"


def test_exactly_the_limit_passes(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json({"ok": True}))
    body = b"y" * LIMIT
    resp = httpx.post(f"{gw.url}/plain", content=body)
    assert resp.status_code == 200
    assert fake.last().body == body


def test_openai_sdk_gets_a_413_for_a_large_prompt(gw: Gateway) -> None:
    with client(gw, "small") as c:
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(**chat("z" * 3000))
        # and a prompt that fits is answered
        answer = c.chat.completions.create(**chat("small enough"))
    assert e.value.status_code == 413
    assert e.value.body["message"] == "Request size limit exceeded"
    assert answer.choices[0].message.content == "small enough"


def test_the_413_comes_before_the_body_is_sent(gw: Gateway) -> None:
    # A client declares 50 MB and sends only the headers and a little of the body: the
    # answer does not wait for the rest (the gateway neither buffers nor reads it).
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 52428800\r\n\r\n" + b"a" * 4096
        )
        status, headers, _ = read_head(s)
    assert status == 413
    assert headers["content-type"] == "application/json"


def test_expect_100_continue_over_the_limit_gets_417_and_no_continue(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        status, _, body = read_response(s)
    assert status == 417  # Kong's answer to a client that waits before sending
    assert json.loads(body)["error"]["message"] == "Request size limit exceeded"


def test_chunked_body_over_the_limit_is_cut_off(gw: Gateway, fake: FakeUpstream) -> None:
    resp = httpx.post(f"{gw.url}/plain", content=pieces(b"c" * 5000), headers=tagged())
    assert_error(resp, 413, "Request size limit exceeded")
    assert fake.received == []
    assert TAG.record(gw)["response"]["status"] == 413


def test_chunked_body_is_refused_while_it_streams_in(gw: Gateway) -> None:
    # 3 KB of chunks sent, the end never: the 413 is already there.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"POST /small/v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        s.sendall(b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            s.sendall(b"400\r\n" + b"q" * 1024 + b"\r\n")
        status, _, _ = read_head(s)
    assert status == 413


def test_chunked_body_under_the_limit_reaches_the_upstream_intact(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(Reply.json({"echo": "ok"}, headers={"x-upstream": "yes"}))
    body = bytes(range(256)) * 7  # 1792 bytes, every byte value
    resp = httpx.post(f"{gw.url}/plain/items?q=1", content=pieces(body, 300))
    assert resp.status_code == 200
    assert resp.json() == {"echo": "ok"}
    assert resp.headers["x-upstream"] == "yes"
    sent = fake.last()
    assert sent.body == body
    assert sent.method == "POST"
    assert sent.path == "/items?q=1"

    # the connection stays usable for the next request
    with httpx.Client() as c:
        for i in range(3):
            r = c.post(f"{gw.url}/plain", content=pieces(b"%d" % i * 100))
            assert r.status_code == 200
            assert fake.last().body == b"%d" % i * 100


def test_chunked_chat_request_under_the_limit_is_answered_by_ai_proxy(gw: Gateway) -> None:
    body = json.dumps(chat("chunked hello")).encode()
    resp = httpx.post(
        f"{gw.url}/small/v1/chat/completions",
        content=pieces(body, 7),
        headers=tagged({"content-type": "application/json"}),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "chunked hello"
    record = TAG.record(gw)
    assert record["status"] == "ok"
    assert record["request"]["size"] == len(body)


def test_chunked_chat_request_streamed_answer(gw: Gateway) -> None:
    body = json.dumps(chat("stream me back", stream=True)).encode()
    with httpx.stream(
        "POST",
        f"{gw.url}/small/v1/chat/completions",
        content=pieces(body, 16),
        headers={"content-type": "application/json"},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    events = [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    words = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert words == "stream me back"
    assert text.rstrip().endswith("data: [DONE]")


def test_bad_json_in_a_chunked_body_is_ai_proxys_400(gw: Gateway) -> None:
    resp = httpx.post(
        f"{gw.url}/small/v1/chat/completions",
        content=pieces(b"{not json", 3),
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert "error" in resp.json()


def test_client_leaving_mid_upload(gw: Gateway, fake: FakeUpstream) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /plain HTTP/1.1\r\nHost: x\r\nX-Message-Id: " + TAG.id.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n"
        )
    record = TAG.record(gw)
    # as for any cut-off upload (how mitmproxy words it depends on timing)
    assert record["status"] in ("error", "client_aborted")
    assert record["error"]["type"] == "connection_error"
    assert fake.received == []
    fake.reply(Reply.json({"ok": True}))
    assert httpx.post(f"{gw.url}/plain", content=pieces(b"next")).status_code == 200


def test_unreachable_upstream_of_a_counted_body_is_an_openai_502(gw: Gateway) -> None:
    resp = httpx.post(f"{gw.url}/dead", content=pieces(b"abc"), headers=tagged())
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "api_error"
    assert TAG.record(gw)["error"]["source"] == "upstream"


def test_require_content_length(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json({"ok": True}))
    # no Content-Length and not chunked: 411 (Kong's answer, bodiless requests too)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /length HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(s)
    assert status == 411
    assert b"A valid Content-Length header is required" in body
    # with one, or chunked, it goes through
    assert httpx.post(f"{gw.url}/length", content=b"abc").status_code == 200
    assert httpx.post(f"{gw.url}/length", content=pieces(b"abc")).status_code == 200
    assert fake.last().body == b"abc"


# ------------------------------------------------------------------- ip-restriction


def test_allowed_loopback_passes(gw: Gateway) -> None:
    with client(gw, "ip/loopback") as c:
        answer = c.chat.completions.create(**chat("let me in"))
    assert answer.choices[0].message.content == "let me in"


def test_deny_wins_over_allow(gw: Gateway) -> None:
    with client(gw, "ip/deny") as c, pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(**chat("hi"))
    assert e.value.status_code == 403
    assert e.value.body["message"] == "IP address not allowed: 127.0.0.1"
    record = TAG.record(gw)
    assert record["response"]["status"] == 403
    assert record["error"]["source"] == "gateway"


def test_client_outside_the_allow_list_is_refused(gw: Gateway) -> None:
    resp = httpx.post(f"{gw.url}/ip/ten/v1/chat/completions", json=chat("hi"))
    err = assert_error(resp, 403, "IP address not allowed: 127.0.0.1")
    assert err["type"] == "permission_error"


def test_status_and_message_overrides(gw: Gateway) -> None:
    resp = httpx.post(f"{gw.url}/ip/custom/v1/chat/completions", json=chat("hi"))
    assert_error(resp, 451, "Not from here")


def test_ipv4_mapped_rule_matches_an_ipv4_client(gw: Gateway) -> None:
    resp = httpx.post(f"{gw.url}/ip/mapped/v1/chat/completions", json=chat("mapped"))
    assert resp.status_code == 200


def test_ipv6_clients(gw: Gateway) -> None:
    if V6_PORT is None:
        pytest.skip("this machine has no IPv6 loopback (::1) to connect from")
    v6 = f"http://[::1]:{V6_PORT}"
    # allowed by its IPv6 entry ("::1")
    resp = httpx.post(f"{v6}/ip/loopback/v1/chat/completions", json=chat("over v6"))
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "over v6"
    # an IPv4-only allow list does not let ::1 in; nor does an IPv6 range it is outside of
    assert_error(
        httpx.post(f"{v6}/ip/deny/v1/chat/completions", json=chat("hi")),
        403,
        "IP address not allowed: ::1",
    )
    assert_error(
        httpx.post(f"{v6}/ip/ten/v1/chat/completions", json=chat("hi")),
        403,
        "IP address not allowed: ::1",
    )
    # an IPv6 deny entry refuses ::1, and only it: the same route lets 127.0.0.1 in
    refused = httpx.post(f"{v6}/ip/no-v6/v1/chat/completions", json=chat("hi"), headers=tagged())
    assert_error(refused, 403, "IP address not allowed: ::1")
    assert TAG.record(gw)["client_ip"] == "::1"
    assert httpx.post(f"{gw.url}/ip/no-v6/v1/chat/completions", json=chat("hi")).status_code == 200


# ----------------------------------------------------------------------------- cors

ORIGIN = "https://app.example.com"


def preflight(gw: Gateway, path: str, origin: str = ORIGIN, **headers: str) -> httpx.Response:
    return httpx.options(
        f"{gw.url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            **{k.replace("_", "-"): v for k, v in headers.items()},
        },
    )


def test_preflight_is_answered_by_the_gateway(gw: Gateway, fake: FakeUpstream) -> None:
    resp = preflight(
        gw,
        "/browser/v1/chat/completions",  # a POST-only route: the preflight still matches
        Access_Control_Request_Headers="content-type,authorization",
    )
    assert resp.status_code == 200
    h = resp.headers
    assert h["access-control-allow-origin"] == ORIGIN
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-allow-headers"] == "content-type,authorization"
    assert (
        h["access-control-allow-methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    )
    assert h["access-control-max-age"] == "600"
    assert "origin" in h["vary"].lower()
    assert resp.content == b""

    # on a plain service route too, and the upstream never sees it
    resp = preflight(gw, "/cors-plain/x")
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert resp.headers["access-control-allow-headers"] == "content-type,x-custom"
    assert fake.received == []


def test_preflight_from_a_regex_origin_and_from_an_unknown_one(gw: Gateway) -> None:
    ok = preflight(gw, "/browser/v1/chat/completions", origin="https://team.example.org")
    assert ok.headers["access-control-allow-origin"] == "https://team.example.org"
    bad = preflight(gw, "/browser/v1/chat/completions", origin="https://evil.example.net")
    assert bad.status_code == 200
    assert "access-control-allow-origin" not in bad.headers
    # the regex matches the whole origin, not a part of it
    bad = preflight(gw, "/browser/v1/chat/completions", origin="https://x.example.org.evil.net")
    assert "access-control-allow-origin" not in bad.headers


def test_preflight_continue_passes_it_on(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply(204, {"x-from": "upstream"}))
    resp = preflight(gw, "/cors-continue/anything")
    assert resp.status_code == 204
    assert resp.headers["x-from"] == "upstream"
    assert "access-control-allow-origin" not in resp.headers
    assert fake.last().method == "OPTIONS"


def test_actual_request_carries_the_cors_headers(gw: Gateway) -> None:
    with client(gw, "browser") as c:
        raw = c.chat.completions.with_raw_response.create(
            **chat("from a browser"), extra_headers={"Origin": ORIGIN}
        )
    assert raw.parse().choices[0].message.content == "from a browser"
    h = raw.headers
    assert h["access-control-allow-origin"] == ORIGIN
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-expose-headers"] == "x-llmitm-proxy-latency,x-request-id"
    assert "origin" in h["vary"].lower()


def test_streamed_answer_carries_the_cors_headers(gw: Gateway) -> None:
    with httpx.stream(
        "POST",
        f"{gw.url}/browser/v1/chat/completions",
        json=chat("words in a stream", stream=True),
        headers={"Origin": "https://a.example.org"},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "https://a.example.org"
        assert resp.headers["access-control-allow-credentials"] == "true"
        text = "".join(resp.iter_text())
    assert "words" in text and text.rstrip().endswith("data: [DONE]")


def test_gateway_errors_carry_the_cors_headers(gw: Gateway) -> None:
    origin = {"Origin": ORIGIN}
    # ai-proxy's 400 for a body that is not JSON
    bad = httpx.post(f"{gw.url}/browser/v1/chat/completions", content=b"{", headers=origin)
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == ORIGIN
    # ip-restriction's 403
    refused = httpx.post(f"{gw.url}/guarded/v1/chat/completions", json=chat("x"), headers=origin)
    assert refused.status_code == 403
    assert refused.headers["access-control-allow-origin"] == "*"
    # request-size-limiting's 413, decided on the headers and while streaming
    big = httpx.post(
        f"{gw.url}/browser-small/v1/chat/completions", json=chat("x" * 200), headers=origin
    )
    assert big.status_code == 413
    assert big.headers["access-control-allow-origin"] == "*"
    cut = httpx.post(
        f"{gw.url}/browser-small/v1/chat/completions",
        content=pieces(b"x" * 300, 50),
        headers=origin,
    )
    assert cut.status_code == 413
    assert cut.headers["access-control-allow-origin"] == "*"
    # a preflight to the guarded route is answered before ip-restriction runs
    assert preflight(gw, "/guarded/v1/chat/completions").status_code == 200


def test_upstream_answer_on_a_plain_route(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json({"ok": 1}, headers={"access-control-allow-origin": "https://other"}))
    resp = httpx.get(f"{gw.url}/cors-plain/data", headers={"Origin": "https://unknown.test"})
    assert resp.status_code == 200
    # a single plain origin is sent as is (Kong); the upstream's own value is replaced
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert resp.headers["vary"] == "Origin"
