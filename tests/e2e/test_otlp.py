"""opentelemetry end to end: what a fake OTLP collector receives, and how it answers.

Two levels, each against the fake collector of `tests/fakes/otlp.py` (which decodes
every export with opentelemetry-proto and checks it against the GenAI conventions as
the captured official instrumentation emits them):

1. the sink driven by the shared delivery (`exporters.http_delivery`): batches, a
   retry after a 503 with Retry-After, a refused export dropped, and the spool while
   the collector is down, replayed after a restart with the same trace and span ids;
2. a real gateway (`mitmdump -s addons/gateway.py`) with `opentelemetry` configured,
   the `openai` SDK as the client: a chat joining the client's W3C trace, a streamed
   chat, an upstream error, embeddings, a route without payloads, and no secret
   anywhere but the collector's auth header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from exporters.http_delivery import HttpDelivery
from exporters.ids import uuid7
from exporters.otlp import OpenTelemetryConfig, from_config
from exporters.record import AIInfo, CallRecord
from providers.base import Usage
from tests.conftest import Gateway
from tests.fakes.otlp import FakeCollector, attributes, decode, status_body
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion, chat_stream

OTLP_TOKEN = "otlp-e2e-token-7c2f9a"
PROVIDER_KEY = "sk-provider-secret-otlp-0987654321"
CLIENT_KEY = "client-key-otlp-112233"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def collector_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def collector(collector_server: FakeUpstream) -> FakeCollector:
    collector_server.reset()
    fake = FakeCollector()
    collector_server.reply(fake)
    return fake


def span_data(span: Any) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "name": span.name,
        "status": span.status.code,
        "message": span.status.message,
        "attributes": attributes(span.attributes),
    }


# ------------------------------------------------------- 1. through the delivery


def record_now(n: int = 0, **ai_kw: Any) -> CallRecord:
    start = time.time() - 1.2
    info = AIInfo(
        **{
            "provider": "openai",
            "route_type": "llm/v1/chat",
            "request_model": "gpt-4o-mini",
            "response_model": "gpt-4o-mini-2024-07-18",
            "stream": False,
            "upstream_url": "https://api.openai.com/v1/chat/completions",
            "usage": Usage(12, 3),
            "finish_reason": "stop",
            **ai_kw,
        }
    )
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
        ai=info,
        context={"message_id": f"m-{n}"},
    )


def delivery(server: FakeUpstream, spool: Path, **queue: Any) -> HttpDelivery:
    config = OpenTelemetryConfig(
        traces_endpoint=f"{server.url}/v1/traces",
        headers={"Authorization": f"Bearer {OTLP_TOKEN}"},
        queue={"max_batch_size": 3, **queue},
    )
    sink = from_config(config, "opentelemetry@global#e2e")
    return HttpDelivery(
        sink, spool, linger=0.01, initial_retry_delay=0.02, max_retry_delay=0.1, spool_after=2
    )


async def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_delivery_batches_and_retries(
    collector_server: FakeUpstream, collector: FakeCollector, tmp_path: Path
) -> None:
    collector.fail(
        Reply(
            503,
            {"retry-after": "0.2", "content-type": "application/x-protobuf"},
            status_body(14, "overloaded"),
        )
    )
    d = delivery(collector_server, tmp_path)
    d.start()
    for n in range(7):
        d.submit(record_now(n))
    await wait_for(lambda: len(collector.spans) == 7)
    await d.aclose()
    assert collector.errors == []
    # batches of at most max_batch_size spans, each record once
    sizes = [
        sum(len(ss.spans) for rs in e.resource_spans for ss in rs.scope_spans)
        for e in collector.exports
    ]
    assert max(sizes) <= 3 and sum(sizes) == 7
    ids = sorted(attributes(s.attributes)["llmitm.message_id"] for s in collector.spans)
    assert ids == [f"m-{n}" for n in range(7)]
    assert d.stats.retried >= 1 and d.stats.sent == 7 and d.stats.dropped == 0


async def test_refused_export_is_dropped_not_retried(
    collector_server: FakeUpstream, collector: FakeCollector, tmp_path: Path
) -> None:
    collector.fail(
        Reply(400, {"content-type": "application/x-protobuf"}, status_body(3, "bad export"))
    )
    d = delivery(collector_server, tmp_path, max_batch_size=1)
    d.start()
    d.submit(record_now(1))
    d.submit(record_now(2))
    await wait_for(lambda: len(collector.received) >= 2 and d.stats.sent + d.stats.dropped == 2)
    await d.aclose()
    assert d.stats.dropped == 1 and d.stats.sent == 1 and d.stats.retried == 0


async def test_spooled_spans_are_replayed_with_the_same_ids(
    collector_server: FakeUpstream, collector: FakeCollector, tmp_path: Path
) -> None:
    """The collector is down: spans go to the spool, and a restarted gateway sends them
    later with the ids minted at the time of the call."""
    down = Reply(503, {"content-type": "application/x-protobuf"}, status_body(14, "down"))
    collector.fail(*[down] * 1000)
    first = delivery(collector_server, tmp_path)
    first.start()
    for n in range(4):
        first.submit(record_now(n))
    await wait_for(lambda: first.stats.spooled >= 4)
    await first.aclose(timeout=0.5)
    tried = {}
    for req in collector.received:
        for rs in decode(req.body).resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    tried[attributes(s.attributes)["llmitm.message_id"]] = (
                        s.trace_id.hex(),
                        s.span_id.hex(),
                    )
    assert collector.spans == []

    collector_server.reset()  # back up
    fresh = FakeCollector()
    collector_server.reply(fresh)
    second = delivery(collector_server, tmp_path)
    second.start()
    await wait_for(lambda: len(fresh.spans) == 4)
    await second.aclose()
    assert fresh.errors == []
    replayed = {
        attributes(s.attributes)["llmitm.message_id"]: (s.trace_id.hex(), s.span_id.hex())
        for s in fresh.spans
    }
    assert len(replayed) == 4 and len(tried) >= 3  # one may have gone straight to the spool
    assert {k: replayed[k] for k in tried} == tried


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
      - name: quiet
        paths: ["/quiet/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "UPSTREAM"}}
      - name: embeddings
        paths: ["/openai/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model: {provider: openai, name: text-embedding-3-small, options: {upstream_url: "UPSTREAM"}}
              logging: {log_payloads: true}
plugins:
  - name: opentelemetry
    config:
      traces_endpoint: "COLLECTOR/v1/traces"
      headers: {Authorization: "Bearer {vault://env/LLMITM_OTLP_TOKEN}"}
      resource_attributes: {service.name: llmitm-e2e, deployment.environment: test}
      queue: {max_coalescing_delay: 0.05, initial_retry_delay: 0.05, max_retry_delay: 0.2}
  - name: file-log
    config: {path: "{records}"}
"""


