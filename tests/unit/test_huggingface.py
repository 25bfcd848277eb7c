"""providers/huggingface.py: URLs, requests, answers, errors, streams and embeddings."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from addons.config import ConfigError
from providers.base import CallSpec, ProviderError, RouteType
from providers.huggingface import PROVIDER, ChatStream, TextGenerationStream
from providers.openai import OpenAIStream
from tests.fakes.huggingface import check_chat, check_parameters
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
MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
ROUTER = "https://router.huggingface.co"
HI = [{"role": "user", "content": "hi"}]


def hspec(
    route_type: RouteType = CHAT,
    body: dict[str, Any] | None = None,
    *,
    stream: bool = False,
    wants_usage: bool = False,
    model: str = MODEL,
    **options: Any,
) -> CallSpec:
    return spec(route_type, body, model=model, stream=stream, wants_usage=wants_usage, **options)


def sent(route_type: RouteType, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return json.loads(PROVIDER.build_request(hspec(route_type, body, **kw)).body)


# ------------------------------------------------------------------ identity and config


def test_provider_identity() -> None:
    assert PROVIDER.name == "huggingface"
    assert PROVIDER.default_base_url == ROUTER
    assert PROVIDER.route_types == {CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE}
    assert PROVIDER.auth_headers == ("authorization",)


def route_yaml(route_type: str, options: str = "{}") -> str:
    return f"""
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: hf
        paths: ["/hf"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              auth: {{header_name: Authorization, header_value: "Bearer hf_test"}}
              model:
                provider: huggingface
                name: {MODEL}
                options: {options}
"""


@pytest.mark.parametrize(
    "route_type", ["llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings", "preserve"]
)
def test_every_route_type_loads(route_type: str) -> None:
    cfg = load(route_yaml(route_type, "{huggingface: {use_cache: false, wait_for_model: true}}"))
    conf = route_named(cfg, "hf").plugin("ai-proxy")
    assert conf.model.options.huggingface.wait_for_model is True


def test_unknown_huggingface_option_is_a_load_error() -> None:
    with pytest.raises(ConfigError) as e:
        load(route_yaml("llm/v1/chat", "{huggingface: {wait_for_models: true}}"))
    assert "wait_for_models" in str(e.value)


# ------------------------------------------------------------------ URLs and headers


HF_API = "https://api-inference.huggingface.co"
MIRROR = "http://mirror:1"
ENDPOINT = "https://xyz.us-east-1.aws.endpoints.huggingface.cloud"


@pytest.mark.parametrize(
    "route_type, upstream_url, stream, expected",
    [
        (CHAT, None, False, f"{ROUTER}/v1/chat/completions"),
        (CHAT, None, True, f"{ROUTER}/v1/chat/completions"),
        (COMPLETIONS, None, False, f"{ROUTER}/hf-inference/models/{MODEL}"),
        (COMPLETIONS, None, True, f"{ROUTER}/hf-inference/models/{MODEL}"),
        (
            EMBEDDINGS,
            None,
            False,
            f"{ROUTER}/hf-inference/models/{MODEL}/pipeline/feature-extraction",
        ),
        # the router's own host as a bare origin keeps the router's paths
        (COMPLETIONS, ROUTER + "/", False, f"{ROUTER}/hf-inference/models/{MODEL}"),
        (CHAT, "https://api-inference.huggingface.co", False, f"{HF_API}/v1/chat/completions"),
        # and so does its /v1 base URL (what Hugging Face documents for OpenAI clients)
        (CHAT, f"{ROUTER}/v1", False, f"{ROUTER}/v1/chat/completions"),
        (COMPLETIONS, f"{ROUTER}/v1/", False, f"{ROUTER}/hf-inference/models/{MODEL}"),
        (
            EMBEDDINGS,
            f"{ROUTER}/v1",
            False,
            f"{ROUTER}/hf-inference/models/{MODEL}/pipeline/feature-extraction",
        ),
        # a mirror of the router is given with its /hf-inference path: its root is before
        (
            COMPLETIONS,
            "http://mirror:1/hf-inference",
            True,
            f"{MIRROR}/hf-inference/models/{MODEL}",
        ),
        (CHAT, "http://mirror:1/hf-inference/", False, f"{MIRROR}/v1/chat/completions"),
        (
            EMBEDDINGS,
            "http://mirror:1/hf-inference",
            False,
            f"{MIRROR}/hf-inference/models/{MODEL}/pipeline/feature-extraction",
        ),
        (CHAT, "https://p.corp/hf/hf-inference", False, "https://p.corp/hf/v1/chat/completions"),
        # a server's base URL (a bare origin, or the /v1 base URL Hugging Face documents
        # for Inference Endpoints): chat on its Messages API, completions on TGI's own
        # /generate routes, embeddings on TEI's /embed
        (CHAT, "http://tgi:8080", True, "http://tgi:8080/v1/chat/completions"),
        (CHAT, "http://tgi:8080/", False, "http://tgi:8080/v1/chat/completions"),
        (CHAT, f"{ENDPOINT}/v1/", False, f"{ENDPOINT}/v1/chat/completions"),
        (CHAT, f"{ENDPOINT}/v1", True, f"{ENDPOINT}/v1/chat/completions"),
        (COMPLETIONS, "http://tgi:8080", False, "http://tgi:8080/generate"),
        (COMPLETIONS, "http://tgi:8080/", True, "http://tgi:8080/generate_stream"),
        (COMPLETIONS, f"{ENDPOINT}/v1/", False, f"{ENDPOINT}/generate"),
        (EMBEDDINGS, "http://tei:8080", False, "http://tei:8080/embed"),
        (EMBEDDINGS, f"{ENDPOINT}/v1/", False, f"{ENDPOINT}/embed"),
        # a URL with a path is used as written
        (
            CHAT,
            "https://x.endpoints.huggingface.cloud/v1/chat/completions",
            False,
            "https://x.endpoints.huggingface.cloud/v1/chat/completions",
        ),
        (
            COMPLETIONS,
            "https://api-inference.huggingface.co/models/gpt2",
            True,
            "https://api-inference.huggingface.co/models/gpt2",
        ),
        (EMBEDDINGS, "http://tei:8080/embed", False, "http://tei:8080/embed"),
        # TGI's own routes follow the stream flag
        (COMPLETIONS, "http://tgi:8080/generate", False, "http://tgi:8080/generate"),
        (COMPLETIONS, "http://tgi:8080/generate", True, "http://tgi:8080/generate_stream"),
        (COMPLETIONS, "http://tgi:8080/generate_stream", False, "http://tgi:8080/generate"),
        (COMPLETIONS, "http://tgi:8080/generate_stream", True, "http://tgi:8080/generate_stream"),
    ],
)
def test_upstream_url_rules(
    route_type: RouteType, upstream_url: str | None, stream: bool, expected: str
) -> None:
    body = {"messages": HI, "prompt": "hi", "input": "hi"}
    req = PROVIDER.build_request(hspec(route_type, body, stream=stream, upstream_url=upstream_url))
    assert req.url == expected
    assert req.method == "POST"
    assert req.stream is (stream and route_type is not EMBEDDINGS)


@pytest.mark.parametrize("stream", [False, True])
def test_completions_to_a_tgi_server_by_its_origin_use_its_generate_routes(stream: bool) -> None:
    """TGI's /generate and /generate_stream take no `stream` flag (the route decides)."""
    req = PROVIDER.build_request(
        hspec(COMPLETIONS, {"prompt": "hi"}, stream=stream, upstream_url="http://tgi:8080")
    )
    assert req.url == "http://tgi:8080/generate" + ("_stream" if stream else "")
    assert "stream" not in json.loads(req.body)


def test_model_ids_keep_their_slash_and_are_quoted() -> None:
    req = PROVIDER.build_request(hspec(COMPLETIONS, {"prompt": "x"}, model="org/my model"))
    assert req.url == f"{ROUTER}/hf-inference/models/org/my%20model"


@pytest.mark.parametrize("route_type", [CHAT, COMPLETIONS, EMBEDDINGS])
@pytest.mark.parametrize(
    "hf, headers",
    [
        (None, {}),
        ({"use_cache": False}, {"x-use-cache": "false"}),
        ({"wait_for_model": True}, {"x-wait-for-model": "true"}),
        (
            {"use_cache": True, "wait_for_model": False},
            {"x-use-cache": "true", "x-wait-for-model": "false"},
        ),
    ],
)
def test_options_become_the_routers_headers(
    route_type: RouteType, hf: dict[str, Any] | None, headers: dict[str, str]
) -> None:
    body = {"messages": HI, "prompt": "hi", "input": "hi"}
    req = PROVIDER.build_request(hspec(route_type, body, huggingface=hf))
    got = {k: v for k, v in req.headers.items() if k.startswith("x-")}
    assert got == headers
    assert req.headers["content-type"] == "application/json"
    # the gateway adds the route's Authorization; the adapter never invents credentials
    assert "authorization" not in {h.lower() for h in req.headers}


@pytest.mark.parametrize("route_type, stream", [(CHAT, True), (COMPLETIONS, True), (CHAT, False)])
def test_streams_ask_for_event_streams(route_type: RouteType, stream: bool) -> None:
    req = PROVIDER.build_request(hspec(route_type, {"messages": HI, "prompt": "x"}, stream=stream))
    assert req.headers["accept"] == ("text/event-stream" if stream else "application/json")


# ------------------------------------------------------------------ chat requests


def test_kong_chat_request_is_sent_as_openai_chat() -> None:
    body = fixture_json("huggingface/llm-v1-chat/requests/good.json")
    out = sent(CHAT, body)
    # Kong puts "parameters" and "options" into the chat body; the Messages API is
    # OpenAI's format, so the body stays OpenAI's
    assert out == {"messages": body["messages"], "model": MODEL}
    assert check_chat(out) is None


def test_chat_stream_asks_for_usage() -> None:
    out = sent(CHAT, {"messages": HI, "stream": True}, stream=True)
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert check_chat(out) is None


def test_chat_passes_tools_images_and_sampling_through() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    image = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    }
    body = {
        "messages": [image],
        "tools": tools,
        "tool_choice": "auto",
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,  # not an OpenAI parameter: the Messages API rejects it
        "max_tokens": 64,
        "seed": 7,
    }
    out = sent(CHAT, body)
    assert out == {**{k: v for k, v in body.items() if k != "top_k"}, "model": MODEL}
    assert check_chat(out) is None


