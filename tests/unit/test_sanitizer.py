"""ai-sanitizer (addons/policies/sanitizer.py): its config errors, the request hook
(masking, blocking, errors), restoring buffered answers, and the stream filter fed the
same stream cut at every offset."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from mitmproxy import http

from addons.calls import Call
from addons.config import load_text
from addons.policies import sanitizer
from addons.policies._pii import Detector, Masker, Recovery
from addons.policies.sanitizer import CallState, Policy, StreamFilter
from addons.router import Router
from addons.state import Gateway
from providers import sse
from tests.policy_helpers import client_request, gateway_for, load_error, mock_chat_config

EMAIL = "jo.doe@example.com"
CARD = "4111 1111 1111 1111"
KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"

CONFIG = mock_chat_config(
    more_routes="""
- name: completions
  paths: ["/v1/completions"]
  plugins:
    - name: ai-proxy
      config: {route_type: llm/v1/completions, model: {provider: mock, name: mock-gpt}}
- name: embeddings
  paths: ["/v1/embeddings"]
  plugins:
    - name: ai-proxy
      config: {route_type: llm/v1/embeddings, model: {provider: mock, name: mock-emb}}
- name: anthropic
  paths: ["/v1/messages"]
  plugins:
    - name: ai-proxy
      config:
        route_type: llm/v1/chat
        llm_format: anthropic
        model: {provider: anthropic, name: claude-3-5-haiku-latest, options: {anthropic_version: "2023-06-01"}}
        auth: {header_name: x-api-key, header_value: test}
- name: raw
  paths: ["/raw"]
  plugins:
    - name: ai-proxy
      config: {route_type: preserve, model: {provider: openai}}
""",
    tail="""
plugins:
  - name: ai-sanitizer
    config: SANITIZER
