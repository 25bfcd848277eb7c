"""The gateway end to end with `provider: cohere`, API v2 (the default) and v1.

A real `mitmdump -s addons/gateway.py`, the fake Cohere API of `tests/fakes/cohere.py`
(which rejects what the real API rejects), the official `openai` SDK as the client, and
httpx for clients speaking Cohere's own API (`llm_format: cohere`). Each test checks
what the client gets, what the upstream received, and the call record.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.cohere import Script, cohere_api, error
from tests.fakes.upstream import FakeUpstream

SECRET = "co-test-provider-secret-0123456789abcdef"
MODEL = "command-a-03-2025"
EMBED_MODEL = "embed-v4.0"
AUTH = '{header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_COHERE_KEY}"}'
LOGGING = "{log_statistics: true, log_payloads: true}"


def route(
    name: str,
    path: str,
    route_type: str,
    options: str,
    model: str = MODEL,
    auth: str = AUTH,
    **kw: str,
) -> str:
    """One route of the config; `kw` are more ai-proxy config fields."""
    extra = "".join(f"\n              {k}: {v}" for k, v in kw.items())
    return f"""
      - name: {name}
        paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}{extra}
              auth: {auth}
              model:
                provider: cohere
                name: {model}
                options: {options}
              logging: {LOGGING}"""


V2 = '{upstream_url: "UPSTREAM", input_cost: 2.5, output_cost: 10.0}'
V1 = '{upstream_url: "UPSTREAM", cohere: {api_version: v1}, max_tokens: 256}'

CONFIG = (
    """
_format_version: "3.0"
services:
  - name: cohere-fake
    url: http://127.0.0.1:9
    read_timeout: 5000
    routes:"""
    + route("v2-chat", "/v2/v1/chat/completions", "llm/v1/chat", V2)
    + route("v2-completions", "/v2/v1/completions", "llm/v1/completions", V2)
    + route(
        "embeddings",
        "/v2/v1/embeddings",
        "llm/v1/embeddings",
        '{upstream_url: "UPSTREAM", cohere: {embedding_input_type: search_query}}',
        model=EMBED_MODEL,
    )
    + route("v1-chat", "/v1api/v1/chat/completions", "llm/v1/chat", V1)
    + route("v1-completions", "/v1api/v1/completions", "llm/v1/completions", V1, model="command")
    + route(
        "wrong-key",
        "/wrongkey/v1/chat/completions",
        "llm/v1/chat",
        '{upstream_url: "UPSTREAM"}',
        auth='{header_name: Authorization, header_value: "Bearer not-the-right-key"}',
    )
    + route("native", "/native", "llm/v1/chat", '{upstream_url: "UPSTREAM"}', llm_format="cohere")
    + """
plugins:
  - name: file-log
    config: {path: "{records}"}
