"""providers/azure.py: URLs and api-version rules, config checks, Kong's Azure fixtures,
content filter fields and errors, and Azure's stream (its `prompt_filter_results` first
chunk) cut at every byte."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from addons import llm_request
from addons.config import ConfigError
from providers.azure import PROVIDER, AzureStream, supports_stream_options
from providers.base import CallSpec, ProviderError, RouteType, Usage
from providers.options import ModelConfig
from tests.fakes.azure import AzureScript, azure_api
from tests.fakes.upstream import Received
from tests.unit.conftest import byte_by_byte, every_split, fixture, fixture_json, load, spec

CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE = (
    RouteType.CHAT,
    RouteType.COMPLETIONS,
    RouteType.EMBEDDINGS,
    RouteType.PRESERVE,
)
HI = [{"role": "user", "content": "hi"}]
BODIES = {
    CHAT: {"messages": HI},
    COMPLETIONS: {"prompt": "Say hi"},
    EMBEDDINGS: {"input": "hi"},
    PRESERVE: {},
}
RESOURCE = "https://my-res.openai.azure.com"


def aspec(
    route_type: RouteType = CHAT,
    body: dict[str, Any] | None = None,
    *,
    query: str = "",
    stream: bool = False,
    wants_usage: bool = False,
    model: str | None = "gpt-4o",
    **options: Any,
) -> CallSpec:
    options.setdefault("azure_instance", "my-res")
    options.setdefault("azure_deployment_id", "gpt-4o-prod")
    s = spec(
        route_type,
        dict(BODIES[route_type] if body is None else body),
        model=model,
        stream=stream,
        wants_usage=wants_usage,
        **options,
    )
    s.query = query
    return s


def sent(s: CallSpec) -> dict[str, Any]:
    return json.loads(PROVIDER.build_request(s).body)


def test_provider_identity() -> None:
    assert PROVIDER.name == "azure"
    assert PROVIDER.route_types == {CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE}
    assert PROVIDER.auth_headers == ("api-key", "authorization")
    assert PROVIDER.native_format is None


# ============================================================================= URLs


@pytest.mark.parametrize(
    "route_type, options, query, expected",
    [
        (
            CHAT,
            {},
            "",
            f"{RESOURCE}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2023-05-15",
        ),
        (
            COMPLETIONS,
            {"azure_deployment_id": "instruct", "azure_api_version": "2024-10-21"},
            "",
            f"{RESOURCE}/openai/deployments/instruct/completions?api-version=2024-10-21",
        ),
        (
            EMBEDDINGS,
            {"azure_deployment_id": "embed small"},  # quoted into the path
            "",
            f"{RESOURCE}/openai/deployments/embed%20small/embeddings?api-version=2023-05-15",
        ),
        # the client's api-version wins over the route's (the AzureOpenAI SDK sends one);
        # no other client parameter is forwarded
        (
            CHAT,
            {"azure_api_version": "2024-10-21"},
            "api-version=2025-01-01-preview&foo=bar",
            f"{RESOURCE}/openai/deployments/gpt-4o-prod/chat/completions"
            "?api-version=2025-01-01-preview",
        ),
        # upstream_url: a bare origin keeps Azure's path (no instance needed)...
        (
            CHAT,
            {"azure_instance": None, "upstream_url": "http://127.0.0.1:8080"},
            "",
            "http://127.0.0.1:8080/openai/deployments/gpt-4o-prod/chat/completions"
            "?api-version=2023-05-15",
        ),
        # ... a URL with a path is used as written, api-version added when absent ...
        (
            CHAT,
            {"upstream_url": "https://apim.example/llm/chat", "azure_api_version": "2024-06-01"},
            "",
            "https://apim.example/llm/chat?api-version=2024-06-01",
        ),
        # ... or kept when it has one, unless the client sent its own
        (
            CHAT,
            {"upstream_url": "https://apim.example/x?api-version=2024-02-01&tenant=7"},
            "",
            "https://apim.example/x?tenant=7&api-version=2024-02-01",
        ),
        (
            CHAT,
            {"upstream_url": "https://apim.example/x?api-version=2024-02-01"},
            "api-version=2024-10-21",
            "https://apim.example/x?api-version=2024-10-21",
        ),
    ],
)
def test_urls(route_type: RouteType, options: dict[str, Any], query: str, expected: str) -> None:
    req = PROVIDER.build_request(aspec(route_type, query=query, **options))
    assert req.url == expected
    assert req.method == "POST"


def test_the_deployment_is_the_models_when_a_template_rendered_nothing_else() -> None:
    s = aspec(azure_deployment_id=None, model="gpt-4o-mini")
    assert "/deployments/gpt-4o-mini/" in PROVIDER.build_request(s).url


@pytest.mark.parametrize(
    "options, path, query, expected",
    [
        ({}, "/openai/models", "", f"{RESOURCE}/openai/models?api-version=2023-05-15"),
        (
            {},
            "/openai/deployments/d/audio/speech",
            "api-version=2025-03-01-preview",
            f"{RESOURCE}/openai/deployments/d/audio/speech?api-version=2025-03-01-preview",
        ),
        (
            {"upstream_url": "http://127.0.0.1:7"},
            "/openai/v1/responses",
            "",
            "http://127.0.0.1:7/openai/v1/responses?api-version=2023-05-15",
        ),
    ],
)
def test_preserve_sends_the_clients_path_with_an_api_version(
    options: dict[str, Any], path: str, query: str, expected: str
) -> None:
    raw = b'{"input": "x"}'
    s = aspec(PRESERVE, json.loads(raw), query=query, **options)
    s.path, s.raw_body = path, raw
    req = PROVIDER.build_request(s)
    assert (req.url, req.body) == (expected, raw)


# =========================================================================== config


def config(options: str, route_type: str = "llm/v1/chat") -> str:
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
              auth: {{header_name: api-key, header_value: k}}
              model:
                provider: azure
                name: gpt-4o
                options: {options}
"""


