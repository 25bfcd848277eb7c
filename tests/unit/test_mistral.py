"""providers/mistral.py: Mistral's OpenAI dialect (chat, FIM, embeddings, streams) and the
ollama format it delegates."""

from __future__ import annotations

import base64
import json
import random
import re
import struct
from typing import Any

import pytest

from addons.config import ConfigError
from providers import sse
from providers.base import CallSpec, ProviderError, RouteType
from providers.mistral import PROVIDER, MistralStream, mistral_tool_id
from providers.ollama import OllamaStream
from tests.unit.conftest import (
    byte_by_byte,
    every_split,
    fixture,
    fixture_json,
    load,
    route_named,
    spec,
)

CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE = (
    RouteType.CHAT,
    RouteType.COMPLETIONS,
    RouteType.EMBEDDINGS,
    RouteType.PRESERVE,
)
MODEL = "mistral-large-latest"


def mspec(
    body: dict[str, Any] | None = None,
    route_type: RouteType = CHAT,
    *,
    stream: bool = False,
    wants_usage: bool = False,
    model: str = MODEL,
    **options: Any,
) -> CallSpec:
    return spec(route_type, body, model=model, stream=stream, wants_usage=wants_usage, **options)


def sent(body: dict[str, Any], route_type: RouteType = CHAT, **kw: Any) -> dict[str, Any]:
    return json.loads(PROVIDER.build_request(mspec(body, route_type, **kw)).body)


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **extra}


HI = [user("hi")]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


# ------------------------------------------------------------------ identity, config, URLs


def test_provider_identity() -> None:
    assert PROVIDER.name == "mistral"
    assert PROVIDER.default_base_url == "https://api.mistral.ai"
    assert PROVIDER.route_types == {CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE}


def route_yaml(options: str, route_type: str = "llm/v1/chat") -> str:
    return f"""
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: mistral
        paths: ["/mistral"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              auth: {{header_name: Authorization, header_value: "Bearer k"}}
              model: {{provider: mistral, name: {MODEL}, options: {options}}}
"""


@pytest.mark.parametrize(
    "options, route_type",
    [
        ("{}", "llm/v1/chat"),  # mistral_format defaults to openai (Kong requires it)
        ("{mistral_format: openai}", "llm/v1/embeddings"),
        ("{}", "llm/v1/completions"),
        ("{}", "preserve"),
        ('{mistral_format: ollama, upstream_url: "http://127.0.0.1:11434"}', "llm/v1/chat"),
        ('{mistral_format: ollama, upstream_url: "http://127.0.0.1:11434"}', "llm/v1/completions"),
    ],
)
def test_config_loads(options: str, route_type: str) -> None:
    assert route_named(load(route_yaml(options, route_type)), "mistral").plugin("ai-proxy")