""",
)


def config(sanitizer_config: str = "{}") -> str:
    return CONFIG.replace("SANITIZER", sanitizer_config)


def load(sanitizer_config: str = "{}") -> Any:
    return load_text(config(sanitizer_config))


def gateway(sanitizer_config: str = "{}") -> Gateway:
    return gateway_for(config(sanitizer_config))


def make_flow(body: Any, path: str = "/v1/chat/completions") -> http.HTTPFlow:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    return client_request("POST", path, headers=headers, body=raw, host="gw.example")


async def send(
    gw: Gateway, body: Any, path: str = "/v1/chat/completions"
) -> tuple[Policy, http.HTTPFlow, Call]:
    f = make_flow(body, path)
    Router(gw).requestheaders(f)
    policy = Policy(gw)
    await policy.request(f)
    call = gw.calls.get(f)
    assert call is not None
    return policy, f, call


def chat(*contents: Any, role: str = "user") -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": role, "content": c} for c in contents]}


def sent(f: http.HTTPFlow) -> dict[str, Any]:
    return json.loads(f.request.content or b"")


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("conf", "error"),
    [
        (
            '{custom_patterns: [{name: emp, regex: "EMP-(\\\\d+"}]}',
            "custom_patterns[0]: custom pattern 'emp': invalid regex 'EMP-(\\\\d+': missing )",
        ),
        ("{anonymize: [general]}", "anonymize 'general' needs a language model"),
        ("{anonymize: [email, passport]}", "anonymize 'passport' needs a language model"),
        ("{anonymize: [emails]}", "config.anonymize[0]: expected 'all'"),
        ("{anonymize: []}", "config.anonymize"),
        ("{anonymize: [custom]}", "anonymize names 'custom' but custom_patterns is empty"),
        (
            '{anonymize: [email], custom_patterns: [{name: emp, regex: "x"}]}',
            "custom_patterns are set but anonymize does not include 'custom'",
        ),
        ('{custom_patterns: [{name: "1x", regex: "x"}]}', "name '1x' must start with a letter"),
        ('{custom_patterns: [{name: a, regex: "x"}, {name: A, regex: "y"}]}', "must be unique: A"),
        ('{custom_patterns: [{name: a, regex: "x", score: 2}]}', "custom_patterns[0].score"),
        ("{redact_type: fake}", "config.redact_type: expected 'placeholder' or 'synthetic'"),
        ("{sanitization_mode: input}", "config.sanitization_mode"),
        ("{roles: [robot]}", "config.roles[0]"),
        ("{scan_everything: true}", "scan_everything"),
    ],
)
def test_bad_configs_name_the_field(conf: str, error: str) -> None:
    assert error in load_error(config(conf))


def test_kong_files_load() -> None:
    # Kong's own examples: an external service's settings are accepted (and unused)
    conf = load(
        "{anonymize: [email, phone, ssn, creditcard, custom], custom_patterns: "
        '[{name: aws_api_key, regex: "AKIA[0-9A-Z]{16}", score: 0.95}], host: localhost, '
        "port: 8080, scheme: http, timeout: 10000, keepalive_timeout: 60000, "
        "redact_type: placeholder, stop_on_error: true, recover_redacted: false}"
    )
    plugin = conf.global_plugins["ai-sanitizer"].config
    assert plugin.anonymize == ["email", "phone", "ssn", "creditcard", "custom"]
    assert not plugin.recover_redacted
    defaults = load().global_plugins["ai-sanitizer"].config
    assert defaults.anonymize == ["all_and_credentials"]
    assert defaults.recover_redacted and defaults.stop_on_error
    assert defaults.redact_type == "placeholder" and defaults.sanitization_mode == "INPUT"


def test_priority_runs_after_the_guard_and_before_ai_proxy() -> None:
    from addons import policies

    names = [m.NAME for m in policies.modules()]
    assert sanitizer.PRIORITY == 771 and sanitizer.CONSUMER_SCOPE
    if "ai-prompt-guard" in names:
        assert names.index("ai-prompt-guard") < names.index("ai-sanitizer")


# ------------------------------------------------------------------ requests


async def test_chat_request_is_masked_and_counted() -> None:
    gw = gateway()
    body = chat(
        f"I am {EMAIL}, card {CARD}",
        [
            {"type": "text", "text": f"again {EMAIL} and {KEY}"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        ],
    )
    body["messages"].append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": json.dumps({"to": EMAIL})},
                }
            ],
        }
    )
    _, f, call = await send(gw, body)
    assert f.response is None
    out = sent(f)
    assert out["messages"][0]["content"] == "I am <EMAIL_1>, card <CREDITCARD_1>"
    assert out["messages"][1]["content"][0]["text"] == "again <EMAIL_1> and <OPENAI_KEY_1>"
    assert out["messages"][1]["content"][1] == body["messages"][1]["content"][1]
    assert json.loads(out["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "to": "<EMAIL_1>"
    }
    assert call.body == out  # what ai-proxy reads next
    assert call.context["sanitizer"] == {"creditcard": 1, "email": 3, "openai_key": 1}
    raw = f.request.content or b""
    assert EMAIL.encode() not in raw and b"4111" not in raw and KEY.encode() not in raw


async def test_nothing_found_leaves_the_body_untouched() -> None:
    gw = gateway()
    original = b'{"model":"mock-gpt","messages":[{"role":"user","content":"hello there"}]}'
    _, f, call = await send(gw, original)
    assert f.request.content == original
    assert call.context["sanitizer"] == {}


@pytest.mark.parametrize(
    ("path", "body", "expect"),
    [
        ("/v1/completions", {"prompt": f"mail {EMAIL}"}, {"prompt": "mail <EMAIL_1>"}),
        ("/v1/completions", {"prompt": [EMAIL, "x"]}, {"prompt": ["<EMAIL_1>", "x"]}),
        ("/v1/embeddings", {"input": f"{EMAIL} {CARD}"}, {"input": "<EMAIL_1> <CREDITCARD_1>"}),
        ("/v1/embeddings", {"input": ["a", EMAIL]}, {"input": ["a", "<EMAIL_1>"]}),
    ],
)
async def test_completions_and_embeddings(
    path: str, body: dict[str, Any], expect: dict[str, Any]
) -> None:
    _, f, _ = await send(gateway(), {"model": "m", **body}, path)
    assert sent(f) == {"model": "m", **expect}


async def test_native_anthropic_request_is_masked() -> None:
    body = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 100,
        "system": f"the operator is {EMAIL}",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"card {CARD}"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo4111111111111111",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "mail", "input": {"to": EMAIL}}
                ],
            },
        ],
    }
    _, f, call = await send(gateway(), body, "/v1/messages")
    out = sent(f)
    assert out["system"] == "the operator is <EMAIL_1>"
    assert out["messages"][0]["content"][0]["text"] == "card <CREDITCARD_1>"
    assert out["messages"][0]["content"][1] == body["messages"][0]["content"][1]  # image data
    assert out["messages"][1]["content"][0]["input"] == {"to": "<EMAIL_1>"}
    assert out["model"] == body["model"]
    assert call.context["sanitizer"] == {"creditcard": 1, "email": 2}


async def test_history_and_roles() -> None:
    body = chat(f"old {EMAIL}", f"new {CARD}")
    _, f, _ = await send(gateway("{allow_all_conversation_history: false}"), body)
    assert [m["content"] for m in sent(f)["messages"]] == [f"old {EMAIL}", "new <CREDITCARD_1>"]
    body = {
        "messages": [
            {"role": "system", "content": f"support: {EMAIL}"},
            {"role": "user", "content": f"me: {EMAIL}"},
        ]
    }
    _, f, _ = await send(gateway("{roles: [user, tool]}"), body)
    assert [m["content"] for m in sent(f)["messages"]] == [f"support: {EMAIL}", "me: <EMAIL_1>"]


async def test_block_if_detected_names_kinds_never_values() -> None:
    gw = gateway("{block_if_detected: true}")
    _, f, call = await send(gw, chat(f"{EMAIL} {CARD} {EMAIL}"))
    assert f.response is not None and f.response.status_code == 400
    err = json.loads(f.response.content or b"")["error"]
    assert err["code"] == "sensitive_data_detected"
    assert err["type"] == "invalid_request_error"
    assert "creditcard, email" in err["message"]
    assert EMAIL not in err["message"] and "4111" not in err["message"]
    assert call.context["sanitizer"] == {"creditcard": 1, "email": 2}
    assert call.error is not None and call.error_source == "gateway"
    # a clean request passes
    _, f, _ = await send(gw, chat("hello"))
    assert f.response is None


async def test_bad_json_is_a_400_on_openai_routes_only() -> None:
    _, f, _ = await send(gateway(), b"{not json")
    assert f.response is not None and f.response.status_code == 400
    _, f, _ = await send(gateway(), b"\x00binary upload", "/raw")
    assert f.response is None  # a preserve route's non-JSON body is not ours to read


async def test_stop_on_error() -> None:
    conf = '{custom_patterns: [{name: slow, regex: "(?:x+x+)+y"}], regex_timeout_ms: 20, stop_on_error: SOE}'
    body = chat("x" * 5000 + f" {EMAIL}")
    _, f, call = await send(gateway(conf.replace("SOE", "true")), body)
    assert f.response is not None and f.response.status_code == 500
    err = json.loads(f.response.content or b"")["error"]
    assert err["code"] == "sanitizer_error" and "'slow' ran out of time" in err["message"]
    _, f, call = await send(gateway(conf.replace("SOE", "false")), body)
    assert f.response is None
    assert "ran out of time" in call.context["sanitizer_error"]


async def test_large_bodies_are_scanned_off_the_loop() -> None:
    big = ("lorem ipsum " * 4000) + EMAIL
    assert len(big) > sanitizer.THREAD_ABOVE
    _, f, call = await send(gateway(), chat(big))
    assert sent(f)["messages"][0]["content"].endswith("<EMAIL_1>")
    assert call.context["sanitizer"] == {"email": 1}


async def test_synthetic_request() -> None:
    _, f, call = await send(gateway("{redact_type: synthetic}"), chat(f"I am {EMAIL}, card {CARD}"))
    text = sent(f)["messages"][0]["content"]
    assert EMAIL not in text and CARD not in text and "<" not in text
    assert call.context["sanitizer"] == {"creditcard": 1, "email": 1}


# ------------------------------------------------------------------ answers


def answer(content: str, args: str | None = None) -> http.Response:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if args is not None:
        message["tool_calls"] = [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}
        ]
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    return http.Response.make(200, json.dumps(body).encode(), {"content-type": "application/json"})


def finish_answer(policy: Policy, f: http.HTTPFlow) -> None:
    """The answer's hooks as the chain runs them: `response` in order (the answer's own
    findings masked), `response_late` after every plugin (the originals back)."""
    policy.response(f)
    policy.response_late(f)


def content_of(resp: http.Response) -> dict[str, Any]:
    return json.loads(resp.content or b"")["choices"][0]["message"]


async def test_buffered_answer_gets_the_originals_and_state_is_dropped() -> None:
    gw = gateway()
    policy, f, call = await send(gw, chat(f"I am {EMAIL}, card {CARD}"))
    f.response = answer(
        "Hello <EMAIL_1>, your card <CREDITCARD_1>.", json.dumps({"to": "<EMAIL_1>"})
    )
    finish_answer(policy, f)
    message = content_of(f.response)
    assert message["content"] == f"Hello {EMAIL}, your card {CARD}."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"to": EMAIL}
    assert f.response.headers["content-length"] == str(len(f.response.content or b""))
    assert policy._calls == {}
    for finish in call.on_finish:  # the recorder runs these with the record
        finish(call, None)
    assert policy._calls == {}


async def test_recover_redacted_false_keeps_placeholders() -> None:
    policy, f, _ = await send(gateway("{recover_redacted: false}"), chat(f"I am {EMAIL}"))
    assert policy._calls == {}  # nothing kept for the call
    f.response = answer("Hello <EMAIL_1>")
    finish_answer(policy, f)
    assert content_of(f.response)["content"] == "Hello <EMAIL_1>"


async def test_on_finish_forgets_the_originals() -> None:
    policy, f, call = await send(gateway(), chat(f"I am {EMAIL}"))
    state = policy._calls[f.id]
    assert state.recovery is not None and EMAIL in state.recovery.originals.values()
    for finish in call.on_finish:
        finish(call, None)
    assert policy._calls == {} and state.recovery is None


async def test_output_mode_masks_the_answer_and_counts() -> None:
    policy, f, call = await send(gateway("{sanitization_mode: BOTH}"), chat(f"I am {EMAIL}"))
    f.response = answer("Hi <EMAIL_1>, the admin is root@corp.example.org")
    finish_answer(policy, f)
    assert content_of(f.response)["content"] == f"Hi {EMAIL}, the admin is <EMAIL_2>"
    assert call.context["sanitizer"] == {"email": 1}
    assert call.context["sanitizer_output"] == {"email": 1}
    # OUTPUT alone leaves the prompt as it is
    policy, f, call = await send(gateway("{sanitization_mode: OUTPUT}"), chat(f"I am {EMAIL}"))
    assert sent(f)["messages"][0]["content"] == f"I am {EMAIL}"
    assert "sanitizer" not in call.context
    f.response = answer(f"You are {EMAIL}")
    finish_answer(policy, f)
    assert content_of(f.response)["content"] == "You are <EMAIL_1>"


async def test_stream_filter_is_installed_for_event_streams() -> None:
    policy, f, call = await send(gateway(), chat(f"I am {EMAIL}"))
    call.relay_token = "t"
    f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    policy.responseheaders_late(f)
    assert len(call.stream_filters) == 1
    out = call.stream_filters[0]([sse.encode(delta("<EMAIL_1>")), sse.DONE], True)
    assert visible(b"".join(out)) == EMAIL


# ------------------------------------------------------------------ streams


def delta(
    content: str | None = None, index: int = 0, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    d: dict[str, Any] = dict(extra)
    if content is not None:
        d["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt",
        "choices": [{"index": index, "delta": d, "finish_reason": finish}],
    }


def visible(stream: bytes) -> str:
    """What an OpenAI client shows: the deltas' content and tool call arguments."""
    text = ""
    for ev in sse.SSEDecoder().feed(stream + b"\n\n"):
        if ev.data == "[DONE]" or not ev.data.startswith("{"):
            continue
        for choice in json.loads(ev.data).get("choices") or ():
            d = choice.get("delta") or {}
            text += d.get("content") or choice.get("text") or ""
            for tc in d.get("tool_calls") or ():
                text += (tc.get("function") or {}).get("arguments") or ""
    return text


