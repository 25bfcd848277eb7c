"""exporters/otlp.py: call records as OTLP/HTTP protobuf spans, GenAI conventions.

Every span is decoded with opentelemetry-proto and checked by the fake collector's
rules (tests/fakes/otlp.py): attribute keys and types as in the captured official
instrumentation, no unknown keys, CLIENT spans named "{operation} {model}", ERROR
status with error.type on failure, message content in the conventions' schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2
from pydantic import ValidationError

from exporters import otlp
from exporters.otlp import OpenTelemetryConfig, OtlpSink, from_config, parse_traceparent
from exporters.record import AIInfo, CallRecord
from exporters.sink import Item, Verdict
from providers.base import Usage
from tests.fakes.otlp import (
    CAPTURED_RESOURCE_TYPES,
    CAPTURED_SPANS,
    CAPTURED_TYPES,
    FakeCollector,
    attributes,
    decode,
    export_problems,
    status_body,
    typed_attributes,
)
from tests.fakes.upstream import FakeUpstream, Reply

TOKEN = "otlp-collector-token-0123456789"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CLIENT_KEY = "client-secret-key-abcdef"


def config(**kw: Any) -> OpenTelemetryConfig:
    base: dict[str, Any] = {
        "traces_endpoint": "http://127.0.0.1:4318/v1/traces",
        "headers": {"Authorization": f"Bearer {TOKEN}"},
    }
    return OpenTelemetryConfig(**{**base, **kw})


def sink(**kw: Any) -> OtlpSink:
    return from_config(config(**kw), "opentelemetry@global#0123")


# ------------------------------------------------------------------------ records

CHAT_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ],
    "temperature": 0.2,
    "max_tokens": 256,
}
CHAT_RESPONSE = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
}


def ai(**kw: Any) -> AIInfo:
    base: dict[str, Any] = {
        "provider": "openai",
        "route_type": "llm/v1/chat",
        "request_model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "stream": False,
        "upstream_url": "https://api.openai.com/v1/chat/completions",
        "usage": Usage(10, 5),
        "finish_reason": "stop",
        "llm_latency_ms": 900.0,
    }
    return AIInfo(**{**base, **kw})


def record(ai_info: AIInfo | None = None, headers: dict[str, str] | None = None, **kw: Any):
    base: dict[str, Any] = {
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "started_at": 1_795_435_812.8624,
        "ended_at": 1_795_435_813.9,
        "status": "ok",
        "client_ip": "127.0.0.1",
        "route": "chat",
        "service": "llm",
        "request": {
            "method": "POST",
            "uri": "/v1/chat/completions",
            "size": 120,
            "headers": {
                "authorization": "[REDACTED]",
                "content-type": "application/json",
                **(headers or {}),
            },
        },
        "response": {"status": 200, "size": 456},
        "latencies": {"request": 1037.6, "proxy": 900.0, "gateway": 137.6},
        "upstream": {"url": "https://api.openai.com/v1/chat/completions", "status": 200},
        "ai": ai() if ai_info is None else ai_info,
    }
    return CallRecord(**{**base, **kw})


UPSTREAM_ERROR = {
    "status": 500,
    "type": "server_error",
    "code": None,
    "message": "The server had an error while processing your request.",
    "source": "upstream",
}

# name -> (record, attributes that must be there with these values, keys that must not)
CASES: dict[str, tuple[CallRecord, dict[str, Any], set[str]]] = {
    "chat ok with payloads": (
        record(
            ai(request_payload=CHAT_REQUEST, response_payload=CHAT_RESPONSE),
            context={"user_id": "u1", "session_id": "s1"},
        ),
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 256,
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.response.id": "chatcmpl-123",
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 5,
            "server.address": "api.openai.com",
            "server.port": 443,
            "session.id": "s1",
            "user.id": "u1",
            "gen_ai.conversation.id": "s1",
            "llmitm.usage.source": "reported",
            "llmitm.request_mode": "oneshot",
            "llmitm.route": "chat",
            "llmitm.service": "llm",
            "llmitm.record_id": "01890a5d-ac96-774b-bcce-b302099a8057",
            "http.response.status_code": 200,
        },
        {"error.type", "gen_ai.response.time_to_first_chunk"},
    ),
    "streamed with time to first token": (
        record(ai(stream=True, time_to_first_token_ms=250.0)),
        {"gen_ai.response.time_to_first_chunk": 0.25, "llmitm.request_mode": "stream"},
        {"gen_ai.input.messages", "gen_ai.output.messages"},
    ),
    "failed upstream": (
        record(
            ai(usage=None, finish_reason=None, response_model=None),
            status="error",
            response={"status": 500, "size": 90},
            upstream={"url": "https://api.openai.com/v1/chat/completions", "status": 500},
            error=UPSTREAM_ERROR,
        ),
        {"error.type": "server_error", "http.response.status_code": 500},
        {"gen_ai.usage.input_tokens", "gen_ai.response.model", "gen_ai.response.finish_reasons"},
    ),
    "failed without a provider code": (
        record(
            ai(usage=None),
            status="error",
            upstream={"url": "https://api.openai.com/v1/chat/completions", "status": 503},
            error={**UPSTREAM_ERROR, "type": None, "status": 503},
        ),
        {"error.type": "503"},
        set(),
    ),
    "client aborted": (
        record(
            ai(stream=True, usage=Usage(9, 2, estimated=True)),
            status="client_aborted",
            error={
                "status": None,
                "type": "connection_error",
                "code": None,
                "message": "client disconnected",
                "source": "client",
            },
        ),
        {"error.type": "client_aborted", "llmitm.usage.source": "estimated"},
        set(),
    ),
    "embeddings": (
        record(
            ai(
                route_type="llm/v1/embeddings",
                request_model="text-embedding-3-small",
                response_model="text-embedding-3-small",
                upstream_url="https://api.openai.com/v1/embeddings",
                usage=Usage(8, 0),
                finish_reason=None,
                request_payload={
                    "input": "some text",
                    "model": "text-embedding-3-small",
                    "encoding_format": "float",
                    "dimensions": 512,
                },
                response_payload={"object": "list", "data": [{"embedding": [0.1]}]},
            ),
            route="embeddings",
        ),
        {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.usage.input_tokens": 8,
            "gen_ai.request.encoding_formats": ["float"],
            "gen_ai.embeddings.dimension.count": 512,
        },
        {
            "gen_ai.usage.output_tokens",
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.response.finish_reasons",
        },
    ),
    "text completion with payloads": (
        record(
            ai(
                route_type="llm/v1/completions",
                request_model="gpt-3.5-turbo-instruct",
                response_model="gpt-3.5-turbo-instruct",
                upstream_url="http://127.0.0.1:8080/v1/completions",
                request_payload={"prompt": "Say hi", "n": 2, "stop": "\n", "seed": 7},
                response_payload={
                    "id": "cmpl-1",
                    "choices": [
                        {"text": "hi", "finish_reason": "stop"},
                        {"text": "hello", "finish_reason": "length"},
                    ],
                },
            )
        ),
        {
            "gen_ai.operation.name": "text_completion",
            "gen_ai.request.choice.count": 2,
            "gen_ai.request.stop_sequences": ["\n"],
            "gen_ai.request.seed": 7,
            "gen_ai.response.finish_reasons": ["stop", "length"],
            "server.address": "127.0.0.1",
            "server.port": 8080,
        },
        set(),
    ),
    "no usage reported": (
        record(ai(usage=None)),
        {},
        {"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "llmitm.usage.source"},
    ),
    "estimated usage": (
        record(ai(usage=Usage(12, 4, estimated=True))),
        {"gen_ai.usage.input_tokens": 12, "llmitm.usage.source": "estimated"},
        set(),
    ),
    "statistics off": (
        record(ai(usage=Usage(12, 4), cost=0.5, log_statistics=False)),
        {},
        {"gen_ai.usage.input_tokens", "llmitm.cost", "llmitm.latency.llm_ms"},
    ),
    "without payloads": (
        record(ai()),
        {"gen_ai.response.finish_reasons": ["stop"]},
        {
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.system_instructions",
            "gen_ai.response.id",
            "gen_ai.request.temperature",
        },
    ),
    "context headers and body metadata": (
        record(
            ai(),
            context={
                "user_id": "u-7",
                "session_id": "s-7",
                "chat_id": "c-7",
                "message_id": "m-7",
                "organization_id": "o-7",
                "project_id": "p-7",
                "metadata": {"user_id": "u-7", "team": "blue", "tier": 3, "tags": ["a"]},
            },
            consumer="alice",
        ),
        {
            "user.id": "u-7",
            "session.id": "s-7",
            "gen_ai.conversation.id": "c-7",
            "llmitm.chat_id": "c-7",
            "llmitm.message_id": "m-7",
            "llmitm.organization_id": "o-7",
            "llmitm.project_id": "p-7",
            "llmitm.metadata.team": "blue",
            "llmitm.metadata.tier": "3",
            "llmitm.metadata.tags": '["a"]',
            "llmitm.consumer": "alice",
        },
        set(),
    ),
    "cache and reasoning tokens and cost": (
        record(
            ai(
                usage=Usage(
                    130, 139, cache_read_tokens=100, cache_write_tokens=20, reasoning_tokens=7
                ),
                cost=0.00171,
            )
        ),
        {
            "gen_ai.usage.input_tokens": 130,
            "gen_ai.usage.output_tokens": 139,
            "gen_ai.usage.cache_read.input_tokens": 100,
            "gen_ai.usage.cache_creation.input_tokens": 20,
            "gen_ai.usage.reasoning.output_tokens": 7,
            "llmitm.cost": 0.00171,
            "llmitm.latency.llm_ms": 900.0,
        },
        set(),
    ),
    "tool calls": (
        record(
            ai(
                request_payload={
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {
                                        "name": "get_weather",
                                        "arguments": '{"city":"Paris"}',
                                    },
                                }
                            ],
                        },
                        {"role": "tool", "tool_call_id": "call_1", "content": "rainy"},
                    ],
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                    "response_format": {"type": "json_object"},
                    "top_p": 1,
                },
                response_payload={
                    "id": "chatcmpl-9",
                    "choices": [
                        {
                            "message": {
                                "role": "assistant",
                                "content": None,
                                "tool_calls": [
                                    {
                                        "id": "call_2",
                                        "type": "function",
                                        "function": {"name": "get_weather", "arguments": "{}"},
                                    }
                                ],
                            },
                            "finish_reason": "tool_calls",
                        }
                    ],
                },
            )
        ),
        {
            "gen_ai.output.type": "json",
            "gen_ai.request.top_p": 1.0,
            "gen_ai.response.finish_reasons": ["tool_calls"],
        },
        set(),
    ),
    "anthropic native payloads": (
        record(
            ai(
                provider="anthropic",
                request_model="claude-sonnet-4",
                response_model="claude-sonnet-4-20250514",
                upstream_url="https://api.anthropic.com/v1/messages",
                finish_reason="end_turn",
                request_payload={
                    "model": "claude-sonnet-4",
                    "system": "Be brief.",
                    "max_tokens": 100,
                    "top_k": 5,
                    "stop_sequences": ["END"],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                },
                response_payload={
                    "id": "msg_01",
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": "hello"}],
                    "stop_reason": "end_turn",
                },
            )
        ),
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.max_tokens": 100,
            "gen_ai.request.top_k": 5.0,
            "gen_ai.request.stop_sequences": ["END"],
            "gen_ai.response.id": "msg_01",
            "gen_ai.response.finish_reasons": ["end_turn"],
        },
        set(),
    ),
    "gemini preserve route": (
        record(
            ai(
                provider="gemini",
                route_type="preserve",
                request_model="gemini-2.0-flash",
                response_model=None,
                upstream_url="https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
                request_payload={
                    "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                    "systemInstruction": {"parts": [{"text": "Be brief."}]},
                    "generationConfig": {"temperature": 1, "maxOutputTokens": 64},
                },
                response_payload={
                    "responseId": "r-1",
                    "candidates": [
                        {
                            "content": {"role": "model", "parts": [{"text": "hello"}]},
                            "finishReason": "STOP",
                        }
                    ],
                },
                finish_reason=None,
            )
        ),
        {
            "gen_ai.operation.name": "generate_content",
            "gen_ai.provider.name": "gcp.gemini",
            "gen_ai.request.temperature": 1.0,
            "gen_ai.request.max_tokens": 64,
            "gen_ai.response.id": "r-1",
            "gen_ai.response.finish_reasons": ["STOP"],
        },
        set(),
    ),
}


def span_of(rec: CallRecord, s: OtlpSink | None = None) -> tuple[Any, dict[str, Any]]:
    """The one span `rec` becomes, decoded, and the decoded export's resource."""
    s = s or sink()
    items = s.items(rec)
    assert len(items) == 1 and items[0].channel == "otlp"
    export = decode(s.request("otlp", items).body)
    assert export_problems(export) == []
    (rs,) = export.resource_spans
    (ss,) = rs.scope_spans
    (span,) = ss.spans
    return span, attributes(rs.resource.attributes)