@pytest.mark.parametrize(
    "options, route_type, message",
    [
        ("{mistral_format: ollama}", "llm/v1/chat", "needs model.options.upstream_url"),
        (
            '{mistral_format: ollama, upstream_url: "http://h:1"}',
            "llm/v1/embeddings",
            "llm/v1/embeddings in mistral_format openai only",
        ),
        ("{mistral_format: raw}", "llm/v1/chat", "mistral_format"),
    ],
)
def test_config_errors(options: str, route_type: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(route_yaml(options, route_type))
    assert message in str(e.value)


@pytest.mark.parametrize(
    "route_type, options, stream, expected",
    [
        (CHAT, {}, False, "https://api.mistral.ai/v1/chat/completions"),
        (COMPLETIONS, {}, True, "https://api.mistral.ai/v1/fim/completions"),
        (EMBEDDINGS, {}, False, "https://api.mistral.ai/v1/embeddings"),
        (
            CHAT,
            {"upstream_url": "http://127.0.0.1:8000"},
            False,
            "http://127.0.0.1:8000/v1/chat/completions",
        ),
        (
            CHAT,
            {"upstream_url": "https://eu.example/v1/chat/completions"},
            True,
            "https://eu.example/v1/chat/completions",
        ),
        (
            CHAT,
            {"mistral_format": "ollama", "upstream_url": "http://127.0.0.1:11434"},
            True,
            "http://127.0.0.1:11434/api/chat",
        ),
        (
            COMPLETIONS,
            {"mistral_format": "ollama", "upstream_url": "http://o:1/"},
            False,
            "http://o:1/api/generate",
        ),
    ],
)
def test_urls(route_type: RouteType, options: dict[str, Any], stream: bool, expected: str) -> None:
    req = PROVIDER.build_request(
        mspec({"messages": HI, "prompt": "x", "input": "x"}, route_type, stream=stream, **options)
    )
    assert (req.method, req.url) == ("POST", expected)
    assert req.stream is (stream and route_type is not EMBEDDINGS)
    assert not {"authorization", "x-api-key"} & set(req.headers)  # the gateway adds the route's


# ------------------------------------------------------------------ chat requests


def test_kong_expected_openai_request() -> None:
    body = fixture_json("unit/requests/llm-v1-chat.json") | {"max_tokens": 512, "temperature": 0.5}
    assert sent(body, model="mistral-tiny") == fixture_json(
        "unit/expected-requests/mistral/openai/llm-v1-chat.json"
    )


def test_kong_expected_ollama_request() -> None:
    body = fixture_json("unit/requests/llm-v1-chat.json") | {"max_tokens": 512, "temperature": 0.5}
    out = sent(
        body, model="mistral-tiny", mistral_format="ollama", upstream_url="http://127.0.0.1:11434"
    )
    assert out == fixture_json("unit/expected-requests/mistral/ollama/llm-v1-chat.json")


REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "renamed-fields",
        {"messages": HI, "max_completion_tokens": 64, "max_tokens": 900, "seed": 42},
        {"messages": HI, "max_tokens": 64, "random_seed": 42, "stream": False},
    ),
    (
        "openai-only-fields-dropped",
        {
            "messages": HI,
            "user": "u-1",
            "store": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
            "top_logprobs": 3,
            "logit_bias": {"1": 2},
            "service_tier": "auto",
            "top_k": 40,
            "modalities": ["text"],
        },
        {"messages": HI, "stream": False},
    ),
    (
        "shared-and-own-fields-kept",
        {
            "messages": HI,
            "temperature": 0.3,
            "top_p": 0.9,
            "stop": ["END"],
            "n": 2,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "response_format": {"type": "json_object"},
            "reasoning_effort": "high",
            "prompt_cache_key": "session-42",
            "safe_prompt": True,
            "prompt_mode": "reasoning",
            "random_seed": 3,
        },
        {
            "messages": HI,
            "temperature": 0.3,
            "top_p": 0.9,
            "stop": ["END"],
            "n": 2,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "response_format": {"type": "json_object"},
            "reasoning_effort": "high",
            "prompt_cache_key": "session-42",
            "safe_prompt": True,
            "prompt_mode": "reasoning",
            "random_seed": 3,
            "stream": False,
        },
    ),
    (
        "messages-keep-mistral-fields-only",
        {
            "messages": [
                {"role": "developer", "content": "Rules."},
                user("hi", name="bob"),
                {
                    "role": "assistant",
                    "content": "Hello",
                    "reasoning_content": "r",
                    "refusal": None,
                    "name": "bot",
                },
                user(
                    [
                        {"type": "text", "text": "see"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/a.png", "detail": "low"},
                        },
                        {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
                        {"type": "file", "file": {"file_id": "file-1"}},
                        {
                            "type": "file",
                            "file": {
                                "file_data": "data:application/pdf;base64,JVBER",
                                "filename": "a.pdf",
                            },
                        },
                    ]
                ),
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Rules."},
                user("hi"),
                {"role": "assistant", "content": "Hello"},
                user(
                    [
                        {"type": "text", "text": "see"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/a.png", "detail": "low"},
                        },
                        {"type": "input_audio", "input_audio": "UklGR"},
                        {"type": "file", "file_id": "file-1"},
                        {
                            "type": "document_url",
                            "document_url": "data:application/pdf;base64,JVBER",
                            "document_name": "a.pdf",
                        },
                    ]
                ),
            ],
            "stream": False,
        },
    ),
    (
        "tool-round-trip-with-mistral-ids",
        {
            "messages": [
                user("weather?"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "D681PevKs",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "D681PevKs",
                    "name": "get_weather",
                    "content": "18C",
                },
            ],
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        {
            "messages": [
                user("weather?"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "D681PevKs",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "content": "18C",
                    "tool_call_id": "D681PevKs",
                    "name": "get_weather",
                },
            ],
            "parallel_tool_calls": False,
            "tools": [WEATHER_TOOL],
            "tool_choice": "any",  # Mistral's name for "required"
            "stream": False,
        },
    ),
    (
        "named-tool-choice",
        {
            "messages": HI,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        {
            "messages": HI,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "stream": False,
        },
    ),
    (
        "legacy-functions",
        {"messages": HI, "functions": [WEATHER_TOOL["function"]], "function_call": "auto"},
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "auto", "stream": False},
    ),
    (
        "tool-choice-without-tools-not-sent",
        {"messages": HI, "tool_choice": "auto"},
        {"messages": HI, "stream": False},
    ),
]


@pytest.mark.parametrize("body, expected", [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_chat_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sent(body) == {"model": MODEL, **expected}


def test_stream_request() -> None:
    out = sent(
        {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}, stream=True
    )
    assert out == {"model": MODEL, "messages": HI, "stream": True}  # Mistral always sends usage


@pytest.mark.parametrize(
    "call_id", ["call_abc123", "toolu_01A09q90qw90lq917835lq9", "x", "abc-12345"]
)
def test_foreign_tool_call_ids_are_mapped_the_same_on_call_and_result(call_id: str) -> None:
    body = {
        "messages": [
            user("q"),
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "r"},
        ]
    }
    out = sent(body)["messages"]
    mapped = out[1]["tool_calls"][0]["id"]
    assert re.fullmatch(r"[A-Za-z0-9]{9}", mapped)
    assert out[2]["tool_call_id"] == mapped == mistral_tool_id(call_id)


def test_valid_tool_call_ids_are_kept() -> None:
    assert mistral_tool_id("D681PevKs") == "D681PevKs"
    assert mistral_tool_id("call_1") != mistral_tool_id("call_2")


@pytest.mark.parametrize(
    "body, route_type, message",
    [
        ({"messages": [{"role": "function", "content": "x"}]}, CHAT, "role 'function'"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
            CHAT,
            "needs an 'id'",
        ),
        ({"prompt": ["a", "b"]}, COMPLETIONS, "one text 'prompt'"),
        ({"prompt": "a", "n": 2}, COMPLETIONS, "'n' must be 1"),
        ({"input": [[1, 2]]}, EMBEDDINGS, "not token arrays"),
    ],
)
def test_requests_mistral_cannot_take_are_400(
    body: dict[str, Any], route_type: RouteType, message: str
) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(mspec(body, route_type))
    assert e.value.status == 400 and message in e.value.message


def test_fim_request() -> None:
    body = {
        "prompt": ["def fib(n):"],
        "suffix": "    return a",
        "max_tokens": 64,
        "min_tokens": 1,
        "temperature": 0,
        "stop": ["\n\n"],
        "seed": 7,
        "echo": False,
        "logprobs": None,
        "user": "u",
    }
    out = sent(body, COMPLETIONS, model="codestral-latest", stream=True)
    assert out == {
        "model": "codestral-latest",
        "prompt": "def fib(n):",
        "temperature": 0,
        "stop": ["\n\n"],
        "suffix": "    return a",
        "min_tokens": 1,
        "max_tokens": 64,
        "random_seed": 7,
        "stream": True,
    }


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"input": "hello"}, {"input": "hello"}),
        (
            {"input": ["a", "b"], "dimensions": 256, "encoding_format": "base64", "user": "u"},
            {"input": ["a", "b"], "output_dimension": 256},
        ),
        ({"input": ["a"], "output_dtype": "int8"}, {"input": ["a"], "output_dtype": "int8"}),
    ],
)
def test_embeddings_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sent(body, EMBEDDINGS, model="mistral-embed") == {"model": "mistral-embed", **expected}