# ------------------------------------------------------------------ completions requests

BASE_PARAMS = {"return_full_text": False, "details": True}

# (id, OpenAI completions body, stream, the whole text-generation body expected)
COMPLETION_REQUESTS: list[tuple[str, dict[str, Any], bool, dict[str, Any]]] = [
    (
        "kong-fixture",
        fixture_json("huggingface/llm-v1-completions/requests/good.json"),
        False,
        {"inputs": "What are you?", "parameters": BASE_PARAMS},
    ),
    (
        "unit-request-streamed",
        fixture_json("unit/requests/llm-v1-completions.json"),
        True,
        {
            "inputs": "Explain why you can't divide by zero?",
            "parameters": BASE_PARAMS,
            "stream": True,
        },
    ),
    (
        "sampling",
        {
            "prompt": ["Once upon"],
            "max_tokens": 50,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 42,
            "frequency_penalty": 0.5,
            "stop": "\n\n",
        },
        False,
        {
            "inputs": "Once upon",
            "parameters": {
                "max_new_tokens": 50,
                "temperature": 0.7,
                "do_sample": True,
                "top_p": 0.9,
                "top_k": 40,
                "seed": 42,
                "frequency_penalty": 0.5,
                "stop": ["\n\n"],
                **BASE_PARAMS,
            },
        },
    ),
    (
        "temperature-zero-is-greedy",
        # TGI rejects temperature 0 ("must be strictly positive"): greedy decoding instead
        {"prompt": "x", "temperature": 0, "top_p": 1, "top_k": 0},
        False,
        {"inputs": "x", "parameters": {"do_sample": False, **BASE_PARAMS}},
    ),
    (
        "no-tgi-counterpart",
        {"prompt": "x", "presence_penalty": 0.3, "logprobs": 2, "user": "u1", "stop": ["", "E"]},
        False,
        {"inputs": "x", "parameters": {"stop": ["E"], **BASE_PARAMS}},
    ),
    (
        "echo-returns-the-full-text",
        {"prompt": "x", "echo": True},
        False,
        {"inputs": "x", "parameters": {"return_full_text": True, "details": True}},
    ),
]


@pytest.mark.parametrize(
    "body, stream, expected",
    [c[1:] for c in COMPLETION_REQUESTS],
    ids=[c[0] for c in COMPLETION_REQUESTS],
)
def test_completion_requests(body: dict[str, Any], stream: bool, expected: dict[str, Any]) -> None:
    out = sent(COMPLETIONS, body, stream=stream)
    assert out == expected
    assert check_parameters(out["parameters"]) is None  # TGI would accept it


@pytest.mark.parametrize("hf", [{"use_cache": False}, {"use_cache": True, "wait_for_model": True}])
def test_completion_body_carries_the_classic_options(hf: dict[str, Any]) -> None:
    assert sent(COMPLETIONS, {"prompt": "x"}, huggingface=hf)["options"] == hf


@pytest.mark.parametrize("stream", [False, True])
def test_tgi_native_routes_get_no_stream_flag(stream: bool) -> None:
    out = sent(COMPLETIONS, {"prompt": "x"}, stream=stream, upstream_url="http://tgi/generate")
    assert "stream" not in out


