"""opik-log end to end: what a fake Opik receives, and how it answers.

Three levels, each against the fake Opik of `tests/fakes/opik.py` (which validates every
batch against Opik's write schemas, strictly, and answers as Opik does):

1. the sink's requests sent as they are over HTTP, and Opik's answers read back
   (cloud and self-hosted URL forms, wrong key, refused content, rate limits);
2. the sink driven by the shared delivery (`exporters.http_delivery`): batches,
   retries after 503s and 429s, the spool while Opik is down;
3. a real gateway (`mitmdump -s addons/gateway.py`) with `opik-log` configured, the
   `openai` SDK as the client: chat, streamed chat, an upstream error, embeddings,
   context headers and body metadata, and no secret anywhere but the auth header.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from exporters.http_delivery import HttpDelivery
from exporters.ids import uuid7
from exporters.opik import OpikLogConfig, OpikSink, from_config
from exporters.record import AIInfo, CallRecord
from exporters.sink import Item, Verdict
from providers.base import Usage
from tests.conftest import Gateway, free_port
from tests.fakes.opik import FakeOpik, uuid7_time
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion, chat_stream

OPIK_KEY = "opik-e2e-key-5b1d0e"
WORKSPACE = "team-ws"
PROVIDER_KEY = "sk-provider-secret-e2e-0987654321"
CLIENT_KEY = "client-key-e2e-112233"


@pytest.fixture(scope="module")
def opik_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def serve(server: FakeUpstream, fake: FakeOpik) -> FakeOpik:
    server.reset()
    server.reply(fake)
    return fake


def record_now(**ai_kw: Any) -> CallRecord:
    """A finished chat call of a moment ago (Opik wants ids of about now)."""
    start = time.time() - 1.2
    info = AIInfo(
        **{
            "provider": "openai",
            "route_type": "llm/v1/chat",
            "request_model": "gpt-4o-mini",
            "response_model": "gpt-4o-mini-2024-07-18",
            "stream": False,
            "usage": Usage(12, 3),
            "cost": 0.0000036,
            "finish_reason": "stop",
            "llm_latency_ms": 900.0,
            "request_payload": {"messages": [{"role": "user", "content": "hi"}]},
            "response_payload": chat_completion("hello"),
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
        context={"session_id": "s-1"},
    )


def send(sink: OpikSink, channel: str, items: list[Item]) -> Verdict:
    """One request as the delivery sends it, and the sink's reading of the answer."""
    p = sink.request(channel, items)
    r = httpx.request(p.method, p.url, headers=p.headers, content=p.body, timeout=sink.timeout)
    return sink.verdict(
        items, r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content
    )


# ------------------------------------------------------------ 1. on the wire


@pytest.mark.parametrize(
    "endpoint, prefix",
    [
        ("{url}/opik/", "/opik/api"),  # Kong's default form (https://www.comet.com/opik/)
        ("{url}/opik/api", "/opik/api"),  # the SDK's cloud base URL
        ("{url}/api", "/api"),  # a local Opik (http://localhost:5173/api)
    ],
)
def test_batches_reach_opik_under_every_url_form(
    opik_server: FakeUpstream, endpoint: str, prefix: str
) -> None:
    fake = serve(opik_server, FakeOpik(api_key=OPIK_KEY, workspace=WORKSPACE, prefix=prefix))
    sink = from_config(
        OpikLogConfig(
            http_endpoint=endpoint.format(url=opik_server.url),
            opik_api_key=OPIK_KEY,
            opik_workspace=WORKSPACE,
            project_name="gw-project",
        ),
        "e2e",
    )
    records = [record_now() for _ in range(30)]
    items = [it for r in records for it in sink.items(r)]
    for channel in ("traces", "spans"):
        assert send(sink, channel, [it for it in items if it.channel == channel]) == Verdict()
    assert fake.refused == []
    assert len(fake.traces) == len(fake.spans) == 30
    assert {t["id"] for t in fake.traces} == {r.id for r in records}
    assert {s["trace_id"] for s in fake.spans} == {r.id for r in records}
    assert all(t["project_name"] == "gw-project" for t in fake.traces)
    # big batches were compressed, as the SDK does; the key only in its header
    assert all(r.headers.get("content-encoding") == "gzip" for r in fake.received)
    assert all(r.headers["authorization"] == OPIK_KEY for r in fake.received)
    assert not any(OPIK_KEY.encode() in body for body in fake.all_bodies())


