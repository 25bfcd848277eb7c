"""providers/cohere.py: requests (v1 and v2), answers, errors and the stream translators."""

from __future__ import annotations

import base64
import json
import random
import struct
from typing import Any

import pytest

from addons import llm_request
from addons.config import ConfigError
from providers import get
from providers.base import CallSpec, ProviderError, RouteType
from providers.cohere import (
    PROVIDER,
    THINKING_BUDGETS,
    CohereV1Stream,
    CohereV2Stream,
    usage_from_cohere,
)
from providers.options import ModelConfig, ModelOptions
from tests.fakes.cohere import (
    Invalid,
    check_embed,
    check_generate,
    check_v1_chat,
    check_v2_chat,
)
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
MODEL = "command-a-03-2025"


def cspec(
    body: dict[str, Any] | None = None,
    route_type: RouteType = CHAT,
    *,
    version: str | None = None,
    stream: bool = False,
    wants_usage: bool = False,
    model: str = MODEL,
    **options: Any,
) -> CallSpec:
    if version is not None:
        options.setdefault("cohere", {})["api_version"] = version
    return spec(route_type, body, model=model, stream=stream, wants_usage=wants_usage, **options)


def sent(body: dict[str, Any], route_type: RouteType = CHAT, **kw: Any) -> dict[str, Any]:
    """The JSON body build_request sends upstream."""
    return json.loads(PROVIDER.build_request(cspec(body, route_type, **kw)).body)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


HI = [user("hi")]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["C", "F"]},
                "days": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}
CALLS = [
    {
        "id": "get_weather_abc123",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    },
    {
        "id": "get_time_def456",
        "type": "function",
        "function": {"name": "get_time", "arguments": ""},
    },
]


# ------------------------------------------------------------------ identity, URLs, config


def test_provider_identity() -> None:
    assert get("cohere") is PROVIDER
    assert PROVIDER.default_base_url == "https://api.cohere.com"
    assert PROVIDER.route_types == {CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE}
    assert PROVIDER.auth_headers == ("authorization",)
    assert PROVIDER.native_format == "cohere"


@pytest.mark.parametrize(
    "route_type, version, upstream_url, expected",
    [
        (CHAT, None, None, "https://api.cohere.com/v2/chat"),  # v2 is the default
        (CHAT, "v2", None, "https://api.cohere.com/v2/chat"),
        (CHAT, "v1", None, "https://api.cohere.com/v1/chat"),
        (COMPLETIONS, "v1", None, "https://api.cohere.com/v1/generate"),
        # v2 has no generate endpoint: the prompt goes to chat
        (COMPLETIONS, "v2", None, "https://api.cohere.com/v2/chat"),
        (EMBEDDINGS, "v1", None, "https://api.cohere.com/v2/embed"),
        (EMBEDDINGS, "v2", None, "https://api.cohere.com/v2/embed"),
        # a bare origin keeps the provider's path
        (CHAT, "v1", "http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/chat"),
        (EMBEDDINGS, None, "http://127.0.0.1:8080/", "http://127.0.0.1:8080/v2/embed"),
        # a URL with a path is used as written
        (CHAT, None, "https://gw.example/cohere/chat", "https://gw.example/cohere/chat"),
    ],
)
def test_upstream_url_rules(
    route_type: RouteType, version: str | None, upstream_url: str | None, expected: str
) -> None:
    body = {"messages": HI, "prompt": "hi", "input": "hi"}
    req = PROVIDER.build_request(
        cspec(body, route_type, version=version, upstream_url=upstream_url)
    )
    assert req.url == expected
    assert req.method == "POST"


@pytest.mark.parametrize(
    "route_type, version, stream, accept",
    [
        (CHAT, "v2", False, "application/json"),
        (CHAT, "v2", True, "text/event-stream"),
        (CHAT, "v1", False, "application/json"),
        # v1 streams newline-delimited JSON by default; any accept of ours would be noise
        (CHAT, "v1", True, None),
        (COMPLETIONS, "v1", True, None),
        (COMPLETIONS, "v2", True, "text/event-stream"),
        (EMBEDDINGS, "v2", False, "application/json"),
    ],
)
def test_headers_and_stream_flag(
    route_type: RouteType, version: str, stream: bool, accept: str | None
) -> None:
    body = {"messages": HI, "prompt": "hi", "input": "hi"}
    req = PROVIDER.build_request(cspec(body, route_type, version=version, stream=stream))
    assert req.headers.get("accept") == accept
    assert req.headers["content-type"] == "application/json"
    assert req.stream is stream
    # the gateway adds the route's Authorization; the adapter never invents credentials
    assert "authorization" not in {h.lower() for h in req.headers}


def route_yaml(route_type: str, options: str = "{}", extra: str = "") -> str:
    return f"""
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: co
        paths: ["/co"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              {extra}
              auth: {{header_name: Authorization, header_value: "Bearer co-test"}}
              model:
                provider: cohere
                name: {MODEL}
                options: {options}
"""


@pytest.mark.parametrize(
    "route_type", ["llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings", "preserve"]
)
def test_every_route_type_loads(route_type: str) -> None:
    cfg = load(route_yaml(route_type, "{cohere: {api_version: v1}}"))
    conf = route_named(cfg, "co").plugin("ai-proxy")
    assert conf.model.options.cohere.api_version == "v1"


def test_config_native_format_loads() -> None:
    cfg = load(route_yaml("llm/v1/chat", extra="llm_format: cohere"))
    assert route_named(cfg, "co").plugin("ai-proxy").llm_format == "cohere"


