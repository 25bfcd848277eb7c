"""The gateway end to end in front of AWS Bedrock (Converse and ConverseStream).

A real `mitmdump -s addons/gateway.py`, the fake Bedrock runtime (tests/fakes/bedrock.py:
it checks every SigV4 signature with botocore and validates Converse bodies as Bedrock
does), the official `openai` SDK as the client, and plain httpx for native Converse
passthrough (`llm_format: bedrock`). Credentials come from the route's auth in one
gateway and from the environment (with a session token, and the region from
AWS_REGION) in another.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes import bedrock as fb
from tests.fakes.upstream import FakeUpstream

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/llmitm01"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"

ROUTE = """
      - name: {name}
        paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              {extra}
              model:
                provider: bedrock
                {model}
                options: {{upstream_url: "UPSTREAM", {region} input_cost: 3.0, output_cost: 15.0}}
              logging: {{log_statistics: true, log_payloads: true}}"""

KEYS = (
    f'auth: {{aws_access_key_id: "{fb.ACCESS_KEY}", '
    'aws_secret_access_key: "{vault://env/LLMITM_TEST_AWS_SECRET}"}'
)
REGION = f"bedrock: {{aws_region: {fb.REGION}}},"


def config(routes: list[str], upstream: str) -> str:
    text = '_format_version: "3.0"\nservices:\n  - name: bedrock\n    url: http://127.0.0.1:9\n'
    text += (
        "    routes:"
        + "".join(routes)
        + '\nplugins:\n  - name: file-log\n    config: {path: "{records}"}\n'
    )
    return text.replace("UPSTREAM", upstream)


def route(
    name: str, path: str, *, extra: str = "", model: str = f"name: {MODEL}", region: str = REGION
) -> str:
    return ROUTE.format(name=name, path=path, extra=extra, model=model, region=region)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Keys in the route's auth (the secret through the vault), the region in options."""
    routes = [
        route("chat", "/bedrock/v1/chat/completions", extra=KEYS),
        route("arn", "/arn/v1/chat/completions", extra=KEYS, model=f'name: "{ARN}"'),
        route("native", "/native", extra=KEYS + "\n              llm_format: bedrock", model=""),
        route("titan", "/titan/v1/embeddings", extra=KEYS, model=f"name: {TITAN}").replace(
            "llm/v1/chat", "llm/v1/embeddings"
        ),
        route("cohere", "/cohere/v1/embeddings", extra=KEYS, model=f"name: {COHERE}").replace(
            "llm/v1/chat", "llm/v1/embeddings"
        ),
    ]
    g = Gateway(
        tmp_path_factory.mktemp("gw-bedrock"),
        config(routes, upstream.url),
        quiet=False,
        env={"LLMITM_TEST_AWS_SECRET": fb.SECRET_KEY},
    )
    g.wait_ready()
    yield g
    g.stop()
    # the secret key never reaches a record or the log
    assert fb.SECRET_KEY not in g.records_path.read_text()
    assert fb.SECRET_KEY not in g.log()