@pytest.mark.parametrize(
    "route_type, body, param",
    [
        (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
        (COMPLETIONS, {"prompt": [1, 2, 3]}, "prompt"),
        (COMPLETIONS, {"prompt": "x", "n": 2}, "n"),
        (COMPLETIONS, {"prompt": "x", "best_of": 3}, "best_of"),
        (EMBEDDINGS, {"input": [[1, 2, 3]]}, "input"),
        (EMBEDDINGS, {"input": ["ok", ""]}, "input"),
        (EMBEDDINGS, {"input": "x", "dimensions": 256}, "dimensions"),
    ],
)
def test_requests_huggingface_cannot_serve_are_400s(
    route_type: RouteType, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(hspec(route_type, body))
    assert e.value.status == 400 and e.value.param == param
    assert e.value.type == "invalid_request_error"


def test_embeddings_request_sends_a_list() -> None:
    assert sent(EMBEDDINGS, {"input": "hello"}) == {"inputs": ["hello"]}
    assert sent(EMBEDDINGS, {"input": ["a", "b"], "encoding_format": "base64"}) == {
        "inputs": ["a", "b"]
    }


def test_preserve_passes_the_request_untouched() -> None:
    s = hspec(PRESERVE, {"inputs": "x"}, huggingface={"wait_for_model": True})
    s.raw_body, s.path, s.query, s.method = b'{"inputs": "x"}', "/models/gpt2", "a=1", "POST"
    req = PROVIDER.build_request(s)
    assert req.url == f"{ROUTER}/models/gpt2?a=1"
    assert req.body == b'{"inputs": "x"}'
    assert req.headers == {"x-wait-for-model": "true"}


# ------------------------------------------------------------------ answers


def reply(route_type: RouteType, data: Any, body: dict[str, Any] | None = None, **kw: Any):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    headers = kw.pop("headers", {})
    return PROVIDER.parse_response(hspec(route_type, body or {}, **kw), 200, headers, raw)


def test_kong_chat_answer() -> None:
    r = reply(CHAT, fixture_json("huggingface/llm-v1-chat/responses/good.json"))
    choice = r.data["choices"][0]
    # TGI's "eos_token" is OpenAI's "stop" (Kong answers "complete", which no client knows)
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].startswith(" The sum of 1 + 1 is 2.")
    assert r.data["id"].startswith("chatcmpl-")  # TGI sent an empty id
    assert r.data["object"] == "chat.completion"
    assert r.model == MODEL
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (26, 40)
    assert not r.usage.estimated
    assert json.loads(r.body) == r.data


def test_tgi_tool_call_answer_is_openais_shape() -> None:
    data = {
        "object": "text_completion",
        "id": "",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "0",
                            "type": "function",
                            "function": {
                                "description": None,
                                "name": "get_weather",
                                "arguments": {"city": "Paris"},
                            },
                        }
                    ],
                },
                "finish_reason": "eos_token",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }
    r = reply(CHAT, data)
    choice = r.data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"city":"Paris"}'
    assert call["id"] == "0" and call["type"] == "function"


def test_router_answer_with_cached_tokens() -> None:
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "meta-llama/Llama-3.3-70B-Instruct",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "length",
            }
        ],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 5,
            "total_tokens": 1205,
            "prompt_tokens_details": {"cached_tokens": 1000},
        },
    }
    r = reply(CHAT, data)
    assert r.data["choices"][0]["finish_reason"] == "length"
    assert r.model == "meta-llama/Llama-3.3-70B-Instruct"
    # prompt_tokens includes the cached ones, as OpenAI counts them
    assert (r.usage.prompt_tokens, r.usage.cache_read_tokens) == (1200, 1000)


def test_kong_completion_answer() -> None:
    body = fixture_json("huggingface/llm-v1-completions/requests/good.json")
    r = reply(COMPLETIONS, fixture_json("huggingface/llm-v1-completions/responses/good.json"), body)
    assert r.data["object"] == "text_completion"
    assert r.data["id"].startswith("cmpl-")
    assert r.data["choices"] == [
        {
            "index": 0,
            "text": "I am a language model AI created by Mistral AI",
            "logprobs": None,
            # no details: "stop" (Kong answers "complete", not an OpenAI finish reason)
            "finish_reason": "stop",
        }
    ]
    assert r.model == MODEL
    assert r.usage is None  # nothing reported: the recorder estimates
    assert "usage" not in r.data


DETAILS = {
    "finish_reason": "length",
    "generated_tokens": 12,
    "seed": None,
    "prefill": [],
    "tokens": [],
}


@pytest.mark.parametrize(
    "data, headers, body, text, finish, usage",
    [
        # details: the finish reason and the generated tokens (the prompt is estimated)
        (
            [{"generated_text": "a b c", "details": DETAILS}],
            {},
            {"prompt": "Count to three"},
            "a b c",
            "length",
            (4, 12, True),
        ),
        # TGI's headers give both counts
        (
            [{"generated_text": "a b c", "details": DETAILS}],
            {"x-prompt-tokens": "7", "x-generated-tokens": "12"},
            {"prompt": "x"},
            "a b c",
            "length",
            (7, 12, False),
        ),
        # TGI leaves the stop sequence at the end: OpenAI does not
        (
            [
                {
                    "generated_text": "one two END",
                    "details": {**DETAILS, "finish_reason": "stop_sequence"},
                }
            ],
            {},
            {"prompt": "x", "stop": ["\n", "END"]},
            "one two ",
            "stop",
            (1, 12, True),
        ),
        # a stop sequence that ended nothing is kept
        (
            [{"generated_text": "one END", "details": {**DETAILS, "finish_reason": "eos_token"}}],
            {},
            {"prompt": "x", "stop": ["END"]},
            "one END",
            "stop",
            (1, 12, True),
        ),
        # TGI's /generate answers one object, not a list
        (
            {"generated_text": "solo", "details": {**DETAILS, "finish_reason": "eos_token"}},
            {},
            {"prompt": "x"},
            "solo",
            "stop",
            (1, 12, True),
        ),
        # echo: the full text, prompt included, as TGI returns it
        (
            [{"generated_text": "Hi there"}],
            {},
            {"prompt": "Hi", "echo": True},
            "Hi there",
            "stop",
            None,
        ),
    ],
)
def test_completion_answers(
    data: Any,
    headers: dict[str, str],
    body: dict[str, Any],
    text: str,
    finish: str,
    usage: tuple[int, int, bool] | None,
) -> None:
    r = reply(COMPLETIONS, data, body, headers=headers)
    assert r.data["choices"][0]["text"] == text
    assert r.data["choices"][0]["finish_reason"] == finish
    if usage is None:
        assert r.usage is None
    else:
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.estimated) == usage
        assert r.data["usage"]["total_tokens"] == usage[0] + usage[1]