# ------------------------------------------------------------------ answers


def reply(
    data: Any, route_type: RouteType = CHAT, request: dict[str, Any] | None = None, **kw: Any
):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return PROVIDER.parse_response(
        mspec(request or {"messages": HI, "prompt": "x", "input": "x"}, route_type, **kw),
        200,
        {},
        raw,
    )


def test_kong_real_openai_response() -> None:
    r = reply(
        fixture("unit/real-responses/mistral/openai/llm-v1-chat.json").read_bytes(),
        model="mistral-tiny",
    )
    want = fixture_json("unit/expected-responses/mistral/openai/llm-v1-chat.json")
    for key in ("id", "object", "created", "model", "choices", "usage"):
        assert r.data[key] == want[key], key
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (130, 139)
    assert r.model == "mistral-tiny"


def test_kong_mistral_fixtures() -> None:
    chat = reply(fixture("mistral/llm-v1-chat/responses/good.json").read_bytes())
    assert chat.data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The sum of 1 + 1 is 2.",
    }
    # an OpenAI-compatible server's text completion passes through the FIM translation
    cmpl = reply(
        fixture("mistral/llm-v1-completions/responses/good.json").read_bytes(), COMPLETIONS
    )
    assert cmpl.data["object"] == "text_completion"
    assert cmpl.data["choices"] == [
        {
            "index": 0,
            "text": "\n\nI am a language model AI created by OpenAI. I can answer questions",
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert cmpl.usage is not None and cmpl.usage.total_tokens == 20


def mistral_answer(message: dict[str, Any], finish: str = "stop", **usage: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
        "object": "chat.completion",
        "created": 1702256327,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 16, "completion_tokens": 34, "total_tokens": 50, **usage},
    }


def test_thinking_chunks_become_reasoning_content() -> None:
    content = [
        {
            "type": "thinking",
            "thinking": [{"type": "text", "text": "Let me add."}, {"type": "text", "text": " 2."}],
        },
        {"type": "text", "text": "The answer is 2."},
    ]
    r = reply(mistral_answer({"content": content}))
    assert r.data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The answer is 2.",
        "reasoning_content": "Let me add. 2.",
    }


