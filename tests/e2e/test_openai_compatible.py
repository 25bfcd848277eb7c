"""The gateway end to end with vLLM and named OpenAI-compatible hosts.

A real `mitmdump -s addons/gateway.py`, the fake hosts of `tests/fakes/openai_like.py`
(each rejects what the real API rejects: Groq's `messages[].name`, DeepSeek's
`max_completion_tokens`, Together's `stream_options` and `encoding_format`, ...), and the
official `openai` SDK as the client. vLLM is exercised on every operation; DeepSeek
(reasoning stream, cache hits, FIM), Groq, xAI, OpenRouter and Together on what sets
them apart. Each test checks what the client gets, what the host received, and the
call record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.openai_like import Script, dialects, openai_like_api, vector
from tests.fakes.upstream import FakeUpstream

SECRET = "sk-compat-test-secret-0123456789"
HOSTS = dialects(SECRET)

#: the client operations: path under /v1 and route type
OPS = {
    "chat": ("chat/completions", "llm/v1/chat"),
    "completions": ("completions", "llm/v1/completions"),
    "embeddings": ("embeddings", "llm/v1/embeddings"),
}
#: every operation of every host, each with its own route (the support matrix)
MATRIX = [(host, op) for host, dialect in HOSTS.items() for op in dialect.paths]

ROUTE = """
      - name: {name}
        paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              auth: {{header_name: Authorization, header_value: "Bearer {{vault://env/LLMITM_COMPAT_KEY}}"}}
              model:
                provider: {provider}
                {model}
                options: {{upstream_url: "UPSTREAM"{extra}}}
              logging: {{log_statistics: true, log_payloads: true}}"""


def route(
    provider: str, op: str, route_type: str, model: str = "", extra: str = "", prefix: str = ""
) -> str:
    prefix = prefix or provider
    return ROUTE.format(
        name=f"{prefix}-{op}",
        path=f"/{prefix}/v1/{op}",
        route_type=route_type,
        provider=provider,
        model=f"name: {model}" if model else "",
        extra=extra,
    )


CONFIG = (
    """
_format_version: "3.0"
services:
  - name: compat
    url: http://127.0.0.1:9
    read_timeout: 5000
    routes:"""
    # vLLM: the client chooses the model (none configured), the route sets top_k
    + route("vllm", "chat/completions", "llm/v1/chat", extra=", top_k: 20")
    + route("vllm", "completions", "llm/v1/completions")
    + route("vllm", "embeddings", "llm/v1/embeddings")
    + route(
        "deepseek",
        "chat/completions",
        "llm/v1/chat",
        "deepseek-reasoner",
        ", input_cost: 0.56, output_cost: 1.68, cache_read_cost: 0.07",
    )
    + route("deepseek", "completions", "llm/v1/completions", "deepseek-chat")
    + route("groq", "chat/completions", "llm/v1/chat", "llama-3.3-70b-versatile")
    + route("xai", "chat/completions", "llm/v1/chat", "grok-3-mini")
    + route("openrouter", "chat/completions", "llm/v1/chat", "anthropic/claude-sonnet-4")
    + route("together", "embeddings", "llm/v1/embeddings", "BAAI/bge-large-en-v1.5")
    + "".join(
        route(host, OPS[op][0], OPS[op][1], "matrix-model", prefix=f"m-{host}")
        for host, op in MATRIX
    )
    + """
plugins:
  - name: file-log
    config: {path: "{records}"}