@pytest.mark.parametrize(
    "route_type, data, missing",
    [
        (CHAT, {"id": "x", "object": "chat.completion"}, "choices"),
        (CHAT, [1, 2], "not a JSON object"),
        (CHAT, b"<html>oops</html>", "not a JSON object"),
        (COMPLETIONS, [{"text": "x"}], "generated_text"),
        (COMPLETIONS, [], "generated_text"),
        (EMBEDDINGS, {"embeddings": []}, "not a list of embeddings"),
    ],
)
def test_answers_that_cannot_be_translated_are_502s(
    route_type: RouteType, data: Any, missing: str
) -> None:
    with pytest.raises(ProviderError) as e:
        reply(route_type, data, {"prompt": "x", "input": "x", "messages": HI})
    assert e.value.status == 502
    assert missing in e.value.message and e.value.message.startswith("huggingface: ")


def test_an_error_in_a_200_body_is_an_error() -> None:
    with pytest.raises(ProviderError) as e:
        reply(
            COMPLETIONS,
            {"error": "Input validation error: inputs must not be empty"},
            {"prompt": "x"},
        )
    assert e.value.status == 502
    assert "inputs must not be empty" in e.value.message


def test_preserve_answer_passes_through_with_usage() -> None:
    data = {"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    raw = json.dumps(data).encode()
    r = PROVIDER.parse_response(hspec(PRESERVE), 200, {}, raw)
    assert r.body == raw and r.model == "m"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 4)
    classic = PROVIDER.parse_response(hspec(PRESERVE), 200, {}, b'[{"generated_text": "x"}]')
    assert classic.body == b'[{"generated_text": "x"}]' and classic.usage is None


# ------------------------------------------------------------------ errors


def error(status: int, data: Any, headers: dict[str, str] | None = None) -> ProviderError:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return PROVIDER.parse_error(status, headers or {}, raw)


@pytest.mark.parametrize(
    "status, rel, message, kind, code",
    [
        (
            422,
            "huggingface/llm-v1-chat/responses/bad_request.json",
            "Template error: undefined value (in <string>:1)",
            "invalid_request_error",
            "template_error",
        ),
        (
            504,
            "huggingface/llm-v1-chat/responses/bad_response_timeout.json",
            "Model mistralai/Mistral-7B-Instruct-v0.2 time out",
            "api_error",
            None,
        ),
        (
            401,
            "huggingface/llm-v1-chat/responses/unauthorized.json",
            "Authorization header is correct, but the token seems invalid",
            "authentication_error",
            None,
        ),
        (
            422,
            "huggingface/llm-v1-completions/responses/bad_request.json",
            "Failed to deserialize the JSON body into the target type: missing field `inputs` at "
            "line 9 column 7",
            "invalid_request_error",
            None,
        ),
        (
            401,
            "huggingface/llm-v1-completions/responses/unauthorized.json",
            "Authorization header is correct, but the token seems invalid",
            "authentication_error",
            None,
        ),
    ],
)
def test_kong_error_fixtures(status: int, rel: str, message: str, kind: str, code: Any) -> None:
    err = PROVIDER.parse_error(status, {}, fixture(rel).read_bytes())
    assert (err.status, err.message, err.type, err.code) == (status, message, kind, code)
    assert err.headers == {}


def test_model_loading_is_a_503_with_retry_after() -> None:
    body = fixture("huggingface/llm-v1-chat/responses/bad_response_model_load.json").read_bytes()
    err = PROVIDER.parse_error(503, {"content-type": "application/json"}, body)
    assert err.status == 503 and err.type == "api_error" and err.code == "model_loading"
    assert err.message.startswith("Model mistralai/Mistral-7B-Instruct-v0.2 is currently loading")
    assert "estimated time 305.7 s" in err.message and "retry in 306 s" in err.message
    assert "wait_for_model" in err.message  # how to avoid it
    assert err.headers == {"retry-after": "306"}  # ceil(305.686...)
    assert err.to_openai()["error"]["message"] == err.message


@pytest.mark.parametrize("estimated, retry_after", [(20.5, "21"), (0.2, "1"), (0, "1"), (3, "3")])
def test_retry_after_is_the_estimated_time_rounded_up(estimated: float, retry_after: str) -> None:
    err = error(503, {"error": "Model x is currently loading", "estimated_time": estimated})
    assert err.headers == {"retry-after": retry_after}


def test_the_upstreams_own_retry_after_is_kept() -> None:
    err = error(
        503, {"error": "Model x is currently loading", "estimated_time": 20.5}, {"retry-after": "5"}
    )
    assert err.headers == {}  # the gateway passes the upstream's header on


@pytest.mark.parametrize(
    "status, data, message, kind, code",
    [
        (
            400,
            {"error": ["Input should be a valid string", "Field required"]},
            "Input should be a valid string; Field required",
            "invalid_request_error",
            None,
        ),
        (
            429,
            {"error": "Model is overloaded", "error_type": "overloaded"},
            "Model is overloaded",
            "rate_limit_error",
            "overloaded",
        ),
        (
            424,
            {"error": "Request failed during generation", "error_type": "generation"},
            "Request failed during generation",
            "invalid_request_error",
            "generation",
        ),
        (
            402,
            {"error": "You have exceeded your monthly included credits for Inference Providers."},
            "You have exceeded your monthly included credits for Inference Providers.",
            "invalid_request_error",
            None,
        ),
        # the router's OpenAI-shaped errors keep their type and code
        (
            400,
            {
                "error": {
                    "message": "model not supported",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_supported",
                }
            },
            "model not supported",
            "invalid_request_error",
            "model_not_supported",
        ),
        (404, {"detail": "Not Found"}, "Not Found", "not_found_error", None),
        (
            502,
            b"<html><body>Bad gateway</body></html>",
            "huggingface upstream returned an HTML error page (HTTP 502)",
            "api_error",
            None,
        ),
        (500, b"", "huggingface upstream returned HTTP 500 with an empty body", "api_error", None),
    ],
)
def test_error_shapes(status: int, data: Any, message: str, kind: str, code: Any) -> None:
    err = error(status, data)
    assert (err.status, err.message, err.type, err.code) == (status, message, kind, code)


# ------------------------------------------------------------------ streams: helpers


def tgi_event(obj: dict[str, Any], space: bool = False) -> bytes:
    return (b"data: " if space else b"data:") + json.dumps(obj).encode() + b"\n\n"


def token(
    i: int,
    text: str,
    special: bool = False,
    final: dict[str, Any] | None = None,
    generated: str | None = None,
) -> dict[str, Any]:
    return {
        "index": i,
        "token": {"id": 100 + i, "text": text, "logprob": -0.31, "special": special},
        "generated_text": generated,
        "details": final,
    }