@pytest.mark.parametrize("name", list(CASES))
def test_every_kind_of_record_is_a_valid_genai_span(name: str) -> None:
    rec, expected, absent = CASES[name]
    span, _ = span_of(rec)
    attrs = attributes(span.attributes)
    for key, value in expected.items():
        assert attrs.get(key) == value, (key, attrs.get(key))
    assert not absent & attrs.keys()
    assert span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    model = attrs.get("gen_ai.request.model")
    assert span.name == f"{attrs['gen_ai.operation.name']} {model}"
    assert abs(span.start_time_unix_nano - rec.started_at * 1e9) < 1000  # microseconds
    assert abs(span.end_time_unix_nano - rec.ended_at * 1e9) < 1000
    if rec.status == "ok":
        assert span.status.code == trace_pb2.Status.STATUS_CODE_UNSET
    else:
        assert span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        assert span.status.message == rec.error["message"]
    # items are plain JSON: they survive the spool unchanged
    item = sink().items(rec)[0]
    assert json.loads(json.dumps(item.data)) == item.data


def test_chat_span_matches_the_captured_instrumentation() -> None:
    """Same keys and value types as the official GenAI instrumentation's span."""
    rec = CASES["chat ok with payloads"][0]
    span, resource = span_of(rec)
    ours = typed_attributes(span.attributes)
    (captured,) = {json.dumps(s["attributes"], sort_keys=True) for s in CAPTURED_SPANS}
    captured = json.loads(captured)
    assert set(captured) <= set(ours), set(captured) - set(ours)
    for key, kind in CAPTURED_TYPES.items():
        assert ours[key][0] == kind, key
    # the captured values, where the record is the same call
    for key in (
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.request.temperature",
        "gen_ai.request.max_tokens",
        "gen_ai.response.model",
        "gen_ai.response.id",
        "gen_ai.response.finish_reasons",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "server.address",
        "server.port",
        "session.id",
        "user.id",
    ):
        assert ours[key][1] == captured[key], key
    assert span.name == CAPTURED_SPANS[0]["name"]
    assert span.kind == CAPTURED_SPANS[0]["kind"]
    # the content attributes: the same JSON strings, system message kept in the history
    out = json.loads(ours["gen_ai.output.messages"][1])
    assert out == json.loads(captured["gen_ai.output.messages"])
    messages = json.loads(ours["gen_ai.input.messages"][1])
    assert messages == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        *json.loads(captured["gen_ai.input.messages"]),
    ]
    for key, kind in CAPTURED_RESOURCE_TYPES.items():
        assert isinstance(resource[key], str) and kind == "string", key