"""
)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw-cohere"),
        CONFIG.replace("UPSTREAM", upstream.url),
        quiet=False,
        env={"LLMITM_COHERE_KEY": SECRET},
    )
    g.wait_ready()
    yield g
    g.stop()
    # Nothing any test did may leak the provider key into a record or the log.
    assert SECRET not in (g.records_path.read_text() if g.records_path.exists() else "")
    assert SECRET not in g.log()


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def client_for(gw: Gateway, prefix: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/{prefix}/v1",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


@pytest.fixture
def v2(gw: Gateway) -> openai.OpenAI:
    return client_for(gw, "v2")


@pytest.fixture
def v1(gw: Gateway) -> openai.OpenAI:
    return client_for(gw, "v1api")


def serve(fake: FakeUpstream, script: Script | None = None) -> None:
    fake.reply(cohere_api(SECRET, script))


def usage_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["usage"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
TWO_CALLS = Script(
    tool_calls=[("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})],
    tool_plan="I will check the weather and the time.",
)


def collect(stream: Any) -> tuple[str, dict[int, dict[str, str]], str | None, Any]:
    """Text, tool calls (by index), finish reason and usage of a streamed chat."""
    text, calls, finish, usage = "", {}, None, None
    for c in stream:
        if c.usage is not None:
            usage = c.usage
            assert c.choices == []
        for choice in c.choices:
            text += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
                if d.id:
                    assert not entry["id"], "a call's id comes once, in its first delta"
                    entry["id"] = d.id
                    entry["name"] = d.function.name
                entry["args"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    return text, calls, finish, usage


# -------------------------------------------------------------------- v2 chat


def test_v2_chat_answer_usage_and_record(
    gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, Script(text="1 + 1 = 2."))
    raw = v2.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        temperature=0.3,
        top_p=1,
        stop=["END"],
        max_tokens=100,
        user="user-7",
    )
    answer = raw.parse()
    assert answer.id == "c14c80c3-18eb-4519-9460-6c92edd8cfb4"
    assert answer.model == MODEL
    assert answer.choices[0].message.content == "1 + 1 = 2."
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (71, 26)
    assert raw.headers["content-type"] == "application/json"

    sent = fake.last()
    assert sent.path == "/v2/chat"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"  # the route's key, not the client's
    assert sent.json() == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "1+1?"},
        ],
        "stream": False,
        "max_tokens": 100,
        "temperature": 0.3,
        "p": 0.99,
        "stop_sequences": ["END"],
    }

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "v2-chat"}
    meta = rec["ai"]["proxy"]["meta"]
    assert meta["provider_name"] == "cohere" and meta["request_mode"] == "oneshot"
    assert meta["request_model"] == MODEL and meta["response_model"] == MODEL
    assert meta["finish_reason"] == "stop"
    usage = usage_of(rec)
    assert usage["source"] == "reported"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (71, 26)
    # priced on what Cohere bills (5 input units: the prompt template is free), not on
    # the 71 tokens the model read
    assert usage["cost"] == pytest.approx((5 * 2.5 + 26 * 10.0) / 1e6)
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == (
        "1 + 1 = 2."
    )


def test_v2_streamed_chat_arrives_as_it_is_generated(
    gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, Script(text="The answer is exactly two.", pause=0.15, chunk_size=7))
    t0 = time.monotonic()
    stream = v2.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "1+1?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    got, first_at, finish, usage = [], None, None, None
    for c in stream:
        if c.usage is not None:
            usage = c.usage
        for choice in c.choices:
            if choice.delta.content:
                first_at = first_at or time.monotonic() - t0
                got.append(choice.delta.content)
            finish = choice.finish_reason or finish
    total = time.monotonic() - t0
    assert "".join(got) == "The answer is exactly two."
    assert finish == "stop"
    assert first_at is not None and first_at < total - 0.3  # streamed, not buffered
    assert (usage.prompt_tokens, usage.completion_tokens) == (71, 26)

    sent = fake.last()
    assert sent.json()["stream"] is True and "stream_options" not in sent.json()
    assert sent.headers["accept"] == "text/event-stream"

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["prompt_tokens"] == 71
    assert usage_of(rec)["time_to_first_token"] > 100
    response = rec["ai"]["proxy"]["payload"]["response"]
    assert response["choices"][0]["message"]["content"] == "The answer is exactly two."


def test_v2_stream_without_include_usage_has_no_usage_chunk(
    gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, Script(text="ok then"))
    chunks = list(
        v2.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok then"
    assert usage_of(my_record(gw))["prompt_tokens"] == 71  # the record has it all the same


def test_v2_tool_call_round_trip_streamed(
    gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, TWO_CALLS)
    question = {"role": "user", "content": "Weather and time in Paris?"}
    text, calls, finish, _ = collect(
        v2.chat.completions.create(
            model=MODEL, messages=[question], tools=[WEATHER, TIME], stream=True
        )
    )
    assert finish == "tool_calls"
    assert text == "I will check the weather and the time."  # the tool plan
    assert calls == {
        0: {"id": "get_weather_fake00xyz", "name": "get_weather", "args": '{"city": "Paris"}'},
        1: {"id": "get_time_fake01xyz", "name": "get_time", "args": '{"tz": "Europe/Paris"}'},
    }
    assert fake.last().json()["tools"] == [WEATHER, TIME]  # OpenAI's shape, as v2 takes it
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["finish_reason"] == "tool_calls"
    recorded = rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in recorded] == ["get_weather", "get_time"]

    # the client runs the tools and sends the results back (the fake checks the ids)
    assistant = {
        "role": "assistant",
        "content": text,
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
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "14:05"},
    ]
    final = v2.chat.completions.create(
        model=MODEL, messages=[question, assistant, *results], tools=[WEATHER, TIME]
    )
    assert final.choices[0].message.content == TWO_CALLS.text
    assert final.choices[0].finish_reason == "stop"
    sent = fake.last().json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[1]["tool_plan"] == "I will check the weather and the time."
    assert "content" not in sent[1]
    assert sent[2] == {
        "role": "tool",
        "tool_call_id": "get_weather_fake00xyz",
        "content": "18C, sunny",
    }


def test_v2_tool_calls_not_streamed_with_required_choice(
    fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, TWO_CALLS)
    answer = v2.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
    )
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls"
    assert message.content == "I will check the weather and the time."
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls
    ] == [
        ("get_weather_fake00xyz", "get_weather", {"city": "Paris"}),
        ("get_time_fake01xyz", "get_time", {"tz": "Europe/Paris"}),
    ]
    assert fake.last().json()["tool_choice"] == "REQUIRED"


def test_v2_image_parts(fake: FakeUpstream, v2: openai.OpenAI) -> None:
    serve(fake, Script(text="A red square."))
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    answer = v2.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "A red square."
    assert fake.last().json()["messages"][0]["content"] == [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
    ]


def test_v2_thinking_is_reasoning_content(fake: FakeUpstream, v2: openai.OpenAI) -> None:
    serve(fake, Script(text="2", thinking="One plus one is two."))
    message = (
        v2.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "1+1?"}], reasoning_effort="low"
        )
        .choices[0]
        .message
    )
    assert message.content == "2"
    assert message.model_extra["reasoning_content"] == "One plus one is two."
    assert fake.last().json()["thinking"] == {"type": "enabled", "token_budget": 1024}
    streamed = ""
    for c in v2.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "1+1?"}], stream=True
    ):
        for choice in c.choices:
            streamed += (choice.delta.model_extra or {}).get("reasoning_content") or ""
    assert streamed == "One plus one is two."


def test_usage_not_reported_is_estimated_in_the_record(
    gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, Script(text="fine", report_usage=False))
    answer = v2.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.usage is None  # nothing invented for the client
    usage = usage_of(my_record(gw))
    assert usage["source"] == "estimated" and usage["prompt_tokens"] > 0


# -------------------------------------------------------------------- v1 chat


def test_v1_chat(gw: Gateway, fake: FakeUpstream, v1: openai.OpenAI) -> None:
    serve(fake, Script(text="Bonjour !"))
    answer = v1.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Salut."},
            {"role": "user", "content": "Hello again"},
        ],
        top_p=0.5,
    )
    assert answer.id == "c14c80c3-18eb-4519-9460-6c92edd8cfb4"  # the generation id
    assert answer.choices[0].message.content == "Bonjour !"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (71, 26)
    sent = fake.last()
    assert sent.path == "/v1/chat"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.json() == {
        "model": MODEL,
        "message": "Hello again",
        "preamble": "Answer in French.",
        "chat_history": [
            {"role": "USER", "message": "Hello"},
            {"role": "CHATBOT", "message": "Salut."},
        ],
        "stream": False,
        "max_tokens": 256,  # the route's option
        "p": 0.5,
    }
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["provider_name"] == "cohere"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["prompt_tokens"] == 71


def test_v1_stream(gw: Gateway, fake: FakeUpstream, v1: openai.OpenAI) -> None:
    serve(fake, Script(text="un deux trois quatre", chunk_size=9))
    text, calls, finish, usage = collect(
        v1.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (text, calls, finish) == ("un deux trois quatre", {}, "stop")
    assert (usage.prompt_tokens, usage.completion_tokens) == (71, 26)
    assert fake.last().json()["stream"] is True
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported"


@pytest.mark.parametrize("stream", [False, True])
def test_v1_tool_round_trip(
    gw: Gateway, fake: FakeUpstream, v1: openai.OpenAI, stream: bool
) -> None:
    serve(fake, TWO_CALLS)
    question = {"role": "user", "content": "Weather and time in Paris?"}
    if stream:
        text, calls, finish, _ = collect(
            v1.chat.completions.create(
                model=MODEL, messages=[question], tools=[WEATHER, TIME], stream=True
            )
        )
        got = [(c["id"], c["name"], json.loads(c["args"])) for c in calls.values()]
        assert list(calls) == [0, 1]
    else:
        answer = v1.chat.completions.create(model=MODEL, messages=[question], tools=[WEATHER, TIME])
        message = answer.choices[0].message
        text, finish = message.content, answer.choices[0].finish_reason
        got = [
            (c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls
        ]
    assert finish == "tool_calls"
    assert text == "I will check the weather and the time."
    assert [(name, args) for _, name, args in got] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    assert all(i.startswith("call_") for i, _, _ in got)  # v1 has no ids: minted
    assert fake.last().json()["tools"][0] == {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameter_definitions": {
            "city": {"type": "str", "description": "The city", "required": True}
        },
    }

    assistant = {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in got
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": got[0][0], "content": '{"temperature": "18C"}'},
        {"role": "tool", "tool_call_id": got[1][0], "content": "14:05"},
    ]
    final = v1.chat.completions.create(
        model=MODEL, messages=[question, assistant, *results], tools=[WEATHER, TIME]
    )
    assert final.choices[0].message.content == TWO_CALLS.text
    sent = fake.last().json()
    assert sent["message"] == ""
    assert sent["chat_history"][1] == {
        "role": "CHATBOT",
        "message": "I will check the weather and the time.",
        "tool_calls": [
            {"name": "get_weather", "parameters": {"city": "Paris"}},
            {"name": "get_time", "parameters": {"tz": "Europe/Paris"}},
        ],
    }
    assert sent["tool_results"] == [
        {
            "call": {"name": "get_weather", "parameters": {"city": "Paris"}},
            "outputs": [{"temperature": "18C"}],
        },
        {
            "call": {"name": "get_time", "parameters": {"tz": "Europe/Paris"}},
            "outputs": [{"result": "14:05"}],
        },
    ]
    assert my_record(gw)["status"] == "ok"


def test_v1_images_are_refused_before_cohere_is_called(
    gw: Gateway, fake: FakeUpstream, v1: openai.OpenAI
) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        v1.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}
                    ],
                }
            ],
        )
    assert "api_version v2" in e.value.message
    assert fake.received == []


# -------------------------------------------------------------------- completions


def test_completions_v1_generate(gw: Gateway, fake: FakeUpstream, v1: openai.OpenAI) -> None:
    serve(fake, Script(text=" I am Command.", finish_reason="MAX_TOKENS"))
    out = v1.completions.create(model="command", prompt="What are you?", max_tokens=50)
    assert out.object == "text_completion"
    assert out.choices[0].text == " I am Command."
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (5, 26)  # billed units
    sent = fake.last()
    assert sent.path == "/v1/generate"
    assert sent.json() == {
        "prompt": "What are you?",
        "model": "command",
        "max_tokens": 256,
        "stream": False,
    }
    rec = my_record(gw)
    assert rec["status"] == "ok" and usage_of(rec)["source"] == "reported"


def test_completions_v1_generate_streamed(
    gw: Gateway, fake: FakeUpstream, v1: openai.OpenAI
) -> None:
    serve(fake, Script(text=" I am Command, a model.", chunk_size=8))
    chunks = list(v1.completions.create(model="command", prompt="What are you?", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " I am Command, a model."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.object == "text_completion" for c in chunks)
    assert fake.last().json()["stream"] is True
    rec = my_record(gw)
    assert rec["status"] == "ok"
    # Cohere's generate stream reports no usage: the gateway estimates it
    assert usage_of(rec)["source"] == "estimated"


def test_completions_v2_through_chat(gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI) -> None:
    serve(fake, Script(text="Hello there."))
    out = v2.completions.create(model=MODEL, prompt="Say hello", max_tokens=20)
    assert out.object == "text_completion"
    assert out.choices[0].text == "Hello there."
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == 71
    sent = fake.last()
    assert sent.path == "/v2/chat"
    assert sent.json() == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": False,
        "max_tokens": 20,
    }
    chunks = list(
        v2.completions.create(
            model=MODEL,
            prompt="Say hello",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there."
    assert chunks[-1].usage.prompt_tokens == 71 and chunks[-1].choices == []
    assert usage_of(my_record(gw))["source"] == "reported"


# -------------------------------------------------------------------- embeddings


def test_embeddings(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(dims=3))
    client = client_for(gw, "v2")
    # the openai SDK asks for base64 by default and decodes it
    result = client.embeddings.create(model=EMBED_MODEL, input=["hello world", "goodbye"])
    assert [d.index for d in result.data] == [0, 1]
    assert [len(d.embedding) for d in result.data] == [3, 3]
    sent = fake.last()
    assert sent.path == "/v2/embed"
    assert sent.json() == {
        "model": EMBED_MODEL,
        "texts": ["hello world", "goodbye"],
        "input_type": "search_query",  # the route's option
        "embedding_types": ["float"],
    }
    assert result.usage.prompt_tokens == 3 and result.usage.total_tokens == 3
    rec = my_record(gw)
    assert rec["status"] == "ok" and usage_of(rec)["prompt_tokens"] == 3
    assert usage_of(rec)["source"] == "reported"

    floats = client.embeddings.create(
        model=EMBED_MODEL, input="hello world", encoding_format="float", dimensions=256
    )
    assert len(floats.data[0].embedding) == 256
    assert fake.last().json()["output_dimension"] == 256
    assert floats.data[0].embedding[:3] == pytest.approx(result.data[0].embedding, abs=1e-6)

    # raw: base64 of little-endian float32, as OpenAI sends it
    r = httpx.post(
        f"{gw.url}/v2/v1/embeddings",
        json={"input": "hello world", "encoding_format": "base64"},
        timeout=10,
    )
    encoded = r.json()["data"][0]["embedding"]
    values = struct.unpack("<3f", base64.b64decode(encoded))
    assert list(values) == pytest.approx(result.data[0].embedding, abs=1e-6)


# -------------------------------------------------------------------- errors


def test_upstream_auth_error_keeps_status_and_message(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    client = client_for(gw, "wrongkey")
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401
    assert e.value.body == {
        "message": "invalid api token",
        "type": "authentication_error",
        "param": None,
        "code": None,
    }
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"
    assert rec["error"]["status"] == 401


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prefix", ["v2", "v1api"])
def test_upstream_invalid_request_is_a_400_in_openai_shape(
    gw: Gateway, fake: FakeUpstream, stream: bool, prefix: str
) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        r = client_for(gw, prefix).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            temperature=1.7,  # OpenAI allows up to 2, Cohere up to 1
            stream=stream,
        )
        list(r) if stream else None
    assert e.value.status_code == 400
    assert "temperature must be between 0 and 1" in e.value.message
    assert e.value.body["type"] == "invalid_request_error"
    assert my_record(gw)["error"]["status"] == 400


def test_upstream_rate_limit_keeps_status_and_retry_after(
    fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    fake.reply(
        error(
            429,
            "You are using a Trial key, which is limited to 10 API calls / minute.",
            {"retry-after": "12"},
        )
    )
    with pytest.raises(openai.RateLimitError) as e:
        v2.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "12"
    assert e.value.body["type"] == "rate_limit_error"
    assert "Trial key" in e.value.body["message"]


def test_deny_listed_token_498_is_a_400(gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI) -> None:
    fake.reply(error(498, "blocked input: please adjust your prompt"))
    with pytest.raises(openai.BadRequestError) as e:
        v2.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "content_filter"
    assert "blocked input" in e.value.message


def test_stream_cut_mid_way_is_an_error(gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI) -> None:
    serve(fake, Script(text="one two three four five six seven", chunk_size=40, cut_after=16))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in v2.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "one" in "".join(got)  # what came before the cut reached the client
    assert "seven" not in "".join(got)
    assert e.value.message
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


@pytest.mark.parametrize("prefix", ["v2", "v1api"])
def test_stream_cut_raw_events(gw: Gateway, fake: FakeUpstream, prefix: str) -> None:
    serve(fake, Script(text="one two three four five six seven", chunk_size=40, cut_after=15))
    r = httpx.post(
        f"{gw.url}/{prefix}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert "error" in json.loads(events[-2].removeprefix("data: "))
    for e in events[:-1]:
        json.loads(e.removeprefix("data: "))  # no half event reached the client


@pytest.mark.parametrize("prefix", ["v2", "v1api"])
def test_generation_error_mid_stream(gw: Gateway, fake: FakeUpstream, prefix: str) -> None:
    serve(fake, Script(text="one two three", finish_reason="ERROR"))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client_for(gw, prefix).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "".join(got) == "one two three"
    assert "finish_reason ERROR" in e.value.message
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == (
        "one two three"
    )


def test_generation_error_whole_answer_is_a_502(
    gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, Script(finish_reason="ERROR"))
    with pytest.raises(openai.InternalServerError) as e:
        v2.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and "finish_reason ERROR" in e.value.message


def test_stream_closed_before_message_end_is_an_error(
    gw: Gateway, fake: FakeUpstream, v2: openai.OpenAI
) -> None:
    serve(fake, Script(text="one two three four", end_at=5))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in v2.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "before the answer was complete" in e.value.message
    assert "".join(got) == "one two three "
    assert my_record(gw)["status"] == "error"


# -------------------------------------------------------------------- native passthrough


def test_native_v2_chat_passes_through(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="Bonjour."))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "stream": False}
    r = httpx.post(
        f"{gw.url}/native/v2/chat",
        json=body,
        headers={"Authorization": "Bearer client-dummy", "X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json()["message"]["content"] == [
        {"type": "text", "text": "Bonjour."}
    ]  # Cohere's shape
    sent = fake.last()
    assert sent.path == "/v2/chat"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.json() == body
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["provider_name"] == "cohere"
    assert usage_of(rec)["prompt_tokens"] == 71 and usage_of(rec)["source"] == "reported"


def test_native_v1_stream_passes_through(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="un deux"))
    body = {"model": MODEL, "message": "count", "stream": True}
    with httpx.stream(
        "POST",
        f"{gw.url}/native/v1/chat",
        json=body,
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert lines[0]["event_type"] == "stream-start"
    assert (
        "".join(e.get("text", "") for e in lines if e["event_type"] == "text-generation")
        == "un deux"
    )
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["prompt_tokens"] == 71
    assert (
        rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == "un deux"
    )