@pytest.fixture(scope="module")
def gw_env(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Credentials (with a session token) and the region from the environment."""
    tmp = tmp_path_factory.mktemp("gw-bedrock-env")
    routes = [route("env", "/env/v1/chat/completions", region="")]
    g = Gateway(
        tmp,
        config(routes, upstream.url),
        env={
            "AWS_ACCESS_KEY_ID": fb.SESSION_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": fb.SESSION_SECRET_KEY,
            "AWS_SESSION_TOKEN": fb.SESSION_TOKEN,
            "AWS_REGION": fb.REGION,
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
            "AWS_CONFIG_FILE": str(tmp / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    g.wait_ready()
    yield g
    g.stop()
    assert fb.SESSION_SECRET_KEY not in g.records_path.read_text()
    assert fb.SESSION_TOKEN not in g.records_path.read_text()


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def tagged() -> dict[str, str]:
    return {"X-Message-Id": TAG["id"]}


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def client_for(gw: Gateway, prefix: str = "/bedrock/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}{prefix}", api_key="client-key", max_retries=0, default_headers=tagged()
    )


@pytest.fixture
def bedrock(fake: FakeUpstream) -> fb.FakeBedrock:
    handler = fb.FakeBedrock()
    fake.reply(handler)
    return handler


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather in a city",
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
        "name": "local_time",
        "description": "Local time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}


# -------------------------------------------------------------------- chat


def test_chat(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    bedrock.usage = (20, 7, 0, 0)
    raw = client_for(gw).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 1+1?"},
        ],
        temperature=0.3,
        max_tokens=100,
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "You said: What is 1+1?"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == MODEL and answer.id.startswith("chatcmpl-")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (20, 7)
    assert raw.headers["x-llm-model"] == f"bedrock/{MODEL}"

    call = bedrock.last()  # signed by the gateway with the route's keys, valid
    assert (call.op, call.model, call.access_key) == ("converse", MODEL, fb.ACCESS_KEY)
    assert call.body == {
        "messages": [{"role": "user", "content": [{"text": "What is 1+1?"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 100, "temperature": 0.3},
    }
    assert "x-amz-security-token" not in call.headers

    rec = my_record(gw)
    meta, usage = rec["ai"]["proxy"]["meta"], rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "ok"
    assert meta["provider_name"] == "bedrock" and meta["request_model"] == MODEL
    assert meta["response_model"] == MODEL and meta["request_mode"] == "oneshot"
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["source"]) == (
        20,
        7,
        "reported",
    )
    assert usage["cost"] == pytest.approx((20 * 3.0 + 7 * 15.0) / 1e6)
    assert rec["request"]["headers"]["authorization"] == "[REDACTED]"


def test_stream_with_usage(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    bedrock.usage = (12, 9, 1000, 0)  # with a cache read
    bedrock.pause = 0.08  # before each of the 14 messages, each cut in odd pieces
    t0 = time.monotonic()
    stream = client_for(gw).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a short story about a gateway"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, first_at = [], None
    for c in stream:
        chunks.append(c)
        if first_at is None and c.choices and c.choices[0].delta.content:
            first_at = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first_at is not None and first_at < total - 0.5  # streamed, not buffered
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: Tell me a short story about a gateway"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (1012, 9)
    assert last.usage.prompt_tokens_details.cached_tokens == 1000
    assert len({c.id for c in chunks}) == 1

    assert bedrock.last().op == "converse-stream"
    rec = my_record(gw)
    usage = rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["source"]) == (
        1012,
        9,
        "reported",
    )
    assert usage["time_to_first_token"] > 0
    response = rec["ai"]["proxy"]["payload"]["response"]
    assert response["choices"][0]["message"]["content"] == text


def test_tool_calling_round_trip_with_parallel_streamed_calls(
    gw: Gateway, bedrock: fb.FakeBedrock
) -> None:
    client = client_for(gw)
    bedrock.tool_inputs = {"weather": {"city": "Paris"}, "local_time": {"tz": "Europe/Paris"}}
    question = {"role": "user", "content": "Weather and time in Paris?"}
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in client.chat.completions.create(
        model=MODEL, messages=[question], tools=[WEATHER, TIME], tool_choice="auto", stream=True
    ):
        for d in c.choices[0].delta.tool_calls or [] if c.choices else []:
            entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
            entry["id"] += d.id or ""
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["args"] += (d.function.arguments or "") if d.function else ""
        if c.choices and c.choices[0].finish_reason:
            finish = c.choices[0].finish_reason
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert (calls[0]["id"], calls[0]["name"]) == ("tooluse_0_weather", "weather")
    assert (calls[1]["id"], calls[1]["name"]) == ("tooluse_1_local_time", "local_time")
    assert json.loads(calls[0]["args"]) == {"city": "Paris"}
    assert json.loads(calls[1]["args"]) == {"tz": "Europe/Paris"}
    assert bedrock.last().body["toolConfig"]["toolChoice"] == {"auto": {}}

    # the client runs the tools and sends the results back (not streamed this time)
    history = [
        question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[i]["id"],
                    "type": "function",
                    "function": {"name": calls[i]["name"], "arguments": calls[i]["args"]},
                }
                for i in (0, 1)
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "14:05"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "Tool results: " + json.dumps(
        {
            "tooluse_0_weather": [{"json": {"temp_c": 21}}],
            "tooluse_1_local_time": [{"text": "14:05"}],
        },
        sort_keys=True,
    )
    body = bedrock.last().body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [list(b) for b in body["messages"][2]["content"]] == [["toolResult"], ["toolResult"]]


def test_model_arn_reaches_bedrock_as_one_signed_path_segment(
    gw: Gateway, bedrock: fb.FakeBedrock
) -> None:
    client = client_for(gw, "/arn/v1")
    answer = client.chat.completions.create(model=ARN, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "You said: hi"
    assert bedrock.last().model == ARN and bedrock.rejected == []
    chunks = list(
        client.chat.completions.create(
            model=ARN, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hi"
    assert bedrock.last().op == "converse-stream"


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "error, exc, status",
    [
        ((400, "ValidationException", "Malformed input request: bad"), openai.BadRequestError, 400),
        (
            (429, "ThrottlingException", "Too many requests, please wait before trying again."),
            openai.RateLimitError,
            429,
        ),
        (
            (403, "AccessDeniedException", "You don't have access"),
            openai.PermissionDeniedError,
            403,
        ),
    ],
)
def test_errors_are_mapped(
    gw: Gateway, bedrock: fb.FakeBedrock, error: tuple[int, str, str], exc: type, status: int
) -> None:
    bedrock.error = error
    with pytest.raises(exc) as info:
        client_for(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == status
    body = info.value.body
    assert body["message"] == error[2] and body["code"] == error[1]
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["status"] == status
    assert rec["error"]["source"] == "upstream"


def test_bedrock_validation_of_the_translated_body(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    # Bedrock needs a conversation that starts with a user turn: its 400 reaches the client
    with pytest.raises(openai.BadRequestError) as info:
        client_for(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "assistant", "content": "I start."}]
        )
    assert "must start with a user message" in info.value.body["message"]
    assert info.value.body["code"] == "ValidationException"


def test_an_inline_image_reaches_bedrock_as_bytes(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    out = client_for(gw).chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            }
        ],
    )
    assert out.choices[0].message.content
    assert bedrock.last().body["messages"][0]["content"] == [
        {"text": "Describe"},
        {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
    ]


def test_an_http_image_url_is_rejected_before_bedrock(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client_for(gw).chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ],
                }
            ],
        )
    assert "Bedrock needs inline images" in info.value.body["message"]
    assert bedrock.calls == []


def _stream_with_a_failure(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """A raw streamed chat: the text received and the error event it ended with."""
    r = httpx.post(
        f"{gw.url}/bedrock/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "one two three four"}], "stream": True},
        headers=tagged(),
        timeout=10,
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and r.text.count("[DONE]") == 1
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    return text, chunks[-1]["error"]


def test_exception_mid_stream_reaches_the_client_as_an_error_event(
    gw: Gateway, bedrock: fb.FakeBedrock
) -> None:
    bedrock.stream_exception = ("throttlingException", "Too many tokens, please wait.")
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:  # the SDK raises on the error event
        for c in client_for(gw).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "a b c d e f"}],
            stream=True,
        ):
            got += [c.choices[0].delta.content or ""] if c.choices else []
    assert "Too many tokens, please wait." in str(info.value)
    assert "".join(got) == "You said: "  # what came before the exception was delivered
    text, error = _stream_with_a_failure(gw)
    assert text == "You said: "
    assert error == {
        "message": "Too many tokens, please wait.",
        "type": "rate_limit_error",
        "param": None,
        "code": "ThrottlingException",
    }


def test_corrupt_stream_gives_an_error_event(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    bedrock.corrupt_message = 4  # messageStart, three words, then the corrupt one
    text, error = _stream_with_a_failure(gw)
    assert text == "You said: one "
    assert "corrupt event stream" in error["message"] and "CRC" in error["message"]
    assert error["type"] == "api_error"


@pytest.mark.parametrize("failure", ["exception", "corrupt"])
def test_in_stream_errors_are_in_the_record(
    gw: Gateway, bedrock: fb.FakeBedrock, failure: str
) -> None:
    if failure == "exception":
        bedrock.stream_exception = ("throttlingException", "Too many tokens, please wait.")
    else:
        bedrock.corrupt_message = 4
    _, error = _stream_with_a_failure(gw)
    rec = my_record(gw)
    assert rec["status"] == "error"
    assert rec["error"]["message"] == error["message"]
    assert rec["error"]["status"] == (429 if failure == "exception" else 502)


# -------------------------------------------------------------------- environment


def test_credentials_from_the_environment_with_a_session_token(
    gw_env: Gateway, bedrock: fb.FakeBedrock
) -> None:
    client = client_for(gw_env, "/env/v1")
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hey"}]
    )
    assert answer.choices[0].message.content == "You said: hey"
    call = bedrock.last()
    assert call.access_key == fb.SESSION_ACCESS_KEY
    assert call.headers["x-amz-security-token"] == fb.SESSION_TOKEN
    assert "x-amz-security-token" in call.signed_headers
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hey"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hey"
    rec = my_record(gw_env)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["usage"]["prompt_tokens"] == 21
    assert rec["request"]["headers"].get("x-amz-security-token") in (None, "[REDACTED]")


# -------------------------------------------------------------------- native passthrough

NATIVE_BODY = {
    "system": [{"text": "You are terse."}],
    "messages": [{"role": "user", "content": [{"text": "Native hello"}]}],
    "inferenceConfig": {"maxTokens": 64},
}


def test_native_converse_passes_through_signed(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    r = httpx.post(
        f"{gw.url}/native/model/{MODEL}/converse",
        json=NATIVE_BODY,
        headers=tagged(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    expected = bedrock.answer(NATIVE_BODY)
    assert r.json() == expected  # Bedrock's own answer, unchanged
    call = bedrock.last()
    assert call.body == NATIVE_BODY and call.model == MODEL and call.access_key == fb.ACCESS_KEY
    rec = my_record(gw)
    usage = rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["response_model"] == MODEL
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["source"]) == (
        21,
        7,
        "reported",
    )


def test_native_converse_stream_passes_through_byte_for_byte(
    gw: Gateway, bedrock: fb.FakeBedrock
) -> None:
    bedrock.usage = (30, 11, 0, 500)
    r = httpx.post(
        f"{gw.url}/native/model/{MODEL}/converse-stream",
        json=NATIVE_BODY,
        headers=tagged(),
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert r.content == b"".join(bedrock.events(bedrock.answer(NATIVE_BODY)))
    assert bedrock.last().op == "converse-stream"
    rec = my_record(gw)
    usage = rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (530, 11)
    assert usage["source"] == "reported"


def test_native_error_passes_through_unchanged(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    body = {"messages": [{"role": "assistant", "content": [{"text": "no user first"}]}]}
    r = httpx.post(
        f"{gw.url}/native/model/{MODEL}/converse", json=body, headers=tagged(), timeout=10
    )
    assert r.status_code == 400
    assert r.json() == {"message": "A conversation must start with a user message. Try again."}
    assert r.headers["x-amzn-errortype"].startswith("ValidationException:")
    assert my_record(gw)["status"] == "error"


# -------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("encoding", ["default", "float"])
def test_titan_embeddings(gw: Gateway, bedrock: fb.FakeBedrock, encoding: str) -> None:
    client = client_for(gw, "/titan/v1")
    kw: dict[str, Any] = {} if encoding == "default" else {"encoding_format": "float"}
    # the openai SDK asks for base64 by default and decodes it: both give the floats
    out = client.embeddings.create(model=TITAN, input="hello bedrock world", dimensions=256, **kw)
    assert out.data[0].embedding == fb.embedding_of("hello bedrock world")
    assert out.model == TITAN and out.usage.prompt_tokens == 3
    call = bedrock.last()
    assert (call.op, call.model) == ("invoke", TITAN)
    assert call.body == {"inputText": "hello bedrock world", "dimensions": 256}
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["usage"]["prompt_tokens"] == 3


def test_cohere_embeddings_of_several_texts(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    out = client_for(gw, "/cohere/v1").embeddings.create(model=COHERE, input=["one", "two three"])
    assert [d.embedding for d in out.data] == [fb.embedding_of("one"), fb.embedding_of("two three")]
    assert [d.index for d in out.data] == [0, 1] and out.usage.prompt_tokens == 3
    assert bedrock.last().body == {"texts": ["one", "two three"], "input_type": "search_document"}


def test_titan_takes_one_text_per_request(gw: Gateway, bedrock: fb.FakeBedrock) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client_for(gw, "/titan/v1").embeddings.create(model=TITAN, input=["a", "b"])
    assert "one text per request" in info.value.body["message"]
    assert bedrock.calls == []
