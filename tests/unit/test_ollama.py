"""providers/ollama.py: requests, answers, errors and the NDJSON stream translator."""

from __future__ import annotations

import base64
import json
import random
import struct
from typing import Any

import pytest

from addons.config import ConfigError
from providers import sse
from providers.base import CallSpec, ProviderError, RouteType
from providers.ollama import PROVIDER, THINK_LEVELS, OllamaStream, parse_reply
from tests.fakes.ollama import check_chat, check_embed, check_generate
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
MODEL = "llama3.2"


def ospec(
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
    """The JSON body build_request sends upstream for an OpenAI body."""
    return json.loads(PROVIDER.build_request(ospec(body, route_type, **kw)).body)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


HI = [user("hi")]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


# ------------------------------------------------------------------ URLs, headers, config


def test_provider_identity() -> None:
    assert PROVIDER.name == "ollama"
    assert PROVIDER.default_base_url == "http://127.0.0.1:11434"
    assert PROVIDER.route_types == {CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE}
    assert PROVIDER.native_format is None


@pytest.mark.parametrize(
    "route_type, upstream_url, expected",
    [
        (CHAT, None, "http://127.0.0.1:11434/api/chat"),
        (COMPLETIONS, None, "http://127.0.0.1:11434/api/generate"),
        (EMBEDDINGS, None, "http://127.0.0.1:11434/api/embed"),
        # a bare origin keeps Ollama's paths
        (CHAT, "http://gpu-box:11434", "http://gpu-box:11434/api/chat"),
        (COMPLETIONS, "http://gpu-box:11434/", "http://gpu-box:11434/api/generate"),
        (EMBEDDINGS, "https://ollama.example", "https://ollama.example/api/embed"),
        # a URL with a path is used as written
        (CHAT, "https://gw.example/ollama/api/chat", "https://gw.example/ollama/api/chat"),
    ],
)
def test_upstream_url_rules(route_type: RouteType, upstream_url: str | None, expected: str) -> None:
    body = {"messages": HI, "prompt": "hi", "input": "hi"}
    req = PROVIDER.build_request(ospec(body, route_type, upstream_url=upstream_url))
    assert (req.method, req.url) == ("POST", expected)


@pytest.mark.parametrize(
    "route_type, stream, accept",
    [
        (CHAT, False, "application/json"),
        (CHAT, True, "application/x-ndjson"),
        (COMPLETIONS, True, "application/x-ndjson"),
        (EMBEDDINGS, False, "application/json"),
    ],
)
def test_headers_and_stream_flag(route_type: RouteType, stream: bool, accept: str) -> None:
    body = {"messages": HI, "prompt": "hi", "input": "hi"}
    req = PROVIDER.build_request(ospec(body, route_type, stream=stream))
    assert req.headers == {"content-type": "application/json", "accept": accept}
    assert req.stream is stream
    # the gateway adds the route's auth; the adapter never invents credentials


def route_yaml(route_type: str, options: str = "{}") -> str:
    return f"""
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: local
        paths: ["/local"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              model: {{provider: ollama, name: {MODEL}, options: {options}}}
"""


@pytest.mark.parametrize(
    "route_type", ["llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings", "preserve"]
)
def test_config_loads_without_options_or_auth(route_type: str) -> None:
    cfg = load(route_yaml(route_type))
    conf = route_named(cfg, "local").plugin("ai-proxy")
    assert conf.model.provider == "ollama"


def test_config_with_llm_format_ollama_is_refused() -> None:
    text = route_yaml("llm/v1/chat").replace(
        "route_type:", "llm_format: ollama\n              route_type:"
    )
    with pytest.raises(ConfigError):
        load(text)


# ------------------------------------------------------------------ chat requests

# (id, OpenAI chat body, the whole Ollama body expected)
REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "plain",
        {"messages": [{"role": "system", "content": "Be brief."}, user("hi")]},
        {
            "messages": [{"role": "system", "content": "Be brief."}, user("hi")],
            "stream": False,
        },
    ),
    (
        "sampling-into-options",
        {
            "messages": HI,
            "max_tokens": 100,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 7,
            "stop": "END",
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
        },
        {
            "messages": HI,
            "stream": False,
            "options": {
                "num_predict": 100,
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 40,
                "seed": 7,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.25,
                "stop": ["END"],
            },
        },
    ),
    (
        "max-completion-tokens-wins",
        {"messages": HI, "max_tokens": 100, "max_completion_tokens": 50, "stop": ["a", "b"]},
        {"messages": HI, "stream": False, "options": {"num_predict": 50, "stop": ["a", "b"]}},
    ),
    (
        "openai-only-fields-not-sent",
        {
            "messages": HI,
            "n": 1,
            "user": "u-1",
            "logprobs": True,
            "top_logprobs": 2,
            "logit_bias": {"50256": -100},
            "stream_options": {"include_usage": True},
            "parallel_tool_calls": False,
            "service_tier": "auto",
        },
        {"messages": HI, "stream": False},
    ),
    (
        "developer-and-text-parts",
        {
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Rules."}]},
                user([{"type": "text", "text": "line one"}, {"type": "text", "text": "line two"}]),
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Rules."},
                user("line one\nline two"),
            ],
            "stream": False,
        },
    ),
    (
        "image-data-uri",
        {
            "messages": [
                user(
                    [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {"type": "image_url", "image_url": f"data:image/jpeg;base64,{PNG}"},
                    ]
                )
            ]
        },
        {
            "messages": [{"role": "user", "content": "What is this?", "images": [PNG, PNG]}],
            "stream": False,
        },
    ),
    (
        "tool-round-trip",
        {
            "messages": [
                user("Weather in Paris, and the time?"),
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "Two tools.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "14:05"}],
                },
            ],
            "tools": [WEATHER_TOOL, TIME_TOOL],
        },
        {
            "messages": [
                user("Weather in Paris, and the time?"),
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "Two tools.",
                    "tool_calls": [
                        {
                            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                            "id": "call_1",
                        },
                        {"function": {"name": "get_time", "arguments": {}}, "id": "call_2"},
                    ],
                },
                {
                    "role": "tool",
                    "content": "18C",
                    "tool_call_id": "call_1",
                    "tool_name": "get_weather",
                },
                {
                    "role": "tool",
                    "content": "14:05",
                    "tool_call_id": "call_2",
                    "tool_name": "get_time",
                },
            ],
            "stream": False,
            "tools": [WEATHER_TOOL, TIME_TOOL],
        },
    ),
    (
        "tool-choice-none-sends-no-tools",
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "none"},
        {"messages": HI, "stream": False},
    ),
    (
        "tool-choice-named-sends-that-tool",
        {
            "messages": HI,
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        },
        {"messages": HI, "stream": False, "tools": [TIME_TOOL]},
    ),
    (
        "tool-choice-required-sends-all",
        {"messages": HI, "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required"},
        {"messages": HI, "stream": False, "tools": [WEATHER_TOOL, TIME_TOOL]},
    ),
    (
        "json-object",
        {"messages": HI, "response_format": {"type": "json_object"}},
        {"messages": HI, "stream": False, "format": "json"},
    ),
    (
        "json-schema",
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "age",
                    "schema": {"type": "object", "properties": {"age": {"type": "integer"}}},
                },
            },
        },
        {
            "messages": HI,
            "stream": False,
            "format": {"type": "object", "properties": {"age": {"type": "integer"}}},
        },
    ),
    (
        "text-format-sends-nothing",
        {"messages": HI, "response_format": {"type": "text"}},
        {"messages": HI, "stream": False},
    ),
    (
        "think-from-reasoning-effort",
        {"messages": HI, "reasoning_effort": "high"},
        {"messages": HI, "stream": False, "think": "high"},
    ),
    (
        "think-given-wins",
        {"messages": HI, "reasoning_effort": "high", "think": True, "keep_alive": "10m"},
        {"messages": HI, "stream": False, "think": True, "keep_alive": "10m"},
    ),
]