@pytest.mark.parametrize(
    "options, missing",
    [
        ("{azure_deployment_id: d}", "azure_instance"),
        ("{azure_instance: r}", "azure_deployment_id"),
        ('{upstream_url: "http://127.0.0.1:8080"}', "azure_deployment_id"),
        (
            "{azure_instance: r, azure_deployment_id: d, azure_api_version: null}",
            "azure_api_version",
        ),
    ],
)
def test_missing_azure_options_are_load_errors_naming_them(options: str, missing: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(config(options))
    assert f"model.options.{missing}" in str(e.value)


@pytest.mark.parametrize(
    "options, route_type",
    [
        ("{azure_instance: r, azure_deployment_id: d}", "llm/v1/chat"),
        ("{azure_instance: r, azure_deployment_id: d}", "llm/v1/embeddings"),
        ('{azure_instance: r, azure_deployment_id: "$(uri_captures.deployment)"}', "llm/v1/chat"),
        ('{upstream_url: "http://127.0.0.1:8080", azure_deployment_id: d}', "llm/v1/completions"),
        ('{upstream_url: "https://apim.example/llm/chat"}', "llm/v1/chat"),  # as written
        ("{azure_instance: r}", "preserve"),  # the client's path names the deployment
    ],
)
def test_complete_azure_options_load(options: str, route_type: str) -> None:
    load(config(options, route_type))


# ========================================================================= requests


@pytest.mark.parametrize(
    "api_version, asks",
    [
        ("2023-05-15", False),
        ("2024-02-01", False),
        ("2024-06-01", False),
        ("2024-08-01-preview", False),
        ("2024-09-01-preview", True),
        ("2024-10-21", True),
        ("2025-04-01-preview", True),
        ("preview", True),  # the v1 API
        ("v1", True),
    ],
)
def test_stream_usage_is_asked_for_only_where_the_api_version_takes_it(
    api_version: str, asks: bool
) -> None:
    assert supports_stream_options(api_version) is asks
    body = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    out = sent(aspec(CHAT, body, stream=True, wants_usage=True, azure_api_version=api_version))
    assert out["stream"] is True
    if asks:
        assert out["stream_options"] == {"include_usage": True}
    else:  # older versions answer 400 to the field, the client's own included
        assert "stream_options" not in out


def test_the_clients_api_version_decides_stream_usage_too() -> None:
    s = aspec(CHAT, {"messages": HI}, stream=True, query="api-version=2024-10-21")
    assert sent(s)["stream_options"] == {"include_usage": True}


def test_body_is_openais_with_the_model_and_no_credentials() -> None:
    body = {"messages": HI, "temperature": 0.1, "tools": [], "top_k": 5, "user": "u1"}
    req = PROVIDER.build_request(aspec(CHAT, body))
    assert json.loads(req.body) == {
        "messages": HI,
        "temperature": 0.1,
        "tools": [],
        "user": "u1",
        "model": "gpt-4o",
    }  # top_k is no OpenAI parameter
    assert req.headers == {"content-type": "application/json", "accept": "application/json"}


def kong_model(options: dict[str, Any]) -> ModelConfig:
    return ModelConfig(provider="azure", name=options.pop("name"), options=options)


@pytest.mark.parametrize(
    "route_type, name, model",
    [(CHAT, "llm-v1-chat", "gpt-4"), (COMPLETIONS, "llm-v1-completions", "gpt-3.5-turbo-instruct")],
)
def test_kongs_expected_azure_requests(route_type: RouteType, name: str, model: str) -> None:
    request = fixture_json(f"unit/requests/{name}.json")
    expected = fixture_json(f"unit/expected-requests/azure/{name}.json")
    cfg = kong_model(
        {
            "name": model,
            "max_tokens": 512,
            "temperature": 0.5,
            "top_p": 1.0,
            "azure_instance": "001-kong-t",
            "azure_deployment_id": "gpt-3.5-custom",
        }
    )
    body = llm_request.apply_options(route_type, request, cfg)
    s = aspec(route_type, body, model=model, **cfg.options.model_dump(exclude_none=True))
    req = PROVIDER.build_request(s)
    # Kong also sends "stream": false; the gateway omits the field, which means the same
    assert expected.pop("stream") is False
    assert json.loads(req.body) == expected
    assert req.url == (
        f"https://001-kong-t.openai.azure.com/openai/deployments/gpt-3.5-custom/"
        f"{'chat/completions' if route_type is CHAT else 'completions'}?api-version=2023-05-15"
    )


@pytest.mark.parametrize(
    "route_type, name", [(CHAT, "llm-v1-chat"), (COMPLETIONS, "llm-v1-completions")]
)
def test_kongs_real_azure_responses_reach_the_client_as_expected(
    route_type: RouteType, name: str
) -> None:
    real = fixture_json(f"unit/real-responses/azure/{name}.json")
    expected = fixture_json(f"unit/expected-responses/azure/{name}.json")
    raw = json.dumps(real).encode()
    reply = PROVIDER.parse_response(aspec(route_type), 200, {}, raw)
    assert json.loads(reply.body) == expected
    assert reply.body == raw  # passed through untouched
    u = real["usage"]
    assert reply.usage == Usage(u["prompt_tokens"], u["completion_tokens"])
    assert reply.model == real["model"]


def test_kongs_azure_answer_in_json_reaches_the_client_untouched() -> None:
    """Kong's request-transformer fixture: a whole Azure chat answer whose content is
    JSON text, with a null system_fingerprint."""
    raw = fixture("azure/request-transformer/response-in-json.json").read_bytes()
    reply = PROVIDER.parse_response(aspec(CHAT), 200, {}, raw)
    assert reply.body == raw  # byte for byte, as Azure sent it
    content = reply.data["choices"][0]["message"]["content"]
    assert json.loads(content)["persons"][1] == {"name": "Kong B", "age": 84}
    assert reply.usage == Usage(25, 12)
    assert reply.model == "gpt-3.5-turbo-0613"
    assert reply.data["choices"][0]["finish_reason"] == "stop"


def test_the_fake_accepts_what_the_adapter_sends_and_rejects_what_azure_rejects() -> None:
    handler = azure_api("k", AzureScript())

    def call(s: CallSpec) -> int:
        up = PROVIDER.build_request(s)
        path = up.url.removeprefix(RESOURCE)
        return handler(Received("POST", path, {"api-key": "k"}, up.body)).status

    body = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    for version in ("2023-05-15", "2024-06-01", "2024-10-21"):
        assert call(aspec(CHAT, body, stream=True, azure_api_version=version)) == 200
    # what a plain OpenAI adapter would send to an old api-version is refused
    reply = handler(
        Received(
            "POST",
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-06-01",
            {"api-key": "k"},
            json.dumps({**body, "model": "gpt-4o"}).encode(),
        )
    )
    assert reply.status == 400 and b"stream_options" in reply.body


# ========================================================================== answers

AZURE_CHAT = {
    "choices": [
        {
            "content_filter_results": {
                "hate": {"filtered": False, "severity": "safe"},
                "protected_material_code": {"filtered": False, "detected": False},
                "protected_material_text": {"filtered": False, "detected": False},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
            },
            "finish_reason": "content_filter",
            "index": 0,
            "logprobs": None,
            "message": {"content": "The battle", "refusal": None, "role": "assistant"},
        }
    ],
    "created": 1731000000,
    "id": "chatcmpl-AR1",
    "model": "gpt-4o-2024-08-06",
    "object": "chat.completion",
    "prompt_filter_results": [
        {
            "prompt_index": 0,
            "content_filter_results": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": False, "detected": False},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": False, "severity": "safe"},
            },
        }
    ],
    "system_fingerprint": "fp_d54531d9eb",
    "usage": {
        "completion_tokens": 2,
        "completion_tokens_details": {"reasoning_tokens": 0},
        "prompt_tokens": 1530,
        "prompt_tokens_details": {"cached_tokens": 1408},
        "total_tokens": 1532,
    },
}


