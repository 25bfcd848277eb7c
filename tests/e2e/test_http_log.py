"""http-log end to end: what a fake log server receives, and how it answers.

Two levels, each against the fake log server of `tests/fakes/http_log.py` (which
checks every record against the call record's shape, unknown fields refused):

1. the sink driven by the shared delivery (`exporters.http_delivery`): one object per
   request with Kong's default queue, arrays with a larger `max_batch_size`, a retry
   after a 503 with Retry-After, a refused batch dropped;
2. a real gateway (`mitmdump -s addons/gateway.py`) with `http-log` configured twice
   (a route-level instance with PUT, Basic auth from the endpoint's user info and
   single records; a global one with a token header and batches), the `openai` SDK as
   the client; no secret anywhere but the log server's auth headers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from exporters.http_delivery import HttpDelivery
from exporters.http_log import HttpLogConfig, from_config
from exporters.ids import uuid7
from exporters.record import AIInfo, CallRecord
from providers.base import Usage
from tests.conftest import Gateway
from tests.fakes.http_log import FakeLogServer
from tests.fakes.upstream import FakeUpstream, Received, Reply, chat_completion, chat_stream

LOG_TOKEN = "log-e2e-token-5d1c7b"
PROVIDER_KEY = "sk-provider-secret-httplog-0987654321"
CLIENT_KEY = "client-key-httplog-445566"
BASIC_USER, BASIC_PASSWORD = "gateway", "basic-pass-e2e-9f8e"
BASIC = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def log_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def serve(server: FakeUpstream, fake: FakeLogServer) -> FakeLogServer:
    server.reset()
    server.reply(fake)
    return fake


# ------------------------------------------------------- 1. through the delivery


def record_now(n: int = 0) -> CallRecord:
    start = time.time() - 1.2
    return CallRecord(
        id=uuid7(start),
        started_at=start,
        ended_at=start + 1.0,
        status="ok",
        client_ip="127.0.0.1",
        route="chat",
        service="llm",
        request={"method": "POST", "uri": "/v1/chat/completions", "size": 10, "headers": {}},
        response={"status": 200, "size": 100},
        latencies={"request": 1000.0, "proxy": 900.0, "gateway": 100.0},
        ai=AIInfo(
            provider="openai",
            route_type="llm/v1/chat",
            request_model="gpt-4o-mini",
            response_model="gpt-4o-mini",
            stream=False,
            usage=Usage(12, 3),
        ),
        context={"message_id": f"m-{n}"},
    )


def delivery(server: FakeUpstream, spool: Path, **queue: Any) -> HttpDelivery:
    config = HttpLogConfig(
        http_endpoint=f"{server.url}/logs",
        headers={"X-Log-Token": LOG_TOKEN},
        queue=queue,
    )
    sink = from_config(config, "http-log@global#e2e")
    return HttpDelivery(
        sink, spool, linger=0.01, initial_retry_delay=0.02, max_retry_delay=0.1, spool_after=5
    )


async def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("max_batch_size, shape", [(1, "object"), (3, "array")])
async def test_delivery_sends_kongs_shapes_and_retries(
    log_server: FakeUpstream, tmp_path: Path, max_batch_size: int, shape: Any
) -> None:
    fake = serve(log_server, FakeLogServer("/logs", shape=shape))
    fake.fail(Reply.json({"error": "busy"}, 503, {"retry-after": "0.2"}))
    d = delivery(log_server, tmp_path, max_batch_size=max_batch_size)
    d.start()
    for n in range(7):
        d.submit(record_now(n))
    await wait_for(lambda: len(fake.records) == 7)
    await d.aclose()
    assert fake.errors == []
    assert sorted(r["context"]["message_id"] for r in fake.records) == [f"m-{n}" for n in range(7)]
    if shape == "object":
        assert all(isinstance(b, dict) for b in fake.bodies) and len(fake.bodies) == 7
    else:
        assert all(isinstance(b, list) and 1 <= len(b) <= 3 for b in fake.bodies)
    assert d.stats.retried >= 1 and d.stats.sent == 7


async def test_refused_batch_is_dropped(log_server: FakeUpstream, tmp_path: Path) -> None:
    fake = serve(log_server, FakeLogServer("/logs", shape="object"))
    fake.fail(Reply.json({"error": "bad"}, 400))
    d = delivery(log_server, tmp_path)
    d.start()
    d.submit(record_now(1))
    d.submit(record_now(2))
    await wait_for(lambda: d.stats.sent + d.stats.dropped == 2)
    await d.aclose()
    assert d.stats.dropped == 1 and len(fake.records) == 1


# ----------------------------------------------------- 2. through the gateway

CONFIG = """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: chat
        paths: ["/openai/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model:
                provider: openai
                name: gpt-4o-mini
                options: {upstream_url: "UPSTREAM", input_cost: 0.15, output_cost: 0.6}
              logging: {log_statistics: true, log_payloads: true}
          - name: http-log
            config:
              http_endpoint: "http://BASIC@LOGHOST/single"
              method: PUT
              content_type: "application/json; charset=utf-8"
              timeout: 2000
      - name: batched
        paths: ["/batched/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "UPSTREAM"}}
plugins:
  - name: http-log
    config:
      http_endpoint: "http://LOGHOST/batch"
      headers: {X-Log-Token: "{vault://env/LLMITM_LOG_TOKEN}"}
      queue: {max_batch_size: 20, max_coalescing_delay: 0.5, initial_retry_delay: 0.05, max_retry_delay: 0.2}
  - name: file-log
    config: {path: "{records}"}
"""


@pytest.fixture(scope="module")
def gw_log_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def single(gw_log_server: FakeUpstream) -> FakeLogServer:
    return FakeLogServer(
        "/single",
        method="PUT",
        shape="object",
        token=BASIC,
        content_type="application/json; charset=utf-8",
    )


@pytest.fixture(scope="module")
def batched(gw_log_server: FakeUpstream, single: FakeLogServer) -> FakeLogServer:
    fake = FakeLogServer("/batch", shape="array")

    def route(req: Received) -> Reply:
        return single(req) if req.path.startswith("/single") else fake(req)

    gw_log_server.reply(route)
    return fake


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream,
    gw_log_server: FakeUpstream,
    single: FakeLogServer,
    batched: FakeLogServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config = (
        CONFIG.replace("UPSTREAM", upstream.url)
        .replace("LOGHOST", f"127.0.0.1:{gw_log_server.port}")
        .replace("BASIC", f"{BASIC_USER}:{{vault://env/LLMITM_LOG_PASSWORD}}")
    )
    g = Gateway(
        tmp_path_factory.mktemp("gw-http-log"),
        config,
        quiet=False,
        env={
            "LLMITM_TEST_KEY": PROVIDER_KEY,
            "LLMITM_LOG_TOKEN": LOG_TOKEN,
            "LLMITM_LOG_PASSWORD": BASIC_PASSWORD,
        },
    )
    g.wait_ready()
    # a config the gateway refuses (an unregistered plugin) makes it exit just after it
    # starts listening: say so, rather than fail later to connect
    with contextlib.suppress(subprocess.TimeoutExpired):
        g.proc.wait(1.5)
    assert g.proc.poll() is None, f"the gateway exited:\n{g.log()}"
    yield g
    g.stop()
    # no secret anywhere but the log servers' auth headers
    for fake, header, value in (
        (single, "authorization", BASIC),
        (batched, "x-log-token", LOG_TOKEN),
    ):
        assert fake.errors == []
        for req in fake.received:
            assert req.headers.get(header) == value
            for name, v in req.headers.items():
                assert PROVIDER_KEY not in v and CLIENT_KEY not in v
                if name != header:
                    assert LOG_TOKEN not in v and BASIC_PASSWORD not in v
            for secret in (PROVIDER_KEY, CLIENT_KEY, LOG_TOKEN, BASIC_PASSWORD):
                assert secret.encode() not in req.body
    assert LOG_TOKEN not in g.log() and BASIC_PASSWORD not in g.log()


@pytest.fixture
def tag() -> str:
    return f"msg-{uuid.uuid4().hex}"


def client(gw: Gateway, tag: str, prefix: str = "/openai/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}{prefix}",
        api_key=CLIENT_KEY,
        max_retries=0,
        default_headers={"X-Message-Id": tag},
    )


def my_record(fake: FakeLogServer, tag: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        found = [r for r in fake.records if r["context"].get("message_id") == tag]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.time() < deadline, f"no record for {tag}; errors: {fake.errors}"
        time.sleep(0.05)


def test_each_call_is_one_record_put_with_basic_auth(
    gw: Gateway, fake: FakeUpstream, single: FakeLogServer, batched: FakeLogServer, tag: str
) -> None:
    fake.reply(Reply.json(chat_completion("2", prompt_tokens=20, completion_tokens=5)))
    client(gw, tag).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "1+1?"}],
        extra_headers={"X-User-Id": "u-1"},
    )
    rec = my_record(single, tag)
    # exactly what file-log wrote for the same call
    assert rec == gw.record(message_id=tag)
    assert rec["route"] == {"name": "chat"} and rec["context"]["user_id"] == "u-1"
    usage = rec["ai"]["proxy"]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (20, 5)
    assert rec["ai"]["proxy"]["payload"]["request"]["messages"][0]["content"] == "1+1?"
    assert rec["request"]["headers"]["authorization"] == "[REDACTED]"
    # the route's own http-log replaces the global one: not sent there too
    assert not [r for r in batched.records if r["context"].get("message_id") == tag]
    assert all(isinstance(b, dict) for b in single.bodies)


def test_streamed_call_record(
    gw: Gateway, fake: FakeUpstream, single: FakeLogServer, tag: str
) -> None:
    fake.reply(Reply.sse(chat_stream(["a", "b"], usage=(12, 4), pause=0.05)))
    stream = client(gw, tag).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "?"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "ab"
    rec = my_record(single, tag)
    assert rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert rec["ai"]["proxy"]["usage"]["time_to_first_token"] > 0


def test_calls_are_batched_as_arrays(
    gw: Gateway, fake: FakeUpstream, batched: FakeLogServer
) -> None:
    fake.reply(Reply.json(chat_completion("ok")))
    tags = [f"msg-{uuid.uuid4().hex}" for _ in range(5)]
    for t in tags:
        client(gw, t, "/batched/v1").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    records = [my_record(batched, t) for t in tags]
    assert all(r["route"] == {"name": "batched"} for r in records)
    assert all(isinstance(b, list) for b in batched.bodies)
    assert any(len(b) > 1 for b in batched.bodies)  # sent together, not one by one


def test_upstream_error_record(
    gw: Gateway, fake: FakeUpstream, batched: FakeLogServer, tag: str
) -> None:
    fake.reply(Reply.json({"error": {"message": "boom", "type": "server_error"}}, 500))
    with pytest.raises(openai.InternalServerError):
        client(gw, tag, "/batched/v1").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    rec = my_record(batched, tag)
    assert rec["status"] == "error" and rec["error"]["message"] == "boom"
    assert rec["upstream"]["status"] == 500


def test_log_server_outage_is_retried(
    gw: Gateway, fake: FakeUpstream, batched: FakeLogServer, tag: str
) -> None:
    batched.fail(Reply.json({"error": "busy"}, 503, {"retry-after": "0.3"}))
    fake.reply(Reply.json(chat_completion("ok")))
    t0 = time.time()
    client(gw, tag, "/batched/v1").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    assert time.time() - t0 < 2  # the client never waits for the exporter
    my_record(batched, tag)