def test_tool_calls_and_results_in_content() -> None:
    span, _ = span_of(CASES["tool calls"][0])
    attrs = attributes(span.attributes)
    messages = json.loads(attrs["gen_ai.input.messages"])
    assert messages[1] == {
        "role": "assistant",
        "parts": [
            {
                "type": "tool_call",
                "id": "call_1",
                "name": "get_weather",
                "arguments": {"city": "Paris"},
            }
        ],
    }
    assert messages[2] == {
        "role": "tool",
        "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy"}],
    }
    out = json.loads(attrs["gen_ai.output.messages"])
    assert out[0]["parts"][0]["name"] == "get_weather"
    assert out[0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "case, system",
    [
        ("anthropic native payloads", [{"type": "text", "content": "Be brief."}]),
        ("gemini preserve route", [{"type": "text", "content": "Be brief."}]),
    ],
)
def test_native_system_instructions(case: str, system: list[dict[str, str]]) -> None:
    attrs = attributes(span_of(CASES[case][0])[0].attributes)
    assert json.loads(attrs["gen_ai.system_instructions"]) == system
    assert json.loads(attrs["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    out = json.loads(attrs["gen_ai.output.messages"])
    assert out[0]["role"] == "assistant"
    assert out[0]["parts"] == [{"type": "text", "content": "hello"}]


def test_image_parts_never_carry_the_data() -> None:
    data_url = "data:image/png;base64," + "A" * 5000
    rec = record(
        ai(
            request_payload={
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is it?"},
                            {"type": "image_url", "image_url": {"url": data_url}},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                        ],
                    }
                ]
            }
        )
    )
    attrs = attributes(span_of(rec)[0].attributes)
    assert "AAAA" not in attrs["gen_ai.input.messages"]
    parts = json.loads(attrs["gen_ai.input.messages"])[0]["parts"]
    assert parts[1] == {"type": "image_url", "modality": "image"}
    assert parts[2] == {"type": "uri", "modality": "image", "uri": "https://x.test/a.png"}


