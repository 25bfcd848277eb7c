"""addons/contentview.py: LLM requests and answers of every format, rendered as a conversation.

Flows are built with mitmproxy's `tflow` and real-shaped bodies (Kong's fixtures where
they exist, else the providers' documented wire formats); the view is asked through
mitmproxy's own `prettify_message`, as mitmweb does.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from mitmproxy import contentviews
from mitmproxy.contentviews import Metadata
from mitmproxy.test import taddons, tflow

from addons.contentview import (
    ContentviewAddon,
    framing,
    kind_of_path,
    llm_view,
    register,
)
from providers import eventstream
from tests.fakes import anthropic as fake_anthropic
from tests.fakes.bedrock_invoke import FakeBedrockInvoke
from tests.unit.conftest import fixture

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
AWS = "application/vnd.amazon.eventstream"


@pytest.fixture(autouse=True)
def _registered():
    register()
    with taddons.context():
        yield


def sse_events(*events: tuple[str | None, Any]) -> bytes:
    out = b""
    for name, data in events:
        if name:
            out += f"event: {name}\n".encode()
        payload = data if isinstance(data, str) else json.dumps(data)
        out += f"data: {payload}\n\n".encode()
    return out


def ndjson(*objs: Any) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


#: the public host of each API (the view is chosen automatically on known LLM hosts)
HOSTS = {
    "openai": ("api.openai.com", 443),
    "openai-responses": ("api.openai.com", 443),
    "anthropic": ("api.anthropic.com", 443),
    "gemini": ("generativelanguage.googleapis.com", 443),
    "bedrock": ("bedrock-runtime.us-east-1.amazonaws.com", 443),
    "bedrock-invoke": ("bedrock-runtime.us-east-1.amazonaws.com", 443),
    "cohere-v1": ("api.cohere.com", 443),
    "cohere-v2": ("api.cohere.com", 443),
    "ollama": ("localhost", 11434),
}


def flow(
    path: str,
    request: Any,
    response: bytes | Any,
    content_type: str = "application/json",
    status: int = 200,
    host: str | None = None,
    port: int = 443,
) -> Any:
    """A flow to the API's own host (by its path), or to `host:port`."""
    f = tflow.tflow(resp=True)
    kind = kind_of_path(path)
    f.request.host, f.request.port = (
        (host or "api.example.com", port) if host is not None or kind is None else HOSTS[kind.api]
    )
    f.request.headers["host"] = f.request.host
    f.request.path = path
    f.request.method = "POST"
    f.request.headers["content-type"] = "application/json"
    f.request.content = request if isinstance(request, bytes) else json.dumps(request).encode()
    f.response.status_code = status
    f.response.headers["content-type"] = content_type
    f.response.content = response if isinstance(response, bytes) else json.dumps(response).encode()
    return f


def shown(f: Any, which: str = "response") -> str:
    """What mitmweb shows for the message with the view chosen automatically."""
    result = contentviews.prettify_message(getattr(f, which), f)
    assert result.view_name == "LLM", result.text
    assert result.syntax_highlight != "error"
    return result.text


def in_order(text: str, *needles: str) -> None:
    at = 0
    for n in needles:
        i = text.find(n, at)
        assert i >= 0, f"{n!r} missing (after position {at}) in:\n{text}"
        at = i + len(n)


# ---------------------------------------------------------------- OpenAI


OPENAI_CHAT = json.loads(fixture("openai/llm-v1-chat/requests/good.json").read_text())


def test_openai_chat_request_and_json_answer_from_kongs_fixtures() -> None:
    f = flow(
        "/v1/chat/completions",
        OPENAI_CHAT,
        fixture("openai/llm-v1-chat/responses/good.json").read_bytes(),
    )
    request = shown(f, "request")
    in_order(request, "openai chat", "── system ──", "── user ──", "What is 1 + 1?")
    response = shown(f)
    answer = json.loads(fixture("openai/llm-v1-chat/responses/good.json").read_text())
    text = answer["choices"][0]["message"]["content"]
    usage = answer["usage"]
    in_order(
        response,
        "LLM response · 200 · openai chat",
        "── assistant ──",
        text,
        f"finish: {answer['choices'][0]['finish_reason']}",
        f"usage: {usage['prompt_tokens']:,} in → {usage['completion_tokens']:,} out · reported",
    )