@pytest.fixture(scope="module")
def gw_collector_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw_collector(gw_collector_server: FakeUpstream) -> FakeCollector:
    fake = FakeCollector()
    gw_collector_server.reply(fake)
    return fake


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream,
    gw_collector_server: FakeUpstream,
    gw_collector: FakeCollector,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config = CONFIG.replace("UPSTREAM", upstream.url).replace("COLLECTOR", gw_collector_server.url)
    g = Gateway(
        tmp_path_factory.mktemp("gw-otlp"),
        config,
        quiet=False,
        env={"LLMITM_TEST_KEY": PROVIDER_KEY, "LLMITM_OTLP_TOKEN": OTLP_TOKEN},
    )
    g.wait_ready()
    # a config the gateway refuses (an unregistered plugin) makes it exit just after it
    # starts listening: say so, rather than fail later to connect
    with contextlib.suppress(subprocess.TimeoutExpired):
        g.proc.wait(1.5)
    assert g.proc.poll() is None, f"the gateway exited:\n{g.log()}"
    yield g
    g.stop()
    # nothing any test did may put a secret anywhere but the collector's auth header
    for req in gw_collector.received:
        assert req.headers.get("authorization") == f"Bearer {OTLP_TOKEN}"
        for name, value in req.headers.items():
            assert PROVIDER_KEY not in value and CLIENT_KEY not in value
            if name != "authorization":
                assert OTLP_TOKEN not in value
        for secret in (PROVIDER_KEY, CLIENT_KEY, OTLP_TOKEN):
            assert secret.encode() not in req.body
    assert gw_collector.errors == []
    assert OTLP_TOKEN not in g.log() and PROVIDER_KEY not in g.log()


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