def test_a_filtered_answer_keeps_azures_filter_fields() -> None:
    raw = json.dumps(AZURE_CHAT).encode()
    reply = PROVIDER.parse_response(aspec(), 200, {}, raw)
    assert reply.body == raw
    assert reply.data["choices"][0]["finish_reason"] == "content_filter"
    assert reply.data["choices"][0]["content_filter_results"]["violence"]["filtered"] is True
    assert reply.data["prompt_filter_results"][0]["prompt_index"] == 0
    assert reply.usage == Usage(1530, 2, cache_read_tokens=1408)


def test_base64_embeddings_from_an_api_version_that_answers_floats() -> None:
    floats = [[0.25, -0.5, 1.0]]
    raw = json.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": floats[0]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }
    ).encode()
    s = aspec(EMBEDDINGS, {"input": "hi", "encoding_format": "base64"})
    assert sent(s)["encoding_format"] == "base64"  # newer api-versions honour it
    out = json.loads(PROVIDER.parse_response(s, 200, {}, raw).body)
    vector = base64.b64decode(out["data"][0]["embedding"])
    assert list(struct.unpack("<3f", vector)) == floats[0]


# =========================================================================== errors

CONTENT_FILTER_ERROR = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy. Please modify your prompt and retry.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": True, "detected": True},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "high"},
            },
        },
    }
}


