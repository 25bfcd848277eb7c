"""providers/gemini.py: URLs, request and answer translation, errors, the stream
translator (SSE and Google's JSON-array stream, cut at every byte), native passthrough,
credentials and embeddings."""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any

import pytest

from addons import llm_request
from providers import sse
from providers.base import CallSpec, ProviderError, RouteType, UpstreamRequest
from providers.gemini import PROVIDER, GeminiStream, JSONArrayDecoder, to_schema
from providers.options import AuthConfig, ModelConfig
from tests.unit.conftest import (
    KONG,
    byte_by_byte,
    every_split,
    fixture,
    fixture_json,
    load,
    spec,
)

CHAT, EMBEDDINGS, PRESERVE = RouteType.CHAT, RouteType.EMBEDDINGS, RouteType.PRESERVE
VERTEX = {
    "api_endpoint": "us-central1-aiplatform.googleapis.com",
    "project_id": "p1",
    "location_id": "us-central1",
}
VERTEX_BASE = "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/publishers/google/models"
AISTUDIO = "https://generativelanguage.googleapis.com/v1beta/models"
HI = [{"role": "user", "content": "hi"}]


def gspec(body: dict[str, Any] | None = None, **kw: Any) -> CallSpec:
    kw.setdefault("model", "gemini-2.5-flash")
    return spec(CHAT, body if body is not None else {"messages": HI}, **kw)


def sent(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """The Gemini body build_request sends for an OpenAI chat body."""
    return json.loads(PROVIDER.build_request(gspec(body, **kw)).body)


def rejected(body: dict[str, Any]) -> ProviderError:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(gspec(body))
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value


# =============================================================================== URLs


@pytest.mark.parametrize(
    "options, stream, expected",
    [
        ({}, False, f"{AISTUDIO}/gemini-2.5-flash:generateContent"),
        ({}, True, f"{AISTUDIO}/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        ({"gemini": VERTEX}, False, f"{VERTEX_BASE}/gemini-2.5-flash:generateContent"),
        ({"gemini": VERTEX}, True, f"{VERTEX_BASE}/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        # a bare origin keeps the standard path and operation (how the fakes are reached)
        (
            {"upstream_url": "http://127.0.0.1:8080"},
            False,
            "http://127.0.0.1:8080/v1beta/models/gemini-2.5-flash:generateContent",
        ),
        (
            {"upstream_url": "http://127.0.0.1:8080/"},
            True,
            "http://127.0.0.1:8080/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        (
            {"upstream_url": "http://127.0.0.1:8080", "gemini": VERTEX},
            True,
            "http://127.0.0.1:8080/v1/projects/p1/locations/us-central1/publishers/google/models/"
            "gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        # a URL with a path is used as written ...
        (
            {"upstream_url": "https://gw.example/gemini/models/x:generateContent"},
            False,
            "https://gw.example/gemini/models/x:generateContent",
        ),
        # ... but a stream turns :generateContent into :streamGenerateContent?alt=sse
        (
            {"upstream_url": "https://gw.example/gemini/models/x:generateContent?v=1"},
            True,
            "https://gw.example/gemini/models/x:streamGenerateContent?v=1&alt=sse",
        ),
        # ambiguous paths: used as written (the translator reads SSE and JSON arrays)
        ({"upstream_url": "https://gw.example/custom"}, True, "https://gw.example/custom"),
        (
            {"upstream_url": "https://gw.example/m:streamGenerateContent"},
            True,
            "https://gw.example/m:streamGenerateContent",
        ),
    ],
)
def test_url_rules(options: dict[str, Any], stream: bool, expected: str) -> None:
    req = PROVIDER.build_request(
        gspec({"messages": HI, "stream": stream}, stream=stream, **options)
    )
    assert req.url == expected
    assert req.method == "POST" and req.stream is stream
    assert req.headers["content-type"] == "application/json"
    # the API key is the route's auth, applied by the gateway: never added here
    assert "key=" not in req.url and "x-goog-api-key" not in req.headers


def test_model_prefix_is_not_doubled() -> None:
    req = PROVIDER.build_request(gspec(model="models/gemini-2.0-flash"))
    assert req.url == f"{AISTUDIO}/gemini-2.0-flash:generateContent"


# =================================================================== request bodies


def test_kongs_expected_request() -> None:
    """Kong's client request through the gateway's option rules gives Kong's body."""
    body = fixture_json("unit/requests/llm-v1-chat.json")
    cfg = ModelConfig(
        provider="gemini",
        name="gemini-pro",
        options={"max_tokens": 8192, "temperature": 0.8, "top_p": 0.6, "top_k": 1},
    )
    llm_request.validate(CHAT, body)
    model = llm_request.resolve_model(CHAT, cfg.name, body)
    upstream = llm_request.apply_options(CHAT, body, cfg)
    req = PROVIDER.build_request(CallSpec(CHAT, upstream, model, cfg.options, stream=False))
    assert req.url == f"{AISTUDIO}/gemini-pro:generateContent"
    assert json.loads(req.body) == fixture_json("unit/expected-requests/gemini/llm-v1-chat.json")


def test_system_and_developer_messages_become_the_system_instruction() -> None:
    out = sent(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "again"},
            ]
        }
    )
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use French."}]}
    # the user turns around the developer message are merged into one
    assert out["contents"] == [{"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]}]


def test_roles_and_merged_turns() -> None:
    out = sent(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": "d"},
                {"role": "user", "content": "e"},
            ]
        }
    )
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"text": "c"}, {"text": "d"}]},
        {"role": "user", "parts": [{"text": "e"}]},
    ]
    assert "systemInstruction" not in out


def test_openai_only_fields_are_not_sent() -> None:
    out = sent(
        {
            "model": "gemini-2.5-flash",
            "messages": HI,
            "stream": False,
            "stream_options": {"include_usage": True},
            "user": "u1",
            "parallel_tool_calls": True,
            "logit_bias": {"1": 2},
        }
    )
    assert set(out) == {"contents"}


def test_the_clients_body_is_not_mutated() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [_call("c1", "f", '{"a":1}')]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
        "tools": [_tool("f", {"type": "object", "properties": {"a": {"type": "integer"}}})],
    }
    before = json.dumps(body, sort_keys=True)
    sent(body)
    assert json.dumps(body, sort_keys=True) == before


