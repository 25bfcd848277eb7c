"""The gateway end to end with `provider: llama2` (raw, ollama and openai formats) and
`provider: mistral` (openai and ollama formats).

A real `mitmdump -s addons/gateway.py`, the official `openai` SDK as the client, and fakes
of each wire format: Hugging Face TGI (`tests/fakes/tgi.py`) for llama2's raw format,
Ollama (`tests/fakes/ollama.py`), an OpenAI-compatible server (`tests/fakes/upstream.py`
helpers), and Mistral's API (`mistral_api` below: it refuses, as Mistral does, every
field it does not know with a 422 `extra_forbidden`, and tool call ids that are not 9
characters of [a-zA-Z0-9]; it answers with usage on the last stream chunk and parallel
tool calls that all say `index: 0`, as Mistral does).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from tests.conftest import Gateway
from tests.fakes import ollama as fake_ollama
from tests.fakes import tgi
from tests.fakes.upstream import (
    FakeUpstream,
    Received,
    Reply,
    chat_completion,
    chat_stream,
    rechunk,
)

HF_TOKEN = "hf_llama_token_0123456789abcdefghij"
MISTRAL_KEY = "mistral-key-0123456789abcdefghijklmnop"
LLAMA = "llama2"
MISTRAL = "mistral-large-latest"


def route(
    name: str, path: str, route_type: str, provider: str, model: str, options: str, auth: str = ""
) -> str:
    auth_line = f"\n              auth: {auth}" if auth else ""
    return f"""
      - name: {name}
        paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}{auth_line}
              model:
                provider: {provider}
                name: {model}
                options: {options}
              logging: {{log_statistics: true, log_payloads: true}}"""


HF_AUTH = '{header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_HF_TOKEN}"}'
MISTRAL_AUTH = (
    '{header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_MISTRAL_KEY}"}'
)
COSTS = "input_cost: 2.0, output_cost: 6.0, cache_read_cost: 0.2"

CONFIG = (
    """