def test_a_prompt_the_filter_rejects_is_a_400_content_filter_naming_the_categories() -> None:
    err = PROVIDER.parse_error(400, {}, json.dumps(CONTENT_FILTER_ERROR).encode())
    assert (err.status, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "content_filter",
        "prompt",
    )
    assert err.message.startswith("The response was filtered due to the prompt")
    assert err.message.endswith("(filtered: jailbreak, violence (high))")


@pytest.mark.parametrize(
    "status, body, headers, expected",
    [
        (
            429,
            {
                "error": {
                    "code": "429",
                    "message": "Requests to the ChatCompletions_Create Operation under Azure "
                    "OpenAI API version 2024-10-21 have exceeded token rate limit of your "
                    "current OpenAI S0 pricing tier. Please retry after 7 seconds.",
                }
            },
            {},
            (429, "rate_limit_error", "429", {"retry-after": "7"}),
        ),
        (  # Azure's own header wins: nothing added
            429,
            {"error": {"code": "429", "message": "Please retry after 7 seconds."}},
            {"Retry-After": "9"},
            (429, "rate_limit_error", "429", {}),
        ),
        (
            401,
            {"error": {"code": "401", "message": "Access denied due to invalid subscription key"}},
            {},
            (401, "authentication_error", "401", {}),
        ),
        (
            404,
            {"error": {"code": "DeploymentNotFound", "message": "The API deployment ..."}},
            {},
            (404, "not_found_error", "DeploymentNotFound", {}),
        ),
        (
            400,
            {
                "error": {
                    "message": "Unrecognized request argument supplied: stream_options",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            {},
            (400, "invalid_request_error", None, {}),
        ),
    ],
)
def test_azure_errors_keep_status_and_message(
    status: int, body: dict[str, Any], headers: dict[str, str], expected: tuple[Any, ...]
) -> None:
    err = PROVIDER.parse_error(status, headers, json.dumps(body).encode())
    assert (err.status, err.type, err.code, err.headers) == expected
    assert err.message == body["error"]["message"]


# ========================================================================== streams

FILTERS_SAFE = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


def chunk(
    delta: dict[str, Any] | None, finish: str | None = None, filters: dict[str, Any] | None = None
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "content_filter_results": FILTERS_SAFE if filters is None else filters,
        "finish_reason": finish,
        "index": 0,
        "logprobs": None,
    }
    if delta is not None:
        choice["delta"] = delta
    return {
        "choices": [choice],
        "created": 1731000000,
        "id": "chatcmpl-AR2",
        "model": "gpt-4o-2024-08-06",
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_d54531d9eb",
    }


def sse(*objs: Any) -> bytes:
    return b"".join(
        o
        if isinstance(o, bytes)
        else b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n"
        for o in objs
    )


PROMPT_FILTERS = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": [
        {
            "prompt_index": 0,
            "content_filter_results": {
                **FILTERS_SAFE,
                "jailbreak": {"filtered": False, "detected": False},
            },
        }
    ],
}
USAGE_CHUNK = {
    "choices": [],
    "created": 1731000000,
    "id": "chatcmpl-AR2",
    "model": "gpt-4o-2024-08-06",
    "object": "chat.completion.chunk",
    "system_fingerprint": "fp_d54531d9eb",
    "usage": {
        "completion_tokens": 4,
        "completion_tokens_details": {"reasoning_tokens": 0},
        "prompt_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 0},
        "total_tokens": 29,
    },
}
# Azure's stream as the service sends it (api-version 2024-10-21, usage asked for)
AZURE_STREAM = sse(
    PROMPT_FILTERS,
    chunk({"content": "", "refusal": None, "role": "assistant"}, filters={}),
    chunk({"content": "Hello"}),
    chunk({"content": " from"}),
    chunk({"content": " Azure."}),
    chunk({}, "stop", filters={}),
    USAGE_CHUNK,
    b"data: [DONE]\n\n",
)