@pytest.mark.parametrize("body, expected", [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_chat_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = sent(body)
    assert out == {"model": MODEL, **expected}
    assert check_chat(out) is None  # and the fake Ollama takes it


@pytest.mark.parametrize("stream", [False, True])
def test_stream_is_always_explicit(stream: bool) -> None:
    # Ollama streams unless told false: a whole answer must say "stream": false
    assert sent({"messages": HI}, stream=stream)["stream"] is stream
    assert sent({"prompt": "x"}, COMPLETIONS, stream=stream)["stream"] is stream


@pytest.mark.parametrize("effort, think", list(THINK_LEVELS.items()))
def test_reasoning_effort_levels(effort: str, think: Any) -> None:
    assert sent({"messages": HI, "reasoning_effort": effort})["think"] == think
    assert check_chat(sent({"messages": HI, "reasoning_effort": effort})) is None


def test_kong_expected_chat_request() -> None:
    # Kong's llama2/ollama and mistral/ollama unit fixtures, with the route options
    # Kong's test sets (max_tokens 512, temperature 0.5)
    body = fixture_json("unit/requests/llm-v1-chat.json") | {"max_tokens": 512, "temperature": 0.5}
    for model, expected in (
        ("llama2", "unit/expected-requests/llama2/ollama/llm-v1-chat.json"),
        ("mistral-tiny", "unit/expected-requests/mistral/ollama/llm-v1-chat.json"),
    ):
        assert sent(body, model=model) == fixture_json(expected)


def test_kong_expected_completions_request() -> None:
    body = fixture_json("unit/requests/llm-v1-completions.json") | {
        "max_tokens": 512,
        "temperature": 0.5,
    }
    out = sent(body, COMPLETIONS, model="llama2")
    assert out == fixture_json("unit/expected-requests/llama2/ollama/llm-v1-completions.json")
    assert check_generate(out) is None


@pytest.mark.parametrize(
    "body, route_type, message",
    [
        (
            {
                "messages": [
                    user([{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}])
                ]
            },
            CHAT,
            "base64 data URIs only",
        ),
        (
            {
                "messages": [
                    user([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}])
                ]
            },
            CHAT,
            "must be a base64 data URI",
        ),
        ({"messages": HI, "n": 2}, CHAT, "'n' must be 1"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            CHAT,
            "not a JSON object",
        ),
        (
            {
                "messages": [
                    user([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}])
                ]
            },
            CHAT,
            "'input_audio' is not supported",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, CHAT, "role 'function'"),
        ({"messages": HI, "tools": [{"type": "web_search"}]}, CHAT, "function tools only"),
        (
            {
                "messages": HI,
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            CHAT,
            "'nope', which is not in 'tools'",
        ),
        ({"messages": HI, "reasoning_effort": "extreme"}, CHAT, "'reasoning_effort'"),
        ({"prompt": ["one", "two"]}, COMPLETIONS, "one text 'prompt'"),
        ({"prompt": "x", "n": 3}, COMPLETIONS, "'n' must be 1"),
        ({"input": [[1, 2, 3]]}, EMBEDDINGS, "not token arrays"),
    ],
)
def test_requests_ollama_cannot_take_are_clear_400s(
    body: dict[str, Any], route_type: RouteType, message: str
) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(ospec(body, route_type))
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    assert message in e.value.message


# ------------------------------------------------------------------ completions and embeddings requests


def test_completions_request() -> None:
    body = {
        "prompt": ["def add(a, b):"],
        "suffix": "    return c",
        "max_tokens": 30,
        "temperature": 0,
        "raw": True,
        "system": "You write Python.",
        "echo": False,
        "best_of": 1,
    }
    out = sent(body, COMPLETIONS, stream=True)
    assert out == {
        "model": MODEL,
        "prompt": "def add(a, b):",
        "stream": True,
        "suffix": "    return c",
        "options": {"num_predict": 30, "temperature": 0},
        "raw": True,
        "system": "You write Python.",
    }
    assert check_generate(out) is None


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"input": "hello"}, {"input": "hello"}),
        (
            {"input": ["a", "b"], "dimensions": 8, "encoding_format": "base64", "user": "u"},
            {"input": ["a", "b"], "dimensions": 8},
        ),
        (
            {"input": ["a"], "keep_alive": 0, "truncate": False},
            {"input": ["a"], "keep_alive": 0, "truncate": False},
        ),
    ],
)
def test_embeddings_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    req = PROVIDER.build_request(ospec(body, EMBEDDINGS, model="all-minilm"))
    out = json.loads(req.body)
    assert out == {"model": "all-minilm", **expected}
    assert req.stream is False
    assert check_embed(out) is None