_format_version: "3.0"
services:
  - name: llm-fakes
    url: http://127.0.0.1:9
    read_timeout: 5000
    routes:"""
    + route(
        "llama-raw",
        "/llama-raw/v1/chat/completions",
        "llm/v1/chat",
        "llama2",
        LLAMA,
        '{llama2_format: raw, upstream_url: "UPSTREAM/generate", max_tokens: 256}',
        HF_AUTH,
    )
    + route(
        "llama-raw-completions",
        "/llama-raw/v1/completions",
        "llm/v1/completions",
        "llama2",
        LLAMA,
        '{llama2_format: raw, upstream_url: "UPSTREAM/"}',
        HF_AUTH,
    )
    + route(
        "llama-ollama",
        "/llama-ollama/v1/chat/completions",
        "llm/v1/chat",
        "llama2",
        LLAMA,
        '{llama2_format: ollama, upstream_url: "UPSTREAM", max_tokens: 512, temperature: 0.5}',
    )
    + route(
        "llama-ollama-completions",
        "/llama-ollama/v1/completions",
        "llm/v1/completions",
        "llama2",
        LLAMA,
        '{llama2_format: ollama, upstream_url: "UPSTREAM"}',
    )
    + route(
        "llama-openai",
        "/llama-openai/v1/chat/completions",
        "llm/v1/chat",
        "llama2",
        LLAMA,
        '{llama2_format: openai, upstream_url: "UPSTREAM"}',
    )
    + route(
        "mistral",
        "/mistral/v1/chat/completions",
        "llm/v1/chat",
        "mistral",
        MISTRAL,
        f'{{upstream_url: "UPSTREAM", {COSTS}}}',
        MISTRAL_AUTH,
    )
    + route(
        "mistral-embeddings",
        "/mistral/v1/embeddings",
        "llm/v1/embeddings",
        "mistral",
        "mistral-embed",
        '{mistral_format: openai, upstream_url: "UPSTREAM"}',
        MISTRAL_AUTH,
    )
    + route(
        "mistral-fim",
        "/codestral/v1/completions",
        "llm/v1/completions",
        "mistral",
        "codestral-latest",
        '{upstream_url: "UPSTREAM"}',
        MISTRAL_AUTH,
    )
    + route(
        "mistral-ollama",
        "/mistral-ollama/v1/chat/completions",
        "llm/v1/chat",
        "mistral",
        "mistral-tiny",
        '{mistral_format: ollama, upstream_url: "UPSTREAM"}',
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
        tmp_path_factory.mktemp("gw-llama2-mistral"),
        CONFIG.replace("UPSTREAM", upstream.url),
        quiet=False,
        env={"LLMITM_HF_TOKEN": HF_TOKEN, "LLMITM_MISTRAL_KEY": MISTRAL_KEY},
    )
    g.wait_ready()
    yield g
    g.stop()
    for secret in (HF_TOKEN, MISTRAL_KEY):
        assert secret not in g.records_path.read_text()
        assert secret not in g.log()


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def my_record(gw: Gateway) -> dict[str, Any]:
    return gw.record(message_id=TAG["id"])


def usage_of(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["ai"]["proxy"]["usage"]


def client_for(gw: Gateway, prefix: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/{prefix}/v1",
        api_key="client-key",
        max_retries=0,
        default_headers={"X-Message-Id": TAG["id"]},
    )


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
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}


# ==================================================================== a fake Mistral API

MISTRAL_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stop",
        "random_seed",
        "metadata",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "prediction",
        "parallel_tool_calls",
        "reasoning_effort",
        "prompt_mode",
        "guardrails",
        "prompt_cache_key",
        "safe_prompt",
    }
)
MISTRAL_FIM_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "suffix",
        "temperature",
        "top_p",
        "max_tokens",
        "min_tokens",
        "stream",
        "stop",
        "random_seed",
        "metadata",
        "prompt_cache_key",
    }
)
MISTRAL_EMBED_FIELDS = frozenset(
    {"model", "input", "output_dimension", "output_dtype", "encoding_format", "metadata"}
)
MISTRAL_MESSAGE_FIELDS = {
    "system": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "prefix"},
    "tool": {"role", "content", "tool_call_id", "name"},
}


@dataclass
class MistralScript:
    text: str = "Paris is the capital of France."
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(
        default_factory=list
    )  # (id, name, args)
    prompt_tokens: int = 2048
    cached_tokens: int = 1536
    chunk_size: int = 23
    pause: float = 0.0


def _forbidden(loc: list[Any], value: Any) -> Reply:
    detail = [
        {
            "type": "extra_forbidden",
            "loc": ["body", *loc],
            "msg": "Extra inputs are not permitted",
            "input": value,
        }
    ]
    body = {
        "object": "error",
        "message": {"detail": detail},
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    return Reply.json(body, 422)


def _mistral_error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
) -> Reply:
    return Reply.json(
        {"object": "error", "message": message, "type": kind, "param": None, "code": code}, status
    )


def _check_chat(body: dict[str, Any]) -> Reply | None:
    for name in body:
        if name not in MISTRAL_CHAT_FIELDS:
            return _forbidden([name], body[name])
    for i, m in enumerate(body.get("messages") or ()):
        allowed = MISTRAL_MESSAGE_FIELDS.get(m.get("role"))
        if allowed is None:
            return _mistral_error(400, f"Unexpected role '{m.get('role')}'")
        for name in m:
            if name not in allowed:
                return _forbidden(["messages", i, m["role"], name], m[name])
        ids = [c.get("id") for c in m.get("tool_calls") or ()] + (
            [m["tool_call_id"]] if m.get("tool_call_id") else []
        )
        for cid in ids:
            if not (isinstance(cid, str) and len(cid) == 9 and cid.isalnum() and cid.isascii()):
                return _mistral_error(
                    400, f"Tool call id was {cid} but must be a-z, A-Z, 0-9, with a length of 9."
                )
    choice = body.get("tool_choice")
    if (
        choice is not None
        and choice not in ("auto", "none", "any", "required")
        and not isinstance(choice, dict)
    ):
        return _mistral_error(422, f"Invalid tool_choice {choice!r}")
    return None


def _usage(s: MistralScript, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": s.prompt_tokens,
        "total_tokens": s.prompt_tokens + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    }


def _calls_made(body: dict[str, Any], s: MistralScript) -> bool:
    return bool(body.get("tools")) and bool(s.tool_calls) and body["messages"][-1]["role"] != "tool"


def _sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def _mistral_answer(body: dict[str, Any], s: MistralScript, fim: bool) -> Reply:
    calls = [
        {"id": cid, "function": {"name": name, "arguments": json.dumps(args)}, "index": 0}
        for cid, name, args in s.tool_calls
    ]
    use_tools = not fim and _calls_made(body, s)
    words = s.text.split(" ")
    head = {"id": "cf79f7daaee244b1a0ae5c7b1444424a", "created": 1711310000, "model": body["model"]}
    if not body.get("stream"):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "" if use_tools else s.text,
            "prefix": False,
        }
        if use_tools:
            message["tool_calls"] = calls
        return Reply.json(
            head
            | {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if use_tools else "stop",
                    }
                ],
                "usage": _usage(s, 9 if use_tools else len(words)),
            }
        )

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
        obj = head | {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if usage is not None:
            obj["usage"] = usage
        return _sse(obj)

    events: list[bytes | float] = [chunk({"role": "assistant", "content": ""})]
    if use_tools:
        events.append(chunk({"tool_calls": calls}, "tool_calls", _usage(s, 9)))
    else:
        for n, w in enumerate(words):
            if s.pause:
                events.append(s.pause)
            events.append(chunk({"content": w if n == 0 else " " + w}))
        events.append(chunk({"content": ""}, "stop", _usage(s, len(words))))
    events.append(_sse(b"[DONE]"))
    return Reply.sse(rechunk(events, s.chunk_size))


def mistral_api(key: str, script: MistralScript | None = None) -> Any:
    s = script or MistralScript()

    def handle(req: Received) -> Reply:
        path = req.path.split("?")[0]
        if req.headers.get("authorization") != f"Bearer {key}":
            return Reply.json({"message": "Unauthorized", "request_id": "4b9c0e2b"}, 401)
        body = json.loads(req.body)
        if path == "/v1/chat/completions":
            problem = _check_chat(body)
            return problem or _mistral_answer(body, s, fim=False)
        if path == "/v1/fim/completions":
            for name in body:
                if name not in MISTRAL_FIM_FIELDS:
                    return _forbidden([name], body[name])
            return _mistral_answer(body, s, fim=True)
        if path == "/v1/embeddings":
            for name in body:
                if name not in MISTRAL_EMBED_FIELDS:
                    return _forbidden([name], body[name])
            texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
            size = body.get("output_dimension") or 3
            return Reply.json(
                {
                    "id": "embd-aad6fc62b17349b192ef09225058bc45",
                    "object": "list",
                    "data": [
                        {
                            "object": "embedding",
                            "embedding": fake_ollama.vector(t, size),
                            "index": i,
                        }
                        for i, t in enumerate(texts)
                    ],
                    "model": body["model"],
                    "usage": {
                        "prompt_tokens": 2 * len(texts),
                        "total_tokens": 2 * len(texts),
                        "completion_tokens": 0,
                    },
                }
            )
        return Reply.json({"detail": "Not Found"}, 404)

    return handle


# ==================================================================== llama2, raw format (TGI)


def test_llama2_raw_chat(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(tgi.tgi_api(tgi.Script(text=" Because zero has no inverse."), token=HF_TOKEN))
    answer = client_for(gw, "llama-raw").chat.completions.create(
        model=LLAMA,
        messages=[
            {"role": "system", "content": "You are a mathematician."},
            {"role": "user", "content": "What is 1 + 2?"},
            {"role": "assistant", "content": "3."},
            {"role": "user", "content": "Why can't you divide by zero?"},
        ],
        temperature=0.5,
        top_p=1,
        stop=["</s>"],
    )
    assert answer.choices[0].message.content == "Because zero has no inverse."
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (37, 6)  # TGI's headers
    sent = fake.last()
    assert sent.path == "/generate"
    assert sent.headers["authorization"] == f"Bearer {HF_TOKEN}"  # the route's token
    assert sent.json() == {
        "inputs": "<s>[INST] <<SYS>>\nYou are a mathematician.\n<</SYS>>\n\nWhat is 1 + 2? [/INST] 3. </s>"
        "<s>[INST] Why can't you divide by zero? [/INST]",
        "parameters": {
            "max_new_tokens": 256,  # the route's max_tokens
            "temperature": 0.5,
            "stop": ["</s>"],
            "return_full_text": False,
            "details": True,
        },
    }
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["provider_name"] == "llama2"
    assert rec["ai"]["proxy"]["meta"]["response_model"] == LLAMA
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["prompt_tokens"] == 37


def test_llama2_raw_stream(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(
        tgi.tgi_api(
            tgi.Script(text=" One, two and three.", pause=0.15, chunk_size=9), token=HF_TOKEN
        )
    )
    t0 = time.monotonic()
    got, first_at, finish, usage = [], None, None, None
    for c in client_for(gw, "llama-raw").chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "Count to three."}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = c.usage or usage
        for choice in c.choices:
            if choice.delta.content:
                first_at = first_at or time.monotonic() - t0
                got.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(got) == "One, two and three."
    assert finish == "stop"
    assert first_at is not None and first_at < time.monotonic() - t0 - 0.3  # streamed
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (37, 5)
    sent = fake.last()
    assert sent.path == "/generate_stream" and sent.json()["stream"] is True
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["completion_tokens"] == 5
    assert (
        rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"]
        == "One, two and three."
    )


def test_llama2_raw_without_token_counts_is_estimated(gw: Gateway, fake: FakeUpstream) -> None:
    # a server that echoes the prompt and sends no usage headers
    fake.reply(
        tgi.tgi_api(
            tgi.Script(text=" Fine.", usage_headers=False, echo_prompt=True), token=HF_TOKEN
        )
    )
    answer = client_for(gw, "llama-raw").chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": "How are you?"}]
    )
    assert answer.choices[0].message.content == "Fine."  # the echoed prompt removed
    assert usage_of(my_record(gw))["source"] == "estimated"


def test_llama2_raw_completions_and_stream(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(tgi.tgi_api(tgi.Script(text=" It is undefined."), token=HF_TOKEN))
    client = client_for(gw, "llama-raw")
    out = client.completions.create(
        model=LLAMA, prompt="Why can't you divide by zero?", max_tokens=20
    )
    assert out.object == "text_completion" and out.choices[0].text == "It is undefined."
    sent = fake.last()
    assert sent.path == "/"  # TGI's compat route, as configured
    assert sent.json()["inputs"] == "<s>[INST] Why can't you divide by zero? [/INST]"
    assert usage_of(my_record(gw))["source"] == "reported"

    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model=LLAMA, prompt="Why?", stream=True)
        if c.choices
    )
    assert text == "It is undefined."
    assert fake.last().path == "/" and fake.last().json()["stream"] is True


def test_llama2_raw_tgi_validation_error_keeps_its_422(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(tgi.tgi_api(token=HF_TOKEN))
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client_for(gw, "llama-raw").chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "x"}], stop=["a", "b", "c", "d", "e"]
        )
    assert e.value.status_code == 422
    assert (
        e.value.body["message"]
        == "Input validation error: `stop` supports up to 4 stop sequences. Given: 5"
    )
    assert my_record(gw)["error"]["status"] == 422


def test_llama2_raw_stream_error_event(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(tgi.tgi_api(tgi.Script(text=" one two three four", error_at=2), token=HF_TOKEN))
    with pytest.raises(openai.APIError) as e:
        list(
            client_for(gw, "llama-raw").chat.completions.create(
                model=LLAMA, messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert "CUDA out of memory" in e.value.message
    assert my_record(gw)["status"] == "error"


def test_llama2_raw_on_the_hf_inference_api_a_loading_model_is_a_503_with_retry_after(
    gw: Gateway, fake: FakeUpstream
) -> None:
    """The Hugging Face Inference API's model-loading 503 says how long to wait: the
    client gets that time and a Retry-After, as with provider huggingface."""
    loading = {"error": f"Model {LLAMA} is currently loading", "estimated_time": 20.5}
    fake.reply(Reply.json(loading, 503))
    with pytest.raises(openai.InternalServerError) as e:
        client_for(gw, "llama-raw").chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 503
    assert e.value.response.headers["retry-after"] == "21"
    assert f"Model {LLAMA} is currently loading (estimated time 20.5 s)" in e.value.message
    assert e.value.body["code"] == "model_loading"
    rec = my_record(gw)
    assert (rec["error"]["status"], rec["error"]["source"]) == (503, "upstream")


def test_llama2_raw_tools_are_a_400_without_an_upstream_call(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(tgi.tgi_api(token=HF_TOKEN))
    with pytest.raises(openai.BadRequestError) as e:
        client_for(gw, "llama-raw").chat.completions.create(
            model=LLAMA,
            messages=[
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "c", "content": "r"},
            ],
        )
    assert "no tool calling" in e.value.message and fake.received == []


# ==================================================================== llama2, ollama and openai formats


def test_llama2_ollama_chat(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(fake_ollama.ollama_api(fake_ollama.Script(text="Division by zero is undefined.")))
    answer = client_for(gw, "llama-ollama").chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": "Why can't you divide by zero?"}]
    )
    assert answer.choices[0].message.content == "Division by zero is undefined."
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (26, 5)
    sent = fake.last()
    assert sent.path == "/api/chat"
    assert sent.json() == {
        "model": LLAMA,
        "messages": [{"role": "user", "content": "Why can't you divide by zero?"}],
        "stream": False,
        "options": {"num_predict": 512, "temperature": 0.5},  # Kong's expected request
    }
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["provider_name"] == "llama2"
    assert usage_of(rec)["source"] == "reported"


def test_llama2_ollama_stream(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(fake_ollama.ollama_api(fake_ollama.Script(text="one two three", chunk_size=5)))
    chunks = list(
        client_for(gw, "llama-ollama").chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "count"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert usage_of(my_record(gw))["completion_tokens"] == 3


def test_llama2_openai_chat(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("Because it is undefined.", model=LLAMA)))
    answer = client_for(gw, "llama-openai").chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": "Why?"}]
    )
    assert answer.choices[0].message.content == "Because it is undefined."
    sent = fake.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.json() == {"model": LLAMA, "messages": [{"role": "user", "content": "Why?"}]}
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["provider_name"] == "llama2"
    assert (usage_of(rec)["prompt_tokens"], usage_of(rec)["source"]) == (11, "reported")


def test_llama2_openai_stream(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.sse(chat_stream(["Because", " it", " is", " undefined."], model=LLAMA)))
    chunks = list(
        client_for(gw, "llama-openai").chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "Why?"}], stream=True
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "Because it is undefined."
    )
    assert all(c.usage is None for c in chunks)  # asked upstream for the record only
    assert fake.last().json()["stream_options"] == {"include_usage": True}
    assert usage_of(my_record(gw))["completion_tokens"] == 4


def test_llama2_openai_stream_cut_before_its_end_is_an_error(
    gw: Gateway, fake: FakeUpstream
) -> None:
    """An OpenAI-format stream that stops with neither a finish reason nor [DONE] was
    cut: the client's stream ends with an error event and the record says so."""
    events = chat_stream(["Because", " it"], model=LLAMA)
    fake.reply(Reply.sse(events[:3]))  # the role chunk and two words, then a clean close
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for c in client_for(gw, "llama-openai").chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "Why?"}], stream=True
        ):
            got += [ch.delta.content or "" for ch in c.choices]
    assert "".join(got) == "Because it"
    assert "ended before the answer was complete" in e.value.message
    rec = my_record(gw)
    assert rec["status"] == "error"
    assert (rec["error"]["status"], rec["error"]["source"]) == (502, "upstream")