def test_tool_call_answer() -> None:
    calls = [
        {
            "id": "D681PevKs",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            "index": 0,
        },
        {"id": "null", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}},
    ]
    r = reply(mistral_answer({"content": "", "tool_calls": calls, "prefix": False}, "tool_calls"))
    choice = r.data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    got = choice["message"]["tool_calls"]
    assert got[0] == {
        "id": "D681PevKs",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert (
        re.fullmatch(r"[A-Za-z0-9]{9}", got[1]["id"])
        and got[1]["function"]["arguments"] == '{"tz":"UTC"}'
    )


@pytest.mark.parametrize(
    "reason, finish",
    [
        ("stop", "stop"),
        ("length", "length"),
        ("model_length", "length"),
        ("tool_calls", "tool_calls"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    assert (
        reply(mistral_answer({"content": "x"}, reason)).data["choices"][0]["finish_reason"]
        == finish
    )


def test_finish_reason_error_is_a_502() -> None:
    with pytest.raises(ProviderError) as e:
        reply(mistral_answer({"content": "partial"}, "error"))
    assert e.value.status == 502 and "finish_reason 'error'" in e.value.message


def test_cached_prompt_tokens_are_in_the_prompt_count() -> None:
    r = reply(
        mistral_answer(
            {"content": "x"},
            prompt_tokens=2000,
            total_tokens=2034,
            prompt_tokens_details={"cached_tokens": 1536},
        )
    )
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.cache_read_tokens, r.usage.completion_tokens) == (
        2000,
        1536,
        34,
    )
    assert r.data["usage"]["prompt_tokens_details"] == {"cached_tokens": 1536}


def test_fim_answer() -> None:
    data = mistral_answer({"content": "    a, b = 0, 1"})
    data["model"] = "codestral-latest"
    r = reply(data, COMPLETIONS)
    assert r.data["object"] == "text_completion" and r.data["model"] == "codestral-latest"
    assert r.data["choices"] == [
        {"index": 0, "text": "    a, b = 0, 1", "logprobs": None, "finish_reason": "stop"}
    ]
    assert r.data["id"] == data["id"]


def _floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize("encoding", [None, "base64"])
def test_embeddings_answer(encoding: str | None) -> None:
    data = {
        "id": "embd-aad6fc62b17349b192ef09225058bc45",
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.5, -0.25], "index": 0},
            {"object": "embedding", "embedding": [0.125, 1.0], "index": 1},
        ],
        "model": "mistral-embed",
        "usage": {"prompt_tokens": 6, "total_tokens": 6, "completion_tokens": 0},
    }
    request: dict[str, Any] = {"input": ["a b", "c d"]}
    if encoding:
        request["encoding_format"] = encoding
    r = reply(data, EMBEDDINGS, request, model="mistral-embed")
    vectors = [d["embedding"] for d in r.data["data"]]
    if encoding == "base64":
        vectors = [_floats(v) for v in vectors]
    assert vectors == [[0.5, -0.25], [0.125, 1.0]]
    assert r.data["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert r.data["object"] == "list" and r.model == "mistral-embed"


def test_embeddings_without_usage_are_estimated() -> None:
    data = {"data": [{"embedding": [0.1], "index": 0}], "model": "mistral-embed"}
    r = reply(data, EMBEDDINGS, {"input": "12345678"})
    assert r.usage is not None and r.usage.estimated and r.usage.prompt_tokens == 2


@pytest.mark.parametrize(
    "data, route_type, message",
    [
        (b"<html>", CHAT, "not a JSON object"),
        (
            {"id": "x", "object": "chat.completion"},
            CHAT,
            "mistral: the upstream answer has no 'choices'",
        ),
        ({"id": "x", "choices": "nope"}, COMPLETIONS, "has no 'choices'"),
        ({"data": [{"index": 0}]}, EMBEDDINGS, "has no 'data' embeddings"),
    ],
)
def test_untranslatable_answers_are_502(data: Any, route_type: RouteType, message: str) -> None:
    with pytest.raises(ProviderError) as e:
        reply(data, route_type)
    assert e.value.status == 502 and message in e.value.message


# ------------------------------------------------------------------ errors

DETAIL = [
    {
        "type": "extra_forbidden",
        "loc": ["body", "max_completion_tokens"],
        "msg": "Extra inputs are not permitted",
        "input": 32000,
    }
]


@pytest.mark.parametrize(
    "status, body, kind, message, code, param",
    [
        (
            422,
            {
                "object": "error",
                "message": {"detail": DETAIL},
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
            "invalid_request_error",
            "max_completion_tokens: Extra inputs are not permitted",
            None,
            "max_completion_tokens",
        ),
        (
            422,
            {
                "object": "Error",
                "detail": DETAIL,
                "message": DETAIL,
                "type": "invalid_request_error",
                "code": 3001,
            },
            "invalid_request_error",
            "max_completion_tokens: Extra inputs are not permitted",
            3001,
            "max_completion_tokens",
        ),
        (
            422,
            {
                "object": "error",
                "message": json.dumps({"detail": DETAIL}),
                "type": "internal_error_proxy",
                "param": None,
                "code": "1000",
            },
            "invalid_request_error",
            "max_completion_tokens: Extra inputs are not permitted",
            "1000",
            "max_completion_tokens",
        ),
        (
            422,
            {"detail": DETAIL},
            "invalid_request_error",
            "Extra inputs are not permitted",
            None,
            "max_completion_tokens",
        ),
        (
            401,
            {"message": "Unauthorized", "request_id": "abc"},
            "authentication_error",
            "Unauthorized",
            None,
            None,
        ),
        (
            429,
            {"message": "Requests rate limit exceeded"},
            "rate_limit_error",
            "Requests rate limit exceeded",
            None,
            None,
        ),
        (
            400,
            {
                "object": "error",
                "message": "Invalid model: mistral-huge",
                "type": "invalid_model",
                "param": None,
                "code": "1500",
            },
            "invalid_request_error",
            "Invalid model: mistral-huge",
            "1500",
            None,
        ),
        (
            503,
            b"<html>Service Unavailable</html>",
            "api_error",
            "HTML error page (HTTP 503)",
            None,
            None,
        ),
    ],
)
def test_errors(status: int, body: Any, kind: str, message: str, code: Any, param: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    err = PROVIDER.parse_error(status, {}, raw)
    assert (err.status, err.type, err.code, err.param) == (status, kind, code, param)
    assert message in err.message


def test_ollama_format_errors_read_the_same() -> None:
    err = PROVIDER.parse_error(
        404, {}, b'{"error":"model \\"mistral-tiny\\" not found, try pulling it first"}'
    )
    assert err.status == 404 and "not found" in err.message


# ------------------------------------------------------------------ streams


def chunk(
    delta: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    cid: str = "cf79f7daaee244b1a0ae5c7b1444424a",
) -> bytes:
    obj: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1711310000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


USAGE = {"prompt_tokens": 10, "total_tokens": 17, "completion_tokens": 7}
DONE = b"data: [DONE]\n\n"
RECORDED = b"".join(
    [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Paris"}),
        chunk({"content": " is the"}),
        chunk({"content": " capital."}),
        chunk({"content": ""}, "stop", USAGE),
        DONE,
    ]
)
TWO_CALLS = [
    {
        "id": "D681PevKs",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "index": 0,
    },
    {
        "id": "A2bC3dE4f",
        "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
        "index": 0,
    },
]
RECORDED_TOOLS = b"".join(
    [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": TWO_CALLS}, "tool_calls", USAGE),
        DONE,
    ]
)
RECORDED_THINKING = b"".join(
    [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "Hmm,"}]}]}),
        chunk({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": " two."}]}]}),
        chunk({"content": "2"}),
        chunk({"content": ""}, "stop", USAGE),
        DONE,
    ]
)
STREAMS = {
    "text": (RECORDED, CHAT),
    "tools": (RECORDED_TOOLS, CHAT),
    "thinking": (RECORDED_THINKING, CHAT),
    "fim": (RECORDED, COMPLETIONS),
    "crlf": (RECORDED.replace(b"\n", b"\r\n"), CHAT),
}


