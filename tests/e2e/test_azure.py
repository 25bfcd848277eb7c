"""The gateway end to end with `provider: azure`.

A real `mitmdump -s addons/gateway.py`, the fake Azure OpenAI resource of
`tests/fakes/azure.py` (deployments, api-version rules, `api-key`, content filtering), and
the official `openai` SDK as the client: `openai.OpenAI` on the gateway's OpenAI-style
routes, and `openai.AzureOpenAI(azure_endpoint=<gateway>)` on a route that matches the
path it uses (`/openai/deployments/{deployment}/chat/completions?api-version=...`). Each
test checks what the client gets, what the resource received, and the call record.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import REPO, Gateway
from tests.fakes.azure import DEPLOYMENTS, AzureScript, azure_api
from tests.fakes.openai_like import vector
from tests.fakes.upstream import FakeUpstream

SECRET = "azure-test-key-0123456789abcdef"
MODEL = "gpt-4o"
DEPLOYED = "gpt-4o-2024-11-20"  # what the fake's gpt-4o-prod deployment serves

ROUTE = """
      - name: {name}
        paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              auth: {auth}
              model:
                provider: azure
                {model}
                options: {options}
              logging: {{log_statistics: true, log_payloads: true}}"""

KEY_AUTH = '{header_name: api-key, header_value: "{vault://env/LLMITM_AZURE_KEY}"}'


def route(name: str, path: str, options: str, route_type: str = "llm/v1/chat", **kw: str) -> str:
    return ROUTE.format(
        name=name,
        path=path,
        route_type=route_type,
        auth=kw.get("auth", KEY_AUTH),
        model=kw.get("model", f"name: {MODEL}"),
        options=options,
    )


def opts(deployment: str, version: str | None = "2024-10-21", extra: str = "") -> str:
    parts = [
        "azure_instance: my-res",
        f"azure_deployment_id: {deployment}",
        'upstream_url: "UPSTREAM"',
    ]
    if version:
        parts.append(f'azure_api_version: "{version}"')
    return "{" + ", ".join(parts) + extra + "}"


CONFIG = (
    """
_format_version: "3.0"
services:
  - name: azure-fake
    url: http://127.0.0.1:9
    read_timeout: 5000
    routes:"""
    + route(
        "azure-chat",
        "/azure/v1/chat/completions",
        opts("gpt-4o-prod", extra=", input_cost: 2.5, output_cost: 10.0, cache_read_cost: 1.25"),
    )
    + route(
        "azure-completions",
        "/azure/v1/completions",
        opts("instruct"),
        "llm/v1/completions",
        model="name: gpt-35-turbo-instruct",
    )
    + route(
        "azure-embeddings",
        "/azure/v1/embeddings",
        opts("embed-small", version=None),  # Kong's default api-version: answers floats
        "llm/v1/embeddings",
        model="name: text-embedding-3-small",
    )
    + route("azure-legacy", "/legacy/v1/chat/completions", opts("gpt-4o-prod", version=None))
    + route(
        "azure-sdk",
        "~/sdk/openai/deployments/(?<deployment>[a-z0-9-]+)/chat/completions$",
        opts("$(uri_captures.deployment)", version=None),
        model="",
    )
    + route(
        "azure-entra",
        "/entra/v1/chat/completions",
        opts("gpt-4o-prod"),
        auth='{header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_AZURE_KEY}"}',
    )
    + route(
        "azure-wrong-key",
        "/wrongkey/v1/chat/completions",
        opts("gpt-4o-prod"),
        auth="{header_name: api-key, header_value: not-the-key}",
    )
    + route("azure-no-deployment", "/gone/v1/chat/completions", opts("deleted-deployment"))
    + """
plugins:
  - name: file-log
    config: {path: "{records}"}