@pytest.mark.parametrize(
    "client, expected",
    [
        ({"max_tokens": 100}, {"maxOutputTokens": 100}),
        ({"max_completion_tokens": 50, "max_tokens": 100}, {"maxOutputTokens": 50}),
        (
            {"temperature": 0.2, "top_p": 0.9, "top_k": 40},
            {"temperature": 0.2, "topP": 0.9, "topK": 40},
        ),
        ({"stop": "END"}, {"stopSequences": ["END"]}),
        ({"stop": ["a", "b"]}, {"stopSequences": ["a", "b"]}),
        ({"n": 1}, None),
        ({"n": 3}, {"candidateCount": 3}),
        (
            {"presence_penalty": 0.5, "frequency_penalty": 0.1, "seed": 7},
            {"presencePenalty": 0.5, "frequencyPenalty": 0.1, "seed": 7},
        ),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "person",
                        "strict": True,
                        "schema": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                            "required": ["name"],
                            "additionalProperties": False,
                        },
                    },
                }
            },
            {
                "responseMimeType": "application/json",
                # Gemini's JSON Schema field: the client's schema as it is
                "responseJsonSchema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
        ),
        (
            {"reasoning_effort": "low"},
            {"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}},
        ),
        (
            {"reasoning_effort": "medium"},
            {"thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True}},
        ),
        (
            {"reasoning_effort": "high"},
            {"thinkingConfig": {"thinkingBudget": 24576, "includeThoughts": True}},
        ),
        (
            {"reasoning_effort": "xhigh"},
            {"thinkingConfig": {"thinkingBudget": 24576, "includeThoughts": True}},
        ),
        (
            {"reasoning_effort": "minimal"},
            {"thinkingConfig": {"thinkingBudget": 512, "includeThoughts": True}},
        ),
        (
            {"reasoning_effort": "none"},
            {"thinkingConfig": {"thinkingBudget": 0, "includeThoughts": False}},
        ),
    ],
)
def test_generation_config(client: dict[str, Any], expected: dict[str, Any] | None) -> None:
    out = sent({"messages": HI, **client})
    assert out.get("generationConfig") == expected


def test_unknown_reasoning_effort_is_a_400() -> None:
    assert rejected({"messages": HI, "reasoning_effort": "extreme"}).param == "reasoning_effort"


def _tool(
    name: str, params: dict[str, Any] | None = None, description: str | None = None
) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if description:
        fn["description"] = description
    if params is not None:
        fn["parameters"] = params
    return {"type": "function", "function": fn}


def _call(call_id: str, name: str, args: str, sig: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": args},
    }
    if sig:
        call["extra_content"] = {"google": {"thought_signature": sig}}
    return call


def test_tools_keep_their_real_names() -> None:
    weather = {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    out = sent(
        {
            "messages": HI,
            "tools": [
                _tool("get_weather", weather, "Weather now"),
                _tool("get_time"),
                _tool("ping", {"type": "object", "properties": {}}),
            ],
        }
    )
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather now",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "description": "City name"}},
                        "required": ["city"],
                    },
                },
                {"name": "get_time"},
                {"name": "ping"},  # Gemini rejects an object without properties
            ]
        }
    ]
    assert "toolConfig" not in out


@pytest.mark.parametrize(
    "schema, expected",
    [
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"a": {"type": "string", "format": "uri"}},
            },
            {"type": "object", "properties": {"a": {"type": "string"}}},
        ),
        (
            {"type": "object", "properties": {"a": {"type": ["string", "null"]}}},
            {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}},
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
            },
            {"type": "object", "properties": {"a": {"type": "integer", "nullable": True}}},
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "string"}]}},
            },
            {
                "type": "object",
                "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
            },
        ),
        (
            {
                "type": "object",
                "properties": {"u": {"const": "celsius"}, "n": {"type": "integer", "enum": [1, 2]}},
            },
            {
                "type": "object",
                "properties": {
                    "u": {"type": "string", "enum": ["celsius"]},
                    "n": {"type": "integer"},
                },
            },
        ),
        (
            {
                "type": "object",
                "properties": {
                    "loc": {"$ref": "#/$defs/Loc"},
                    "when": {"type": "string", "format": "date-time"},
                },
                "$defs": {
                    "Loc": {
                        "type": "object",
                        "properties": {"lat": {"type": "number", "format": "double"}},
                    }
                },
            },
            {
                "type": "object",
                "properties": {
                    "loc": {
                        "type": "object",
                        "properties": {"lat": {"type": "number", "format": "double"}},
                    },
                    "when": {"type": "string", "format": "date-time"},
                },
            },
        ),
        (
            {
                "type": "array",
                "items": {"allOf": [{"type": "string", "minLength": 2}]},
                "maxItems": 3,
            },
            {"type": "array", "items": {"type": "string", "minLength": 2}, "maxItems": 3},
        ),
    ],
)
def test_json_schema_to_gemini_schema(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_schema(schema) == expected


def test_recursive_schema_is_sent_as_parameters_json_schema() -> None:
    tree = {
        "type": "object",
        "properties": {"node": {"$ref": "#/$defs/Node"}},
        "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
    }
    decl = sent({"messages": HI, "tools": [_tool("walk", tree)]})["tools"][0][
        "functionDeclarations"
    ][0]
    assert decl == {"name": "walk", "parametersJsonSchema": tree}


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    out = sent(
        {"messages": HI, "tools": [_tool("get_time"), _tool("other")], "tool_choice": choice}
    )
    assert out["toolConfig"] == {"functionCallingConfig": expected}


def test_bad_tool_choice_and_tool_types_are_400s() -> None:
    assert (
        rejected({"messages": HI, "tools": [_tool("f")], "tool_choice": "sometimes"}).param
        == "tool_choice"
    )
    assert rejected({"messages": HI, "tools": [{"type": "web_search"}]}).param == "tools"


def test_function_call_round_trip_with_names_and_thought_signatures() -> None:
    out = sent(
        {
            "messages": [
                {"role": "user", "content": "Weather and time in Paris?"},
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        _call("call_a", "get_weather", '{"city":"Paris"}', sig="SIG-1"),
                        _call("call_b", "get_time", ""),
                    ],
                },
                {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
                {
                    "role": "tool",
                    "tool_call_id": "call_a",
                    "content": '{"temp": 21, "sky": "clear"}',
                },
                {"role": "user", "content": "Thanks!"},
            ],
            "tools": [_tool("get_weather"), _tool("get_time")],
        }
    )
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "SIG-1",
                },
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            # consecutive tool results in one user turn, each named by its call's id
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_time", "response": {"content": "12:00"}}},
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"temp": 21, "sky": "clear"},
                    }
                },
                {"text": "Thanks!"},
            ],
        },
    ]


@pytest.mark.parametrize(
    "content, response",
    [
        ('{"ok": true}', {"ok": True}),
        ("[1, 2]", {"content": "[1, 2]"}),  # JSON but not an object
        ("42", {"content": "42"}),
        ("plain text", {"content": "plain text"}),
        ([{"type": "text", "text": '{"a":'}, {"type": "text", "text": "1}"}], {"a": 1}),
        ("", {"content": ""}),
    ],
)
def test_tool_result_content(content: Any, response: dict[str, Any]) -> None:
    out = sent(
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [_call("c1", "f", "{}")]},
                {"role": "tool", "tool_call_id": "c1", "content": content},
            ]
        }
    )
    assert out["contents"][-1]["parts"] == [
        {"functionResponse": {"name": "f", "response": response}}
    ]