# ------------------------------------------------------------------ answers


def reply(
    body: Any, route_type: RouteType = CHAT, request: dict[str, Any] | None = None, **kw: Any
):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return PROVIDER.parse_response(
        ospec(request or {"messages": HI}, route_type, **kw), 200, {}, raw
    )


@pytest.mark.parametrize(
    "real, expected, model",
    [
        (
            "unit/real-responses/llama2/ollama/llm-v1-chat.json",
            "unit/expected-responses/llama2/ollama/llm-v1-chat.json",
            "llama2",
        ),
        (
            "unit/real-responses/mistral/ollama/llm-v1-chat.json",
            "unit/expected-responses/mistral/ollama/llm-v1-chat.json",
            "mistral-tiny",
        ),
    ],
)
def test_kong_real_chat_responses(real: str, expected: str, model: str) -> None:
    r = reply(fixture(real).read_bytes(), model=model)
    want = fixture_json(expected)
    assert r.data["object"] == want["object"] and r.data["model"] == want["model"] == r.model
    assert r.data["choices"] == want["choices"]
    # Kong's expected usage (130/139) is not the real answer's: its test compares only
    # the message and the model. The real answer says 26 prompt and 100 completion tokens.
    assert r.data["usage"] == {"prompt_tokens": 26, "completion_tokens": 100, "total_tokens": 126}
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.estimated) == (26, 100, False)
    assert r.data["id"].startswith("chatcmpl-")
    assert r.data["created"] == 1705306418  # from created_at
    assert json.loads(r.body) == r.data