def state(*values: str, synthetic: bool = False) -> tuple[CallState, str]:
    """A call's state after masking `values`, and the masked text."""
    m = Masker(
        Detector(["all_and_credentials"]),
        "synthetic" if synthetic else "placeholder",
        rng=random.Random(5),
    )
    masked = m.mask(" ".join(values))
    return CallState(Recovery(m.originals), None), masked


def run(st: CallState, chunks: list[bytes], ndjson: bool = False) -> bytes:
    f = StreamFilter(st, ndjson=ndjson)
    out: list[bytes] = []
    for c in chunks:
        got = f([c], False)
        assert all(isinstance(b, bytes) and b for b in got)  # never b"": it ends a chunked body
        out += got
    out += f([], True)
    return b"".join(out)


def openai_stream(pieces: list[str]) -> bytes:
    events = [sse.encode(delta("", role="assistant"))]
    events += [sse.encode(delta(p)) for p in pieces]
    events += [sse.encode(delta(finish="stop")), sse.DONE]
    return b"".join(events)


PIECES = [
    "Hello <EM",
    "AIL_1>, your card <",
    "CREDITCARD_1",
    "> is fine; key <OPENAI_KEY_1",
    ">. Bye <EMAIL_1>!",
]
EXPECTED = f"Hello {EMAIL}, your card {CARD} is fine; key {KEY}. Bye {EMAIL}!"