@pytest.mark.parametrize(
    "options, words",
    [
        ("{cohere: {api_version: v3}}", ["api_version", "v1", "v2"]),
        ("{cohere: {embedding_input_type: image_search}}", ["embedding_input_type"]),
        ("{cohere: {api_versoin: v1}}", ["api_versoin"]),
    ],
)
def test_bad_cohere_options_are_load_errors(options: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load(route_yaml("llm/v1/chat", options))
    for w in words:
        assert w in str(e.value)


# ------------------------------------------------------------------ v2 chat requests

# (id, OpenAI chat body, the Cohere v2 body expected but for model/messages/stream)
V2_REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "system-and-developer",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                user("hi"),
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": "Answer in French."},
                user("hi"),
            ]
        },
    ),
    (
        "image-parts",
        {
            "messages": [
                user(
                    [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://x.example/a.jpg"}},
                    ]
                )
            ]
        },
        {
            "messages": [
                user(
                    [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://x.example/a.jpg"}},
                    ]
                )
            ]
        },
    ),
    (
        "sampling",
        {
            "messages": HI,
            "max_completion_tokens": 300,
            "max_tokens": 99,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop": "END",
            "seed": 7,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
        },
        {
            "messages": HI,
            "max_tokens": 300,
            "temperature": 0.2,
            "p": 0.9,
            "k": 40,
            "stop_sequences": ["END"],
            "seed": 7,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
        },
    ),
    # OpenAI's top_p runs to 1 (no nucleus sampling); Cohere's p to 0.99
    ("top-p-clamped-high", {"messages": HI, "top_p": 1}, {"messages": HI, "p": 0.99}),
    ("top-p-clamped-low", {"messages": HI, "top_p": 0}, {"messages": HI, "p": 0.01}),
    (
        "openai-only-fields-are-not-sent",
        {
            "messages": HI,
            "user": "u-1",
            "n": 1,
            "logit_bias": {"50256": -100},
            "stream_options": {"include_usage": True},
            "parallel_tool_calls": False,
            "service_tier": "auto",
            "store": False,
        },
        {"messages": HI},
    ),
    (
        "tools-auto",
        {"messages": HI, "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "auto"},
        {
            "messages": HI,
            "tools": [
                WEATHER_TOOL,
                {
                    "type": "function",
                    "function": {
                        "name": "get_time",
                        "parameters": {"type": "object", "properties": {}},
                    },
                },
            ],
        },
    ),
    (
        "tool-choice-required",
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "required"},
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "REQUIRED"},
    ),
    (
        "tool-choice-none",
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "none"},
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "NONE"},
    ),
    (
        # Cohere cannot name the tool to call: only that tool is offered, and a call required
        "tool-choice-named",
        {
            "messages": HI,
            "tools": [TIME_TOOL, WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "REQUIRED"},
    ),
    (
        # OpenAI marks strictness per function, Cohere for the whole request
        "strict-function",
        {
            "messages": HI,
            "tools": [
                {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}
            ],
        },
        {"messages": HI, "tools": [WEATHER_TOOL], "strict_tools": True},
    ),
    (
        "tool-choice-without-tools-is-dropped",
        {"messages": HI, "tool_choice": "none"},
        {"messages": HI},
    ),
    (
        "tool-round-trip",
        {
            "messages": [
                user("Weather and time in Paris?"),
                assistant("I will check both.", tool_calls=CALLS),
                {"role": "tool", "tool_call_id": "get_weather_abc123", "content": '{"temp": 18}'},
                {
                    "role": "tool",
                    "tool_call_id": "get_time_def456",
                    "content": [{"type": "text", "text": "14:05"}],
                },
            ],
            "tools": [WEATHER_TOOL],
        },
        {
            "messages": [
                user("Weather and time in Paris?"),
                {
                    "role": "assistant",
                    "tool_plan": "I will check both.",
                    "tool_calls": [
                        CALLS[0],
                        {
                            "id": "get_time_def456",
                            "type": "function",
                            # clients parse arguments as JSON: an empty string is "{}"
                            "function": {"name": "get_time", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "get_weather_abc123", "content": '{"temp": 18}'},
                {
                    "role": "tool",
                    "tool_call_id": "get_time_def456",
                    "content": [{"type": "text", "text": "14:05"}],
                },
            ],
            "tools": [WEATHER_TOOL],
        },
    ),
    (
        "explicit-tool-plan-wins",
        {
            "messages": [
                user("x"),
                assistant(None, tool_calls=CALLS[:1], tool_plan="Plan A."),
                {"role": "tool", "tool_call_id": "get_weather_abc123", "content": "sunny"},
            ]
        },
        {
            "messages": [
                user("x"),
                {"role": "assistant", "tool_plan": "Plan A.", "tool_calls": CALLS[:1]},
                {"role": "tool", "tool_call_id": "get_weather_abc123", "content": "sunny"},
            ]
        },
    ),
    (
        "assistant-text-and-refusal-parts",
        {
            "messages": [
                user("a"),
                assistant([{"type": "text", "text": "b"}, {"type": "refusal", "refusal": "c"}]),
                user("d"),
            ]
        },
        {"messages": [user("a"), {"role": "assistant", "content": "bc"}, user("d")]},
    ),
    (
        "json-object",
        {"messages": HI, "response_format": {"type": "json_object"}},
        {"messages": HI, "response_format": {"type": "json_object"}},
    ),
    (
        "json-schema",
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": {"type": "object", "properties": {}}},
            },
        },
        {
            "messages": HI,
            "response_format": {
                "type": "json_object",
                "json_schema": {"type": "object", "properties": {}},
            },
        },
    ),
    ("format-text", {"messages": HI, "response_format": {"type": "text"}}, {"messages": HI}),
    (
        "reasoning-effort",
        {"messages": HI, "reasoning_effort": "medium"},
        {"messages": HI, "thinking": {"type": "enabled", "token_budget": 4096}},
    ),
    (
        "reasoning-off",
        {"messages": HI, "reasoning_effort": "none"},
        {"messages": HI, "thinking": {"type": "disabled"}},
    ),
    (
        "cohere-extras-pass-through",
        {
            "messages": HI,
            "documents": [{"data": {"text": "Emperor penguins are tallest."}}],
            "citation_options": {"mode": "FAST"},
            "safety_mode": "STRICT",
            "thinking": {"type": "enabled", "token_budget": 100},
            "reasoning_effort": "high",  # an explicit thinking object wins
        },
        {
            "messages": HI,
            "documents": [{"data": {"text": "Emperor penguins are tallest."}}],
            "citation_options": {"mode": "FAST"},
            "safety_mode": "STRICT",
            "thinking": {"type": "enabled", "token_budget": 100},
        },
    ),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "body, expected", [(b, e) for _, b, e in V2_REQUESTS], ids=[i for i, _, _ in V2_REQUESTS]
)
def test_v2_chat_request(body: dict[str, Any], expected: dict[str, Any], stream: bool) -> None:
    got = sent(body, stream=stream)
    assert got == {"model": MODEL, "stream": stream, **expected}
    check_v2_chat(got)  # what the real API accepts, as the fake checks it


@pytest.mark.parametrize(
    "body, fragments",
    [
        ({"messages": HI, "n": 2}, ["'n' must be 1"]),
        ({"messages": [{"role": "function", "content": "x"}]}, ["role 'function'"]),
        (
            {"messages": [user([{"type": "input_audio", "input_audio": {"data": "x"}}])]},
            ["messages[0].content[0]", "input_audio"],
        ),
        ({"messages": [user([{"type": "image_url", "image_url": {}}])]}, ["needs a 'url'"]),
        ({"messages": [{"role": "tool", "content": "x"}]}, ["needs a 'tool_call_id'"]),
        (
            {"messages": [assistant(None, tool_calls=[{"id": "x", "function": {}}])]},
            ["tool_calls[0]", "'name'"],
        ),
        (
            {
                "messages": HI,
                "tools": [TIME_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            ["'nope'", "not in 'tools'"],
        ),
        ({"messages": HI, "tools": [TIME_TOOL], "tool_choice": "any"}, ["tool_choice"]),
        ({"messages": HI, "tools": [{"type": "web_search"}]}, ["function tools only"]),
        ({"messages": HI, "reasoning_effort": "max"}, ["reasoning_effort", "medium"]),
        ({"messages": HI, "response_format": {"type": "grammar"}}, ["'grammar'"]),
        ({"messages": "hi"}, ["'messages'"]),
    ],
)
def test_v2_chat_request_errors_name_the_problem(
    body: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(cspec(body))
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    for f in fragments:
        assert f in e.value.message


def test_thinking_budgets_cover_openai_efforts() -> None:
    for effort in ("minimal", "low", "medium", "high"):
        thinking = sent({"messages": HI, "reasoning_effort": effort})["thinking"]
        assert thinking == {"type": "enabled", "token_budget": THINKING_BUDGETS[effort]}


# ------------------------------------------------------------------ v1 chat requests


def _kong_like(request_fixture: str, route_type: RouteType, options: dict[str, Any]) -> dict:
    """Build the upstream body the way the gateway does, from Kong's client request."""
    body = fixture_json(request_fixture)
    model_cfg = ModelConfig(provider="cohere", name="command", options=options)
    llm_request.validate(route_type, body)
    resolved = llm_request.resolve_model(route_type, model_cfg.name, body)
    upstream = llm_request.apply_options(
        route_type, llm_request.strip_gateway_fields(body), model_cfg
    )
    req = PROVIDER.build_request(CallSpec(route_type, upstream, resolved, model_cfg.options, False))
    return json.loads(req.body)


def test_v1_chat_body_matches_kongs_expected_request() -> None:
    # Kong's unit test options for cohere chat
    options = {"max_tokens": 512, "temperature": 0.5, "top_p": 1.0, "cohere": {"api_version": "v1"}}
    ours = _kong_like("unit/requests/llm-v1-chat.json", CHAT, options)
    kong = fixture_json("unit/expected-requests/cohere/llm-v1-chat.json")
    # Deliberate difference (Kong bug): Kong sends the system message as a USER turn of
    # chat_history; Cohere's place for it is the preamble.
    first = kong["chat_history"].pop(0)
    assert first == {"role": "USER", "message": "You are a mathematician."}
    assert ours.pop("preamble") == "You are a mathematician."
    # Deliberate difference: Cohere's p runs 0.01..0.99; Kong sends 1.0 as it is.
    assert kong.pop("p") == 1.0 and ours.pop("p") == 0.99
    assert ours == kong
    check_v1_chat(ours)


def test_v2_chat_from_kongs_request() -> None:
    options = {"max_tokens": 512, "temperature": 0.5, "top_p": 1.0}
    ours = _kong_like("unit/requests/llm-v1-chat.json", CHAT, options)
    assert ours["messages"][0] == {"role": "system", "content": "You are a mathematician."}
    assert [m["role"] for m in ours["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert (ours["max_tokens"], ours["temperature"], ours["p"]) == (512, 0.5, 0.99)
    check_v2_chat(ours)


@pytest.mark.parametrize(
    "rel",
    [
        "cohere/llm-v1-chat/requests/good.json",
        "cohere/llm-v1-chat/requests/good-stream.json",
    ],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_kongs_chat_requests_translate(rel: str, version: str) -> None:
    body = fixture_json(rel)
    got = sent(body, version=version, stream=bool(body.get("stream")))
    assert got["stream"] is bool(body.get("stream"))
    if version == "v1":
        assert got["preamble"] == "You are a helpful assistant."
        assert got["message"] == "What is 1 + 1?"
        assert "chat_history" not in got
        check_v1_chat(got)
    else:
        assert got["messages"] == [
            {"role": "system", "content": "You are a helpful assistant."},
            user("What is 1 + 1?"),
        ]
        check_v2_chat(got)


V1_TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameter_definitions": {
            "city": {"type": "str", "description": "The city", "required": True},
            "unit": {
                "type": "str",
                "description": "Possible enum values: C, F.",
                "required": False,
            },
            "days": {"type": "List[int]", "required": False},
        },
    },
    # v1 requires a description: the name stands in
    {"name": "get_time", "description": "get_time", "parameter_definitions": {}},
]

# (id, OpenAI chat body, the Cohere v1 body expected but for model and stream)
V1_REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("one-user-message", {"messages": HI}, {"message": "hi"}),
    (
        "history-and-system-turns",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "Use metric units."},
                user("a"),
                assistant("b"),
                {"role": "system", "content": "Now answer in French."},
                user([{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]),
            ]
        },
        {
            "preamble": "Be brief.\n\nUse metric units.",
            "chat_history": [
                {"role": "USER", "message": "a"},
                {"role": "CHATBOT", "message": "b"},
                {"role": "SYSTEM", "message": "Now answer in French."},
            ],
            "message": "cd",
        },
    ),
    (
        "sampling",
        {"messages": HI, "max_tokens": 50, "top_p": 0.5, "top_k": 3, "stop": ["x", ""], "seed": 1},
        {"message": "hi", "max_tokens": 50, "p": 0.5, "k": 3, "stop_sequences": ["x"], "seed": 1},
    ),
    (
        "tools",
        {"messages": HI, "tools": [WEATHER_TOOL, TIME_TOOL]},
        {"message": "hi", "tools": V1_TOOLS},
    ),
    # v1 cannot forbid calls but by not offering the tools
    (
        "tool-choice-none",
        {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "none"},
        {"message": "hi"},
    ),
    (
        "tool-results-answer-the-last-turn",
        {
            "messages": [
                user("Weather and time in Paris?"),
                assistant("I will check both.", tool_calls=CALLS),
                {"role": "tool", "tool_call_id": "get_weather_abc123", "content": '{"temp": 18}'},
                {"role": "tool", "tool_call_id": "get_time_def456", "content": "14:05"},
            ],
            "tools": [WEATHER_TOOL, TIME_TOOL],
        },
        {
            "message": "",
            "chat_history": [
                {"role": "USER", "message": "Weather and time in Paris?"},
                {
                    "role": "CHATBOT",
                    "message": "I will check both.",
                    "tool_calls": [
                        {"name": "get_weather", "parameters": {"city": "Paris"}},
                        {"name": "get_time", "parameters": {}},
                    ],
                },
            ],
            "tool_results": [
                {
                    "call": {"name": "get_weather", "parameters": {"city": "Paris"}},
                    "outputs": [{"temp": 18}],
                },
                {"call": {"name": "get_time", "parameters": {}}, "outputs": [{"result": "14:05"}]},
            ],
            "tools": V1_TOOLS,
        },
    ),
    (
        "earlier-tool-results-are-tool-turns",
        {
            "messages": [
                user("Weather?"),
                assistant(None, tool_calls=CALLS[:1]),
                {"role": "tool", "tool_call_id": "get_weather_abc123", "content": '[{"t": 1}]'},
                assistant("18C."),
                user("Thanks"),
            ],
            "tools": [WEATHER_TOOL],
            "tool_choice": "none",  # tools are left out: nothing answers tool results now
        },
        {
            "message": "Thanks",
            "chat_history": [
                {"role": "USER", "message": "Weather?"},
                {
                    "role": "CHATBOT",
                    "message": "",
                    "tool_calls": [{"name": "get_weather", "parameters": {"city": "Paris"}}],
                },
                {
                    "role": "TOOL",
                    "tool_results": [
                        {
                            "call": {"name": "get_weather", "parameters": {"city": "Paris"}},
                            "outputs": [{"t": 1}],
                        }
                    ],
                },
                {"role": "CHATBOT", "message": "18C."},
            ],
        },
    ),
    (
        "json-schema",
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "object"}},
            },
        },
        {"message": "hi", "response_format": {"type": "json_object", "schema": {"type": "object"}}},
    ),
    (
        "cohere-extras-and-ignored-reasoning",
        {
            "messages": HI,
            "documents": [{"title": "t", "text": "x"}],
            "prompt_truncation": "OFF",
            "force_single_step": True,
            "reasoning_effort": "high",  # v1 has no thinking
            "user": "u",
        },
        {
            "message": "hi",
            "documents": [{"title": "t", "text": "x"}],
            "prompt_truncation": "OFF",
            "force_single_step": True,
        },
    ),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "body, expected", [(b, e) for _, b, e in V1_REQUESTS], ids=[i for i, _, _ in V1_REQUESTS]
)
def test_v1_chat_request(body: dict[str, Any], expected: dict[str, Any], stream: bool) -> None:
    got = sent(body, version="v1", stream=stream)
    assert got == {"model": MODEL, "stream": stream, **expected}
    check_v1_chat(got)