def my_span(fake: FakeCollector, tag: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        found = [
            span_data(s)
            for s in fake.spans
            if attributes(s.attributes).get("llmitm.message_id") == tag
        ]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.time() < deadline, f"no span for {tag}; errors: {fake.errors}"
        time.sleep(0.05)


def test_chat_span_joins_the_clients_trace(
    gw: Gateway, fake: FakeUpstream, gw_collector: FakeCollector, tag: str
) -> None:
    fake.reply(Reply.json(chat_completion("2", prompt_tokens=20, completion_tokens=5)))
    answer = client(gw, tag).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        temperature=0.5,
        extra_headers={
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            "X-User-Id": "u-1",
            "X-Session-Id": "s-1",
        },
    )
    assert answer.choices[0].message.content == "2"
    span = my_span(gw_collector, tag)
    assert span["trace_id"] == TRACE_ID and span["parent_span_id"] == PARENT_ID
    assert span["name"] == "chat gpt-4o-mini" and span["status"] == 0
    a = span["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.response.id"] == "chatcmpl-test"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (20, 5)
    assert a["llmitm.cost"] == pytest.approx((20 * 0.15 + 5 * 0.6) / 1e6)
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == fake.port
    assert (a["user.id"], a["session.id"]) == ("u-1", "s-1")
    assert json.loads(a["gen_ai.input.messages"])[1] == {
        "role": "user",
        "parts": [{"type": "text", "content": "1+1?"}],
    }
    assert json.loads(a["gen_ai.output.messages"])[0]["parts"] == [{"type": "text", "content": "2"}]
    # the record file-log wrote is the same call
    assert a["llmitm.record_id"] == gw.record(message_id=tag)["id"]
    resource = gw_collector.resources()[-1]
    assert resource["service.name"] == "llmitm-e2e"
    assert resource["deployment.environment"] == "test"


def test_streamed_chat_span(
    gw: Gateway, fake: FakeUpstream, gw_collector: FakeCollector, tag: str
) -> None:
    fake.reply(Reply.sse(chat_stream(["The ", "answer"], usage=(12, 4), pause=0.1)))
    stream = client(gw, tag).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "?"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "The answer"
    span = my_span(gw_collector, tag)
    a = span["attributes"]
    assert a["llmitm.request_mode"] == "stream"
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < a["llmitm.latency.request_ms"] / 1000
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (12, 4)
    assert json.loads(a["gen_ai.output.messages"])[0]["parts"][0]["content"] == "The answer"
    # no traceparent: a trace of its own
    assert span["trace_id"] != TRACE_ID and span["parent_span_id"] == ""


def test_upstream_error_span(
    gw: Gateway, fake: FakeUpstream, gw_collector: FakeCollector, tag: str
) -> None:
    fake.reply(
        Reply.json(
            {"error": {"message": "quota exceeded", "type": "insufficient_quota", "code": None}},
            429,
        )
    )
    with pytest.raises(openai.RateLimitError):
        client(gw, tag).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    span = my_span(gw_collector, tag)
    assert span["status"] == 2 and "quota exceeded" in span["message"]
    assert span["attributes"]["error.type"] == "insufficient_quota"
    assert span["attributes"]["http.response.status_code"] == 429


def test_route_without_payloads_sends_no_content(
    gw: Gateway, fake: FakeUpstream, gw_collector: FakeCollector, tag: str
) -> None:
    fake.reply(Reply.json(chat_completion("secret answer")))
    client(gw, tag, "/quiet/v1").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "private question"}]
    )
    a = my_span(gw_collector, tag)["attributes"]
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
    assert a["llmitm.route"] == "quiet" and a["gen_ai.usage.input_tokens"] == 11
    for req in gw_collector.received:
        assert b"private question" not in req.body and b"secret answer" not in req.body


def test_embeddings_span(
    gw: Gateway, fake: FakeUpstream, gw_collector: FakeCollector, tag: str
) -> None:
    fake.reply(
        Reply.json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    )
    client(gw, tag).embeddings.create(
        model="text-embedding-3-small", input="hello world", encoding_format="float"
    )
    span = my_span(gw_collector, tag)
    assert span["name"] == "embeddings text-embedding-3-small"
    a = span["attributes"]
    assert a["gen_ai.usage.input_tokens"] == 2 and "gen_ai.usage.output_tokens" not in a
    assert a["gen_ai.request.encoding_formats"] == ["float"]


def test_collector_outage_is_retried(
    gw: Gateway, fake: FakeUpstream, gw_collector: FakeCollector, tag: str
) -> None:
    gw_collector.fail(
        Reply(
            503,
            {"retry-after": "0.3", "content-type": "application/x-protobuf"},
            status_body(14, "unavailable"),
        )
    )
    fake.reply(Reply.json(chat_completion("ok")))
    t0 = time.time()
    client(gw, tag).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    assert time.time() - t0 < 2  # the client never waits for the exporter
    my_span(gw_collector, tag)