OPENAI_TOOL_STREAM = sse_events(
    (
        None,
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ],
                    },
                    "finish_reason": None,
                }
            ],
        },
    ),
    (
        None,
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                    "finish_reason": None,
                }
            ],
        },
    ),
    (
        None,
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                    "finish_reason": None,
                }
            ],
        },
    ),
    (
        None,
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        },
    ),
    (
        None,
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [],
            "usage": {
                "prompt_tokens": 1204,
                "completion_tokens": 311,
                "total_tokens": 1515,
                "prompt_tokens_details": {"cached_tokens": 1024},
            },
        },
    ),
    (None, "[DONE]"),
)


def test_openai_chat_stream_with_a_tool_call_split_across_chunks() -> None:
    f = flow("/v1/chat/completions", {**OPENAI_CHAT, "stream": True}, OPENAI_TOOL_STREAM, SSE)
    text = shown(f)
    in_order(
        text,
        "openai chat · model gpt-4o · SSE stream",
        "[tool call] get_weather  (id call_1)",
        '"city": "Paris"',
        "finish: tool_calls",
        "usage: 1,204 in (1,024 cache read) → 311 out · reported",
    )
    assert "stream" in shown(f, "request").splitlines()[0]


def test_openai_kong_stream_frame() -> None:
    f = flow(
        "/v1/chat/completions",
        OPENAI_CHAT,
        fixture("unit/real-stream-frames/openai/llm-v1-chat.txt").read_bytes(),
        SSE,
    )
    in_order(shown(f), "model gpt-4-0613", "SSE stream", "── assistant ──", "the answer")


def test_openai_completions_json_and_stream() -> None:
    req = json.loads(fixture("openai/llm-v1-completions/requests/good.json").read_text())
    f = flow(
        "/v1/completions",
        req,
        fixture("openai/llm-v1-completions/responses/good.json").read_bytes(),
    )
    in_order(shown(f, "request"), "openai completions", "── prompt ──", req["prompt"])
    answer = json.loads(fixture("openai/llm-v1-completions/responses/good.json").read_text())
    in_order(
        shown(f), "openai completions", "── assistant ──", answer["choices"][0]["text"].strip()
    )
    f = flow(
        "/v1/completions",
        req,
        fixture("unit/real-stream-frames/openai/llm-v1-completions.txt").read_bytes(),
        SSE,
    )
    in_order(shown(f), "openai completions", "SSE stream", "the answer")


def test_openai_embeddings() -> None:
    body = fixture("openai/llm-v1-embeddings/responses/good.json").read_bytes()
    dims = len(json.loads(body)["data"][0]["embedding"])
    f = flow("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}, body)
    in_order(shown(f, "request"), "openai embeddings", "── input ──", "a", "b")
    in_order(shown(f), "openai embeddings", f"embeddings: 1 × {dims} dimensions")


RESPONSES_REQUEST = {
    "model": "gpt-5",
    "instructions": "Be terse.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {
            "type": "function_call",
            "call_id": "fc_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "fc_1", "output": "18C, sunny"},
    ],
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
}
RESPONSES_ANSWER = {
    "id": "resp_1",
    "object": "response",
    "model": "gpt-5-2025-08-07",
    "status": "completed",
    "output": [
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "User wants weather."}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "18C and sunny in Paris."}],
        },
    ],
    "usage": {
        "input_tokens": 40,
        "output_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 8},
    },
}