@pytest.mark.parametrize(
    "body, fragments",
    [
        (
            {"messages": [user([{"type": "image_url", "image_url": {"url": PNG}}])]},
            ["no images", "api_version v2"],
        ),
        ({"messages": [user("a"), assistant("b")]}, ["end with a user or tool message"]),
        (
            {"messages": [user("a"), {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
            ["'nope'", "answers no earlier assistant tool call"],
        ),
        (
            {"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": "required"},
            ["cannot force a tool call", "api_version v2"],
        ),
        (
            {
                "messages": [
                    user("a"),
                    assistant(
                        None,
                        tool_calls=[{**CALLS[0], "function": {"name": "f", "arguments": "[1]"}}],
                    ),
                ]
            },
            ["JSON object"],
        ),
        (
            {
                "messages": [
                    user("a"),
                    assistant(None, tool_calls=CALLS[:1]),
                    {"role": "tool", "tool_call_id": "get_weather_abc123", "content": "x"},
                ]
            },
            ["needs the 'tools'"],
        ),
    ],
)
def test_v1_chat_request_errors(body: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(cspec(body, version="v1"))
    assert e.value.status == 400
    for f in fragments:
        assert f in e.value.message


@pytest.mark.parametrize(
    "schema, py",
    [
        ({"type": "string"}, "str"),
        ({"type": "integer"}, "int"),
        ({"type": "number"}, "float"),
        ({"type": "boolean"}, "bool"),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, "Dict"),
        ({"type": "array"}, "List"),
        (
            {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            "List[List[str]]",
        ),
        ({"type": ["string", "null"]}, "str"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "int"),
        ({"enum": ["a", "b"]}, "str"),
        ({}, "str"),
    ],
)
def test_v1_parameter_types(schema: dict[str, Any], py: str) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "description": "d",
            "parameters": {"type": "object", "properties": {"x": schema}},
        },
    }
    got = sent({"messages": HI, "tools": [tool]}, version="v1")
    assert got["tools"][0]["parameter_definitions"]["x"]["type"] == py


# ------------------------------------------------------------------ completions, embeddings


def test_generate_body_matches_kongs_expected_request() -> None:
    options = {
        "max_tokens": 512,
        "temperature": 0.5,
        "top_p": 0.75,
        "top_k": 5,
        "cohere": {"api_version": "v1"},
    }
    ours = _kong_like("unit/requests/llm-v1-completions.json", COMPLETIONS, options)
    assert ours == fixture_json("unit/expected-requests/cohere/llm-v1-completions.json")
    check_generate(ours)


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"prompt": "hi", "n": 3, "stop": "\n"}, {"num_generations": 3, "stop_sequences": ["\n"]}),
        ({"prompt": ["hi"], "max_tokens": 5}, {"max_tokens": 5}),
        ({"prompt": "hi", "echo": True, "best_of": 2, "suffix": "x", "logprobs": 2}, {}),
    ],
)
def test_generate_body(body: dict[str, Any], expected: dict[str, Any]) -> None:
    got = sent(body, COMPLETIONS, version="v1")
    assert got == {"prompt": "hi", "model": MODEL, "stream": False, **expected}
    check_generate(got)


def test_v2_completions_send_the_prompt_as_a_user_message() -> None:
    got = sent({"prompt": "Say hi", "max_tokens": 5, "top_p": 0.5}, COMPLETIONS, stream=True)
    assert got == {
        "model": MODEL,
        "messages": [user("Say hi")],
        "stream": True,
        "max_tokens": 5,
        "p": 0.5,
    }
    check_v2_chat(got)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    "body, message",
    [({"prompt": ["a", "b"]}, "one string"), ({"prompt": [1, 2, 3]}, "one string")],
)
def test_completion_prompt_errors(body: dict[str, Any], message: str, version: str) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(cspec(body, COMPLETIONS, version=version))
    assert e.value.status == 400 and message in e.value.message


@pytest.mark.parametrize(
    "body, options, expected",
    [
        (
            {"input": "hello"},
            {},
            {"texts": ["hello"], "input_type": "search_document"},
        ),
        (
            {"input": ["a", "b"], "dimensions": 256, "encoding_format": "base64", "user": "u"},
            {"cohere": {"embedding_input_type": "search_query"}},
            {"texts": ["a", "b"], "input_type": "search_query", "output_dimension": 256},
        ),
        (
            {"input": "x", "truncate": "NONE"},
            {"cohere": {"api_version": "v1", "embedding_input_type": "clustering"}},
            {"texts": ["x"], "input_type": "clustering", "truncate": "NONE"},
        ),
    ],
)
def test_embed_body(
    body: dict[str, Any], options: dict[str, Any], expected: dict[str, Any]
) -> None:
    got = sent(body, EMBEDDINGS, **options)
    assert got == {"model": MODEL, "embedding_types": ["float"], **expected}
    check_embed(got)


def test_embed_token_arrays_are_refused() -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(cspec({"input": [[1, 2, 3]]}, EMBEDDINGS))
    assert e.value.status == 400 and "token arrays" in e.value.message


def test_the_fake_rejects_what_cohere_rejects() -> None:
    # the checks the unit tables rely on do reject OpenAI-shaped bodies
    for check, body in [
        (check_v2_chat, {"model": "m", "messages": HI, "top_p": 0.5}),
        (check_v2_chat, {"model": "m", "messages": HI, "p": 1.0}),
        (check_v2_chat, {"model": "m", "messages": HI, "tool_choice": "REQUIRED"}),
        (check_v1_chat, {"message": "hi", "chat_history": [{"role": "user", "message": "x"}]}),
        (check_v1_chat, {"message": "hi", "tool_results": []}),
        (check_generate, {"prompt": "hi", "stop": ["x"]}),
        (check_embed, {"model": "m", "texts": ["a"], "embedding_types": ["float"]}),
    ]:
        with pytest.raises(Invalid):
            check(body)


# ------------------------------------------------------------------ answers