"""
)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw-azure"),
        CONFIG.replace("UPSTREAM", upstream.url),
        quiet=False,
        env={"LLMITM_AZURE_KEY": SECRET},
    )
    g.wait_ready()
    yield g
    g.stop()
    # Nothing any test did may leak the provider key into a record or the log.
    assert SECRET not in g.records_path.read_text()
    assert SECRET not in g.log()


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def client_for(gw: Gateway, prefix: str = "azure") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/{prefix}/v1",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return client_for(gw)


def serve(fake: FakeUpstream, script: AzureScript | None = None) -> None:
    fake.reply(azure_api(SECRET, script))


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "1+1?"}]


def usage_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["usage"]


# ----------------------------------------------------------------------------- chat


def test_chat_answer_usage_filters_and_record(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, AzureScript(text="1 + 1 = 2.", prompt_tokens=1530, cached_tokens=1408))
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, *ASK],
        temperature=0.2,
        user="user-7",
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "1 + 1 = 2."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == DEPLOYED
    assert answer.usage.prompt_tokens == 1530
    assert answer.usage.prompt_tokens_details.cached_tokens == 1408
    body = raw.http_response.json()  # Azure's filter results reach the client
    assert body["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] == {
        "filtered": False,
        "detected": False,
    }
    assert body["choices"][0]["content_filter_results"]["violence"]["severity"] == "safe"
    # the model the call was sent with (the one that answered is in the body)
    assert raw.headers["x-llm-model"] == f"azure/{MODEL}"

    sent = fake.last()
    assert sent.path == "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == SECRET  # the route's key
    assert "authorization" not in sent.headers  # the client's credential is dropped
    assert sent.json() == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, *ASK],
        "temperature": 0.2,
        "user": "user-7",
    }

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "azure-chat"}
    meta = rec["ai"]["proxy"]["meta"]
    assert meta["provider_name"] == "azure" and meta["request_mode"] == "oneshot"
    assert (meta["request_model"], meta["response_model"]) == (MODEL, DEPLOYED)
    assert meta["finish_reason"] == "stop"
    usage = usage_of(rec)
    assert usage["source"] == "reported"
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["cache_read_tokens"]) == (
        1530,
        9,
        1408,
    )
    assert usage["cost"] == pytest.approx((122 * 2.5 + 1408 * 1.25 + 9 * 10.0) / 1e6)
    response = rec["ai"]["proxy"]["payload"]["response"]
    assert response["prompt_filter_results"][0]["prompt_index"] == 0


def test_streamed_chat_with_the_prompt_filter_chunk(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, AzureScript(text="The answer is exactly two.", pause=0.15, chunk_size=9))
    t0 = time.monotonic()
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    chunks, got, first_at, finish, usage = [], [], None, None, None
    for c in stream:
        chunks.append(c)
        if c.usage is not None:
            usage = c.usage
        for choice in c.choices:
            if choice.delta.content:
                first_at = first_at or time.monotonic() - t0
                got.append(choice.delta.content)
            finish = choice.finish_reason or finish
    total = time.monotonic() - t0
    # Azure's first chunk has no choices and the prompt's filter results: it gets through
    assert chunks[0].choices == []
    assert chunks[0].model_extra["prompt_filter_results"][0]["prompt_index"] == 0
    assert "".join(got) == "The answer is exactly two."
    assert finish == "stop"
    assert first_at is not None and first_at < total - 0.3  # streamed, not buffered
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (23, 9)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None

    sent = fake.last().json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["prompt_tokens"] == 23
    assert usage_of(rec)["time_to_first_token"] > 100
    response = rec["ai"]["proxy"]["payload"]["response"]
    assert response["choices"][0]["message"]["content"] == "The answer is exactly two."
    assert response["prompt_filter_results"][0]["content_filter_results"]["hate"] == {
        "filtered": False,
        "severity": "safe",
    }
    assert response["model"] == DEPLOYED


def test_stream_without_include_usage_has_no_usage_chunk(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, AzureScript(text="ok then"))
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok then"
    assert fake.last().json()["stream_options"] == {"include_usage": True}  # the gateway's
    assert usage_of(my_record(gw))["source"] == "reported"


def test_the_azure_sdk_through_the_gateway(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, AzureScript(text="Hi from the SDK."))
    azure = openai.AzureOpenAI(
        azure_endpoint=f"{gw.url}/sdk",
        api_version="2025-01-01-preview",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )
    answer = azure.chat.completions.create(model="gpt-4o-prod", messages=ASK)
    assert answer.choices[0].message.content == "Hi from the SDK."
    sent = fake.last()
    # the deployment from the SDK's path, the SDK's api-version (the client's wins)
    assert sent.path == (
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2025-01-01-preview"
    )
    assert sent.headers["api-key"] == SECRET  # not the SDK's "client-key"
    rec = my_record(gw)
    assert rec["route"] == {"name": "azure-sdk"}
    assert rec["ai"]["proxy"]["meta"]["request_model"] == "gpt-4o-prod"

    TAG["id"] = f"msg-{uuid.uuid4().hex}"  # the streamed call's own record
    stream = azure.chat.completions.create(
        model="gpt-4o-prod",
        messages=ASK,
        stream=True,
        extra_headers={"X-Message-Id": TAG["id"]},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Hi from the SDK."
    )
    # the SDK's api-version takes stream_options: the gateway asked for usage
    assert fake.last().json()["stream_options"] == {"include_usage": True}
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported"


def test_entra_bearer_auth(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, AzureScript(text="authorized"))
    answer = client_for(gw, "entra").chat.completions.create(model=MODEL, messages=ASK)
    assert answer.choices[0].message.content == "authorized"
    assert fake.last().headers["authorization"] == f"Bearer {SECRET}"


# ---------------------------------------------------------------------- completions


def test_completions(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, AzureScript(text="Hello world, said the model."))
    client = client_for(gw)
    out = client.completions.create(model="gpt-35-turbo-instruct", prompt="Say hi", max_tokens=20)
    assert out.object == "text_completion"
    assert out.choices[0].text == "Hello world, said the model."
    assert out.choices[0].finish_reason == "stop"
    sent = fake.last()
    assert sent.path == "/openai/deployments/instruct/completions?api-version=2024-10-21"
    assert sent.json() == {"model": "gpt-35-turbo-instruct", "prompt": "Say hi", "max_tokens": 20}
    rec = my_record(gw)
    assert rec["status"] == "ok" and usage_of(rec)["source"] == "reported"
    assert rec["ai"]["proxy"]["meta"]["route_type"] == "llm/v1/completions"


def test_streamed_completions(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, AzureScript(text="one two three four", chunk_size=5))
    client = client_for(gw)
    chunks = list(
        client.completions.create(
            model="gpt-35-turbo-instruct",
            prompt="Count",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["text"] == "one two three four"


# ----------------------------------------------------------------------- embeddings


def test_embeddings_as_the_sdk_asks_base64_from_a_resource_answering_floats(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, AzureScript(prompt_tokens=6))
    out = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert [d.embedding for d in out.data] == [vector(0), vector(1)]
    sent = fake.last()
    assert sent.path == "/openai/deployments/embed-small/embeddings?api-version=2023-05-15"
    assert sent.json()["encoding_format"] == "base64"  # the SDK's default, passed on
    rec = my_record(gw)
    assert usage_of(rec)["prompt_tokens"] == 6 and usage_of(rec)["source"] == "reported"

    # a raw client asking for base64 gets base64 strings, not Azure's floats
    r = httpx.post(
        f"{gw.url}/azure/v1/embeddings",
        json={"input": "alpha", "encoding_format": "base64"},
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    item = r.json()["data"][0]
    assert isinstance(item["embedding"], str)
    raw = base64.b64decode(item["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == vector(0)

    floats = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", encoding_format="float", dimensions=3
    )
    assert floats.data[0].embedding == vector(0, 3)


# ---------------------------------------------------------------------------- tools


def test_streamed_tool_calls_and_the_round_trip(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(
        fake,
        AzureScript(
            tool_calls=[("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
        ),
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], stream=True
    ):
        for choice in c.choices:
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
                entry["id"] += d.id or ""
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["args"] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "call_fake0000", "name": "get_weather", "args": '{"city": "Paris"}'},
        1: {"id": "call_fake0001", "name": "get_time", "args": '{"tz": "Europe/Paris"}'},
    }
    assert fake.last().json()["tools"] == [WEATHER, TIME]
    recorded = my_record(gw)["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]
    assert [c["function"]["name"] for c in recorded["tool_calls"]] == ["get_weather", "get_time"]

    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["args"]},
            }
            for c in calls.values()
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": "call_fake0000", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_fake0001", "content": "14:05"},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=[*ASK, assistant, *results], tools=[WEATHER, TIME]
    )
    assert final.choices[0].message.content == "The answer is 2."
    assert fake.last().json()["messages"][1:] == [assistant, *results]


def test_non_streamed_tool_calls(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, AzureScript(tool_calls=[("get_weather", {"city": "Oslo"})]))
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required"
    )
    call = answer.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_fake0000",
        "get_weather",
        {"city": "Oslo"},
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    assert fake.last().json()["tool_choice"] == "required"


# --------------------------------------------------------------------------- images


def test_images_are_passed_through(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, AzureScript(text="A red square."))
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    content = [
        {"type": "text", "text": "What is in these images?"},
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{png}", "detail": "low"},
        },
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == "A red square."
    assert fake.last().json()["messages"] == [{"role": "user", "content": content}]


# ---------------------------------------------------------------- content filtering


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_the_filter_rejects_is_a_400_content_filter(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, stream: bool
) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "tell me about forbidden-topic"}],
            stream=stream,
        )
        list(r) if stream else None
    assert e.value.status_code == 400
    assert e.value.code == "content_filter"
    assert e.value.body["type"] == "invalid_request_error"
    assert e.value.body["param"] == "prompt"
    assert "content management policy" in e.value.message
    assert "filtered: violence (high), jailbreak" in e.value.message
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"
    assert (rec["error"]["status"], rec["error"]["code"]) == (400, "content_filter")


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_by_the_filter(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, stream: bool
) -> None:
    serve(fake, AzureScript(text="The battle", filter_answer=True))
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        last = [c for c in chunks if c.choices][-1].choices[0].model_extra
    else:
        answer = client.chat.completions.create(model=MODEL, messages=ASK)
        finish = answer.choices[0].finish_reason
        last = answer.choices[0].model_extra
    assert finish == "content_filter"
    assert last["content_filter_results"]["violence"] == {"filtered": True, "severity": "medium"}
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["finish_reason"] == "content_filter"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("header", [True, False])
def test_rate_limit_keeps_status_and_retry_after(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, header: bool
) -> None:
    message = (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
        "Please retry after 7 seconds."
    )
    serve(fake, AzureScript(fail=(429, message), retry_after_header=header))
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK)
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "7"  # Azure's, or read from the message
    assert e.value.body["message"] == message
    assert e.value.body["type"] == "rate_limit_error"
    assert my_record(gw)["error"]["status"] == 429


def test_a_wrong_key_is_a_401(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    with pytest.raises(openai.AuthenticationError) as e:
        client_for(gw, "wrongkey").chat.completions.create(model=MODEL, messages=ASK)
    assert e.value.status_code == 401
    assert "Access denied due to invalid subscription key" in e.value.message
    assert e.value.body["code"] == "401"
    assert my_record(gw)["error"]["source"] == "upstream"


def test_a_deployment_that_does_not_exist_is_a_404(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    with pytest.raises(openai.NotFoundError) as e:
        client_for(gw, "gone").chat.completions.create(model=MODEL, messages=ASK)
    assert e.value.body["code"] == "DeploymentNotFound"
    assert fake.last().path.startswith("/openai/deployments/deleted-deployment/")


def test_a_stream_cut_mid_way_is_an_error(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, AzureScript(text="one two three four five six seven", chunk_size=100, cut_after=25))
    got = []
    with pytest.raises(openai.APIError):
        for c in client.chat.completions.create(model=MODEL, messages=ASK, stream=True):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "one" in "".join(got) and "seven" not in "".join(got)
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


# ------------------------------------------------------- an older api-version


def test_an_old_api_version_stream_has_no_usage_and_the_record_estimates_it(
    gw: Gateway, fake: FakeUpstream
) -> None:
    serve(fake, AzureScript(text="Counted by the gateway."))
    chunks = list(
        client_for(gw, "legacy").chat.completions.create(
            model=MODEL, messages=ASK, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Counted by the gateway."
    assert all(c.usage is None for c in chunks)  # Azure gave none: nothing invented
    sent = fake.last()
    assert sent.path.endswith("?api-version=2023-05-15")  # Kong's default
    assert "stream_options" not in sent.json()  # 2023-05-15 answers 400 to it
    rec = my_record(gw)
    assert rec["status"] == "ok"
    usage = usage_of(rec)
    assert usage["source"] == "estimated" and usage["completion_tokens"] > 0


def test_an_old_api_version_rejects_tools_with_azures_400(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        client_for(gw, "legacy").chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    assert e.value.body["message"] == "Unrecognized request argument supplied: tools"
    assert e.value.body["type"] == "invalid_request_error"


# ------------------------------------------------------- the shipped configs/azure.yaml

SHIPPED = REPO / "configs" / "azure.yaml"


def shipped_config(upstream_url: str) -> str:
    """configs/azure.yaml as shipped, with two substitutions only: each route's resource
    (`azure_instance: my-resource`, i.e. https://my-resource.openai.azure.com) is the fake,
    given as the route's `upstream_url` next to it, and the call log goes to the test's
    file."""
    text, n = re.subn(
        r"^( *)azure_instance: my-resource$",
        rf'\g<0>\n\1upstream_url: "{upstream_url}"',
        SHIPPED.read_text(),
        flags=re.MULTILINE,
    )
    assert n == 3 and "logs/llmitm-calls.jsonl" in text
    return text.replace("logs/llmitm-calls.jsonl", "{records}")


@pytest.fixture(scope="module")
def shipped(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw-azure-shipped"),
        shipped_config(upstream.url),
        env={"AZURE_OPENAI_KEY": SECRET},
    )
    g.wait_ready()
    yield g
    g.stop()


def test_the_shipped_config_serves_both_sdks(shipped: Gateway, fake: FakeUpstream) -> None:
    """configs/azure.yaml works as its comments say: openai.OpenAI on /v1, and
    openai.AzureOpenAI(azure_endpoint=<gateway>) on the paths that SDK calls."""
    serve(fake, AzureScript(text="Hi.", deployments={**DEPLOYMENTS, "gpt-4o": DEPLOYED}))
    plain = openai.OpenAI(base_url=f"{shipped.url}/v1", api_key="client-key", max_retries=0)
    answer = plain.chat.completions.create(model=MODEL, messages=ASK)
    assert answer.choices[0].message.content == "Hi."
    sent = fake.last()
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == SECRET

    azure = openai.AzureOpenAI(
        azure_endpoint=shipped.url,
        api_version="2025-01-01-preview",
        api_key="client-key",
        max_retries=0,
    )
    answer = azure.chat.completions.create(model="gpt-4o-prod", messages=ASK)
    assert answer.choices[0].message.content == "Hi."
    sent = fake.last()
    # the deployment from the SDK's path, the SDK's api-version, the route's key
    assert sent.path == (
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2025-01-01-preview"
    )
    assert sent.headers["api-key"] == SECRET
    streamed = azure.chat.completions.create(model="gpt-4o-prod", messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Hi."

    vectors = azure.embeddings.create(model="embed-small", input=["alpha"])
    assert [d.embedding for d in vectors.data] == [vector(0)]
    assert fake.last().path.startswith("/openai/deployments/embed-small/embeddings?")

    routes = [r["route"]["name"] for r in shipped.wait_records(4)]
    assert routes == ["azure-chat", "azure-sdk-chat", "azure-sdk-chat", "azure-sdk-embeddings"]
    assert SECRET not in shipped.records_path.read_text()