def test_stream_every_split_point() -> None:
    st, _ = state(EMAIL, CARD, KEY)
    stream = openai_stream(PIECES)
    assert visible(run(st, [stream])) == EXPECTED
    for i in range(len(stream) + 1):
        assert visible(run(st, [stream[:i], stream[i:]])) == EXPECTED, i


def test_stream_byte_by_byte_and_random_cuts() -> None:
    st, _ = state(EMAIL, CARD, KEY)
    stream = openai_stream(PIECES)
    assert visible(run(st, [stream[i : i + 1] for i in range(len(stream))])) == EXPECTED
    rng = random.Random(11)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), 6))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert visible(run(st, chunks)) == EXPECTED


def test_stream_keeps_events_whole_and_in_order() -> None:
    st, _ = state(EMAIL)
    stream = openai_stream(["a <EMA", "IL_1> b"])
    events = [
        json.loads(e.data) for e in sse.SSEDecoder().feed(run(st, [stream])) if e.data != "[DONE]"
    ]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, None, "stop"]
    assert [e["choices"][0]["delta"].get("content") for e in events] == [
        "",
        "a ",
        f"{EMAIL} b",
        None,
    ]
    assert run(st, [stream]).endswith(sse.DONE)


def test_stream_without_placeholders_passes_byte_for_byte() -> None:
    st, _ = state(EMAIL)
    stream = openai_stream(["plain ", "text"]).replace(b"\n\n", b"\r\n\r\n")
    assert run(st, [stream[:7], stream[7:]]) == stream