V2_ANSWER = {
    "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "LLMs are models."}]},
    "finish_reason": "COMPLETE",
    "usage": {
        "billed_units": {"input_tokens": 5, "output_tokens": 418},
        "tokens": {"input_tokens": 71, "output_tokens": 418},
    },
}
V2_TOOL_ANSWER = {
    "id": "9e5f00aa-bf1e-481a-abe3-0eceac18c3ec",
    "message": {
        "role": "assistant",
        "tool_plan": "I will look up the sales first.",
        "tool_calls": [
            {
                "id": "query_daily_sales_report_hgxxmkby3wta",
                "type": "function",
                "function": {
                    "name": "query_daily_sales_report",
                    "arguments": '{"day": "2023-09-29"}',
                },
            },
            {
                "id": "query_product_catalog_rpg0z5h8yyz2",
                "type": "function",
                "function": {
                    "name": "query_product_catalog",
                    "arguments": '{"category": "Electronics"}',
                },
            },
        ],
    },
    "finish_reason": "TOOL_CALL",
    "usage": {
        "billed_units": {"input_tokens": 127, "output_tokens": 69},
        "tokens": {"input_tokens": 1032, "output_tokens": 124},
    },
}


def parse(data: Any, route_type: RouteType = CHAT, **kw: Any) -> Any:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return PROVIDER.parse_response(cspec({"input": ["a"]}, route_type, **kw), 200, {}, raw)


def test_v2_text_answer() -> None:
    reply = parse(V2_ANSWER)
    assert reply.data["id"] == V2_ANSWER["id"]
    assert reply.data["object"] == "chat.completion"
    assert reply.data["model"] == MODEL and reply.model == MODEL
    assert reply.data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "LLMs are models."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    # the actual token counts, not the billed units
    assert reply.data["usage"] == {
        "prompt_tokens": 71,
        "completion_tokens": 418,
        "total_tokens": 489,
    }
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (71, 418)
    assert json.loads(reply.body) == reply.data


def test_cost_is_billed_units_not_the_token_counts() -> None:
    """Cohere reports 71 input tokens but bills 5 (the prompt template is free)."""
    usage = parse(V2_ANSWER).usage
    options = ModelOptions(input_cost=2.5, output_cost=10.0)
    assert usage.prompt_tokens == 71
    assert usage.cost(options) == pytest.approx((5 * 2.5 + 418 * 10.0) / 1e6)


def test_v2_tool_answer_keeps_ids_and_plan() -> None:
    reply = parse(V2_TOOL_ANSWER)
    choice = reply.data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I will look up the sales first."
    assert choice["message"]["tool_calls"] == [
        {"id": c["id"], "type": "function", "function": c["function"]}
        for c in V2_TOOL_ANSWER["message"]["tool_calls"]  # type: ignore[index]
    ]


def test_v2_thinking_is_reasoning_content() -> None:
    answer = {
        **V2_TOOL_ANSWER,
        "message": {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": "Sales first, then the catalog."}],
            "tool_calls": V2_TOOL_ANSWER["message"]["tool_calls"],  # type: ignore[index]
        },
    }
    message = parse(answer).data["choices"][0]["message"]
    assert message["reasoning_content"] == "Sales first, then the catalog."
    assert message["content"] is None
    assert len(message["tool_calls"]) == 2


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("ERROR_LIMIT", "length"),
        ("TOOL_CALL", "tool_calls"),
        ("ERROR_TOXIC", "content_filter"),
        (None, "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_finish_reasons(reason: str | None, expected: str, version: str) -> None:
    if version == "v2":
        data = {**V2_ANSWER, "finish_reason": reason}
    else:
        data = {"text": "x", "generation_id": "g", "finish_reason": reason}
    assert parse(data, version=version).data["choices"][0]["finish_reason"] == expected


@pytest.mark.parametrize(
    "reason, status, kind",
    [
        ("ERROR", 502, "api_error"),
        ("TIMEOUT", 504, "timeout_error"),
        ("USER_CANCEL", 502, "api_error"),
    ],
)
@pytest.mark.parametrize("route", ["v2", "v1", "generate"])
def test_failed_generations_are_errors(reason: str, status: int, kind: str, route: str) -> None:
    if route == "v2":
        data: dict[str, Any] = {**V2_ANSWER, "finish_reason": reason}
        route_type, version = CHAT, "v2"
    elif route == "v1":
        data = {"text": "partial", "finish_reason": reason}
        route_type, version = CHAT, "v1"
    else:
        data = {"id": "g", "generations": [{"id": "x", "text": "p", "finish_reason": reason}]}
        route_type, version = COMPLETIONS, "v1"
    with pytest.raises(ProviderError) as e:
        parse(data, route_type, version=version)
    assert (e.value.status, e.value.type) == (status, kind)
    assert reason in e.value.message


def test_v2_completion_answer() -> None:
    answer = {
        **V2_ANSWER,
        "message": {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "Hello!"},
            ],
        },
        "finish_reason": "MAX_TOKENS",
    }
    reply = parse(answer, COMPLETIONS)
    assert reply.data["object"] == "text_completion"
    assert reply.data["choices"] == [
        {"index": 0, "text": "Hello!", "logprobs": None, "finish_reason": "length"}
    ]
    assert reply.usage.prompt_tokens == 71


def test_v1_tool_answer_gets_ids_and_json_arguments() -> None:
    answer = {
        "text": "I will first find the sales summary.",
        "generation_id": "9e5f00aa",
        "finish_reason": "COMPLETE",
        "tool_calls": [
            {"name": "query_daily_sales_report", "parameters": {"day": "2023-09-29"}},
            {"name": "query_product_catalog", "parameters": {"category": "Électronique"}},
        ],
        "meta": {"billed_units": {"input_tokens": 127, "output_tokens": 69}},
    }
    reply = parse(answer, version="v1")
    choice = reply.data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I will first find the sales summary."
    calls = choice["message"]["tool_calls"]
    assert [c["function"] for c in calls] == [
        {"name": "query_daily_sales_report", "arguments": '{"day":"2023-09-29"}'},
        {"name": "query_product_catalog", "arguments": '{"category":"Électronique"}'},
    ]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    # no actual counts in this answer: the billed units
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (127, 69)


@pytest.mark.parametrize(
    "usage, expected",
    [
        (
            {
                "billed_units": {"input_tokens": 5, "output_tokens": 26},
                "tokens": {"input_tokens": 71, "output_tokens": 26},
            },
            (71, 26, 0),
        ),
        ({"billed_units": {"input_tokens": 5, "output_tokens": 26}}, (5, 26, 0)),
        (
            {"tokens": {"input_tokens": 3000.0, "output_tokens": 2}, "cached_tokens": 2048},
            (3000, 2, 2048),
        ),
        ({"billed_units": {"search_units": 1}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_usage_rules(usage: Any, expected: tuple[int, int, int] | None) -> None:
    got = usage_from_cohere(usage)
    if expected is None:
        assert got is None
    else:
        assert (got.prompt_tokens, got.completion_tokens, got.cache_read_tokens) == expected
        assert not got.estimated


def test_cached_tokens_are_reported_like_openai() -> None:
    data = {
        **V2_ANSWER,
        "usage": {"tokens": {"input_tokens": 3000, "output_tokens": 5}, "cached_tokens": 2048},
    }
    assert parse(data).data["usage"] == {
        "prompt_tokens": 3000,
        "completion_tokens": 5,
        "total_tokens": 3005,
        "prompt_tokens_details": {"cached_tokens": 2048},
    }


def test_answer_without_usage_has_none() -> None:
    reply = parse({k: v for k, v in V2_ANSWER.items() if k != "usage"})
    assert reply.usage is None and "usage" not in reply.data


@pytest.mark.parametrize(
    "route_type, real, expected",
    [
        (
            CHAT,
            "unit/real-responses/cohere/llm-v1-chat.json",
            "unit/expected-responses/cohere/llm-v1-chat.json",
        ),
        (
            COMPLETIONS,
            "unit/real-responses/cohere/llm-v1-completions.json",
            "unit/expected-responses/cohere/llm-v1-completions.json",
        ),
    ],
)
def test_answers_match_kongs_expected_responses(
    route_type: RouteType, real: str, expected: str
) -> None:
    reply = PROVIDER.parse_response(
        cspec(route_type=route_type, version="v1", model="command"),
        200,
        {},
        fixture(real).read_bytes(),
    )
    kong = fixture_json(expected)
    ours = reply.data
    if route_type is COMPLETIONS:
        # Deliberate difference (Kong bug): Kong reports "stop" for Cohere's MAX_TOKENS;
        # a text cut at the token limit is OpenAI's "length".
        assert kong["choices"][0].pop("finish_reason") == "stop"
        assert ours["choices"][0].pop("finish_reason") == "length"
    for choice in ours["choices"]:
        choice.pop("logprobs")
    for key in ("id", "object", "model", "choices", "usage"):
        assert ours[key] == kong[key], key
    assert isinstance(ours["created"], int)


@pytest.mark.parametrize(
    "rel, route_type, text, usage",
    [
        ("cohere/llm-v1-chat/responses/good.json", CHAT, "The sum of 1 + 1 is 2.", (102, 258)),
        ("cohere/llm-v1-completions/responses/good.json", COMPLETIONS, "1 + 1 is 2.", (0, 0)),
        (
            "cohere/request-transformer/response-in-json.json",
            CHAT,
            fixture_json("cohere/request-transformer/response-in-json.json")["text"],
            (102, 258),
        ),
    ],
)
def test_kongs_recorded_v1_answers(
    rel: str, route_type: RouteType, text: str, usage: tuple[int, int]
) -> None:
    reply = PROVIDER.parse_response(
        cspec(route_type=route_type, version="v1"), 200, {}, fixture(rel).read_bytes()
    )
    choice = reply.data["choices"][0]
    assert (choice.get("text") or choice.get("message", {}).get("content")) == text
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == usage


@pytest.mark.parametrize(
    "route_type, version, body, missing",
    [
        (
            CHAT,
            "v1",
            fixture("cohere/llm-v1-chat/responses/bad_upstream_response.json").read_bytes(),
            "'text'",
        ),
        (CHAT, "v2", b'{"id": "x", "finish_reason": "COMPLETE"}', "'message'"),
        (COMPLETIONS, "v1", b'{"id": "x", "generations": []}', "'generations'"),
        (COMPLETIONS, "v1", b'{"id": "x", "generations": [{"id": "g"}]}', "'text'"),
        (EMBEDDINGS, "v2", b'{"id": "x", "embeddings": {"int8": [[1]]}}', "float 'embeddings'"),
        (EMBEDDINGS, "v2", b'{"embeddings": {"float": [["a"]]}}', "not a list of numbers"),
        (CHAT, "v2", b"<html>oops</html>", "not a JSON object"),
        (CHAT, "v2", b"[]", "not a JSON object"),
    ],
)
def test_untranslatable_answers_are_502s_naming_what_is_missing(
    route_type: RouteType, version: str, body: bytes, missing: str
) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.parse_response(cspec({"input": "a"}, route_type, version=version), 200, {}, body)
    assert e.value.status == 502
    assert e.value.message.startswith("cohere: ") and missing in e.value.message


def test_generate_with_several_generations() -> None:
    data = {
        "id": "g1",
        "generations": [
            {"id": "a", "text": "one", "index": 0, "finish_reason": "COMPLETE"},
            {"id": "b", "text": "two", "index": 1, "finish_reason": "MAX_TOKENS"},
        ],
        "meta": {"billed_units": {"input_tokens": 3, "output_tokens": 4}},
    }
    reply = parse(data, COMPLETIONS, version="v1")
    assert [(c["index"], c["text"], c["finish_reason"]) for c in reply.data["choices"]] == [
        (0, "one", "stop"),
        (1, "two", "length"),
    ]
    assert reply.data["usage"]["total_tokens"] == 7


EMBED_ANSWER = {
    "id": "da6e531f-54c6-4a73-bf92-f60566d8d753",
    "texts": ["hello", "goodbye"],
    "embeddings": {"float": [[0.016296387, -0.5, 1.0], [0.04663086, 0.25, -1.0]]},
    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2}},
    "response_type": "embeddings_by_type",
}


def embed_spec(**body: Any) -> CallSpec:
    return cspec({"input": ["hello", "goodbye"], **body}, EMBEDDINGS)


def test_embeddings_answer_in_openai_shape() -> None:
    reply = PROVIDER.parse_response(embed_spec(), 200, {}, json.dumps(EMBED_ANSWER).encode())
    assert reply.data == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.016296387, -0.5, 1.0]},
            {"object": "embedding", "index": 1, "embedding": [0.04663086, 0.25, -1.0]},
        ],
        "model": MODEL,
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert reply.usage.prompt_tokens == 2 and not reply.usage.estimated