# ==================================================================== mistral, openai format


def test_mistral_chat(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(mistral_api(MISTRAL_KEY))
    raw = client_for(gw, "mistral").chat.completions.with_raw_response.create(
        model=MISTRAL,
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?", "name": "bob"},
        ],
        max_completion_tokens=64,
        seed=42,
        user="user-9",
        store=False,
        temperature=0.2,
        tool_choice="required",  # no tools: not sent
    )
    answer = raw.parse()
    assert answer.id == "cf79f7daaee244b1a0ae5c7b1444424a"
    assert answer.choices[0].message.content == "Paris is the capital of France."
    assert (
        answer.usage.prompt_tokens == 2048
        and answer.usage.prompt_tokens_details.cached_tokens == 1536
    )
    sent = fake.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {MISTRAL_KEY}"  # the route's key
    assert sent.json() == {
        "model": MISTRAL,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "random_seed": 42,
        "stream": False,
    }
    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["provider_name"] == "mistral"
    usage = usage_of(rec)
    assert usage["source"] == "reported"
    assert (usage["prompt_tokens"], usage["cache_read_tokens"], usage["completion_tokens"]) == (
        2048,
        1536,
        6,
    )
    # cached prompt tokens are priced as cache reads, the rest as input
    assert usage["cost"] == pytest.approx((512 * 2.0 + 1536 * 0.2 + 6 * 6.0) / 1e6)