def test_openai_responses_request_json_and_stream() -> None:
    f = flow("/v1/responses", RESPONSES_REQUEST, RESPONSES_ANSWER)
    in_order(
        shown(f, "request"),
        "openai-responses chat · model gpt-5",
        "tools: get_weather",
        "── system ──",
        "Be terse.",
        "── user ──",
        "Weather in Paris?",
        "── assistant ──",
        "[tool call] get_weather  (id fc_1)",
        '"city": "Paris"',
        "── tool ──",
        "[tool result] fc_1",
        "18C, sunny",
    )
    expected = (
        "[thinking]",
        "User wants weather.",
        "18C and sunny in Paris.",
        "finish: stop",  # the outcome in chat's terms, as the call record has it
        "usage: 40 in → 12 out (8 reasoning)",
    )
    in_order(shown(f), "openai-responses chat · model gpt-5-2025-08-07 · JSON", *expected)
    created = {**RESPONSES_ANSWER, "status": "in_progress", "output": [], "usage": None}
    stream = sse_events(
        ("response.created", {"type": "response.created", "response": created}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "18C "}),
        ("response.completed", {"type": "response.completed", "response": RESPONSES_ANSWER}),
    )
    f = flow("/v1/responses", {**RESPONSES_REQUEST, "stream": True}, stream, SSE)
    in_order(shown(f), "SSE stream", *expected)


# ---------------------------------------------------------------- Anthropic


ANTHROPIC_REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are a weather bot."}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Call the tool.", "signature": "sig=="},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"}],
        },
    ],
}


def anthropic_stream() -> bytes:
    return sse_events(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [],
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": 1204,
                        "output_tokens": 1,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Need the "},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "forecast."},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "EuYB"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_forecast",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Par'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'is", "days": 3}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 311},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )


def test_anthropic_request_with_thinking_tool_use_and_tool_result() -> None:
    f = flow("/v1/messages", ANTHROPIC_REQUEST, b"{}", host="api.anthropic.com")
    in_order(
        shown(f, "request"),
        "anthropic chat · model claude-sonnet-4-5",
        "params: max_tokens=1024",
        "tools: get_weather",
        "── system ──",
        "You are a weather bot.",
        "── user ──",
        "Weather in Paris?",
        "── assistant ──",
        "[thinking]",
        "Call the tool.",
        "[tool call] get_weather  (id toolu_1)",
        '"city": "Paris"',
        "── user ──",
        "[tool result] toolu_1",
        "18C, sunny",
    )


def test_anthropic_stream_with_thinking_and_a_streamed_tool_call() -> None:
    f = flow("/v1/messages", {**ANTHROPIC_REQUEST, "stream": True}, anthropic_stream(), SSE)
    in_order(
        shown(f),
        "anthropic chat · model claude-sonnet-4-5 · SSE stream",
        "── assistant ──",
        "[thinking]",
        "Need the forecast.",
        "[tool call] get_forecast  (id toolu_2)",
        '"city": "Paris"',
        '"days": 3',
        "finish: tool_calls",
        "usage: 1,204 in → 311 out · reported",
    )


def test_anthropic_json_answer_from_kongs_fixture() -> None:
    body = fixture("anthropic/llm-v1-chat/responses/good.json").read_bytes()
    f = flow("/v1/messages", ANTHROPIC_REQUEST, body)
    in_order(shown(f), "anthropic chat", "The sum of 1 + 1 is 2.", "finish: stop")


def test_anthropic_error_answer() -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    f = flow("/v1/messages", ANTHROPIC_REQUEST, body, status=429)
    in_order(shown(f), "LLM response · 429 · anthropic chat", "error: 429", "slow down")


# ---------------------------------------------------------------- Gemini


GEMINI_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
GEMINI_EVENTS = [
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "Checking the lights.", "thought": True}],
                }
            }
        ],
        "modelVersion": "gemini-2.5-flash",
    },
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Turning them on. "}]}}],
        "modelVersion": "gemini-2.5-flash",
    },
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "set_light_color", "args": {"rgb_hex": "ffa500"}}}
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 50,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 7,
            "totalTokenCount": 77,
        },
        "modelVersion": "gemini-2.5-flash",
    },
]
GEMINI_EXPECTED = (
    "[thinking]",
    "Checking the lights.",
    "Turning them on.",
    "[tool call] set_light_color",
    '"rgb_hex": "ffa500"',
    "finish: tool_calls",
    "usage: 50 in → ",
)


def test_gemini_request_from_kongs_native_fixture() -> None:
    req = fixture("native/gemini/request/with-functions.json").read_bytes()
    f = flow("/v1beta/models/gemini-2.5-flash:generateContent", req, b"{}")
    in_order(
        shown(f, "request"),
        "gemini chat · model gemini-2.5-flash",
        "tools: enable_lights, set_light_color, stop_lights",
        "── system ──",
        "lighting system bot",
        "── user ──",
        "Turn on the lights please.",
    )


