"""exporters/opik.py: the opik-log exporter's config, events, requests and verdicts.

Every trace and span built here is validated against Opik's write schemas
(`../shared/specs/opik-write-schemas.json`) with unknown fields refused, and compared
with what Opik's own SDK sends (`../shared/captures/opik-sdk-2.2.122-requests.json`).
"""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from exporters import opik
from exporters.opik import OpikLogConfig, OpikSink, batch_url, from_config, iso_ms
from exporters.record import AIInfo, CallRecord
from exporters.sink import Item
from providers.base import Usage
from tests.fakes.opik import ISO_MS, batch_problems, entry_problems, uuid7_time

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "captures"
KEY = "opik-test-api-key-7f3a9c"
CLIENT_SECRET = "sk-client-secret-never-exported"
RECORD_ID = "01890a5d-ac96-774b-bcce-b302099a8057"  # a UUIDv7 of 2023-07-03
T0 = 1_700_000_000.1234


# ---------------------------------------------------------------- builders


def ai(**kw: Any) -> AIInfo:
    base: dict[str, Any] = {
        "provider": "openai",
        "route_type": "llm/v1/chat",
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "stream": False,
        "upstream_url": "https://api.openai.com/v1/chat/completions",
        "usage": Usage(20, 5),
        "cost": 0.0000060,
        "finish_reason": "stop",
        "llm_latency_ms": 800.0,
    }
    return AIInfo(**{**base, **kw})


def record(info: AIInfo | None, **kw: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": RECORD_ID,
        "started_at": T0,
        "ended_at": T0 + 1.0,
        "status": "ok",
        "client_ip": "127.0.0.1",
        "route": "chat",
        "service": "llm",
        "request": {
            "method": "POST",
            "uri": "/v1/chat/completions",
            "size": 120,
            # what the recorder keeps: credentials redacted; other headers as sent
            "headers": {
                "authorization": "[REDACTED]",
                "x-custom-header": CLIENT_SECRET,
                "content-type": "application/json",
            },
        },
        "response": {"status": 200, "size": 456},
        "latencies": {"request": 1000.0, "proxy": 800.0, "gateway": 200.0},
        "ai": info,
    }
    return CallRecord(**{**base, **kw})


CHAT_REQUEST = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1?"},
    ],
    "temperature": 0.2,
}
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "2"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
}
EMBED_REQUEST = {"model": "text-embedding-3-small", "input": ["a", "b"]}
EMBED_RESPONSE = {
    "object": "list",
    "model": "text-embedding-3-small",
    "data": [
        {"object": "embedding", "index": 0, "embedding": [0.1] * 8},
        {"object": "embedding", "index": 1, "embedding": [0.2] * 8},
    ],
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}
ALL_CONTEXT = {
    "user_id": "u-1",
    "session_id": "s-1",
    "chat_id": "c-1",
    "message_id": "m-1",
    "organization_id": "o-1",
    "project_id": "p-1",
    "metadata": {"user_id": "u-1", "feature": "summary", "priority": 3},
}


def sink(**cfg: Any) -> OpikSink:
    base = {"opik_api_key": KEY, "opik_workspace": "my-ws"}
    return from_config(OpikLogConfig(**{**base, **cfg}), "opik-log@global#0123456789abcdef")