def translate(
    chunks: list[bytes],
    route_type: RouteType = CHAT,
    *,
    wants_usage: bool = False,
    error: ProviderError | None = None,
) -> tuple[bytes, MistralStream]:
    t = PROVIDER.stream_translator(
        mspec({"messages": HI, "prompt": "x"}, route_type, stream=True, wants_usage=wants_usage)
    )
    assert isinstance(t, MistralStream)
    out: list[bytes] = []
    for c in chunks:
        out += t.feed(c)
    out += t.finish(error)
    return b"".join(out), t


def events(out: bytes) -> list[Any]:
    parts = out.split(b"\n\n")
    assert parts[-1] == b""
    evs = []
    for part in parts[:-1]:
        assert part.startswith(b"data: "), part
        data = part[6:]
        evs.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    assert evs.count("[DONE]") == 1 and evs[-1] == "[DONE]"
    return evs


@pytest.mark.parametrize("wants_usage", [False, True], ids=["no-usage", "usage"])
def test_text_stream(wants_usage: bool) -> None:
    out, t = translate([RECORDED], wants_usage=wants_usage)
    evs = events(out)[:-1]
    assert {(c["id"], c["object"], c["model"], c["created"]) for c in evs} == {
        ("cf79f7daaee244b1a0ae5c7b1444424a", "chat.completion.chunk", MODEL, 1711310000)
    }
    assert [c["choices"] for c in evs[:5]] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Paris"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " is the"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " capital."}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    ]
    # the usage Mistral puts on the last content chunk is taken off it
    assert all("usage" not in c for c in evs[:5])
    if wants_usage:
        assert len(evs) == 6 and evs[5]["choices"] == [] and evs[5]["usage"] == USAGE
    else:
        assert len(evs) == 5
    assert t.error is None and t.started
    assert t.usage is not None and (t.usage.prompt_tokens, t.usage.completion_tokens) == (10, 7)
    assert t.assembled()["choices"][0]["message"]["content"] == "Paris is the capital."