def test_self_hosted_opik_without_credentials(opik_server: FakeUpstream) -> None:
    fake = serve(opik_server, FakeOpik(prefix="/api"))
    sink = from_config(OpikLogConfig(http_endpoint=f"{opik_server.url}/api"), "local")
    trace, span = sink.items(record_now())
    assert send(sink, "traces", [trace]) == Verdict()
    assert send(sink, "spans", [span]) == Verdict()
    assert len(fake.traces) == len(fake.spans) == 1
    assert all("authorization" not in r.headers for r in fake.received)
    assert all("comet-workspace" not in r.headers for r in fake.received)


@pytest.mark.parametrize(
    "key, workspace, hint",
    [("wrong-key", WORKSPACE, "opik_api_key"), (OPIK_KEY, "other-ws", "opik_workspace")],
)
def test_refused_credentials_keep_the_batch_with_a_hint(
    opik_server: FakeUpstream, key: str, workspace: str, hint: str
) -> None:
    """Opik refuses the key or the workspace: the entries are held (kept for a fixed
    config), not dropped, and the reason says which setting to check."""
    fake = serve(opik_server, FakeOpik(api_key=OPIK_KEY, workspace=WORKSPACE))
    sink = from_config(
        OpikLogConfig(
            http_endpoint=f"{opik_server.url}/api", opik_api_key=key, opik_workspace=workspace
        ),
        "bad",
    )
    items = sink.items(record_now())[:1]
    v = send(sink, "traces", items)
    assert v.hold and v.retry == items and v.dropped == [] and hint in v.reason
    assert fake.traces == []


WRONG_KEY_CONFIG = """
_format_version: "3.0"
services:
  - name: llm
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: mock, name: mock-gpt}
              logging: {log_statistics: true, log_payloads: true}
plugins:
  - name: opik-log
    config:
      http_endpoint: "@OPIK@/api"
      opik_api_key: "@KEY@"
      opik_workspace: team-ws
"""


def spooled_lines(root: Path) -> int:
    """Lines in the spool files under `root` (a rough count: what is waiting there)."""
    return sum(p.read_bytes().count(b"\n") for p in root.rglob("*.jsonl"))


def test_a_wrong_key_keeps_the_calls_until_the_config_is_fixed(
    opik_server: FakeUpstream, start_gateway: Any
) -> None:
    """The key in the config is wrong: Opik refuses every batch. The calls are kept in
    the spool (none dropped), an error says what to fix, once. The user fixes the key
    in the config file: the reloaded plugin sends every call made meanwhile, then the
    new ones, each once."""
    fake = serve(opik_server, FakeOpik(api_key=OPIK_KEY, workspace=WORKSPACE, prefix="/api"))
    config = WRONG_KEY_CONFIG.replace("@OPIK@", opik_server.url)
    gw = start_gateway(config.replace("@KEY@", "a-wrong-key"), quiet=False)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    before = [f"wrong-key-{i}" for i in range(3)]
    for tag in before:
        client.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Message-Id": tag},
        )
    spool = gw.tmp / "spool"
    fake.wait(lambda: spooled_lines(spool) >= 6, what="traces and spans kept in the spool")
    assert fake.traces == [] and fake.spans == []
    assert fake.refused and all(status == 401 for status, _ in fake.refused)
    refusals = [line for line in gw.log().splitlines() if "refused the exporter's settings" in line]
    assert len(refusals) == 1 and "opik_api_key" in refusals[0]
    assert "refused, not retried" not in gw.log()  # nothing dropped

    gw.write_config(config.replace("@KEY@", OPIK_KEY))  # the fix
    fake.wait(lambda: "llmitm: reloaded" in gw.log(), what="the reload")
    client.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Message-Id": "fixed-key"},
    )
    tags = [*before, "fixed-key"]

    def arrived() -> bool:
        ids = [t["metadata"].get("message_id") for t in fake.traces]
        return set(tags) <= set(ids) and len(fake.spans) >= len(tags)

    fake.wait(arrived, what="every call, once the key is fixed")
    time.sleep(0.5)  # anything sent twice would arrive by now
    assert sorted(t["metadata"].get("message_id") for t in fake.traces) == sorted(tags)
    assert sorted(s["trace_id"] for s in fake.spans) == sorted(t["id"] for t in fake.traces)
    fake.wait(lambda: spooled_lines(spool) == 0, what="an empty spool")