"""
)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw-compat"),
        CONFIG.replace("UPSTREAM", upstream.url),
        quiet=False,
        env={"LLMITM_COMPAT_KEY": SECRET},
    )
    g.wait_ready()
    yield g
    g.stop()
    assert SECRET not in g.records_path.read_text()
    assert SECRET not in g.log()


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def client(gw: Gateway, host: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/{host}/v1",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


def serve(fake: FakeUpstream, host: str, script: Script | None = None) -> None:
    fake.reply(openai_like_api(HOSTS[host], script))


def usage_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["usage"]


def meta_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["meta"]


ASK = [{"role": "user", "content": "1+1?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# ============================================================================= vLLM


def test_vllm_chat(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "vllm", Script(text="It is 2.", model="Qwen/Qwen3-8B"))
    raw = client(gw, "vllm").chat.completions.with_raw_response.create(
        model="Qwen/Qwen3-8B", messages=ASK, temperature=0.0
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "It is 2."
    assert answer.usage.prompt_tokens == 23
    assert raw.headers["x-llm-model"] == "vllm/Qwen/Qwen3-8B"
    sent = fake.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.json() == {
        "model": "Qwen/Qwen3-8B",
        "messages": ASK,
        "temperature": 0.0,
        "top_k": 20,
    }
    rec = my_record(gw)
    assert rec["status"] == "ok"
    assert meta_of(rec)["provider_name"] == "vllm"
    assert (meta_of(rec)["request_model"], meta_of(rec)["response_model"]) == ("Qwen/Qwen3-8B",) * 2
    assert usage_of(rec)["source"] == "reported"
    assert (usage_of(rec)["prompt_tokens"], usage_of(rec)["completion_tokens"]) == (23, 9)


def test_vllm_stream_arrives_as_it_is_generated(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "vllm", Script(text="The answer is exactly two.", pause=0.15, chunk_size=7))
    t0 = time.monotonic()
    got, first_at, usage = [], None, None
    for c in client(gw, "vllm").chat.completions.create(
        model="m", messages=ASK, stream=True, stream_options={"include_usage": True}
    ):
        usage = c.usage or usage
        for choice in c.choices:
            if choice.delta.content:
                first_at = first_at or time.monotonic() - t0
                got.append(choice.delta.content)
    total = time.monotonic() - t0
    assert "".join(got) == "The answer is exactly two."
    assert first_at is not None and first_at < total - 0.3
    assert usage is not None and usage.completion_tokens == 9
    assert fake.last().json()["stream_options"] == {"include_usage": True}
    rec = my_record(gw)
    assert meta_of(rec)["request_mode"] == "stream" and usage_of(rec)["source"] == "reported"
    assert usage_of(rec)["time_to_first_token"] > 100


def test_vllm_stream_without_usage_asked_and_a_server_reporting_none(
    gw: Gateway, fake: FakeUpstream
) -> None:
    serve(fake, "vllm", Script(text="no counts here", report_usage=False))
    chunks = list(client(gw, "vllm").chat.completions.create(model="m", messages=ASK, stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "no counts here"
    )
    rec = my_record(gw)
    assert rec["status"] == "ok"
    assert usage_of(rec)["source"] == "estimated" and usage_of(rec)["completion_tokens"] > 0


def test_vllm_completions(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "vllm", Script(text="def add(a, b): return a + b"))
    c = client(gw, "vllm")
    out = c.completions.create(model="codellama", prompt="def add", max_tokens=30)
    assert out.choices[0].text == "def add(a, b): return a + b"
    assert fake.last().path == "/v1/completions"
    assert usage_of(my_record(gw))["prompt_tokens"] == 23
    TAG["id"] = f"msg-{uuid.uuid4().hex}"  # the streamed call's own record
    text = "".join(
        ch.choices[0].text
        for ch in client(gw, "vllm").completions.create(
            model="codellama", prompt="def add", stream=True
        )
        if ch.choices
    )
    assert text == "def add(a, b): return a + b"
    assert meta_of(my_record(gw))["request_mode"] == "stream"


def test_vllm_embeddings(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "vllm", Script(prompt_tokens=4))
    c = client(gw, "vllm")
    out = c.embeddings.create(model="BAAI/bge-m3", input=["a", "b"])  # the SDK asks base64
    assert [d.embedding for d in out.data] == [vector(0), vector(1)]
    assert fake.last().json()["encoding_format"] == "base64"  # vLLM answers it itself
    assert fake.last().path == "/v1/embeddings"
    rec = my_record(gw)
    assert meta_of(rec)["route_type"] == "llm/v1/embeddings"
    assert usage_of(rec)["prompt_tokens"] == 4
    floats = c.embeddings.create(model="BAAI/bge-m3", input="a", encoding_format="float")
    assert floats.data[0].embedding == vector(0)


def test_vllm_tool_calls_streamed(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "vllm", Script(tool_calls=[("get_weather", {"city": "Lyon"})]))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in client(gw, "vllm").chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], stream=True
    ):
        for choice in c.choices:
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
                entry["id"] += d.id or ""
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["args"] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    assert calls == {0: {"id": "call_fake0000", "name": "get_weather", "args": '{"city": "Lyon"}'}}
    assert finish == "tool_calls"
    assert meta_of(my_record(gw))["finish_reason"] == "tool_calls"


def test_vllm_images_are_passed_through(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "vllm", Script(text="A cat."))
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    answer = client(gw, "vllm").chat.completions.create(
        model="Qwen/Qwen2.5-VL-7B-Instruct", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == "A cat."
    assert fake.last().json()["messages"] == [{"role": "user", "content": content}]


def test_vllm_errors_keep_status_and_message(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "vllm", Script(fail=(400, "This model's maximum context length is 4096 tokens.")))
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "vllm").chat.completions.create(model="m", messages=ASK)
    assert e.value.status_code == 400
    assert e.value.body["message"] == "This model's maximum context length is 4096 tokens."
    assert e.value.body["type"] == "invalid_request_error"  # not vLLM's class name
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["status"] == 400


# ========================================================================= DeepSeek


def test_deepseek_reasoning_stream_is_streamed_and_recorded(
    gw: Gateway, fake: FakeUpstream
) -> None:
    script = Script(
        text="9.8 is greater.",
        reasoning="Compare the tenths: 1 < 8.",
        prompt_tokens=1040,
        cached_tokens=1024,
        completion_tokens=61,
        reasoning_tokens=48,
    )
    serve(fake, "deepseek", script)
    reasoning, content, usage = "", "", None
    for c in client(gw, "deepseek").chat.completions.create(
        model="deepseek-reasoner",
        messages=[{"role": "user", "content": "9.11 or 9.8?"}],
        max_completion_tokens=2000,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = c.usage or usage
        for choice in c.choices:
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
    assert reasoning == "Compare the tenths: 1 < 8."
    assert content == "9.8 is greater."
    assert usage is not None and usage.model_extra["prompt_cache_hit_tokens"] == 1024

    sent = fake.last()
    assert sent.path == "/chat/completions"
    assert sent.json()["max_tokens"] == 2000  # DeepSeek knows no max_completion_tokens
    assert "max_completion_tokens" not in sent.json()

    rec = my_record(gw)
    message = rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]
    assert message["reasoning_content"] == "Compare the tenths: 1 < 8."
    assert message["content"] == "9.8 is greater."
    usage_rec = usage_of(rec)
    assert (
        usage_rec["prompt_tokens"],
        usage_rec["cache_read_tokens"],
        usage_rec["completion_tokens"],
        usage_rec["reasoning_tokens"],
    ) == (1040, 1024, 61, 48)
    # cache hits priced as cache reads
    assert usage_rec["cost"] == pytest.approx((16 * 0.56 + 1024 * 0.07 + 61 * 1.68) / 1e6)


def test_deepseek_chat_with_cache_hits(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "deepseek", Script(text="Cached.", prompt_tokens=2000, cached_tokens=1920))
    answer = client(gw, "deepseek").chat.completions.create(model="deepseek-reasoner", messages=ASK)
    assert answer.choices[0].message.content == "Cached."
    assert answer.usage.model_extra["prompt_cache_hit_tokens"] == 1920  # DeepSeek's own object
    usage = usage_of(my_record(gw))
    assert (usage["prompt_tokens"], usage["cache_read_tokens"]) == (2000, 1920)


def test_deepseek_fim_completions(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "deepseek", Script(text="    return a + b\n"))
    out = client(gw, "deepseek").completions.create(
        model="deepseek-chat", prompt="def add(a, b):\n", suffix="\nprint(add(1, 2))", max_tokens=64
    )
    assert out.choices[0].text == "    return a + b\n"
    sent = fake.last()
    assert sent.path == "/beta/completions"
    assert sent.json()["suffix"] == "\nprint(add(1, 2))"
    assert meta_of(my_record(gw))["provider_name"] == "deepseek"


# ===================================================================== other hosts


def test_groq_quirks(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "groq", Script(text="Fast."))
    answer = client(gw, "groq").chat.completions.create(
        model="llama-3.3-70b-versatile",
        messages=[{"role": "user", "name": "alice", "content": "hi"}],  # Groq: 400
        n=1,  # Groq: 400 unless 1, which says nothing
    )
    assert answer.choices[0].message.content == "Fast."
    sent = fake.last()
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.json()["messages"] == [{"role": "user", "content": "hi"}]
    assert "n" not in sent.json()
    assert meta_of(my_record(gw))["provider_name"] == "groq"


def test_groq_stream(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "groq", Script(text="one two three", reasoning="short thought"))
    chunks = list(
        client(gw, "groq").chat.completions.create(
            model="llama-3.3-70b-versatile", messages=ASK, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    rec = my_record(gw)
    assert usage_of(rec)["source"] == "reported"
    message = rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]
    assert message["reasoning"] == "short thought"


def test_xai_reasoning_tokens_count_as_completion_tokens(gw: Gateway, fake: FakeUpstream) -> None:
    serve(
        fake, "xai", Script(text="Hi!", reasoning="Hmm.", completion_tokens=2, reasoning_tokens=200)
    )
    answer = client(gw, "xai").chat.completions.create(model="grok-3-mini", messages=ASK)
    assert answer.choices[0].message.model_extra["reasoning_content"] == "Hmm."
    assert answer.usage.total_tokens == 23 + 2 + 200  # xAI's own object reaches the client
    assert fake.last().path == "/v1/chat/completions"
    usage = usage_of(my_record(gw))
    assert (usage["completion_tokens"], usage["reasoning_tokens"]) == (202, 200)


def test_openrouter_error_mid_stream(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "openrouter", Script(text="one two three four five", error_at=4))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client(gw, "openrouter").chat.completions.create(
            model="anthropic/claude-sonnet-4", messages=ASK, stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "Provider disconnected" in e.value.message
    assert "".join(got) == "one two three "  # what came before the error
    assert fake.last().path == "/api/v1/chat/completions"
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"
    assert rec["error"]["message"] == "Provider disconnected"


def test_openrouter_error_keeps_its_status(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, "openrouter", Script(fail=(402, "Insufficient credits")))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "openrouter").chat.completions.create(
            model="anthropic/claude-sonnet-4", messages=ASK
        )
    assert e.value.status_code == 402
    assert e.value.body["message"] == "Insufficient credits"
    assert e.value.body["code"] == 402


def test_together_embeddings_as_base64_from_a_host_without_it(
    gw: Gateway, fake: FakeUpstream
) -> None:
    serve(fake, "together")
    out = client(gw, "together").embeddings.create(
        model="BAAI/bge-large-en-v1.5", input=["x", "y", "z"]
    )
    assert [d.embedding for d in out.data] == [vector(0), vector(1), vector(2)]
    assert "encoding_format" not in fake.last().json()  # Together rejects the field
    assert fake.last().path == "/v1/embeddings"
    assert meta_of(my_record(gw))["provider_name"] == "together"


def test_the_hosts_record_their_names(gw: Gateway, fake: FakeUpstream) -> None:
    """One call per chat host: the record names the host and its model."""
    for host, model in [
        ("groq", "llama-3.3-70b-versatile"),
        ("xai", "grok-3-mini"),
        ("openrouter", "anthropic/claude-sonnet-4"),
    ]:
        serve(fake, host, Script(text=f"from {host}"))
        TAG["id"] = f"msg-{uuid.uuid4().hex}"
        answer = client(gw, host).chat.completions.create(model=model, messages=ASK)
        assert answer.choices[0].message.content == f"from {host}"
        rec = my_record(gw)
        assert (meta_of(rec)["provider_name"], meta_of(rec)["request_model"]) == (host, model)
        assert json.loads(fake.last().body)["model"] == model


# ------------------------------------------------------- every host, every operation


def _hosts_serving(op: str) -> list[str]:
    return [host for host, o in MATRIX if o == op]


def test_the_matrix_covers_every_named_host() -> None:
    """Each named OpenAI-compatible provider has a fake dialect, so the tests below
    run it end to end on everything it serves."""
    from providers.openai_compatible import PROVIDERS

    assert {p.name for p in PROVIDERS} == set(HOSTS)
    for p in PROVIDERS:
        served = {op for op, (_, rt) in OPS.items() if rt in {str(t) for t in p.route_types}}
        assert served == set(HOSTS[p.name].paths), p.name


@pytest.mark.parametrize("host", _hosts_serving("chat"))
def test_every_host_chat_stream_tools_and_images(
    gw: Gateway, fake: FakeUpstream, host: str
) -> None:
    c = client(gw, f"m-{host}")
    serve(fake, host, Script(text="Two."))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with_image = [{"role": "user", "content": [{"type": "text", "text": "1+1?"}, image]}]
    if HOSTS[host].text_only:  # DeepSeek: the gateway's clear 400, not the host's
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="matrix-model", messages=with_image)
        assert e.value.code == "unsupported_content" and e.value.body["param"] == "messages"
        assert "messages[0].content[1] is an 'image_url' part" in e.value.message
        assert fake.received == []  # refused before any upstream call
        assert my_record(gw)["error"]["source"] == "gateway"
        TAG["id"] = f"msg-{uuid.uuid4().hex}"  # the text-only call's own record
        c = client(gw, f"m-{host}")
        with_image = ASK
    out = c.chat.completions.create(model="matrix-model", messages=with_image)
    assert out.choices[0].message.content == "Two."
    sent = fake.last()
    assert sent.path == HOSTS[host].paths["chat"]
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.json()["messages"] == with_image
    rec = my_record(gw)
    assert meta_of(rec)["provider_name"] == host
    assert (usage_of(rec)["prompt_tokens"], usage_of(rec)["completion_tokens"]) == (23, 9)

    chunks = list(
        c.chat.completions.create(
            model="matrix-model",
            messages=ASK,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Two."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9

    serve(fake, host, Script(tool_calls=[("get_weather", {"city": "Lyon"})]))
    answer = c.chat.completions.create(model="matrix-model", messages=ASK, tools=[WEATHER])
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Lyon"}
    assert answer.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("host", _hosts_serving("completions"))
def test_every_host_completions_whole_and_streamed(
    gw: Gateway, fake: FakeUpstream, host: str
) -> None:
    c = client(gw, f"m-{host}")
    serve(fake, host, Script(text="Two."))
    out = c.completions.create(model="matrix-model", prompt="1+1=")
    assert out.choices[0].text == "Two."
    assert fake.last().path == HOSTS[host].paths["completions"]
    text = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="matrix-model", prompt="1+1=", stream=True)
        if ch.choices
    )
    assert text == "Two."


@pytest.mark.parametrize("host", _hosts_serving("embeddings"))
def test_every_host_embeddings(gw: Gateway, fake: FakeUpstream, host: str) -> None:
    serve(fake, host, Script(prompt_tokens=4))
    out = client(gw, f"m-{host}").embeddings.create(model="matrix-model", input=["a", "b"])
    assert [d.embedding for d in out.data] == [vector(0), vector(1)]
    assert fake.last().path == HOSTS[host].paths["embeddings"]
    assert usage_of(my_record(gw))["prompt_tokens"] == 4