def test_embeddings_base64_is_little_endian_float32() -> None:
    reply = PROVIDER.parse_response(
        embed_spec(encoding_format="base64"), 200, {}, json.dumps(EMBED_ANSWER).encode()
    )
    for item, floats in zip(reply.data["data"], EMBED_ANSWER["embeddings"]["float"], strict=True):  # type: ignore[index]
        raw = base64.b64decode(item["embedding"])
        assert struct.unpack(f"<{len(floats)}f", raw) == pytest.approx(floats)


def test_embeddings_v1_shape_and_estimated_usage() -> None:
    data = {"id": "x", "embeddings": [[0.5, 0.25]], "texts": ["hello"]}
    reply = PROVIDER.parse_response(
        cspec({"input": "hello world!"}, EMBEDDINGS), 200, {}, json.dumps(data).encode()
    )
    assert reply.data["data"][0]["embedding"] == [0.5, 0.25]
    assert reply.usage.estimated and reply.usage.prompt_tokens == 3
    assert reply.data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


# ------------------------------------------------------------------ Kong's request fixtures


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_kongs_good_completions_request(version: str) -> None:
    body = fixture_json("cohere/llm-v1-completions/requests/good.json")
    out = sent(body, COMPLETIONS, version=version)
    if version == "v1":
        assert out["prompt"] == "What are you?"  # /v1/generate
    else:
        assert out["messages"] == [{"role": "user", "content": "What are you?"}]


@pytest.mark.parametrize(
    "route_type, rel, param",
    [
        (COMPLETIONS, "cohere/llm-v1-completions/requests/bad_request.json", "prompt"),
        (CHAT, "cohere/llm-v1-chat/requests/bad_request.json", "messages"),
    ],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_kongs_bad_requests_are_400s_naming_the_missing_field(
    route_type: RouteType, rel: str, param: str, version: str
) -> None:
    """Kong's fixtures misspell the field (`tpmorp`, `segassem`): a 400 that names the
    field the request lacks, before any upstream call (the gateway's own check, then the
    adapter's)."""
    body = fixture_json(rel)
    with pytest.raises(ProviderError) as e:
        llm_request.validate(route_type, body)
    assert (e.value.status, e.value.param) == (400, param)
    assert param in e.value.message
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(cspec(body, route_type, version=version))
    assert e.value.status == 400 and param in e.value.message


def test_kongs_own_model_request_is_refused_on_a_route_with_a_model() -> None:
    """Kong's `good_own_model` asks for another model than the route's: Kong's 400,
    and without a configured model the client's model is the one sent."""
    body = fixture_json("cohere/llm-v1-chat/requests/good_own_model.json")
    with pytest.raises(ProviderError) as e:
        llm_request.resolve_model(CHAT, MODEL, body)
    assert (e.value.status, e.value.param) == (400, "model")
    assert e.value.message == f"cannot use own model - must be: {MODEL}"
    model = llm_request.resolve_model(CHAT, None, body)
    assert model == "try-to-override-the-model"
    out = sent(body, model=model)
    assert out["model"] == "try-to-override-the-model"
    assert out["messages"][-1] == {"role": "user", "content": "What is 1 + 1?"}


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (
            400,
            fixture("cohere/llm-v1-chat/responses/bad_request.json").read_bytes(),
            (400, "bad request", "invalid_request_error", None),
        ),
        (
            401,
            fixture("cohere/llm-v1-chat/responses/unauthorized.json").read_bytes(),
            (401, "invalid api token", "authentication_error", None),
        ),
        (
            400,
            fixture("cohere/llm-v1-completions/responses/bad_request.json").read_bytes(),
            (400, "Invalid request", "invalid_request_error", None),
        ),
        (
            401,
            fixture("cohere/llm-v1-completions/responses/unauthorized.json").read_bytes(),
            (401, "invalid api token", "authentication_error", None),
        ),
        (
            429,
            b'{"id": "abc", "message": "You are using a Trial key, which is limited to 10 API calls / minute."}',
            (
                429,
                "You are using a Trial key, which is limited to 10 API calls / minute.",
                "rate_limit_error",
                None,
            ),
        ),
        # a deny-listed token: no OpenAI client knows 498
        (
            498,
            b'{"message": "blocked output"}',
            (400, "blocked output", "invalid_request_error", "content_filter"),
        ),
        (
            404,
            b'{"id": "x", "message": "model \'nope\' not found"}',
            (404, "model 'nope' not found", "not_found_error", None),
        ),
        (
            500,
            fixture("cohere/llm-v1-chat/responses/internal_server_error.html").read_bytes(),
            (500, "cohere upstream returned an HTML error page (HTTP 500)", "api_error", None),
        ),
        (
            503,
            b"",
            (503, "cohere upstream returned HTTP 503 with an empty body", "api_error", None),
        ),
        (
            422,
            b'{"message": ""}',
            (422, "cohere upstream returned HTTP 422", "invalid_request_error", None),
        ),
    ],
)
def test_upstream_errors(status: int, body: bytes, expected: tuple[Any, ...]) -> None:
    err = PROVIDER.parse_error(status, {}, body)
    assert (err.status, err.message, err.type, err.code) == expected
    assert err.to_openai()["error"]["message"] == expected[1]


# ------------------------------------------------------------------ streams: helpers


def run(translator: Any, chunks: list[bytes], error: ProviderError | None = None) -> list[bytes]:
    out: list[bytes] = []
    for c in chunks:
        out += translator.feed(c)
    out += translator.finish(error)
    return out


def events(out: list[bytes]) -> list[Any]:
    """The SSE events the client gets, parsed ("[DONE]" as a string)."""
    text = b"".join(out).decode()
    assert not text or text.endswith("\n\n")
    found = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        found.append(data if data == "[DONE]" else json.loads(data))
    return found


def normalized(out: list[bytes]) -> list[Any]:
    """Events without what differs from one translator to the next (time, minted ids)."""
    found = []
    for e in events(out):
        if isinstance(e, dict):
            e = {k: v for k, v in e.items() if k not in ("created", "id")}
            for choice in e.get("choices") or ():
                for call in (choice.get("delta") or {}).get("tool_calls") or ():
                    if "id" in call:
                        call["id"] = "ID"
        found.append(e)
    return found