@pytest.mark.parametrize("include_usage", [False, True])
def test_mistral_stream(gw: Gateway, fake: FakeUpstream, include_usage: bool) -> None:
    fake.reply(mistral_api(MISTRAL_KEY, MistralScript(pause=0.1, chunk_size=11)))
    kwargs: dict[str, Any] = {
        "model": MISTRAL,
        "messages": [{"role": "user", "content": "Capital?"}],
        "stream": True,
    }
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    chunks = list(client_for(gw, "mistral").chat.completions.create(**kwargs))
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "Paris is the capital of France."
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
        assert with_usage[0].usage.prompt_tokens == 2048
    else:
        assert with_usage == []  # Mistral's usage taken off its last content chunk
    sent = fake.last().json()
    assert sent["stream"] is True and "stream_options" not in sent  # Mistral refuses it
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["cache_read_tokens"] == 1536


TWO_CALLS = MistralScript(
    tool_calls=[
        ("D681PevKs", "get_weather", {"city": "Paris"}),
        ("A2bC3dE4f", "get_time", {"tz": "Europe/Paris"}),
    ]
)


def test_mistral_streamed_parallel_tool_calls_get_their_own_index(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(mistral_api(MISTRAL_KEY, TWO_CALLS))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in client_for(gw, "mistral").chat.completions.create(
        model=MISTRAL,
        messages=[{"role": "user", "content": "Weather and time?"}],
        tools=[WEATHER, TIME],
        stream=True,
    ):
        for choice in c.choices:
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
                entry["id"] += d.id or ""
                entry["name"] += d.function.name or ""
                entry["args"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "D681PevKs", "name": "get_weather", "args": '{"city": "Paris"}'},
        1: {"id": "A2bC3dE4f", "name": "get_time", "args": '{"tz": "Europe/Paris"}'},
    }
    assert my_record(gw)["ai"]["proxy"]["meta"]["finish_reason"] == "tool_calls"


