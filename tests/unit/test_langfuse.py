"""exporters/langfuse.py: Kong's ai-tracing, to Langfuse over OTLP and the legacy ingestion.

Table-driven over records of every kind (chat, streamed with TTFT, failed upstream,
client aborted, embeddings, completions, a native passthrough, no usage, estimated
usage, with and without payloads, context headers and body metadata, cache and
reasoning tokens, cost). Every request built is decoded and validated the way the fake
Langfuse does it (`tests/fakes/langfuse.py`): legacy batches against Langfuse's OpenAPI
spec with unknown fields rejected, OTLP spans against the attributes the official SDKs
send (the captures), same keys and value types. Then the answers (`verdict`), the
config, and the sink driven by the shared delivery against the fake server.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from exporters import langfuse as lf
from exporters.http_delivery import HttpDelivery
from exporters.langfuse import (
    INGESTION,
    OTEL,
    AiTracingConfig,
    LangfuseSink,
    from_config,
    resolve_endpoint,
)
from exporters.record import AIInfo, CallRecord
from exporters.sink import Item, Verdict
from providers.base import Usage
from tests.fakes.langfuse import (
    ISO_Z,
    FakeLangfuse,
    basic,
    batch_problems,
    check_otlp,
    decode_otlp,
    event_problems,
    reference,
)

PK, SK = "pk-lf-unit-public", "sk-lf-unit-SECRET-0123456789"
RECORD_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
T0 = 1_700_000_000.25
# a value that must never leave the gateway (as if a header had not been redacted)
LEAK = "client-secret-LEAK-4242"


def config(**kw: Any) -> AiTracingConfig:
    base: dict[str, Any] = {
        "langfuse_enabled": True,
        "langfuse_public_key": PK,
        "langfuse_secret_key": SK,
    }
    return AiTracingConfig(**{**base, **kw})


def otel_sink(**kw: Any) -> LangfuseSink:
    return LangfuseSink(config(**kw), "unit")


def ingestion_sink(**kw: Any) -> LangfuseSink:
    return LangfuseSink(config(protocol="ingestion", **kw), "unit")


# ------------------------------------------------------------------ records

CHAT_REQUEST = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Recommend a movie"},
    ],
    "temperature": 0.7,
    "max_tokens": 500,
    "stop": ["\n\n"],
    "response_format": {"type": "json_object"},
    "metadata": {"user_id": "user-12345"},
}
CHAT_RESPONSE = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Arrival."},
            "finish_reason": "stop",
        }
    ],
}
CONTEXT = {
    "user_id": "user-12345",
    "session_id": "session-abc",
    "chat_id": "chat-789",
    "message_id": "msg-54321",
    "organization_id": "org-acme",
    "project_id": "project-xyz",
    "metadata": {
        "user_id": "user-12345",
        "chat_id": "chat-789",
        "project_id": "project-xyz",
        "features": {"web_search": True, "image_generation": False},
        "variables": {"user_tier": "premium", "language": "en"},
        "tags": ["beta"],
    },
}


def ai(**kw: Any) -> AIInfo:
    base: dict[str, Any] = {
        "provider": "openai",
        "route_type": "llm/v1/chat",
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "stream": False,
        "upstream_url": "https://api.openai.com/v1/chat/completions",
        "usage": Usage(150, 25),
        "cost": 0.000525,
        "finish_reason": "stop",
        "llm_latency_ms": 1200.0,
    }
    return AIInfo(**{**base, **kw})


def record(info: AIInfo | None, **kw: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": RECORD_ID,
        "started_at": T0,
        "ended_at": T0 + 1.25,
        "status": "ok",
        "client_ip": "127.0.0.1",
        "route": "chat",
        "service": "llm",
        "request": {
            "method": "POST",
            "uri": "/v1/chat/completions?api-version=1",
            "size": 200,
            "headers": {"authorization": "[REDACTED]", "x-custom": LEAK},
        },
        "response": {"status": 200, "size": 300},
        "latencies": {"request": 1250.0, "proxy": 1200.0, "gateway": 50.0},
        "upstream": {"url": "https://api.openai.com/v1/chat/completions", "status": 200},
        "ai": info,
        "consumer": "alice",
        "context": {},
    }
    return CallRecord(**{**base, **kw})


EMBED_REQUEST = {"model": "text-embedding-3-small", "input": ["one", "two"]}
EMBED_RESPONSE = {
    "object": "list",
    "data": [
        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]},
        {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]},
    ],
    "model": "text-embedding-3-small",
}

RECORDS: dict[str, CallRecord] = {
    "chat ok, payloads, context headers and body metadata": record(
        ai(request_payload=CHAT_REQUEST, response_payload=CHAT_RESPONSE), context=CONTEXT
    ),
    "chat without payloads": record(ai()),
    "streamed with time to first token": record(
        ai(
            stream=True,
            time_to_first_token_ms=180.0,
            request_payload={**CHAT_REQUEST, "stream": True},
            response_payload=CHAT_RESPONSE,
        ),
        context={"user_id": "u-1"},
    ),
    "failed upstream": record(
        ai(usage=None, cost=None, finish_reason=None, response_model=None),
        status="error",
        response={"status": 502, "size": 120},
        upstream={"url": "https://api.openai.com/v1/chat/completions", "status": 500},
        error={
            "status": 502,
            "type": "upstream_error",
            "code": None,
            "message": "The server had an error",
            "source": "upstream",
        },
    ),
    "client aborted mid-stream": record(
        ai(stream=True, time_to_first_token_ms=90.0, usage=Usage(12, 3, estimated=True)),
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
    "embeddings": record(
        ai(
            route_type="llm/v1/embeddings",
            request_model="text-embedding-3-small",
            response_model="text-embedding-3-small",
            usage=Usage(8, 0),
            cost=0.00000016,
            finish_reason=None,
            request_payload=EMBED_REQUEST,
            response_payload=EMBED_RESPONSE,
        ),
        request={"method": "POST", "uri": "/v1/embeddings", "size": 40, "headers": {}},
    ),
    "completions": record(
        ai(
            route_type="llm/v1/completions",
            request_model="gpt-3.5-turbo-instruct",
            response_model="gpt-3.5-turbo-instruct",
            request_payload={"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "n": 1},
            response_payload={"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]},
        )
    ),
    "no usage reported or estimated": record(ai(usage=None, cost=None)),
    "estimated usage": record(ai(usage=Usage(40, 9, estimated=True), cost=None)),
    "cache and reasoning tokens with cost": record(
        ai(
            provider="anthropic",
            request_model="claude-sonnet-4-5",
            response_model="claude-sonnet-4-5-20250929",
            usage=Usage(
                1300, 400, cache_read_tokens=1000, cache_write_tokens=200, reasoning_tokens=150
            ),
            cost=0.0123,
        )
    ),
    "native passthrough (anthropic format)": record(
        ai(
            provider="anthropic",
            route_type="llm/v1/chat",
            request_payload={
                "model": "claude-sonnet-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "hi"}],
            },
            response_payload={
                "id": "msg_01",
                "type": "message",
                "content": [{"type": "text", "text": "hello"}],
            },
        )
    ),
    "statistics off": record(ai(log_statistics=False, time_to_first_token_ms=50.0)),
}


# ---------------------------------------------------------------- helpers


def otel_request(sink: LangfuseSink, records: list[CallRecord]) -> tuple[Any, list[dict]]:
    items = [it for r in records for it in sink.items(r)]
    prepared = sink.request(OTEL, items)
    headers = {k.lower(): v for k, v in prepared.headers.items()}
    resources = decode_otlp(prepared.body, headers)
    return prepared, resources


def ingestion_body(sink: LangfuseSink, records: list[CallRecord]) -> dict[str, Any]:
    items = [it for r in records for it in sink.items(r)]
    prepared = sink.request(INGESTION, items)
    return json.loads(prepared.body)


def assert_valid_batch(body: dict[str, Any]) -> None:
    problems = batch_problems(body) + [p for e in body["batch"] for p in event_problems(e)]
    assert problems == []


def attrs_of(resources: list[dict]) -> dict[str, Any]:
    ((span,),) = [rs["spans"] for rs in resources]
    return span["attributes"]


def events(body: dict[str, Any], kind: str) -> dict[str, Any]:
    (event,) = [e for e in body["batch"] if e["type"] == kind]
    return event["body"]


# ------------------------------------------------------------ every record kind


@pytest.mark.parametrize("name", list(RECORDS))
def test_otlp_request_matches_the_sdk_attributes(name: str) -> None:
    rec = RECORDS[name]
    prepared, resources = otel_request(otel_sink(release="1.2.3", tags=["gw"]), [rec])
    assert check_otlp(resources) == []
    assert prepared.method == "POST"
    assert prepared.url == "https://cloud.langfuse.com/api/public/otel/v1/traces"
    ((span,),) = [rs["spans"] for rs in resources]
    a = span["attributes"]
    # the trace
    assert span["trace_id"] == RECORD_ID.replace("-", "")
    assert span["parent_span_id"] is None and span["kind"] == 1
    assert span["start_time_unix_nano"] == pytest.approx(T0 * 1e9, abs=1e3)
    assert span["end_time_unix_nano"] == pytest.approx((T0 + 1.25) * 1e9, abs=1e3)
    assert a["langfuse.trace.name"] == rec.request["uri"].split("?")[0]
    assert a["langfuse.environment"] == "production" and a["langfuse.release"] == "1.2.3"
    assert a["langfuse.trace.tags"][0] == "gw"
    assert json.loads(a["langfuse.trace.metadata.record_id"]) == RECORD_ID
    assert json.loads(a["langfuse.trace.metadata.status"]) == rec.status
    assert a["user.id"] == (rec.context.get("user_id") or "alice")  # the consumer otherwise
    # the generation
    assert rec.ai is not None
    embedding = rec.ai.route_type == "llm/v1/embeddings"
    assert a["langfuse.observation.type"] == ("embedding" if embedding else "generation")
    assert a["langfuse.observation.model.name"] == (rec.ai.response_model or rec.ai.request_model)
    assert a["gen_ai.provider.name"] == rec.ai.provider
    assert a["gen_ai.request.model"] == rec.ai.request_model
    assert a["server.address"] == "api.openai.com" and a["server.port"] == 443
    stats = rec.ai.log_statistics and rec.ai.usage is not None
    assert ("langfuse.observation.usage_details" in a) is stats
    assert ("gen_ai.usage.input_tokens" in a) is stats
    has_cost = rec.ai.log_statistics and rec.ai.cost is not None
    assert ("langfuse.observation.cost_details" in a) is has_cost
    payloads = rec.ai.request_payload is not None
    assert ("langfuse.observation.input" in a) is payloads
    assert ("langfuse.observation.output" in a) is payloads
    # the resource is the SDK's keys with our values
    assert resources[0]["resource"]["service.name"] == "llmitm"
    assert resources[0]["resource"]["langfuse.environment"] == "production"
    assert span["scope"] == "llmitm"


@pytest.mark.parametrize("name", list(RECORDS))
def test_ingestion_batch_is_valid_against_the_openapi_spec(name: str) -> None:
    rec = RECORDS[name]
    body = ingestion_body(ingestion_sink(release="1.2.3", tags=["gw"]), [rec])
    assert_valid_batch(body)
    assert [e["type"] for e in body["batch"]] == ["trace-create", "generation-create"]
    for event in body["batch"]:
        assert ISO_Z.match(event["timestamp"])
    trace, gen = events(body, "trace-create"), events(body, "generation-create")
    assert trace["id"] == RECORD_ID and gen["traceId"] == RECORD_ID
    assert trace["name"] == rec.request["uri"].split("?")[0]
    assert trace["environment"] == gen["environment"] == "production"
    assert trace["release"] == "1.2.3"
    assert trace["metadata"]["record_id"] == RECORD_ID
    assert ISO_Z.match(gen["startTime"]) and ISO_Z.match(gen["endTime"])
    assert gen["startTime"] < gen["endTime"]
    assert rec.ai is not None
    stats = rec.ai.log_statistics and rec.ai.usage is not None
    assert ("usageDetails" in gen) is stats and ("usage" in gen) is stats
    if "completionStartTime" in gen:
        assert gen["startTime"] <= gen["completionStartTime"] <= gen["endTime"]


def test_chat_with_context_and_payloads_in_detail() -> None:
    rec = RECORDS["chat ok, payloads, context headers and body metadata"]
    _, resources = otel_request(otel_sink(tags=["gw"]), [rec])
    a = attrs_of(resources)
    assert a["user.id"] == "user-12345" and a["session.id"] == "session-abc"
    # all six context headers: the ids Langfuse has no field for go to the metadata
    meta = {
        k.removeprefix("langfuse.trace.metadata."): json.loads(v)
        for k, v in a.items()
        if k.startswith("langfuse.trace.metadata.")
    }
    assert meta["chat_id"] == "chat-789" and meta["message_id"] == "msg-54321"
    assert meta["organization_id"] == "org-acme" and meta["project_id"] == "project-xyz"
    # the body's metadata object, as it is
    assert meta["features"] == {"web_search": True, "image_generation": False}
    assert meta["variables"] == {"user_tier": "premium", "language": "en"}
    # the seed's trace metadata
    assert meta["provider"] == "openai" and meta["model"] == "gpt-4o-2024-08-06"
    assert meta["status_code"] == 200 and meta["total_duration_ms"] == 1250.0
    assert meta["time_per_token_ms"] == 48.0  # 1200 ms / 25 tokens
    assert meta["throughput_tokens_per_second"] == pytest.approx(25 / 1.2, rel=1e-3)
    assert meta["route"] == "chat" and meta["consumer"] == "alice"
    assert a["langfuse.trace.tags"] == ["gw", "beta"]  # config, then body metadata
    # the generation
    assert json.loads(a["langfuse.observation.input"]) == CHAT_REQUEST["messages"]
    assert json.loads(a["langfuse.observation.output"]) == {
        "role": "assistant",
        "content": "Arrival.",
    }
    assert json.loads(a["langfuse.observation.model.parameters"]) == {
        "temperature": 0.7,
        "max_tokens": 500,
        "stop": ["\n\n"],
        "response_format": '{"type":"json_object"}',  # an object: as its JSON (MapValue)
    }
    assert json.loads(a["langfuse.observation.usage_details"]) == {
        "input": 150,
        "output": 25,
        "total": 175,
    }
    assert json.loads(a["langfuse.observation.cost_details"]) == {"total": 0.000525}
    assert a["gen_ai.response.id"] == "chatcmpl-abc"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.operation.name"] == "chat"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (150, 25)
    assert "langfuse.observation.level" not in a  # DEFAULT
    assert json.loads(a["langfuse.observation.metadata.usage_source"]) == "reported"

    body = ingestion_body(ingestion_sink(tags=["gw"]), [rec])
    trace, gen = events(body, "trace-create"), events(body, "generation-create")
    assert (trace["userId"], trace["sessionId"]) == ("user-12345", "session-abc")
    assert trace["tags"] == ["gw", "beta"]
    assert trace["metadata"]["organization_id"] == "org-acme"
    assert trace["metadata"]["features"] == {"web_search": True, "image_generation": False}
    assert trace["input"] == CHAT_REQUEST["messages"]
    assert gen["name"] == "chat_completion" and gen["model"] == "gpt-4o-2024-08-06"
    assert gen["modelParameters"]["temperature"] == 0.7
    assert gen["usageDetails"] == {"input": 150, "output": 25, "total": 175}
    assert gen["usage"] == {
        "input": 150,
        "output": 25,
        "total": 175,
        "unit": "TOKENS",
        "totalCost": 0.000525,
    }
    assert gen["costDetails"] == {"total": 0.000525}
    assert gen["metadata"]["finish_reason"] == "stop"


def test_streamed_call_has_its_completion_start_time() -> None:
    rec = RECORDS["streamed with time to first token"]
    a = attrs_of(otel_request(otel_sink(), [rec])[1])
    # JSON-encoded ISO time with Z, like the SDK's
    assert json.loads(a["langfuse.observation.completion_start_time"]) == lf.iso(T0 + 0.18)
    assert json.loads(a["langfuse.observation.metadata.request_mode"]) == "stream"
    gen = events(ingestion_body(ingestion_sink(), [rec]), "generation-create")
    assert gen["completionStartTime"] == "2023-11-14T22:13:20.430000Z"
    assert gen["startTime"] == "2023-11-14T22:13:20.250000Z"


def test_failed_call_is_an_error_with_its_message() -> None:
    rec = RECORDS["failed upstream"]
    _, resources = otel_request(otel_sink(), [rec])
    ((span,),) = [rs["spans"] for rs in resources]
    a = span["attributes"]
    assert a["langfuse.observation.level"] == "ERROR"
    message = "upstream 502 upstream_error: The server had an error"
    assert a["langfuse.observation.status_message"] == message
    assert span["status"] == {"code": 2, "message": message}  # OTel's ERROR status too
    assert json.loads(a["langfuse.observation.metadata.upstream_status"]) == 500
    assert json.loads(a["langfuse.trace.metadata.status_code"]) == 502
    gen = events(ingestion_body(ingestion_sink(), [rec]), "generation-create")
    assert (gen["level"], gen["statusMessage"]) == ("ERROR", message)
    assert gen["model"] == "gpt-4o"  # the model asked for when none answered


def test_client_abort_is_a_warning() -> None:
    rec = RECORDS["client aborted mid-stream"]
    ((span,),) = [rs["spans"] for rs in otel_request(otel_sink(), [rec])[1]]
    a = span["attributes"]
    assert a["langfuse.observation.level"] == "WARNING"
    assert a["langfuse.observation.status_message"].startswith("client aborted the request")
    assert span["status"]["code"] == 0  # not an error of the call itself
    assert json.loads(a["langfuse.observation.metadata.usage_source"]) == "estimated"


def test_embeddings_never_send_the_vectors() -> None:
    rec = RECORDS["embeddings"]
    a = attrs_of(otel_request(otel_sink(), [rec])[1])
    assert a["langfuse.observation.type"] == "embedding"
    assert a["gen_ai.operation.name"] == "embeddings"
    assert json.loads(a["langfuse.observation.input"]) == ["one", "two"]
    assert json.loads(a["langfuse.observation.output"]) == {"embeddings": 2, "dimensions": 3}
    gen = events(ingestion_body(ingestion_sink(), [rec]), "generation-create")
    assert gen["name"] == "embedding" and gen["output"] == {"embeddings": 2, "dimensions": 3}


def test_completions_input_is_the_prompt_and_output_the_text() -> None:
    gen = events(ingestion_body(ingestion_sink(), [RECORDS["completions"]]), "generation-create")
    assert (gen["name"], gen["input"], gen["output"]) == ("completion", "Say hi", "hi")
    assert gen["modelParameters"] == {"n": 1}


def test_native_payloads_are_kept_whole() -> None:
    gen = events(
        ingestion_body(ingestion_sink(), [RECORDS["native passthrough (anthropic format)"]]),
        "generation-create",
    )
    assert gen["input"] == [{"role": "user", "content": "hi"}]
    assert gen["output"]["content"] == [{"type": "text", "text": "hello"}]


def test_cache_and_reasoning_tokens_have_their_own_usage_types() -> None:
    rec = RECORDS["cache and reasoning tokens with cost"]
    expected = {
        "input": 100,  # 1300 prompt tokens less 1000 read from and 200 written to the cache
        "input_cache_read": 1000,
        "input_cache_creation": 200,
        "output": 250,  # 400 less 150 reasoning
        "output_reasoning": 150,
        "total": 1700,
    }
    a = attrs_of(otel_request(otel_sink(), [rec])[1])
    assert json.loads(a["langfuse.observation.usage_details"]) == expected
    assert json.loads(a["langfuse.observation.cost_details"]) == {"total": 0.0123}
    # the inputs and outputs add up to what the provider reported
    details = json.loads(a["langfuse.observation.usage_details"])
    assert sum(v for k, v in details.items() if k.startswith("input")) == 1300
    assert sum(v for k, v in details.items() if k.startswith("output")) == 400
    gen = events(ingestion_body(ingestion_sink(), [rec]), "generation-create")
    assert gen["usageDetails"] == expected
    assert gen["usage"]["input"] == 1300  # the deprecated field keeps the plain counts


def test_statistics_off_sends_no_usage_cost_or_timing() -> None:
    rec = RECORDS["statistics off"]
    a = attrs_of(otel_request(otel_sink(), [rec])[1])
    for key in (
        "langfuse.observation.usage_details",
        "langfuse.observation.cost_details",
        "langfuse.observation.completion_start_time",
        "gen_ai.usage.input_tokens",
        "langfuse.trace.metadata.time_per_token_ms",
    ):
        assert key not in a


def test_records_without_ai_or_a_disabled_plugin_make_no_items() -> None:
    assert otel_sink().items(record(None)) == []
    disabled = LangfuseSink(AiTracingConfig(), "off")  # Kong's default: langfuse_enabled false
    assert disabled.items(RECORDS["chat without payloads"]) == []


def test_ids_are_stable_and_events_unique() -> None:
    rec = RECORDS["chat without payloads"]
    one, two = otel_sink().items(rec), otel_sink().items(rec)
    assert one[0].data["span_id"] == two[0].data["span_id"]  # a replay is the same span
    ev1, ev2 = ingestion_sink().items(rec), ingestion_sink().items(rec)
    assert ev1[1].data["body"]["id"] == ev2[1].data["body"]["id"]
    ids = [e.data["id"] for e in ev1 + ev2]
    assert len(set(ids)) == 4  # an envelope id per event (Langfuse deduplicates on it)


def test_items_are_plain_json_and_hold_no_secret() -> None:
    for sink in (otel_sink(), ingestion_sink()):
        for rec in RECORDS.values():
            for item in sink.items(rec):
                text = json.dumps(item.data)  # spoolable as it is
                assert json.loads(text) == item.data
                for secret in (SK, PK, LEAK, "[REDACTED]"):
                    assert secret not in text


def test_a_huge_payload_is_cut() -> None:
    big = "x" * (lf.MAX_FIELD_BYTES + 10)
    rec = record(
        ai(
            request_payload={"messages": [{"role": "user", "content": big}]},
            response_payload=CHAT_RESPONSE,
        )
    )
    a = attrs_of(otel_request(otel_sink(), [rec])[1])
    text = json.loads(a["langfuse.observation.input"])  # still valid JSON: a string
    assert isinstance(text, str) and "[truncated by llmitm" in text
    assert len(a["langfuse.observation.input"]) < lf.MAX_FIELD_BYTES + 200
    body = ingestion_body(ingestion_sink(), [rec])
    assert_valid_batch(body)
    assert "[truncated by llmitm" in events(body, "generation-create")["input"]


# --------------------------------------------------- the validators are strict


def test_validators_reject_unknown_fields_and_wrong_types() -> None:
    body = ingestion_body(ingestion_sink(), [RECORDS["chat without payloads"]])
    assert_valid_batch(body)
    cases: list[Callable[[dict], None]] = [
        lambda b: b["batch"][1]["body"].update(promptTokens=3),  # unknown field
        lambda b: b["batch"][0]["body"].update(user_id="u"),  # snake_case typo
        lambda b: b["batch"][1].update(extra=True),  # unknown envelope field
        lambda b: b["batch"][1]["body"].update(level="FATAL"),  # not a level
        lambda b: b["batch"][1]["body"].update(startTime="2024-01-01 00:00:00"),  # not ISO Z
        lambda b: b["batch"][0].update(timestamp="2024-01-01T00:00:00+00:00"),  # no Z
        lambda b: b["batch"][1]["body"].update(usageDetails={"input": "3"}),  # not an int
        lambda b: b["batch"][1]["body"].update(modelParameters={"x": {"a": 1}}),  # not MapValue
        lambda b: b["batch"][0]["body"].update(tags="gw"),  # not a list
        lambda b: b.update(extra=1),  # unknown top-level field
    ]
    for mutate in cases:
        broken = copy.deepcopy(body)
        mutate(broken)
        problems = batch_problems(broken) + [p for e in broken["batch"] for p in event_problems(e)]
        assert problems, f"not rejected: {broken}"

    _, resources = otel_request(otel_sink(), [RECORDS["chat without payloads"]])
    assert check_otlp(resources) == []
    span_cases: list[Callable[[dict], None]] = [
        lambda a: a.update({"langfuse.observation.usage": "{}"}),  # unknown key
        lambda a: a.update({"user.id": 7}),  # the SDK sends a string
        lambda a: a.update({"langfuse.trace.tags": "gw"}),  # the SDK sends an array
        lambda a: a.update({"langfuse.observation.usage_details": '{"input": 1.5}'}),
        lambda a: a.update({"langfuse.observation.completion_start_time": "2024-01-01T00:00:00Z"}),
        lambda a: a.update({"langfuse.trace.metadata.route": "chat"}),  # not JSON
        lambda a: a.update({"langfuse.observation.level": "FATAL"}),
        lambda a: a.update({"gen_ai.usage.input_tokens": 1.0}),  # the SDK sends an int
    ]
    for mutate in span_cases:
        broken = copy.deepcopy(resources)
        mutate(broken[0]["spans"][0]["attributes"])
        assert check_otlp(broken), f"not rejected: {broken[0]['spans'][0]['attributes']}"


def test_every_attribute_key_we_send_is_one_the_sdks_send() -> None:
    span_types, resource_types = reference()
    seen: set[str] = set()
    for rec in RECORDS.values():
        _, resources = otel_request(otel_sink(release="r", tags=["t"]), [rec])
        seen |= set(attrs_of(resources))
        assert set(resources[0]["resource"]) <= set(resource_types)
    documented = set(span_types) | {"langfuse.observation.cost_details"}
    prefixes = ("langfuse.trace.metadata.", "langfuse.observation.metadata.")
    assert {k for k in seen if not k.startswith(prefixes)} <= documented
    # and the capture's generation keys we can fill are all filled
    for key in (
        "user.id",
        "session.id",
        "langfuse.trace.name",
        "langfuse.trace.tags",
        "langfuse.environment",
        "langfuse.release",
        "langfuse.observation.input",
        "langfuse.observation.output",
        "langfuse.observation.model.name",
        "langfuse.observation.model.parameters",
        "langfuse.observation.completion_start_time",
        "langfuse.observation.type",
        "langfuse.observation.level",
        "langfuse.observation.status_message",
        "langfuse.observation.usage_details",
    ):
        assert key in seen, key


# ------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    "endpoint, protocol, expected",
    [
        (None, None, (OTEL, "https://cloud.langfuse.com/api/public/otel/v1/traces")),
        (
            "https://litefuse.cloud/api/public/ingestion",  # the seed's example
            None,
            (INGESTION, "https://litefuse.cloud/api/public/ingestion"),
        ),
        (
            "https://lf.example.com/api/public/ingestion",
            "otel",  # an explicit protocol wins over the path
            (OTEL, "https://lf.example.com/api/public/otel/v1/traces"),
        ),
        (
            "http://127.0.0.1:3000",
            "ingestion",
            (INGESTION, "http://127.0.0.1:3000/api/public/ingestion"),
        ),
        (
            "https://us.cloud.langfuse.com/",
            None,
            (OTEL, "https://us.cloud.langfuse.com/api/public/otel/v1/traces"),
        ),
        (
            "https://lf.example.com/api/public/otel",
            None,
            (OTEL, "https://lf.example.com/api/public/otel/v1/traces"),
        ),
        (
            "https://lf.example.com/api/public/otel/v1/traces",
            None,
            (OTEL, "https://lf.example.com/api/public/otel/v1/traces"),
        ),
        (
            "https://proxy.example.com/langfuse",  # a path prefix is kept
            None,
            (OTEL, "https://proxy.example.com/langfuse/api/public/otel/v1/traces"),
        ),
    ],
)
def test_endpoint_resolution(
    endpoint: str | None, protocol: str | None, expected: tuple[str, str]
) -> None:
    cfg = config(**({"langfuse_endpoint": endpoint} if endpoint else {}), protocol=protocol)
    assert resolve_endpoint(cfg.langfuse_endpoint, cfg.protocol) == expected
    sink = LangfuseSink(cfg, "k")
    assert (sink.protocol, sink.url) == expected
    assert sink.max_batch == (lf.OTEL_MAX_BATCH if expected[0] == OTEL else lf.INGESTION_MAX_BATCH)


def test_items_of_the_other_protocol_go_to_their_own_endpoint() -> None:
    # spooled before a config change from otel to ingestion (or back), same host
    cfg = config(langfuse_endpoint="https://lf.example.com/base/api/public/ingestion")
    legacy = LangfuseSink(cfg, "k")
    spans = otel_sink().items(RECORDS["chat without payloads"])
    assert (
        legacy.request(OTEL, spans).url == "https://lf.example.com/base/api/public/otel/v1/traces"
    )
    events = legacy.items(RECORDS["chat without payloads"])
    assert otel_sink().request(INGESTION, events).url == (
        "https://cloud.langfuse.com/api/public/ingestion"
    )


def test_otel_request_headers() -> None:
    prepared, _ = otel_request(otel_sink(), [RECORDS["chat without payloads"]])
    h = prepared.headers
    assert h["Authorization"] == basic(PK, SK)
    assert base64.b64decode(h["Authorization"].split()[1]).decode() == f"{PK}:{SK}"
    assert h["x-langfuse-ingestion-version"] == "4"
    assert h["Content-Type"] == "application/x-protobuf"  # as the SDK sends
    assert h["Content-Encoding"] == "gzip"
    gzip.decompress(prepared.body)


def test_ingestion_request_headers_and_batch() -> None:
    sink = ingestion_sink()
    items = [it for r in list(RECORDS.values())[:3] for it in sink.items(r)]
    prepared = sink.request(INGESTION, items)
    assert prepared.url == "https://cloud.langfuse.com/api/public/ingestion"
    assert prepared.headers["Authorization"] == basic(PK, SK)
    assert prepared.headers["Content-Type"] == "application/json"
    assert "x-langfuse-ingestion-version" not in prepared.headers
    body = json.loads(prepared.body)
    assert_valid_batch(body)
    assert [e["id"] for e in body["batch"]] == [it.data["id"] for it in items]


def test_json_encoding_says_the_same_as_protobuf() -> None:
    recs = list(RECORDS.values())
    pb = LangfuseSink(config(), "k", encoding="protobuf")
    js = LangfuseSink(config(), "k", encoding="json")
    js._instance = pb._instance
    items = [it for r in recs for it in pb.items(r)]
    a = pb.request(OTEL, items)
    b = js.request(OTEL, items)
    assert b.headers["Content-Type"] == "application/json"
    decoded_a = decode_otlp(a.body, {k.lower(): v for k, v in a.headers.items()})
    decoded_b = decode_otlp(b.body, {k.lower(): v for k, v in b.headers.items()})
    assert check_otlp(decoded_b) == []
    assert decoded_a == decoded_b
    # OTLP/JSON: hex ids and 64-bit integers as strings
    raw = json.loads(gzip.decompress(b.body))
    span = raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == RECORD_ID.replace("-", "")
    assert isinstance(span["startTimeUnixNano"], str)


def test_a_batch_over_the_ingestion_size_limit_is_cut() -> None:
    sink = ingestion_sink()
    text = "y" * 700_000
    recs = [
        record(
            ai(
                request_payload={"messages": [{"role": "user", "content": text}]},
                response_payload=CHAT_RESPONSE,
            ),
            id=f"01890a5d-ac96-774b-bcce-b3020{i:07d}",
        )
        for i in range(4)
    ]
    items = [it for r in recs for it in sink.items(r)]  # 8 events of about 0.7 MB
    prepared = sink.request(INGESTION, items)
    sent = json.loads(prepared.body)["batch"]
    assert len(prepared.body) <= lf.INGESTION_MAX_BYTES
    assert 1 <= len(sent) < len(items)
    # the request says how many it carries: the delivery sends the rest next, at once
    assert prepared.count == len(sent)
    assert [e["id"] for e in sent] == [it.data["id"] for it in items[: len(sent)]]
    # the verdict is about what was sent: Langfuse's 207 covers all of it
    answer = {"successes": [{"id": e["id"], "status": 201} for e in sent], "errors": []}
    v = sink.verdict(items[: len(sent)], 207, {}, json.dumps(answer).encode())
    assert v == Verdict()


def test_an_otel_batch_over_the_byte_cap_carries_what_fits() -> None:
    sink = otel_sink()
    text = "z" * 900_000
    recs = [
        record(
            ai(
                request_payload={"messages": [{"role": "user", "content": text}]},
                response_payload=CHAT_RESPONSE,
            ),
            id=f"01890a5d-ac96-774b-bcce-b3020{i:07d}",
        )
        for i in range(8)
    ]
    items = [it for r in recs for it in sink.items(r)]  # 8 spans of about 0.9 MB
    prepared = sink.request(OTEL, items)
    assert prepared.count is not None and 1 <= prepared.count < len(items)
    decoded = decode_otlp(prepared.body, {k.lower(): v for k, v in prepared.headers.items()})
    assert sum(len(rs["spans"]) for rs in decoded) == prepared.count
    assert len(gzip.decompress(prepared.body)) <= lf.OTEL_MAX_BYTES
    assert sink.request(OTEL, items[:2]).count == 2


# ------------------------------------------------------------------ verdicts


def _items(n: int, channel: str = INGESTION) -> list[Item]:
    return [
        Item(channel, {"id": f"ev-{i}", "type": "generation-create", "timestamp": "", "body": {}})
        for i in range(n)
    ]


def _multi(successes: list[str], errors: list[tuple[str, int]]) -> bytes:
    return json.dumps(
        {
            "successes": [{"id": i, "status": 201} for i in successes],
            "errors": [{"id": i, "status": s, "message": "m", "error": "e"} for i, s in errors],
        }
    ).encode()


@pytest.mark.parametrize(
    "status, headers, body, retry, dropped, retry_after",
    [
        (207, {}, _multi(["ev-0", "ev-1", "ev-2"], []), [], [], None),
        (200, {}, b"", [], [], None),
        # one event failed with a retryable status, one for good
        (207, {}, _multi(["ev-0"], [("ev-1", 500), ("ev-2", 400)]), [1], [2], None),
        (207, {"retry-after": "7"}, _multi(["ev-0", "ev-2"], [("ev-1", 429)]), [1], [], 7.0),
        (207, {}, _multi(["ev-0"], [("ev-1", 503), ("ev-2", 422)]), [1], [2], None),
        # an event the answer does not mention was not taken: sent again
        (207, {}, _multi(["ev-0", "ev-2"], []), [1], [], None),
        (503, {"retry-after": "2"}, b"", [0, 1, 2], [], 2.0),
        (429, {}, b"", [0, 1, 2], [], None),
        # wrong keys: kept for a fixed config (`hold`, below)
        (401, {}, b'{"message":"Invalid credentials"}', [0, 1, 2], [], None),
        (400, {}, b'{"message":"bad"}', [], [0, 1, 2], None),
    ],
)
def test_ingestion_verdicts(
    status: int,
    headers: dict[str, str],
    body: bytes,
    retry: list[int],
    dropped: list[int],
    retry_after: float | None,
) -> None:
    items = _items(3)
    v = ingestion_sink().verdict(items, status, headers, body)
    assert v.retry == [items[i] for i in retry]
    assert v.dropped == [items[i] for i in dropped]
    assert v.retry_after == retry_after
    assert v.hold == (status == 401)
    if retry or dropped:
        assert v.reason
    if status == 401:
        assert "langfuse_public_key and langfuse_secret_key" in v.reason


@pytest.mark.parametrize(
    "status, headers, body, outcome, retry_after",
    [
        (200, {"content-type": "application/x-protobuf"}, b"", "sent", None),
        (200, {"content-type": "application/json"}, b"{}", "sent", None),
        (429, {"retry-after": "3"}, b"", "retry", 3.0),
        (500, {}, b"", "retry", None),
        (502, {}, b"", "retry", None),
        (400, {}, b'{"message":"bad"}', "dropped", None),
        (401, {}, b"", "held", None),
        (404, {}, b"", "held", None),
        (413, {}, b"", "split", None),
    ],
)
def test_otel_verdicts(
    status: int, headers: dict[str, str], body: bytes, outcome: str, retry_after: float | None
) -> None:
    items = _items(2, OTEL)
    v = otel_sink().verdict(items, status, headers, body)
    assert v.retry == (items if outcome in ("retry", "held", "split") else [])
    assert v.dropped == (items if outcome == "dropped" else [])
    assert (v.hold, v.too_large) == (outcome == "held", outcome == "split")
    assert v.retry_after == retry_after


def test_otel_partial_success_is_not_retried_but_said() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTracePartialSuccess,
        ExportTraceServiceResponse,
    )

    items = _items(3, OTEL)
    answers = [
        (
            {"content-type": "application/json"},
            b'{"partialSuccess":{"rejectedSpans":"2","errorMessage":"too old"}}',
        ),
        (
            {"content-type": "application/x-protobuf"},
            ExportTraceServiceResponse(
                partial_success=ExportTracePartialSuccess(rejected_spans=2, error_message="too old")
            ).SerializeToString(),
        ),
    ]
    for headers, body in answers:
        v = otel_sink().verdict(items, 200, headers, body)
        assert (v.retry, v.dropped) == ([], [])
        assert v.reason == "2 span(s) rejected: too old"


# -------------------------------------------------------------------- config


def test_kong_defaults() -> None:
    cfg = AiTracingConfig()
    assert cfg.langfuse_enabled is False
    assert cfg.langfuse_timeout == 5000
    assert cfg.environment == "production"
    assert cfg.log_level == "info"
    assert cfg.protocol is None
    sink = LangfuseSink(config(), "key-1")
    assert sink.timeout == 5.0 and sink.name == "ai-tracing:key-1"
    assert from_config(config(langfuse_timeout=250), "k").timeout == 0.25


def test_the_seed_example_config_loads() -> None:
    cfg = AiTracingConfig(
        langfuse_enabled=True,
        langfuse_public_key="pk-lf-...",
        langfuse_secret_key="sk-lf-...",
        langfuse_endpoint="https://litefuse.cloud/api/public/ingestion",
        environment="production",
    )
    assert LangfuseSink(cfg, "k").protocol == INGESTION


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"langfuse_enabeld": True}, "langfuse_enabeld"),  # a typo is an error
        ({"langfuse_enabled": True}, "langfuse_public_key and langfuse_secret_key must be set"),
        (
            {"langfuse_enabled": True, "langfuse_public_key": PK},
            "langfuse_secret_key must be set",
        ),
        (
            {"langfuse_enabled": True, "langfuse_public_key": SK, "langfuse_secret_key": PK},
            "the keys are swapped",
        ),
        ({"langfuse_endpoint": "cloud.langfuse.com"}, "http:// or https://"),
        ({"langfuse_endpoint": f"https://{PK}:{SK}@lf.example.com"}, "must not hold credentials"),
        ({"langfuse_timeout": 0}, "greater than 0"),
        ({"environment": "Production"}, "lowercase"),
        ({"environment": "langfuse-prod"}, "not starting with 'langfuse'"),
        ({"log_level": "trace"}, "log_level"),
        ({"protocol": "grpc"}, "protocol"),
        ({"tags": [""]}, "empty"),
    ],
)
def test_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        AiTracingConfig(**fields)
    # what the config loader shows: each error's location and message
    text = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.value.errors())
    assert message in text
    assert SK not in text  # a secret is never quoted back, the swapped keys' included


# ------------------------------------------------ through the shared delivery


@pytest.fixture(scope="module")
def langfuse_server() -> Iterator[FakeLangfuse]:
    server = FakeLangfuse(PK, SK).start()
    yield server
    server.stop()


@pytest.fixture
def fake(langfuse_server: FakeLangfuse) -> FakeLangfuse:
    langfuse_server.reset()
    return langfuse_server


def _delivery(sink: LangfuseSink, spool: Path) -> Any:
    from exporters.http_delivery import HttpDelivery

    return HttpDelivery(
        sink, spool, linger=0.01, initial_retry_delay=0.05, max_retry_delay=0.2, spool_after=50
    )


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _records(n: int) -> list[CallRecord]:
    return [
        record(
            ai(request_payload=CHAT_REQUEST, response_payload=CHAT_RESPONSE),
            id=f"01890a5d-ac96-774b-bcce-b3020{i:07d}",
            context=CONTEXT,
        )
        for i in range(n)
    ]


def assert_no_secret_outside_auth(fake: FakeLangfuse) -> None:
    token = basic(PK, SK).split()[1]
    bodies = fake.plain_bodies()
    assert bodies
    for headers, body in bodies:
        assert headers["authorization"] == basic(PK, SK)
        others = json.dumps({k: v for k, v in headers.items() if k != "authorization"})
        for secret in (SK, token, LEAK):
            assert secret.encode() not in body
            assert secret not in others
        assert PK.encode() not in body


async def test_otel_through_the_delivery(fake: FakeLangfuse, tmp_path: Path) -> None:
    cfg = config(langfuse_endpoint=fake.url)
    d = _delivery(LangfuseSink(cfg, "e2e"), tmp_path)
    d.start()
    fake.fail_next(503, times=2)  # Langfuse down for a moment
    recs = _records(5)
    for r in recs:
        d.submit(r)
    await until(lambda: len(fake.spans) == 5)
    await d.aclose()
    assert fake.problems == []
    assert sorted(s["trace_id"] for s in fake.spans) == sorted(r.id.replace("-", "") for r in recs)
    assert d.stats.sent == 5 and d.stats.dropped == 0 and d.stats.retried >= 5
    assert_no_secret_outside_auth(fake)


async def test_ingestion_207_retries_only_the_failed_events(
    fake: FakeLangfuse, tmp_path: Path
) -> None:
    cfg = config(langfuse_endpoint=f"{fake.url}/api/public/ingestion")
    sink = LangfuseSink(cfg, "e2e-ingestion")
    d = _delivery(sink, tmp_path)
    tried: dict[str, int] = {}

    def fault(event: dict[str, Any]) -> int | None:
        # every generation fails once with a 500; one trace is refused for good
        tried[event["id"]] = tried.get(event["id"], 0) + 1
        if event["type"] == "generation-create" and tried[event["id"]] == 1:
            return 500
        if event["type"] == "trace-create" and event["body"]["id"].endswith("0000003"):
            return 400
        return None

    fake.fail_event(fault)
    d.start()
    recs = _records(4)
    for r in recs:
        d.submit(r)
    await until(lambda: len(fake.events) == 7)
    await asyncio.sleep(0.3)  # nothing more comes
    await d.aclose()
    assert fake.problems == []
    assert len(fake.events_of("generation-create")) == 4  # each once, after its retry
    assert len(fake.events_of("trace-create")) == 3  # the refused one is dropped
    assert len({e["id"] for e in fake.events}) == 7
    assert all(n <= 2 for n in tried.values())  # only the failed events were sent again
    assert fake.duplicates == 0
    assert d.stats.dropped == 1 and d.stats.sent == 7
    assert_no_secret_outside_auth(fake)


async def test_wrong_keys_keep_the_calls_until_the_keys_are_fixed(
    fake: FakeLangfuse, tmp_path: Path
) -> None:
    """Langfuse refuses the keys: the spans are kept (spooled), not dropped, and tried
    again only at the longest delay. A config with the right keys (a new delivery on
    the same spool, as a reload makes) sends them."""
    cfg = config(langfuse_endpoint=fake.url, langfuse_secret_key="sk-lf-wrong")
    wrong = HttpDelivery(
        LangfuseSink(cfg, "keys"),
        tmp_path,
        linger=0.01,
        initial_retry_delay=0.01,
        max_retry_delay=0.5,
        spool_name="ai-tracing@global",
    )
    wrong.start()
    recs = _records(3)
    for r in recs:
        wrong.submit(r)
    await until(lambda: wrong.stats.spooled == 3)
    await asyncio.sleep(0.3)
    assert wrong.stats.dropped == 0 and wrong.stats.misconfigured
    assert wrong.stats.refused_requests == len(fake.received) == 1  # no retry storm
    assert fake.spans == []
    closing = asyncio.get_running_loop().create_task(wrong.aclose(timeout=1))
    right = HttpDelivery(
        LangfuseSink(config(langfuse_endpoint=fake.url), "keys"),
        tmp_path,
        linger=0.01,
        spool_name="ai-tracing@global",
        after=closing,
    )
    right.start()
    await until(lambda: len(fake.spans) == 3)
    await right.aclose()
    assert sorted(s["trace_id"] for s in fake.spans) == sorted(r.id.replace("-", "") for r in recs)
    assert right.depth == 0 and right.stats.sent == 3 and not right.stats.misconfigured
    assert [r.headers["authorization"] for r in fake.received] == [
        basic(PK, "sk-lf-wrong"),
        basic(PK, "sk-lf-wrong"),  # the old delivery's one more try, at its shutdown
        basic(PK, SK),
    ]