# A TGI /generate_stream answer as recorded: a keep-alive comment, events without a space
# after "data:", the end-of-sequence token marked special, details with input_length.
RECORDED_TGI = b"".join(
    [
        b":\n\n",
        tgi_event(token(1, " Deep")),
        tgi_event(token(2, " learning")),
        tgi_event(token(3, " is")),
        tgi_event(token(4, " a")),
        tgi_event(token(5, " subset\u00e9".encode().decode())),
        tgi_event(token(6, " of ML.")),
        tgi_event(
            token(
                7,
                "</s>",
                special=True,
                generated=" Deep learning is a subset\u00e9 of ML.",
                final={
                    "finish_reason": "eos_token",
                    "generated_tokens": 7,
                    "seed": None,
                    "input_length": 6,
                },
            )
        ),
    ]
)
TGI_TEXT = " Deep learning is a subset\u00e9 of ML."


def run(translator: Any, chunks: list[bytes], error: ProviderError | None = None) -> bytes:
    out: list[bytes] = []
    for c in chunks:
        out += translator.feed(c)
    out += translator.finish(error)
    for piece in out:  # every piece is whole SSE events
        assert piece.endswith(b"\n\n")
    return b"".join(out)


def events(raw: bytes) -> list[Any]:
    """The data of each event, JSON-decoded, without the per-stream id and created."""
    found = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        if data == "[DONE]":
            found.append("[DONE]")
            continue
        obj = json.loads(data)
        obj.pop("id", None)
        obj.pop("created", None)
        found.append(obj)
    return found


def texts(evs: list[Any]) -> str:
    out = ""
    for e in evs:
        for c in e.get("choices", []) if isinstance(e, dict) else []:
            out += c.get("text") or (c.get("delta") or {}).get("content") or ""
    return out


def tg(body: dict[str, Any] | None = None, wants_usage: bool = False) -> TextGenerationStream:
    s = hspec(
        COMPLETIONS,
        body or {"prompt": "What is deep learning?"},
        stream=True,
        wants_usage=wants_usage,
    )
    t = PROVIDER.stream_translator(s)
    assert isinstance(t, TextGenerationStream)
    return t


# ------------------------------------------------------------------ TGI token streams


@pytest.mark.parametrize("wants_usage", [False, True])
def test_tgi_stream_translation(wants_usage: bool) -> None:
    t = tg(wants_usage=wants_usage)
    evs = events(run(t, [RECORDED_TGI]))
    assert evs[-1] == "[DONE]"
    content = [e for e in evs[:-1] if e["choices"]]
    assert all(e["object"] == "text_completion" and e["model"] == MODEL for e in content)
    assert [e["choices"][0]["text"] for e in content] == [
        " Deep",
        " learning",
        " is",
        " a",
        " subset\u00e9",
        " of ML.",
        "",
    ]  # the special </s> token is not text
    assert [e["choices"][0]["finish_reason"] for e in content] == [None] * 6 + ["stop"]
    usage_chunks = [e for e in evs[:-1] if not e["choices"]]
    if wants_usage:
        assert usage_chunks == [
            {
                "object": "text_completion",
                "model": MODEL,
                "choices": [],
                "usage": {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13},
            }
        ]
    else:
        assert usage_chunks == []
    assert (t.usage.prompt_tokens, t.usage.completion_tokens, t.usage.estimated) == (6, 7, False)
    assert t.error is None and t.started
    answer = t.assembled()
    assert answer["choices"][0]["text"] == TGI_TEXT
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["total_tokens"] == 13


@pytest.mark.parametrize("wants_usage", [False, True])
def test_tgi_stream_every_split_and_byte_by_byte(wants_usage: bool) -> None:
    reference = events(run(tg(wants_usage=wants_usage), [RECORDED_TGI]))
    for chunks in [*every_split(RECORDED_TGI), byte_by_byte(RECORDED_TGI)]:
        t = tg(wants_usage=wants_usage)
        assert events(run(t, chunks)) == reference
        assert t.error is None
        assert t.assembled()["choices"][0]["text"] == TGI_TEXT


def test_tgi_text_is_forwarded_as_soon_as_each_event_is_whole() -> None:
    t = tg()
    first = tgi_event(token(1, " Deep"))
    assert t.feed(first[:-1]) == []
    assert texts(events(b"".join(t.feed(first[-1:])))) == " Deep"


def stop_stream(pieces: list[str], final: str, reason: str = "stop_sequence") -> bytes:
    evs = [tgi_event(token(i + 1, p), space=True) for i, p in enumerate(pieces)]
    evs.append(
        tgi_event(
            token(
                len(pieces) + 1,
                final,
                generated="".join(pieces) + final,
                final={"finish_reason": reason, "generated_tokens": 9, "seed": 1},
            ),
            space=True,
        )
    )
    return b"".join(evs)


@pytest.mark.parametrize(
    "pieces, final, stops, reason, expected",
    [
        # the stop sequence arrives over three tokens: none of it reaches the client
        (["one", " two", " E", "N"], "D", ["END"], "stop_sequence", "one two "),
        (["one", " two", " EN"], "D", ["END"], "stop_sequence", "one two "),
        # held back, then released when it turns out not to be the stop sequence
        (["one", " E", "X"], " two", ["END"], "eos_token", "one EX two"),
        (["a", "\n"], "\n", ["\n\n", "STOP"], "stop_sequence", "a"),
        # no stop sequences: nothing is held back
        (["a", " E"], "ND", [], "eos_token", "a END"),
        # a length stop keeps everything
        (["one", " E"], "N", ["END"], "length", "one EN"),
    ],
)
def test_stop_sequences_never_reach_the_client(
    pieces: list[str], final: str, stops: list[str], reason: str, expected: str
) -> None:
    raw = stop_stream(pieces, final, reason)
    for chunks in [[raw], *every_split(raw)]:
        t = tg({"prompt": "x", "stop": stops})
        evs = events(run(t, chunks))
        assert texts(evs) == expected
        assert t.assembled()["choices"][0]["text"] == expected
        # the usage has no input_length: the prompt is estimated
        assert t.usage.completion_tokens == 9 and t.usage.estimated


def test_stop_sequence_prefixes_are_held_only_as_long_as_needed() -> None:
    t = tg({"prompt": "x", "stop": ["END"]})
    assert texts(events(b"".join(t.feed(tgi_event(token(1, "one E")))))) == "one "
    assert texts(events(b"".join(t.feed(tgi_event(token(2, "X")))))) == "EX"


def test_echo_streams_the_prompt_first() -> None:
    t = tg({"prompt": "Deep learning?", "echo": True})
    evs = events(run(t, [RECORDED_TGI]))
    assert texts(evs) == "Deep learning?" + TGI_TEXT


@pytest.mark.parametrize(
    "details, usage, finish",
    [
        (None, None, "stop"),  # details not given: no usage, finish unknown
        ({"finish_reason": "length", "generated_tokens": 2, "seed": None}, (4, 2, True), "length"),
    ],
)
def test_tgi_stream_without_full_details(
    details: dict[str, Any] | None, usage: tuple[int, int, bool] | None, finish: str
) -> None:
    raw = tgi_event(token(1, "Hi")) + tgi_event(token(2, "!", generated="Hi!", final=details))
    t = tg({"prompt": "What is deep?"}, wants_usage=True)
    evs = events(run(t, [raw]))
    assert evs[-2 if usage is None else -3]["choices"][0]["finish_reason"] == finish
    if usage is None:
        assert t.usage is None and all(e == "[DONE]" or e["choices"] for e in evs)
    else:
        got = (t.usage.prompt_tokens, t.usage.completion_tokens, t.usage.estimated)
        assert got == usage


