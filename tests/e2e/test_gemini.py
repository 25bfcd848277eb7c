"""The gateway end to end with the Gemini provider (Google AI Studio and Vertex AI).

A real `mitmdump -s addons/gateway.py`, the fake Gemini API of `tests/fakes/gemini.py`
(which checks the API key or the OAuth token, validates every request body like Google
does, and answers in JSON, SSE or Google's JSON-array stream), a fake OAuth token
endpoint that verifies the service account's signed JWT, the official `openai` SDK as
the client, and plain httpx for Gemini's own format (`llm_format: gemini`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import openai
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.conftest import Gateway
from tests.fakes.gemini import FakeGemini, ServiceAccount, b64url, make_service_account
from tests.fakes.upstream import FakeUpstream, Received
from tests.unit.conftest import fixture_json

KEY = "AIza-test-gemini-key-0123456789abcdef"
PROJECT = "llmitm-test"
VERTEX = (
    "{api_endpoint: us-central1-aiplatform.googleapis.com, "
    f"project_id: {PROJECT}, location_id: us-central1}}"
)

CONFIG = """
_format_version: "3.0"
services:
  - name: gemini
    url: http://127.0.0.1:9
    routes:
      - name: studio
        paths: ["/studio/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: x-goog-api-key, header_value: "{vault://env/GEMINI_TEST_KEY}"}
              model:
                provider: gemini
                name: gemini-2.5-flash
                options: {upstream_url: "UPSTREAM", input_cost: 0.3, output_cost: 2.5}
              logging: {log_statistics: true, log_payloads: true}
      - name: studio-query
        paths: ["/studio-q/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {param_name: key, param_value: "{vault://env/GEMINI_TEST_KEY}", param_location: query}
              model: {provider: gemini, name: gemini-2.5-flash, options: {upstream_url: "UPSTREAM"}}
      - name: studio-array
        paths: ["/studio-array/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: x-goog-api-key, header_value: "{vault://env/GEMINI_TEST_KEY}"}
              model:
                provider: gemini
                name: gemini-2.5-flash
                options: {upstream_url: "UPSTREAM/v1beta/models/gemini-2.5-flash:streamGenerateContent"}
              logging: {log_payloads: true}
      - name: studio-wrong-key
        paths: ["/studio-bad/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: x-goog-api-key, header_value: "not-the-key"}
              model: {provider: gemini, name: gemini-2.5-flash, options: {upstream_url: "UPSTREAM"}}
      - name: studio-embeddings
        paths: ["/studio/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              auth: {header_name: x-goog-api-key, header_value: "{vault://env/GEMINI_TEST_KEY}"}
              model: {provider: gemini, name: text-embedding-004, options: {upstream_url: "UPSTREAM"}}
      - name: vertex
        paths: ["/vertex/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {gcp_use_service_account: true, gcp_service_account_json: SA_JSON}
              model:
                provider: gemini
                name: gemini-2.5-pro
                options: {upstream_url: "UPSTREAM", gemini: VERTEX}
              logging: {log_payloads: true}
      - name: vertex-env
        paths: ["/vertex-env/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {gcp_use_service_account: true}
              model:
                provider: gemini
                name: gemini-2.5-flash
                options: {upstream_url: "UPSTREAM", gemini: VERTEX}
      - name: vertex-embeddings
        paths: ["/vertex/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              auth: {gcp_use_service_account: true, gcp_service_account_json: SA_JSON}
              model:
                provider: gemini
                name: text-embedding-005
                options: {upstream_url: "UPSTREAM", gemini: VERTEX}
      - name: native
        paths: ["/v1beta/models/"]
        strip_path: false
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              llm_format: gemini
              auth: {header_name: x-goog-api-key, header_value: "{vault://env/GEMINI_TEST_KEY}"}
              model: {provider: gemini, options: {upstream_url: "UPSTREAM"}}
              logging: {log_statistics: true, log_payloads: true}
      - name: native-vertex
        paths: ["/vertex-native"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              llm_format: gemini
              auth: {gcp_use_service_account: true, gcp_service_account_json: SA_JSON}
              model: {provider: gemini, name: gemini-2.5-pro, options: {upstream_url: "UPSTREAM", gemini: VERTEX}}
plugins:
  - name: file-log
    config: {path: "{records}"}
"""


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def account(upstream: FakeUpstream) -> ServiceAccount:
    return make_service_account(f"{upstream.url}/token", PROJECT)


@pytest.fixture(scope="module")
def gemini(account: ServiceAccount) -> FakeGemini:
    """One fake for the module: tokens it issued stay valid from test to test, as the
    gateway keeps using the token it minted."""
    return FakeGemini(api_key=KEY, service_account=account)


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream,
    account: ServiceAccount,
    gemini: FakeGemini,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config = (
        CONFIG.replace("UPSTREAM", upstream.url)
        .replace("SA_JSON", json.dumps(account.json))
        .replace("VERTEX", VERTEX)
    )
    g = Gateway(
        tmp_path_factory.mktemp("gw"),
        config,
        quiet=False,
        env={"GEMINI_TEST_KEY": KEY, "GCP_SERVICE_ACCOUNT": account.json},
    )
    g.wait_ready()
    yield g
    g.stop()
    # One service account, one token for the whole module: minted once, then reused.
    assert gemini.token_requests <= 1 and gemini.token_failures == []
    # Nothing any test did may leak a credential into a record or the log.
    secrets = [KEY, account.info["private_key"].splitlines()[1], "ya29.fake-"]
    for text in (g.records_path.read_text() if g.records_path.exists() else "", g.log()):
        for secret in secrets:
            assert secret not in text


@pytest.fixture(autouse=True)
def _serve(fake: FakeUpstream, gemini: FakeGemini) -> FakeGemini:
    fake.reply(gemini)
    gemini.calls.clear()
    gemini.text = None
    gemini.cached_tokens = 0
    return gemini


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def tagged(headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Message-Id": TAG["id"], **(headers or {})}


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def client_for(gw: Gateway, prefix: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/{prefix}/v1",
        api_key="client-key",
        max_retries=0,
        default_headers=tagged(),
    )


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return client_for(gw, "studio")


def _path(received: Any) -> tuple[str, dict[str, str]]:
    path, _, query = received.path.partition("?")
    return path, dict(httpx.QueryParams(query))


# ------------------------------------------------------------------ AI Studio


def test_chat_with_the_api_key_header(
    gw: Gateway, gemini: FakeGemini, client: openai.OpenAI
) -> None:
    gemini.text = "Two."
    gemini.cached_tokens = 2
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-2.5-flash",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        temperature=0.3,
        max_tokens=64,
        stop=["END"],
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Two."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "gemini-2.5-flash"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens == 1
    assert answer.usage.prompt_tokens_details.cached_tokens == 2
    assert raw.headers["x-llm-model"] == "gemini/gemini-2.5-flash"
    sent = gemini.last
    path, query = _path(sent)
    assert path == "/v1beta/models/gemini-2.5-flash:generateContent" and query == {}
    assert sent.headers["x-goog-api-key"] == KEY
    assert "authorization" not in sent.headers  # the client's own key is not forwarded
    body = sent.json()
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "1+1?"}]}]
    assert body["generationConfig"] == {
        "maxOutputTokens": 64,
        "temperature": 0.3,
        "stopSequences": ["END"],
    }
    rec = my_record(gw)
    meta, usage = rec["ai"]["proxy"]["meta"], rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "ok"
    assert meta["provider_name"] == "gemini" and meta["request_mode"] == "oneshot"
    assert meta["request_model"] == meta["response_model"] == "gemini-2.5-flash"
    assert usage["source"] == "reported"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (answer.usage.prompt_tokens, 1)
    assert usage["cost"] > 0
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == "Two."


def test_chat_with_the_key_query_parameter(gw: Gateway, gemini: FakeGemini) -> None:
    answer = client_for(gw, "studio-q").chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.choices[0].message.content == "Echo: hello there"
    path, query = _path(gemini.last)
    assert path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert query == {"key": KEY} and "x-goog-api-key" not in gemini.last.headers


@pytest.mark.parametrize("wants_usage", [True, False])
def test_streamed_chat_over_sse(
    gw: Gateway, gemini: FakeGemini, client: openai.OpenAI, wants_usage: bool
) -> None:
    gemini.text = "The answer is two, as expected."
    stream = client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "1+1? trigger:slow"}],
        stream=True,
        **({"stream_options": {"include_usage": True}} if wants_usage else {}),
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answer is two, as expected."
    assert len({c.id for c in chunks}) == 1 and len({c.model for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    if wants_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    else:
        assert all(c.usage is None for c in chunks)
    path, query = _path(gemini.last)
    assert path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert query == {"alt": "sse"}
    rec = my_record(gw)
    usage = rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    # Gemini repeats running totals: the record has the last, not their sum
    assert usage["completion_tokens"] == 6 and usage["source"] == "reported"
    assert (
        usage["time_to_first_token"] < rec["latencies"]["request"] - 300
    )  # streamed, not buffered
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("stream", [True, False])
def test_json_array_stream(gw: Gateway, gemini: FakeGemini, stream: bool) -> None:
    """An upstream_url path ending in :streamGenerateContent gets Google's JSON-array
    stream (no alt=sse), cut in 29-byte pieces; a one-shot call gets it whole."""
    gemini.text = 'Braces {"x": [1]} and "quotes" \\ survive.'
    client = client_for(gw, "studio-array")
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="gemini-2.5-flash",
                messages=[{"role": "user", "content": "go"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        answer = client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "go"}]
        )
        text, usage = answer.choices[0].message.content, answer.usage
    assert text == gemini.text
    assert usage.completion_tokens == len(gemini.text.split())
    path, query = _path(gemini.last)
    assert path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent" and query == {}
    rec = my_record(gw)
    assert rec["status"] == "ok"
    assert rec["ai"]["proxy"]["usage"]["completion_tokens"] == usage.completion_tokens


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": ["string", "null"], "enum": ["C", "F"]},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]


@pytest.mark.parametrize("stream", [False, True])
def test_function_calling_round_trip(
    gw: Gateway, gemini: FakeGemini, client: openai.OpenAI, stream: bool
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather and time in Paris?"}]
    if stream:
        calls: dict[int, dict[str, Any]] = {}
        finish = None
        for c in client.chat.completions.create(
            model="gemini-2.5-flash", messages=messages, tools=TOOLS, stream=True
        ):
            for d in c.choices[0].delta.tool_calls or () if c.choices else ():
                entry = calls.setdefault(d.index, {"id": "", "name": "", "args": "", "extra": None})
                entry["id"] += d.id or ""
                entry["name"] += d.function.name or ""
                entry["args"] += d.function.arguments or ""
                entry["extra"] = entry["extra"] or (d.model_extra or {}).get("extra_content")
            if c.choices:
                finish = c.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        tool_calls = [
            {
                "id": calls[i]["id"],
                "type": "function",
                "function": {"name": calls[i]["name"], "arguments": calls[i]["args"]},
                **({"extra_content": calls[i]["extra"]} if calls[i]["extra"] else {}),
            }
            for i in sorted(calls)
        ]
        assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": tool_calls}
    else:
        answer = client.chat.completions.create(
            model="gemini-2.5-flash", messages=messages, tools=TOOLS
        )
        assert answer.choices[0].finish_reason == "tool_calls"
        msg = answer.choices[0].message
        tool_calls = [tc.model_dump(exclude_none=True) for tc in msg.tool_calls]
        assistant = msg.model_dump(exclude_none=True)
    # the real function names (not a hard-coded one), whole JSON arguments, unique ids
    assert [tc["function"]["name"] for tc in tool_calls] == ["get_weather", "get_time"]
    assert json.loads(tool_calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert json.loads(tool_calls[1]["function"]["arguments"]) == {}
    assert len({tc["id"] for tc in tool_calls}) == 2
    signature = tool_calls[0]["extra_content"]["google"]["thought_signature"]
    assert signature.startswith("sig-")
    sent = gemini.last.json()
    decls = sent["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in decls] == ["get_weather", "get_time"]
    assert "additionalProperties" not in json.dumps(decls)

    # the client runs the tools and sends the history back: the fake checks that the
    # thought signature and the function names come back (400 otherwise)
    messages += [
        assistant,
        {"role": "tool", "tool_call_id": tool_calls[1]["id"], "content": "12:00"},
        {"role": "tool", "tool_call_id": tool_calls[0]["id"], "content": '{"temp": 21}'},
    ]
    final = client.chat.completions.create(model="gemini-2.5-flash", messages=messages, tools=TOOLS)
    assert (
        final.choices[0].message.content
        == 'Results: get_time -> {"content": "12:00"}; get_weather -> {"temp": 21}'
    )
    assert final.choices[0].finish_reason == "stop"
    sent = gemini.last.json()
    assert sent["contents"][1]["parts"][0]["thoughtSignature"] == signature
    assert [p["functionResponse"]["name"] for p in sent["contents"][2]["parts"]] == [
        "get_time",
        "get_weather",
    ]


def test_thinking(gemini: FakeGemini, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "think hard"}],
        reasoning_effort="low",
    )
    msg = answer.choices[0].message
    assert msg.content == "Echo: think hard"
    assert (msg.model_extra or {}).get("reasoning_content") == "Thinking about: think hard"
    assert answer.usage.completion_tokens_details.reasoning_tokens == 4
    assert gemini.last.json()["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 1024,
        "includeThoughts": True,
    }


def test_structured_output(gemini: FakeGemini, client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "json please"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": schema, "strict": True},
        },
    )
    assert json.loads(answer.choices[0].message.content) == {"answer": "Echo: json please"}
    gc = gemini.last.json()["generationConfig"]
    assert gc == {"responseMimeType": "application/json", "responseJsonSchema": schema}


def test_image_parts(gemini: FakeGemini, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}},
                ],
            }
        ],
    )
    assert gemini.last.json()["contents"][0]["parts"] == [
        {"text": "Compare"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}},
    ]


# --------------------------------------------------------------------- errors


def test_quota_error_is_a_429_with_googles_status(gw: Gateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "trigger:quota"}]
        )
    assert e.value.status_code == 429 and e.value.code == "RESOURCE_EXHAUSTED"
    assert "exhausted" in e.value.message
    rec = my_record(gw)
    assert (
        rec["status"] == "error"
        and rec["error"]["source"] == "upstream"
        and rec["error"]["status"] == 429
    )


def test_wrong_key_is_googles_400(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client_for(gw, "studio-bad").chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}]
        )
    assert "API key not valid" in e.value.message and e.value.code == "INVALID_ARGUMENT"


def test_vertex_array_wrapped_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "trigger:array-error"}]
        )
    assert "invalid argument" in e.value.message and e.value.code == "INVALID_ARGUMENT"


def test_blocked_prompt_is_a_400_content_filter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "trigger:block"}]
        )
    assert e.value.code == "content_filter" and "SAFETY" in e.value.message


def test_safety_stop_is_finish_reason_content_filter(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "trigger:safety"}]
    )
    assert answer.choices[0].finish_reason == "content_filter"


def test_bad_input_is_refused_before_gemini_is_called(
    gemini: FakeGemini, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gemini-2.5-flash",
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{oops"},
                        }
                    ],
                },
            ],
        )
    assert "call_1" in e.value.message
    assert gemini.calls == []


def test_error_in_the_middle_of_a_stream(gw: Gateway, client: openai.OpenAI) -> None:
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(
            model="gemini-2.5-flash",
            messages=[{"role": "user", "content": "one two three four trigger:stream-error"}],
            stream=True,
        ):
            got.append(c.choices[0].delta.content or "" if c.choices else "")
    assert "internal error" in str(e.value.message)
    text = "".join(got)
    assert text.startswith("Echo: ") and "four" not in text  # nothing after the error
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["code"] == "INTERNAL"


@pytest.mark.parametrize("route", ["studio", "studio-array"])
def test_stream_cut_mid_event(gw: Gateway, route: str) -> None:
    r = httpx.post(
        f"{gw.url}/{route}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "a b c d trigger:cut"}], "stream": True},
        headers=tagged(),
        timeout=10,
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    err = json.loads(events[-2].removeprefix("data: "))["error"]
    assert err["message"]
    assert '"Echo: "' in r.text  # the first event made it through
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


# --------------------------------------------------------------------- Vertex


def test_vertex_with_a_service_account(
    gw: Gateway, gemini: FakeGemini, account: ServiceAccount
) -> None:
    client = client_for(gw, "vertex")
    first = client.chat.completions.create(
        model="gemini-2.5-pro", messages=[{"role": "user", "content": "hi vertex"}]
    )
    assert first.choices[0].message.content == "Echo: hi vertex"
    assert gemini.token_failures == []
    minted = gemini.token_requests
    assert minted >= 1
    sent = gemini.last
    path, query = _path(sent)
    assert (
        path
        == f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
    )
    assert query == {}
    token = sent.headers["authorization"].removeprefix("Bearer ")
    assert token in gemini.tokens and "x-goog-api-key" not in sent.headers

    # the token is reused: later calls (one-shot and streamed) mint no new one
    chunks = list(
        client.chat.completions.create(
            model="gemini-2.5-pro", messages=[{"role": "user", "content": "stream it"}], stream=True
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: stream it"
    )
    assert _path(gemini.last) == (
        f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent",
        {"alt": "sse"},
    )
    client.chat.completions.create(
        model="gemini-2.5-pro", messages=[{"role": "user", "content": "again"}]
    )
    assert gemini.token_requests == minted
    assert {c.headers["authorization"] for c in gemini.calls} == {f"Bearer {token}"}
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["provider_name"] == "gemini"
    assert rec["ai"]["proxy"]["usage"]["prompt_tokens"] > 0
    assert rec["request"]["headers"].get("authorization") in (None, "[REDACTED]")


def test_vertex_with_the_service_account_from_the_environment(
    gw: Gateway, gemini: FakeGemini
) -> None:
    answer = client_for(gw, "vertex-env").chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "from env"}]
    )
    assert answer.choices[0].message.content == "Echo: from env"
    assert gemini.last.headers["authorization"].removeprefix("Bearer ") in gemini.tokens
    assert gemini.token_failures == []


# ------------------------------------------------------------------ embeddings


def test_embeddings_ai_studio(gw: Gateway, gemini: FakeGemini) -> None:
    result = client_for(gw, "studio").embeddings.create(
        model="text-embedding-004", input=["hello", "world"], dimensions=3
    )
    assert [len(d.embedding) for d in result.data] == [3, 3]  # decoded from base64
    assert result.data[0].embedding == pytest.approx(
        [(sum(b"hello") % 97 + i) / 100 for i in range(3)]
    )
    assert result.usage.prompt_tokens > 0
    assert _path(gemini.last)[0] == "/v1beta/models/text-embedding-004:batchEmbedContents"
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["usage"]["source"] == "estimated"


def test_embeddings_vertex(gw: Gateway, gemini: FakeGemini) -> None:
    result = client_for(gw, "vertex").embeddings.create(
        model="text-embedding-005", input="hello big world"
    )
    assert len(result.data) == 1 and len(result.data[0].embedding) == 4
    assert result.usage.prompt_tokens == 3  # Vertex reports the token count
    assert _path(gemini.last)[0].endswith("/publishers/google/models/text-embedding-005:predict")


# ------------------------------------------------------- native passthrough (llm_format)


def test_native_generate_content(gw: Gateway, gemini: FakeGemini) -> None:
    body = fixture_json("native/gemini/request/basic-chat.json")
    r = httpx.post(
        f"{gw.url}/v1beta/models/gemini-2.5-flash:generateContent",
        json=body,
        headers=tagged({"x-goog-api-key": "client-own-key"}),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    data = r.json()
    # Gemini's own answer, unchanged
    assert data["candidates"][0]["content"]["parts"][0]["text"] == "Echo: What is 1 + 1?"
    assert data["modelVersion"] == "gemini-2.5-flash" and "usageMetadata" in data
    sent = gemini.last
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY  # the route's key, not the client's
    assert sent.json() == body
    rec = my_record(gw)
    assert rec["status"] == "ok"
    assert rec["ai"]["proxy"]["meta"]["response_model"] == "gemini-2.5-flash"
    usage = rec["ai"]["proxy"]["usage"]
    assert usage["prompt_tokens"] == data["usageMetadata"]["promptTokenCount"]
    assert usage["completion_tokens"] == data["usageMetadata"]["candidatesTokenCount"]


def test_native_client_key_in_the_query_is_not_forwarded(gw: Gateway, gemini: FakeGemini) -> None:
    """The route authenticates with its own header: a key the client put in the URL
    (as Google's SDKs can) must not reach Google next to it."""
    body = fixture_json("native/gemini/request/basic-chat.json")
    r = httpx.post(
        f"{gw.url}/v1beta/models/gemini-2.5-flash:generateContent?key=client-own-key",
        json=body,
        headers=tagged(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    sent = gemini.last
    assert _path(sent) == ("/v1beta/models/gemini-2.5-flash:generateContent", {})
    assert sent.headers["x-goog-api-key"] == KEY


@pytest.mark.parametrize("sse", [True, False])
def test_native_stream_passes_through(gw: Gateway, gemini: FakeGemini, sse: bool) -> None:
    body = fixture_json("native/gemini/request/with-functions.json")
    body["contents"] = [{"role": "user", "parts": [{"text": "no tools, just words please"}]}]
    url = f"{gw.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent" + (
        "?alt=sse" if sse else ""
    )
    r = httpx.post(url, json=body, headers=tagged(), timeout=10)
    assert r.status_code == 200, r.text
    if sse:
        events = [json.loads(e.removeprefix("data: ")) for e in r.text.split("\r\n\r\n") if e]
        assert r.text.startswith("data: {") and "[DONE]" not in r.text  # Google's SSE, as sent
    else:
        events = json.loads(r.text)  # Google's JSON array, as sent
        assert r.text.startswith("[{") and r.text.endswith("\n]")
    text = "".join(p["text"] for e in events for p in e["candidates"][0]["content"]["parts"])
    assert text == "Echo: no tools, just words please"
    assert _path(gemini.last) == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        {"alt": "sse"} if sse else {},
    )
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert (
        rec["ai"]["proxy"]["usage"]["completion_tokens"]
        == events[-1]["usageMetadata"]["candidatesTokenCount"]
    )


def test_native_on_vertex(gw: Gateway, gemini: FakeGemini) -> None:
    body = fixture_json("native/gemini/request/basic-chat.json")
    r = httpx.post(
        f"{gw.url}/vertex-native/v1beta/models/gemini-2.5-pro:generateContent",
        json=body,
        headers=tagged(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == "Echo: What is 1 + 1?"
    sent = gemini.last
    assert (
        sent.path
        == f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
    )
    assert sent.headers["authorization"].removeprefix("Bearer ") in gemini.tokens


def test_native_errors_pass_through(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.url}/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
        headers=tagged(),
        timeout=10,
    )
    assert r.status_code == 400
    assert "valid role" in r.text


# ------------------------------------------------- the fakes have teeth (no network)


def _jwt(account: ServiceAccount, claims: dict[str, Any], key: Any = None) -> str:
    key = key or serialization.load_pem_private_key(account.info["private_key"].encode(), None)
    head = b64url(
        json.dumps({"alg": "RS256", "typ": "JWT", "kid": account.info["private_key_id"]}).encode()
    )
    body = b64url(json.dumps(claims).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url(sig)}"


def _grant(fake: FakeGemini, assertion: str) -> Any:
    form = urlencode(
        {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    )
    return fake(
        Received(
            "POST", "/token", {"content-type": "application/x-www-form-urlencoded"}, form.encode()
        )
    )


def test_fake_token_endpoint_checks_the_jwt(account: ServiceAccount) -> None:
    fake = FakeGemini(api_key=KEY, service_account=account)
    now = int(time.time())
    good = {
        "iss": account.email,
        "aud": account.info["token_uri"],
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "iat": now,
        "exp": now + 3600,
    }
    ok = _grant(fake, _jwt(account, good))
    assert ok.status == 200 and json.loads(ok.body)["access_token"] in fake.tokens
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad, why in [
        (_jwt(account, good, other_key), "Signature"),
        (_jwt(account, {**good, "exp": now - 10}), "expired"),
        (_jwt(account, {**good, "iss": "someone@else"}), "iss"),
        (_jwt(account, {**good, "aud": "https://elsewhere/token"}), "aud"),
        (_jwt(account, {**good, "scope": "https://www.googleapis.com/auth/drive"}), "scope"),
        ("not.a.jwt", "decode"),
    ]:
        r = _grant(fake, bad)
        assert r.status == 400 and why in json.loads(r.body)["error_description"], why
    assert fake.token_requests == 7 and len(fake.tokens) == 1


@pytest.mark.parametrize(
    "body, words",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 'Unknown name "messages"'),
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"text": ""}]}]}, "empty text"),
        (
            {
                "contents": [{"role": "user", "parts": [{"text": "x"}]}],
                "tools": [
                    {
                        "functionDeclarations": [
                            {
                                "name": "f",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"a": {"type": "string"}},
                                    "additionalProperties": False,
                                },
                            }
                        ]
                    }
                ],
            },
            'Unknown name "additionalProperties"',
        ),
        (
            {
                "contents": [{"role": "user", "parts": [{"text": "x"}]}],
                "generationConfig": {"max_tokens": 5},
            },
            'Unknown name "max_tokens"',
        ),
        (
            {
                "contents": [
                    {"role": "user", "parts": [{"text": "x"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                    {
                        "role": "user",
                        "parts": [
                            {"functionResponse": {"name": "get_product_info", "response": {}}}
                        ],
                    },
                ]
            },
            "answers no function call",
        ),
    ],
)
def test_fake_gemini_refuses_what_google_refuses(body: dict[str, Any], words: str) -> None:
    fake = FakeGemini(api_key=KEY)
    r = fake(
        Received(
            "POST",
            "/v1beta/models/m:generateContent",
            {"x-goog-api-key": KEY},
            json.dumps(body).encode(),
        )
    )
    err = json.loads(r.body)["error"]
    assert r.status == 400 and err["status"] == "INVALID_ARGUMENT" and words in err["message"]


def test_fake_gemini_wants_thought_signatures_back() -> None:
    fake = FakeGemini(api_key=KEY)
    ask = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "tools": [{"functionDeclarations": [{"name": "f"}]}],
    }
    r = fake(
        Received(
            "POST",
            "/v1beta/models/m:generateContent",
            {"x-goog-api-key": KEY},
            json.dumps(ask).encode(),
        )
    )
    part = json.loads(r.body)["candidates"][0]["content"]["parts"][0]
    history = {
        "contents": [
            ask["contents"][0],
            {"role": "model", "parts": [{"functionCall": part["functionCall"]}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "f", "response": {"ok": True}}}],
            },
        ]
    }
    r = fake(
        Received(
            "POST",
            "/v1beta/models/m:generateContent",
            {"x-goog-api-key": KEY},
            json.dumps(history).encode(),
        )
    )
    assert r.status == 400 and "thought_signature" in json.loads(r.body)["error"]["message"]
    history["contents"][1]["parts"][0]["thoughtSignature"] = part["thoughtSignature"]
    r = fake(
        Received(
            "POST",
            "/v1beta/models/m:generateContent",
            {"x-goog-api-key": KEY},
            json.dumps(history).encode(),
        )
    )
    assert r.status == 200


@pytest.mark.parametrize(
    "headers, path, status, google_status",
    [
        ({}, "/v1beta/models/m:generateContent", 403, "PERMISSION_DENIED"),
        ({"x-goog-api-key": "wrong"}, "/v1beta/models/m:generateContent", 400, "INVALID_ARGUMENT"),
        ({}, f"/v1beta/models/m:generateContent?key={KEY}", 200, None),
        (
            {"authorization": "Bearer made-up"},
            f"/v1/projects/{PROJECT}/locations/l/publishers/google/models/m:generateContent",
            401,
            "UNAUTHENTICATED",
        ),
    ],
)
def test_fake_gemini_auth(
    headers: dict[str, str], path: str, status: int, google_status: str | None
) -> None:
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "x"}]}]}).encode()
    r = FakeGemini(api_key=KEY)(Received("POST", path, headers, body))
    assert r.status == status
    if google_status:
        assert json.loads(r.body)["error"]["status"] == google_status