def test_gemini_json_answer_from_kongs_fixture() -> None:
    body = fixture("gemini/llm-v1-chat/responses/good.json").read_bytes()
    f = flow("/v1beta/models/gemini-1.5-flash:generateContent", {"contents": []}, body)
    in_order(shown(f), "gemini chat", "Everything is okay.", "finish: stop", "usage: 2 in → 11 out")


def test_gemini_sse_stream() -> None:
    body = sse_events(*[(None, e) for e in GEMINI_EVENTS])
    f = flow(GEMINI_PATH + "?alt=sse", {"contents": []}, body, SSE)
    in_order(shown(f), "gemini chat", "SSE stream", *GEMINI_EXPECTED)


def test_gemini_json_array_stream() -> None:
    body = ("[" + ",\n".join(json.dumps(e, indent=2) for e in GEMINI_EVENTS) + "]").encode()
    f = flow(GEMINI_PATH, {"contents": []}, body)
    in_order(shown(f), "gemini chat", "JSON array stream", *GEMINI_EXPECTED)


def test_gemini_embeddings() -> None:
    f = flow(
        "/v1beta/models/text-embedding-004:embedContent",
        {"content": {"parts": [{"text": "hello"}]}},
        {"embedding": {"values": [0.1, 0.2, 0.3]}},
    )
    in_order(shown(f, "request"), "gemini embeddings", "── input ──", "hello")
    in_order(shown(f), "gemini embeddings", "embeddings: 1 × 3 dimensions")


# ---------------------------------------------------------------- Bedrock


BEDROCK_PATH = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"


def test_bedrock_request_from_kongs_native_fixture() -> None:
    req = fixture("native/bedrock/request/with-functions-and-chatter.json").read_bytes()
    f = flow(BEDROCK_PATH, req, b"{}")
    in_order(
        shown(f, "request"),
        "bedrock chat · model anthropic.claude-3-5-sonnet-20240620-v1:0",
        "── system ──",
        "lighting system bot",
        "── user ──",
        "Turn on the lights please.",
        "── assistant ──",
        "Sure! I will turn them on now.",
        "[tool call] enable_lights  (id tooluse_12j842hSE-_gkri61ab2A)",
        "── user ──",
        "[tool result] tooluse_12j842hSE-_gkri61ab2A",
        '{"success":true}',
    )


def test_bedrock_json_answer_from_kongs_fixture() -> None:
    body = fixture("unit/real-responses/bedrock/llm-v1-chat.json").read_bytes()
    f = flow(BEDROCK_PATH, {"messages": []}, body)
    in_order(shown(f), "bedrock chat", "You cannot divide by zero", "finish: stop")


def test_bedrock_event_stream_from_kongs_fixture() -> None:
    body = fixture("unit/streaming-chunk-formats/aws/input.bin").read_bytes()
    f = flow(BEDROCK_PATH + "-stream", {"messages": []}, body, AWS)
    in_order(shown(f), "bedrock chat", "AWS event-stream", "Hello! Relativity", "finish: stop")


def test_bedrock_event_stream_with_reasoning_and_a_tool_call() -> None:
    events = [
        ("messageStart", {"role": "assistant"}),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Lights first."}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        (
            "contentBlockStart",
            {
                "contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "enable_lights"}},
            },
        ),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"on":'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": " true}"}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use"}),
        (
            "metadata",
            {
                "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42},
                "metrics": {"latencyMs": 100},
            },
        ),
    ]
    body = b"".join(eventstream.encode_event(name, payload) for name, payload in events)
    f = flow(BEDROCK_PATH + "-stream", {"messages": []}, body, AWS)
    in_order(
        shown(f),
        "AWS event-stream",
        "[thinking]",
        "Lights first.",
        "[tool call] enable_lights  (id tooluse_1)",
        '"on": true',
        "finish: tool_calls",
        "usage: 30 in → 12 out",
    )


INVOKE_PATH = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke"
INVOKE_REQUEST = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 200,
    "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
}