def test_mistral_tool_round_trip_with_foreign_ids(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(mistral_api(MISTRAL_KEY, TWO_CALLS))
    client = client_for(gw, "mistral")
    question = {"role": "user", "content": "Weather in Paris?"}
    answer = client.chat.completions.create(
        model=MISTRAL, messages=[question], tools=[WEATHER], tool_choice="required"
    )
    assert fake.last().json()["tool_choice"] == "any"
    assert answer.choices[0].finish_reason == "tool_calls"
    assert [c.id for c in answer.choices[0].message.tool_calls] == ["D681PevKs", "A2bC3dE4f"]
    # a history whose tool calls came from another provider (ids Mistral would refuse)
    assistant = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "thought elsewhere",
        "tool_calls": [
            {
                "id": "call_9f8e7d6c5b4a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    tool = {"role": "tool", "tool_call_id": "call_9f8e7d6c5b4a", "content": "18C"}
    final = client.chat.completions.create(
        model=MISTRAL, messages=[question, assistant, tool], tools=[WEATHER]
    )
    assert final.choices[0].message.content == TWO_CALLS.text
    sent = fake.last().json()["messages"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"]
    assert len(sent[2]["tool_call_id"]) == 9 and "reasoning_content" not in sent[1]


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_mistral_embeddings(gw: Gateway, fake: FakeUpstream, encoding: str) -> None:
    fake.reply(mistral_api(MISTRAL_KEY))
    kwargs: dict[str, Any] = {"model": "mistral-embed", "input": ["a b", "c d"], "dimensions": 4}
    if encoding == "float":
        kwargs["encoding_format"] = "float"
    result = client_for(gw, "mistral").embeddings.create(**kwargs)
    assert [d.embedding for d in result.data] == [fake_ollama.vector(t, 4) for t in ("a b", "c d")]
    assert (result.usage.prompt_tokens, result.model) == (4, "mistral-embed")
    assert fake.last().json() == {
        "model": "mistral-embed",
        "input": ["a b", "c d"],
        "output_dimension": 4,
    }
    rec = my_record(gw)
    assert (
        usage_of(rec)["source"] == "reported"
        and rec["ai"]["proxy"]["meta"]["provider_name"] == "mistral"
    )


def test_mistral_fim_completions(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(mistral_api(MISTRAL_KEY, MistralScript(text="a, b = b, a + b")))
    client = client_for(gw, "codestral")
    out = client.completions.create(
        model="codestral-latest", prompt="def fib(n):", suffix="return a", max_tokens=32
    )
    assert out.object == "text_completion" and out.choices[0].text == "a, b = b, a + b"
    sent = fake.last()
    assert sent.path == "/v1/fim/completions"
    assert sent.json() == {
        "model": "codestral-latest",
        "prompt": "def fib(n):",
        "suffix": "return a",
        "max_tokens": 32,
        "stream": False,
    }
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="codestral-latest", prompt="def f():", stream=True)
        if c.choices
    )
    assert text == "a, b = b, a + b"
    assert usage_of(my_record(gw))["source"] == "reported"


def test_mistral_errors_keep_status_and_read_as_one_message(
    gw: Gateway, fake: FakeUpstream
) -> None:
    detail = [
        {
            "type": "extra_forbidden",
            "loc": ["body", "foo"],
            "msg": "Extra inputs are not permitted",
            "input": 1,
        }
    ]
    fake.reply(
        Reply.json(
            {
                "object": "error",
                "message": {"detail": detail},
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
            422,
        )
    )
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client_for(gw, "mistral").chat.completions.create(
            model=MISTRAL, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body == {
        "message": "foo: Extra inputs are not permitted",
        "type": "invalid_request_error",
        "param": "foo",
        "code": None,
    }

    fake.reply(Reply.json({"message": "Requests rate limit exceeded"}, 429, {"retry-after": "3"}))
    with pytest.raises(openai.RateLimitError) as e2:
        client_for(gw, "mistral").chat.completions.create(
            model=MISTRAL, messages=[{"role": "user", "content": "x"}]
        )
    assert e2.value.body["message"] == "Requests rate limit exceeded"
    assert e2.value.response.headers["retry-after"] == "3"
    assert my_record(gw)["error"]["status"] == 429


# ==================================================================== mistral, ollama format


def test_mistral_ollama_chat(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(fake_ollama.ollama_api(fake_ollama.Script(text="Bonjour.")))
    answer = client_for(gw, "mistral-ollama").chat.completions.create(
        model="mistral-tiny", messages=[{"role": "user", "content": "Say hello in French."}]
    )
    assert answer.choices[0].message.content == "Bonjour."
    sent = fake.last()
    assert (
        sent.path == "/api/chat"
        and sent.json()["model"] == "mistral-tiny"
        and sent.json()["stream"] is False
    )
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["meta"]["provider_name"] == "mistral"
    assert usage_of(rec)["source"] == "reported" and usage_of(rec)["prompt_tokens"] == 26


def test_mistral_ollama_stream(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(fake_ollama.ollama_api(fake_ollama.Script(text="Un deux trois.", chunk_size=6)))
    chunks = list(
        client_for(gw, "mistral-ollama").chat.completions.create(
            model="mistral-tiny",
            messages=[{"role": "user", "content": "Count in French."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Un deux trois."
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert fake.last().json()["stream"] is True
    assert my_record(gw)["ai"]["proxy"]["meta"]["request_mode"] == "stream"


# ==================================================================== more cells


def test_llama2_ollama_completions(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(fake_ollama.ollama_api(fake_ollama.Script(text="Because I said so.")))
    out = client_for(gw, "llama-ollama").completions.create(model=LLAMA, prompt="Why?")
    assert out.choices[0].text == "Because I said so."
    assert fake.last().path == "/api/generate"
    assert fake.last().json() == {"model": LLAMA, "prompt": "Why?", "stream": False}
    assert usage_of(my_record(gw))["source"] == "reported"


def test_llama2_ollama_tools_get_ollamas_own_400(gw: Gateway, fake: FakeUpstream) -> None:
    # Llama 2 has no tool calling on Ollama: Ollama says so, and the client hears it
    fake.reply(
        fake_ollama.ollama_api(fake_ollama.Script(tool_calls=[("get_weather", {"city": "Paris"})]))
    )
    with pytest.raises(openai.BadRequestError) as e:
        client_for(gw, "llama-ollama").chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER]
        )
    assert (
        e.value.body["message"] == "registry.ollama.ai/library/llama2:latest does not support tools"
    )
    assert my_record(gw)["error"]["source"] == "upstream"


def test_llama2_openai_tools(gw: Gateway, fake: FakeUpstream) -> None:
    answer = chat_completion("", model=LLAMA)
    answer["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "chatcmpl-tool-1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    answer["choices"][0]["finish_reason"] = "tool_calls"
    fake.reply(Reply.json(answer))
    out = client_for(gw, "llama-openai").chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER]
    )
    assert out.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert fake.last().json()["tools"] == [WEATHER]
    assert my_record(gw)["ai"]["proxy"]["meta"]["finish_reason"] == "tool_calls"


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_mistral_image(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(mistral_api(MISTRAL_KEY, MistralScript(text="A single pixel.")))
    parts = [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
        },
    ]
    out = client_for(gw, "mistral").chat.completions.create(
        model=MISTRAL, messages=[{"role": "user", "content": parts}]
    )
    assert out.choices[0].message.content == "A single pixel."
    assert fake.last().json()["messages"] == [{"role": "user", "content": parts}]