def test_kong_real_completions_response() -> None:
    raw = fixture("unit/real-responses/llama2/ollama/llm-v1-completions.json").read_bytes()
    r = reply(raw, COMPLETIONS, {"prompt": "Why?"}, model="llama2")
    want = fixture_json("unit/expected-responses/llama2/ollama/llm-v1-completions.json")
    assert r.data["object"] == want["object"] == "text_completion"
    assert r.data["model"] == want["model"]
    # Kong's expected text and usage are not the real answer's (see above); and Kong
    # gives no finish_reason: this answer stopped by itself
    assert r.data["choices"] == [
        {"index": 0, "text": "Because I said so.", "logprobs": None, "finish_reason": "stop"}
    ]
    assert r.data["usage"] == {"prompt_tokens": 13, "completion_tokens": 12, "total_tokens": 25}


def test_kong_request_transformer_answer() -> None:
    r = reply(fixture("mistral/request-transformer/response-in-json.json").read_bytes())
    content = r.data["choices"][0]["message"]["content"]
    assert json.loads(content)["persons"][0]["name"] == "Kong A"


def answer(**extra: Any) -> dict[str, Any]:
    base = {
        "model": MODEL,
        "created_at": "2025-07-07T20:22:19.184789Z",
        "message": {"role": "assistant", "content": "Hello!"},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1,
        "prompt_eval_count": 10,
        "eval_count": 3,
    }
    return base | extra


