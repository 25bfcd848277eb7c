"""providers/openai_compatible.py: vLLM and the named OpenAI-compatible hosts.

URLs (default base URLs, path prefixes, the upstream_url rules), each host's request
quirks, usage normalization (DeepSeek cache hits, xAI reasoning tokens), errors,
embeddings as base64, and the stream translator cut at every byte of realistic streams.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from addons.config import ConfigError
from providers import registry, sse
from providers.base import CallSpec, ProviderError, RouteType, Usage
from providers.openai_compatible import (
    HOSTS,
    PROVIDERS,
    CompatibleStream,
    OpenAICompatible,
    host_url,
    usage_from_compatible,
)
from tests.fakes.openai_like import check_request, dialects
from tests.unit.conftest import byte_by_byte, every_split, fixture, load, spec

CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE = (
    RouteType.CHAT,
    RouteType.COMPLETIONS,
    RouteType.EMBEDDINGS,
    RouteType.PRESERVE,
)
BY_NAME: dict[str, OpenAICompatible] = {p.name: p for p in PROVIDERS}  # type: ignore[misc]
HI = [{"role": "user", "content": "hi"}]


def provider(name: str) -> OpenAICompatible:
    return BY_NAME[name]


def cspec(
    route_type: RouteType = CHAT,
    body: dict[str, Any] | None = None,
    *,
    model: str | None = "m-1",
    stream: bool = False,
    wants_usage: bool = False,
    **options: Any,
) -> CallSpec:
    if body is None:
        body = {
            CHAT: {"messages": HI},
            COMPLETIONS: {"prompt": "def f(", "suffix": "return 1"},
            EMBEDDINGS: {"input": "hi"},
            PRESERVE: {},
        }[route_type]
    return spec(route_type, body, model=model, stream=stream, wants_usage=wants_usage, **options)


def sent(
    name: str, body: dict[str, Any], route_type: RouteType = CHAT, **kw: Any
) -> dict[str, Any]:
    """The JSON body the named provider sends upstream."""
    if provider(name).host.base_url is None:
        kw.setdefault("upstream_url", "http://127.0.0.1:1")
    return json.loads(provider(name).build_request(cspec(route_type, body, **kw)).body)


# =========================================================================== registry


def test_every_host_is_a_registered_provider_with_openai_auth() -> None:
    names = [h.name for h in HOSTS]
    assert len(names) == len(set(names))
    assert set(names) == {
        "vllm",
        "deepseek",
        "xai",
        "groq",
        "together",
        "openrouter",
        "cerebras",
        "dashscope",
        "databricks",
    }
    for name in names:
        p = registry()[name]
        assert isinstance(p, OpenAICompatible) and p.name == name
        assert p.auth_headers == ("authorization",)
        assert p.native_format is None
        assert PRESERVE in p.route_types and CHAT in p.route_types


@pytest.mark.parametrize(
    "name, served",
    [
        ("vllm", {CHAT, COMPLETIONS, EMBEDDINGS}),
        ("deepseek", {CHAT, COMPLETIONS}),
        ("xai", {CHAT, COMPLETIONS}),
        ("groq", {CHAT}),
        ("together", {CHAT, COMPLETIONS, EMBEDDINGS}),
        ("openrouter", {CHAT, COMPLETIONS, EMBEDDINGS}),
        ("cerebras", {CHAT, COMPLETIONS}),
        ("dashscope", {CHAT, COMPLETIONS, EMBEDDINGS}),
        ("databricks", {CHAT, COMPLETIONS, EMBEDDINGS}),
    ],
)
def test_route_types_served(name: str, served: set[RouteType]) -> None:
    assert provider(name).route_types == served | {PRESERVE}


# =============================================================================== URLs


@pytest.mark.parametrize(
    "name, route_type, upstream_url, expected",
    [
        # default base URLs and each host's path prefix
        ("deepseek", CHAT, None, "https://api.deepseek.com/chat/completions"),
        ("deepseek", COMPLETIONS, None, "https://api.deepseek.com/beta/completions"),  # FIM
        ("xai", CHAT, None, "https://api.x.ai/v1/chat/completions"),
        ("xai", COMPLETIONS, None, "https://api.x.ai/v1/completions"),
        ("groq", CHAT, None, "https://api.groq.com/openai/v1/chat/completions"),
        ("together", EMBEDDINGS, None, "https://api.together.xyz/v1/embeddings"),
        ("openrouter", CHAT, None, "https://openrouter.ai/api/v1/chat/completions"),
        ("openrouter", EMBEDDINGS, None, "https://openrouter.ai/api/v1/embeddings"),
        ("cerebras", COMPLETIONS, None, "https://api.cerebras.ai/v1/completions"),
        (
            "dashscope",
            CHAT,
            None,
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        # a bare origin keeps the host's whole path, prefix included
        ("vllm", CHAT, "http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("vllm", EMBEDDINGS, "http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/embeddings"),
        ("groq", CHAT, "http://127.0.0.1:9", "http://127.0.0.1:9/openai/v1/chat/completions"),
        ("deepseek", COMPLETIONS, "http://127.0.0.1:9", "http://127.0.0.1:9/beta/completions"),
        (
            "dashscope",  # the China region
            EMBEDDINGS,
            "https://dashscope.aliyuncs.com",
            "https://dashscope.aliyuncs.com/compatible-mode/v1/embeddings",
        ),
        # a leading part of the path, as the hosts' docs give base URLs, is completed
        ("vllm", COMPLETIONS, "http://vllm:8000/v1", "http://vllm:8000/v1/completions"),
        ("vllm", CHAT, "http://vllm:8000/v1/", "http://vllm:8000/v1/chat/completions"),
        ("groq", CHAT, "https://proxy/openai", "https://proxy/openai/v1/chat/completions"),
        (
            "databricks",
            CHAT,
            "https://adb-1.azuredatabricks.net/serving-endpoints",
            "https://adb-1.azuredatabricks.net/serving-endpoints/chat/completions",
        ),
        (
            "databricks",
            EMBEDDINGS,
            "https://adb-1.azuredatabricks.net",
            "https://adb-1.azuredatabricks.net/serving-endpoints/embeddings",
        ),
        # ... keeping its query
        ("vllm", CHAT, "http://vllm:8000/v1?x=1", "http://vllm:8000/v1/chat/completions?x=1"),
        # the full path, or any other path, is used as written
        (
            "vllm",
            CHAT,
            "http://vllm:8000/v1/chat/completions",
            "http://vllm:8000/v1/chat/completions",
        ),
        ("vllm", CHAT, "https://gw.example/custom/chat", "https://gw.example/custom/chat"),
        ("vllm", CHAT, "http://vllm:8000/v", "http://vllm:8000/v"),  # whole segments only
        ("groq", CHAT, "https://proxy/v1", "https://proxy/v1"),
    ],
)
def test_upstream_urls(
    name: str, route_type: RouteType, upstream_url: str | None, expected: str
) -> None:
    req = provider(name).build_request(cspec(route_type, upstream_url=upstream_url))
    assert req.url == expected
    assert req.method == "POST"


def test_host_url_needs_a_base_or_an_upstream_url() -> None:
    assert host_url(None, "https://h/p", "/p/x") == "https://h/p/x"
    assert host_url("http://o", None, "/a/b") == "http://o/a/b"


@pytest.mark.parametrize(
    "name, upstream_url, path, query, expected",
    [
        ("groq", None, "/v1/models", "", "https://api.groq.com/openai/v1/models"),
        ("openrouter", None, "/v1/credits", "a=1", "https://openrouter.ai/api/v1/credits?a=1"),
        ("vllm", "http://127.0.0.1:8000", "/tokenize", "", "http://127.0.0.1:8000/tokenize"),
    ],
)
def test_preserve_forwards_the_clients_path_below_the_base_url(
    name: str, upstream_url: str | None, path: str, query: str, expected: str
) -> None:
    raw = b'{"anything": [1, 2]}'
    s = CallSpec(
        route_type=PRESERVE,
        body=json.loads(raw),
        model=None,
        options=cspec().options.model_copy(update={"upstream_url": upstream_url}),
        stream=False,
        path=path,
        query=query,
        method="POST",
        raw_body=raw,
    )
    req = provider(name).build_request(s)
    assert (req.url, req.body) == (expected, raw)


# ============================================================================= config


def config(provider_name: str, options: str = "{}", route_type: str = "llm/v1/chat") -> str:
    return f"""
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: r
        paths: ["/r"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              auth: {{header_name: Authorization, header_value: "Bearer k"}}
              model:
                provider: {provider_name}
                name: some-model
                options: {options}
"""


@pytest.mark.parametrize(
    "name, example", [("vllm", "http://127.0.0.1:8000"), ("databricks", "serving-endpoints")]
)
def test_hosts_without_a_default_host_need_upstream_url(name: str, example: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(config(name))
    message = str(e.value)
    assert "model.options.upstream_url" in message and name in message
    assert example in message  # an example to copy
    load(config(name, '{upstream_url: "http://127.0.0.1:8000"}'))
    load(config(name, '{upstream_url: "$(headers.x-upstream)"}'))  # templated: per request


@pytest.mark.parametrize("name", ["deepseek", "groq", "xai", "openrouter", "dashscope"])
def test_hosted_apis_need_no_upstream_url(name: str) -> None:
    load(config(name))


@pytest.mark.parametrize(
    "name, route_type",
    [
        ("groq", "llm/v1/completions"),
        ("groq", "llm/v1/embeddings"),
        ("deepseek", "llm/v1/embeddings"),
    ],
)
def test_an_operation_a_host_lacks_is_a_load_error_naming_both(name: str, route_type: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(config(name, route_type=route_type))
    assert name in str(e.value) and route_type in str(e.value)


# ========================================================================== requests


def test_the_request_is_the_clients_with_the_model_and_no_credentials() -> None:
    body = {"messages": HI, "temperature": 0.2, "model": "asked"}
    s = cspec(CHAT, body, model="configured", upstream_url="http://127.0.0.1:8000")
    req = provider("vllm").build_request(s)
    assert json.loads(req.body) == {"messages": HI, "temperature": 0.2, "model": "configured"}
    assert req.headers == {"content-type": "application/json", "accept": "application/json"}
    assert s.body == body  # the spec is not mutated


@pytest.mark.parametrize(
    "name, asks_usage",
    [
        ("vllm", True),
        ("deepseek", True),
        ("xai", True),
        ("groq", True),
        ("openrouter", True),
        ("dashscope", True),
        ("together", False),
        ("cerebras", False),
        ("databricks", False),
    ],
)
def test_stream_options_only_to_hosts_that_take_it(name: str, asks_usage: bool) -> None:
    body = {"messages": HI, "stream": True, "stream_options": {"include_usage": False}}
    out = sent(name, body, stream=True)
    assert out["stream"] is True
    if asks_usage:
        assert out["stream_options"] == {"include_usage": True}
    else:
        assert "stream_options" not in out  # the host rejects it, the client's included
    req = provider(name).build_request(
        cspec(
            CHAT,
            body,
            stream=True,
            upstream_url="http://h:1" if not provider(name).host.base_url else None,
        )
    )
    assert req.stream is True and req.headers["accept"] == "text/event-stream"


@pytest.mark.parametrize("name", [h.name for h in HOSTS])
def test_a_buffered_call_sends_no_stream_fields(name: str) -> None:
    out = sent(name, {"messages": HI, "stream": False, "stream_options": {"include_usage": True}})
    assert "stream" not in out and "stream_options" not in out


@pytest.mark.parametrize(
    "name, keeps",
    [
        ("vllm", True),
        ("together", True),
        ("openrouter", True),
        ("dashscope", True),
        ("databricks", True),
        ("deepseek", False),
        ("groq", False),
        ("xai", False),
        ("cerebras", False),
    ],
)
def test_top_k_only_to_hosts_that_take_it(name: str, keeps: bool) -> None:
    assert ("top_k" in sent(name, {"messages": HI, "top_k": 40})) is keeps


@pytest.mark.parametrize(
    "name, renamed",
    [
        ("deepseek", True),
        ("together", True),
        ("dashscope", True),
        ("databricks", True),
        ("vllm", False),
        ("groq", False),
        ("xai", False),
        ("cerebras", False),
        ("openrouter", False),
    ],
)
def test_max_completion_tokens_for_hosts_that_only_know_max_tokens(
    name: str, renamed: bool
) -> None:
    out = sent(name, {"messages": HI, "max_completion_tokens": 300})
    if renamed:
        assert out["max_tokens"] == 300 and "max_completion_tokens" not in out
    else:
        assert out["max_completion_tokens"] == 300 and "max_tokens" not in out
    # a max_tokens the client sent as well wins (it is the field the host reads)
    if renamed:
        assert (
            sent(name, {"messages": HI, "max_tokens": 5, "max_completion_tokens": 9})["max_tokens"]
            == 5
        )


def test_groq_quirks_remove_what_says_nothing_and_keep_what_matters() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "name": "alice", "content": "hi"},
    ]
    neutral = {"messages": messages, "n": 1, "logprobs": False, "top_logprobs": 0, "logit_bias": {}}
    out = sent("groq", neutral)
    assert out == {"messages": [messages[0], {"role": "user", "content": "hi"}], "model": "m-1"}
    # a real request for what Groq lacks is sent, so that Groq's 400 tells the client
    meaningful = {"messages": HI, "n": 2, "logprobs": True, "logit_bias": {"50256": -100}}
    assert {k: v for k, v in sent("groq", meaningful).items() if k != "model"} == meaningful


def test_cerebras_quirks() -> None:
    out = sent(
        "cerebras",
        {
            "messages": HI,
            "parallel_tool_calls": True,
            "service_tier": "auto",
            "frequency_penalty": 0,
            "presence_penalty": 0.0,
        },
    )
    assert out == {"messages": HI, "model": "m-1"}
    kept = sent("cerebras", {"messages": HI, "frequency_penalty": 0.5})
    assert kept["frequency_penalty"] == 0.5


def test_deepseek_gets_the_reasoning_of_tool_turns_back() -> None:
    # DeepSeek's thinking mode answers 400 when an assistant turn that called tools
    # comes back without its reasoning_content: it is forwarded as the client sent it
    assistant = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "I need the weather.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
        ],
    }
    messages = [*HI, assistant, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert sent("deepseek", {"messages": messages})["messages"] == messages


@pytest.mark.parametrize(
    "name, forwarded",
    [
        ("vllm", True),
        ("openrouter", True),
        ("together", False),
        ("dashscope", False),
        ("databricks", False),
    ],
)
def test_embeddings_base64_is_asked_only_of_hosts_that_answer_it(
    name: str, forwarded: bool
) -> None:
    out = sent(name, {"input": ["a", "b"], "encoding_format": "base64"}, EMBEDDINGS)
    assert ("encoding_format" in out) is forwarded
    assert sent(name, {"input": "a", "encoding_format": "float"}, EMBEDDINGS)[
        "encoding_format"
    ] == ("float")


@pytest.mark.parametrize("name", ["vllm", "deepseek", "xai", "groq", "openrouter", "together"])
@pytest.mark.parametrize("stream", [False, True])
def test_the_fakes_accept_what_the_adapter_sends(name: str, stream: bool) -> None:
    """The hosts' fakes reject what the real APIs reject: every request the adapter
    builds for them, quirks applied, must pass."""
    d = dialects("k")[name]
    body = {
        "messages": [{"role": "user", "name": "u", "content": "hi"}],
        "max_completion_tokens": 50,
        "n": 1,
        "logprobs": False,
        "stream_options": {"include_usage": True},
        "top_k": 3,
    }
    out = sent(name, body, stream=stream)
    assert check_request(d, "chat", out) is None
    if "embeddings" in d.paths:
        e = sent(name, {"input": ["x"], "encoding_format": "base64"}, EMBEDDINGS)
        assert check_request(d, "embeddings", e) is None


def test_the_fakes_do_reject_what_the_hosts_reject() -> None:
    d = dialects("k")
    assert "stream_options" in (
        check_request(
            d["together"],
            "chat",
            {
                "model": "m",
                "messages": HI,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        or ""
    )
    assert "name" in (
        check_request(
            d["groq"],
            "chat",
            {"model": "m", "messages": [{"role": "user", "name": "a", "content": "x"}]},
        )
        or ""
    )
    assert check_request(
        d["deepseek"], "chat", {"model": "m", "messages": HI, "max_completion_tokens": 1}
    )


# ============================================================================ usage


@pytest.mark.parametrize(
    "usage, expected",
    [
        # OpenAI's shape (vLLM, Groq, Cerebras, Together, Databricks)
        (
            {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
            Usage(10, 4),
        ),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 40,
                "total_tokens": 140,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 30},
            },
            Usage(100, 40, cache_read_tokens=64, reasoning_tokens=30),  # not counted twice
        ),
        # DeepSeek: prompt_tokens = hits + misses, hits are cache reads
        (
            {
                "prompt_tokens": 1200,
                "completion_tokens": 80,
                "total_tokens": 1280,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "prompt_cache_hit_tokens": 1024,
                "prompt_cache_miss_tokens": 176,
                "completion_tokens_details": {"reasoning_tokens": 50},
            },
            Usage(1200, 80, cache_read_tokens=1024, reasoning_tokens=50),
        ),
        (  # an older DeepSeek answer with the hit/miss fields only
            {"completion_tokens": 5, "prompt_cache_hit_tokens": 7, "prompt_cache_miss_tokens": 3},
            Usage(10, 5, cache_read_tokens=7),
        ),
        # xAI: reasoning tokens apart from completion tokens (total counts both)
        (
            {
                "prompt_tokens": 30,
                "completion_tokens": 12,
                "total_tokens": 342,
                "prompt_tokens_details": {"text_tokens": 30, "cached_tokens": 6},
                "completion_tokens_details": {"reasoning_tokens": 300},
            },
            Usage(30, 312, cache_read_tokens=6, reasoning_tokens=300),
        ),
        # OpenRouter: the cost it billed is the record's cost; cache writes counted
        (
            {
                "prompt_tokens": 2000,
                "completion_tokens": 10,
                "total_tokens": 2010,
                "cost": 0.0123,
                "prompt_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 400},
            },
            Usage(2000, 10, cache_read_tokens=1500, cache_write_tokens=400, reported_cost=0.0123),
        ),
        # DashScope's explicit cache
        (
            {
                "prompt_tokens": 900,
                "completion_tokens": 3,
                "total_tokens": 903,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_input_tokens": 850},
            },
            Usage(900, 3, cache_write_tokens=850),
        ),
        # embeddings
        ({"prompt_tokens": 8, "total_tokens": 8}, Usage(8, 0)),
    ],
)
def test_usage_normalization(usage: dict[str, Any], expected: Usage) -> None:
    assert usage_from_compatible(usage) == expected


def test_no_usage_is_none_not_zero() -> None:
    assert usage_from_compatible(None) is None
    assert provider("vllm").usage_from({"choices": []}) is None


# =========================================================================== answers

DEEPSEEK_ANSWER = {
    "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
    "object": "chat.completion",
    "created": 1738000000,
    "model": "deepseek-reasoner",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "9.8 is greater.",
                "reasoning_content": "Compare 9.11 and 9.80: 9.80 is larger.",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 18,
        "completion_tokens": 66,
        "total_tokens": 84,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 52},
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": 18,
    },
    "system_fingerprint": "fp_7e73fd9a08",
}


def test_answers_pass_through_byte_for_byte_with_usage_read() -> None:
    raw = json.dumps(DEEPSEEK_ANSWER, indent=1).encode()
    reply = provider("deepseek").parse_response(cspec(), 200, {}, raw)
    assert reply.body == raw  # reasoning_content and DeepSeek's own fields reach the client
    assert reply.data["choices"][0]["message"]["reasoning_content"].startswith("Compare")
    assert reply.model == "deepseek-reasoner"
    assert reply.usage == Usage(18, 66, reasoning_tokens=52)


@pytest.mark.parametrize(
    "route_type, body, missing",
    [
        (CHAT, b'{"id": "x", "usage": {}}', "choices"),
        (COMPLETIONS, b'{"id": "x"}', "choices"),
        (EMBEDDINGS, b'{"object": "list"}', "data"),
        (CHAT, b"<html>oops</html>", "not a JSON object"),
    ],
)
def test_an_answer_that_cannot_be_used_is_a_502_naming_what_is_missing(
    route_type: RouteType, body: bytes, missing: str
) -> None:
    with pytest.raises(ProviderError) as e:
        provider("xai").parse_response(cspec(route_type), 200, {}, body)
    assert e.value.status == 502 and missing in e.value.message and "xai" in e.value.message


def embeddings_answer(vectors: list[Any]) -> bytes:
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": "BAAI/bge-m3",
            "usage": {"prompt_tokens": 6, "total_tokens": 6},
        }
    ).encode()


def decode(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_float_vectors_become_base64_when_the_client_asked_for_it() -> None:
    vectors = [[0.5, -1.25, 3.0], [0.125, 0.0, -2.5]]
    s = cspec(EMBEDDINGS, {"input": ["a", "b"], "encoding_format": "base64"})
    reply = provider("together").parse_response(s, 200, {}, embeddings_answer(vectors))
    out = json.loads(reply.body)
    assert [decode(d["embedding"]) for d in out["data"]] == vectors
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert reply.usage == Usage(6, 0)


def test_vectors_are_untouched_otherwise() -> None:
    floats = embeddings_answer([[0.5, 1.5]])
    s = cspec(EMBEDDINGS, {"input": "a"})
    assert provider("vllm").parse_response(s, 200, {}, floats).body == floats
    # a host that already answered base64
    b64 = embeddings_answer([base64.b64encode(struct.pack("<2f", 0.5, 1.5)).decode()])
    s = cspec(EMBEDDINGS, {"input": "a", "encoding_format": "base64"})
    assert provider("vllm").parse_response(s, 200, {}, b64).body == b64


def test_an_embedding_item_without_a_vector_is_a_502() -> None:
    body = json.dumps({"object": "list", "data": [{"index": 0}]}).encode()
    with pytest.raises(ProviderError) as e:
        provider("vllm").parse_response(cspec(EMBEDDINGS), 200, {}, body)
    assert e.value.status == 502 and "embedding" in e.value.message


# ============================================================================ errors


@pytest.mark.parametrize(
    "name, status, body, expected",
    [
        (  # vLLM: FastAPI's error object at the top level
            "vllm",
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            (
                400,
                "This model's maximum context length is 4096 tokens.",
                "invalid_request_error",
                400,
            ),
        ),
        (  # OpenAI's shape (DeepSeek, Groq, xAI, Together, ...)
            "deepseek",
            402,
            {
                "error": {
                    "message": "Insufficient Balance",
                    "type": "unknown_error",
                    "param": None,
                    "code": "invalid_request_error",
                }
            },
            (402, "Insufficient Balance", "unknown_error", "invalid_request_error"),
        ),
        (
            "groq",
            429,
            {
                "error": {
                    "message": "Rate limit reached for model",
                    "type": "tokens",
                    "code": "rate_limit_exceeded",
                }
            },
            (429, "Rate limit reached for model", "tokens", "rate_limit_exceeded"),
        ),
        (  # OpenRouter: a numeric code, no type
            "openrouter",
            402,
            {"error": {"code": 402, "message": "Insufficient credits"}},
            (402, "Insufficient credits", "invalid_request_error", 402),
        ),
        (
            "databricks",
            404,
            {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Endpoint 'x' not found."},
            (404, "Endpoint 'x' not found.", "not_found_error", None),
        ),
    ],
)
def test_upstream_errors_keep_status_and_message(
    name: str, status: int, body: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    err = provider(name).parse_error(status, {}, json.dumps(body).encode())
    assert (err.status, err.message, err.type, err.code) == expected
    assert set(err.to_openai()["error"]) == {"message", "type", "param", "code"}


def test_an_html_error_page_is_named_as_such() -> None:
    err = provider("vllm").parse_error(502, {}, b"<html><body>Bad Gateway</body></html>")
    assert err.status == 502 and "HTML" in err.message and "vllm" in err.message


# =========================================================================== streams


def events(*objs: Any) -> bytes:
    out = b""
    for o in objs:
        if isinstance(o, bytes):
            out += o
        else:
            out += b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n"
    return out


def deepseek_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "d9b1b8b0-1",
        "object": "chat.completion.chunk",
        "created": 1738000000,
        "model": "deepseek-reasoner",
        "system_fingerprint": "fp_7e73fd9a08",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


DEEPSEEK_USAGE = {
    "id": "d9b1b8b0-1",
    "object": "chat.completion.chunk",
    "created": 1738000000,
    "model": "deepseek-reasoner",
    "system_fingerprint": "fp_7e73fd9a08",
    "choices": [],
    "usage": {
        "prompt_tokens": 1040,
        "completion_tokens": 61,
        "total_tokens": 1101,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 48},
        "prompt_cache_hit_tokens": 1024,
        "prompt_cache_miss_tokens": 16,
    },
}

# A DeepSeek reasoner stream: thinking first, then the answer, as the API sends it
DEEPSEEK_STREAM = events(
    deepseek_chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
    deepseek_chunk({"content": None, "reasoning_content": "Compare "}),
    deepseek_chunk({"content": None, "reasoning_content": "9.11 and 9.8 — "}),
    deepseek_chunk({"content": None, "reasoning_content": "tenths: 1 < 8."}),
    deepseek_chunk({"content": "9.8", "reasoning_content": None}),
    deepseek_chunk({"content": " is greater.", "reasoning_content": None}),
    deepseek_chunk({"content": "", "reasoning_content": None}, "stop"),
    DEEPSEEK_USAGE,
    b"data: [DONE]\n\n",
)


def groq_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-f51b2cd2",
        "object": "chat.completion.chunk",
        "created": 1730241104,
        "model": "llama-3.3-70b-versatile",
        "system_fingerprint": "fp_179b0f92c9",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


# Groq's older API: usage only in x_groq of the last chunk
GROQ_STREAM = events(
    groq_chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_01"}),
    groq_chunk({"content": "Fast "}),
    groq_chunk({"content": "inference."}),
    groq_chunk(
        {},
        "stop",
        x_groq={
            "id": "req_01",
            "usage": {
                "queue_time": 0.02,
                "prompt_tokens": 40,
                "prompt_time": 0.002,
                "completion_tokens": 3,
                "completion_time": 0.01,
                "total_tokens": 43,
                "total_time": 0.012,
            },
        },
    ),
    b"data: [DONE]\n\n",
)


def openrouter_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "gen-1745000000-abc",
        "provider": "Anthropic",
        "model": "anthropic/claude-sonnet-4",
        "object": "chat.completion.chunk",
        "created": 1745000000,
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": finish}
        ],
    }


# OpenRouter: keep-alive comments, `reasoning` deltas, a tool call, usage with cost
OPENROUTER_STREAM = events(
    b": OPENROUTER PROCESSING\n\n",
    openrouter_chunk({"role": "assistant", "content": "", "reasoning": "Need the weather."}),
    b": OPENROUTER PROCESSING\n\n",
    openrouter_chunk({"role": "assistant", "content": "Checking."}),
    openrouter_chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_01",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        }
    ),
    openrouter_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    openrouter_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    openrouter_chunk({"role": "assistant", "content": ""}, "tool_calls"),
    {
        "id": "gen-1745000000-abc",
        "provider": "Anthropic",
        "model": "anthropic/claude-sonnet-4",
        "object": "chat.completion.chunk",
        "created": 1745000000,
        "choices": [],
        "usage": {
            "prompt_tokens": 520,
            "completion_tokens": 31,
            "total_tokens": 551,
            "cost": 0.002025,
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
    },
    b"data: [DONE]\n\n",
)

# xAI: usage on the finish chunk, then an empty trailing chunk
XAI_STREAM = events(
    {
        "id": "2a2b1f9e",
        "object": "chat.completion.chunk",
        "created": 1752000000,
        "model": "grok-3-mini",
        "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Hmm."}}],
        "system_fingerprint": "fp_x",
    },
    {
        "id": "2a2b1f9e",
        "object": "chat.completion.chunk",
        "created": 1752000000,
        "model": "grok-3-mini",
        "choices": [{"index": 0, "delta": {"content": "Hi!"}}],
        "system_fingerprint": "fp_x",
    },
    {
        "id": "2a2b1f9e",
        "object": "chat.completion.chunk",
        "created": 1752000000,
        "model": "grok-3-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "total_tokens": 211,
            "prompt_tokens_details": {"text_tokens": 9, "cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 200},
        },
        "system_fingerprint": "fp_x",
    },
    {
        "id": "2a2b1f9e",
        "object": "chat.completion.chunk",
        "created": 1752000000,
        "model": "grok-3-mini",
        "choices": [],
        "system_fingerprint": "fp_x",
    },
    b"data: [DONE]\n\n",
)


def translator(
    name: str, *, wants_usage: bool = False, route_type: RouteType = CHAT
) -> CompatibleStream:
    s = cspec(route_type, stream=True, wants_usage=wants_usage, upstream_url="http://h:1")
    return provider(name).stream_translator(s)


def run(t: CompatibleStream, chunks: list[bytes], error: ProviderError | None = None) -> bytes:
    out = b""
    for c in chunks:
        out += b"".join(t.feed(c))
    return out + b"".join(t.finish(error))


def split_events(raw: bytes) -> list[dict[str, Any] | str]:
    out: list[dict[str, Any] | str] = []
    for block in raw.split(b"\n\n"):
        if not block.strip() or block.startswith(b":"):
            continue
        data = block.decode().removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


STREAMS = {
    "deepseek": DEEPSEEK_STREAM,
    "groq": GROQ_STREAM,
    "openrouter": OPENROUTER_STREAM,
    "xai": XAI_STREAM,
}


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("wants_usage", [False, True])
def test_streams_are_the_same_for_every_chunking(name: str, wants_usage: bool) -> None:
    stream = STREAMS[name]
    whole = translator(name, wants_usage=wants_usage)
    expected = run(whole, [stream])
    assert whole.error is None
    for chunks in every_split(stream):
        t = translator(name, wants_usage=wants_usage)
        assert run(t, chunks) == expected
        assert t.usage == whole.usage and t.assembled() == whole.assembled()
    t = translator(name, wants_usage=wants_usage)
    assert run(t, byte_by_byte(stream)) == expected
    assert t.error is None


def test_text_is_forwarded_as_soon_as_each_event_is_complete() -> None:
    t = translator("deepseek")
    first_answer = DEEPSEEK_STREAM.index(b'"content":"9.8"')
    end = DEEPSEEK_STREAM.index(b"\n\n", first_answer) + 2
    out = b"".join(t.feed(DEEPSEEK_STREAM[: end - 1]))
    assert b'"9.8"' not in out  # the event is not complete yet
    out += b"".join(t.feed(DEEPSEEK_STREAM[end - 1 : end]))
    assert out.endswith(
        b'"9.8","reasoning_content":null},"logprobs":null,"finish_reason":null}]}\n\n'
    )
    assert t.started


def test_deepseek_reasoning_stream_is_passed_through_and_recorded() -> None:
    t = translator("deepseek", wants_usage=True)
    out = run(t, [DEEPSEEK_STREAM])
    assert out == DEEPSEEK_STREAM  # byte for byte: the client asked for usage
    message = t.assembled()["choices"][0]["message"]
    assert message["reasoning_content"] == "Compare 9.11 and 9.8 — tenths: 1 < 8."
    assert message["content"] == "9.8 is greater."
    assert t.assembled()["choices"][0]["finish_reason"] == "stop"
    assert t.usage == Usage(1040, 61, cache_read_tokens=1024, reasoning_tokens=48)


def test_the_usage_chunk_only_the_gateway_asked_for_is_removed() -> None:
    t = translator("deepseek", wants_usage=False)
    got = split_events(run(t, [DEEPSEEK_STREAM]))
    assert all("usage" not in e for e in got if isinstance(e, dict))
    assert got[-1] == "[DONE]"
    assert t.usage is not None and t.usage.cache_read_tokens == 1024  # recorded all the same


def test_groq_x_groq_usage_is_read_and_given_to_a_client_that_asked() -> None:
    t = translator("groq", wants_usage=True)
    got = split_events(run(t, [GROQ_STREAM]))
    assert t.usage == Usage(40, 3)
    assert got[-2] == {
        "id": "chatcmpl-f51b2cd2",
        "object": "chat.completion.chunk",
        "created": 1730241104,
        "model": "llama-3.3-70b-versatile",
        "choices": [],
        "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43},
    }
    assert got[-1] == "[DONE]"
    # not asked: no chunk added, the usage is still recorded
    t = translator("groq", wants_usage=False)
    got = split_events(run(t, [GROQ_STREAM]))
    assert all(e == "[DONE]" or e["choices"] for e in got)
    assert t.usage == Usage(40, 3)


def test_openrouter_reasoning_and_tool_calls_are_recorded() -> None:
    t = translator("openrouter", wants_usage=True)
    out = run(t, byte_by_byte(OPENROUTER_STREAM))
    assert b"OPENROUTER PROCESSING" not in out  # comments are not events
    choice = t.assembled()["choices"][0]
    assert choice["message"]["reasoning"] == "Need the weather."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert choice["finish_reason"] == "tool_calls"
    assert t.usage == Usage(520, 31, reasoning_tokens=5, reported_cost=0.002025)


def test_xai_usage_on_the_finish_chunk_counts_reasoning_as_completion() -> None:
    t = translator("xai", wants_usage=True)
    got = split_events(run(t, [XAI_STREAM]))
    assert t.usage == Usage(9, 202, reasoning_tokens=200)
    # the usage arrived on a content chunk the client got: no chunk is added
    assert sum(1 for e in got if isinstance(e, dict) and "usage" in e) == 1
    assert t.assembled()["choices"][0]["message"]["reasoning_content"] == "Hmm."


OPENROUTER_MID_STREAM_ERROR = events(
    openrouter_chunk({"role": "assistant", "content": "Once upon"}),
    openrouter_chunk({"content": " a time"}),
    {
        "id": "gen-1745000000-abc",
        "object": "chat.completion.chunk",
        "created": 1745000000,
        "model": "anthropic/claude-sonnet-4",
        "provider": "Anthropic",
        "error": {"code": 502, "message": "Provider disconnected"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    },
    b"data: [DONE]\n\n",
)


@pytest.mark.parametrize(
    "stream, status, message",
    [
        (OPENROUTER_MID_STREAM_ERROR, 502, "Provider disconnected"),
        (
            events(
                groq_chunk({"role": "assistant", "content": "Hi"}),
                {"error": {"message": "Service Unavailable", "type": "internal_server_error"}},
            ),
            502,
            "Service Unavailable",
        ),
        (
            events(groq_chunk({"content": "Hi"}), b"event: error\ndata: overloaded\n\n"),
            502,
            "overloaded",
        ),
        (events(groq_chunk({"content": "Hi"}), b"data: {not json\n\n"), 502, "not JSON"),
    ],
    ids=["openrouter-finish-error", "error-object", "error-event", "garbage"],
)
def test_errors_inside_a_stream_end_it_with_an_openai_error_event(
    stream: bytes, status: int, message: str
) -> None:
    for chunks in [[stream], *every_split(stream)]:
        t = translator("openrouter")
        got = split_events(run(t, chunks))
        assert t.error is not None and t.error.status == status and message in t.error.message
        assert got[-1] == "[DONE]"
        error = got[-2]
        assert isinstance(error, dict) and message in error["error"]["message"]
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert sum(1 for e in got if isinstance(e, dict) and "error" in e) == 1
    assert t.assembled()["choices"][0]["message"]["content"] in ("Hi", "Once upon a time")


def test_a_stream_that_ends_without_finishing_is_an_error() -> None:
    truncated = events(
        groq_chunk({"role": "assistant", "content": "Half"}), groq_chunk({"content": " an"})
    )
    t = translator("groq")
    got = split_events(run(t, [truncated]))
    assert t.error is not None and "before the answer was complete" in t.error.message
    assert got[-2]["error"]["message"] == t.error.message and got[-1] == "[DONE]"
    # a finish reason without [DONE] is a complete answer
    finished = events(groq_chunk({"content": "Done."}), groq_chunk({}, "stop"))
    t = translator("groq")
    assert split_events(run(t, [finished]))[-1] == "[DONE]" and t.error is None


def test_a_stream_the_upstream_breaks_off_ends_with_the_error_and_no_half_event() -> None:
    cut = DEEPSEEK_STREAM[: DEEPSEEK_STREAM.index(b"9.8") + 2]
    t = translator("deepseek")
    err = ProviderError(502, "upstream connection lost")
    got = split_events(run(t, [cut], err))
    assert t.error is err
    assert got[-2] == {"error": err.to_openai()["error"]} and got[-1] == "[DONE]"
    assert all(isinstance(e, str) or "error" in e or e["choices"] for e in got)


def test_completions_streams_fim() -> None:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "c1",
            "object": "text_completion",
            "created": 1,
            "model": "deepseek-chat",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    stream = events(chunk("    return "), chunk("a + b"), chunk("", "stop"), b"data: [DONE]\n\n")
    for chunks in every_split(stream):
        t = translator("deepseek", route_type=COMPLETIONS)
        assert run(t, chunks) == stream
        assert t.assembled()["choices"] == [
            {"index": 0, "text": "    return a + b", "finish_reason": "stop"}
        ]
        assert t.error is None


def test_kongs_recorded_openai_frames_pass_through_a_vllm_route() -> None:
    frames = fixture("unit/real-stream-frames/openai/llm-v1-chat.txt").read_bytes()
    # Kong's capture is one frame without the end of the stream
    stream = frames.rstrip(b"\n") + b"\n\n" + b"data: [DONE]\n\n"
    t = translator("vllm")
    out = run(t, byte_by_byte(stream))
    assert out == stream
    assert t.assembled()["choices"][0]["message"]["content"] == "the answer"
    assert t.error is None and t.usage is None  # no usage reported: the record estimates


def test_the_usage_sse_encoding_is_parseable() -> None:
    # the added usage chunk is a well-formed SSE event of one JSON line
    t = translator("groq", wants_usage=True)
    added = run(t, [GROQ_STREAM]).split(b"\n\n")[-3] + b"\n\n"
    assert next(iter(sse.SSEDecoder().feed(added))).data.startswith('{"id":"chatcmpl-f51b2cd2"')


def test_a_preserve_route_observes_other_apis_streams_without_judging_them() -> None:
    # e.g. OpenRouter's /v1/responses through a preserve route: no [DONE], no choices
    responses = (
        b'event: response.created\ndata: {"type":"response.created","response":'
        b'{"id":"resp_1","status":"in_progress","error":null}}\n\n'
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"Hi"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed","response":'
        b'{"id":"resp_1","status":"completed"}}\n\n'
    )
    s = cspec(PRESERVE, stream=True)
    for chunks in every_split(responses):
        t = provider("openrouter").native_stream_observer(s)
        run(t, chunks)
        assert t.error is None
    # the same stream on a chat route is an incomplete chat stream
    t = translator("openrouter")
    run(t, [responses])
    assert t.error is not None


# ====================================================================== text-only hosts

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.mark.parametrize(
    "part, article",
    [
        (IMAGE, "an 'image_url'"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "an"),
        ({"type": "file", "file": {"file_id": "f"}}, "a 'file'"),
    ],
)
def test_deepseek_refuses_parts_that_are_not_text_with_a_clear_400(
    part: dict[str, Any], article: str
) -> None:
    """DeepSeek answers 400 "unknown variant `image_url`, expected `text`" from its JSON
    deserializer: the gateway says what is wrong itself, before any upstream call."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]},
    ]
    with pytest.raises(ProviderError) as e:
        sent("deepseek", {"messages": messages})
    err = e.value
    assert (err.status, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "unsupported_content",
        "messages",
    )
    assert err.message.startswith("provider 'deepseek' takes text only: messages[1].content[1]")
    assert article in err.message
    # the fake refuses it as DeepSeek does
    body = {"model": "deepseek-chat", "messages": messages}
    assert "unknown variant" in (check_request(dialects("k")["deepseek"], "chat", body) or "")