@pytest.mark.parametrize("args", ["{not json", "[1,2]", '"text"'])
def test_unparseable_tool_call_arguments_are_a_400_naming_the_call(args: str) -> None:
    err = rejected(
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [_call("call_xyz", "lookup", args)]},
            ]
        }
    )
    assert "call_xyz" in err.message and "lookup" in err.message


def test_tool_result_without_its_call_is_a_400() -> None:
    err = rejected(
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "nope", "content": "1"},
            ]
        }
    )
    assert "nope" in err.message


@pytest.mark.parametrize(
    "part, expected",
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        ),
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}},
            {
                "fileData": {
                    "mimeType": "image/webp",
                    "fileUri": "https://example.com/cat.webp?size=2",
                }
            },
        ),
        (
            {"type": "image_url", "image_url": {"url": "gs://bucket/dir/scan.PDF"}},
            {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://bucket/dir/scan.PDF"}},
        ),
        (
            # no extension: an image_url is an image, JPEG the documented guess
            {"type": "image_url", "image_url": {"url": "http://example.com/photo"}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "http://example.com/photo"}},
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
            {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
        ),
        (
            {
                "type": "file",
                "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERg=="},
            },
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
        ),
    ],
)
def test_media_parts(part: dict[str, Any], expected: dict[str, Any]) -> None:
    out = sent(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}]}
    )
    assert out["contents"][0]["parts"] == [{"text": "What is it?"}, expected]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
        {"type": "image_url", "image_url": {}},
        {"type": "video_frame", "data": "x"},
    ],
)
def test_bad_content_parts_are_400s(part: dict[str, Any]) -> None:
    err = rejected({"messages": [{"role": "user", "content": [part]}]})
    assert "messages[0].content[0]" in err.message


def test_a_chat_of_only_system_messages_is_a_400() -> None:
    assert "at least one" in rejected({"messages": [{"role": "system", "content": "x"}]}).message


def test_unknown_role_is_a_400() -> None:
    assert "narrator" in rejected({"messages": [{"role": "narrator", "content": "x"}]}).message


# ===================================================================== whole answers


def parse(data: Any, s: CallSpec | None = None) -> tuple[dict[str, Any], Any]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    reply = PROVIDER.parse_response(s or gspec(), 200, {"content-type": "application/json"}, raw)
    assert json.loads(reply.body) == reply.data
    return reply.data, reply


def test_kongs_real_response() -> None:
    data, reply = parse(
        fixture("unit/real-responses/gemini/llm-v1-chat.json").read_bytes(),
        gspec(model="gemini-pro"),
    )
    expected = fixture_json("unit/expected-responses/gemini/llm-v1-chat.json")
    assert data["object"] == expected["object"] and data["model"] == expected["model"]
    choice = data["choices"][0]
    assert choice["message"] == expected["choices"][0]["message"]
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert data["usage"] == {"prompt_tokens": 14, "completion_tokens": 128, "total_tokens": 142}
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (14, 128)
    assert reply.model == "gemini-pro"


@pytest.mark.parametrize(
    "rel",
    ["gemini/llm-v1-chat/responses/good.json", "gemini/request-transformer/response-in-json.json"],
)
def test_kongs_good_responses(rel: str) -> None:
    raw = fixture_json(rel)
    data, reply = parse(raw)
    assert (
        data["choices"][0]["message"]["content"]
        == raw["candidates"][0]["content"]["parts"][0]["text"]
    )
    assert data["model"] == reply.model == "gemini-1.5-flash-002"  # modelVersion wins
    assert data["usage"]["total_tokens"] == 13


def test_kongs_safety_failure_is_a_clear_content_filter_answer() -> None:
    data, reply = parse(fixture_json("gemini/llm-v1-chat/responses/fails_safety.json"))
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None},
            "finish_reason": "content_filter",
            "logprobs": None,
        }
    ]
    assert data["usage"] == {"prompt_tokens": 319, "completion_tokens": 0, "total_tokens": 319}
    assert reply.usage.prompt_tokens == 319


def _candidate(
    parts: list[dict[str, Any]], reason: str | None = "STOP", index: int = 0
) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
    if reason:
        cand["finishReason"] = reason
    return cand


def test_text_thoughts_and_usage_with_cached_and_thinking_tokens() -> None:
    data, reply = parse(
        {
            "candidates": [
                _candidate(
                    [
                        {"text": "Let me think. ", "thought": True},
                        {"text": "Hello", "thoughtSignature": "abc"},
                        {"text": " world"},
                    ]
                )
            ],
            "usageMetadata": {
                "promptTokenCount": 100,
                "cachedContentTokenCount": 60,
                "candidatesTokenCount": 5,
                "thoughtsTokenCount": 20,
                "totalTokenCount": 125,
            },
            "modelVersion": "gemini-2.5-pro",
            "responseId": "resp123",
        }
    )
    assert data["id"] == "chatcmpl-resp123" and data["model"] == "gemini-2.5-pro"
    msg = data["choices"][0]["message"]
    assert msg == {
        "role": "assistant",
        "content": "Hello world",
        "reasoning_content": "Let me think. ",
    }
    # thinking tokens are completion tokens (as in OpenAI), and reported as reasoning
    assert data["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 25,
        "total_tokens": 125,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    u = reply.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.reasoning_tokens) == (
        100,
        25,
        60,
        20,
    )
    assert u.total_tokens == 125 and not u.estimated


def test_parallel_function_calls() -> None:
    data, _ = parse(
        {
            "candidates": [
                _candidate(
                    [
                        {"text": "Checking both."},
                        {
                            "functionCall": {
                                "name": "get_weather",
                                "args": {"city": "Paris", "unit": "°C"},
                            },
                            "thoughtSignature": "SIG",
                        },
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ]
                )
            ]
        }
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking both."
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city":"Paris","unit":"°C"}', "{}"]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == 2
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "SIG"}}
    assert "extra_content" not in calls[1]
    assert "usage" not in data  # none reported: the gateway estimates


def test_call_ids_are_unique_across_answers() -> None:
    answer = {"candidates": [_candidate([{"functionCall": {"name": "f", "args": {}}}])]}
    ids = {parse(answer)[0]["choices"][0]["message"]["tool_calls"][0]["id"] for _ in range(20)}
    assert len(ids) == 20