def test_records_without_an_llm_call_make_no_span() -> None:
    rec = record(ai(), route=None, service=None)
    rec.ai = None
    assert sink().items(rec) == []


@pytest.mark.parametrize(
    "provider, url, expected",
    [
        ("openai", None, "openai"),
        (
            "azure",
            "https://x.openai.azure.com/openai/deployments/d/chat/completions",
            "azure.ai.openai",
        ),
        ("anthropic", None, "anthropic"),
        ("bedrock", None, "aws.bedrock"),
        (
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent",
            "gcp.gemini",
        ),
        (
            "gemini",
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/l/publishers/google/models/m:generateContent",
            "gcp.vertex_ai",
        ),
        ("cohere", None, "cohere"),
        ("mistral", None, "mistral_ai"),
        ("deepseek", None, "deepseek"),
        ("groq", None, "groq"),
        ("xai", None, "x_ai"),
        ("ollama", None, "ollama"),
        ("openrouter", None, "openrouter"),
    ],
)
def test_provider_names(provider: str, url: str | None, expected: str) -> None:
    assert otlp.provider_name(provider, url) == expected


@pytest.mark.parametrize(
    "route_type, url, expected",
    [
        ("llm/v1/chat", None, "chat"),
        ("llm/v1/completions", None, "text_completion"),
        ("llm/v1/embeddings", None, "embeddings"),
        ("preserve", "https://api.openai.com/v1/embeddings", "embeddings"),
        ("preserve", "https://api.openai.com/v1/completions", "text_completion"),
        ("preserve", "https://api.openai.com/v1/chat/completions", "chat"),
        (
            "preserve",
            "https://g.test/v1/models/m:streamGenerateContent?alt=sse",
            "generate_content",
        ),
        ("preserve", None, "chat"),
    ],
)
def test_operation_names(route_type: str, url: str | None, expected: str) -> None:
    assert otlp.operation_name(route_type, url) == expected


def test_span_name_without_a_model() -> None:
    span, _ = span_of(record(ai(request_model=None)))
    assert span.name == "chat"


# ------------------------------------------------------------------ trace context