def test_text_parts_go_to_deepseek_and_images_to_the_hosts_that_take_them() -> None:
    text = [{"role": "user", "content": [{"type": "text", "text": "1+1?"}]}]
    assert sent("deepseek", {"messages": text})["messages"] == text
    with_image = [{"role": "user", "content": [{"type": "text", "text": "1+1?"}, IMAGE]}]
    for name in sorted(BY_NAME):
        if name != "deepseek" and CHAT in provider(name).route_types:
            assert not provider(name).host.text_only
            assert sent(name, {"messages": with_image})["messages"] == with_image, name


# ====================================================== answers with unexpected types


def test_a_chunk_with_wrong_types_passes_through_and_the_record_keeps_the_text() -> None:
    """A host's chunk with a number where text belongs (or a tool call that is not an
    object) reaches the client as sent; the recorded answer keeps what is text."""
    odd = events(
        groq_chunk({"role": "assistant", "content": 7}),
        groq_chunk({"content": "Hi", "tool_calls": True, "reasoning": ["x"]}),
        groq_chunk(
            {"tool_calls": [{"index": 0, "id": 5, "function": {"name": "f", "arguments": 1}}]}
        ),
        groq_chunk({}, "stop"),
    )
    t = translator("groq")
    out = run(t, [odd])
    assert t.error is None
    assert b'"content":7' in out.replace(b" ", b"")  # untouched for the client
    message = t.assembled()["choices"][0]["message"]
    assert message["content"] == "Hi"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