def text_of(evs: list[Any]) -> str:
    parts = []
    for e in evs:
        if isinstance(e, dict):
            for c in e.get("choices") or ():
                parts.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(parts)


def calls_of(evs: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for e in evs:
        if not isinstance(e, dict):
            continue
        for c in e.get("choices") or ():
            for d in (c.get("delta") or {}).get("tool_calls") or ():
                entry = calls.setdefault(d["index"], {"id": "", "name": "", "args": ""})
                if "id" in d:
                    assert not entry["id"], "id and name come once, in the first delta"
                    entry["id"] = d["id"]
                    entry["name"] = d["function"]["name"]
                entry["args"] += d["function"].get("arguments", "")
    return calls


def finishes(evs: list[Any]) -> list[str]:
    return [
        c["finish_reason"]
        for e in evs
        if isinstance(e, dict)
        for c in e.get("choices") or ()
        if c.get("finish_reason")
    ]


def sse_ev(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


USAGE = {
    "billed_units": {"input_tokens": 5, "output_tokens": 26},
    "tokens": {"input_tokens": 71, "output_tokens": 26},
}

# A v2 text stream as Cohere sends it (from Cohere's reference examples).
V2_TEXT = b"".join(
    [
        sse_ev(
            "message-start",
            {
                "id": "29f14a5a-11de-4cae-9800-25e4747408ea",
                "delta": {
                    "message": {
                        "role": "assistant",
                        "content": [],
                        "tool_plan": "",
                        "tool_calls": [],
                        "citations": [],
                    }
                },
            },
        ),
        sse_ev(
            "content-start",
            {"index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
        ),
        *[
            sse_ev("content-delta", {"index": 0, "delta": {"message": {"content": {"text": t}}}})
            for t in ["LL", "Ms", " stand", " for", " Large", " Language", " Models", ". 🚀\u2028"]
        ],
        sse_ev("content-end", {"index": 0}),
        sse_ev("message-end", {"delta": {"finish_reason": "COMPLETE", "usage": USAGE}}),
    ]
)
V2_TEXT_ANSWER = "LLMs stand for Large Language Models. 🚀\u2028"

V2_TOOLS = b"".join(
    [
        sse_ev("message-start", {"id": "2edfdf70", "delta": {"message": {"role": "assistant"}}}),
        *[
            sse_ev("tool-plan-delta", {"delta": {"message": {"tool_plan": t}}})
            for t in ["I", " will", " look", " up", "."]
        ],
        sse_ev(
            "tool-call-start",
            {
                "index": 0,
                "delta": {
                    "message": {
                        "tool_calls": {
                            "id": "query_daily_sales_report_j3f0adww9pmr",
                            "type": "function",
                            "function": {"name": "query_daily_sales_report", "arguments": ""},
                        }
                    }
                },
            },
        ),
        *[
            sse_ev(
                "tool-call-delta",
                {"index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": a}}}}},
            )
            for a in ['{"', "day", '": ', '"2023-09-29"', "}"]
        ],
        sse_ev("tool-call-end", {"index": 0}),
        sse_ev(
            "tool-call-start",
            {
                "index": 1,
                "delta": {
                    "message": {
                        "tool_calls": {
                            "id": "query_product_catalog_rpg0z5h8yyz2",
                            "type": "function",
                            "function": {"name": "query_product_catalog", "arguments": ""},
                        }
                    }
                },
            },
        ),
        *[
            sse_ev(
                "tool-call-delta",
                {"index": 1, "delta": {"message": {"tool_calls": {"function": {"arguments": a}}}}},
            )
            for a in ['{"category": ', '"Electronics"}']
        ],
        sse_ev("tool-call-end", {"index": 1}),
        sse_ev(
            "message-end",
            {
                "delta": {
                    "finish_reason": "TOOL_CALL",
                    "usage": {
                        "billed_units": {"input_tokens": 126, "output_tokens": 84},
                        "tokens": {"input_tokens": 1589, "output_tokens": 135},
                    },
                }
            },
        ),
    ]
)

V2_THINKING = b"".join(
    [
        sse_ev("message-start", {"id": "t1", "delta": {"message": {"role": "assistant"}}}),
        sse_ev(
            "content-start",
            {"index": 0, "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}},
        ),
        sse_ev(
            "content-delta", {"index": 0, "delta": {"message": {"content": {"thinking": "Two "}}}}
        ),
        sse_ev(
            "content-delta",
            {"index": 0, "delta": {"message": {"content": {"thinking": "apples."}}}},
        ),
        sse_ev("content-end", {"index": 0}),
        sse_ev(
            "content-start",
            {"index": 1, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
        ),
        sse_ev("content-delta", {"index": 1, "delta": {"message": {"content": {"text": "2"}}}}),
        sse_ev("content-end", {"index": 1}),
        sse_ev("message-end", {"delta": {"finish_reason": "COMPLETE", "usage": USAGE}}),
    ]
)


def v2(wants_usage: bool = False, completions: bool = False) -> CohereV2Stream:
    route_type = COMPLETIONS if completions else CHAT
    translator = PROVIDER.stream_translator(
        cspec(route_type=route_type, stream=True, wants_usage=wants_usage)
    )
    assert isinstance(translator, CohereV2Stream)
    return translator


# ------------------------------------------------------------------ streams: v2


@pytest.mark.parametrize("wants_usage", [False, True])
def test_v2_text_stream(wants_usage: bool) -> None:
    t = v2(wants_usage)
    evs = events(run(t, [V2_TEXT]))
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["id"] == "29f14a5a-11de-4cae-9800-25e4747408ea" for e in evs[:-1])
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == MODEL for e in evs[:-1])
    assert text_of(evs) == V2_TEXT_ANSWER
    assert finishes(evs) == ["stop"]
    assert evs[-1] == "[DONE]"
    usage_chunks = [e for e in evs[:-1] if e.get("usage")]
    if wants_usage:
        assert usage_chunks == [evs[-2]] and evs[-2]["choices"] == []
        assert evs[-2]["usage"] == {
            "prompt_tokens": 71,
            "completion_tokens": 26,
            "total_tokens": 97,
        }
    else:
        assert usage_chunks == []
    assert evs[-2 if not wants_usage else -3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
    }
    assert t.error is None and t.started
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (71, 26)
    assembled = t.assembled()
    assert assembled["choices"][0]["message"] == {"role": "assistant", "content": V2_TEXT_ANSWER}
    assert assembled["choices"][0]["finish_reason"] == "stop"
    assert assembled["usage"]["prompt_tokens"] == 71


@pytest.mark.parametrize("raw", [V2_TEXT, V2_TOOLS, V2_THINKING], ids=["text", "tools", "thinking"])
@pytest.mark.parametrize("wants_usage", [False, True])
def test_v2_every_split_gives_the_same_answer(raw: bytes, wants_usage: bool) -> None:
    whole = normalized(run(v2(wants_usage), [raw]))
    for chunks in every_split(raw):
        assert normalized(run(v2(wants_usage), chunks)) == whole
    t = v2(wants_usage)
    assert normalized(run(t, byte_by_byte(raw))) == whole
    assert t.error is None


def test_v2_text_is_forwarded_as_soon_as_each_event_is_complete() -> None:
    t = v2()
    blocks = [b + b"\n\n" for b in V2_TEXT.split(b"\n\n")[:-1]]
    got = [normalized(t.feed(b)) for b in blocks]
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    assert got[0] == [{"object": "chat.completion.chunk", "model": MODEL, "choices": [role]}]
    assert got[1] == []  # content-start with no text
    assert [text_of(g) for g in got[2:10]] == [
        "LL",
        "Ms",
        " stand",
        " for",
        " Large",
        " Language",
        " Models",
        ". 🚀\u2028",
    ]
    # and nothing before an event is whole
    t2 = v2()
    assert t2.feed(blocks[0][:-1]) == []
    assert len(t2.feed(b"\n")) == 1


def test_v2_tool_stream() -> None:
    t = v2()
    evs = events(run(t, [V2_TOOLS]))
    assert text_of(evs) == "I will look up."
    assert calls_of(evs) == {
        0: {
            "id": "query_daily_sales_report_j3f0adww9pmr",
            "name": "query_daily_sales_report",
            "args": '{"day": "2023-09-29"}',
        },
        1: {
            "id": "query_product_catalog_rpg0z5h8yyz2",
            "name": "query_product_catalog",
            "args": '{"category": "Electronics"}',
        },
    }
    assert finishes(evs) == ["tool_calls"]
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (1589, 135)
    message = t.assembled()["choices"][0]["message"]
    assert message["content"] == "I will look up."
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == [
        '{"day": "2023-09-29"}',
        '{"category": "Electronics"}',
    ]


def test_v2_tool_call_without_arguments_gets_an_empty_object() -> None:
    raw = b"".join(
        [
            sse_ev("message-start", {"id": "x", "delta": {"message": {"role": "assistant"}}}),
            sse_ev(
                "tool-call-start",
                {
                    "index": 0,
                    "delta": {
                        "message": {
                            "tool_calls": {
                                "id": "t1",
                                "type": "function",
                                "function": {"name": "get_time", "arguments": ""},
                            }
                        }
                    },
                },
            ),
            sse_ev("tool-call-end", {"index": 0}),
            sse_ev("message-end", {"delta": {"finish_reason": "TOOL_CALL"}}),
        ]
    )
    t = v2()
    evs = events(run(t, [raw]))
    assert calls_of(evs) == {0: {"id": "t1", "name": "get_time", "args": "{}"}}
    assert t.usage is None  # none reported: the gateway estimates it


