"""rate-limiting end to end: a real mitmdump with the `mock` provider, the `openai` SDK
and httpx as clients; local counters, and Redis counters shared by two gateway
processes against a real redis-server (killed and restarted mid-test)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, free_port
from tests.policy_helpers import clear_of_boundary, module_gateway, openai_client

BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hello"}]}

ROUTE = """
      - name: {name}
        paths: ["/{name}/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {{provider: mock, name: mock-gpt}}
          - name: rate-limiting
            config: {config}
"""


def routes(**configs: str) -> str:
    return "".join(ROUTE.format(name=n, config=c) for n, c in configs.items())


LOCAL = (
    """
_format_version: "3.0"
consumers:
  - username: alice
    keyauth_credentials: [{key: alice-key}]
  - username: bob
    keyauth_credentials: [{key: bob-key}]
    plugins:
      - name: rate-limiting
        config: {hour: 1}
services:
  - name: mock
    routes:
"""
    + routes(
        minute="{minute: 5}",
        burst="{hour: 10}",
        tenant="{hour: 2, limit_by: header, header_name: X-Tenant}",
        ip="{hour: 2, limit_by: ip}",
        hidden="{hour: 1, hide_client_headers: true}",
        custom="{hour: 1, error_code: 503, error_message: Slow down please}",
        stream="{hour: 50, day: 100}",
        path="{hour: 1, limit_by: path, path: /path/v1/chat/completions}",
        early="{hour: 1}",
    )
    + """
      - name: keyed
        paths: ["/keyed/v1/chat/completions"]
        plugins:
          - name: key-auth
            config: {key_names: [authorization]}
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: mock, name: mock-gpt}
          - name: rate-limiting
            config: {hour: 2}
plugins:
  - name: file-log
    config: {path: "{records}"}