@pytest.mark.parametrize(
    "value, expected",
    [
        (TRACEPARENT, (TRACE_ID, PARENT_ID, 1)),
        (f"00-{TRACE_ID}-{PARENT_ID}-00", (TRACE_ID, PARENT_ID, 0)),
        (f"  00-{TRACE_ID.upper()}-{PARENT_ID}-01 ", (TRACE_ID, PARENT_ID, 1)),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-future", (TRACE_ID, PARENT_ID, 1)),  # a later version
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),  # version 00 has no more fields
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", None),
        ("[REDACTED]", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(value: str | None, expected: tuple | None) -> None:
    assert parse_traceparent(value) == expected


def test_span_joins_the_clients_trace() -> None:
    rec = record(ai(), {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
    span, _ = span_of(rec)
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_ID
    assert span.span_id.hex() not in (PARENT_ID, "0" * 16)
    assert span.trace_state == "congo=t61rcWkgMzE"
    assert span.flags == 0x01 | 0x100 | 0x200  # sampled, parent known to be remote


def test_unsampled_client_trace_is_still_recorded() -> None:
    span, _ = span_of(record(ai(), {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}))
    assert span.trace_id.hex() == TRACE_ID and span.flags & 0x01


@pytest.mark.parametrize(
    "settings",
    [{"header_type": "ignore"}, {"propagation": {"extract": []}}],
)
def test_client_trace_not_joined_when_configured(settings: dict[str, Any]) -> None:
    span, _ = span_of(record(ai(), {"traceparent": TRACEPARENT}), sink(**settings))
    assert span.trace_id.hex() != TRACE_ID and not span.parent_span_id


def test_without_traceparent_a_new_trace_per_call() -> None:
    s = sink()
    spans = [s.items(record(ai(), {"traceparent": "garbage"}))[0].data for _ in range(50)]
    assert len({d["trace_id"] for d in spans}) == 50
    assert len({d["span_id"] for d in spans}) == 50
    for d in spans:
        assert re.fullmatch("[0-9a-f]{32}", d["trace_id"]) and d["trace_id"] != "0" * 32
        assert re.fullmatch("[0-9a-f]{16}", d["span_id"])
        assert d["parent_span_id"] is None
        assert d["flags"] == 0x01 | 0x100  # sampled, parent (none) is not remote


def test_replayed_items_send_the_same_ids() -> None:
    """Ids are minted into the item: sending it again (after a spool) repeats them."""
    s = sink()
    items = s.items(record(ai()))
    spooled = [Item(i.channel, json.loads(json.dumps(i.data))) for i in items]
    first = s.request("otlp", items).body
    # a new sink (another process after a restart) sends the same span
    again = sink().request("otlp", spooled).body
    a, b = decode(first), decode(again)
    span_a = a.resource_spans[0].scope_spans[0].spans[0]
    span_b = b.resource_spans[0].scope_spans[0].spans[0]
    assert span_a == span_b


def test_json_round_trip_keeps_double_attributes_double() -> None:
    """A double that comes back from JSON as a whole number stays a double."""
    s = sink()
    item = s.items(record(ai(request_payload={"temperature": 1.0, "messages": []})))[0]
    item.data["attributes"]["gen_ai.request.temperature"] = 1  # what a lossy codec could do
    item.data["attributes"]["gen_ai.usage.input_tokens"] = 10.0
    span = decode(s.request("otlp", [item]).body).resource_spans[0].scope_spans[0].spans[0]
    types = typed_attributes(span.attributes)
    assert types["gen_ai.request.temperature"] == ("double", 1.0)
    assert types["gen_ai.usage.input_tokens"] == ("int", 10)


@pytest.mark.parametrize("rate, kept", [(None, 200), (1.0, 200), (0.0, 0)])
def test_sampling_rate_extremes(rate: float | None, kept: int) -> None:
    s = sink(sampling_rate=rate)
    assert sum(len(s.items(record(ai()))) for _ in range(200)) == kept


def test_sampling_rate_keeps_a_share_by_trace_id() -> None:
    s = sink(sampling_rate=0.5)
    kept = sum(len(s.items(record(ai()))) for _ in range(2000))
    assert 800 < kept < 1200
    # the decision follows the trace id: a client trace is kept or dropped whole
    decisions = {len(s.items(record(ai(), {"traceparent": TRACEPARENT}))) for _ in range(20)}
    assert len(decisions) == 1


# ------------------------------------------------------------------ the request


def test_request_batches_spans_with_the_resource_and_credentials() -> None:
    s = sink(resource_attributes={"service.name": "gw-test", "deployment.environment": "ci"})
    recs = [record(ai(), id=f"01890a5d-ac96-774b-bcce-b302099a80{i:02d}") for i in range(5)]
    items = [i for r in recs for i in s.items(r)]
    prepared = s.request("otlp", items)
    assert prepared.method == "POST"
    assert prepared.url == "http://127.0.0.1:4318/v1/traces"
    assert prepared.headers == {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/x-protobuf",
    }
    export = decode(prepared.body)
    assert export_problems(export) == []
    (rs,) = export.resource_spans
    resource = attributes(rs.resource.attributes)
    assert resource["service.name"] == "gw-test"
    assert resource["deployment.environment"] == "ci"
    assert resource["telemetry.sdk.language"] == "python"
    assert set(CAPTURED_RESOURCE_TYPES) <= set(resource)
    (ss,) = rs.scope_spans
    assert ss.scope.name == "llmitm"
    assert [attributes(sp.attributes)["llmitm.record_id"] for sp in ss.spans] == [
        r.id for r in recs
    ]
    # credentials only in the header: neither in the items nor in the body
    assert TOKEN not in json.dumps([i.data for i in items])
    assert TOKEN.encode() not in prepared.body


def test_a_batch_over_the_byte_cap_carries_what_fits() -> None:
    s = sink()
    big = {"messages": [{"role": "user", "content": "q" * 700_000}]}
    recs = [
        record(ai(request_payload=big), id=f"01890a5d-ac96-774b-bcce-b302099a80{i:02d}")
        for i in range(10)
    ]
    items = [i for r in recs for i in s.items(r)]  # 10 spans of about 0.7 MB
    prepared = s.request("otlp", items)
    assert len(prepared.body) <= otlp.MAX_REQUEST_BYTES
    (rs,) = decode(prepared.body).resource_spans
    sent = [attributes(sp.attributes)["llmitm.record_id"] for sp in rs.scope_spans[0].spans]
    assert prepared.count == len(sent) and 1 <= len(sent) < 10
    assert sent == [r.id for r in recs[: len(sent)]]  # the first ones, in order
    assert s.request("otlp", items[:2]).count == 2


def test_default_resource() -> None:
    resource = sink().resource
    assert resource["service.name"] == "llmitm"
    assert resource["telemetry.sdk.name"] == "llmitm"
    assert resource["service.instance.id"] == otlp.INSTANCE_ID


def test_record_headers_never_reach_the_collector() -> None:
    rec = record(
        ai(request_payload=CHAT_REQUEST),
        {"x-api-key": "[REDACTED]", "x-client-note": CLIENT_KEY, "traceparent": TRACEPARENT},
    )
    s = sink()
    items = s.items(rec)
    body = s.request("otlp", items).body
    assert CLIENT_KEY.encode() not in body and b"[REDACTED]" not in body
    assert CLIENT_KEY not in json.dumps(items[0].data)


# ------------------------------------------------------------------ the verdict


def _export_response(rejected: int = 0, message: str = "") -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    r = ExportTraceServiceResponse()
    if rejected:
        r.partial_success.rejected_spans = rejected
        r.partial_success.error_message = message
    return r.SerializeToString()


ITEMS = [Item("otlp", {"n": i}) for i in range(3)]


@pytest.mark.parametrize(
    "status, headers, body, expected",
    [
        (200, {}, b"", Verdict()),
        (200, {}, _export_response(), Verdict()),
        (
            200,
            {},
            _export_response(2, "too big"),
            Verdict(reason="the collector rejected 2 span(s): too big"),
        ),
        (
            200,
            {},
            b'{"partialSuccess": {"rejectedSpans": "1", "errorMessage": "bad"}}',
            Verdict(reason="the collector rejected 1 span(s): bad"),
        ),
        (202, {}, b"", Verdict()),
        (
            400,
            {},
            status_body(3, "invalid span"),
            Verdict(dropped=ITEMS, reason="HTTP 400: invalid span"),
        ),
        # a wrong token or URL: the spans are kept for a fixed config
        (
            401,
            {},
            b"unauthorized",
            Verdict(retry=ITEMS, hold=True, reason="HTTP 401: unauthorized (check headers)"),
        ),
        (
            404,
            {},
            b"",
            Verdict(retry=ITEMS, hold=True, reason="HTTP 404 (check traces_endpoint)"),
        ),
        (
            308,
            {"location": "https://c.test/v1/traces"},
            b"",
            Verdict(
                retry=ITEMS,
                hold=True,
                reason="HTTP 308: redirected to https://c.test/v1/traces (check traces_endpoint)",
            ),
        ),
        (408, {}, b"", Verdict(retry=ITEMS, reason="HTTP 408")),
        (
            429,
            {"retry-after": "3"},
            status_body(8, "slow down"),
            Verdict(retry=ITEMS, retry_after=3.0, reason="HTTP 429: slow down"),
        ),
        (502, {}, b"", Verdict(retry=ITEMS, reason="HTTP 502")),
        (
            503,
            {"retry-after": "1.5"},
            b"",
            Verdict(retry=ITEMS, retry_after=1.5, reason="HTTP 503"),
        ),
        (504, {}, b"", Verdict(retry=ITEMS, reason="HTTP 504")),
        # OTLP/HTTP does not retry a 500; we do (exporters/otlp.py, RETRYABLE)
        (500, {}, status_body(13, "internal"), Verdict(retry=ITEMS, reason="HTTP 500: internal")),
        # every other 4xx and 5xx would fail again
        (501, {}, b"", Verdict(dropped=ITEMS, reason="HTTP 501")),
        # too large: the delivery splits the batch
        (413, {}, b"", Verdict(retry=ITEMS, too_large=True, reason="HTTP 413")),
    ],
)
def test_verdict(status: int, headers: dict[str, str], body: bytes, expected: Verdict) -> None:
    assert sink().verdict(ITEMS, status, headers, body) == expected


# ------------------------------------------------------------------ the config


def test_config_defaults_are_kongs() -> None:
    c = config()
    assert (c.connect_timeout, c.send_timeout, c.read_timeout) == (1000, 5000, 5000)
    assert c.queue.max_batch_size == 200
    assert c.queue.max_coalescing_delay == 1
    assert c.queue.max_entries == 10_000
    # Kong gives up on a batch after 60 s; llmitm keeps it (in the spool) by default
    assert c.queue.max_retry_time is None
    assert c.queue.initial_retry_delay == 0.01
    assert c.queue.max_retry_delay == 60
    s = OtlpSink(c, "k")
    assert s.max_batch == 200
    assert s.timeout == pytest.approx(11.0)
    assert (s.connect_timeout, s.send_timeout, s.read_timeout) == (1.0, 5.0, 5.0)
    assert s.linger == 1
    assert s.queue is c.queue
    assert s.name == "opentelemetry:k"


def test_deprecated_kong_fields() -> None:
    c = OpenTelemetryConfig(
        endpoint="http://c.test:4318/v1/traces", batch_span_count=50, batch_flush_delay=3
    )
    s = OtlpSink(c, "k")
    assert s.url == "http://c.test:4318/v1/traces"
    assert s.max_batch == 50 and s.linger == 3.0
    same = OpenTelemetryConfig(endpoint=s.url, traces_endpoint=s.url)
    assert same.url == s.url


def test_queue_settings_are_exposed() -> None:
    s = sink(
        queue={
            "max_batch_size": 10,
            "max_coalescing_delay": 0.1,
            "max_retry_time": 5,
            "initial_retry_delay": 0.5,
            "max_retry_delay": 2,
            "concurrency_limit": -1,
        }
    )
    assert s.max_batch == 10 and s.linger == 0.1
    assert (s.queue.max_retry_time, s.queue.initial_retry_delay, s.queue.max_retry_delay) == (
        5,
        0.5,
        2,
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"traces_endpoint": None}, "traces_endpoint is required"),
        ({"endpoint": "http://other.test/v1/traces"}, "differ"),
        ({"traces_endpoint": "collector:4318"}, "http:// or https://"),
        ({"traces_endpoint": "ftp://c.test/v1/traces"}, "http:// or https://"),
        ({"headers": {"Content-Type": "text/plain"}}, "cannot contain 'Content-Type'"),
        ({"headers": {"bad header": "x"}}, "not a valid header name"),
        ({"headers": {"X-Empty": ""}}, "must not be empty"),
        ({"resource_attributes": {"service.name": ""}}, "must not be empty"),
        ({"logs_endpoint": "http://c.test/v1/logs"}, "not supported"),
        ({"http_response_header_for_traceid": "x-trace"}, "not supported"),
        ({"propagation": {"extract": ["b3", "w3c"]}}, "only 'w3c'"),
        ({"propagation": {"inject": ["w3c"]}}, "not supported"),
        ({"header_type": "b3"}, "header_type"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"queue": {"max_batch_size": 0}}, "max_batch_size"),
        ({"queue": {"concurrency_limit": 2}}, "concurrency_limit"),
        ({"queue": {"max_retry_time": -5}}, "-1"),
        ({"queue": {"max_batchsize": 5}}, "max_batchsize"),
        ({"batch_span_count": 0}, "batch_span_count"),
        ({"endpont": "http://c.test"}, "endpont"),  # a typo is an error, never ignored
    ],
)
def test_config_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        config(**settings)
    assert message in str(e.value)