def test_the_fake_refuses_what_opik_schemas_do_not_allow(opik_server: FakeUpstream) -> None:
    # the checks are real: an unknown field, a non-UUIDv7 id, usage that is not integers
    fake = serve(opik_server, FakeOpik(api_key=OPIK_KEY, workspace=WORKSPACE))
    sink = from_config(
        OpikLogConfig(
            http_endpoint=f"{opik_server.url}/api", opik_api_key=OPIK_KEY, opik_workspace=WORKSPACE
        ),
        "e2e",
    )
    trace, span = sink.items(record_now())
    bad = [
        Item("traces", {**trace.data, "thread": "typo"}),
        Item("traces", {**trace.data, "id": str(uuid.uuid4())}),
        Item("spans", {**span.data, "usage": {"prompt_tokens": 1.5}}),
        Item("spans", {**span.data, "end_time": "2001-01-01T00:00:00.000Z"}),
    ]
    for item in bad:
        v = send(sink, item.channel, [item])
        assert v.dropped == [item] and "422" in v.reason
    assert len(fake.refused) == 4 and fake.traces == [] and fake.spans == []


def test_rate_limits_and_outages_are_retried(opik_server: FakeUpstream) -> None:
    fake = serve(opik_server, FakeOpik())
    fake.fail(
        Reply(429, {"RateLimit-Reset": "4", "content-type": "application/json"}, b"{}"),
        Reply.json({"code": 503, "message": "unavailable"}, 503, {"retry-after": "1"}),
    )
    sink = from_config(OpikLogConfig(http_endpoint=f"{opik_server.url}/api"), "e2e")
    items = sink.items(record_now())[:1]
    first = send(sink, "traces", items)
    assert first.retry == items and first.retry_after == 4.0
    second = send(sink, "traces", items)
    assert second.retry == items and second.retry_after == 1.0
    assert send(sink, "traces", items) == Verdict()
    assert len(fake.traces) == 1


# ------------------------------------------------ 2. through the shared delivery


async def until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _delivery(sink: OpikSink, spool: Path) -> HttpDelivery:
    return HttpDelivery(
        sink, spool, linger=0.01, initial_retry_delay=0.05, max_retry_delay=0.2, spool_after=2
    )


async def test_delivery_sends_every_call_once(opik_server: FakeUpstream, tmp_path: Path) -> None:
    fake = serve(opik_server, FakeOpik(api_key=OPIK_KEY, workspace=WORKSPACE, prefix="/opik/api"))
    sink = from_config(
        OpikLogConfig(
            http_endpoint=f"{opik_server.url}/opik/",
            opik_api_key=OPIK_KEY,
            opik_workspace=WORKSPACE,
        ),
        "opik-log@global#1",
    )
    d = _delivery(sink, tmp_path)
    d.start()
    records = [record_now() for _ in range(120)]
    for r in records:
        d.submit(r)
    await until(lambda: len(fake.traces) == 120 and len(fake.spans) == 120)
    await d.aclose()
    assert fake.refused == []
    assert sorted(t["id"] for t in fake.traces) == sorted(r.id for r in records)
    assert d.stats.sent == 240 and d.stats.dropped == 0
    # batched: far fewer requests than entries
    assert len(fake.received) < 20


async def test_delivery_retries_through_503_and_429(
    opik_server: FakeUpstream, tmp_path: Path
) -> None:
    fake = serve(opik_server, FakeOpik())
    fake.fail(
        Reply.json({"code": 503, "message": "down"}, 503),
        Reply(429, {"RateLimit-Reset": "1", "content-type": "application/json"}, b"{}"),
    )
    sink = from_config(OpikLogConfig(http_endpoint=f"{opik_server.url}/api"), "retry")
    d = _delivery(sink, tmp_path)
    d.start()
    t0 = time.monotonic()
    d.submit(record_now())
    await until(lambda: len(fake.traces) == 1 and len(fake.spans) == 1)
    await d.aclose()
    assert d.stats.retried >= 2 and d.stats.dropped == 0
    # the lane that got the 429 waited the second RateLimit-Reset asked for
    assert time.monotonic() - t0 >= 1.0