def test_parallel_tool_calls_get_their_own_index() -> None:
    out, t = translate([RECORDED_TOOLS])
    evs = events(out)[:-1]
    assert evs[1]["choices"] == [
        {
            "index": 0,
            "delta": {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "D681PevKs",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "index": 1,
                        "id": "A2bC3dE4f",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
                    },
                ]
            },
            "finish_reason": "tool_calls",
        }
    ]
    calls = t.assembled()["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [
        ("D681PevKs", '{"city": "Paris"}'),
        ("A2bC3dE4f", '{"tz": "Europe/Paris"}'),
    ]


def test_fragmented_tool_call_with_placeholder_id_continues() -> None:
    raw = b"".join(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "id": "abc123XYZ",
                            "index": 0,
                            "function": {"name": "f", "arguments": '{"a":'},
                        }
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"id": "null", "index": 0, "function": {"name": "", "arguments": "1}"}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 1, "function": {"name": "g", "arguments": "{}"}}]}),
            chunk({"content": ""}, "tool_calls", USAGE),
            DONE,
        ]
    )
    out, t = translate([raw])
    deltas = [c["choices"][0]["delta"] for c in events(out)[:-1] if c["choices"]]
    assert deltas[2] == {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}
    new = deltas[3]["tool_calls"][0]
    assert (
        new["index"] == 1
        and new["function"]["name"] == "g"
        and re.fullmatch(r"[A-Za-z0-9]{9}", new["id"])
    )
    calls = t.assembled()["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("f", '{"a":1}'),
        ("g", "{}"),
    ]