def test_config_error_never_quotes_a_header_value() -> None:
    with pytest.raises(ValidationError) as e:
        config(headers={"Authorization": "Bearer secret\nvalue"})
    (err,) = e.value.errors()
    assert "must be one line" in err["msg"] and "secret" not in err["msg"]


def test_kong_defaults_as_deck_dumps_them_are_accepted() -> None:
    c = config(
        header_type="preserve",
        propagation={"default_format": "w3c", "extract": None, "inject": None, "clear": None},
        logs_endpoint=None,
        sampling_rate=None,
        http_response_header_for_traceid=None,
        batch_span_count=None,
        batch_flush_delay=None,
        queue={"max_bytes": None, "concurrency_limit": 1},
    )
    assert c.joins_client_trace


# --------------------------------------------------- on the wire, with the fake


@pytest.fixture(scope="module")
def collector_server() -> Any:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def collector(collector_server: FakeUpstream) -> FakeCollector:
    collector_server.reset()
    fake = FakeCollector()
    collector_server.reply(fake)
    return fake


def send(s: OtlpSink, items: list[Item]) -> Verdict:
    prepared = s.request("otlp", items)
    with httpx.Client(timeout=5) as client:
        r = client.request(
            prepared.method, prepared.url, headers=prepared.headers, content=prepared.body
        )
    return s.verdict(items, r.status_code, dict(r.headers), r.content)