def test_a_call_only_answer_has_null_content() -> None:
    data, _ = parse({"candidates": [_candidate([{"functionCall": {"name": "f"}}])]})
    assert data["choices"][0]["message"]["content"] is None
    assert data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    "reason, calls, expected",
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("OTHER", False, "stop"),
        ("LANGUAGE", False, "stop"),
        ("FINISH_REASON_UNSPECIFIED", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_finish_reasons(reason: str | None, calls: bool, expected: str) -> None:
    parts = [{"functionCall": {"name": "f", "args": {}}}] if calls else [{"text": "x"}]
    data, _ = parse({"candidates": [_candidate(parts, reason)]})
    assert data["choices"][0]["finish_reason"] == expected


def test_several_candidates_are_several_choices() -> None:
    data, _ = parse(
        {
            "candidates": [
                _candidate([{"text": "one"}], index=0),
                _candidate([{"text": "two"}], "MAX_TOKENS", index=1),
            ]
        },
        gspec({"messages": HI, "n": 2}),
    )
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in data["choices"]] == [
        (0, "one", "stop"),
        (1, "two", "length"),
    ]


def test_blocked_prompt_is_a_400_content_filter() -> None:
    with pytest.raises(ProviderError) as e:
        parse(
            {
                "promptFeedback": {
                    "blockReason": "PROHIBITED_CONTENT",
                    "blockReasonMessage": "nope",
                },
                "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
            }
        )
    err = e.value
    assert (err.status, err.type, err.code) == (400, "invalid_request_error", "content_filter")
    assert "PROHIBITED_CONTENT" in err.message and "nope" in err.message


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"<html>oops</html>", "not a JSON object"),
        (b"", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"{}", "no candidates"),
        (b'{"candidates": []}', "no candidates"),
        (b'{"candidates": ["x"]}', "no usable candidate"),
    ],
)
def test_unusable_200_answers_are_502s_naming_gemini(raw: bytes, words: str) -> None:
    with pytest.raises(ProviderError) as e:
        parse(raw)
    assert e.value.status == 502 and "gemini" in e.value.message and words in e.value.message


def test_an_error_object_in_a_200_is_that_error() -> None:
    with pytest.raises(ProviderError) as e:
        parse({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down"}})
    assert (e.value.status, e.value.type, e.value.code) == (
        429,
        "rate_limit_error",
        "RESOURCE_EXHAUSTED",
    )


def test_a_buffered_stream_body_is_assembled() -> None:
    """An upstream_url path that streams, answered to a one-shot call."""
    events = [
        {
            "candidates": [_candidate([{"text": "Hel"}], None)],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1},
        },
        {
            "candidates": [_candidate([{"text": "lo"}])],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
        },
    ]
    for raw in (
        json.dumps(events).encode(),
        b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events),
    ):
        data, reply = parse(raw)
        assert data["choices"][0]["message"]["content"] == "Hello"
        assert data["choices"][0]["finish_reason"] == "stop"
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 2)


# ============================================================================ errors


@pytest.mark.parametrize(
    "status, body, type_, code, words",
    [
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "API key not valid. Please pass a valid API key.",
                    "status": "INVALID_ARGUMENT",
                }
            },
            "invalid_request_error",
            "INVALID_ARGUMENT",
            "API key not valid",
        ),
        (
            401,
            {
                "error": {
                    "code": 401,
                    "message": "Request had invalid authentication credentials.",
                    "status": "UNAUTHENTICATED",
                }
            },
            "authentication_error",
            "UNAUTHENTICATED",
            "invalid authentication",
        ),
        (
            403,
            {"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}},
            "permission_error",
            "PERMISSION_DENIED",
            "Permission",
        ),
        (
            404,
            {"error": {"code": 404, "message": "models/x is not found", "status": "NOT_FOUND"}},
            "not_found_error",
            "NOT_FOUND",
            "not found",
        ),
        (
            429,
            {
                "error": {
                    "code": 429,
                    "message": "Resource has been exhausted",
                    "status": "RESOURCE_EXHAUSTED",
                }
            },
            "rate_limit_error",
            "RESOURCE_EXHAUSTED",
            "exhausted",
        ),
        (
            500,
            {
                "error": {
                    "code": 500,
                    "message": "An internal error has occurred.",
                    "status": "INTERNAL",
                }
            },
            "api_error",
            "INTERNAL",
            "internal",
        ),
        (
            503,
            {
                "error": {
                    "code": 503,
                    "message": "The model is overloaded.",
                    "status": "UNAVAILABLE",
                }
            },
            "api_error",
            "UNAVAILABLE",
            "overloaded",
        ),
        (
            504,
            {"error": {"code": 504, "message": "Deadline", "status": "DEADLINE_EXCEEDED"}},
            "timeout_error",
            "DEADLINE_EXCEEDED",
            "Deadline",
        ),
        # Vertex sometimes wraps the error in an array
        (
            400,
            [
                {
                    "error": {
                        "code": 400,
                        "message": "Request contains an invalid argument.",
                        "status": "INVALID_ARGUMENT",
                    }
                }
            ],
            "invalid_request_error",
            "INVALID_ARGUMENT",
            "invalid argument",
        ),
        # an unknown status string: the HTTP status decides the type
        (
            409,
            {"error": {"code": 409, "message": "odd", "status": "SOMETHING_NEW"}},
            "conflict_error",
            "SOMETHING_NEW",
            "odd",
        ),
    ],
)
def test_google_errors(status: int, body: Any, type_: str, code: str, words: str) -> None:
    err = PROVIDER.parse_error(status, {}, json.dumps(body).encode())
    assert (err.status, err.type, err.code) == (status, type_, code)
    assert words.lower() in err.message.lower()
    out = err.to_openai()["error"]
    assert out["type"] == type_ and out["code"] == code


def test_field_violation_names_the_param() -> None:
    body = {
        "error": {
            "code": 400,
            "status": "INVALID_ARGUMENT",
            "message": "Invalid value",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "generation_config.top_k", "description": "x"}],
                }
            ],
        }
    }
    assert (
        PROVIDER.parse_error(400, {}, json.dumps(body).encode()).param == "generation_config.top_k"
    )


@pytest.mark.parametrize(
    "status, body, words",
    [
        (502, b"<html><body>Bad Gateway</body></html>", "HTML error page"),
        (500, b"", "empty body"),
        (503, b"upstream connect error", "upstream connect error"),
        (400, b"[]", "[]"),
    ],
)
def test_non_google_error_bodies(status: int, body: bytes, words: str) -> None:
    err = PROVIDER.parse_error(status, {}, body)
    assert err.status == status and words in err.message


# ============================================================================ streams