def test_thinking_stream() -> None:
    out, t = translate([RECORDED_THINKING])
    deltas = [c["choices"][0]["delta"] for c in events(out)[:-1] if c["choices"]]
    assert deltas[1:4] == [
        {"reasoning_content": "Hmm,"},
        {"reasoning_content": " two."},
        {"content": "2"},
    ]
    message = t.assembled()["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("2", "Hmm, two.")


def test_fim_stream_is_text_completion() -> None:
    out, t = translate([RECORDED], COMPLETIONS, wants_usage=True)
    evs = events(out)[:-1]
    assert all(c["object"] == "text_completion" for c in evs)
    assert [c["choices"] for c in evs] == [
        [{"index": 0, "text": "Paris", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": " is the", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": " capital.", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}],
        [],
    ]
    assert t.assembled()["choices"][0]["text"] == "Paris is the capital."


@pytest.mark.parametrize("wants_usage", [False, True], ids=["no-usage", "usage"])
@pytest.mark.parametrize("name", STREAMS.keys())
def test_every_split_gives_the_same_bytes_and_answer(name: str, wants_usage: bool) -> None:
    raw, route_type = STREAMS[name]
    whole, t = translate([raw], route_type, wants_usage=wants_usage)
    answer = t.assembled()
    assert t.error is None
    for chunks in every_split(raw):
        out, t2 = translate(chunks, route_type, wants_usage=wants_usage)
        assert out == whole, f"split at byte {len(chunks[0])}"
        assert t2.assembled() == answer and t2.usage == t.usage
    out, t3 = translate(byte_by_byte(raw), route_type, wants_usage=wants_usage)
    assert out == whole and t3.assembled() == answer


def test_finish_reason_error_in_a_stream() -> None:
    out, t = translate([chunk({"content": "Par"}) + chunk({"content": ""}, "error") + DONE])
    evs = events(out)
    assert "finish_reason 'error'" in evs[-2]["error"]["message"]
    assert t.error is not None and t.error.status == 502


def test_error_object_mid_stream() -> None:
    err = b'data: {"object":"error","message":"Service tier capacity exceeded for this model.","type":"service_tier_capacity_exceeded","param":null,"code":"3505"}\n\n'
    out, t = translate([chunk({"content": "Par"}) + err])
    evs = events(out)
    assert evs[-2]["error"]["message"] == "Service tier capacity exceeded for this model."
    assert t.error is not None and t.assembled()["choices"][0]["message"]["content"] == "Par"


def test_stream_without_done_or_finish_is_an_error() -> None:
    out, t = translate([chunk({"content": "Par"})])
    assert "before the answer was complete" in events(out)[-2]["error"]["message"]
    assert t.error is not None


def test_broken_off_stream_ends_with_the_error() -> None:
    err = ProviderError(502, "upstream connection lost")
    out, t = translate([RECORDED[:150]], error=err)
    evs = events(out)
    assert evs[-2]["error"]["message"] == "upstream connection lost" and t.error is err
    assert sum(1 for e in evs if isinstance(e, dict) and "error" in e) == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xfe",
        b"data: [1,2]\n\n",
        b"data: {\n\n",
        b'data: {"choices":7}\n\n',
        b'data: {"choices":[{"delta":{"tool_calls":"x"}}]}\n\n',
    ],
)
def test_bad_upstream_data_never_raises(garbage: bytes) -> None:
    for raw in (garbage, RECORDED[:100] + garbage, garbage + RECORDED):
        for chunks in ([raw], byte_by_byte(raw)):
            out, _ = translate(chunks)
            events(out)


