"""The gateway end to end with `provider: ollama`.

A real `mitmdump -s addons/gateway.py`, the fake Ollama of `tests/fakes/ollama.py` (which
refuses what would hide a mistranslation and answers JSON or NDJSON like Ollama), and the
official `openai` SDK as the client. Each test checks what the client gets, what Ollama
received, and the call record.
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
from tests.fakes.ollama import Script, ollama_api, vector
from tests.fakes.upstream import FakeUpstream

MODEL = "llama3.2"
CLOUD_KEY = "ollama-cloud-key-0123456789abcdef"


def route(name: str, path: str, route_type: str, model: str, extra: str = "") -> str:
    return f"""
      - name: {name}
        paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              model:
                provider: ollama
                name: {model}
                options: {{upstream_url: "UPSTREAM", input_cost: 1.0, output_cost: 2.0}}
              logging: {{log_statistics: true, log_payloads: true}}{extra}"""


CONFIG = (
    """
_format_version: "3.0"
services:
  - name: ollama-fake
    url: http://127.0.0.1:9
    read_timeout: 5000
    routes:"""
    + route("chat", "/ollama/v1/chat/completions", "llm/v1/chat", MODEL)
    + route("completions", "/ollama/v1/completions", "llm/v1/completions", MODEL)
    + route("embeddings", "/ollama/v1/embeddings", "llm/v1/embeddings", "all-minilm")
    + route("thinking", "/qwen/v1/chat/completions", "llm/v1/chat", "qwen3")
    + route("vision", "/llava/v1/chat/completions", "llm/v1/chat", "llava")
    + route("missing", "/missing/v1/chat/completions", "llm/v1/chat", "llama9")
    + route(
        "cloud",
        "/cloud/v1/chat/completions",
        "llm/v1/chat",
        MODEL,
        '\n              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_OLLAMA_KEY}"}',
    )
    + """
      - name: native
        paths: ["/ollama-native"]
        plugins:
          - name: ai-proxy
            config:
              route_type: preserve
              model: {provider: ollama, options: {upstream_url: "UPSTREAM"}}
              logging: {log_statistics: true, log_payloads: true}
plugins:
  - name: file-log
    config: {path: "{records}"}