def test_stream_a_partial_placeholder_that_never_completes_is_not_lost() -> None:
    st, _ = state(EMAIL)
    assert visible(run(st, [openai_stream(["x <EMA", "IL"])])) == "x <EMAIL"
    stream = sse.encode(delta("end <EMAIL_")) + sse.DONE
    assert visible(run(st, [stream])) == "end <EMAIL_"
    # no [DONE], no finish: the held event goes out at the end of the stream
    assert visible(run(st, [sse.encode(delta("end <"))])) == "end <"


def test_stream_tool_call_arguments() -> None:
    st, _ = state(EMAIL)
    first = delta(
        tool_calls=[
            {
                "index": 0,
                "id": "c1",
                "type": "function",
                "function": {"name": "mail", "arguments": ""},
            }
        ]
    )
    parts = ['{"to": "<EM', 'AIL_1>", "cc": "<EMAIL', '_1>"}']
    events = [sse.encode(first)]
    events += [
        sse.encode(delta(tool_calls=[{"index": 0, "function": {"arguments": p}}])) for p in parts
    ]
    events += [sse.encode(delta(finish="tool_calls")), sse.DONE]
    stream = b"".join(events)
    expect = json.dumps({"to": EMAIL, "cc": EMAIL})
    for i in range(0, len(stream) + 1, 3):
        assert visible(run(st, [stream[:i], stream[i:]])) == expect