def run(
    chunks: list[bytes], s: CallSpec | None = None, error: ProviderError | None = None
) -> tuple[list[Any], GeminiStream]:
    """Feed `chunks`, finish, and decode the OpenAI SSE the client gets."""
    t = PROVIDER.stream_translator(s or gspec(stream=True))
    out: list[bytes] = []
    for c in chunks:
        got = t.feed(c)
        assert isinstance(got, list) and all(isinstance(b, bytes) for b in got)
        out += got
    out += t.finish(error)
    assert out[-1] == sse.DONE and sum(1 for b in out if b == sse.DONE) == 1
    dec = sse.SSEDecoder()
    events = dec.feed(b"".join(out))
    assert dec.pending == 0
    return [e.data if e.data == "[DONE]" else json.loads(e.data) for e in events], t


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)


def _array(events: list[dict[str, Any]]) -> bytes:
    # Google's shape: pretty-printed objects, "\n,\r\n" between them, "\n]" at the end
    return b"[" + b"\n,\r\n".join(json.dumps(e, indent=2).encode() for e in events) + b"\n]"


def _usage(prompt: int, out: int, thoughts: int = 0) -> dict[str, Any]:
    u = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": out,
        "totalTokenCount": prompt + out + thoughts,
    }
    if thoughts:
        u["thoughtsTokenCount"] = thoughts
    return u


def _event(
    parts: list[dict[str, Any]], reason: str | None = None, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "candidates": [_candidate(parts, reason)],
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "r1",
    }
    if usage:
        e["usageMetadata"] = usage
    return e


# Text with everything that trips a naive scanner: braces, brackets, quotes,
# backslashes, escapes, multi-byte characters, and the separator itself.
TRICKY = 'a {"b": [1]} \\" \\\\ } ] \n,\r\n{ é 漢字 🎉 \u2028'
TEXT_EVENTS = [
    _event([{"text": "The "}], usage=_usage(9, 1)),
    _event([{"text": TRICKY}], usage=_usage(9, 12)),
    _event([{"text": " end."}], "STOP", usage=_usage(9, 14)),
]
CALL_EVENTS = [
    _event([{"text": "Checking."}], usage=_usage(20, 2)),
    _event(
        [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "SIG-A",
            },
            {"functionCall": {"name": "get_time", "args": {"tz": "CET"}}},
        ],
        usage=_usage(20, 12),
    ),
    _event([{"functionCall": {"name": "get_news", "args": {}}}], "STOP", usage=_usage(20, 15)),
]
THOUGHT_EVENTS = [
    _event([{"text": "Considering {x}.", "thought": True}], usage=_usage(5, 0, 7)),
    _event([{"text": "Answer.", "thoughtSignature": "T"}], "STOP", usage=_usage(5, 2, 7)),
]


def content(events: list[Any], key: str = "content") -> str:
    return "".join(
        e["choices"][0]["delta"].get(key) or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def normalized(events: list[Any]) -> list[Any]:
    """The events without the random parts (tool call ids, time), to compare chunkings."""
    text = json.dumps(events)

    text = re.sub(r'"created": \d+', '"created": 0', text)
    return json.loads(re.sub(r"call_[0-9a-f]{24}", "call_X", text))


def check_text_stream(events: list[Any], t: GeminiStream, wants_usage: bool) -> None:
    assert content(events) == "The " + TRICKY + " end."
    chunks = [e for e in events if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # one id, created and model on every chunk (the model from modelVersion)
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {
        ("chatcmpl-r1", chunks[0]["created"], "gemini-2.5-flash-001")
    }
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in with_choices] == [None] * (
        len(with_choices) - 1
    ) + ["stop"]
    usage_chunks = [c for c in chunks if not c["choices"]]
    if wants_usage:
        assert usage_chunks == [chunks[-1]]
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 9,
            "completion_tokens": 14,
            "total_tokens": 23,
        }
    else:
        assert usage_chunks == []
    assert events[-1] == "[DONE]"
    # usage is the LAST usageMetadata (running totals), never their sum
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (9, 14)
    assert t.error is None and t.started


@pytest.mark.parametrize("wants_usage", [True, False])
@pytest.mark.parametrize("encode", [_sse, _array], ids=["sse", "array"])
def test_text_stream_at_every_split(encode: Any, wants_usage: bool) -> None:
    raw = encode(TEXT_EVENTS)
    s = gspec(stream=True, wants_usage=wants_usage)
    reference, t = run([raw], s)
    check_text_stream(reference, t, wants_usage)
    for chunks in [*every_split(raw), byte_by_byte(raw)]:
        events, t = run(chunks, s)
        assert normalized(events) == normalized(reference)  # no matter where it is cut
        assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (9, 14)


@pytest.mark.parametrize("encode", [_sse, _array], ids=["sse", "array"])
def test_function_calls_stream_at_every_split(encode: Any) -> None:
    raw = encode(CALL_EVENTS)
    reference, t = run([raw], gspec(stream=True))
    calls = [
        tc
        for e in reference
        if isinstance(e, dict) and e["choices"]
        for tc in e["choices"][0]["delta"].get("tool_calls") or ()
    ]
    # each call whole in one delta; index counts the calls of the stream
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "get_weather", '{"city":"Paris"}'),
        (1, "get_time", '{"tz":"CET"}'),
        (2, "get_news", "{}"),
    ]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert len({c["id"] for c in calls}) == 3
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "SIG-A"}}
    finishes = [
        e["choices"][0]["finish_reason"] for e in reference if isinstance(e, dict) and e["choices"]
    ]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    whole = t.assembled()
    assert whole["choices"][0]["message"]["content"] == "Checking."
    assert [c["function"]["name"] for c in whole["choices"][0]["message"]["tool_calls"]] == [
        "get_weather",
        "get_time",
        "get_news",
    ]
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    for chunks in [*every_split(raw), byte_by_byte(raw)]:
        events, _ = run(chunks, gspec(stream=True))
        assert normalized(events) == normalized(reference)


@pytest.mark.parametrize("encode", [_sse, _array], ids=["sse", "array"])
def test_thoughts_stream_as_reasoning_content(encode: Any) -> None:
    raw = encode(THOUGHT_EVENTS)
    for chunks in [[raw], byte_by_byte(raw)]:
        events, t = run(chunks, gspec(stream=True, wants_usage=True))
        assert content(events, "reasoning_content") == "Considering {x}."
        assert content(events) == "Answer."
        assert events[-2]["usage"] == {
            "prompt_tokens": 5,
            "completion_tokens": 9,
            "total_tokens": 14,
            "completion_tokens_details": {"reasoning_tokens": 7},
        }
        assert t.usage.reasoning_tokens == 7
        assert t.assembled()["choices"][0]["message"]["reasoning_content"] == "Considering {x}."