"""
)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw-ollama"),
        CONFIG.replace("UPSTREAM", upstream.url),
        quiet=False,
        env={"LLMITM_OLLAMA_KEY": CLOUD_KEY},
    )
    g.wait_ready()
    yield g
    g.stop()
    assert CLOUD_KEY not in g.records_path.read_text()
    assert CLOUD_KEY not in g.log()


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def client_for(gw: Gateway, prefix: str = "ollama") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/{prefix}/v1",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return client_for(gw)


def serve(fake: FakeUpstream, script: Script | None = None, api_key: str | None = None) -> None:
    fake.reply(ollama_api(script, api_key))


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
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def usage_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["usage"]


# -------------------------------------------------------------------- chat


def test_chat_answer_usage_and_record(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="1 + 1 = 2."))
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        temperature=0.3,
        max_tokens=50,
        stop=["END"],
        seed=11,
        user="user-7",
    )
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == MODEL
    assert answer.choices[0].message.content == "1 + 1 = 2."
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (26, 5)  # a word a token
    assert raw.headers["x-llm-model"] == f"ollama/{MODEL}"

    sent = fake.last()
    assert sent.path == "/api/chat"
    # no route auth: the client's own credential goes through (Kong's rule)
    assert sent.headers["authorization"] == "Bearer client-key"
    assert sent.json() == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "1+1?"},
        ],
        "stream": False,
        "options": {"num_predict": 50, "temperature": 0.3, "seed": 11, "stop": ["END"]},
    }

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "chat"}
    meta = rec["ai"]["proxy"]["meta"]
    assert meta["provider_name"] == "ollama" and meta["request_mode"] == "oneshot"
    assert meta["request_model"] == MODEL and meta["response_model"] == MODEL
    assert meta["finish_reason"] == "stop"
    usage = usage_of(rec)
    assert usage["source"] == "reported"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (26, 5)
    assert usage["cost"] == pytest.approx((26 * 1.0 + 5 * 2.0) / 1e6)
    assert (
        rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"]
        == "1 + 1 = 2."
    )


def test_max_tokens_cut_is_length(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="one two three four five"))
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "one two "
    assert answer.choices[0].finish_reason == "length"


def test_streamed_chat_arrives_as_it_is_generated(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="The answer is exactly two.", pause=0.15, chunk_size=11))
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
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (26, 5)

    sent = fake.last().json()
    assert sent["stream"] is True and "stream_options" not in sent

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["completion_tokens"] == 5
    assert usage_of(rec)["time_to_first_token"] > 100
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == (
        "The answer is exactly two."
    )


def test_stream_without_include_usage_has_no_usage_chunk(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="ok then"))
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok then"
    assert usage_of(my_record(gw))["source"] == "reported"  # the record has it all the same


def _collect_tool_calls(stream: Any) -> tuple[dict[int, dict[str, str]], str | None]:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in stream:
        for choice in c.choices:
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
                entry["id"] += d.id or ""
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["args"] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    return calls, finish


def test_tool_calls_round_trip(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, TWO_CALLS)
    question = {"role": "user", "content": "Weather and time in Paris?"}
    answer = client.chat.completions.create(model=MODEL, messages=[question], tools=[WEATHER, TIME])
    assert answer.choices[0].finish_reason == "tool_calls"
    calls = answer.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert fake.last().json()["tools"] == [WEATHER, TIME]
    assert my_record(gw)["ai"]["proxy"]["meta"]["finish_reason"] == "tool_calls"

    # the client runs the tools and sends the results back
    assistant = answer.choices[0].message.model_dump(exclude_none=True)
    results = [
        {"role": "tool", "tool_call_id": calls[0].id, "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "14:05"},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=[question, assistant, *results], tools=[WEATHER, TIME]
    )
    assert final.choices[0].message.content == TWO_CALLS.text
    sent = fake.last().json()["messages"]
    assert sent[1]["tool_calls"][0] == {
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
        "id": calls[0].id,
    }
    assert sent[2:] == [
        {
            "role": "tool",
            "content": "18C, sunny",
            "tool_call_id": calls[0].id,
            "tool_name": "get_weather",
        },
        {"role": "tool", "content": "14:05", "tool_call_id": calls[1].id, "tool_name": "get_time"},
    ]


@pytest.mark.parametrize("tool_ids", [False, True], ids=["ollama-gives-no-ids", "ollama-ids"])
def test_streamed_tool_calls(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, tool_ids: bool
) -> None:
    serve(fake, Script(tool_calls=TWO_CALLS.tool_calls, tool_ids=tool_ids, chunk_size=7))
    calls, finish = _collect_tool_calls(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather and time?"}],
            tools=[WEATHER, TIME],
            stream=True,
        )
    )
    assert finish == "tool_calls"
    assert [(calls[i]["name"], json.loads(calls[i]["args"])) for i in sorted(calls)] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    ids = [calls[i]["id"] for i in sorted(calls)]
    assert ids == (["call_fake0000", "call_fake0001"] if tool_ids else ids)
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    rec = my_record(gw)
    recorded = rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in recorded] == ids


def test_tool_choice_none_sends_no_tools(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, TWO_CALLS)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER],
        tool_choice="none",
    )
    assert answer.choices[0].message.content == TWO_CALLS.text
    assert "tools" not in fake.last().json()


def test_json_schema_output(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text='{"age": 22}'))
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Ollama is 22."}],
        response_format={"type": "json_schema", "json_schema": {"name": "age", "schema": schema}},
    )
    assert json.loads(answer.choices[0].message.content) == {"age": 22}
    assert fake.last().json()["format"] == schema


@pytest.mark.parametrize("stream", [False, True])
def test_thinking(gw: Gateway, fake: FakeUpstream, stream: bool) -> None:
    script = Script(text="2.", thinking="One plus one is two.")
    serve(fake, script)
    client = client_for(gw, "qwen")
    kwargs: dict[str, Any] = {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "1+1?"}],
        "reasoning_effort": "low",
    }
    if stream:
        reasoning, content = "", ""
        for c in client.chat.completions.create(**kwargs, stream=True):
            for choice in c.choices:
                reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
                content += choice.delta.content or ""
    else:
        message = client.chat.completions.create(**kwargs).choices[0].message
        reasoning, content = message.model_extra["reasoning_content"], message.content
    assert (reasoning, content) == ("One plus one is two.", "2.")
    assert fake.last().json()["think"] == "low"
    message = my_record(gw)["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]
    assert message["reasoning_content"] == "One plus one is two."


def test_thinking_on_a_model_without_it_is_ollamas_400(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], reasoning_effort="high"
        )
    assert e.value.body["message"] == '"llama3.2" does not support thinking'


# -------------------------------------------------------------------- images


def test_image_as_data_uri(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="A single pixel."))
    client = client_for(gw, "llava")
    answer = client.chat.completions.create(
        model="llava",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "A single pixel."
    assert fake.last().json()["messages"] == [
        {"role": "user", "content": "What is in this picture?", "images": [PNG]}
    ]
    assert my_record(gw)["status"] == "ok"


def test_image_url_is_a_clear_400_without_calling_ollama(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    client = client_for(gw, "llava")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="llava",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://x.example/cat.png"}}
                    ],
                }
            ],
        )
    assert "base64 data URIs only" in e.value.message
    assert fake.received == []
    assert my_record(gw)["error"]["status"] == 400


def test_tools_on_a_model_without_them_is_ollamas_400(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, TWO_CALLS)
    with pytest.raises(openai.BadRequestError) as e:
        client_for(gw, "llava").chat.completions.create(
            model="llava", messages=[{"role": "user", "content": "x"}], tools=[WEATHER]
        )
    assert (
        e.value.body["message"] == "registry.ollama.ai/library/llava:latest does not support tools"
    )


# -------------------------------------------------------------------- completions


def test_completions(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="Because it is undefined."))
    out = client.completions.create(
        model=MODEL, prompt="Why can't you divide by zero?", max_tokens=50, suffix="!"
    )
    assert out.object == "text_completion"
    assert out.choices[0].text == "Because it is undefined."
    assert out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (26, 4)
    sent = fake.last()
    assert sent.path == "/api/generate"
    assert sent.json() == {
        "model": MODEL,
        "prompt": "Why can't you divide by zero?",
        "stream": False,
        "suffix": "!",
        "options": {"num_predict": 50},
    }
    rec = my_record(gw)
    assert rec["status"] == "ok" and usage_of(rec)["source"] == "reported"


def test_streamed_completions(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="Because it is undefined.", chunk_size=5))
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Why?", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Because it is undefined."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert fake.last().json()["stream"] is True
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert (
        rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["text"]
        == "Because it is undefined."
    )


# -------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_embeddings(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, encoding: str) -> None:
    serve(fake)
    texts = ["Why is the sky blue?", "Why is the grass green?"]
    kwargs: dict[str, Any] = {"model": "all-minilm", "input": texts}
    if encoding == "float":
        kwargs["encoding_format"] = "float"  # the SDK asks for base64 otherwise
    result = client.embeddings.create(**kwargs)
    assert [d.embedding for d in result.data] == [vector(t, 4) for t in texts]
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "all-minilm"
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (10, 10)
    sent = fake.last()
    assert sent.path == "/api/embed" and sent.json() == {"model": "all-minilm", "input": texts}
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["provider_name"] == "ollama"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["prompt_tokens"] == 10


def test_embeddings_dimensions(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake)
    result = client.embeddings.create(model="all-minilm", input="hello", dimensions=2)
    assert len(result.data[0].embedding) == 2
    assert fake.last().json()["dimensions"] == 2


# -------------------------------------------------------------------- usage Ollama leaves out


def test_usage_without_prompt_count_is_marked_estimated(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="cached prompt answer", prompt_eval_count=None))
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "again please"}]
    )
    assert answer.usage.completion_tokens == 3 and answer.usage.prompt_tokens > 0
    usage = usage_of(my_record(gw))
    assert usage["source"] == "estimated" and usage["completion_tokens"] == 3


# -------------------------------------------------------------------- errors


def test_unknown_model_is_a_404_with_ollamas_message(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    with pytest.raises(openai.NotFoundError) as e:
        client_for(gw, "missing").chat.completions.create(
            model="llama9", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 404
    assert e.value.body == {
        "message": 'model "llama9" not found, try pulling it first',
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    rec = my_record(gw)
    assert (
        rec["status"] == "error"
        and rec["error"]["source"] == "upstream"
        and rec["error"]["status"] == 404
    )


def test_error_line_mid_stream(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="one two three four", error_at=2))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "unexpected EOF" in e.value.message
    assert "".join(got) == "one two "
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


def test_stream_ended_without_done_is_an_error(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="one two three four", end_at=3))
    with pytest.raises(openai.APIError) as e:
        list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert "before the answer was complete" in e.value.message
    assert my_record(gw)["status"] == "error"


def test_stream_cut_mid_way_raw_events(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="one two three four five six seven", chunk_size=40, cut_after=3))
    r = httpx.post(
        f"{gw.url}/ollama/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert "error" in json.loads(events[-2].removeprefix("data: "))
    for e in events[:-1]:
        json.loads(e.removeprefix("data: "))  # no half event reached the client
    assert my_record(gw)["status"] == "error"


# -------------------------------------------------------------------- auth and preserve


def test_route_auth_reaches_a_keyed_ollama(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="from the cloud"), api_key=CLOUD_KEY)
    answer = client_for(gw, "cloud").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}]
    )
    assert answer.choices[0].message.content == "from the cloud"
    assert (
        fake.last().headers["authorization"] == f"Bearer {CLOUD_KEY}"
    )  # the route's, not the client's


def test_preserve_passes_ollamas_own_stream_through(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="native answer"))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = httpx.post(
        f"{gw.url}/ollama-native/api/chat",
        json=body,
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert "".join(line["message"]["content"] for line in lines) == "native answer"
    assert lines[-1]["done"] is True  # Ollama's NDJSON, untouched
    assert fake.last().path == "/api/chat" and fake.last().json() == body
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["provider_name"] == "ollama"
    assert usage_of(rec)["prompt_tokens"] == 26 and usage_of(rec)["source"] == "reported"