def wire_sink(server: FakeUpstream, **kw: Any) -> OtlpSink:
    return sink(traces_endpoint=f"{server.url}/v1/traces", **kw)


def test_every_record_kind_is_accepted_by_the_collector(
    collector_server: FakeUpstream, collector: FakeCollector
) -> None:
    s = wire_sink(collector_server)
    items = [i for rec, _, _ in CASES.values() for i in s.items(rec)]
    assert send(s, items) == Verdict()
    assert collector.errors == []
    assert len(collector.spans) == len(CASES)
    # secrets: the token only in the authorization header, nowhere else
    (req,) = collector.received
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    for name, value in req.headers.items():
        if name != "authorization":
            assert TOKEN not in value
    assert TOKEN.encode() not in req.body


def test_collector_faults(collector_server: FakeUpstream, collector: FakeCollector) -> None:
    s = wire_sink(collector_server)
    items = s.items(record(ai()))
    collector.fail(
        Reply(
            503,
            {"retry-after": "2", "content-type": "application/x-protobuf"},
            status_body(14, "unavailable"),
        ),
        Reply(400, {"content-type": "application/x-protobuf"}, status_body(3, "bad span")),
    )
    assert send(s, items) == Verdict(retry=items, retry_after=2.0, reason="HTTP 503: unavailable")
    assert send(s, items) == Verdict(dropped=items, reason="HTTP 400: bad span")
    assert send(s, items) == Verdict()
    collector.reject_spans = 1
    assert send(s, items).reason == "the collector rejected 1 span(s): span too large"
    assert collector.errors == []