def translator(*, wants_usage: bool = False, route_type: RouteType = CHAT) -> AzureStream:
    return PROVIDER.stream_translator(aspec(route_type, stream=True, wants_usage=wants_usage))


def run(t: AzureStream, chunks: list[bytes], error: ProviderError | None = None) -> bytes:
    return b"".join(b"".join(t.feed(c)) for c in chunks) + b"".join(t.finish(error))


def parsed(raw: bytes) -> list[Any]:
    return [
        b.decode().removeprefix("data: ") if b == b"data: [DONE]" else json.loads(b[6:])
        for b in raw.split(b"\n\n")
        if b.strip()
    ]


@pytest.mark.parametrize("wants_usage", [False, True])
def test_azure_stream_at_every_split(wants_usage: bool) -> None:
    whole = translator(wants_usage=wants_usage)
    expected = run(whole, [AZURE_STREAM])
    for chunks in [*every_split(AZURE_STREAM), byte_by_byte(AZURE_STREAM)]:
        t = translator(wants_usage=wants_usage)
        assert run(t, chunks) == expected
        assert t.error is None and t.usage == Usage(25, 4)
        assert t.assembled() == whole.assembled()


def test_the_prompt_filter_chunk_reaches_the_client_and_the_record() -> None:
    t = translator(wants_usage=True)
    out = run(t, [AZURE_STREAM])
    assert out == AZURE_STREAM  # byte for byte, the choices: [] first chunk included
    got = parsed(out)
    assert got[0] == PROMPT_FILTERS
    answer = t.assembled()
    assert answer["id"] == "chatcmpl-AR2" and answer["model"] == "gpt-4o-2024-08-06"
    assert answer["prompt_filter_results"] == PROMPT_FILTERS["prompt_filter_results"]
    choice = answer["choices"][0]
    assert choice["message"]["content"] == "Hello from Azure."
    assert choice["finish_reason"] == "stop"
    assert choice["content_filter_results"] == FILTERS_SAFE
    assert t.started