def built(rec: CallRecord, **cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trace and span of `rec`, after checking both against the strict schemas and
    our own conventions."""
    items = sink(**cfg).items(rec)
    assert [it.channel for it in items] == ["traces", "spans"]
    trace, span = items[0].data, items[1].data
    assert entry_problems("traces", trace) == []
    assert entry_problems("spans", span) == []
    for entry in (trace, span):
        json.dumps(entry, allow_nan=False)  # plain JSON, spoolable as it is
        assert ISO_MS.match(entry["start_time"]) and ISO_MS.match(entry["end_time"])
    assert span["trace_id"] == trace["id"] and span["type"] == "llm"
    assert span["id"] != trace["id"]
    assert trace["start_time"] <= span["start_time"] <= span["end_time"] <= trace["end_time"]
    # nothing secret in what may be spooled to disk
    text = json.dumps([trace, span])
    assert KEY not in text and CLIENT_SECRET not in text and "REDACTED" not in text
    return trace, span


# ------------------------------------------------------- one record of each kind


CASES: list[tuple[str, CallRecord, dict[str, Any]]] = [
    (
        "chat ok, with payloads and cost",
        record(
            ai(request_payload=CHAT_REQUEST, response_payload=CHAT_RESPONSE),
            context={"user_id": "u-1", "session_id": "s-1"},
        ),
        {
            "trace.name": "chat",
            "trace.input": {"messages": CHAT_REQUEST["messages"]},
            "trace.output": {"role": "assistant", "content": "2"},
            "trace.thread_id": "s-1",
            "trace.metadata.user_id": "u-1",
            "span.name": "openai.chat",
            "span.input": CHAT_REQUEST,
            "span.output": CHAT_RESPONSE,
            "span.model": "gpt-4o-2024-08-06",
            "span.provider": "openai",
            "span.total_estimated_cost": 0.000006,
            "span.usage": {
                "prompt_tokens": 20,
                "completion_tokens": 5,
                "total_tokens": 25,
                "original_usage.prompt_tokens": 20,
                "original_usage.completion_tokens": 5,
                "original_usage.total_tokens": 25,
            },
            "no": ["trace.error_info", "span.error_info", "trace.ttft"],
        },
    ),
    (
        "streamed, with time to first token",
        record(
            ai(
                stream=True,
                time_to_first_token_ms=250.5,
                request_payload={**CHAT_REQUEST, "stream": True},
                response_payload=CHAT_RESPONSE,
            ),
            context={"chat_id": "c-9", "session_id": "s-9"},
        ),
        {
            "trace.ttft": 250.5,
            "span.ttft": 250.5,
            "trace.thread_id": "c-9",  # the chat is the thread, over the session
            "trace.metadata.request_mode": "stream",
            "tags+": ["stream"],
        },
    ),
    (
        "failed upstream, with its error",
        record(
            ai(
                usage=None,
                cost=None,
                finish_reason=None,
                request_payload=CHAT_REQUEST,
                response_payload={
                    "error": {"message": "Rate limit reached", "type": "rate_limit_error"}
                },
            ),
            status="error",
            response={"status": 429, "size": 80},
            upstream={"url": "https://api.openai.com/v1/chat/completions", "status": 429},
            error={
                "status": 429,
                "type": "rate_limit_error",
                "code": "rate_limit_exceeded",
                "message": "Rate limit reached",
                "source": "upstream",
            },
        ),
        {
            "trace.error_info.exception_type": "rate_limit_error",
            "trace.error_info.message": "Rate limit reached",
            "span.error_info.exception_type": "rate_limit_error",
            "span.metadata.upstream_status": 429,
            "span.output.error.type": "rate_limit_error",  # the span keeps the answer
            "trace.metadata.status": "error",
            "trace.metadata.http_status": 429,
            "trace.metadata.usage_source": "none",
            "tags+": ["error"],
            "no": ["span.usage", "span.total_estimated_cost", "trace.output"],
        },
    ),
    (
        "client aborted mid-stream",
        record(
            ai(
                stream=True,
                usage=Usage(20, 3, estimated=True),
                cost=None,
                finish_reason=None,
                time_to_first_token_ms=120.0,
                llm_latency_ms=None,
            ),
            status="client_aborted",
            response={"status": 200, "size": 40},
            error={
                "status": None,
                "type": "connection_error",
                "code": None,
                "message": "client disconnected",
                "source": "client",
            },
        ),
        {
            "trace.error_info.exception_type": "connection_error",
            "trace.metadata.status": "client_aborted",
            "trace.metadata.usage_source": "estimated",
            "span.start_time": iso_ms(T0),  # no upstream latency known: the whole call
            "tags+": ["client_aborted", "usage:estimated", "stream"],
            "no": ["trace.input", "trace.output", "span.input", "span.output"],
        },
    ),
    (
        "client aborted, the record without error details",
        record(ai(stream=True), status="client_aborted", error=None),
        {
            "trace.error_info.exception_type": "client_aborted",
            "span.error_info.exception_type": "client_aborted",
        },
    ),
    (
        "embeddings, vectors reduced to their size",
        record(
            ai(
                route_type="llm/v1/embeddings",
                request_model="text-embedding-3-small",
                response_model="text-embedding-3-small",
                usage=Usage(2, 0),
                cost=None,
                finish_reason=None,
                request_payload=EMBED_REQUEST,
                response_payload=EMBED_RESPONSE,
            ),
            route="embeddings",
        ),
        {
            "trace.name": "embeddings",
            "trace.input": {"input": ["a", "b"]},
            "trace.output": {"embeddings": 2, "dimensions": 8},
            "span.name": "openai.embeddings",
            "span.output.data": [
                {"object": "embedding", "index": 0, "embedding": "<8 dimensions>"},
                {"object": "embedding", "index": 1, "embedding": "<8 dimensions>"},
            ],
            "span.usage.prompt_tokens": 2,
            "no": ["span.total_estimated_cost"],
        },
    ),
    (
        "no usage at all",
        record(ai(usage=None, cost=None)),
        {"trace.metadata.usage_source": "none", "no": ["span.usage", "span.total_estimated_cost"]},
    ),
    (
        "estimated usage",
        record(ai(usage=Usage(7, 9, estimated=True), cost=None)),
        {
            "span.usage.total_tokens": 16,
            "span.metadata.usage_source": "estimated",
            "tags+": ["usage:estimated"],
        },
    ),
    (
        "without payloads (log_payloads off)",
        record(ai()),
        {"no": ["trace.input", "trace.output", "span.input", "span.output"]},
    ),
    (
        "every context header and the body metadata",
        record(ai(request_payload=CHAT_REQUEST), context=ALL_CONTEXT),
        {
            "trace.metadata.user_id": "u-1",
            "trace.metadata.session_id": "s-1",
            "trace.metadata.chat_id": "c-1",
            "trace.metadata.message_id": "m-1",
            "trace.metadata.organization_id": "o-1",
            "trace.metadata.project_id": "p-1",
            "trace.metadata.request_metadata": ALL_CONTEXT["metadata"],
            "trace.thread_id": "c-1",
        },
    ),
    (
        "OpenAI cache and reasoning tokens",
        record(ai(usage=Usage(1000, 300, cache_read_tokens=800, reasoning_tokens=200))),
        {
            "span.usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 300,
                "total_tokens": 1300,
                "original_usage.prompt_tokens": 1000,
                "original_usage.completion_tokens": 300,
                "original_usage.total_tokens": 1300,
                "original_usage.prompt_tokens_details.cached_tokens": 800,
                "original_usage.completion_tokens_details.reasoning_tokens": 200,
            },
            "span.metadata.cache_read_tokens": 800,
            "span.metadata.reasoning_tokens": 200,
        },
    ),
    (
        "Anthropic cache reads and writes, with cost",
        record(
            ai(
                provider="anthropic",
                request_model="claude-sonnet-4-5",
                response_model="claude-sonnet-4-5-20250929",
                upstream_url="https://api.anthropic.com/v1/messages",
                usage=Usage(1500, 40, cache_read_tokens=1000, cache_write_tokens=300),
                cost=0.00123,
            )
        ),
        {
            "span.provider": "anthropic",
            "span.name": "anthropic.chat",
            "span.total_estimated_cost": 0.00123,
            "span.usage": {
                "prompt_tokens": 1500,
                "completion_tokens": 40,
                "total_tokens": 1540,
                # Anthropic's own shape: input_tokens leaves the cached ones out
                "original_usage.input_tokens": 200,
                "original_usage.output_tokens": 40,
                "original_usage.cache_read_input_tokens": 1000,
                "original_usage.cache_creation_input_tokens": 300,
            },
        },
    ),
    (
        "Bedrock cache tokens",
        record(
            ai(
                provider="bedrock",
                request_model="anthropic.claude-3-5-sonnet-20240620-v1:0",
                response_model=None,
                upstream_url="https://bedrock-runtime.us-east-1.amazonaws.com/model/x/converse",
                usage=Usage(120, 10, cache_read_tokens=100),
                cost=None,
            )
        ),
        {
            "span.provider": "bedrock",
            "span.model": "anthropic.claude-3-5-sonnet-20240620-v1:0",  # the request's
            "span.usage": {
                "prompt_tokens": 120,
                "completion_tokens": 10,
                "total_tokens": 130,
                "original_usage.inputTokens": 20,
                "original_usage.outputTokens": 10,
                "original_usage.totalTokens": 130,
                "original_usage.cacheReadInputTokens": 100,
            },
        },
    ),
    (
        "Gemini (Google AI) thinking and cached tokens",
        record(
            ai(
                provider="gemini",
                request_model="gemini-2.5-flash",
                response_model="gemini-2.5-flash",
                upstream_url="https://generativelanguage.googleapis.com/v1beta/models/"
                "gemini-2.5-flash:generateContent",
                usage=Usage(500, 90, cache_read_tokens=400, reasoning_tokens=60),
                cost=None,
            )
        ),
        {
            "span.provider": "google_ai",
            "span.usage": {
                "prompt_tokens": 500,
                "completion_tokens": 90,
                "total_tokens": 590,
                "original_usage.prompt_token_count": 500,
                "original_usage.candidates_token_count": 30,
                "original_usage.total_token_count": 590,
                "original_usage.cached_content_token_count": 400,
                "original_usage.thoughts_token_count": 60,
            },
        },
    ),
    (
        "Gemini on Vertex AI",
        record(
            ai(
                provider="gemini",
                request_model="gemini-2.5-pro",
                response_model="gemini-2.5-pro",
                upstream_url="https://us-central1-aiplatform.googleapis.com/v1/projects/p/"
                "locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
            )
        ),
        {"span.provider": "google_vertexai"},
    ),
    (
        "Azure OpenAI",
        record(ai(provider="azure")),
        {"span.provider": "azure", "tags+": ["provider:azure"]},
    ),
    (
        "a provider Opik does not price keeps its name",
        record(ai(provider="ollama", upstream_url="http://localhost:11434/api/chat", cost=None)),
        {"span.provider": "ollama", "span.name": "ollama.chat"},
    ),
    (
        "log_statistics off: no usage, cost or ttft",
        record(ai(log_statistics=False, time_to_first_token_ms=10.0)),
        {
            "no": [
                "span.usage",
                "span.total_estimated_cost",
                "span.ttft",
                "trace.ttft",
                "trace.metadata.usage_source",
            ]
        },
    ),
    (
        "completions",
        record(
            ai(
                route_type="llm/v1/completions",
                request_payload={"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"},
                response_payload={"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]},
            ),
            route=None,
        ),
        {
            "trace.name": "completions",  # no route name: the operation
            "trace.input": {"prompt": "Say hi"},
            "trace.output": {"text": "hi"},
            "span.name": "openai.completions",
        },
    ),
    (
        "Anthropic's native format passed through",
        record(
            ai(
                provider="anthropic",
                request_payload={
                    "model": "claude-sonnet-4-5",
                    "system": "Be brief.",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                response_payload={
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": "hello"}],
                },
            )
        ),
        {
            "trace.input": {
                "messages": [{"role": "user", "content": "hi"}],
                "system": "Be brief.",
            },
            "trace.output": {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        },
    ),
    (
        "preserve route, raw text answer",
        record(
            ai(
                route_type="preserve",
                request_payload={"anything": [1, 2]},
                response_payload="plain text answer",
            )
        ),
        {
            "span.name": "openai.preserve",
            "trace.input": {"anything": [1, 2]},
            "trace.output": "plain text answer",
            "span.output": "plain text answer",
        },
    ),
    (
        "several choices",
        record(
            ai(
                request_payload={**CHAT_REQUEST, "n": 2},
                response_payload={
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "a"}},
                        {"index": 1, "message": {"role": "assistant", "content": "b"}},
                    ]
                },
            )
        ),
        {
            "trace.output": {
                "choices": [
                    {"role": "assistant", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ]
            }
        },
    ),
    (
        "payloads that are not objects are wrapped",
        record(ai(request_payload=[1, 2], response_payload=42)),
        {"span.input": {"value": [1, 2]}, "span.output": {"value": 42}},
    ),
]


def _get(data: dict[str, Any], path: str) -> Any:
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(path)
        cur = cur[part]
    return cur


@pytest.mark.parametrize("rec, expect", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_items_of_every_kind_of_record(rec: CallRecord, expect: dict[str, Any]) -> None:
    trace, span = built(rec)
    both = {"trace": trace, "span": span}
    for path, value in expect.items():
        if path == "no":
            for missing in value:
                with pytest.raises(KeyError):
                    _get(both, missing)
        elif path == "tags+":
            for tag in value:
                assert tag in trace["tags"] and tag in span["tags"], tag
        else:
            assert _get(both, path) == value, path
    assert trace["id"] == rec.id  # the call's id names the trace
    assert "llmitm" in trace["tags"]
    assert trace["metadata"]["created_from"] == "llmitm"


def test_times_have_milliseconds_and_the_span_is_the_upstream_part() -> None:
    trace, span = built(record(ai(llm_latency_ms=800.0)))
    assert trace["start_time"] == "2023-11-14T22:13:20.123Z"
    assert trace["end_time"] == "2023-11-14T22:13:21.123Z"
    assert span["start_time"] == "2023-11-14T22:13:20.323Z"  # 800 ms before the end
    assert span["end_time"] == trace["end_time"]
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1.9999) == "1970-01-01T00:00:01.999Z"  # truncated, as the record's ms


def test_a_latency_longer_than_the_call_is_clamped() -> None:
    trace, span = built(record(ai(llm_latency_ms=5000.0)))
    assert span["start_time"] == trace["start_time"]


def test_span_id_is_a_uuid7_of_the_span_start() -> None:
    _, span = built(record(ai(llm_latency_ms=500.0)))
    assert uuid7_time(span["id"]) == pytest.approx(T0 + 0.5, abs=0.002)


def test_a_record_id_that_is_not_a_uuid7_gets_a_new_trace_id() -> None:
    rec = record(ai(), id=str(uuid.uuid4()))
    trace, span = built(rec)
    assert trace["id"] != rec.id and span["trace_id"] == trace["id"]
    assert uuid7_time(trace["id"]) == pytest.approx(T0, abs=0.002)


def test_a_record_without_ai_yields_nothing() -> None:
    assert sink().items(record(None, status="error", error={"message": "no route"})) == []


def test_project_name_goes_on_every_entry() -> None:
    trace, span = built(record(ai()), project_name="gw-project")
    assert trace["project_name"] == span["project_name"] == "gw-project"
    trace, span = built(record(ai()))
    assert "project_name" not in trace and "project_name" not in span


def test_a_context_value_that_is_not_an_id_is_kept_in_metadata_but_not_as_thread() -> None:
    trace, _ = built(record(ai(), context={"chat_id": "", "session_id": "s-2", "tenant": "t"}))
    assert trace["thread_id"] == "s-2"
    assert trace["metadata"]["tenant"] == "t"
    assert "chat_id" not in trace["metadata"]


def test_base64_embeddings_are_sized_too() -> None:
    import base64
    import struct

    vec = base64.b64encode(struct.pack("<6f", *range(6))).decode()
    rec = record(
        ai(
            route_type="llm/v1/embeddings",
            request_payload=EMBED_REQUEST,
            response_payload={"data": [{"index": 0, "embedding": vec}]},
        )
    )
    trace, span = built(rec)
    assert trace["output"] == {"embeddings": 1, "dimensions": 6}
    assert span["output"]["data"][0]["embedding"] == "<6 dimensions>"


# ---------------------------------------------------- compared with Opik's SDK


def _capture() -> list[dict[str, Any]]:
    return json.loads((CAPTURES / "opik-sdk-2.2.122-requests.json").read_text())


def _sdk_batch(channel: str) -> dict[str, Any]:
    return next(r for r in _capture() if r["path"].endswith(f"/{channel}/batch"))


def test_the_strict_schemas_accept_what_opik_sdk_sends() -> None:
    # the validator itself is right: Opik's own SDK's batches pass it
    for channel in ("traces", "spans"):
        assert batch_problems(channel, _sdk_batch(channel)["body"]) == []


@pytest.mark.parametrize(
    "channel, change, problem",
    [
        ("traces", {"thred_id": "c-1"}, "'thred_id' was unexpected"),
        ("traces", {"error_info": {"exception_type": "x"}}, "error_info"),
        ("traces", {"start_time": "2024-05-01 12:00"}, "is not a 'date-time'"),
        ("spans", {"usage": {"prompt_tokens": 1.5}}, "usage"),
        ("spans", {"type": "chat"}, "type"),
        ("spans", {"trace_id": str(uuid.uuid4())}, "trace_id"),
        ("spans", {"total_estimated_cost": "0.1"}, "total_estimated_cost"),
    ],
)
def test_the_strict_schemas_refuse_what_opik_would_drop_or_reject(
    channel: str, change: dict[str, Any], problem: str
) -> None:
    # the validation the tests rely on can fail: an entry of ours, spoiled once
    trace, span = sink().items(record(ai()))
    entry = {**(trace if channel == "traces" else span).data, **change}
    problems = entry_problems(channel, entry)
    assert problems and any(problem in p for p in problems), problems


@pytest.mark.parametrize("channel", ["traces", "spans"])
def test_same_wire_as_opik_sdk(channel: str) -> None:
    sdk = _sdk_batch(channel)
    s = sink(http_endpoint="http://127.0.0.1:5173/api", opik_api_key="test-api-key")
    rec = record(
        ai(request_payload=CHAT_REQUEST, response_payload=CHAT_RESPONSE),
        context={"session_id": "conv-1"},
    )
    items = s.items(rec)
    prepared = s.request(channel, [it for it in items if it.channel == channel] * 20)
    assert prepared.method == sdk["method"] == "POST"
    assert urlsplit(prepared.url).path == sdk["path"]
    ours = {k.lower(): v for k, v in prepared.headers.items()}
    theirs = {k.lower(): v for k, v in sdk["headers"].items()}
    assert set(theirs) <= set(ours)  # authorization, comet-workspace, content-type, gzip
    assert ours["authorization"] == theirs["authorization"] == "test-api-key"  # no Bearer
    assert ours["comet-workspace"] == theirs["comet-workspace"] == "my-ws"
    assert ours["content-encoding"] == "gzip"
    # the fields we fill are the SDK's, but those only the SDK has a use for
    entry = json.loads(gzip.decompress(prepared.body))[channel][0]
    sdk_entry = sdk["body"][channel][0]
    assert set(sdk_entry) - set(entry) <= {"source", "last_updated_at", "project_name"}
    if channel == "spans":
        assert set(sdk_entry["usage"]) == set(entry["usage"])


# ------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    "endpoint, traces_url",
    [
        # Kong's default and form: the plugin appends api/v1/private/...
        ("https://www.comet.com/opik/", "https://www.comet.com/opik/api/v1/private/traces/batch"),
        ("https://www.comet.com/opik", "https://www.comet.com/opik/api/v1/private/traces/batch"),
        # the SDK's base URLs: /v1/private/... appended
        (
            "https://www.comet.com/opik/api",
            "https://www.comet.com/opik/api/v1/private/traces/batch",
        ),
        ("http://localhost:5173/api", "http://localhost:5173/api/v1/private/traces/batch"),
        ("http://localhost:5173/api/", "http://localhost:5173/api/v1/private/traces/batch"),
        ("http://localhost:5173", "http://localhost:5173/api/v1/private/traces/batch"),
        (
            "http://opik.internal:8080/api/v1/private/",
            "http://opik.internal:8080/api/v1/private/traces/batch",
        ),
    ],
)
def test_url_joining(endpoint: str, traces_url: str) -> None:
    assert batch_url(endpoint, "traces") == traces_url
    assert batch_url(endpoint, "spans") == traces_url.replace("/traces/", "/spans/")
    s = sink(http_endpoint=endpoint)
    items = s.items(record(ai()))
    assert s.request("traces", items[:1]).url == traces_url
    assert s.request("spans", items[1:]).url == traces_url.replace("/traces/", "/spans/")


def test_request_bodies_headers_and_compression() -> None:
    s = sink()
    trace, span = s.items(record(ai()))
    small = s.request("spans", [span])
    assert small.headers == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": KEY,
        "Comet-Workspace": "my-ws",
    }
    assert json.loads(small.body) == {"spans": [span.data]}
    big = s.request("traces", [trace] * 50)
    assert big.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(big.body)) == {"traces": [trace.data] * 50}
    assert len(big.body) < len(json.dumps({"traces": [trace.data] * 50}))
    # the key is in the auth header only, never in a body
    assert KEY.encode() not in small.body and KEY.encode() not in gzip.decompress(big.body)


def test_integers_beyond_64_bits_in_a_payload_still_make_a_request() -> None:
    s = sink()
    _, span = s.items(record(ai(request_payload={**CHAT_REQUEST, "seed": 2**70})))
    prepared = s.request("spans", [span])
    body = prepared.body
    if prepared.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    assert json.loads(body)["spans"][0]["input"]["seed"] == 2**70


def test_self_hosted_sends_no_credentials() -> None:
    s = from_config(OpikLogConfig(http_endpoint="http://localhost:5173/api"), "k")
    prepared = s.request("traces", s.items(record(ai()))[:1])
    assert "Authorization" not in prepared.headers
    assert "Comet-Workspace" not in prepared.headers


def test_a_batch_of_1000_is_one_valid_request() -> None:
    s = sink()
    assert s.max_batch == 1000
    _, span = s.items(record(ai()))
    prepared = s.request("spans", [span] * 1000)
    body = json.loads(gzip.decompress(prepared.body))
    assert batch_problems("spans", body) == []


def test_a_batch_over_the_byte_cap_carries_what_fits() -> None:
    """1000 spans of ~0.2 MB each are ~200 MB: Opik's SDK keeps a batch under 5 MB of
    JSON, so do we. The request carries the first spans that fit, says how many, and
    the delivery sends the others next."""
    s = sink()
    big = {**CHAT_REQUEST, "messages": [{"role": "user", "content": "x" * 200_000}]}
    _, span = s.items(record(ai(request_payload=big)))
    prepared = s.request("spans", [span] * 1000)
    body = gzip.decompress(prepared.body)
    assert len(body) <= opik.MAX_BATCH_BYTES
    sent = json.loads(body)["spans"]
    assert prepared.count == len(sent) and 20 <= len(sent) < 30
    assert batch_problems("spans", {"spans": sent}) == []
    # one entry larger than the cap is still sent (alone): Opik says whether it fits
    huge = {**CHAT_REQUEST, "messages": [{"role": "user", "content": "y" * 6_000_000}]}
    _, alone = s.items(record(ai(request_payload=huge)))
    assert s.request("spans", [alone, span]).count == 1
    # a batch that fits is sent whole
    assert s.request("spans", [span] * 3).count == 3


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="feedback"):
        sink().request("feedback", [Item("feedback", {})])


# ------------------------------------------------------------------ verdicts


def _items() -> list[Item]:
    return sink().items(record(ai()))[:1]


@pytest.mark.parametrize(
    "status, headers, body, outcome, retry_after, reason",
    [
        (204, {}, b"", "delivered", None, ""),
        (200, {}, b"{}", "delivered", None, ""),
        (409, {}, b'{"code":409,"message":"duplicate"}', "delivered", None, ""),
        (429, {"RateLimit-Reset": "7"}, b"", "retry", 7.0, "429"),
        (429, {"retry-after": "3"}, b"", "retry", 3.0, "429"),
        (429, {}, b"", "retry", None, "429"),
        (503, {"Retry-After": "2"}, b"", "retry", 2.0, "503"),
        (500, {}, b"", "retry", None, "500"),
        (408, {}, b"", "retry", None, "408"),
        # the settings are wrong (key, workspace, URL): kept for a fixed config
        (401, {}, b'{"code":401,"message":"User not allowed"}', "held", None, "opik_api_key"),
        (403, {}, b'{"code":403,"message":"no permission"}', "held", None, "opik_workspace"),
        (404, {}, b"Not Found", "held", None, "http_endpoint"),
        (
            301,
            {"location": "https://x/opik/api/v1/private/traces/batch"},
            b"",
            "held",
            None,
            "https://x/opik/api",
        ),
        # too large: split
        (413, {}, b"", "split", None, "too large"),
        (
            422,
            {},
            b'{"errors":["Request size exceeds the maximum allowed size of 20MB"]}',
            "split",
            None,
            "too large",
        ),
        (
            422,
            {},
            b'{"errors":["traces[0].start_time must not be null"]}',
            "dropped",
            None,
            "start_time",
        ),
        (400, {}, b'{"code":400,"message":"Unable to process JSON"}', "dropped", None, "JSON"),
    ],
)
def test_verdicts(
    status: int,
    headers: dict[str, str],
    body: bytes,
    outcome: str,
    retry_after: float | None,
    reason: str,
) -> None:
    items = _items()
    v = sink().verdict(items, status, headers, body)
    assert (v.retry, v.dropped, v.hold, v.too_large) == {
        "delivered": ([], [], False, False),
        "retry": (items, [], False, False),
        "held": (items, [], True, False),
        "split": (items, [], False, True),
        "dropped": ([], items, False, False),
    }[outcome]
    assert v.retry_after == retry_after
    assert reason in v.reason


# -------------------------------------------------------------------- config


def test_config_defaults_are_kongs() -> None:
    c = OpikLogConfig()
    assert c.http_endpoint == "https://www.comet.com/opik/"
    assert c.ai_proxy_name == "proxy"
    assert (c.timeout, c.keepalive) == (10000, 60000)
    assert c.opik_api_key is None and c.opik_workspace is None and c.project_name is None
    s = from_config(c, "opik-log@global#abc")
    assert s.name == "opik-log:opik-log@global#abc"
    assert (s.timeout, s.keepalive) == (10.0, 60.0)


def test_kong_plugin_config_loads_as_it_is() -> None:
    # the seed's example, with every field Kong's schema has but `queue`/custom_fields
    c = OpikLogConfig.model_validate(
        {
            "http_endpoint": "https://www.comet.com/opik/",
            "ai_proxy_name": "proxy",
            "opik_api_key": KEY,
            "opik_workspace": "jacques-comet",
            "timeout": 5000,
            "keepalive": 30000,
        }
    )
    assert from_config(c, "k").timeout == 5.0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"opik_workspce": "x"}, "opik_workspce"),
        ({"opik_api_key": KEY}, "opik_workspace is required"),
        ({"http_endpoint": "www.comet.com/opik"}, r"http\(s\) URL"),
        ({"http_endpoint": "ftp://x/"}, r"http\(s\) URL"),
        ({"http_endpoint": "http://x/api?workspace=a"}, "query"),
        ({"timeout": 0}, "greater than 0"),
        ({"keepalive": -1}, "greater than or equal to 0"),
        ({"project_name": ""}, "at least 1"),
    ],
)
def test_bad_config_is_an_error_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpikLogConfig(**fields)


def test_the_api_key_is_never_shown() -> None:
    c = OpikLogConfig(opik_api_key=KEY, opik_workspace="w")
    assert KEY not in repr(c) and KEY not in str(c)
    assert KEY not in repr(from_config(c, "k"))


def test_module_surface() -> None:
    assert opik.TRACES == "traces" and opik.SPANS == "spans"
    assert callable(opik.from_config)