async def test_delivery_spools_while_opik_is_down_and_replays(
    opik_server: FakeUpstream, tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there
    sink = from_config(OpikLogConfig(http_endpoint=f"http://127.0.0.1:{dead}/api"), "spooled")
    d = _delivery(sink, tmp_path)
    d.start()
    records = [record_now() for _ in range(5)]
    for r in records:
        d.submit(r)
    await until(lambda: d.stats.spooled >= 10)
    await d.aclose(timeout=0.5)
    # a later run, Opik back up (same sink name: same spool)
    fake = serve(opik_server, FakeOpik())
    sink2 = from_config(OpikLogConfig(http_endpoint=f"{opik_server.url}/api"), "spooled")
    assert sink2.name == sink.name
    d2 = _delivery(sink2, tmp_path)
    d2.start()
    await until(lambda: len(fake.traces) == 5 and len(fake.spans) == 5)
    await d2.aclose()
    assert {t["id"] for t in fake.traces} == {r.id for r in records}
    assert fake.refused == []


# ----------------------------------------------------------- 3. a real gateway

CONFIG = """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    read_timeout: 3000
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
                options: {upstream_url: "@UPSTREAM@", input_cost: 0.15, output_cost: 0.6}
              logging: {log_statistics: true, log_payloads: true}
      - name: embeddings
        paths: ["/openai/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model: {provider: openai, name: text-embedding-3-small, options: {upstream_url: "@UPSTREAM@"}}
              logging: {log_payloads: true}
plugins:
  - name: opik-log
    config:
      http_endpoint: "@OPIK@/opik/"
      opik_api_key: "{vault://env/LLMITM_OPIK_KEY}"
      opik_workspace: team-ws
      project_name: gw-project
  - name: file-log
    config: {path: "{records}"}
"""


@pytest.fixture(scope="module")
def opik_fake(opik_server: FakeUpstream) -> FakeOpik:
    return serve(opik_server, FakeOpik(api_key=OPIK_KEY, workspace=WORKSPACE, prefix="/opik/api"))


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream,
    opik_server: FakeUpstream,
    opik_fake: FakeOpik,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config = CONFIG.replace("@UPSTREAM@", upstream.url).replace("@OPIK@", opik_server.url)
    g = Gateway(
        tmp_path_factory.mktemp("gw-opik"),
        config,
        quiet=False,
        env={"LLMITM_TEST_KEY": PROVIDER_KEY, "LLMITM_OPIK_KEY": OPIK_KEY},
    )
    g.wait_ready()
    yield g
    g.stop()
    # Nothing any test did may leak a key into what Opik received, or into the log.
    bodies = b"".join(opik_fake.all_bodies())
    for secret in (OPIK_KEY, PROVIDER_KEY, CLIENT_KEY):
        assert secret.encode() not in bodies, secret
        assert secret not in g.log(), secret
    for r in opik_fake.received:
        others = {k: v for k, v in r.headers.items() if k != "authorization"}
        assert OPIK_KEY not in json.dumps(others)
        assert r.headers.get("authorization") == OPIK_KEY


@pytest.fixture
def tag(opik_server: FakeUpstream, opik_fake: FakeOpik) -> str:
    opik_server.reply(opik_fake)  # the wire tests above may have replaced the handler
    return f"msg-{uuid.uuid4().hex}"


def client(gw: Gateway, tag: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/openai/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        default_headers={"X-Message-Id": tag},
    )


def opik_entries(fake: FakeOpik, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trace (found by its X-Message-Id) and the span of this test's call."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        trace = fake.trace_where(message_id=tag)
        span = fake.span_of(trace["id"]) if trace else None
        found.update(trace=trace, span=span)
        return span is not None

    fake.wait(ready, what=f"trace and span of {tag}")
    return found["trace"], found["span"]


def test_chat_call_is_a_trace_with_an_llm_span(
    gw: Gateway, upstream: FakeUpstream, opik_fake: FakeOpik, tag: str
) -> None:
    upstream.reset()
    upstream.reply(Reply.json(chat_completion("2", prompt_tokens=20, completion_tokens=5)))
    answer = client(gw, tag).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        extra_headers={
            "X-User-Id": "u-1",
            "X-Session-Id": "s-1",
            "X-Chat-Id": "c-1",
            "X-Organization-Id": "o-1",
            "X-Project-Id": "p-1",
        },
        extra_body={"metadata": {"feature": "calc"}},
    )
    assert answer.choices[0].message.content == "2"
    trace, span = opik_entries(opik_fake, tag)
    rec = gw.record(message_id=tag)
    assert trace["id"] == rec["id"]  # one id for the call, in every sink
    assert trace["project_name"] == span["project_name"] == "gw-project"
    assert trace["name"] == "chat" and trace["thread_id"] == "c-1"
    assert trace["input"]["messages"][1] == {"role": "user", "content": "1+1?"}
    assert trace["output"] == {"role": "assistant", "content": "2"}
    meta = trace["metadata"]
    assert (meta["user_id"], meta["session_id"], meta["chat_id"]) == ("u-1", "s-1", "c-1")
    assert (meta["organization_id"], meta["project_id"]) == ("o-1", "p-1")
    assert meta["message_id"] == tag and meta["request_metadata"] == {"feature": "calc"}
    assert "error_info" not in trace and "error_info" not in span
    assert span["type"] == "llm" and span["provider"] == "openai"
    assert span["model"] == "gpt-4o-mini"
    assert span["usage"]["prompt_tokens"] == 20 and span["usage"]["total_tokens"] == 25
    assert span["total_estimated_cost"] == pytest.approx((20 * 0.15 + 5 * 0.6) / 1e6)
    assert span["output"]["choices"][0]["message"]["content"] == "2"
    assert uuid7_time(span["id"]) is not None


def test_streamed_call_has_time_to_first_token(
    gw: Gateway, upstream: FakeUpstream, opik_fake: FakeOpik, tag: str
) -> None:
    upstream.reset()
    upstream.reply(Reply.sse(chat_stream(["The ", "answer ", "is ", "2."], pause=0.1)))
    stream = client(gw, tag).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "1+1?"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "The answer is 2."
    trace, span = opik_entries(opik_fake, tag)
    assert 50 < span["ttft"] < 2000 and trace["ttft"] == span["ttft"]
    assert "stream" in trace["tags"]
    assert trace["output"]["content"] == "The answer is 2."
    assert span["usage"]["completion_tokens"] == 4


def test_upstream_error_is_error_info(
    gw: Gateway, upstream: FakeUpstream, opik_fake: FakeOpik, tag: str
) -> None:
    upstream.reset()
    upstream.reply(
        Reply.json(
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}},
            429,
        )
    )
    with pytest.raises(openai.RateLimitError):
        client(gw, tag).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    trace, span = opik_entries(opik_fake, tag)
    for entry in (trace, span):
        assert "Rate limit reached" in entry["error_info"]["message"]
        assert "429" in entry["error_info"]["traceback"]
    assert trace["metadata"]["status"] == "error" and "error" in trace["tags"]