def test_deltas_leave_as_soon_as_each_event_is_complete() -> None:
    raw = _sse(TEXT_EVENTS)
    first_end = raw.index(b"\r\n\r\n") + 4
    t = GeminiStream(gspec(stream=True))
    assert t.feed(raw[: first_end - 1]) == [] and not t.started
    out = t.feed(raw[first_end - 1 : first_end])
    assert t.started and b'"content":"The "' in b"".join(out)
    # the same for the array stream: the object is out when its closing brace arrives
    raw = _array(TEXT_EVENTS)
    end = raw.index(b"\n,\r\n")
    t = GeminiStream(gspec(stream=True))
    assert t.feed(raw[: end - 1]) == []
    assert b'"content":"The "' in b"".join(t.feed(raw[end - 1 : end]))


@pytest.mark.parametrize("name", ["partial-json-split", "partial-json-split-three-parts"])
def test_kongs_split_json_array_fixtures(name: str) -> None:
    parts = sorted((KONG / "unit/streaming-chunk-formats" / name).glob("input-*.bin"))
    expected = (KONG / "unit/streaming-chunk-formats" / name / "expected-output.bin").read_text()
    events, t = run([p.read_bytes() for p in parts], gspec(stream=True))
    assert content(events) == expected.rstrip("\n")
    assert t.usage is not None and t.usage.prompt_tokens == 6


@pytest.mark.parametrize("name", ["partial-json-beginning", "partial-json-end"])
def test_kongs_partial_json_fixtures(name: str) -> None:
    """Pieces of an array stream (the beginning, or from a `,` on): every whole object
    Kong finds is found, its text emitted in order."""
    folder = KONG / "unit/streaming-chunk-formats" / name
    raw = (folder / "input.bin").read_bytes()
    expected = [
        json.loads(e["data"])
        for e in json.loads((folder / "expected-output.json").read_text())
        if e["data"] != "[DONE]"
    ]
    want = "".join(p["text"] for e in expected for p in e["candidates"][0]["content"]["parts"])
    objects = JSONArrayDecoder().feed(raw)
    assert [json.loads(o) for o in objects] == expected
    t = GeminiStream(gspec(stream=True))
    events = [json.loads(b[6:]) for b in t.feed(raw) if b.startswith(b"data: {")]
    assert content(events) == want


def test_array_decoder_state_survives_every_split() -> None:
    objs = [{"a": TRICKY}, {"b": [{"c": "}"}, "\\"]}, {}]
    raw = b"  [" + b" , ".join(json.dumps(o, ensure_ascii=False).encode() for o in objs) + b"]\n"
    for chunks in [*every_split(raw), byte_by_byte(raw)]:
        dec = JSONArrayDecoder()
        found = [json.loads(o) for c in chunks for o in dec.feed(c)]
        assert found == objs and dec.closed and not dec.pending


def test_in_stream_error_object() -> None:
    raw = (
        _sse(TEXT_EVENTS[:1])
        + _sse(
            [
                {
                    "error": {
                        "code": 500,
                        "status": "INTERNAL",
                        "message": "An internal error has occurred.",
                    }
                }
            ]
        )
        + _sse(TEXT_EVENTS[1:])
    )
    for chunks in [[raw], byte_by_byte(raw)]:
        events, t = run(chunks, gspec(stream=True, wants_usage=True))
        assert content(events) == "The "  # nothing after the error
        err = [e for e in events if isinstance(e, dict) and "error" in e]
        assert len(err) == 1 and err[0]["error"]["code"] == "INTERNAL"
        assert "internal error" in err[0]["error"]["message"]
        assert not any(
            isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]
            for e in events
        )
        assert t.error is not None and t.error.status == 500
        assert events[-1] == "[DONE]"


def test_error_object_in_an_array_stream() -> None:
    raw = _array(
        [
            TEXT_EVENTS[0],
            {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}},
        ]
    )
    events, t = run(byte_by_byte(raw))
    assert t.error.type == "rate_limit_error" and any(
        isinstance(e, dict) and e.get("error") for e in events
    )


@pytest.mark.parametrize("encode", [_sse, _array], ids=["sse", "array"])
def test_upstream_breaking_off(encode: Any) -> None:
    raw = encode(TEXT_EVENTS)
    cut = raw[: raw.index(b"end.")]  # mid third event
    broke = ProviderError(
        502, "the upstream connection broke off", "api_error", "upstream_disconnected"
    )
    events, t = run([cut], error=broke)
    assert content(events) == "The " + TRICKY  # what arrived whole is kept
    assert events[-2] == {"error": broke.to_openai()["error"]} and events[-1] == "[DONE]"
    assert t.error is broke
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (9, 12)


def test_array_stream_cut_mid_event_without_a_reported_error() -> None:
    raw = _array(TEXT_EVENTS)
    events, t = run([raw[: raw.index(b"end.")]])
    assert t.error is not None and t.error.status == 502 and "middle of an event" in t.error.message
    assert events[-2]["error"]["message"] == t.error.message


def test_blocked_prompt_in_a_stream_is_an_error_event() -> None:
    raw = _sse([{"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": _usage(4, 0)}])
    events, t = run([raw])
    assert t.error.code == "content_filter" and events[-2]["error"]["code"] == "content_filter"
    assert t.usage.prompt_tokens == 4


def test_safety_stop_in_a_stream_is_content_filter() -> None:
    events, _ = run([_sse([_event([{"text": "partial"}]), _event([], "SAFETY", _usage(3, 1))])])
    finishes = [
        e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")
    ]
    assert finishes[-1] == "content_filter"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \n ",
        b"[]",
        b"\x00\xff garbage \xfe",
        b"data: not json\n\ndata: [1,2]\n\n",
        b'[1, "x", null, [{}]]',
        b"}}}]]]",
        b'{"candidates": "nope"}',
        b'{"candidates": [{"content": {"parts": "x"}}]}',
        b'{"candidates": [{"content": {"parts": [{"functionCall": "x"}, {"text": 5}]}}]}',
    ],
)
def test_bad_data_never_raises(raw: bytes) -> None:
    for chunks in [[raw], byte_by_byte(raw)]:
        events, t = run(chunks)
        assert events[-1] == "[DONE]"
        if not t.started:
            assert t.error is not None or any(
                isinstance(e, dict) and e.get("choices") for e in events
            )


def test_empty_stream_is_an_error() -> None:
    _, t = run([b""])
    assert t.error is not None and t.error.status == 502 and "without any answer" in t.error.message


def test_usage_only_events_are_fine() -> None:
    raw = _sse(
        [_event([{"text": "hi"}], "STOP", usage=_usage(2, 1)), {"usageMetadata": _usage(2, 3)}]
    )
    events, t = run([raw], gspec(stream=True, wants_usage=True))
    assert t.usage.completion_tokens == 3 and events[-2]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("form", ["sse", "json-array"])