def test_v2_thinking_stream() -> None:
    t = v2()
    evs = events(run(t, [V2_THINKING]))
    reasoning = "".join(
        c["delta"].get("reasoning_content", "") for e in evs[:-1] for c in e["choices"]
    )
    assert reasoning == "Two apples."
    assert text_of(evs) == "2"
    assert t.assembled()["choices"][0]["message"] == {
        "role": "assistant",
        "content": "2",
        "reasoning_content": "Two apples.",
    }


def test_v2_completions_stream_is_text_completion_chunks() -> None:
    t = v2(wants_usage=True, completions=True)
    evs = events(run(t, [V2_THINKING]))
    assert all(e["object"] == "text_completion" for e in evs[:-1])
    assert [c for e in evs[:-1] for c in e["choices"]] == [
        {"index": 0, "text": "2", "logprobs": None, "finish_reason": None},
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"},
    ]
    assert evs[-2]["usage"]["prompt_tokens"] == 71
    assert t.assembled()["choices"][0]["text"] == "2"


@pytest.mark.parametrize(
    "reason, status, kind", [("ERROR", 502, "api_error"), ("TIMEOUT", 504, "timeout_error")]
)
def test_v2_failed_generation_mid_stream(reason: str, status: int, kind: str) -> None:
    raw = V2_TEXT.replace(
        b'"finish_reason": "COMPLETE"',
        f'"finish_reason": "{reason}", "error": "model overloaded"'.encode(),
    )
    t = v2(wants_usage=True)
    evs = events(run(t, [raw]))
    assert text_of(evs) == V2_TEXT_ANSWER  # what came before reached the client
    assert evs[-1] == "[DONE]"
    err = evs[-2]["error"]
    assert err["type"] == kind and reason in err["message"] and "model overloaded" in err["message"]
    assert t.error is not None and t.error.status == status
    assert finishes(evs) == []


def test_v2_stream_without_message_end_is_an_error() -> None:
    raw = V2_TEXT[: V2_TEXT.index(b"event: message-end")]
    for chunks in [[raw], byte_by_byte(raw)]:
        t = v2()
        evs = events(run(t, chunks))
        assert text_of(evs) == V2_TEXT_ANSWER
        assert "ended before the answer was complete" in evs[-2]["error"]["message"]
        assert evs[-1] == "[DONE]" and t.error.status == 502


def test_v2_stream_cut_mid_event_by_a_failure() -> None:
    cut = V2_TEXT[: V2_TEXT.index(b"Models") + 3]
    failure = ProviderError(502, "upstream connection lost", "api_error")
    t = v2()
    evs = events(run(t, [cut], failure))
    assert text_of(evs) == "LLMs stand for Large Language"  # the half event is dropped
    assert evs[-2]["error"]["message"] == "upstream connection lost"
    assert t.error is failure


def test_v2_error_event_in_stream() -> None:
    raw = (
        V2_TEXT[: V2_TEXT.index(b"event: content-end")]
        + b'data: {"message": "too many tokens"}\n\n'
    )
    t = v2()
    evs = events(run(t, [raw, sse_ev("message-end", {"delta": {"finish_reason": "COMPLETE"}})]))
    assert evs[-2]["error"]["message"] == "too many tokens"
    assert finishes(evs) == [] and t.error.message == "too many tokens"


def test_v2_done_marker_and_unknown_events_are_ignored() -> None:
    raw = (
        V2_TEXT.replace(
            b"event: content-end",
            b'event: debug\ndata: {"type": "debug", "prompt": "..."}\n\n: keep-alive\n\nevent: content-end',
        )
        + b"data: [DONE]\n\n"
    )
    assert normalized(run(v2(), [raw])) == normalized(run(v2(), [V2_TEXT]))


def test_v2_nothing_after_the_answer_is_complete() -> None:
    t = v2()
    out = run(
        t,
        [
            V2_TEXT
            + sse_ev(
                "content-delta", {"index": 0, "delta": {"message": {"content": {"text": "late"}}}}
            )
        ],
    )
    assert "late" not in text_of(events(out))
    assert t.error is None


# ------------------------------------------------------------------ streams: v1 (NDJSON)


def v1(wants_usage: bool = False, generate: bool = False) -> CohereV1Stream:
    route_type = COMPLETIONS if generate else CHAT
    translator = PROVIDER.stream_translator(
        cspec(route_type=route_type, version="v1", stream=True, wants_usage=wants_usage)
    )
    assert isinstance(translator, CohereV1Stream)
    return translator


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


KONG_CHAT_FRAME = fixture("unit/real-stream-frames/cohere/llm-v1-chat.txt").read_bytes()
KONG_GENERATE_FRAME = fixture("unit/real-stream-frames/cohere/llm-v1-completions.txt").read_bytes()
V1_END = line(
    {
        "is_finished": True,
        "event_type": "stream-end",
        "response": {
            "response_id": "75f0d364",
            "text": "the answer",
            "generation_id": "6789661c",
            "finish_reason": "COMPLETE",
            "meta": {
                "api_version": {"version": "1"},
                "billed_units": {"input_tokens": 8, "output_tokens": 2},
                "tokens": {"input_tokens": 70, "output_tokens": 2},
            },
        },
        "finish_reason": "COMPLETE",
    }
)
V1_CHAT = (
    line({"is_finished": False, "event_type": "stream-start", "generation_id": "6789661c"})
    + KONG_CHAT_FRAME
    + V1_END
)
GENERATE_END = line(
    {
        "is_finished": True,
        "event_type": "stream-end",
        "finish_reason": "MAX_TOKENS",
        "response": {
            "id": "77d630a0",
            "generations": [{"id": "d9b0", "text": "the answer", "finish_reason": "MAX_TOKENS"}],
        },
    }
)
V1_GENERATE = KONG_GENERATE_FRAME + GENERATE_END


def _v1_tool_events() -> bytes:
    out = [line({"is_finished": False, "event_type": "stream-start", "generation_id": "g-tools"})]
    out += [
        line({"is_finished": False, "event_type": "tool-calls-chunk", "text": t})
        for t in ["I", " will", " use", " reverse_string", "."]
    ]
    for index, word in enumerate(["hello", "goodbye"]):
        out.append(
            line(
                {
                    "is_finished": False,
                    "event_type": "tool-calls-chunk",
                    "tool_call_delta": {"index": index, "name": "reverse_string"},
                }
            )
        )
        for frag in ['{\n    "', "s", '": "', word, '"\n}']:
            out.append(
                line(
                    {
                        "is_finished": False,
                        "event_type": "tool-calls-chunk",
                        "tool_call_delta": {"index": index, "parameters": frag},
                    }
                )
            )
    calls = [
        {"name": "reverse_string", "parameters": {"s": "hello"}},
        {"name": "reverse_string", "parameters": {"s": "goodbye"}},
    ]
    out.append(
        line(
            {
                "is_finished": False,
                "event_type": "tool-calls-generation",
                "text": "I will use reverse_string.",
                "tool_calls": calls,
            }
        )
    )
    out.append(
        line(
            {
                "is_finished": True,
                "event_type": "stream-end",
                "finish_reason": "COMPLETE",
                "response": {
                    "text": "I will use reverse_string.",
                    "generation_id": "g-tools",
                    "tool_calls": calls,
                    "finish_reason": "COMPLETE",
                    "meta": {"billed_units": {"input_tokens": 30, "output_tokens": 40}},
                },
            }
        )
    )
    return b"".join(out)


V1_TOOLS = _v1_tool_events()


def test_kongs_real_v1_chat_frame_at_every_split_point() -> None:
    # Kong's recorded frame is one text-generation event: its text reaches the client
    # whatever the cut, and a stream that stops there never said it was complete.
    for chunks in [*every_split(KONG_CHAT_FRAME), byte_by_byte(KONG_CHAT_FRAME)]:
        t = v1()
        evs = events(run(t, chunks))
        assert text_of(evs) == "the answer"
        assert "ended before the answer was complete" in evs[-2]["error"]["message"]
        assert t.error is not None


def test_kongs_real_generate_frame_at_every_split_point() -> None:
    for chunks in [*every_split(KONG_GENERATE_FRAME), byte_by_byte(KONG_GENERATE_FRAME)]:
        t = v1(generate=True)
        out = []
        for c in chunks:
            out += t.feed(c)
        # forwarded as soon as its line is whole, before the end of the stream
        assert [c for e in events(out) for c in e["choices"]] == [
            {"index": 0, "text": "the answer", "logprobs": None, "finish_reason": None}
        ]


@pytest.mark.parametrize("wants_usage", [False, True])
def test_v1_chat_stream(wants_usage: bool) -> None:
    t = v1(wants_usage)
    evs = events(run(t, [V1_CHAT]))
    assert evs[0]["id"] == "6789661c"
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(evs) == "the answer"
    assert finishes(evs) == ["stop"]
    assert evs[-1] == "[DONE]"
    if wants_usage:
        assert evs[-2]["usage"] == {"prompt_tokens": 70, "completion_tokens": 2, "total_tokens": 72}
    else:
        assert all("usage" not in e for e in evs[:-1])
    assert t.usage.prompt_tokens == 70 and t.error is None
    assert t.assembled()["choices"][0]["message"]["content"] == "the answer"