"""
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with module_gateway(tmp_path_factory, LOCAL) as g:
        yield g


def sdk(gw: Gateway, route: str, key: str = "sk-none") -> openai.OpenAI:
    return openai_client(gw, route, key)


def post(url: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(url, json=BODY, headers=headers, timeout=30, **kw)


def statuses(send: Callable[[], int], n: int, workers: int = 40) -> list[int]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: send(), range(n)))


# ------------------------------------------------------------------ local policy


def test_minute_limit_then_429_with_retry_after(gw: Gateway) -> None:
    clear_of_boundary(60, margin=15)
    client = sdk(gw, "minute")
    for expected in (4, 3, 2, 1, 0):
        raw = client.chat.completions.with_raw_response.create(**BODY)
        assert raw.parse().choices[0].message.content  # the mock's answer came through
        h = raw.headers
        assert h["X-RateLimit-Limit-Minute"] == "5"
        assert h["X-RateLimit-Remaining-Minute"] == str(expected)
        assert h["RateLimit-Limit"] == "5"
        assert h["RateLimit-Remaining"] == str(expected)
        assert 1 <= int(h["RateLimit-Reset"]) <= 60
        assert "Retry-After" not in h
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**BODY)
    err = caught.value
    assert err.status_code == 429
    assert err.body["type"] == "rate_limit_error"
    assert err.body["code"] == "rate_limit_exceeded"
    assert err.body["message"] == "API rate limit exceeded"
    h = err.response.headers
    assert 1 <= int(h["Retry-After"]) <= 60
    assert h["Retry-After"] == h["RateLimit-Reset"]
    assert h["X-RateLimit-Remaining-Minute"] == "0"
    assert h["RateLimit-Remaining"] == "0"


def test_concurrent_requests_exactly_the_limit_pass(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    got = statuses(lambda: post(f"{gw.url}/burst/v1/chat/completions").status_code, 40)
    assert got.count(200) == 10, got
    assert got.count(429) == 30, got


def test_limit_by_header(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    url = f"{gw.url}/tenant/v1/chat/completions"
    a = [post(url, {"X-Tenant": "a"}).status_code for _ in range(3)]
    b = [post(url, {"X-Tenant": "b"}).status_code for _ in range(3)]
    assert a == [200, 200, 429]
    assert b == [200, 200, 429]  # another header value, another counter
    # no header: limited by IP instead (Kong's fallback)
    assert [post(url).status_code for _ in range(3)] == [200, 200, 429]


def test_limit_by_ip(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    url = f"{gw.url}/ip/v1/chat/completions"

    def from_ip(ip: str) -> int:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=30) as c:
            return c.post(url, json=BODY).status_code

    assert [from_ip("127.0.0.1") for _ in range(3)] == [200, 200, 429]
    assert [from_ip("127.0.0.2") for _ in range(3)] == [200, 200, 429]


def test_limit_by_path(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    url = f"{gw.url}/path/v1/chat/completions"
    assert post(url).status_code == 200
    r = post(url)
    assert r.status_code == 429
    # a query string does not make it another path
    assert post(url, params={"x": "1"}).status_code == 429


def test_limit_by_consumer_with_key_auth(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    alice = sdk(gw, "keyed", key="alice-key")
    for _ in range(2):
        alice.chat.completions.create(**BODY)
    with pytest.raises(openai.RateLimitError):
        alice.chat.completions.create(**BODY)
    # bob is another consumer, and his own plugin (hour: 1) wins over the route's
    bob = sdk(gw, "keyed", key="bob-key")
    raw = bob.chat.completions.with_raw_response.create(**BODY)
    assert raw.headers["X-RateLimit-Limit-Hour"] == "1"
    with pytest.raises(openai.RateLimitError):
        bob.chat.completions.create(**BODY)
    # a wrong key is refused by key-auth before any counting
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, "keyed", key="nobody").chat.completions.create(**BODY)


def test_hide_client_headers(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    url = f"{gw.url}/hidden/v1/chat/completions"
    ok, refused = post(url), post(url)
    assert ok.status_code == 200 and refused.status_code == 429
    for r in (ok, refused):
        assert not [h for h in r.headers if h.lower().startswith(("ratelimit", "x-ratelimit"))]
    assert refused.headers["Retry-After"]  # the client still learns when to come back


def test_error_code_and_message(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    url = f"{gw.url}/custom/v1/chat/completions"
    assert post(url).status_code == 200
    r = post(url)
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "Slow down please"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_streamed_answers_get_the_headers(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    client = sdk(gw, "stream")
    with client.chat.completions.with_streaming_response.create(**BODY, stream=True) as r:
        text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
        h = r.headers
    assert "hello" in text
    assert h["X-RateLimit-Limit-Hour"] == "50"
    assert h["X-RateLimit-Limit-Day"] == "100"
    assert int(h["X-RateLimit-Remaining-Hour"]) < 50
    # RateLimit-* names the window closest to its limit: the hour's
    assert h["RateLimit-Limit"] == "50"


def test_a_limited_client_gets_its_429_before_uploading_the_body(gw: Gateway) -> None:
    clear_of_boundary(3600, margin=30)
    url = f"{gw.url}/early/v1/chat/completions"
    assert post(url).status_code == 200
    # the next request announces a 1 MB body and sends none of it: the limit is decided
    # on its headers, so the answer comes without the gateway waiting for the body
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        sock.sendall(
            b"POST /early/v1/chat/completions HTTP/1.1\r\n"
            b"Host: gw.test\r\nContent-Type: application/json\r\nX-Message-Id: early-1\r\n"
            b"Content-Length: 1000000\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            assert data, "the gateway closed the connection without an answer"
            head += data
    status_line, _, rest = head.partition(b"\r\n")
    assert status_line.split()[1] == b"429", head
    headers = rest.lower()
    assert b"retry-after:" in headers
    assert b"x-ratelimit-remaining-hour: 0" in headers
    # recorded as the client's request (not the stand-in the body went to)
    refused = gw.record(message_id="early-1")
    assert refused["response"]["status"] == 429
    assert refused["request"]["uri"] == "/early/v1/chat/completions"
    assert refused["request"]["method"] == "POST"


# ------------------------------------------------------------------ redis policy


def redis_config(port: int, limit: int = 10) -> str:
    redis = f"redis: {{host: 127.0.0.1, port: {port}}}"
    flat = f"redis_host: 127.0.0.1, redis_port: {port}, redis_timeout: 500"
    head = '_format_version: "3.0"\nservices:\n  - name: mock\n    routes:\n'
    return head + routes(
        shared=f"{{hour: {limit}, policy: redis, {redis}}}",
        strict=f"{{hour: {limit}, policy: redis, fault_tolerant: false, {flat}}}",
        # the same store with counters of its own: gets a gateway going before a burst
        warm=f"{{hour: 1000, policy: redis, {redis}}}",
    )


def test_two_gateways_share_one_redis_limit(redis_server: Any, tmp_path: Path) -> None:
    clear_of_boundary(3600, margin=30)
    config = redis_config(redis_server.port)
    gws: list[Gateway] = []
    for i in (0, 1):
        (tmp_path / f"gw{i}").mkdir()
        gws.append(Gateway(tmp_path / f"gw{i}", config))
    try:
        for g in gws:
            g.wait_ready()
            assert post(f"{g.url}/warm/v1/chat/completions").status_code == 200
        urls = [f"{g.url}/shared/v1/chat/completions" for g in gws]

        def send(n: int) -> tuple[int, int]:
            return n % 2, post(urls[n % 2]).status_code

        with ThreadPoolExecutor(30) as pool:
            got = list(pool.map(send, range(30)))
        assert sum(s == 200 for _, s in got) == 10, got
        assert sum(s == 429 for _, s in got) == 20, got
        assert {i for i, _ in got} == {0, 1}  # both processes served
    finally:
        for g in gws:
            g.stop()


def test_redis_killed_mid_test(redis_server: Any, tmp_path: Path) -> None:
    clear_of_boundary(3600, margin=60)
    (tmp_path / "gw").mkdir()
    status = f"127.0.0.1:{free_port()}"
    gw = Gateway(
        tmp_path / "gw",
        redis_config(redis_server.port, limit=3),
        quiet=False,
        status_listen=status,
    )
    try:
        gw.wait_ready()
        shared = f"{gw.url}/shared/v1/chat/completions"
        strict = f"{gw.url}/strict/v1/chat/completions"
        r = post(shared)
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining-Hour"] == "2"
        assert post(strict).status_code == 200

        redis_server.kill()
        # fault_tolerant: requests pass, past the limit, without the headers it cannot know
        tolerant = [post(shared) for _ in range(5)]
        assert [r.status_code for r in tolerant] == [200] * 5
        assert "X-RateLimit-Remaining-Hour" not in tolerant[-1].headers
        # fault_tolerant false: Kong's 500, with a clear message
        r = post(strict)
        assert r.status_code == 500
        assert "Redis is unavailable" in r.json()["error"]["message"]
        deadline = time.time() + 10
        while "refusing requests" not in gw.log() and time.time() < deadline:
            time.sleep(0.05)
        log = gw.log()
        assert "letting requests through (fault_tolerant)" in log
        assert log.count("letting requests through") == 1  # not one line per request
        assert log.count("refusing requests (fault_tolerant is false)") == 1
        # and counted, for the operator's dashboards
        metrics = httpx.get(f"http://{status}/metrics", trust_env=False).text
        assert (
            'llmitm_policy_store_unavailable_total{outcome="allowed",plugin="rate-limiting"} 5.0'
            in metrics
        )
        assert (
            'llmitm_policy_store_unavailable_total{outcome="refused",plugin="rate-limiting"} 1.0'
            in metrics
        )

        redis_server.restart()  # empty: the limits start again
        deadline = time.time() + 10
        while (r := post(shared)).status_code == 200 and "X-RateLimit-Limit-Hour" not in r.headers:
            assert time.time() < deadline, "the gateway did not use Redis again"
            time.sleep(0.1)
        assert r.headers["X-RateLimit-Remaining-Hour"] == "2"
        assert [post(shared).status_code for _ in range(3)] == [200, 200, 429]
        # the strict route's store is tried again once its back-off (1 s) has passed
        deadline = time.time() + 10
        while (r := post(strict)).status_code == 500:
            assert time.time() < deadline, gw.log()[-3000:]
            time.sleep(0.1)
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Remaining-Hour"] == "2"
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()


def test_bad_config_refuses_to_start(start_gateway: Any) -> None:
    gw = start_gateway(
        "services:\n  - name: mock\n    routes:\n" + routes(bad="{minute: 5, policy: redis}"),
        ready=False,
    )
    assert gw.wait_exit() == 1
    log = gw.log()
    assert "plugins[1].config: policy redis needs redis.host (or redis_host)" in log