def test_without_include_usage_only_the_usage_chunk_is_removed() -> None:
    t = translator(wants_usage=False)
    got = parsed(run(t, [AZURE_STREAM]))
    assert got[0] == PROMPT_FILTERS  # a choices: [] chunk without usage stays
    assert all("usage" not in e for e in got if isinstance(e, dict))
    assert got[-1] == "[DONE]"
    assert t.usage == Usage(25, 4)


def test_an_old_api_version_stream_has_no_usage_and_the_record_estimates() -> None:
    old = sse(
        PROMPT_FILTERS,
        chunk({"content": "", "role": "assistant"}, filters={}),
        chunk({"content": "Hi"}),
        chunk({}, "stop", filters={}),
        b"data: [DONE]\n\n",
    )
    t = translator(wants_usage=True)
    assert run(t, [old]) == old  # nothing invented for the client
    assert t.usage is None and t.error is None


def test_a_stream_cut_by_the_output_filter() -> None:
    violence = {**FILTERS_SAFE, "violence": {"filtered": True, "severity": "medium"}}
    stream = sse(
        PROMPT_FILTERS,
        chunk({"content": "", "role": "assistant"}, filters={}),
        chunk({"content": "The battle"}),
        chunk({}, "content_filter", filters=violence),
        b"data: [DONE]\n\n",
    )
    t = translator()
    assert run(t, byte_by_byte(stream)) == stream
    choice = t.assembled()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["content_filter_results"]["violence"] == {"filtered": True, "severity": "medium"}
    assert t.error is None


def test_completions_stream() -> None:
    def c(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "choices": [
                {
                    "content_filter_results": FILTERS_SAFE,
                    "finish_reason": finish,
                    "index": 0,
                    "logprobs": None,
                    "text": text,
                }
            ],
            "created": 1,
            "id": "cmpl-1",
            "model": "gpt-35-turbo-instruct",
            "object": "text_completion",
        }

    stream = sse(PROMPT_FILTERS, c("Hello"), c(" world"), c("", "stop"), b"data: [DONE]\n\n")
    for chunks in every_split(stream):
        t = translator(route_type=COMPLETIONS)
        assert run(t, chunks) == stream
        assert t.assembled()["choices"][0]["text"] == "Hello world"


def test_a_stream_broken_off_ends_with_an_error_event() -> None:
    cut = AZURE_STREAM[: AZURE_STREAM.index(b" from") + 3]
    err = ProviderError(502, "upstream connection lost")
    t = translator()
    got = parsed(run(t, [cut], err))
    assert t.error is err and got[-2] == err.to_openai() and got[-1] == "[DONE]"
    assert t.assembled()["choices"][0]["message"]["content"] == "Hello"
    # and one that ends cleanly, between two events, before finishing
    events = AZURE_STREAM.split(b"\n\n")
    t = translator()
    got = parsed(run(t, [b"\n\n".join(events[:4]) + b"\n\n"]))
    assert t.error is not None and "before the answer was complete" in t.error.message
    assert got[-2] == t.error.to_openai() and got[-1] == "[DONE]"