@pytest.mark.parametrize(
    "raw, generate",
    [(V1_CHAT, False), (V1_TOOLS, False), (V1_GENERATE, True)],
    ids=["chat", "tools", "generate"],
)
def test_v1_every_split_gives_the_same_answer(raw: bytes, generate: bool) -> None:
    whole = normalized(run(v1(True, generate), [raw]))
    for chunks in every_split(raw):
        assert normalized(run(v1(True, generate), chunks)) == whole
    t = v1(True, generate)
    assert normalized(run(t, byte_by_byte(raw))) == whole
    assert t.error is None


def test_v1_tool_stream() -> None:
    t = v1()
    evs = events(run(t, [V1_TOOLS]))
    assert text_of(evs) == "I will use reverse_string."  # the plan, once
    calls = calls_of(evs)
    assert [(c["name"], json.loads(c["args"])) for c in calls.values()] == [
        ("reverse_string", {"s": "hello"}),
        ("reverse_string", {"s": "goodbye"}),
    ]
    assert list(calls) == [0, 1]
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert calls[0]["id"] != calls[1]["id"]
    assert finishes(evs) == ["tool_calls"]
    assert t.usage.prompt_tokens == 30  # billed units: this answer has no counts
    message = t.assembled()["choices"][0]["message"]
    assert [c["id"] for c in message["tool_calls"]] == [calls[0]["id"], calls[1]["id"]]


def test_v1_tool_calls_generation_without_chunks() -> None:
    raw = b"".join(
        line(e)
        for e in [
            {"is_finished": False, "event_type": "stream-start", "generation_id": "g"},
            {
                "is_finished": False,
                "event_type": "tool-calls-generation",
                "text": "Checking.",
                "tool_calls": [{"name": "get_weather", "parameters": {"city": "Paris"}}],
            },
            {
                "is_finished": True,
                "event_type": "stream-end",
                "finish_reason": "COMPLETE",
                "response": {"text": "Checking."},
            },
        ]
    )
    evs = events(run(v1(), [raw]))
    assert text_of(evs) == "Checking."
    assert [(c["name"], c["args"]) for c in calls_of(evs).values()] == [
        ("get_weather", '{"city":"Paris"}')
    ]
    assert finishes(evs) == ["tool_calls"]


def test_v1_parameters_before_the_name_are_held() -> None:
    raw = b"".join(
        line(e)
        for e in [
            {
                "event_type": "tool-calls-chunk",
                "tool_call_delta": {"index": 0, "parameters": '{"a": '},
            },
            {"event_type": "tool-calls-chunk", "tool_call_delta": {"index": 0, "name": "f"}},
            {"event_type": "tool-calls-chunk", "tool_call_delta": {"index": 0, "parameters": "1}"}},
            {"event_type": "stream-end", "finish_reason": "COMPLETE", "response": {}},
        ]
    )
    assert [(c["name"], c["args"]) for c in calls_of(events(run(v1(), [raw]))).values()] == [
        ("f", '{"a": 1}')
    ]


def test_v1_generate_stream() -> None:
    t = v1(wants_usage=True, generate=True)
    evs = events(run(t, [V1_GENERATE]))
    assert [c for e in evs[:-1] for c in e["choices"]] == [
        {"index": 0, "text": "the answer", "logprobs": None, "finish_reason": None},
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"},
    ]
    assert evs[0]["object"] == "text_completion" and evs[0]["id"].startswith("cmpl-")
    # Cohere's generate stream reports no usage: no usage chunk, and the gateway estimates
    assert t.usage is None and evs[-1] == "[DONE]"
    assert t.assembled()["choices"][0] == {
        "index": 0,
        "text": "the answer",
        "logprobs": None,
        "finish_reason": "length",
    }


def test_v1_generate_several_generations() -> None:
    raw = b"".join(
        line(e)
        for e in [
            {"text": "a", "index": 0, "is_finished": False, "event_type": "text-generation"},
            {"text": "b", "index": 1, "is_finished": False, "event_type": "text-generation"},
            {
                "is_finished": True,
                "event_type": "stream-end",
                "finish_reason": "COMPLETE",
                "response": {"id": "x"},
            },
        ]
    )
    t = v1(generate=True)
    evs = events(run(t, [raw]))
    assert [
        (c["index"], c["text"], c["finish_reason"]) for e in evs[:-1] for c in e["choices"]
    ] == [
        (0, "a", None),
        (1, "b", None),
        (0, "", "stop"),
        (1, "", "stop"),
    ]
    assert [c["text"] for c in t.assembled()["choices"]] == ["a", "b"]


@pytest.mark.parametrize(
    "end, status, fragment",
    [
        (
            {
                "event_type": "stream-error",
                "finish_reason": "ERROR",
                "err": "backend exploded",
                "is_finished": True,
            },
            502,
            "backend exploded",
        ),
        (
            {
                "event_type": "stream-end",
                "finish_reason": "ERROR",
                "response": {},
                "is_finished": True,
            },
            502,
            "finish_reason ERROR",
        ),
        (
            {
                "event_type": "stream-end",
                "finish_reason": "TIMEOUT",
                "response": {},
                "is_finished": True,
            },
            504,
            "TIMEOUT",
        ),
    ],
)
@pytest.mark.parametrize("generate", [False, True])
def test_v1_failures_mid_stream(
    end: dict[str, Any], status: int, fragment: str, generate: bool
) -> None:
    t = v1(generate=generate)
    evs = events(run(t, [KONG_CHAT_FRAME + line(end)]))
    assert text_of(evs) == "the answer"
    assert fragment in evs[-2]["error"]["message"] and evs[-1] == "[DONE]"
    assert t.error.status == status


def test_v1_error_toxic_is_content_filter() -> None:
    raw = KONG_CHAT_FRAME + V1_END.replace(b'"COMPLETE"', b'"ERROR_TOXIC"')
    assert finishes(events(run(v1(), [raw]))) == ["content_filter"]


def test_v1_sse_lines_and_garbage() -> None:
    # `Accepts: text/event-stream` turns v1 streams into SSE: read them too; a line that
    # is not JSON is skipped
    raw = (
        b"event: text-generation\ndata: "
        + KONG_CHAT_FRAME.strip()
        + b"\n\nnot json at all\r\n"
        + V1_END
    )
    t = v1()
    evs = events(run(t, [raw]))
    assert text_of(evs) == "the answer" and finishes(evs) == ["stop"] and t.error is None


def test_v1_stream_end_carrying_the_whole_text() -> None:
    evs = events(run(v1(), [V1_END]))
    assert text_of(evs) == "the answer" and finishes(evs) == ["stop"]


def test_v1_stream_cut_by_a_failure_drops_the_half_line() -> None:
    t = v1()
    failure = ProviderError(502, "connection reset")
    evs = events(run(t, [V1_CHAT[: len(V1_CHAT) - 40]], failure))
    assert text_of(evs) == "the answer"
    assert evs[-2]["error"]["message"] == "connection reset" and t.error is failure


@pytest.mark.parametrize("seed", range(20))
def test_translators_never_raise_on_garbage(seed: int) -> None:
    rng = random.Random(seed)
    blob = bytes(rng.randrange(256) for _ in range(400))
    pieces = [V2_TEXT[:50], blob, V1_CHAT[:30], b"\n\n", blob[::-1]]
    for t in (v2(), v1(), v1(generate=True), v2(completions=True)):
        evs = events(run(t, pieces))
        assert evs[-1] == "[DONE]" and "error" in evs[-2]
        assert t.error is not None


# ------------------------------------------------------------------ native and preserve


@pytest.mark.parametrize(
    "path, kind, generate",
    [
        ("/v2/chat", CohereV2Stream, False),
        ("/v1/chat", CohereV1Stream, False),
        ("/v1/generate", CohereV1Stream, True),
    ],
)
def test_observers_follow_the_native_path(path: str, kind: type, generate: bool) -> None:
    s = cspec({"stream": True}, PRESERVE)
    s.path = path
    t = PROVIDER.stream_translator(s)
    assert type(t) is kind
    if generate:
        assert t.assembled()["object"] == "text_completion"
    native = cspec({"stream": True}, CHAT)
    native.llm_format, native.path = "cohere", path
    assert type(PROVIDER.stream_translator(native)) is kind


def test_preserve_request_passes_through() -> None:
    s = cspec({"x": 1}, PRESERVE, upstream_url="http://127.0.0.1:9")
    s.path, s.query, s.raw_body, s.method = "/v1/tokenize", "a=b", b'{"x": 1}', "POST"
    req = PROVIDER.build_request(s)
    assert (req.url, req.body, req.method) == (
        "http://127.0.0.1:9/v1/tokenize?a=b",
        b'{"x": 1}',
        "POST",
    )


@pytest.mark.parametrize(
    "answer, usage",
    [
        (V2_ANSWER, (71, 418)),
        ({"text": "x", "meta": {"tokens": {"input_tokens": 9, "output_tokens": 1}}}, (9, 1)),
        (
            {"generations": [], "meta": {"billed_units": {"input_tokens": 3, "output_tokens": 4}}},
            (3, 4),
        ),
    ],
)
def test_native_answers_are_observed(answer: dict[str, Any], usage: tuple[int, int]) -> None:
    s = cspec({"model": MODEL, "messages": HI}, CHAT)
    s.llm_format = "cohere"
    body = json.dumps(answer).encode()
    reply = PROVIDER.parse_native_response(s, 200, {}, body)
    assert reply.body == body  # unchanged
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == usage
    assert reply.model == MODEL
