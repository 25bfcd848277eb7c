"""The gateway end to end with `provider: anthropic`.

A real `mitmdump -s addons/gateway.py`, the fake Anthropic API of `tests/fakes/anthropic.py`
(which rejects what the real API rejects), the official `openai` SDK as the client of
the translated routes and the official `anthropic` SDK as the client of the native
(`llm_format: anthropic`) route. Each test checks what the client gets, what the
upstream received, and the call record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.anthropic import Script, anthropic_api, error
from tests.fakes.upstream import FakeUpstream

SECRET = "sk-ant-api03-test-provider-secret-0123456789"
MODEL = "claude-haiku-4-5"

OPTIONS = (
    '{anthropic_version: "2023-06-01", upstream_url: "UPSTREAM", max_tokens: 1024, '
    "input_cost: 3.0, output_cost: 15.0, cache_read_cost: 0.3, cache_write_cost: 3.75}"
)

CONFIG = f"""
_format_version: "3.0"
services:
  - name: anthropic-fake
    url: http://127.0.0.1:9
    read_timeout: 5000
    routes:
      - name: claude
        paths: ["/anthropic/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {{header_name: x-api-key, header_value: "{{vault://env/LLMITM_ANTHROPIC_KEY}}"}}
              model:
                provider: anthropic
                name: {MODEL}
                options: {OPTIONS}
              logging: {{log_statistics: true, log_payloads: true}}
      - name: claude-completions
        paths: ["/anthropic/v1/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/completions
              auth: {{header_name: x-api-key, header_value: "{{vault://env/LLMITM_ANTHROPIC_KEY}}"}}
              model:
                provider: anthropic
                name: claude-2.1
                options: {{anthropic_version: "2023-06-01", upstream_url: "UPSTREAM"}}
              logging: {{log_payloads: true}}
      - name: claude-wrong-key
        paths: ["/wrongkey/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {{header_name: x-api-key, header_value: sk-ant-not-the-right-one}}
              model:
                provider: anthropic
                name: {MODEL}
                options: {{anthropic_version: "2023-06-01", upstream_url: "UPSTREAM"}}
      - name: claude-native
        paths: ["/native"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              llm_format: anthropic
              auth: {{header_name: x-api-key, header_value: "{{vault://env/LLMITM_ANTHROPIC_KEY}}"}}
              model:
                provider: anthropic
                name: {MODEL}
                options: {OPTIONS}
              logging: {{log_statistics: true, log_payloads: true}}
plugins:
  - name: file-log
    config: {{path: "{{records}}"}}
"""


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = CONFIG.replace("UPSTREAM", upstream.url)
    g = Gateway(
        tmp_path_factory.mktemp("gw-anthropic"),
        config,
        quiet=False,
        env={"LLMITM_ANTHROPIC_KEY": SECRET},
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


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/anthropic/v1",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


def serve(fake: FakeUpstream, script: Script | None = None) -> None:
    fake.reply(anthropic_api(SECRET, script))


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
TWO_CALLS = Script(
    tool_calls=[("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
)

# 21 fresh input tokens + 1800 read from the cache + 200 written to it (the fake's defaults)
PROMPT_TOKENS, COMPLETION_TOKENS, CACHE_READ, CACHE_WRITE = 2021, 14, 1800, 200
COST = (21 * 3.0 + 1800 * 0.3 + 200 * 3.75 + 14 * 15.0) / 1e6


def assert_usage_recorded(rec: dict[str, Any]) -> None:
    usage = rec["ai"]["proxy"]["usage"]
    assert usage["source"] == "reported"
    assert (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["cache_read_tokens"],
        usage["cache_write_tokens"],
    ) == (PROMPT_TOKENS, COMPLETION_TOKENS, CACHE_READ, CACHE_WRITE)
    assert usage["cost"] == pytest.approx(COST)


# -------------------------------------------------------------------- chat


def test_chat_answer_usage_and_record(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="1 + 1 = 2."))
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        temperature=0.3,
        stop=["\n\n", "END"],
        user="user-7",
    )
    answer = raw.parse()
    assert answer.id == "msg_01FakeAnthropicMessage0001"
    assert answer.model == MODEL
    assert answer.choices[0].message.content == "1 + 1 = 2."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == PROMPT_TOKENS
    assert answer.usage.completion_tokens == COMPLETION_TOKENS
    assert answer.usage.prompt_tokens_details.cached_tokens == CACHE_READ
    assert raw.headers["x-llm-model"] == f"anthropic/{MODEL}"

    sent = fake.last()
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == SECRET  # the route's key
    assert "authorization" not in sent.headers  # the client's own credential is dropped
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json() == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "1+1?"}],
        "system": "Be brief.",
        "max_tokens": 1024,
        "temperature": 0.3,
        "stop_sequences": ["END"],  # Anthropic rejects whitespace-only ones
        "metadata": {"user_id": "user-7"},
    }

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "claude"}
    meta = rec["ai"]["proxy"]["meta"]
    assert meta["provider_name"] == "anthropic" and meta["request_mode"] == "oneshot"
    assert meta["request_model"] == MODEL and meta["response_model"] == MODEL
    assert meta["finish_reason"] == "stop"
    assert_usage_recorded(rec)
    payload = rec["ai"]["proxy"]["payload"]
    assert payload["response"]["choices"][0]["message"]["content"] == "1 + 1 = 2."


def test_streamed_chat_arrives_as_it_is_generated(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="The answer is exactly two.", pause=0.15, chunk_size=7))
    t0 = time.monotonic()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "1+1?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    got, first_at, finish, usage = [], None, None, None
    for c in stream:
        if c.usage is not None:
            usage = c.usage
            assert c.choices == []
        for choice in c.choices:
            if choice.delta.content:
                first_at = first_at or time.monotonic() - t0
                got.append(choice.delta.content)
            finish = choice.finish_reason or finish
    total = time.monotonic() - t0
    assert "".join(got) == "The answer is exactly two."
    assert finish == "stop"
    assert first_at is not None and first_at < total - 0.3  # streamed, not buffered
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert usage.prompt_tokens_details.cached_tokens == CACHE_READ

    sent = fake.last().json()
    assert sent["stream"] is True and "stream_options" not in sent

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert rec["ai"]["proxy"]["meta"]["response_model"] == MODEL
    assert_usage_recorded(rec)
    assert rec["ai"]["proxy"]["usage"]["time_to_first_token"] > 100
    response = rec["ai"]["proxy"]["payload"]["response"]
    assert response["choices"][0]["message"]["content"] == "The answer is exactly two."


def test_stream_without_include_usage_has_no_usage_chunk(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="ok"))
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    assert_usage_recorded(my_record(gw))  # the record has it all the same


def _collect_tool_calls(stream: Any) -> tuple[dict[int, dict[str, str]], str | None, str]:
    calls: dict[int, dict[str, str]] = {}
    finish, content = None, ""
    for c in stream:
        for choice in c.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
                entry["id"] += d.id or ""
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["args"] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    return calls, finish, content


def test_tool_call_round_trip(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, TWO_CALLS)
    question = {"role": "user", "content": "Weather and time in Paris?"}
    calls, finish, content = _collect_tool_calls(
        client.chat.completions.create(
            model=MODEL, messages=[question], tools=[WEATHER, TIME], stream=True
        )
    )
    assert finish == "tool_calls"
    assert content == "Let me check."
    assert calls == {
        0: {"id": "toolu_fake00", "name": "get_weather", "args": '{"city": "Paris"}'},
        1: {"id": "toolu_fake01", "name": "get_time", "args": '{"tz": "Europe/Paris"}'},
    }
    assert fake.last().json()["tools"][0] == {
        "name": "get_weather",
        "description": "Current weather of a city",
        "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
    }
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["finish_reason"] == "tool_calls"
    recorded = rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in recorded] == ["get_weather", "get_time"]

    # the client runs the tools and sends the results back
    assistant = {
        "role": "assistant",
        "content": content,
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
        {"role": "tool", "tool_call_id": "toolu_fake00", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "toolu_fake01", "content": "14:05"},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=[question, assistant, *results], tools=[WEATHER, TIME]
    )
    assert final.choices[0].message.content == TWO_CALLS.text
    assert final.choices[0].finish_reason == "stop"
    sent = fake.last().json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert sent[1]["content"][1]["input"] == {"city": "Paris"}
    assert sent[2]["content"] == [  # both results in one user turn
        {"type": "tool_result", "tool_use_id": "toolu_fake00", "content": "18C, sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_fake01", "content": "14:05"},
    ]


def test_non_streamed_parallel_tool_calls(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, TWO_CALLS)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=True,
    )
    calls = answer.choices[0].message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_fake00", "get_weather", {"city": "Paris"}),
        ("toolu_fake01", "get_time", {"tz": "Europe/Paris"}),
    ]
    assert fake.last().json()["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_round_trip_keeps_signatures(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, stream: bool
) -> None:
    script = Script(tool_calls=[("get_time", {"tz": "UTC"})])
    serve(fake, script)
    question = {"role": "user", "content": "What time is it?"}
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [question],
        "tools": [TIME],
        "reasoning_effort": "low",
    }
    if stream:
        reasoning, blocks, calls = "", [], {}
        for c in client.chat.completions.create(**kwargs, stream=True):
            for choice in c.choices:
                extra = choice.delta.model_extra or {}
                reasoning += extra.get("reasoning_content") or ""
                blocks += extra.get("thinking_blocks") or []
                for d in choice.delta.tool_calls or []:
                    entry = calls.setdefault(d.index, {"id": "", "args": ""})
                    entry["id"] += d.id or ""
                    entry["args"] += d.function.arguments or ""
        call_id, args = calls[0]["id"], calls[0]["args"]
    else:
        message = client.chat.completions.create(**kwargs).choices[0].message
        reasoning = message.model_extra["reasoning_content"]
        blocks = message.model_extra["thinking_blocks"]
        call_id, args = message.tool_calls[0].id, message.tool_calls[0].function.arguments
    assert reasoning == script.thinking
    # (streamed blocks are numbered by `index`, as list deltas are in OpenAI's streams)
    assert [{k: v for k, v in b.items() if k != "index"} for b in blocks] == [
        {"type": "thinking", "thinking": script.thinking, "signature": script.signature}
    ]
    assert fake.last().json()["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert fake.last().json()["max_tokens"] == 1024 + 4096  # above the budget

    # the assistant turn goes back with its signed thinking block, as Anthropic requires
    assistant = {
        "role": "assistant",
        "content": None,
        "thinking_blocks": blocks,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_time", "arguments": args}}
        ],
    }
    tool = {"role": "tool", "tool_call_id": call_id, "content": "12:00 UTC"}
    client.chat.completions.create(**{**kwargs, "messages": [question, assistant, tool]})
    sent = fake.last().json()["messages"][1]["content"]
    assert sent[0] == {
        "type": "thinking",
        "thinking": script.thinking,
        "signature": script.signature,
    }
    assert sent[1]["type"] == "tool_use"
    rec = my_record(gw)
    message = rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]
    assert message["content"] == script.text


# -------------------------------------------------------------------- completions


def test_images_inline_and_by_url(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="Two cats."))
    out = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
    )
    assert out.choices[0].message.content == "Two cats."
    assert fake.last().json()["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_completions(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="I am Claude."))
    client = openai.OpenAI(
        base_url=f"{gw.url}/anthropic/v1",
        api_key="k",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )
    out = client.completions.create(model="claude-2.1", prompt="What are you?", max_tokens=50)
    assert out.object == "text_completion"
    assert out.choices[0].text == " I am Claude."
    assert out.choices[0].finish_reason == "stop"
    sent = fake.last()
    assert sent.path == "/v1/complete"
    assert sent.json() == {
        "model": "claude-2.1",
        "prompt": "\n\nHuman: What are you?\n\nAssistant:",
        "max_tokens_to_sample": 50,
    }
    rec = my_record(gw)
    assert rec["status"] == "ok"
    assert rec["ai"]["proxy"]["usage"]["source"] == "estimated"  # the legacy API reports none

    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="claude-2.1", prompt="What are you?", stream=True)
        if c.choices
    )
    assert text == " I am Claude."
    assert fake.last().json()["stream"] is True


# -------------------------------------------------------------------- errors


def test_upstream_auth_error_keeps_status_and_message(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    client = openai.OpenAI(
        base_url=f"{gw.url}/wrongkey/v1",
        api_key="k",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401
    assert e.value.body == {
        "message": "invalid x-api-key",
        "type": "authentication_error",
        "param": None,
        "code": None,
    }
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"
    assert rec["error"]["status"] == 401


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_invalid_request_is_a_400_in_openai_shape(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, stream: bool
) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            temperature=1.7,  # OpenAI allows up to 2, Anthropic up to 1
            stream=stream,
        )
        list(r) if stream else None
    assert e.value.status_code == 400
    assert "temperature" in e.value.message
    assert e.value.body["type"] == "invalid_request_error"
    assert my_record(gw)["error"]["status"] == 400


def test_upstream_rate_limit_keeps_status_and_retry_after(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    reply = error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit")
    reply.headers["retry-after"] = "12"
    fake.reply(reply)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "12"
    assert e.value.body["type"] == "rate_limit_error"
    assert "exceeded your rate limit" in e.value.body["message"]


def test_stream_cut_mid_way_is_an_error(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="one two three four five six seven", chunk_size=40, cut_after=22))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "one" in "".join(got)  # what came before the cut reached the client
    assert "seven" not in "".join(got)
    assert e.value.message
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


def test_stream_cut_raw_events(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="one two three four five six seven", chunk_size=40, cut_after=22))
    r = httpx.post(
        f"{gw.url}/anthropic/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert "error" in json.loads(events[-2].removeprefix("data: "))
    for e in events[:-1]:
        json.loads(e.removeprefix("data: "))  # no half event reached the client


def test_overloaded_error_event_mid_stream(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="one two three four", error_at=5))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "Overloaded" in e.value.message
    assert "".join(got) == "one two "  # the deltas before the error event
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == (
        "one two "
    )


def test_stream_closed_before_message_stop_is_an_error_for_the_client(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    # the upstream ends the response cleanly, but the answer never completed
    serve(fake, Script(text="one two three four", end_at=6))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "before the answer was complete" in e.value.message
    assert "".join(got) == "one two three "


@pytest.mark.parametrize(
    "script",
    [Script(text="one two three four", error_at=5), Script(text="one two three four", end_at=6)],
    ids=["error-event", "no-message-stop"],
)
def test_in_stream_errors_are_in_the_record(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, script: Script
) -> None:
    serve(fake, script)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


# -------------------------------------------------------------------- native passthrough


@pytest.fixture
def native(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{gw.url}/native",
        api_key="client-dummy",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


def test_native_messages_pass_through(
    gw: Gateway, fake: FakeUpstream, native: anthropic.Anthropic
) -> None:
    serve(fake, Script(text="Bonjour."))
    message = native.messages.create(
        model=MODEL,
        max_tokens=256,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.id == "msg_01FakeAnthropicMessage0001"
    assert message.content[0].text == "Bonjour."
    assert message.usage.cache_read_input_tokens == CACHE_READ
    sent = fake.last()
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == SECRET  # the route's key, not the client's dummy
    assert sent.json()["system"] == "Answer in French."  # the native body, untranslated
    rec = my_record(gw)
    assert rec["status"] == "ok"
    assert rec["ai"]["proxy"]["meta"]["provider_name"] == "anthropic"
    assert rec["ai"]["proxy"]["meta"]["response_model"] == MODEL
    assert_usage_recorded(rec)


@pytest.mark.parametrize("client_version", [None, "2023-01-01"])
def test_native_requests_get_the_routes_anthropic_version_unless_they_send_one(
    gw: Gateway, fake: FakeUpstream, client_version: str | None
) -> None:
    """Anthropic refuses a request without `anthropic-version`; a plain HTTP client of
    a native route gets the route's, an SDK's own version is kept."""
    serve(fake, Script(text="ok"))
    headers = {"anthropic-version": client_version} if client_version else {}
    resp = httpx.post(
        f"{gw.url}/native/v1/messages",
        json={"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        headers={**headers, "X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert fake.last().headers["anthropic-version"] == (client_version or "2023-06-01")
    my_record(gw)


def test_native_stream_passes_through(
    gw: Gateway, fake: FakeUpstream, native: anthropic.Anthropic
) -> None:
    serve(fake, Script(text="Un deux trois."))
    with native.messages.stream(
        model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "Count"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Un deux trois."
    assert final.usage.output_tokens == COMPLETION_TOKENS
    assert final.stop_reason == "end_turn"
    sent = fake.last()
    assert sent.headers["x-api-key"] == SECRET
    assert sent.json()["stream"] is True
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert rec["ai"]["proxy"]["meta"]["response_model"] == MODEL
    assert_usage_recorded(rec)