def _invoke(stream: bool) -> tuple[bytes, dict[str, str], fake_anthropic.Script]:
    """A real InvokeModel answer of Claude (the Bedrock fake's event-stream when
    streamed: each chunk's bytes one of Anthropic's events, the metrics in the last)."""
    script = fake_anthropic.Script(
        input_tokens=15,
        cache_read_input_tokens=0,
        cache_creation_input_tokens=0,
        tool_calls=[("get_weather", {"city": "Paris"})],
    )
    invoke = FakeBedrockInvoke(script)
    request = {**INVOKE_REQUEST, "model": "claude-sonnet-4-5"}
    blocks, stop = fake_anthropic.answer_blocks(request, script)
    if not stream:
        answer = fake_anthropic.message_json(request, script, blocks, stop)
        return json.dumps(answer).encode(), invoke.count_headers(), script
    reply = invoke.stream(request, blocks, stop)
    assert reply.chunks is not None
    return b"".join(c for c in reply.chunks if isinstance(c, bytes)), reply.headers, script


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "invoke-with-response-stream"])
def test_bedrock_invoke_model_with_claudes_own_body(stream: bool) -> None:
    body, headers, script = _invoke(stream)
    path = INVOKE_PATH + ("-with-response-stream" if stream else "")
    f = flow(path, INVOKE_REQUEST, body, AWS if stream else "application/json")
    f.response.headers.update(headers)
    in_order(
        shown(f, "request"),
        "bedrock invoke · model us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "tools: get_weather",
        "── user ──",
        "Weather in Paris?",
    )
    in_order(
        shown(f),
        "bedrock invoke (anthropic)",
        "AWS event-stream" if stream else "JSON",
        "── assistant ──",
        "Let me check.",
        "[tool call] get_weather",
        '"city": "Paris"',
        "finish: tool_calls",
        f"usage: 15 in → {script.output_tokens} out · reported",  # Bedrock's own counts
    )
    assert "error" not in shown(f)


def test_bedrock_invoke_stream_of_another_model_vendor() -> None:
    """A vendor without a parser of its own (Amazon Titan): its text and stop reason."""
    chunks = [
        {"outputText": "Hello", "index": 0, "completionReason": None},
        {
            "outputText": " there.",
            "index": 0,
            "completionReason": "FINISH",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5, "outputTokenCount": 3},
        },
    ]
    body = b"".join(
        eventstream.encode_event(
            "chunk", {"bytes": base64.b64encode(json.dumps(c).encode()).decode()}
        )
        for c in chunks
    )
    f = flow("/model/amazon.titan-text-express-v1/invoke-with-response-stream", {}, body, AWS)
    in_order(shown(f), "bedrock invoke", "Hello there.", "finish: FINISH", "usage: 5 in → 3 out")


# ---------------------------------------------------------------- Claude on Vertex AI

VERTEX_CLAUDE = (
    "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929"
)


@pytest.mark.parametrize("stream", [False, True], ids=["rawPredict", "streamRawPredict"])
def test_claude_on_vertex(stream: bool) -> None:
    request = {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "1+1?"}],
        "stream": stream,
    }
    answer = (
        anthropic_stream()
        if stream
        else fixture("anthropic/llm-v1-chat/responses/good.json").read_bytes()
    )
    path = VERTEX_CLAUDE + (":streamRawPredict" if stream else ":rawPredict")
    host = "us-east5-aiplatform.googleapis.com"
    f = flow(path, request, answer, SSE if stream else "application/json", host=host)
    in_order(shown(f, "request"), "anthropic chat · model claude-sonnet-4-5@20250929", "1+1?")
    in_order(shown(f), "anthropic chat", "── assistant ──", "finish: ")


# ---------------------------------------------------------------- Cohere


def test_cohere_v1_request_and_json_answer_from_kongs_fixture() -> None:
    req = {
        "model": "command-r",
        "preamble": "Be helpful.",
        "chat_history": [
            {"role": "USER", "message": "Hi"},
            {"role": "CHATBOT", "message": "Hello!"},
        ],
        "message": "What is 1 / 0?",
    }
    body = fixture("unit/real-responses/cohere/llm-v1-chat.json").read_bytes()
    f = flow("/v1/chat", req, body)
    in_order(
        shown(f, "request"),
        "cohere-v1 chat · model command-r",
        "── system ──",
        "Be helpful.",
        "── user ──",
        "Hi",
        "── assistant ──",
        "Hello!",
        "── user ──",
        "What is 1 / 0?",
    )
    in_order(shown(f), "cohere-v1 chat", "You cannot divide by zero", "usage: ")