def error_tail(raw: bytes) -> tuple[list[Any], dict[str, Any]]:
    evs = events(raw)
    assert evs[-1] == "[DONE]"
    assert set(evs[-2]) == {"error"}
    return evs[:-2], evs[-2]["error"]


def test_tgi_error_event_mid_stream() -> None:
    raw = (
        tgi_event(token(1, "Hello"))
        + tgi_event(
            {"error": "Request failed during generation: CUDA OOM", "error_type": "generation"}
        )
        + tgi_event(token(2, " never"))
    )
    for chunks in [[raw], byte_by_byte(raw)]:
        t = tg()
        before, err = error_tail(run(t, chunks))
        assert texts(before) == "Hello"
        assert err["message"] == "Request failed during generation: CUDA OOM"
        assert err["code"] == "generation"
        assert t.error is not None and t.error.status == 502


def test_tgi_stream_without_its_final_event_is_an_error() -> None:
    t = tg()
    before, err = error_tail(run(t, [RECORDED_TGI.rsplit(b"data:", 1)[0]]))
    assert texts(before) == " Deep learning is a subset\u00e9 of ML."
    assert "ended before the answer was complete" in err["message"]
    assert t.error.code == "upstream_truncated"


def test_tgi_stream_broken_off_by_the_upstream() -> None:
    t = tg()
    cut = RECORDED_TGI[: len(RECORDED_TGI) // 2]
    failure = ProviderError(502, "upstream connection lost", "api_error")
    before, err = error_tail(run(t, [cut], failure))
    assert err["message"] == "upstream connection lost"
    assert t.error is failure
    assert all(e["choices"][0]["finish_reason"] is None for e in before)


@pytest.mark.parametrize("bad", [b"data: not json\n\n", b"data: [1, 2\n\n"])
def test_tgi_stream_with_garbage_is_an_error(bad: bytes) -> None:
    t = tg()
    _, err = error_tail(run(t, [tgi_event(token(1, "a")), bad]))
    assert "not JSON" in err["message"]


def test_a_late_failure_after_the_whole_answer_is_not_reported() -> None:
    t = tg()
    evs = events(run(t, [RECORDED_TGI], ProviderError(502, "reset")))
    assert t.error is None and texts(evs) == TGI_TEXT


# ------------------------------------------------------------------ chat streams


def chunk(delta: dict[str, Any], finish: str | None = None, **head: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-r1",
        "object": "chat.completion.chunk",
        "created": 1730000000,
        "model": "meta-llama/Llama-3.3-70B-Instruct",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **head,
    }


USAGE = {
    "prompt_tokens": 40,
    "completion_tokens": 6,
    "total_tokens": 46,
    "prompt_tokens_details": {"cached_tokens": 32},
}

# The router relaying a provider: OpenAI chunks, a usage chunk, [DONE].
RECORDED_ROUTER = (
    b"".join(
        tgi_event(e, space=True)
        for e in [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Paris"}),
            chunk({"content": " is the"}),
            chunk({"content": " capital \u2028 of France."}),
            chunk({}, "stop"),
            {**chunk({}), "choices": [], "usage": USAGE},
        ]
    )
    + b"data: [DONE]\n\n"
)


# TGI calling a tool: empty ids, object text_completion, the call's id and type repeated
# in every delta, name null after the first, finish reason eos_token, usage: null.
def tgi_call(args: str, name: str | None = None) -> dict[str, Any]:
    delta = {
        "role": "assistant",
        "tool_calls": [
            {
                "index": 0,
                "id": "0",
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
        ],
    }
    return chunk(delta, id="", object="text_completion", usage=None)


RECORDED_TGI_TOOLS = (
    b"".join(
        tgi_event(e)
        for e in [
            tgi_call('{"ci', "get_weather"),
            tgi_call('ty": "P'),
            tgi_call('aris"}'),
            {
                **chunk({"role": "assistant", "content": ""}, "eos_token"),
                "id": "",
                "object": "text_completion",
                "usage": None,
            },
            {
                **chunk({}),
                "id": "",
                "choices": [],
                "usage": {"prompt_tokens": 80, "completion_tokens": 12, "total_tokens": 92},
            },
        ]
    )
    + b"data:[DONE]\n\n"
)


def cs(wants_usage: bool = False) -> ChatStream:
    t = PROVIDER.stream_translator(
        hspec(CHAT, {"messages": HI}, stream=True, wants_usage=wants_usage)
    )
    assert isinstance(t, ChatStream)
    return t


@pytest.mark.parametrize("wants_usage", [False, True])
def test_router_chat_stream(wants_usage: bool) -> None:
    t = cs(wants_usage)
    raw = run(t, [RECORDED_ROUTER])
    evs = events(raw)
    assert evs[-1] == "[DONE]"
    assert texts(evs) == "Paris is the capital \u2028 of France."
    content = [e for e in evs[:-1] if e["choices"]]
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert [e for e in evs[:-1] if not e["choices"]] == (
        [
            {
                "object": "chat.completion.chunk",
                "model": "meta-llama/Llama-3.3-70B-Instruct",
                "choices": [],
                "usage": USAGE,
            }
        ]
        if wants_usage
        else []
    )
    assert b'"id":"chatcmpl-r1"' in raw  # the upstream's id is kept
    assert (t.usage.prompt_tokens, t.usage.cache_read_tokens) == (40, 32)
    answer = t.assembled()
    assert answer["choices"][0]["message"]["content"] == "Paris is the capital \u2028 of France."
    assert answer["model"] == "meta-llama/Llama-3.3-70B-Instruct"


@pytest.mark.parametrize("raw", [RECORDED_ROUTER, RECORDED_TGI_TOOLS], ids=["router", "tgi"])
@pytest.mark.parametrize("wants_usage", [False, True])
def test_chat_stream_every_split_and_byte_by_byte(raw: bytes, wants_usage: bool) -> None:
    reference = events(run(cs(wants_usage), [raw]))
    for chunks in [*every_split(raw), byte_by_byte(raw)]:
        t = cs(wants_usage)
        assert events(run(t, chunks)) == reference
        assert t.error is None


def test_tgi_tool_call_stream_is_openais_shape() -> None:
    t = cs(wants_usage=True)
    raw = run(t, [RECORDED_TGI_TOOLS])
    evs = events(raw)
    calls = [e["choices"][0]["delta"]["tool_calls"][0] for e in evs[:3]]
    first_id = calls[0]["id"]
    assert calls[0] == {
        "index": 0,
        "id": first_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"ci'},
    }
    # id, type and name in the first delta only: clients that concatenate them stay right
    assert calls[1] == {"index": 0, "function": {"arguments": 'ty": "P'}}
    assert calls[2] == {"index": 0, "function": {"arguments": 'aris"}'}}
    assert evs[3]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(e["object"] == "chat.completion.chunk" for e in evs[:-1])
    ids = {json.loads(b.removeprefix(b"data: "))["id"] for b in raw.split(b"\n\n")[:-2] if b}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")  # one id, never empty
    assert evs[4]["usage"]["total_tokens"] == 92
    message = t.assembled()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert t.assembled()["choices"][0]["finish_reason"] == "tool_calls"


def test_old_tgi_chat_stream_without_usage() -> None:
    raw = (
        b"".join(
            tgi_event(
                {
                    **chunk({"role": "assistant", "content": c}, f),
                    "id": "",
                    "object": "text_completion",
                }
            )
            for c, f in [("Hi", None), ("!", None), ("", "eos_token")]
        )
        + b"data:[DONE]\n\n"
    )
    t = cs(wants_usage=True)
    evs = events(run(t, [raw]))
    assert texts(evs) == "Hi!" and evs[-2]["choices"][0]["finish_reason"] == "stop"
    assert t.usage is None  # the recorder estimates it
    assert all(e == "[DONE]" or e["choices"] for e in evs)


def test_usage_on_a_content_chunk_becomes_the_final_usage_chunk() -> None:
    raw = (
        b"".join(
            tgi_event(e)
            for e in [
                chunk({"content": "ok"}),
                {
                    **chunk({}, "stop"),
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                },
            ]
        )
        + b"data: [DONE]\n\n"
    )
    evs = events(run(cs(wants_usage=True), [raw]))
    assert evs[-2] == {
        "object": "chat.completion.chunk",
        "model": "meta-llama/Llama-3.3-70B-Instruct",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def test_tgi_openai_error_event_keeps_its_status() -> None:
    raw = (
        tgi_event(chunk({"content": "Hel"}))
        + tgi_event(
            {"error": {"message": "Input validation error: too long", "http_status_code": 422}}
        )
        + b"data:[DONE]\n\n"
    )
    t = cs()
    before, err = error_tail(run(t, [raw]))
    assert texts(before) == "Hel"
    assert err["message"] == "Input validation error: too long"
    assert t.error.status == 422 and t.error.type == "invalid_request_error"


@pytest.mark.parametrize(
    "cut",
    [
        RECORDED_ROUTER.split(b"data: " + json.dumps(chunk({}, "stop")).encode())[0],
        b"",
    ],
    ids=["before-finish", "empty"],
)
def test_chat_stream_without_its_end_is_an_error(cut: bytes) -> None:
    t = cs()
    _, err = error_tail(run(t, [cut]))
    assert "ended before the answer was complete" in err["message"]
    assert t.error is not None


def test_chat_stream_with_a_finish_reason_but_no_done_is_whole() -> None:
    raw = RECORDED_ROUTER.replace(b"data: [DONE]\n\n", b"")
    t = cs()
    evs = events(run(t, [raw]))
    assert t.error is None and evs[-1] == "[DONE]"


def test_preserve_stream_observer_follows_the_path() -> None:
    def observer(path: str) -> Any:
        s = hspec(PRESERVE, {}, stream=True)
        s.path = path
        return PROVIDER.stream_translator(s)

    assert isinstance(observer("/v1/chat/completions"), ChatStream)
    assert isinstance(observer("/models/gpt2"), TextGenerationStream)
    assert isinstance(observer("/generate_stream"), TextGenerationStream)
    completions = observer("/v1/completions")
    assert isinstance(completions, OpenAIStream)
    completions.feed(b'data: {"choices": [{"index": 0, "text": "hi"}]}\n\n')
    assert completions.assembled()["choices"][0]["text"] == "hi"


def test_a_stream_body_where_none_was_asked_is_assembled() -> None:
    body = {"prompt": "What is deep learning?"}
    r = PROVIDER.parse_response(hspec(COMPLETIONS, body), 200, {}, RECORDED_TGI)
    assert r.data["choices"][0]["text"] == TGI_TEXT
    assert r.usage.prompt_tokens == 6


# ------------------------------------------------------------------ embeddings


def emb(data: Any, inputs: Any, **body: Any):
    return reply(EMBEDDINGS, data, {"input": inputs, **body})


@pytest.mark.parametrize(
    "data, inputs, vectors",
    [
        ([[0.1, 0.2], [0.3, 0.4]], ["a", "b"], [[0.1, 0.2], [0.3, 0.4]]),
        ([[0.1, 0.2]], "a", [[0.1, 0.2]]),
        ([0.5, 0.25], "a", [[0.5, 0.25]]),  # a single input answered with a bare vector
        # per-token vectors (a model without pooling): mean-pooled per input
        ([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]]], ["a b", "c"], [[2.0, 3.0], [5.0, 6.0]]),
        ([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], "a b c", [[0.5, 0.5]]),
        ([[[[1.0, 1.0], [3.0, 3.0]]]], ["a b"], [[2.0, 2.0]]),  # transformers' [1, n, d]
    ],
)
def test_embedding_shapes(data: Any, inputs: Any, vectors: list[list[float]]) -> None:
    r = emb(data, inputs)
    assert r.data["object"] == "list" and r.data["model"] == MODEL
    got = [d["embedding"] for d in r.data["data"]]
    assert len(got) == len(vectors)
    for g, v in zip(got, vectors, strict=True):
        assert g == pytest.approx(v)
    assert [d["index"] for d in r.data["data"]] == list(range(len(vectors)))
    assert all(d["object"] == "embedding" for d in r.data["data"])
    assert r.usage.estimated and r.usage.prompt_tokens > 0
    assert r.data["usage"] == {
        "prompt_tokens": r.usage.prompt_tokens,
        "total_tokens": r.usage.prompt_tokens,
    }


def test_embeddings_in_base64() -> None:
    r = emb([[0.5, -1.25, 3.0]], "hello", encoding_format="base64")
    encoded = r.data["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (0.5, -1.25, 3.0)


@pytest.mark.parametrize(
    "data, inputs, problem",
    [
        ([[0.1], [0.2]], ["a", "b", "c"], "answered 2 embeddings for 3 inputs"),
        ([["x", "y"]], ["a"], "not a list of numbers"),
        ([[[1.0, 2.0], [3.0]]], ["a"], "differ in size"),
        ([[[[[1.0]]]]], ["a"], "nested 5 deep"),
        ({"error": "oops"}, ["a"], "oops"),
    ],
)
def test_embedding_answers_that_cannot_be_used(data: Any, inputs: Any, problem: str) -> None:
    with pytest.raises(ProviderError) as e:
        emb(data, inputs)
    assert e.value.status == 502 and problem in e.value.message


# ------------------------------------------------------------------ native (llm_format)


def test_native_format_config_loads() -> None:
    yaml = route_yaml("llm/v1/chat").replace(
        "              auth:", "              llm_format: huggingface\n              auth:"
    )
    conf = route_named(load(yaml), "hf").plugin("ai-proxy")
    assert conf.llm_format == "huggingface"
    assert PROVIDER.native_format == "huggingface"


def nspec(path: str, body: dict[str, Any], model: str | None = MODEL, **options: Any) -> CallSpec:
    s = spec(CHAT, body, model=model, **options)
    s.llm_format, s.path, s.raw_body = "huggingface", path, json.dumps(body).encode()
    return s


@pytest.mark.parametrize(
    "path, body, found",
    [
        ("/v1/chat/completions", {"model": "org/chat", "messages": HI}, "org/chat"),
        ("/models/org/name", {"inputs": "x"}, "org/name"),
        ("/hf-inference/models/BAAI/bge/pipeline/feature-extraction", {"inputs": "x"}, "BAAI/bge"),
        ("/models/gpt2/v1/chat/completions", {"messages": HI}, "gpt2"),
        ("/generate", {"inputs": "x"}, None),
    ],
)
def test_native_model(path: str, body: dict[str, Any], found: str | None) -> None:
    assert PROVIDER.native_model(nspec(path, body)) == found


# (id, client path, body, model, upstream_url, expected url, stream, sent body)
NATIVE_REQUESTS: list[tuple[str, str, dict[str, Any], str | None, str | None, str, bool, Any]] = [
    (
        "generate-to-the-task-api",
        "/generate",
        {"inputs": "x", "parameters": {"max_new_tokens": 5}},
        MODEL,
        None,
        f"{ROUTER}/hf-inference/models/{MODEL}",
        False,
        None,
    ),
    (
        "generate-stream-gets-the-stream-flag",
        "/generate_stream",
        {"inputs": "x"},
        MODEL,
        None,
        f"{ROUTER}/hf-inference/models/{MODEL}",
        True,
        {"inputs": "x", "stream": True},
    ),
    (
        "generate-stream-to-tgi-as-is",
        "/generate_stream",
        {"inputs": "x"},
        MODEL,
        "http://tgi:8080/generate",
        "http://tgi:8080/generate_stream",
        True,
        None,
    ),
    (
        "generate-to-a-tgi-server-by-its-origin",
        "/generate_stream",
        {"inputs": "x"},
        MODEL,
        "http://tgi:8080",
        "http://tgi:8080/generate_stream",
        True,
        None,
    ),
    (
        "chat-to-an-endpoint-by-its-v1-base-url",
        "/v1/chat/completions",
        {"model": "other", "messages": HI},
        MODEL,
        f"{ENDPOINT}/v1/",
        f"{ENDPOINT}/v1/chat/completions",
        False,
        {"model": MODEL, "messages": HI},
    ),
    (
        "task-path-gets-the-configured-model",
        "/models/gpt2",
        {"inputs": "x", "stream": True},
        MODEL,
        "http://mirror:1",
        f"http://mirror:1/models/{MODEL}",
        True,
        None,
    ),
    (
        "chat-body-gets-the-configured-model",
        "/v1/chat/completions",
        {"model": "other", "messages": HI},
        MODEL,
        None,
        f"{ROUTER}/v1/chat/completions",
        False,
        {"model": MODEL, "messages": HI},
    ),
    (
        "chat-without-model",
        "/v1/chat/completions",
        {"messages": HI, "stream": True},
        MODEL,
        None,
        f"{ROUTER}/v1/chat/completions",
        True,
        {"messages": HI, "stream": True, "model": MODEL},
    ),
]


@pytest.mark.parametrize(
    "path, body, model, upstream_url, url, stream, sent_body",
    [c[1:] for c in NATIVE_REQUESTS],
    ids=[c[0] for c in NATIVE_REQUESTS],
)
def test_native_requests(
    path: str,
    body: dict[str, Any],
    model: str | None,
    upstream_url: str | None,
    url: str,
    stream: bool,
    sent_body: Any,
) -> None:
    s = nspec(path, body, model, upstream_url=upstream_url, huggingface={"use_cache": False})
    req = PROVIDER.build_native_request(s)
    assert (req.url, req.stream) == (url, stream)
    assert json.loads(req.body) == (sent_body if sent_body is not None else body)
    assert req.headers["x-use-cache"] == "false"
    assert req.headers.get("accept") == ("text/event-stream" if stream else None)


def test_native_generate_without_a_model_is_a_400() -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_native_request(nspec("/generate", {"inputs": "x"}, model=None))
    assert e.value.status == 400 and e.value.param == "model"


def test_native_generate_answer_is_tgis_object_with_usage() -> None:
    s = nspec("/generate", {"inputs": "Count to three"})
    answer = [{"generated_text": "1 2 3", "details": {**DETAILS, "generated_tokens": 3}}]
    r = PROVIDER.parse_native_response(s, 200, {}, json.dumps(answer).encode())
    assert json.loads(r.body) == answer[0]  # /generate answers one object
    assert (r.usage.completion_tokens, r.usage.estimated) == (3, True)
    assert r.model == MODEL
    # the task API's own path keeps its list
    s = nspec(f"/models/{MODEL}", {"inputs": "x"})
    raw = json.dumps(answer).encode()
    assert (
        PROVIDER.parse_native_response(
            s, 200, {"x-prompt-tokens": "4", "x-generated-tokens": "3"}, raw
        ).body
        == raw
    )


def test_native_chat_answer_usage() -> None:
    data = fixture_json("huggingface/llm-v1-chat/responses/good.json")
    s = nspec("/v1/chat/completions", {"messages": HI})
    raw = json.dumps(data).encode()
    r = PROVIDER.parse_native_response(s, 200, {}, raw)
    assert r.body == raw
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (26, 40)


@pytest.mark.parametrize(
    "path, kind",
    [
        ("/v1/chat/completions", ChatStream),
        ("/generate_stream", TextGenerationStream),
        (f"/models/{MODEL}", TextGenerationStream),
        ("/v1/completions", OpenAIStream),
    ],
)
def test_native_stream_observer(path: str, kind: type) -> None:
    observer = PROVIDER.native_stream_observer(nspec(path, {"inputs": "What is deep learning?"}))
    assert isinstance(observer, kind)


def test_native_tgi_stream_is_observed() -> None:
    observer = PROVIDER.native_stream_observer(nspec("/generate_stream", {"inputs": "x"}))
    for c in byte_by_byte(RECORDED_TGI):
        observer.feed(c)
    observer.finish()
    assert observer.error is None
    assert observer.assembled()["choices"][0]["text"] == TGI_TEXT
    assert (observer.usage.prompt_tokens, observer.usage.completion_tokens) == (6, 7)