def test_embeddings_without_the_vectors(
    gw: Gateway, upstream: FakeUpstream, opik_fake: FakeOpik, tag: str
) -> None:
    upstream.reset()
    upstream.reply(
        Reply.json(
            {
                "object": "list",
                "model": "text-embedding-3-small",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.5] * 16} for i in range(2)
                ],
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )
    )
    out = client(gw, tag).embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    assert len(out.data) == 2
    trace, span = opik_entries(opik_fake, tag)
    assert trace["name"] == "embeddings" and trace["input"] == {"input": ["a", "b"]}
    assert trace["output"] == {"embeddings": 2, "dimensions": 16}
    assert span["name"] == "openai.embeddings"
    assert span["output"]["data"][0]["embedding"] == "<16 dimensions>"
    assert span["usage"]["prompt_tokens"] == 4


def test_every_call_reached_opik_and_nothing_was_refused(gw: Gateway, opik_fake: FakeOpik) -> None:
    # runs last: one trace and one span for each call the tests above made
    ids = {r["id"] for r in gw.wait_records(4)}
    opik_fake.wait(lambda: ids <= {t["id"] for t in opik_fake.traces}, what="every trace")
    opik_fake.wait(lambda: ids <= {s["trace_id"] for s in opik_fake.spans}, what="every span")
    assert len(opik_fake.traces) == len(opik_fake.spans) == len(ids)
    assert opik_fake.refused == []