def test_stream_choices_do_not_mix() -> None:
    st, _ = state(EMAIL, CARD)
    events = [
        sse.encode(delta("A <EMA", index=0)),
        sse.encode(delta("IL_1>", index=0)),
        sse.encode(delta("B <CREDITCARD_1>", index=1)),
        sse.DONE,
    ]
    out = run(st, [b"".join(events)])
    texts: dict[int, str] = {}
    for ev in sse.SSEDecoder().feed(out):
        if ev.data != "[DONE]":
            c = json.loads(ev.data)["choices"][0]
            texts[c["index"]] = texts.get(c["index"], "") + (c["delta"].get("content") or "")
    assert texts == {0: f"A {EMAIL}", 1: f"B {CARD}"}


def test_stream_json_escaped_placeholders() -> None:
    st, _ = state(EMAIL)
    # Go's encoder (Ollama and others) writes < and > as \u003c and \u003e
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi \\u003cEMAIL_1\\u003e"}}]}\n\n'
        + sse.DONE
    )
    assert visible(run(st, [stream])) == f"hi {EMAIL}"


def test_stream_completions_text() -> None:
    st, _ = state(EMAIL)
    events = [
        sse.encode(
            {
                "object": "text_completion",
                "choices": [{"index": 0, "text": t, "finish_reason": None}],
            }
        )
        for t in ["to <EMAI", "L_1> now"]
    ]
    stream = b"".join(events) + sse.DONE
    for i in range(len(stream) + 1):
        assert visible(run(st, [stream[:i], stream[i:]])) == f"to {EMAIL} now"


def test_stream_anthropic_events() -> None:
    st, _ = state(EMAIL)

    def ev(name: str, data: dict[str, Any]) -> bytes:
        return sse.encode(data, name)

    stream = b"".join(
        [
            ev("message_start", {"type": "message_start", "message": {"id": "m", "content": []}}),
            ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Hi <EMA"},
                },
            ),
            ev("ping", {"type": "ping"}),
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "IL_1>, bye <EM"},
                },
            ),
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
                },
            ),
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '{"to":"<EMAIL'},
                },
            ),
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '_1>"}'},
                },
            ),
            ev("message_stop", {"type": "message_stop"}),
        ]
    )

    def texts(out: bytes) -> tuple[str, str, list[str]]:
        text, args, names = "", "", []
        for e in sse.SSEDecoder().feed(out):
            names.append(e.event or "")
            d = json.loads(e.data).get("delta") or {}
            text += d.get("text") or ""
            args += d.get("partial_json") or ""
        return text, args, names

    want = (
        f"Hi {EMAIL}, bye <EM",
        json.dumps({"to": EMAIL}, separators=(",", ":")),
        texts(stream)[2],
    )
    for i in range(len(stream) + 1):
        assert texts(run(st, [stream[:i], stream[i:]])) == want, i