def test_cohere_v1_ndjson_stream_from_kongs_frame() -> None:
    frame = fixture("unit/real-stream-frames/cohere/llm-v1-chat.txt").read_bytes().strip()
    end = {
        "is_finished": True,
        "event_type": "stream-end",
        "finish_reason": "COMPLETE",
        "response": {
            "text": "the answer",
            "meta": {"billed_units": {"input_tokens": 5, "output_tokens": 2}},
        },
    }
    start = {"is_finished": False, "event_type": "stream-start", "generation_id": "g1"}
    body = ndjson(start) + frame + b"\n" + ndjson(end)
    f = flow("/v1/chat", {"message": "hi", "stream": True}, body, NDJSON)
    in_order(shown(f), "cohere-v1 chat", "NDJSON stream", "the answer", "finish: stop")


def test_cohere_v2_json_and_sse_stream_with_a_tool_call() -> None:
    req = {"model": "command-a-03-2025", "messages": [{"role": "user", "content": "Weather?"}]}
    answer = {
        "id": "c2",
        "finish_reason": "TOOL_CALL",
        "message": {
            "role": "assistant",
            "tool_plan": "I will look it up.",
            "tool_calls": [
                {
                    "id": "tc_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        "usage": {
            "billed_units": {"input_tokens": 10, "output_tokens": 5},
            "tokens": {"input_tokens": 100, "output_tokens": 5},
        },
    }
    f = flow("/v2/chat", req, answer)
    in_order(
        shown(f),
        "cohere-v2 chat",
        "[tool call] get_weather",
        '"city": "Paris"',
        "finish: tool_calls",
    )
    stream = sse_events(
        (
            "message-start",
            {"type": "message-start", "id": "c2", "delta": {"message": {"role": "assistant"}}},
        ),
        (
            "content-start",
            {
                "type": "content-start",
                "index": 0,
                "delta": {"message": {"content": {"type": "text", "text": ""}}},
            },
        ),
        (
            "content-delta",
            {
                "type": "content-delta",
                "index": 0,
                "delta": {"message": {"content": {"text": "Sunny "}}},
            },
        ),
        (
            "content-delta",
            {
                "type": "content-delta",
                "index": 0,
                "delta": {"message": {"content": {"text": "in Paris."}}},
            },
        ),
        ("content-end", {"type": "content-end", "index": 0}),
        (
            "message-end",
            {
                "type": "message-end",
                "delta": {
                    "finish_reason": "COMPLETE",
                    "usage": {
                        "billed_units": {"input_tokens": 10, "output_tokens": 4},
                        "tokens": {"input_tokens": 100, "output_tokens": 4},
                    },
                },
            },
        ),
    )
    f = flow("/v2/chat", {**req, "stream": True}, stream, SSE)
    in_order(shown(f), "cohere-v2 chat", "SSE stream", "Sunny in Paris.", "finish: stop", "usage: ")


# ---------------------------------------------------------------- Ollama


def test_ollama_ndjson_stream_with_thinking_and_a_tool_call() -> None:
    req = fixture("llama2/ollama/chat-stream.json").read_bytes()
    lines = ndjson(
        {
            "model": "qwen3",
            "created_at": "2025-07-07T20:22:19Z",
            "message": {"role": "assistant", "content": "", "thinking": "Simple sum."},
            "done": False,
        },
        {
            "model": "qwen3",
            "created_at": "2025-07-07T20:22:19Z",
            "message": {"role": "assistant", "content": "1 + 1 = 2"},
            "done": False,
        },
        {
            "model": "qwen3",
            "created_at": "2025-07-07T20:22:19Z",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "calc", "arguments": {"expr": "1+1"}}}],
            },
            "done": False,
        },
        {
            "model": "qwen3",
            "created_at": "2025-07-07T20:22:20Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 26,
            "eval_count": 9,
        },
    )
    f = flow("/api/chat", req, lines, NDJSON, host="127.0.0.1", port=11434)
    in_order(
        shown(f, "request"),
        "ollama chat",
        "── system ──",
        "helpful assistant",
        "── user ──",
        "1 + 1",
    )
    in_order(
        shown(f),
        "ollama chat · model qwen3 · NDJSON stream",
        "[thinking]",
        "Simple sum.",
        "1 + 1 = 2",
        "[tool call] calc",
        '"expr": "1+1"',
        "finish: tool_calls",
        "usage: 26 in → 9 out",
    )