@pytest.mark.parametrize(
    "data, asked, finish",
    [
        (answer(), {}, "stop"),
        (answer(done_reason="length"), {}, "length"),
        (answer(done_reason="load"), {}, "stop"),
        (answer(done_reason="something-new"), {}, "stop"),
        # older Ollama sends no done_reason: as Kong, eval_count == num_predict is length
        ({k: v for k, v in answer().items() if k != "done_reason"}, {"max_tokens": 3}, "length"),
        ({k: v for k, v in answer().items() if k != "done_reason"}, {"max_tokens": 4}, "stop"),
        ({k: v for k, v in answer().items() if k != "done_reason"}, {}, "stop"),
    ],
)
def test_finish_reasons(data: dict[str, Any], asked: dict[str, Any], finish: str) -> None:
    r = reply(data, request={"messages": HI, **asked})
    assert r.data["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("with_ids", [False, True])
def test_tool_calls_answer(with_ids: bool) -> None:
    calls = [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_time", "arguments": {}}},
    ]
    if with_ids:
        calls = [
            {"id": f"call_ab{n}", "function": {"index": n, **c["function"]}}
            for n, c in enumerate(calls)
        ]
    data = answer(message={"role": "assistant", "content": "", "tool_calls": calls})
    r = reply(data)
    message = r.data["choices"][0]["message"]
    assert r.data["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    got = message["tool_calls"]
    assert [(c["type"], c["function"]) for c in got] == [
        ("function", {"name": "get_weather", "arguments": '{"city":"Paris"}'}),
        ("function", {"name": "get_time", "arguments": "{}"}),
    ]
    ids = [c["id"] for c in got]
    if with_ids:
        assert ids == ["call_ab0", "call_ab1"]
    else:
        assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2


def test_thinking_becomes_reasoning_content() -> None:
    r = reply(answer(message={"role": "assistant", "content": "4", "thinking": "2+2=4"}))
    assert r.data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "4",
        "reasoning_content": "2+2=4",
    }


def test_usage_without_prompt_eval_count_is_estimated() -> None:
    data = {k: v for k, v in answer().items() if k != "prompt_eval_count"}
    r = reply(data, request={"messages": [user("a fairly long question about the sky")]})
    assert r.usage is not None and r.usage.estimated
    assert r.usage.completion_tokens == 3  # reported
    assert r.usage.prompt_tokens == 9  # estimated from the 35 characters asked
    assert r.data["usage"]["prompt_tokens"] == 9


def test_no_counts_no_usage() -> None:
    data = {k: v for k, v in answer().items() if k not in ("prompt_eval_count", "eval_count")}
    r = reply(data)
    assert r.usage is None and "usage" not in r.data  # the gateway estimates it


def test_whole_answer_that_is_ndjson_is_assembled() -> None:
    # an upstream that streamed although asked not to
    r = reply(RECORDED_CHAT)
    assert r.data["choices"][0]["message"]["content"] == "The sky is blue."
    assert r.usage is not None and r.usage.prompt_tokens == 26


@pytest.mark.parametrize(
    "body, route_type, message",
    [
        (b"not json at all\n{", CHAT, "line that is not JSON"),
        (b"[1, 2]", CHAT, "not a JSON object"),
        ({"model": MODEL, "done": True}, CHAT, "ollama: the upstream answer has no 'message'"),
        (
            {"model": MODEL, "done": True},
            COMPLETIONS,
            "ollama: the upstream answer has no 'response' text",
        ),
        (
            {"model": MODEL, "embeddings": "x"},
            EMBEDDINGS,
            "ollama: the upstream answer has no 'embeddings' list",
        ),
        ({"error": "model is loading"}, CHAT, "ollama: model is loading"),
    ],
)
def test_untranslatable_answers_are_502(body: Any, route_type: RouteType, message: str) -> None:
    with pytest.raises(ProviderError) as e:
        reply(body, route_type, {"messages": HI, "prompt": "x", "input": "x"})
    assert e.value.status == 502
    assert message in e.value.message


def test_generate_answer() -> None:
    data = {
        "model": "codellama:code",
        "created_at": "2024-07-22T20:47:51.147561Z",
        "response": "\n  if a == 0:\n    return b",
        "thinking": "",
        "done": True,
        "done_reason": "length",
        "context": [1, 2],
        "prompt_eval_count": 17,
        "eval_count": 63,
    }
    r = reply(data, COMPLETIONS, {"prompt": "def gcd(a, b):"})
    assert r.data["object"] == "text_completion" and r.data["id"].startswith("cmpl-")
    assert r.data["model"] == "codellama:code" == r.model
    assert r.data["choices"] == [
        {
            "index": 0,
            "text": "\n  if a == 0:\n    return b",
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert r.data["usage"]["total_tokens"] == 80


def _floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_embeddings_answer(encoding: str | None) -> None:
    data = {
        "model": "all-minilm",
        "embeddings": [[0.5, -0.25, 0.125], [1.0, 0.0, -1.0]],
        "total_duration": 14143917,
        "prompt_eval_count": 8,
    }
    request: dict[str, Any] = {"input": ["Why is the sky blue?", "Why is grass green?"]}
    if encoding:
        request["encoding_format"] = encoding
    r = reply(data, EMBEDDINGS, request, model="all-minilm")
    assert r.data["object"] == "list" and r.data["model"] == "all-minilm"
    vectors = [d["embedding"] for d in r.data["data"]]
    if encoding == "base64":
        vectors = [_floats(v) for v in vectors]
    assert vectors == data["embeddings"]
    assert [(d["object"], d["index"]) for d in r.data["data"]] == [
        ("embedding", 0),
        ("embedding", 1),
    ]
    assert r.data["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert r.usage is not None and not r.usage.estimated


def test_embeddings_usage_estimated_when_not_reported() -> None:
    r = reply({"model": "all-minilm", "embeddings": [[0.1]]}, EMBEDDINGS, {"input": "12345678"})
    assert r.usage is not None and r.usage.estimated and r.usage.prompt_tokens == 2


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "status, body, kind, message",
    [
        (
            404,
            b'{"error":"model \\"llama9\\" not found, try pulling it first"}',
            "not_found_error",
            'model "llama9" not found, try pulling it first',
        ),
        (
            400,
            b'{"error":"registry.ollama.ai/library/llama2:latest does not support tools"}',
            "invalid_request_error",
            "does not support tools",
        ),
        (401, b'{"error":"unauthorized"}', "authentication_error", "unauthorized"),
        (500, b"Internal Server Error", "api_error", "Internal Server Error"),
        (
            502,
            b"<html><body>Bad Gateway</body></html>",
            "api_error",
            "ollama upstream returned an HTML error page (HTTP 502)",
        ),
        (503, b"", "api_error", "ollama upstream returned HTTP 503 with an empty body"),
    ],
)
def test_errors_keep_status_and_message(status: int, body: bytes, kind: str, message: str) -> None:
    err = PROVIDER.parse_error(status, {"content-type": "application/json"}, body)
    assert (err.status, err.type) == (status, kind)
    assert message in err.message
    assert err.to_openai()["error"]["message"] == err.message


# ------------------------------------------------------------------ streams


def lines(*objs: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in objs)


def chunk_line(model: str = MODEL, **message: Any) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": "2025-07-07T20:22:19.184789Z",
        "message": {"role": "assistant", "content": "", **message},
        "done": False,
    }


DONE_LINE = {
    "model": MODEL,
    "created_at": "2025-07-07T20:22:19.19314Z",
    "message": {"role": "assistant", "content": ""},
    "done_reason": "stop",
    "done": True,
    "total_duration": 182242375,
    "load_duration": 41295167,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 24573166,
    "eval_count": 5,
    "eval_duration": 115959084,
}

RECORDED_CHAT = lines(
    chunk_line(content="The"),
    chunk_line(content=" sky"),
    chunk_line(content=" is"),
    chunk_line(content=" blue."),
    DONE_LINE,
)
RECORDED_THINKING_TOOLS = lines(
    chunk_line(model="qwen3", thinking="Need"),
    chunk_line(model="qwen3", thinking=" the weather."),
    chunk_line(
        model="qwen3",
        tool_calls=[
            {
                "id": "call_k2x9",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {"function": {"index": 1, "name": "get_time", "arguments": {"tz": "Europe/Paris"}}},
        ],
    ),
    DONE_LINE | {"model": "qwen3", "eval_count": 40},
)
RECORDED_GENERATE = lines(
    {
        "model": MODEL,
        "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "response": "Blue",
        "done": False,
    },
    {
        "model": MODEL,
        "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "response": " light",
        "done": False,
    },
    {
        "model": MODEL,
        "created_at": "2023-08-04T19:22:45.499127Z",
        "response": "",
        "done": True,
        "done_reason": "length",
        "context": [1, 2, 3],
        "prompt_eval_count": 9,
        "eval_count": 2,
    },
)
STREAMS = {
    "text": (RECORDED_CHAT, CHAT),
    "thinking-tools": (RECORDED_THINKING_TOOLS, CHAT),
    "generate": (RECORDED_GENERATE, COMPLETIONS),
    "text-crlf": (RECORDED_CHAT.replace(b"\n", b"\r\n"), CHAT),
}


def translate(
    chunks: list[bytes],
    route_type: RouteType = CHAT,
    *,
    wants_usage: bool = False,
    error: ProviderError | None = None,
    request: dict[str, Any] | None = None,
) -> tuple[bytes, OllamaStream]:
    t = PROVIDER.stream_translator(
        ospec(
            request or {"messages": HI, "prompt": "x"},
            route_type,
            stream=True,
            wants_usage=wants_usage,
        )
    )
    assert isinstance(t, OllamaStream)
    t.id = "chatcmpl-fixed0000000000000000"  # tool call ids derive from it
    out: list[bytes] = []
    for c in chunks:
        out += t.feed(c)
    out += t.finish(error)
    assert all(isinstance(b, bytes) for b in out)
    return b"".join(out), t


def events(out: bytes) -> list[Any]:
    """The SSE events of a translated stream, each parsed (the last must be [DONE])."""
    parts = out.split(b"\n\n")
    assert parts[-1] == b"", "the stream must end with a whole event"
    evs = []
    for part in parts[:-1]:
        assert part.startswith(b"data: "), part
        data = part[len(b"data: ") :]
        evs.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    assert evs.count("[DONE]") == 1 and evs[-1] == "[DONE]"
    return evs


@pytest.mark.parametrize("wants_usage", [False, True], ids=["no-usage", "usage"])
def test_text_stream_chunks(wants_usage: bool) -> None:
    out, t = translate([RECORDED_CHAT], wants_usage=wants_usage)
    evs = events(out)[:-1]
    assert {(c["id"], c["object"], c["model"], c["created"]) for c in evs} == {
        ("chatcmpl-fixed0000000000000000", "chat.completion.chunk", MODEL, 1751919739)
    }
    assert [c["choices"] for c in evs[:6]] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "The"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " sky"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " is"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " blue."}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    ]
    if wants_usage:
        assert evs[6]["choices"] == []
        assert evs[6]["usage"] == {"prompt_tokens": 26, "completion_tokens": 5, "total_tokens": 31}
        assert len(evs) == 7
    else:
        assert len(evs) == 6 and all("usage" not in c for c in evs)
    assert t.error is None and t.started
    assert t.usage is not None and (t.usage.prompt_tokens, t.usage.completion_tokens) == (26, 5)
    assert t.assembled()["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "The sky is blue."},
        "finish_reason": "stop",
    }


def test_thinking_and_tool_call_stream() -> None:
    out, t = translate([RECORDED_THINKING_TOOLS], wants_usage=True)
    evs = events(out)[:-1]
    deltas = [c["choices"][0]["delta"] for c in evs if c["choices"]]
    assert deltas[1:3] == [{"reasoning_content": "Need"}, {"reasoning_content": " the weather."}]
    assert deltas[3:5] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_k2x9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ]
        },
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_000000000000000001",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
                }
            ]
        },
    ]
    assert evs[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert evs[-1]["model"] == "qwen3" and evs[-1]["usage"]["completion_tokens"] == 40
    message = t.assembled()["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "Need the weather."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]


def test_generate_stream_chunks() -> None:
    out, t = translate([RECORDED_GENERATE], COMPLETIONS, wants_usage=True)
    evs = events(out)[:-1]
    assert all(c["object"] == "text_completion" for c in evs)
    assert [c["choices"] for c in evs] == [
        [{"index": 0, "text": "Blue", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": " light", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert evs[-1]["usage"]["total_tokens"] == 11
    assert t.assembled()["choices"][0]["text"] == "Blue light"
    assert t.assembled()["object"] == "text_completion"


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


def test_each_line_is_forwarded_as_soon_as_it_is_complete() -> None:
    t = PROVIDER.stream_translator(ospec({"messages": HI}, stream=True))
    first = lines(chunk_line(content="Hi"))
    assert t.feed(first[:-1]) == []  # no newline yet: the line may not be whole
    got = t.feed(first[-1:])
    assert [json.loads(e[6:])["choices"][0]["delta"] for e in got] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
    ]


def test_last_line_without_newline_still_counts() -> None:
    out, t = translate([RECORDED_CHAT.rstrip(b"\n")])
    assert t.error is None and t.finish_reason == "stop"
    assert events(out)[-2]["choices"][0]["finish_reason"] == "stop"


def test_error_line_mid_stream() -> None:
    raw = lines(
        chunk_line(content="The"),
        {"error": "an error was encountered while running the model: unexpected EOF"},
    )
    out, t = translate([raw])
    evs = events(out)
    assert evs[-2] == {
        "error": {
            "message": "an error was encountered while running the model: unexpected EOF",
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }
    assert t.error is not None and t.error.status == 500
    assert t.assembled()["choices"][0]["message"]["content"] == "The"


def test_stream_without_done_is_an_error() -> None:
    out, t = translate([lines(chunk_line(content="The"), chunk_line(content=" sky"))])
    evs = events(out)
    assert "before the answer was complete" in evs[-2]["error"]["message"]
    assert t.error is not None and t.error.status == 502
    assert [c for c in evs if isinstance(c, dict) and c.get("choices")][-1]["choices"][0][
        "delta"
    ] == {"content": " sky"}


def test_broken_off_stream_ends_with_the_error() -> None:
    cut = RECORDED_CHAT[: RECORDED_CHAT.index(b" is") + 2]  # mid-line
    err = ProviderError(502, "upstream connection lost", "api_error")
    out, t = translate([cut], error=err)
    evs = events(out)
    assert evs[-2]["error"]["message"] == "upstream connection lost"
    assert t.error is err
    # the half line cut by the failure is dropped, not reported as garbage
    assert sum(1 for e in evs if isinstance(e, dict) and "error" in e) == 1


def test_after_done_nothing_more_is_sent() -> None:
    out, t = translate([RECORDED_CHAT + lines(chunk_line(content="late"))])
    assert b"late" not in out and t.error is None


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xfe\x00", b"[1,2]\n", b'{"message": 5, "done": "yes"}\n', b"{" * 50 + b"\n", b"null\n"],
)
def test_bad_upstream_data_never_raises(garbage: bytes) -> None:
    for raw in (garbage, RECORDED_CHAT[:120] + garbage, garbage + RECORDED_CHAT):
        for chunks in ([raw], byte_by_byte(raw)):
            out, _ = translate(chunks)
            events(out)  # still a well-formed OpenAI stream ending in one [DONE]


def test_random_corruptions_never_raise() -> None:
    rng = random.Random(11)
    base = bytearray(RECORDED_THINKING_TOOLS)
    for _ in range(200):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        cut = rng.randrange(len(raw) + 1)
        out, _ = translate([bytes(raw[:cut]), bytes(raw[cut:])], wants_usage=True)
        assert out.endswith(sse.DONE)


def test_stream_usage_estimated_without_prompt_count() -> None:
    done = {k: v for k, v in DONE_LINE.items() if k != "prompt_eval_count"}
    _, t = translate(
        [lines(chunk_line(content="x"), done)], request={"messages": [user("12345678")]}
    )
    assert t.usage is not None and t.usage.estimated
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (2, 5)


# ------------------------------------------------------------------ preserve


def pspec(path: str, body: dict[str, Any], method: str = "POST", stream: bool = False) -> CallSpec:
    s = ospec(body, PRESERVE, stream=stream)
    s.path = path
    s.method = method
    s.raw_body = json.dumps(body).encode()
    return s


@pytest.mark.parametrize(
    "path, body, method, streams",
    [
        ("/api/chat", {"model": MODEL, "messages": HI}, "POST", True),  # Ollama's default
        ("/api/chat", {"model": MODEL, "messages": HI, "stream": False}, "POST", False),
        ("/api/generate", {"model": MODEL, "prompt": "x"}, "POST", True),
        ("/api/embed", {"model": MODEL, "input": "x"}, "POST", False),
        ("/api/tags", {}, "GET", False),
    ],
)
def test_preserve_passes_through_and_knows_when_ollama_streams(
    path: str, body: dict[str, Any], method: str, streams: bool
) -> None:
    s = pspec(path, body, method)
    req = PROVIDER.build_request(s)
    assert req.url == f"http://127.0.0.1:11434{path}"
    assert (req.method, req.body, req.stream) == (method, s.raw_body, streams)


def test_preserve_answer_passes_unchanged_with_usage() -> None:
    s = pspec("/api/chat", {"model": MODEL, "messages": HI})
    r = PROVIDER.parse_response(s, 200, {}, RECORDED_CHAT)
    assert r.body == RECORDED_CHAT
    assert r.model == MODEL and r.usage is not None and r.usage.prompt_tokens == 26


def test_preserve_stream_observer_reads_generate() -> None:
    t = PROVIDER.stream_translator(
        pspec("/api/generate", {"model": MODEL, "prompt": "x"}, stream=True)
    )
    for c in byte_by_byte(RECORDED_GENERATE):
        t.feed(c)
    t.finish()
    assert t.error is None and t.usage is not None and t.usage.prompt_tokens == 9
    assert t.assembled()["choices"][0]["text"] == "Blue light"


def test_parse_reply_serves_other_providers_with_their_name() -> None:
    with pytest.raises(ProviderError) as e:
        parse_reply(ospec({"messages": HI}), b"{}", "llama2")
    assert e.value.message == "llama2: the upstream answer has no 'message'"


# ------------------------------------------------------------------ the fake's own checks


@pytest.mark.parametrize(
    "body, problem",
    [
        ({"model": MODEL, "messages": HI}, "'stream' must be given"),
        (
            {"model": MODEL, "messages": HI, "stream": False, "max_tokens": 5},
            "unknown field 'max_tokens'",
        ),
        (
            {"model": MODEL, "messages": HI, "stream": False, "options": {"max_tokens": 5}},
            "invalid option",
        ),
        (
            {"model": MODEL, "messages": [user([{"type": "text", "text": "x"}])], "stream": False},
            "cannot unmarshal array",
        ),
        (
            {
                "model": MODEL,
                "stream": False,
                "messages": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                    }
                ],
            },
            "cannot unmarshal string",
        ),
        (
            {
                "model": MODEL,
                "messages": [user("x") | {"images": ["data:image/png;base64,AAAA"]}],
                "stream": False,
            },
            "illegal base64",
        ),
    ],
)
def test_fake_refuses_what_would_hide_a_mistranslation(body: dict[str, Any], problem: str) -> None:
    assert problem in (check_chat(body) or "")