def test_stream_ndjson() -> None:
    st, _ = state(EMAIL)
    lines = [
        json.dumps({"message": {"role": "assistant", "content": t}, "done": False}).encode() + b"\n"
        for t in ["a <EM", "AIL_1> b"]
    ]
    lines.append(
        json.dumps({"message": {"role": "assistant", "content": ""}, "done": True}).encode() + b"\n"
    )
    stream = b"".join(lines)
    for i in range(len(stream) + 1):
        out = run(st, [stream[:i], stream[i:]], ndjson=True)
        assert (
            "".join(json.loads(line)["message"]["content"] for line in out.splitlines())
            == f"a {EMAIL} b"
        )


def test_stream_synthetic_values() -> None:
    st, masked = state(EMAIL, CARD, synthetic=True)
    fake_email, fake_card = masked.split(" ", 1)
    text = f"Dear {fake_email}, card {fake_card}."
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    stream = openai_stream(pieces)
    for i in range(0, len(stream) + 1, 5):
        assert visible(run(st, [stream[:i], stream[i:]])) == f"Dear {EMAIL}, card {CARD}."


def test_stream_output_mode_never_sends_a_value() -> None:
    m = Masker(Detector(["all_and_credentials"]))
    m.mask(EMAIL)
    st = CallState(Recovery(m.originals), m.fork())
    text = "Hi <EMAIL_1>, reach root@corp.example.org\nor 415-555-2671 today."
    stream = openai_stream([text[i : i + 3] for i in range(0, len(text), 3)])
    out = run(st, [stream])
    assert visible(out) == f"Hi {EMAIL}, reach <EMAIL_2>\nor <PHONE_1> today."
    assert b"root@" not in out and b"555-2671" not in out
    assert st.output is not None and st.output.counts == {"email": 1, "phone": 1}


def test_stream_non_json_and_comments_pass_unchanged() -> None:
    st, _ = state(EMAIL)
    stream = (
        b": keep-alive\n\nevent: note\ndata: not json <EMAIL_1>\n\n"
        + sse.encode(delta("<EMAIL_1>"))
        + sse.DONE
    )
    out = run(st, [stream])
    assert out.startswith(b": keep-alive\n\nevent: note\ndata: not json <EMAIL_1>\n\n")
    assert visible(out) == EMAIL