def test_a_stream_broken_off_between_two_events_is_an_error(form: str) -> None:
    """Gemini's last event carries the finishReason; a stream that stops after a
    complete event without one was cut by the upstream, and must not look finished."""
    first = _event([{"text": "The answer is"}], usage=_usage(2, 1))
    # (Google's JSON-array stream: cut before its closing bracket)
    raw = _sse([first]) if form == "sse" else b"[" + json.dumps(first).encode()
    events, t = run([raw], gspec(stream=True, wants_usage=True))
    assert t.error is not None and t.error.status == 502
    assert "finishReason" in t.error.message
    assert not any(
        isinstance(e, dict) and e.get("choices") and e["choices"][0].get("finish_reason")
        for e in events
    )


def test_several_candidates_stream_as_choices() -> None:
    raw = _sse(
        [
            {
                "candidates": [
                    _candidate([{"text": "A1"}], None, 0),
                    _candidate([{"text": "B1"}], None, 1),
                ]
            },
            {
                "candidates": [
                    _candidate([{"text": "A2"}], "STOP", 0),
                    _candidate([{"text": "B2"}], "MAX_TOKENS", 1),
                ]
            },
        ]
    )
    events, t = run([raw])
    by_index: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for e in events:
        if isinstance(e, dict) and e.get("choices"):
            ch = e["choices"][0]
            by_index[ch["index"]] = by_index.get(ch["index"], "") + (
                ch["delta"].get("content") or ""
            )
            if ch["finish_reason"]:
                finishes[ch["index"]] = ch["finish_reason"]
    assert by_index == {0: "A1A2", 1: "B1B2"} and finishes == {0: "stop", 1: "length"}
    assert [c["message"]["content"] for c in t.assembled()["choices"]] == ["A1A2", "B1B2"]


def test_assembled_answer_for_the_record() -> None:
    _, t = run([_sse(TEXT_EVENTS)], gspec(stream=True))
    whole = t.assembled()
    assert whole["object"] == "chat.completion" and whole["id"] == "chatcmpl-r1"
    assert whole["model"] == "gemini-2.5-flash-001"
    assert whole["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The " + TRICKY + " end."},
            "finish_reason": "stop",
        }
    ]
    assert whole["usage"] == {"prompt_tokens": 9, "completion_tokens": 14, "total_tokens": 23}


def test_model_falls_back_to_the_requested_one() -> None:
    raw = _sse([{"candidates": [_candidate([{"text": "x"}], "STOP")]}])
    events, _ = run([raw], gspec(stream=True, model="gemini-2.0-flash"))
    assert {e["model"] for e in events if isinstance(e, dict) and "model" in e} == {
        "gemini-2.0-flash"
    }


# ====================================================================== native format


def native_spec(
    path: str,
    query: str = "",
    body: dict[str, Any] | None = None,
    model: str | None = None,
    **options: Any,
) -> CallSpec:
    body = body if body is not None else fixture_json("native/gemini/request/basic-chat.json")
    raw = json.dumps(body).encode()
    s = spec(PRESERVE, body, model=model, **options)
    s.path, s.query, s.raw_body, s.llm_format = path, query, raw, "gemini"
    s.route_type = CHAT
    return s


@pytest.mark.parametrize(
    "path, model, query, options, url, stream",
    [
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            None,
            "",
            {},
            f"{AISTUDIO}/gemini-2.5-flash:generateContent",
            False,
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "gemini-2.5-pro",
            "alt=sse",
            {},
            f"{AISTUDIO}/gemini-2.5-pro:streamGenerateContent?alt=sse",
            True,
        ),
        (
            "/v1/models/gemini-pro:generateContent",
            None,
            "",
            {"upstream_url": "http://127.0.0.1:9999"},
            "http://127.0.0.1:9999/v1/models/gemini-pro:generateContent",
            False,
        ),
        (
            # a Vertex route sends an AI Studio client's path to its project's model
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "gemini-2.5-flash",
            "alt=sse",
            {"gemini": VERTEX},
            f"{VERTEX_BASE}/gemini-2.5-flash:streamGenerateContent?alt=sse",
            True,
        ),
        (
            "/v1/projects/other/locations/europe-west4/publishers/google/models/m1:generateContent",
            None,
            "",
            {"gemini": VERTEX, "upstream_url": "http://127.0.0.1:9999"},
            "http://127.0.0.1:9999/v1/projects/p1/locations/us-central1/publishers/google/models/m1:generateContent",
            False,
        ),
    ],
)
def test_native_requests(
    path: str, model: str | None, query: str, options: dict[str, Any], url: str, stream: bool
) -> None:
    s = native_spec(path, query, model=model, **options)
    assert PROVIDER.native_model(s) == path.rsplit("/", 1)[1].split(":")[0]
    up = PROVIDER.build_native_request(s)
    assert isinstance(up, UpstreamRequest)
    assert up.url == url and up.stream is stream and up.method == "POST"
    assert up.body == s.raw_body  # the client's body, unchanged


def test_native_path_without_a_model_is_a_400() -> None:
    s = native_spec("/v1beta/files")
    assert PROVIDER.native_model(s) is None
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_native_request(s)
    assert e.value.status == 400


def test_native_answer_usage_and_model() -> None:
    raw = fixture("gemini/llm-v1-chat/responses/good.json").read_bytes()
    reply = PROVIDER.parse_native_response(
        native_spec("/v1beta/models/x:generateContent"), 200, {}, raw
    )
    assert reply.body == raw and reply.model == "gemini-1.5-flash-002"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 11)


@pytest.mark.parametrize("encode", [_sse, _array], ids=["sse", "array"])
def test_native_stream_observer_reads_usage(encode: Any) -> None:
    obs = PROVIDER.native_stream_observer(native_spec("/v1beta/models/x:streamGenerateContent"))
    for c in byte_by_byte(encode(TEXT_EVENTS)):
        obs.feed(c)
    obs.finish()
    assert (obs.usage.prompt_tokens, obs.usage.completion_tokens) == (9, 14)
    assert obs.assembled()["choices"][0]["message"]["content"] == "The " + TRICKY + " end."


# ========================================================================== preserve


def test_preserve_forwards_the_clients_request() -> None:
    raw = b'{"contents": [{"parts": [{"text": "x"}]}]}'
    s = CallSpec(
        PRESERVE,
        json.loads(raw),
        None,
        spec(upstream_url="http://127.0.0.1:7000").options,
        stream=False,
        path="/v1beta/models/m:streamGenerateContent",
        query="alt=sse",
        raw_body=raw,
    )
    up = PROVIDER.build_request(s)
    assert up.url == "http://127.0.0.1:7000/v1beta/models/m:streamGenerateContent?alt=sse"
    assert up.body == raw and up.stream is True
    answer = fixture("gemini/llm-v1-chat/responses/good.json").read_bytes()
    reply = PROVIDER.parse_response(s, 200, {}, answer)
    assert reply.body == answer and reply.usage.total_tokens == 13


# ======================================================================= credentials