def test_collector_rejects_what_breaks_the_rules(
    collector_server: FakeUpstream, collector: FakeCollector
) -> None:
    """The fake is strict: an unknown attribute or a wrong type is a 400."""
    s = wire_sink(collector_server)
    item = s.items(record(ai()))[0]
    item.data["attributes"]["gen_ai.usage.prompt_tokens"] = 3  # an old, unknown name
    item.data["attributes"]["server.port"] = "443"
    verdict = send(s, [item])
    assert verdict.dropped == [item] and "unknown attribute" in verdict.reason
    assert any("server.port is string" in e for e in collector.errors)


def test_reasoning_parts() -> None:
    rec = record(
        ai(
            provider="anthropic",
            request_payload={
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": "they greet", "signature": "sig"},
                            {"type": "text", "text": "hello"},
                        ],
                    },
                ]
            },
            response_payload={
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": "4",
                            "reasoning_content": "2+2",
                        },
                        "finish_reason": "stop",
                    }
                ]
            },
        )
    )
    attrs = attributes(span_of(rec)[0].attributes)
    assert json.loads(attrs["gen_ai.input.messages"])[1]["parts"] == [
        {"type": "reasoning", "content": "they greet"},
        {"type": "text", "content": "hello"},
    ]
    assert json.loads(attrs["gen_ai.output.messages"])[0]["parts"] == [
        {"type": "reasoning", "content": "2+2"},
        {"type": "text", "content": "4"},
    ]
    assert "sig" not in attrs["gen_ai.input.messages"]


def test_long_error_message_is_cut() -> None:
    page = "<html>" + "x" * 10_000 + "</html>"
    rec = record(ai(usage=None), status="error", error={**UPSTREAM_ERROR, "message": page})
    span, _ = span_of(rec)
    assert span.status.message == page[: otlp.MAX_STATUS_MESSAGE]


def test_integers_beyond_int64_are_left_out() -> None:
    rec = record(ai(request_payload={"messages": [], "seed": 2**70, "max_tokens": 2**64}))
    attrs = attributes(span_of(rec)[0].attributes)
    assert "gen_ai.request.seed" not in attrs and "gen_ai.request.max_tokens" not in attrs


@pytest.mark.parametrize(
    "headers, body, reason",
    [
        (
            {"content-type": "application/json"},
            b'{"message": "nope"}',
            'HTTP 403: {"message": "nope"}',
        ),
        ({"content-type": "text/plain"}, b"\x12\x04nope", "HTTP 403: \x12\x04nope"),
        ({"content-type": "application/x-protobuf"}, status_body(7, "denied"), "HTTP 403: denied"),
        ({}, status_body(7, "denied"), "HTTP 403: denied"),
        ({}, b"", "HTTP 403"),
    ],
)
def test_error_body_readings(headers: dict[str, str], body: bytes, reason: str) -> None:
    assert sink().verdict(ITEMS, 403, headers, body).reason == f"{reason} (check headers)"


def test_request_parameters_and_response_id_without_payloads() -> None:
    """A route that does not log payloads still gets its sampling parameters and the
    response id on the span (from the record's request_params/response_id)."""
    info = ai(
        request_params={"temperature": 0.2, "max_tokens": 256, "stop": ["END"]},
        response_id="chatcmpl-abc",
    )
    info.request_payload = info.response_payload = None
    span, _ = span_of(record(info))
    attrs = attributes(span.attributes)
    assert attrs["gen_ai.request.temperature"] == 0.2
    assert attrs["gen_ai.request.max_tokens"] == 256
    assert attrs["gen_ai.response.id"] == "chatcmpl-abc"
    assert "gen_ai.input.messages" not in attrs