def test_random_corruptions_never_raise() -> None:
    rng = random.Random(3)
    for _ in range(200):
        raw = bytearray(RECORDED_TOOLS)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        cut = rng.randrange(len(raw) + 1)
        out, _ = translate([bytes(raw[:cut]), bytes(raw[cut:])], wants_usage=True)
        assert out.endswith(sse.DONE)


# ------------------------------------------------------------------ ollama format and preserve


def test_ollama_format_delegates() -> None:
    s = mspec(
        {"messages": HI},
        stream=True,
        mistral_format="ollama",
        upstream_url="http://127.0.0.1:11434",
    )
    assert isinstance(PROVIDER.stream_translator(s), OllamaStream)
    raw = fixture("unit/real-responses/mistral/ollama/llm-v1-chat.json").read_bytes()
    r = PROVIDER.parse_response(
        mspec({"messages": HI}, mistral_format="ollama", upstream_url="http://o:1"), 200, {}, raw
    )
    assert (
        r.data["choices"]
        == fixture_json("unit/expected-responses/mistral/ollama/llm-v1-chat.json")["choices"]
    )
    assert r.model == "mistral-tiny"


def pspec(path: str, body: dict[str, Any], stream: bool = False, **options: Any) -> CallSpec:
    s = mspec(body, PRESERVE, stream=stream, **options)
    s.path = path
    s.raw_body = json.dumps(body).encode()
    return s


def test_preserve_passes_through() -> None:
    s = pspec("/v1/models", {})
    s.method = "GET"
    req = PROVIDER.build_request(s)
    assert (req.method, req.url, req.body) == (
        "GET",
        "https://api.mistral.ai/v1/models",
        s.raw_body,
    )
    raw = json.dumps(mistral_answer({"content": "x"})).encode()
    r = PROVIDER.parse_response(pspec("/v1/chat/completions", {}), 200, {}, raw)
    assert r.body == raw and r.usage is not None and r.usage.prompt_tokens == 16


def test_preserve_stream_is_observed() -> None:
    t = PROVIDER.stream_translator(pspec("/v1/chat/completions", {"stream": True}, stream=True))
    for c in byte_by_byte(RECORDED):
        t.feed(c)
    t.finish()
    assert t.error is None and t.usage is not None and t.usage.total_tokens == 17


def test_preserve_with_ollama_format() -> None:
    s = pspec(
        "/api/chat",
        {"model": "mistral", "messages": HI},
        mistral_format="ollama",
        upstream_url="http://o:1",
    )
    req = PROVIDER.build_request(s)
    assert req.url == "http://o:1/api/chat" and req.stream is True