def test_service_account_credentials() -> None:
    assert (
        PROVIDER.credential_kind(AuthConfig(gcp_use_service_account=True), spec().options) == "gcp"
    )
    assert (
        PROVIDER.credential_kind(
            AuthConfig(header_name="x-goog-api-key", header_value="k"), spec().options
        )
        is None
    )
    up = PROVIDER.build_request(gspec(gemini=VERTEX))
    PROVIDER.sign(up, gspec(), "ya29.token")
    assert up.headers["authorization"] == "Bearer ya29.token"


SA = json.dumps(
    {
        "type": "service_account",
        "client_email": "a@p.iam.gserviceaccount.com",
        "private_key": "-----BEGIN PRIVATE KEY-----\n...",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
)


@pytest.mark.parametrize(
    "auth, env, words",
    [
        ({"gcp_use_service_account": True}, None, "GCP_SERVICE_ACCOUNT"),
        ({"gcp_use_service_account": True}, SA, None),
        ({"gcp_use_service_account": True, "gcp_service_account_json": SA}, None, None),
        (
            {"gcp_use_service_account": True, "gcp_service_account_json": "{vault://env/SA}"},
            None,
            None,
        ),
        (
            {"gcp_use_service_account": True, "gcp_service_account_json": "not json"},
            None,
            "not valid JSON",
        ),
        (
            {
                "gcp_use_service_account": True,
                "gcp_service_account_json": '{"type": "service_account"}',
            },
            None,
            "client_email",
        ),
        ({}, None, None),
    ],
)
def test_config_errors_for_service_accounts(
    monkeypatch: pytest.MonkeyPatch, auth: dict[str, Any], env: str | None, words: str | None
) -> None:
    if env is None:
        monkeypatch.delenv("GCP_SERVICE_ACCOUNT", raising=False)
    else:
        monkeypatch.setenv("GCP_SERVICE_ACCOUNT", env)
    model = ModelConfig(provider="gemini", name="gemini-2.5-flash", options={"gemini": VERTEX})
    errors = PROVIDER.config_errors(model, CHAT, AuthConfig(**auth))
    if words is None:
        assert errors == []
    else:
        assert len(errors) == 1 and words in errors[0]


def test_route_types() -> None:
    model = ModelConfig(provider="gemini", name="m")
    assert PROVIDER.config_errors(model, CHAT) == []
    assert PROVIDER.config_errors(model, EMBEDDINGS) == []
    assert "cannot serve" in PROVIDER.config_errors(model, RouteType.COMPLETIONS)[0]
    assert PROVIDER.auth_headers == ("x-goog-api-key", "authorization")
    assert PROVIDER.native_format == "gemini"


# ======================================================================== embeddings


def test_ai_studio_embeddings() -> None:
    s = spec(EMBEDDINGS, {"input": ["hello", "world"], "dimensions": 3}, model="text-embedding-004")
    up = PROVIDER.build_request(s)
    assert up.url == f"{AISTUDIO}/text-embedding-004:batchEmbedContents"
    assert json.loads(up.body) == {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "hello"}]},
                "outputDimensionality": 3,
            },
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "world"}]},
                "outputDimensionality": 3,
            },
        ]
    }
    reply = PROVIDER.parse_response(
        s,
        200,
        {},
        json.dumps(
            {"embeddings": [{"values": [0.5, 1.0, -2.0]}, {"values": [0.0, 0.25, 1.5]}]}
        ).encode(),
    )
    assert reply.data["object"] == "list" and reply.data["model"] == "text-embedding-004"
    assert [d["embedding"] for d in reply.data["data"]] == [[0.5, 1.0, -2.0], [0.0, 0.25, 1.5]]
    assert [d["index"] for d in reply.data["data"]] == [0, 1]
    # AI Studio reports no token count: estimated, and said so
    assert reply.usage.estimated and reply.usage.prompt_tokens > 0
    assert reply.data["usage"] == {
        "prompt_tokens": reply.usage.prompt_tokens,
        "total_tokens": reply.usage.prompt_tokens,
    }


def test_embeddings_base64_encoding_as_the_openai_sdk_asks() -> None:
    s = spec(EMBEDDINGS, {"input": "hi", "encoding_format": "base64"}, model="m")
    reply = PROVIDER.parse_response(s, 200, {}, b'{"embeddings": [{"values": [0.5, -1.25]}]}')
    packed = base64.b64decode(reply.data["data"][0]["embedding"])
    assert struct.unpack("<2f", packed) == (0.5, -1.25)


def test_vertex_embeddings_report_tokens() -> None:
    s = spec(EMBEDDINGS, {"input": "hello there"}, model="text-embedding-005", gemini=VERTEX)
    up = PROVIDER.build_request(s)
    assert up.url == f"{VERTEX_BASE}/text-embedding-005:predict"
    assert json.loads(up.body) == {"instances": [{"content": "hello there"}]}
    answer = {
        "predictions": [
            {
                "embeddings": {
                    "values": [0.1, 0.2],
                    "statistics": {"token_count": 2, "truncated": False},
                }
            }
        ]
    }
    reply = PROVIDER.parse_response(s, 200, {}, json.dumps(answer).encode())
    assert reply.data["data"][0]["embedding"] == [0.1, 0.2]
    assert not reply.usage.estimated and reply.usage.prompt_tokens == 2


@pytest.mark.parametrize("data", [[1, 2, 3], [[1, 2]], ""])
def test_token_embeddings_input_is_a_400(data: Any) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(spec(EMBEDDINGS, {"input": data}, model="m"))
    assert e.value.status == 400 and e.value.param == "input"


def test_embeddings_answer_without_vectors_is_a_502() -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.parse_response(spec(EMBEDDINGS, {"input": "x"}, model="m"), 200, {}, b'{"foo": 1}')
    assert e.value.status == 502 and "gemini" in e.value.message


# ============================================================================ config

ROUTE = """
_format_version: "3.0"
services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - name: r
        paths: ["/r"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              LLM_FORMAT
              auth: {header_name: x-goog-api-key, header_value: k}
              model: {provider: gemini, name: gemini-2.5-flash, options: {gemini: GEMINI}}
"""


@pytest.mark.parametrize(
    "llm_format, gemini, error",
    [
        ("", "{api_endpoint: e, project_id: p, location_id: l}", None),
        ("llm_format: gemini", "{api_endpoint: e, project_id: p, location_id: l}", None),
        ("", "{project_id: p}", "must be set together"),
    ],
)
def test_gemini_routes_load(llm_format: str, gemini: str, error: str | None) -> None:
    text = ROUTE.replace("LLM_FORMAT", llm_format).replace("GEMINI", gemini)
    if error is None:
        cfg = load(text)
        assert cfg.routes[0].plugin("ai-proxy").model.provider == "gemini"
    else:
        with pytest.raises(Exception, match=error):
            load(text)
