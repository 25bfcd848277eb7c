"""providers/llama2.py: the raw (TGI) format, and the ollama and openai formats it delegates."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from addons.config import ConfigError
from providers import sse
from providers.base import CallSpec, ProviderError, RouteType
from providers.llama2 import PROVIDER, TGIStream, completion_prompt, llama2_prompt
from providers.ollama import OllamaStream
from providers.openai import OpenAIStream
from tests.fakes import tgi
from tests.unit.conftest import (
    byte_by_byte,
    every_split,
    fixture,
    fixture_json,
    load,
    route_named,
    spec,
)

CHAT, COMPLETIONS, EMBEDDINGS = RouteType.CHAT, RouteType.COMPLETIONS, RouteType.EMBEDDINGS
MODEL = "llama2"
TGI_URL = "http://127.0.0.1:8080/generate"


def lspec(
    body: dict[str, Any] | None = None,
    route_type: RouteType = CHAT,
    *,
    fmt: str = "raw",
    upstream_url: str = TGI_URL,
    stream: bool = False,
    wants_usage: bool = False,
    **options: Any,
) -> CallSpec:
    return spec(
        route_type,
        body,
        model=MODEL,
        stream=stream,
        wants_usage=wants_usage,
        llama2_format=fmt,
        upstream_url=upstream_url,
        **options,
    )


def sent(body: dict[str, Any], route_type: RouteType = CHAT, **kw: Any) -> dict[str, Any]:
    return json.loads(PROVIDER.build_request(lspec(body, route_type, **kw)).body)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def system(content: Any) -> dict[str, Any]:
    return {"role": "system", "content": content}


HI = [user("hi")]


# ------------------------------------------------------------------ identity and config


def test_provider_identity() -> None:
    assert PROVIDER.name == "llama2"
    assert PROVIDER.route_types == {CHAT, COMPLETIONS}
    assert PROVIDER.native_format is None


def route_yaml(options: str, route_type: str = "llm/v1/chat") -> str:
    return f"""
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: llama
        paths: ["/llama"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              model: {{provider: llama2, name: {MODEL}, options: {options}}}
"""


@pytest.mark.parametrize(
    "options, missing",
    [
        ("{llama2_format: raw}", "model.options.upstream_url"),
        ('{upstream_url: "http://127.0.0.1:8080"}', "model.options.llama2_format"),
        ("{}", "model.options.upstream_url"),
    ],
)
def test_config_needs_upstream_url_and_format(options: str, missing: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(route_yaml(options))
    assert missing in str(e.value)
    assert "test.yaml" in str(e.value)


@pytest.mark.parametrize("fmt", ["raw", "ollama", "openai"])
@pytest.mark.parametrize("route_type", ["llm/v1/chat", "llm/v1/completions"])
def test_config_loads(fmt: str, route_type: str) -> None:
    cfg = load(route_yaml(f'{{llama2_format: {fmt}, upstream_url: "http://h:1"}}', route_type))
    assert route_named(cfg, "llama").plugin("ai-proxy").model.options.llama2_format == fmt


def test_config_for_embeddings_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        load(route_yaml('{llama2_format: raw, upstream_url: "http://h:1"}', "llm/v1/embeddings"))
    assert "cannot serve route_type 'llm/v1/embeddings'" in str(e.value)


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "fmt, route_type, upstream_url, stream, expected",
    [
        ("raw", CHAT, "http://127.0.0.1:8080/generate", False, "http://127.0.0.1:8080/generate"),
        # TGI streams on its own route
        (
            "raw",
            CHAT,
            "http://127.0.0.1:8080/generate",
            True,
            "http://127.0.0.1:8080/generate_stream",
        ),
        (
            "raw",
            COMPLETIONS,
            "http://127.0.0.1:8080/generate/",
            True,
            "http://127.0.0.1:8080/generate_stream",
        ),
        # the compat route (and the Inference API) stream with "stream": true
        ("raw", CHAT, "http://127.0.0.1:8080/", True, "http://127.0.0.1:8080/"),
        (
            "raw",
            CHAT,
            "https://api-inference.example/models/meta-llama/Llama-2-7b-chat-hf",
            True,
            "https://api-inference.example/models/meta-llama/Llama-2-7b-chat-hf",
        ),
        ("ollama", CHAT, "http://127.0.0.1:11434", False, "http://127.0.0.1:11434/api/chat"),
        (
            "ollama",
            COMPLETIONS,
            "http://127.0.0.1:11434/",
            True,
            "http://127.0.0.1:11434/api/generate",
        ),
        ("ollama", CHAT, "http://gw/ollama/api/chat", False, "http://gw/ollama/api/chat"),
        (
            "openai",
            CHAT,
            "http://127.0.0.1:8000",
            False,
            "http://127.0.0.1:8000/v1/chat/completions",
        ),
        (
            "openai",
            COMPLETIONS,
            "http://127.0.0.1:8000",
            True,
            "http://127.0.0.1:8000/v1/completions",
        ),
        ("openai", CHAT, "http://vllm/custom/chat", False, "http://vllm/custom/chat"),
    ],
)
def test_urls(
    fmt: str, route_type: RouteType, upstream_url: str, stream: bool, expected: str
) -> None:
    req = PROVIDER.build_request(
        lspec(
            {"messages": HI, "prompt": "hi"},
            route_type,
            fmt=fmt,
            upstream_url=upstream_url,
            stream=stream,
        )
    )
    assert (req.method, req.url, req.stream) == ("POST", expected, stream)


# ------------------------------------------------------------------ the Llama 2 prompt

# (id, OpenAI messages, the prompt expected)
PROMPTS: list[tuple[str, list[dict[str, Any]], str]] = [
    ("user-only", [user("Hi there ")], "<s>[INST] Hi there [/INST]"),
    (
        "system-and-user",
        [system("Be brief."), user("What is 1 + 2?")],
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 1 + 2? [/INST]",
    ),
    (
        "multi-turn",
        [system("S"), user("U1"), assistant("A1"), user("U2")],
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    ),
    (
        "every-system-message-in-the-block",
        [
            system("One."),
            user("U1"),
            {"role": "developer", "content": "Two."},
            assistant("A1"),
            user("U2"),
        ],
        "<s>[INST] <<SYS>>\nOne.\n\nTwo.\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    ),
    (
        "same-role-joined",
        [user("Part one."), user("Part two.")],
        "<s>[INST] Part one.\n\nPart two. [/INST]",
    ),
    (
        "last-assistant-left-open",
        [user("Count to three."), assistant("One, two,")],
        "<s>[INST] Count to three. [/INST] One, two,",
    ),
    (
        "text-parts",
        [user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])],
        "<s>[INST] a\nb [/INST]",
    ),
]


@pytest.mark.parametrize(
    "messages, expected", [p[1:] for p in PROMPTS], ids=[p[0] for p in PROMPTS]
)
def test_llama2_prompt(messages: list[dict[str, Any]], expected: str) -> None:
    assert llama2_prompt(messages) == expected


def test_kong_unit_request_prompt_keeps_every_turn() -> None:
    messages = fixture_json("unit/requests/llm-v1-chat.json")["messages"]
    prompt = llama2_prompt(messages)
    kong = fixture_json("unit/expected-requests/llama2/raw/llm-v1-chat.json")["inputs"]
    # Kong drops the assistant answers (it takes a later "system" message as the answer)
    # and puts the system prompt on one line; the template keeps the conversation whole
    assert "The sum of 1 + 2 is 3." not in kong
    assert prompt == (
        "<s>[INST] <<SYS>>\nYou are a mathematician.\n<</SYS>>\n\nWhat is 1 + 2? [/INST] "
        + messages[2]["content"]
        + " </s><s>[INST] Multiply that by 2 [/INST] "
        + messages[4]["content"]
        + " </s><s>[INST] Why can't you divide by zero? [/INST]"
    )


def test_kong_fixture_chat_with_a_later_system_message() -> None:
    messages = fixture_json("llama2/raw/requests/good-chat.json")["messages"]
    # Kong reads the second system message as the model's answer; it is an instruction
    assert llama2_prompt(messages) == (
        "<s>[INST] <<SYS>>\nYou are a video game knowledgebase.\n\n"
        "Missingno. is a weird character from a popular game.\n<</SYS>>\n\n"
        "What is Missingno.?\n\nWhy is it popular? [/INST]"
    )


def test_kong_fixture_completions_request() -> None:
    """Kong's raw completions request: the prompt wrapped as one instruction (without
    Kong's own system prompt and its malformed `<</SYS>` tag), TGI's parameters."""
    body = fixture_json("llama2/raw/requests/good-completions.json")
    out = sent(body, COMPLETIONS)
    assert out == {
        "inputs": "<s>[INST] What is Missingno.? [/INST]",
        "parameters": {"return_full_text": False, "details": True},
    }


@pytest.mark.parametrize(
    "prompt, expected",
    [
        (
            "Explain why you can't divide by zero?",
            "<s>[INST] Explain why you can't divide by zero? [/INST]",
        ),
        (["What is Missingno.?"], "<s>[INST] What is Missingno.? [/INST]"),
        # a prompt that already holds the template is sent as written
        (
            "<s>[INST] <<SYS>>\nX\n<</SYS>>\n\nY [/INST]",
            "<s>[INST] <<SYS>>\nX\n<</SYS>>\n\nY [/INST]",
        ),
    ],
)
def test_completion_prompt(prompt: Any, expected: str) -> None:
    # Kong wraps with a system prompt of its own and a malformed closing <<SYS>> tag
    assert completion_prompt(prompt) == expected


# ------------------------------------------------------------------ raw requests


def test_kong_expected_raw_requests_parameters() -> None:
    # Kong's test sets options max_tokens 512 and temperature 0.5 (and top_p 1, top_k 40
    # for chat: TGI refuses top_p 1, so the route's top_p 1 is not sent)
    for route_type, req, expected in (
        (
            CHAT,
            "unit/requests/llm-v1-chat.json",
            "unit/expected-requests/llama2/raw/llm-v1-chat.json",
        ),
        (
            COMPLETIONS,
            "unit/requests/llm-v1-completions.json",
            "unit/expected-requests/llama2/raw/llm-v1-completions.json",
        ),
    ):
        kong = fixture_json(expected)["parameters"]
        body = fixture_json(req) | {"max_tokens": 512, "temperature": 0.5, "top_p": 1.0}
        if "top_k" in kong:
            body["top_k"] = kong["top_k"]
        out = sent(body, route_type)
        assert set(out) == {"inputs", "parameters"}
        params = out["parameters"]
        assert params["max_new_tokens"] == kong["max_new_tokens"] == 512
        assert params["temperature"] == kong["temperature"] == 0.5
        assert params.get("top_k") == kong.get("top_k")
        assert "top_p" not in params and "stream" not in params
        assert params["return_full_text"] is False and params["details"] is True
        assert tgi.check(out) is None  # TGI takes it
        if "top_p" in kong:  # what Kong sends (its "stream" parameter aside) TGI refuses
            params = {k: v for k, v in kong.items() if k != "stream"}
            kong_request = fixture_json(expected) | {"parameters": params}
            assert tgi.check(kong_request) == "`top_p` must be > 0.0 and < 1.0"


@pytest.mark.parametrize(
    "body, expected",
    [
        ({}, {}),
        ({"max_completion_tokens": 9, "max_tokens": 99}, {"max_new_tokens": 9}),
        ({"temperature": 0}, {"do_sample": False}),  # TGI wants a strictly positive temperature
        (
            {"temperature": 0.7, "top_p": 0.9, "top_k": 5},
            {"temperature": 0.7, "top_p": 0.9, "top_k": 5},
        ),
        ({"top_p": 1, "top_k": 0}, {}),  # no truncation: nothing to send
        ({"stop": "\n"}, {"stop": ["\n"]}),
        (
            {"stop": ["a", "b"], "seed": 42, "frequency_penalty": 0.5},
            {"stop": ["a", "b"], "seed": 42, "frequency_penalty": 0.5},
        ),
        ({"presence_penalty": 1, "user": "u", "n": 1, "logprobs": True}, {}),
    ],
)
def test_tgi_parameters(body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = sent({"messages": HI, **body})
    assert out["parameters"] == {**expected, "return_full_text": False, "details": True}
    assert tgi.check(out) is None


@pytest.mark.parametrize("route_type", [CHAT, COMPLETIONS])
def test_stream_request_asks_for_a_stream(route_type: RouteType) -> None:
    out = sent({"messages": HI, "prompt": "x"}, route_type, stream=True, upstream_url="http://h/")
    assert out["stream"] is True and tgi.check(out) is None


@pytest.mark.parametrize(
    "body, route_type, message",
    [
        ({"messages": HI, "n": 2}, CHAT, "'n' must be 1"),
        (
            {"messages": [user("x"), {"role": "tool", "tool_call_id": "c", "content": "r"}]},
            CHAT,
            "no tool calling",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "c", "function": {"name": "f"}}],
                    }
                ]
            },
            CHAT,
            "no tool calling",
        ),
        (
            {
                "messages": [
                    user(
                        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
                    )
                ]
            },
            CHAT,
            "text only",
        ),
        ({"messages": [assistant("Hello"), user("hi")]}, CHAT, "must start with a user message"),
        ({"messages": [system("only a system prompt")]}, CHAT, "must start with a user message"),
        ({"messages": [{"role": "function", "content": "x"}]}, CHAT, "role 'function'"),
        ({"prompt": ["a", "b"]}, COMPLETIONS, "one text 'prompt'"),
    ],
)
def test_raw_requests_the_template_cannot_hold_are_400(
    body: dict[str, Any], route_type: RouteType, message: str
) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.build_request(lspec(body, route_type))
    assert e.value.status == 400 and message in e.value.message


# ------------------------------------------------------------------ raw answers


def raw_reply(
    body: Any,
    route_type: RouteType = CHAT,
    headers: dict[str, str] | None = None,
    request: Any = None,
):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    s = lspec(
        request
        or {"messages": fixture_json("unit/requests/llm-v1-chat.json")["messages"], "prompt": "x"},
        route_type,
    )
    return PROVIDER.parse_response(s, 200, headers or {}, raw)


@pytest.mark.parametrize("route_type", [CHAT, COMPLETIONS])
def test_kong_real_raw_responses(route_type: RouteType) -> None:
    name = "llm-v1-chat" if route_type is CHAT else "llm-v1-completions"
    r = raw_reply(fixture(f"unit/real-responses/llama2/raw/{name}.json").read_bytes(), route_type)
    want = fixture_json(f"unit/expected-responses/llama2/raw/{name}.json")
    assert r.data["object"] == want["object"]
    if route_type is CHAT:
        assert r.data["choices"][0]["message"] == want["choices"][0]["message"]
    else:
        assert r.data["choices"][0]["text"] == want["choices"][0]["text"]
    # Kong gives no finish reason; TGI sent no details: the answer ended by itself
    assert r.data["choices"][0]["finish_reason"] == "stop"
    assert r.usage is None and "usage" not in r.data  # nothing reported: the gateway estimates
    assert r.model == MODEL


@pytest.mark.parametrize(
    "path, text",
    [
        ("llama2/raw/responses/good.json", "Is a well known font."),
        ("llama2/request-transformer/response-in-json.json", None),
    ],
)
def test_kong_raw_fixtures(path: str, text: str | None) -> None:
    content = raw_reply(fixture(path).read_bytes()).data["choices"][0]["message"]["content"]
    if text is None:
        assert json.loads(content)["persons"][1]["age"] == 84
    else:
        assert content == text


def test_tgi_answer_with_details_and_usage_headers() -> None:
    data = [
        {
            "generated_text": " Paris is the capital.",
            "details": {
                "finish_reason": "length",
                "generated_tokens": 6,
                "seed": None,
                "prefill": [],
                "tokens": [],
            },
        }
    ]
    r = raw_reply(data, headers={"X-Prompt-Tokens": "37", "x-generated-tokens": "6"})
    assert r.data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital."},
            "finish_reason": "length",
        }
    ]
    assert r.data["usage"] == {"prompt_tokens": 37, "completion_tokens": 6, "total_tokens": 43}
    assert r.usage is not None and not r.usage.estimated


@pytest.mark.parametrize(
    "reason, finish", [("eos_token", "stop"), ("stop_sequence", "stop"), ("length", "length")]
)
def test_tgi_finish_reasons(reason: str, finish: str) -> None:
    r = raw_reply(
        {"generated_text": "x", "details": {"finish_reason": reason, "generated_tokens": 1}}
    )
    assert r.data["choices"][0]["finish_reason"] == finish


def test_only_generated_tokens_known_estimates_the_prompt() -> None:
    r = raw_reply(
        {"generated_text": "x", "details": {"finish_reason": "eos_token", "generated_tokens": 4}}
    )
    assert r.usage is not None and r.usage.estimated and r.usage.completion_tokens == 4
    assert r.usage.prompt_tokens > 0


def test_echoed_prompt_is_removed() -> None:
    messages = [system("S"), user("Q")]
    prompt = llama2_prompt(messages)
    r = raw_reply(
        {"generated_text": prompt + "\n\nThe answer [/INST] uses brackets."},
        request={"messages": messages},
    )
    # the exact prompt goes; the answer's own text is kept whole
    assert r.data["choices"][0]["message"]["content"] == "The answer [/INST] uses brackets."


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>", "not JSON"),
        ({"data": [{"generated_text": "a"}, {"generated_text": "b"}]}, "expected one generation"),
        ({"outputs": "x"}, "has no 'generated_text'"),
        ({"error": "Model is overloaded"}, "llama2: Model is overloaded"),
    ],
)
def test_untranslatable_raw_answers_are_502(body: Any, message: str) -> None:
    with pytest.raises(ProviderError) as e:
        raw_reply(body)
    assert e.value.status == 502 and message in e.value.message


@pytest.mark.parametrize(
    "status, body, kind, message",
    [
        (
            422,
            tgi.validation_error("`top_p` must be > 0.0 and < 1.0").body,
            "invalid_request_error",
            "`top_p` must be",
        ),
        (
            424,
            b'{"error":"Request failed during generation","error_type":"generation"}',
            "invalid_request_error",
            "Request failed during generation",
        ),
        (
            429,
            b'{"error":"Model is overloaded","error_type":"overloaded"}',
            "rate_limit_error",
            "Model is overloaded",
        ),
        (
            400,
            fixture("llama2/raw/responses/bad_request.json").read_bytes(),
            "invalid_request_error",
            "some error",
        ),
        (
            401,
            fixture("llama2/raw/responses/unauthorized.json").read_bytes(),
            "authentication_error",
            "Model requires a Pro subscription.",
        ),
        (
            500,
            b'{"error":{"message":"boom","type":"server_error","code":"x"}}',
            "server_error",
            "boom",
        ),
    ],
)
def test_errors_keep_status_and_message(status: int, body: bytes, kind: str, message: str) -> None:
    err = PROVIDER.parse_error(status, {}, body)
    assert (err.status, err.type) == (status, kind)
    assert message in err.message


# ------------------------------------------------------------------ raw streams


def tgi_event(
    n: int, text: str, special: bool = False, final: dict[str, Any] | None = None
) -> bytes:
    event: dict[str, Any] = {
        "index": n,
        "token": {"id": 100 + n, "text": text, "logprob": -0.21, "special": special},
        "generated_text": None,
        "details": None,
    }
    if final is not None:
        event.update(final)
    return b"data:" + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


RECORDED = b"".join(
    [
        tgi_event(1, " "),
        tgi_event(2, " You"),
        tgi_event(3, " cannot"),
        tgi_event(4, " divide"),
        tgi_event(5, " by zero."),
        tgi_event(
            6,
            "</s>",
            special=True,
            final={
                "generated_text": "  You cannot divide by zero.",
                "details": {
                    "finish_reason": "eos_token",
                    "generated_tokens": 6,
                    "seed": None,
                    "input_length": 57,
                },
            },
        ),
    ]
)
RECORDED_LENGTH = tgi_event(1, "Once") + tgi_event(
    2,
    " upon",
    final={
        "generated_text": "Once upon",
        "details": {"finish_reason": "length", "generated_tokens": 2, "seed": 1, "input_length": 5},
    },
)
RECORDED_NO_DETAILS = tgi_event(1, "Hi") + tgi_event(
    2, "</s>", special=True, final={"generated_text": "Hi"}
)
STREAMS = {
    "eos": RECORDED,
    "length": RECORDED_LENGTH,
    "no-details": RECORDED_NO_DETAILS,
    "crlf": RECORDED.replace(b"\n", b"\r\n"),
}


def translate(
    chunks: list[bytes],
    route_type: RouteType = CHAT,
    *,
    wants_usage: bool = False,
    error: ProviderError | None = None,
) -> tuple[bytes, TGIStream]:
    t = PROVIDER.stream_translator(
        lspec({"messages": HI, "prompt": "x"}, route_type, stream=True, wants_usage=wants_usage)
    )
    assert isinstance(t, TGIStream)
    t.id, t.created = "chatcmpl-fixed", 1700000000
    out: list[bytes] = []
    for c in chunks:
        out += t.feed(c)
    out += t.finish(error)
    return b"".join(out), t


def events(out: bytes) -> list[Any]:
    parts = out.split(b"\n\n")
    assert parts[-1] == b""
    evs = []
    for part in parts[:-1]:
        assert part.startswith(b"data: "), part
        data = part[6:]
        evs.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    assert evs.count("[DONE]") == 1 and evs[-1] == "[DONE]"
    return evs


@pytest.mark.parametrize("wants_usage", [False, True])
def test_stream_chunks(wants_usage: bool) -> None:
    out, t = translate([RECORDED], wants_usage=wants_usage)
    evs = events(out)[:-1]
    assert {(c["id"], c["object"], c["model"]) for c in evs} == {
        ("chatcmpl-fixed", "chat.completion.chunk", MODEL)
    }
    assert [c["choices"] for c in evs[:6]] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        # the whitespace before the first word is dropped, as in a whole answer
        [{"index": 0, "delta": {"content": "You"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " cannot"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " divide"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " by zero."}, "finish_reason": None}],
        # the special </s> token is no text
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    ]
    if wants_usage:
        assert evs[6]["choices"] == []
        assert evs[6]["usage"] == {"prompt_tokens": 57, "completion_tokens": 6, "total_tokens": 63}
    assert len(evs) == (7 if wants_usage else 6)
    assert t.error is None and t.usage is not None and not t.usage.estimated
    assert t.assembled()["choices"][0]["message"]["content"] == "You cannot divide by zero."


def test_completion_stream_chunks() -> None:
    out, t = translate([RECORDED_LENGTH], COMPLETIONS, wants_usage=True)
    evs = events(out)[:-1]
    assert [c["choices"] for c in evs] == [
        [{"index": 0, "text": "Once", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": " upon", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert all(c["object"] == "text_completion" for c in evs)
    assert t.assembled()["choices"][0]["text"] == "Once upon"


def test_stream_without_details_has_no_usage() -> None:
    _, t = translate([RECORDED_NO_DETAILS])
    assert t.error is None and t.usage is None and t.finish_reason == "stop"


@pytest.mark.parametrize("wants_usage", [False, True], ids=["no-usage", "usage"])
@pytest.mark.parametrize("name", STREAMS.keys())
def test_every_split_gives_the_same_bytes_and_answer(name: str, wants_usage: bool) -> None:
    raw = STREAMS[name]
    whole, t = translate([raw], wants_usage=wants_usage)
    answer = t.assembled()
    assert t.error is None
    for chunks in every_split(raw):
        out, t2 = translate(chunks, wants_usage=wants_usage)
        assert out == whole, f"split at byte {len(chunks[0])}"
        assert t2.assembled() == answer and t2.usage == t.usage
    out, t3 = translate(byte_by_byte(raw), wants_usage=wants_usage)
    assert out == whole and t3.assembled() == answer


def test_fake_tgi_stream_translates() -> None:
    body = {"inputs": "<s>[INST] hi [/INST]", "parameters": {"details": True}, "stream": True}
    raw = b"".join(tgi.stream_events(body, tgi.Script(text=" Hello there.")))
    _, t = translate([raw], wants_usage=True)
    assert t.assembled()["choices"][0]["message"]["content"] == "Hello there."
    assert t.usage is not None and t.usage.prompt_tokens == 37


def test_error_event_mid_stream() -> None:
    err = b'data:{"error":"Request failed during generation: Server error: CUDA out of memory","error_type":"generation"}\n\n'
    out, t = translate([tgi_event(1, "You") + err])
    evs = events(out)
    assert "CUDA out of memory" in evs[-2]["error"]["message"]
    assert t.error is not None and t.error.status == 424
    assert t.assembled()["choices"][0]["message"]["content"] == "You"


def test_stream_without_its_last_event_is_an_error() -> None:
    out, t = translate([tgi_event(1, "You") + tgi_event(2, " cannot")])
    assert "before the answer was complete" in events(out)[-2]["error"]["message"]
    assert t.error is not None


def test_broken_off_stream_ends_with_the_error() -> None:
    err = ProviderError(502, "upstream connection lost")
    out, t = translate([RECORDED[: len(tgi_event(1, " ")) + 20]], error=err)
    evs = events(out)
    assert evs[-2]["error"]["message"] == "upstream connection lost" and t.error is err


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfe", b"data: [1,2]\n\n", b"data: {\n\n", b'data:{"token":7}\n\n']
)
def test_bad_upstream_data_never_raises(garbage: bytes) -> None:
    for raw in (garbage, RECORDED[:80] + garbage, garbage + RECORDED):
        for chunks in ([raw], byte_by_byte(raw)):
            out, _ = translate(chunks)
            events(out)


def test_random_corruptions_never_raise() -> None:
    rng = random.Random(5)
    for _ in range(200):
        raw = bytearray(RECORDED)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        cut = rng.randrange(len(raw) + 1)
        out, _ = translate([bytes(raw[:cut]), bytes(raw[cut:])], wants_usage=True)
        assert out.endswith(sse.DONE)


# ------------------------------------------------------------------ the ollama and openai formats


def test_ollama_format_delegates_to_the_ollama_translator() -> None:
    body = fixture_json("unit/requests/llm-v1-chat.json") | {"max_tokens": 512, "temperature": 0.5}
    req = PROVIDER.build_request(lspec(body, fmt="ollama", upstream_url="http://127.0.0.1:11434"))
    assert json.loads(req.body) == fixture_json(
        "unit/expected-requests/llama2/ollama/llm-v1-chat.json"
    )
    s = lspec(body, fmt="ollama", upstream_url="http://127.0.0.1:11434")
    r = PROVIDER.parse_response(
        s, 200, {}, fixture("unit/real-responses/llama2/ollama/llm-v1-chat.json").read_bytes()
    )
    assert (
        r.data["choices"]
        == fixture_json("unit/expected-responses/llama2/ollama/llm-v1-chat.json")["choices"]
    )
    assert r.usage is not None and r.usage.prompt_tokens == 26
    assert isinstance(
        PROVIDER.stream_translator(lspec(body, fmt="ollama", stream=True)), OllamaStream
    )
    with pytest.raises(ProviderError) as e:
        PROVIDER.parse_response(s, 200, {}, b"{}")
    assert e.value.message.startswith("llama2: ")  # the provider named is the route's


def test_ollama_format_completions_kong_expected_request() -> None:
    body = fixture_json("unit/requests/llm-v1-completions.json") | {
        "max_tokens": 512,
        "temperature": 0.5,
    }
    out = sent(body, COMPLETIONS, fmt="ollama", upstream_url="http://127.0.0.1:11434")
    assert out == fixture_json("unit/expected-requests/llama2/ollama/llm-v1-completions.json")


def test_openai_format_delegates_to_the_openai_adapter() -> None:
    body = {"messages": HI, "max_tokens": 20}
    req = PROVIDER.build_request(
        lspec(body, fmt="openai", upstream_url="http://vllm:8000", stream=True)
    )
    out = json.loads(req.body)
    assert out == {
        "messages": HI,
        "max_tokens": 20,
        "model": MODEL,
        "stream": True,
        "stream_options": {
            "include_usage": True
        },  # usage asked for, as for every OpenAI-compatible host
    }
    assert isinstance(
        PROVIDER.stream_translator(lspec(body, fmt="openai", stream=True)), OpenAIStream
    )
    answer = {
        "id": "c",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    r = PROVIDER.parse_response(lspec(body, fmt="openai"), 200, {}, json.dumps(answer).encode())
    assert r.usage is not None and r.usage.prompt_tokens == 3
    with pytest.raises(ProviderError) as e:
        PROVIDER.parse_response(lspec(body, fmt="openai"), 200, {}, b'{"id": "x"}')
    assert e.value.message == "llama2: the upstream answer has no 'choices'"


def test_openai_format_stream_cut_before_its_end_is_an_error() -> None:
    """A stream that ends with neither a finish reason nor [DONE] was cut: the client's
    stream ends with an error event (as for vllm), not a silent [DONE]."""
    spec = lspec({"messages": HI}, fmt="openai", upstream_url="http://vllm:8000", stream=True)
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    cut = b"".join(
        b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"
        for choice in (
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
            {"index": 0, "delta": {"content": "Because"}, "finish_reason": None},
        )
    )
    t = PROVIDER.stream_translator(spec)
    out = b"".join(t.feed(cut) + t.finish())
    assert t.error is not None and t.error.status == 502
    assert "ended before the answer was complete" in t.error.message
    events = [e for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert json.loads(events[-1][6:])["error"]["message"] == t.error.message
    assert out.endswith(b"data: [DONE]\n\n")

    whole = (
        cut
        + b"data: "
        + json.dumps(
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        ).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    t = PROVIDER.stream_translator(spec)
    t.feed(whole)
    t.finish()
    assert t.error is None and t.assembled()["choices"][0]["message"]["content"] == "Because"


def test_embeddings_are_not_built() -> None:
    with pytest.raises(ProviderError):
        PROVIDER.build_request(lspec({"input": "x"}, EMBEDDINGS, fmt="ollama"))