def test_ollama_json_answer_and_generate() -> None:
    answer = {
        "model": "llama3.2",
        "created_at": "2025-07-07T20:22:19Z",
        "message": {"role": "assistant", "content": "Hi there"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 2,
    }
    f = flow("/api/chat", {"model": "llama3.2", "messages": [], "stream": False}, answer)
    in_order(shown(f), "ollama chat", "Hi there", "finish: stop", "usage: 3 in → 2 out")
    gen = ndjson(
        {
            "model": "llama3.2",
            "created_at": "2025-07-07T20:22:19Z",
            "response": "Once",
            "done": False,
        },
        {
            "model": "llama3.2",
            "created_at": "2025-07-07T20:22:19Z",
            "response": " upon",
            "done": True,
            "done_reason": "length",
            "prompt_eval_count": 4,
            "eval_count": 2,
        },
    )
    f = flow("/api/generate", {"model": "llama3.2", "prompt": "Tell a story"}, gen, NDJSON)
    in_order(shown(f, "request"), "ollama completions", "── prompt ──", "Tell a story")
    in_order(shown(f), "ollama completions", "Once upon", "finish: length")


# ---------------------------------------------------------------- the gateway's own flows


def test_a_gateway_flow_on_any_path_is_rendered_from_what_the_client_got() -> None:
    """A gateway route (`/chat` here) answers in OpenAI's format whatever the provider."""
    f = flow("/chat", OPENAI_CHAT, OPENAI_TOOL_STREAM, SSE)
    f.metadata["llmitm.provider"] = "anthropic"
    in_order(shown(f, "request"), "openai chat", "What is 1 + 1?")
    in_order(shown(f), "openai chat", "[tool call] get_weather", "finish: tool_calls")


def test_other_traffic_is_left_to_mitmproxys_views() -> None:
    f = flow("/api/users", {"name": "x"}, {"id": 1})
    meta = Metadata(flow=f, http_message=f.response, content_type="application/json")
    assert llm_view.render_priority(f.response.content, meta) < 0
    assert contentviews.prettify_message(f.response, f).view_name == "JSON"
    assert llm_view.render_priority(b"", Metadata(flow=f, http_message=f.request)) < 0


def test_an_llm_path_on_another_host_is_left_to_mitmproxys_views() -> None:
    """Only known LLM API hosts (and the gateway's own flows) get the view on their
    own: an LLM-looking path elsewhere is anybody's API."""
    page = {"model": "looks like an LLM answer", "usage": {"prompt_tokens": 1}}
    f = flow("/v1/chat/completions", {"model": "x", "messages": []}, page, host="example.org")
    assert contentviews.prettify_message(f.response, f).view_name == "JSON"
    assert contentviews.prettify_message(f.request, f).view_name == "JSON"
    # on an LLM API host, a path that is not an LLM operation is not one either
    f = flow("/v1/models", {}, {"data": []}, host="api.openai.com")
    assert contentviews.prettify_message(f.response, f).view_name == "JSON"


def test_a_2xx_body_that_is_no_llm_answer_is_shown_as_it_is() -> None:
    """Picked by hand (or on an LLM host), a 200 answer of another shape is shown with
    its body, never as a made-up error."""
    page = {"model": "looks like an LLM answer", "usage": {"prompt_tokens": 1}}
    f = flow("/v1/chat/completions", {"model": "x", "messages": []}, page, host="example.org")
    meta = Metadata(flow=f, http_message=f.response, content_type="application/json")
    text = llm_view.prettify(f.response.content, meta)
    assert "error" not in text
    in_order(
        text,
        "LLM response · 200 · not an answer of the openai chat API",
        '"looks like an LLM answer"',
    )
    f = flow("/v1/responses", {"model": "x"}, {"hello": "world"})
    text = shown(f)
    assert "error" not in text and '"hello": "world"' in text


def test_hosts_added_to_observe_mode_get_the_view() -> None:
    from mitmproxy.test import taddons as t

    from addons.observe import Observe
    from addons.state import Gateway

    f = flow("/v1/chat/completions", OPENAI_CHAT, OPENAI_TOOL_STREAM, SSE, host="llm.internal")
    assert contentviews.prettify_message(f.response, f).view_name != "LLM"
    addon = ContentviewAddon()
    with t.context(Observe(Gateway()), addon) as tctx:
        tctx.configure(addon, llmitm_observe_hosts=["llm.internal=openai"])
        assert contentviews.prettify_message(f.response, f).view_name == "LLM"
        tctx.configure(addon, llmitm_observe_hosts=[])


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/openai/deployments/gpt4/chat/completions?api-version=2024-10-21", "openai"),
        ("/v1/messages?beta=true", "anthropic"),
        (
            "/v1/projects/p/locations/l/publishers/google/models/gemini-2.0:generateContent",
            "gemini",
        ),
        ("/model/amazon.nova-pro-v1%3A0/converse-stream", "bedrock"),
        ("/compatible-mode/v1/chat/completions", "openai"),
        ("/api/chat", "ollama"),
    ],
)
def test_known_paths(path: str, api: str) -> None:
    kind = kind_of_path(path)
    assert kind is not None and kind.api == api