def test_stream_failure_turns_into_a_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    st, _ = state(EMAIL)
    f = StreamFilter(st)
    first = sse.encode(delta("a <EMA"))
    assert f([first], False) == []  # held: may begin a placeholder

    def boom(*_: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(f, "_event", boom)
    second = sse.encode(delta("IL_1>"))
    out = f([second], False)
    assert b"".join(out) == first + second  # the upstream's bytes, nothing lost
    assert f([b"data: x\n\n"], True) == [b"data: x\n\n"]


SLOW = '{sanitization_mode: OUTPUT, custom_patterns: [{name: slow, regex: "(?:x+x+)+y"}], regex_timeout_ms: 20, stop_on_error: SOE}'


async def test_an_answer_that_cannot_be_masked_is_refused() -> None:
    policy, f, call = await send(gateway(SLOW.replace("SOE", "true")), chat("hi"))
    f.response = answer("x" * 5000 + f" {EMAIL}")
    finish_answer(policy, f)
    assert f.response.status_code == 500
    assert json.loads(f.response.content or b"")["error"]["code"] == "sanitizer_error"
    assert call.error is not None and call.error_source == "gateway"
    # stop_on_error: false lets it through, unmasked, and says so in the record
    policy, f, call = await send(gateway(SLOW.replace("SOE", "false")), chat("hi"))
    f.response = answer("x" * 5000 + f" {EMAIL}")
    finish_answer(policy, f)
    assert f.response.status_code == 200 and EMAIL in content_of(f.response)["content"]
    assert "ran out of time" in call.context["sanitizer_error"]


async def test_a_stream_that_cannot_be_masked_ends_with_an_error() -> None:
    policy, f, call = await send(gateway(SLOW.replace("SOE", "true")), chat("hi"))
    call.relay_token = "t"
    f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    policy.responseheaders_late(f)
    (flt,) = call.stream_filters
    out = b"".join(flt([sse.encode(delta("x" * 3000 + f" {EMAIL}"))], False))
    assert EMAIL.encode() not in out
    events = list(sse.SSEDecoder().feed(out))
    assert json.loads(events[0].data)["error"]["code"] == "sanitizer_error"
    assert events[-1].data == "[DONE]"
    assert flt([sse.encode(delta("more")), sse.DONE], True) == []
    assert call.error is not None and call.error.code == "sanitizer_error"


# ------------------------------------------------- the plugins around the sanitizer


async def test_the_originals_come_back_only_in_the_late_hook() -> None:
    """A plugin between `response` and `response_late` (the response transformer) sees
    the placeholders, never the originals."""
    policy, f, _ = await send(gateway(), chat(f"I am {EMAIL}"))
    f.response = answer("Hello <EMAIL_1>")
    policy.response(f)
    assert content_of(f.response)["content"] == "Hello <EMAIL_1>"  # what the others see
    policy.response_late(f)
    assert content_of(f.response)["content"] == f"Hello {EMAIL}"


async def test_output_masking_reaches_the_records_copy_of_the_answer() -> None:
    policy, f, call = await send(gateway("{sanitization_mode: BOTH}"), chat(f"I am {EMAIL}"))
    f.response = answer("Hi <EMAIL_1>, the admin is root@corp.example.org")
    call.log_payloads = True
    call.response_payload = json.loads(f.response.content or b"")  # as ai-proxy sets it
    finish_answer(policy, f)
    recorded = call.response_payload["choices"][0]["message"]["content"]
    assert recorded == "Hi <EMAIL_1>, the admin is <EMAIL_2>"
    assert content_of(f.response)["content"] == f"Hi {EMAIL}, the admin is <EMAIL_2>"


async def test_a_plugin_before_the_sanitizer_masks_with_the_calls_masker() -> None:
    gw = gateway()
    f = make_flow(chat(f"I am {EMAIL}, card {CARD}"))
    Router(gw).requestheaders(f)
    call = gw.calls.get(f)
    assert call is not None
    found = sanitizer.prompt_masker(f, call)
    assert found is not None
    conf, masker = found
    assert sanitizer.prompt_masker(f, call) == found  # one masker for the call
    # what the plugin sends its LLM or records: every string but identifiers
    doc = {"model": "m", "properties": {"who": EMAIL}, "note": [f"card {CARD}"]}
    masked = await sanitizer.mask_document(masker, conf, doc)
    assert masked == {
        "model": "m",
        "properties": {"who": "<EMAIL_1>"},
        "note": ["card <CREDITCARD_1>"],
    }
    assert await sanitizer.mask_document(masker, conf, f"text {EMAIL}") == "text <EMAIL_1>"
    assert sanitizer.restore_text(masker, "to <EMAIL_1>") == f"to {EMAIL}"
    # the sanitizer goes on with it: the same placeholders; the record counts the prompt
    policy = Policy(gw)
    await policy.request(f)
    assert sent(f)["messages"][0]["content"] == "I am <EMAIL_1>, card <CREDITCARD_1>"
    assert call.context["sanitizer"] == {"creditcard": 1, "email": 1}
    # nothing is kept once the call is over
    for finish in call.on_finish:
        finish(call, None)
    assert f.id not in sanitizer._EARLY and policy._calls == {}


async def test_no_masker_when_the_sanitizer_does_not_mask_prompts() -> None:
    for conf in ("{sanitization_mode: OUTPUT}", None):
        gw = gateway(conf or "{}")
        if conf is None:  # no sanitizer for the call at all
            gw = gateway_for(mock_chat_config())
        f = make_flow(chat(EMAIL))
        Router(gw).requestheaders(f)
        call = gw.calls.get(f)
        assert call is not None and sanitizer.prompt_masker(f, call) is None
    # OUTPUT but blocking: the prompt must not leave before it is refused
    gw = gateway("{sanitization_mode: OUTPUT, block_if_detected: true}")
    f = make_flow(chat(EMAIL))
    Router(gw).requestheaders(f)
    call = gw.calls.get(f)
    assert call is not None and sanitizer.prompt_masker(f, call) is not None
