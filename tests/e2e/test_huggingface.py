"""The gateway end to end with `provider: huggingface`.

A real `mitmdump -s addons/gateway.py`, the fake Hugging Face of `tests/fakes/huggingface.py`
(the router's Messages API, the HF Inference text-generation and feature-extraction
tasks, TGI's own routes; it rejects what they reject) and the official `openai` SDK as
the client. Each test checks what the client gets, what the upstream received, and the
call record.
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
from tests.fakes.huggingface import Script, huggingface_api, vector
from tests.fakes.upstream import FakeUpstream

TOKEN = "hf_testProviderToken0123456789abcdefABCDEF"
CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct"
TG_MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
EMB_MODEL = "BAAI/bge-small-en-v1.5"
AUTH = '{header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_HF_TOKEN}"}'


def route(
    name: str,
    path: str,
    route_type: str,
    model: str,
    options: str = "",
    upstream: str = "ROUTER",
) -> str:
    return f"""
      - name: {name}
        paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              auth: {AUTH}
              model:
                provider: huggingface
                name: {model}
                options: {{upstream_url: "{upstream}"{options}}}
              logging: {{log_statistics: true, log_payloads: true}}"""


CONFIG = (
    """
_format_version: "3.0"
services:
  - name: hf-fake
    url: http://127.0.0.1:9
    read_timeout: 5000
    routes:"""
    + route(
        "hf-chat",
        "/hf/v1/chat/completions",
        "llm/v1/chat",
        CHAT_MODEL,
        ", input_cost: 0.6, output_cost: 0.8, cache_read_cost: 0.1",
    )
    + route("hf-completions", "/hf/v1/completions", "llm/v1/completions", TG_MODEL)
    + route("hf-embeddings", "/hf/v1/embeddings", "llm/v1/embeddings", EMB_MODEL)
    + route(
        "hf-waiting",
        "/waiting/v1/completions",
        "llm/v1/completions",
        TG_MODEL,
        ", huggingface: {wait_for_model: true, use_cache: false}",
    )
    + route(
        "hf-waiting-chat",
        "/waiting/v1/chat/completions",
        "llm/v1/chat",
        CHAT_MODEL,
        ", huggingface: {wait_for_model: true}",
    )
    + route(
        "tgi-generate",
        "/tgi/v1/completions",
        "llm/v1/completions",
        TG_MODEL,
        upstream="UPSTREAM/generate",
    )
    # a TGI / TEI server (or an Inference Endpoint) given by its base URL
    + route(
        "server-chat", "/server/v1/chat/completions", "llm/v1/chat", CHAT_MODEL, "", "UPSTREAM/v1/"
    )
    + route(
        "server-completions",
        "/server/v1/completions",
        "llm/v1/completions",
        TG_MODEL,
        "",
        "UPSTREAM",
    )
    + route(
        "server-embeddings", "/server/v1/embeddings", "llm/v1/embeddings", EMB_MODEL, "", "UPSTREAM"
    )
    + """
      - name: hf-native
        paths: ["/native"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              llm_format: huggingface
              auth: """
    + AUTH
    + """
              model: {provider: huggingface, name: """
    + TG_MODEL
    + """, options: {upstream_url: "ROUTER"}}
              logging: {log_statistics: true, log_payloads: true}
      - name: hf-wrong-token
        paths: ["/wrong/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer hf_not_the_right_one"}
              model: {provider: huggingface, name: """
    + CHAT_MODEL
    + """, options: {upstream_url: "ROUTER"}}
plugins:
  - name: file-log
    config: {path: "{records}"}
"""
)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # the fake serves the router's paths at its root: it is given as a mirror of the
    # router (its /hf-inference task path), and as a server by its own base URL
    config = CONFIG.replace("ROUTER", f"{upstream.url}/hf-inference").replace(
        "UPSTREAM", upstream.url
    )
    g = Gateway(
        tmp_path_factory.mktemp("gw-huggingface"),
        config,
        quiet=False,
        env={"LLMITM_HF_TOKEN": TOKEN},
    )
    g.wait_ready()
    yield g
    g.stop()
    # Nothing any test did may leak the provider token into a record or the log.
    assert TOKEN not in g.records_path.read_text()
    assert TOKEN not in g.log()


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def client_for(gw: Gateway, prefix: str = "hf") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/{prefix}/v1",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return client_for(gw)


def serve(fake: FakeUpstream, script: Script | None = None) -> None:
    fake.reply(huggingface_api(TOKEN, script))


def usage_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["usage"]


def meta_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["meta"]


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


# -------------------------------------------------------------------- chat


def test_chat_answer_usage_and_record(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="1 + 1 = 2.", prompt_tokens=1200, cached_tokens=1000))
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        temperature=0.3,
        max_tokens=64,
    )
    answer = raw.parse()
    assert answer.id == "chatcmpl-fakehf0001"
    assert answer.model == CHAT_MODEL
    assert answer.choices[0].message.content == "1 + 1 = 2."
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1200, 9)
    assert answer.usage.prompt_tokens_details.cached_tokens == 1000
    assert raw.headers["x-llm-model"] == f"huggingface/{CHAT_MODEL}"

    sent = fake.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"  # the route's token
    assert sent.json() == {
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "1+1?"},
        ],
        "temperature": 0.3,
        "max_tokens": 64,
    }

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "hf-chat"}
    meta = meta_of(rec)
    assert meta["provider_name"] == "huggingface" and meta["request_mode"] == "oneshot"
    assert meta["request_model"] == CHAT_MODEL and meta["response_model"] == CHAT_MODEL
    assert meta["finish_reason"] == "stop"
    usage = usage_of(rec)
    assert usage["source"] == "reported"
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["cache_read_tokens"]) == (
        1200,
        9,
        1000,
    )
    assert usage["cost"] == pytest.approx((200 * 0.6 + 1000 * 0.1 + 9 * 0.8) / 1e6)


def test_streamed_chat_arrives_as_it_is_generated(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="The answer is exactly two.", pause=0.15, chunk_size=9))
    t0 = time.monotonic()
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
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
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (25, 9)

    sent = fake.last().json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    rec = my_record(gw)
    assert rec["status"] == "ok" and meta_of(rec)["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported"
    assert usage_of(rec)["time_to_first_token"] > 100
    response = rec["ai"]["proxy"]["payload"]["response"]
    assert response["choices"][0]["message"]["content"] == "The answer is exactly two."


def test_stream_without_include_usage_has_no_usage_chunk(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="ok then"))
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok then"
    assert fake.last().json()["stream_options"] == {"include_usage": True}  # asked anyway
    assert usage_of(my_record(gw))["source"] == "reported"  # the record has it


def test_tgi_chat_quirks_are_smoothed_over(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    # an old TGI: empty ids, finish reason eos_token, object text_completion, no usage
    serve(fake, Script(text="Deep learning is a subset of ML.", flavour="tgi", old_tgi=True))
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "What is DL?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Deep learning is a subset of ML."
    assert chunks[-1].choices[0].finish_reason == "stop"  # not "eos_token"
    assert all(c.usage is None for c in chunks)  # TGI reported none
    rec = my_record(gw)
    assert rec["status"] == "ok"
    usage = usage_of(rec)
    assert usage["source"] == "estimated"  # the recorder counted
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0

    answer = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is DL?"}]
    )
    assert answer.id.startswith("chatcmpl-") and answer.choices[0].finish_reason == "stop"
    assert answer.object == "chat.completion"


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


TWO_CALLS = Script(
    tool_calls=[("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
)


def test_tool_call_round_trip(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, TWO_CALLS)
    question = {"role": "user", "content": "Weather and time in Paris?"}
    calls, finish = _collect_tool_calls(
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[question], tools=[WEATHER, TIME], stream=True
        )
    )
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "call_fake00", "name": "get_weather", "args": '{"city": "Paris"}'},
        1: {"id": "call_fake01", "name": "get_time", "args": '{"tz": "Europe/Paris"}'},
    }
    assert fake.last().json()["tools"] == [WEATHER, TIME]  # passed through as sent
    rec = my_record(gw)
    assert meta_of(rec)["finish_reason"] == "tool_calls"
    recorded = rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in recorded] == ["get_weather", "get_time"]

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
        {"role": "tool", "tool_call_id": "call_fake00", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_fake01", "content": "14:05"},
    ]
    final = client.chat.completions.create(
        model=CHAT_MODEL, messages=[question, assistant, *results], tools=[WEATHER, TIME]
    )
    assert final.choices[0].message.content == TWO_CALLS.text
    assert final.choices[0].finish_reason == "stop"
    sent = fake.last().json()["messages"]
    assert sent[1] == assistant and sent[2:] == results  # OpenAI's shape, untouched


def test_non_streamed_tool_calls(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, TWO_CALLS)
    answer = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
    )
    calls = answer.choices[0].message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_fake00", "get_weather", {"city": "Paris"}),
        ("call_fake01", "get_time", {"tz": "Europe/Paris"}),
    ]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert fake.last().json()["tool_choice"] == "required"


@pytest.mark.parametrize("stream", [False, True])
def test_tgi_tool_calls_come_out_in_openais_shape(
    fake: FakeUpstream, client: openai.OpenAI, stream: bool
) -> None:
    # TGI: the call's id and name repeated in every delta, arguments as an object in a
    # whole answer, finish reason eos_token
    serve(fake, Script(flavour="tgi", tool_calls=[("get_weather", {"city": "Paris"})]))
    kwargs: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
    }
    if stream:
        calls, finish = _collect_tool_calls(client.chat.completions.create(**kwargs, stream=True))
        assert calls == {0: {"id": "0", "name": "get_weather", "args": '{"city": "Paris"}'}}
    else:
        answer = client.chat.completions.create(**kwargs)
        call = answer.choices[0].message.tool_calls[0]
        assert (call.id, call.function.name) == ("0", "get_weather")
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        finish = answer.choices[0].finish_reason
    assert finish == "tool_calls"


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_image_parts_pass_through(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="A single pixel."))
    content = [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    answer = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == "A single pixel."
    assert fake.last().json()["messages"][0]["content"] == content


# -------------------------------------------------------------------- completions


def test_completions(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="I am a language model. I can help.", finish="eos_token"))
    out = client.completions.create(
        model=TG_MODEL, prompt="What are you?", max_tokens=50, temperature=0.5, stop=["\n\n"]
    )
    assert out.object == "text_completion"
    assert out.choices[0].text == "I am a language model. I can help."
    assert out.choices[0].finish_reason == "stop"
    sent = fake.last()
    assert sent.path == f"/hf-inference/models/{TG_MODEL}"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.json() == {
        "inputs": "What are you?",
        "parameters": {
            "max_new_tokens": 50,
            "temperature": 0.5,
            "do_sample": True,
            "stop": ["\n\n"],
            "return_full_text": False,
            "details": True,
        },
    }
    assert "x-wait-for-model" not in sent.headers  # nothing configured, nothing sent
    # the answer reports the generated tokens; the prompt's are estimated
    assert out.usage.completion_tokens == 8
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "hf-completions"}
    assert meta_of(rec)["provider_name"] == "huggingface"
    assert meta_of(rec)["finish_reason"] == "stop"
    usage = usage_of(rec)
    assert usage["completion_tokens"] == 8 and usage["source"] == "estimated"


def test_completion_stopped_by_a_stop_sequence_or_length(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="one two three END four five"))
    out = client.completions.create(model=TG_MODEL, prompt="Count", stop=["END"])
    assert out.choices[0].text == "one two three "  # TGI leaves "END" in, OpenAI does not
    assert out.choices[0].finish_reason == "stop"
    out = client.completions.create(model=TG_MODEL, prompt="Count", max_tokens=2)
    assert out.choices[0].text == "one two "
    assert out.choices[0].finish_reason == "length"


def test_streamed_completions(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(text="one two three END four", pause=0.12, chunk_size=23))
    t0 = time.monotonic()
    got, first_at, finish, usage = [], None, None, None
    for c in client.completions.create(
        model=TG_MODEL,
        prompt="Count",
        stop=["END"],
        stream=True,
        stream_options={"include_usage": True},
    ):
        if c.usage is not None:
            usage = c.usage
            assert c.choices == []
        for choice in c.choices:
            if choice.text:
                first_at = first_at or time.monotonic() - t0
                got.append(choice.text)
            finish = choice.finish_reason or finish
    total = time.monotonic() - t0
    assert "".join(got) == "one two three "  # the stop sequence never reached the client
    assert finish == "stop"
    assert first_at is not None and first_at < total - 0.25
    # TGI's final event: input_length and generated_tokens
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (25, 4)
    sent = fake.last()
    assert sent.path == f"/hf-inference/models/{TG_MODEL}"
    assert sent.json()["stream"] is True
    assert sent.headers["accept"] == "text/event-stream"
    rec = my_record(gw)
    assert rec["status"] == "ok" and meta_of(rec)["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported"
    assert (usage_of(rec)["prompt_tokens"], usage_of(rec)["completion_tokens"]) == (25, 4)
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["text"] == "one two three "


def test_streamed_completions_without_include_usage(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake, Script(text="a b c"))
    chunks = list(client.completions.create(model=TG_MODEL, prompt="x", stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b c"
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_completions_through_tgis_own_routes(gw: Gateway, fake: FakeUpstream, stream: bool) -> None:
    serve(fake, Script(text="Paris is lovely.", flavour="tgi", prompt_tokens=11))
    client = client_for(gw, "tgi")
    if stream:
        text = "".join(
            c.choices[0].text
            for c in client.completions.create(model=TG_MODEL, prompt="Paris?", stream=True)
            if c.choices
        )
    else:
        out = client.completions.create(model=TG_MODEL, prompt="Paris?")
        text = out.choices[0].text
        assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (11, 3)  # headers
    assert text == "Paris is lovely."
    sent = fake.last()
    assert sent.path == ("/generate_stream" if stream else "/generate")
    assert "stream" not in sent.json()
    rec = my_record(gw)
    assert usage_of(rec)["source"] == "reported"
    assert usage_of(rec)["prompt_tokens"] == 11


@pytest.mark.parametrize("stream", [False, True])
def test_a_server_by_its_base_url(gw: Gateway, fake: FakeUpstream, stream: bool) -> None:
    """A TGI / TEI server or an Inference Endpoint given by its base URL (a bare origin,
    or the `/v1/` URL Hugging Face documents): chat, completions and embeddings each go
    to the server's own route, never to the router's task paths (a 404 there)."""
    serve(fake, Script(text="Paris is lovely.", flavour="tgi", prompt_tokens=11))
    client = client_for(gw, "server")

    chat = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Paris?"}], stream=stream
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    else:
        text = chat.choices[0].message.content
    assert text == "Paris is lovely."
    assert fake.last().path == "/v1/chat/completions"  # not POST /v1/
    assert my_record(gw)["status"] == "ok"

    TAG["id"] = f"msg-{uuid.uuid4().hex}"
    client = client_for(gw, "server")
    done = client.completions.create(model=TG_MODEL, prompt="Paris?", stream=stream)
    text = "".join(c.choices[0].text for c in done if c.choices) if stream else done.choices[0].text
    assert text == "Paris is lovely."
    sent = fake.last()
    assert sent.path == ("/generate_stream" if stream else "/generate")  # TGI's own routes
    assert "stream" not in sent.json()
    assert usage_of(my_record(gw))["prompt_tokens"] == 11

    TAG["id"] = f"msg-{uuid.uuid4().hex}"
    client = client_for(gw, "server")
    result = client.embeddings.create(model=EMB_MODEL, input=["hello"], encoding_format="float")
    assert result.data[0].embedding == pytest.approx(vector("hello", 4))
    sent = fake.last()
    assert sent.path == "/embed"  # TEI's route
    assert sent.json() == {"inputs": ["hello"]}
    assert my_record(gw)["route"] == {"name": "server-embeddings"}


# -------------------------------------------------------------------- embeddings


def test_embeddings(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(embedding_dim=5))
    # the SDK asks for base64 by default and decodes it
    result = client.embeddings.create(model=EMB_MODEL, input=["hello", "world"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(vector("hello", 5))
    assert result.data[1].embedding == pytest.approx(vector("world", 5))
    assert result.model == EMB_MODEL
    assert result.usage.prompt_tokens > 0
    sent = fake.last()
    assert sent.path == f"/hf-inference/models/{EMB_MODEL}/pipeline/feature-extraction"
    assert sent.json() == {"inputs": ["hello", "world"]}
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "hf-embeddings"}
    assert usage_of(rec)["source"] == "estimated"  # HF reports no token count
    assert meta_of(rec)["provider_name"] == "huggingface"


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_raw_encodings(gw: Gateway, fake: FakeUpstream, encoding: str) -> None:
    serve(fake, Script(embedding_dim=3))
    r = httpx.post(
        f"{gw.url}/hf/v1/embeddings",
        json={"model": EMB_MODEL, "input": "hello", "encoding_format": encoding},
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "list" and data["data"][0]["object"] == "embedding"
    emb = data["data"][0]["embedding"]
    if encoding == "base64":
        emb = list(struct.unpack("<3f", base64.b64decode(emb)))
    assert emb == pytest.approx(vector("hello", 3))
    assert set(data["usage"]) == {"prompt_tokens", "total_tokens"}


def test_token_level_features_are_mean_pooled(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(token_level=True, embedding_dim=2))
    result = client.embeddings.create(model=EMB_MODEL, input="big world", encoding_format="float")
    tokens = [vector("big", 2, 0), vector("world", 2, 1)]
    assert result.data[0].embedding == pytest.approx(
        [(a + b) / 2 for a, b in zip(*tokens, strict=True)]
    )


# -------------------------------------------------------------------- model loading


@pytest.mark.parametrize("stream", [False, True])
def test_a_loading_model_is_a_503_with_retry_after(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, stream: bool
) -> None:
    serve(fake, Script(loading=20.5))
    with pytest.raises(openai.InternalServerError) as e:
        r = client.completions.create(model=TG_MODEL, prompt="hi", stream=stream)
        list(r) if stream else None
    assert e.value.status_code == 503
    assert e.value.response.headers["retry-after"] == "21"
    assert f"Model {TG_MODEL} is currently loading" in e.value.message
    assert "estimated time 20.5 s" in e.value.message
    assert e.value.body["code"] == "model_loading"
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["status"] == 503
    assert rec["error"]["source"] == "upstream"


def test_a_loading_model_on_chat_and_embeddings(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake, Script(loading=3.2))
    for call in (
        lambda: client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
        ),
        lambda: client.embeddings.create(model=EMB_MODEL, input="hi"),
    ):
        with pytest.raises(openai.InternalServerError) as e:
            call()
        assert e.value.status_code == 503
        assert e.value.response.headers["retry-after"] == "4"


def test_wait_for_model_is_sent_and_honoured(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(loading=20.5, text="ready now"))
    out = client_for(gw, "waiting").completions.create(model=TG_MODEL, prompt="hi")
    assert out.choices[0].text == "ready now"
    sent = fake.last()
    assert sent.headers["x-wait-for-model"] == "true"
    assert sent.headers["x-use-cache"] == "false"
    assert sent.json()["options"] == {"use_cache": False, "wait_for_model": True}

    answer = client_for(gw, "waiting").chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "ready now"
    sent = fake.last()
    assert sent.headers["x-wait-for-model"] == "true"
    assert "options" not in sent.json()  # the Messages API body stays OpenAI's


# -------------------------------------------------------------------- errors


def test_upstream_auth_error_keeps_status_and_message(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    with pytest.raises(openai.AuthenticationError) as e:
        client_for(gw, "wrong").chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 401
    assert e.value.body == {
        "message": "Authorization header is correct, but the token seems invalid",
        "type": "authentication_error",
        "param": None,
        "code": None,
    }
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["status"] == 401


def test_tgi_validation_error_is_a_422(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake)
    r = httpx.post(
        f"{gw.url}/hf/v1/completions",
        json={"model": TG_MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 422
    assert r.json()["error"] == {
        "message": "`stop` supports up to 4 stop sequences. Given: 5",
        "type": "invalid_request_error",
        "param": None,
        "code": "validation",
    }


def test_router_openai_shaped_error_keeps_type(fake: FakeUpstream, client: openai.OpenAI) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}], temperature=2.5
        )
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error"
    assert "temperature" in e.value.message


def test_completions_the_task_cannot_serve_are_400s(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    serve(fake)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=TG_MODEL, prompt="x", n=2)
    assert e.value.body["param"] == "n"
    assert fake.received == []  # refused before anything was sent


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_error_event_mid_stream(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI, kind: str
) -> None:
    serve(fake, Script(text="one two three four five", error_at=3))
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        if kind == "chat":
            for c in client.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
            ):
                got += [ch.delta.content or "" for ch in c.choices]
        else:
            for c in client.completions.create(model=TG_MODEL, prompt="x", stream=True):
                got += [ch.text for ch in c.choices]
    assert "Request failed during generation" in e.value.message
    assert "one" in "".join(got) and "five" not in "".join(got)
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


def test_stream_cut_mid_way_is_an_error(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="one two three four five six seven", chunk_size=40, cut_after=3))
    r = httpx.post(
        f"{gw.url}/hf/v1/completions",
        json={"prompt": "count", "stream": True},
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert "error" in json.loads(events[-2].removeprefix("data: "))
    for e in events[:-1]:
        json.loads(e.removeprefix("data: "))  # no half event reached the client
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


def test_stream_ended_before_its_final_event_is_an_error(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    # TGI's stream closed cleanly, but the event with the details never came
    serve(fake, Script(text="one two three four", end_at=3))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.completions.create(model=TG_MODEL, prompt="x", stream=True):
            got += [ch.text for ch in c.choices]
    assert "before the answer was complete" in e.value.message
    assert "".join(got) == "one two "
    assert my_record(gw)["status"] == "error"


# -------------------------------------------------------------------- native (llm_format)


def test_native_generate(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="one two three"))
    body = {"inputs": "Count", "parameters": {"max_new_tokens": 10, "details": True}}
    r = httpx.post(
        f"{gw.url}/native/generate",
        json=body,
        headers={"X-Message-Id": TAG["id"], "Authorization": "Bearer client-own"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    data = r.json()
    # TGI's /generate answer: one object, the stop reason and tokens as sent
    assert data["generated_text"] == "one two three"
    assert data["details"]["finish_reason"] == "eos_token"
    sent = fake.last()
    assert sent.path == f"/hf-inference/models/{TG_MODEL}"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"  # the route's, not the client's
    assert sent.json() == body
    rec = my_record(gw)
    assert rec["status"] == "ok" and meta_of(rec)["provider_name"] == "huggingface"
    assert usage_of(rec)["completion_tokens"] == 3


def test_native_generate_stream(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, Script(text="one two three", prompt_tokens=4))
    body = {"inputs": "Count", "parameters": {"details": True}}
    with httpx.stream(
        "POST",
        f"{gw.url}/native/generate_stream",
        json=body,
        headers={"X-Message-Id": TAG["id"]},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_bytes())
    # TGI's own token events, passed through
    events = [
        json.loads(e.removeprefix(b"data:")) for e in raw.split(b"\n\n") if e.startswith(b"data:")
    ]
    assert "".join(e["token"]["text"] for e in events if not e["token"]["special"]) == (
        "one two three"
    )
    assert events[-1]["details"]["input_length"] == 4
    assert fake.last().json() == {**body, "stream": True}
    rec = my_record(gw)
    assert meta_of(rec)["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported"
    assert (usage_of(rec)["prompt_tokens"], usage_of(rec)["completion_tokens"]) == (4, 3)