def test_framing() -> None:
    assert framing(OPENAI_TOOL_STREAM, None) == "sse"
    assert framing(b'{"a": 1}', "application/json") == "json"
    assert framing(b'{"a": 1}\n{"b": 2}\n', None) == "ndjson"
    assert framing(b"[{}]", "application/json") == "array"
    assert framing(fixture("unit/streaming-chunk-formats/aws/input.bin").read_bytes(), None) == (
        "eventstream"
    )


BODIES = [
    OPENAI_TOOL_STREAM,
    anthropic_stream(),
    fixture("unit/streaming-chunk-formats/aws/input.bin").read_bytes(),
    json.dumps(GEMINI_EVENTS).encode(),
    json.dumps(RESPONSES_ANSWER).encode(),
]
PATHS = [
    "/v1/chat/completions",
    "/v1/messages",
    BEDROCK_PATH + "-stream",
    GEMINI_PATH,
    "/v1/responses",
    "/v1/chat",
    "/v2/chat",
    "/api/chat",
    "/v1/embeddings",
]


@pytest.mark.parametrize("path", PATHS)
def test_odd_bodies_never_raise_and_fall_back_to_text(path: str) -> None:
    rng = random.Random(path)
    odd: list[bytes] = [
        b"not json at all",
        b"\x00\x01\x02\xff" * 8,
        b"{",
        b"[1, 2",
        b"data: {broken\n\n",
        b"null",
        b'"a string"',
        b"[]",
        json.dumps({"choices": [None, 1, {"message": "x"}]}).encode(),
        json.dumps(
            {"messages": [None, {"role": 5, "content": {"x": 1}}], "tools": [1, None]}
        ).encode(),
        json.dumps({"contents": "x", "system": 3}).encode(),
    ]
    for body in BODIES:
        odd.append(body[: rng.randrange(1, len(body))])  # cut anywhere
        noisy = bytearray(body)
        for _ in range(5):
            noisy[rng.randrange(len(noisy))] = rng.randrange(256)
        odd.append(bytes(noisy))
    for body in odd:
        for status in (200, 500):
            for ct in ("application/json", SSE, AWS, NDJSON):
                f = flow(path, body, body, ct, status)
                for message in (f.request, f.response):
                    meta = Metadata(flow=f, http_message=message, content_type=ct)
                    text = llm_view.prettify(body, meta)
                    assert isinstance(text, str) and text


def test_the_view_is_registered_by_the_gateways_addon() -> None:
    with taddons.context(ContentviewAddon()):
        assert contentviews.registry["llm"] is llm_view
