"""ai-sanitizer end to end: a real `mitmdump -s addons/gateway.py`, the `openai` SDK as
the client, a fake OpenAI upstream that records what it received.

The upstream never sees an email, a card number or a key; the client gets them back in
the answer, whole or streamed (the fake streams placeholders cut across events and the
events cut across chunks); block mode refuses with 400; the call record holds the
placeholders and counts, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.upstream import (
    FakeUpstream,
    Received,
    Reply,
    chat_completion,
    chat_stream,
    rechunk,
    sse,
)
from tests.policy_helpers import FAKE_OPENAI_MODEL, MessageTag, module_gateway

EMAIL = "jane.roe@example.com"
CARD = "4111 1111 1111 1111"
KEY = "sk-proj-" + "Zy9xW8vU7tS6rQ5pO4nM3lK2jI1hG0fE"
IBAN = "DE89 3704 0044 0532 0130 00"
# what a model writes by itself (the OUTPUT mode masks it)
LEAKED = "leaked.person@example.net"
VALUES = (EMAIL, CARD, KEY, IBAN, "4111111111111111", "DE89370400440532013000", LEAKED)
PROMPT = f"I am {EMAIL}, my card is {CARD}, my key {KEY} and my IBAN {IBAN}."

ROUTE = """
      - name: NAME
        paths: ["/NAME/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: MODEL
              logging: {log_payloads: true}
          - name: ai-sanitizer
            config: SANITIZER
"""


def route(
    name: str,
    sanitizer: str,
    model: str = FAKE_OPENAI_MODEL,
) -> str:
    return ROUTE.replace("NAME", name).replace("SANITIZER", sanitizer).replace("MODEL", model)


CONFIG = (
    (
        """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
"""
        + route("chat", "{}")
        + route("block", "{block_if_detected: true}")
        + route("kept", "{recover_redacted: false}")
        + route("output", "{sanitization_mode: OUTPUT}")
        + route("mock", "{}", "{provider: mock, name: mock-gpt}")
        + """
      - name: embeddings
        paths: ["/emb/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              model: {provider: openai, name: text-embedding-3-small, options: {upstream_url: UPSTREAM}}
          - name: ai-sanitizer
            config: {}
      - name: claude
        paths: ["/claude"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              llm_format: anthropic
              auth: {header_name: x-api-key, header_value: test-key}
              model:
                provider: anthropic
                name: claude-haiku-4-5
                options: {anthropic_version: "2023-06-01", upstream_url: UPSTREAM}
              logging: {log_payloads: true}
          - name: ai-sanitizer
            config: {}
      - name: tpl
        paths: ["/tpl/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: FAKE_MODEL
              logging: {log_payloads: true}
          - name: ai-prompt-template
            config:
              log_original_request: true
              templates:
                - name: contact
                  template: '{"messages": [{"role": "user", "content": "Write to {{email}} about {{topic}}."}]}'
          - name: ai-sanitizer
            config: {}
      - name: tx
        paths: ["/tx/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: FAKE_MODEL
              logging: {log_payloads: true}
          - name: ai-request-transformer
            config:
              prompt: Make it polite.
              llm: TRANSFORMER_LLM
          - name: ai-response-transformer
            config:
              prompt: Shout it.
              llm: TRANSFORMER_LLM
          - name: ai-sanitizer
            config: {}
plugins:
  - name: file-log
    config: {path: "{records}"}
"""
    )
    .replace("FAKE_MODEL", FAKE_OPENAI_MODEL)
    .replace(
        "TRANSFORMER_LLM",
        # the transformers' own LLM: the fake upstream too, under /llm; its payloads recorded
        "{route_type: llm/v1/chat, logging: {log_payloads: true}, model: {provider: openai, "
        'name: gpt-4o-mini, options: {upstream_url: "UPSTREAM/llm/v1/chat/completions"}}}',
    )
)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with module_gateway(tmp_path_factory, CONFIG, upstream) as g:
        yield g
    # whatever the tests did, no value reached a record or the gateway's log
    records = g.records_path.read_text() if g.records_path.exists() else ""
    for value in VALUES:
        assert value not in records
        assert value not in g.log()


TAG = MessageTag()


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG.new()


client = TAG.client
record = TAG.record


def ai(rec: dict[str, Any]) -> dict[str, Any]:
    """The record's AI part (Kong's `ai.proxy` layout)."""
    return rec["ai"]["proxy"]


def echo_placeholders(req: Received) -> str:
    """What a model would say back: the placeholders it was given."""
    text = req.json()["messages"][0]["content"]
    return " ".join(w.strip(",.") for w in text.split() if w.startswith("<"))


def assert_masked(req: Received) -> None:
    for value in VALUES:
        assert value.encode() not in req.body
    content = req.json()["messages"][0]["content"]
    assert content == (
        "I am <EMAIL_1>, my card is <CREDITCARD_1>, my key <OPENAI_KEY_1> and my IBAN <IBAN_1>."
    )


COUNTS = {"creditcard": 1, "email": 1, "iban": 1, "openai_key": 1}


def test_buffered_answer(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(lambda r: Reply.json(chat_completion(f"Noted: {echo_placeholders(r)}.")))
    answer = client(gw, "chat").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
    )
    assert_masked(fake.last())
    assert answer.choices[0].message.content == f"Noted: {EMAIL} {CARD} {KEY} {IBAN}."

    rec = record(gw)
    assert rec["context"]["sanitizer"] == COUNTS
    payload = ai(rec)["payload"]
    assert payload["request"]["messages"][0]["content"].startswith("I am <EMAIL_1>,")
    assert payload["response"]["choices"][0]["message"]["content"] == (
        "Noted: <EMAIL_1> <CREDITCARD_1> <OPENAI_KEY_1> <IBAN_1>."
    )
    assert not any(v in json.dumps(rec) for v in VALUES)


def test_streamed_answer(gw: Gateway, fake: FakeUpstream) -> None:
    words = [
        "Noted: <EM",
        "AIL_1>, card <CRED",
        "ITCARD_1>",
        ", key <",
        "OPENAI_KEY_1> and <IBAN_1",
        ">.",
    ]
    # the events themselves cut every 7 bytes: placeholders and event lines both split
    fake.reply(Reply.sse(rechunk(chat_stream(words), 7)))
    stream = client(gw, "chat").chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Noted: {EMAIL}, card {CARD}, key {KEY} and {IBAN}."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 13
    assert_masked(fake.last())

    rec = record(gw)
    assert rec["context"]["sanitizer"] == COUNTS
    assert ai(rec)["meta"]["request_mode"] == "stream"
    assert ai(rec)["payload"]["response"]["choices"][0]["message"]["content"] == "".join(words)
    assert not any(v in json.dumps(rec) for v in VALUES)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_output_mode_masks_the_model_s_own_findings_for_the_client_and_the_record(
    gw: Gateway, fake: FakeUpstream, stream: bool
) -> None:
    words = ["Write to ", "leaked.per", "son@example", ".net today."]
    if stream:
        fake.reply(Reply.sse(rechunk(chat_stream(words), 5)))
    else:
        fake.reply(Reply.json(chat_completion("".join(words))))
    c = client(gw, "output").chat.completions
    messages = [{"role": "user", "content": "Whom should I write to?"}]
    if stream:
        chunks = list(c.create(model="gpt-4o-mini", messages=messages, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        text = c.create(model="gpt-4o-mini", messages=messages).choices[0].message.content
    assert text == "Write to <EMAIL_1> today."
    rec = record(gw)
    assert ai(rec)["payload"]["response"]["choices"][0]["message"]["content"] == text
    assert LEAKED not in json.dumps(rec)


def test_block_if_detected(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("should not be asked")))
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "block").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        )
    assert e.value.status_code == 400
    err = e.value.body
    assert isinstance(err, dict) and err["code"] == "sensitive_data_detected"
    assert "creditcard, email, iban, openai_key" in err["message"]
    assert not any(v in err["message"] for v in VALUES)
    assert fake.received == []
    rec = record(gw)
    assert rec["status"] == "error"
    assert rec["error"]["code"] == "sensitive_data_detected"
    assert rec["context"]["sanitizer"] == COUNTS
    # a clean prompt passes
    fake.reply(Reply.json(chat_completion("hi")))
    answer = client(gw, "block").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.choices[0].message.content == "hi"


def test_recover_redacted_false(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(lambda r: Reply.json(chat_completion(f"Noted: {echo_placeholders(r)}")))
    answer = client(gw, "kept").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
    )
    assert answer.choices[0].message.content == (
        "Noted: <EMAIL_1> <CREDITCARD_1> <OPENAI_KEY_1> <IBAN_1>"
    )


def test_mock_provider_echo(gw: Gateway) -> None:
    """The mock model echoes the (masked) prompt: the client reads its own words back."""
    c = client(gw, "mock")
    messages = [{"role": "user", "content": PROMPT}]
    answer = c.chat.completions.create(model="mock-gpt", messages=messages)
    assert answer.choices[0].message.content == PROMPT
    streamed = c.chat.completions.create(model="mock-gpt", messages=messages, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == PROMPT
    rec = record(gw)
    assert rec["context"]["sanitizer"] == COUNTS
    assert "<EMAIL_1>" in ai(rec)["payload"]["response"]["choices"][0]["message"]["content"]


def test_embeddings_input(gw: Gateway, fake: FakeUpstream) -> None:
    vector = {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}
    fake.reply(
        Reply.json(
            {
                "object": "list",
                "data": [vector],
                "model": "m",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )
    )
    c = client(gw, "emb")
    c.embeddings.create(model="text-embedding-3-small", input=[f"mail {EMAIL}"])
    assert fake.last().json()["input"] == ["mail <EMAIL_1>"]


def test_bad_json_is_refused(gw: Gateway, fake: FakeUpstream) -> None:
    r = httpx.post(
        f"{gw.url}/chat/v1/chat/completions",
        content=b'{"messages": [',
        headers=TAG.headers({"content-type": "application/json"}),
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert fake.received == []


def claude_message(text: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 9},
    }


def claude_stream(pieces: list[str]) -> list[bytes | float]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\n".encode() + sse(data)

    start = {**claude_message(""), "content": [], "stop_reason": None}
    events = [
        event("message_start", {"type": "message_start", "message": start}),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        event("ping", {"type": "ping"}),
    ]
    for p in pieces:
        delta = {"type": "text_delta", "text": p}
        events.append(
            event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        )
    events += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 9},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return rechunk(events, 11)


def test_native_anthropic_route(gw: Gateway, fake: FakeUpstream) -> None:
    claude = anthropic.Anthropic(
        base_url=f"{gw.url}/claude",
        api_key="client-key",
        max_retries=0,
        default_headers=TAG.headers(),
    )
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    system = f"Answer {EMAIL} politely."

    fake.reply(Reply.json(claude_message("Hello <EMAIL_1>, card <CREDITCARD_1>.")))
    msg = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=100, system=system, messages=messages
    )
    assert msg.content[0].text == f"Hello {EMAIL}, card {CARD}."  # type: ignore[union-attr]
    body = fake.last().json()
    assert body["system"] == "Answer <EMAIL_1> politely."
    assert body["messages"][0]["content"][0]["text"].startswith(
        "I am <EMAIL_1>, my card is <CREDITCARD_1>"
    )
    assert not any(v.encode() in fake.last().body for v in VALUES)

    fake.reply(
        Reply.sse(claude_stream(["Hello <EM", "AIL_1>, card <CREDITCARD", "_1> and <IBAN_1>."]))
    )
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, system=system, messages=messages
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == f"Hello {EMAIL}, card {CARD} and {IBAN}."
    rec = record(gw)
    assert rec["context"]["sanitizer"] == {"creditcard": 1, "email": 2, "iban": 1, "openai_key": 1}
    assert not any(v in json.dumps(rec) for v in VALUES)


# ------------------------------------------ the plugins around the sanitizer


def test_the_template_s_original_request_is_recorded_masked(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(lambda r: Reply.json(chat_completion(f"Noted: {echo_placeholders(r)}.")))
    r = httpx.post(
        f"{gw.url}/tpl/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": "{template://contact}",
            "properties": {"email": EMAIL, "topic": "the invoice"},
        },
        headers=TAG.headers(),
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == f"Noted: {EMAIL}."
    assert fake.last().json()["messages"][0]["content"] == "Write to <EMAIL_1> about the invoice."
    rec = record(gw)
    # the client's request as it came (log_original_request), masked as the prompt is
    assert rec["context"]["original_request"]["properties"] == {
        "email": "<EMAIL_1>",
        "topic": "the invoice",
    }
    assert rec["context"]["original_request"]["messages"] == "{template://contact}"
    assert rec["context"]["sanitizer"] == {"email": 1}
    assert EMAIL not in json.dumps(rec)


def transformers_and_model(req: Received) -> Reply:
    """The transformers' LLM (under /llm): the request one adds a polite word to the
    body, the response one shouts the answer; the route's model: echoes placeholders."""
    if req.path.startswith("/llm"):
        sent = req.json()["messages"]
        system, user = sent[0]["content"], sent[-1]["content"]
        if system == "Make it polite.":
            body = json.loads(user)
            body["messages"][-1]["content"] = "Please: " + body["messages"][-1]["content"]
            return Reply.json(chat_completion(json.dumps(body)))
        return Reply.json(chat_completion(user.replace("Noted", "NOTED")))
    return Reply.json(chat_completion(f"Noted: {echo_placeholders(req)}."))


def test_the_transformers_llms_never_see_the_originals(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(transformers_and_model)
    answer = client(gw, "tx").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
    )
    # the client gets its values back, in the answer both transformers went over
    assert answer.choices[0].message.content == f"NOTED: {EMAIL} {CARD} {KEY} {IBAN}."
    to_llm = [r for r in fake.received if r.path.startswith("/llm")]
    to_model = [r for r in fake.received if not r.path.startswith("/llm")]
    assert len(to_llm) == 2 and len(to_model) == 1
    for req in fake.received:  # neither transformer's LLM, nor the model, got one
        for value in VALUES:
            assert value.encode() not in req.body, (req.path, value)
    # the request transformer worked on placeholders, the response one too
    assert "<EMAIL_1>" in to_llm[0].json()["messages"][-1]["content"]
    assert "Noted: <EMAIL_1> <CREDITCARD_1>" in to_llm[1].json()["messages"][-1]["content"]
    assert to_model[0].json()["messages"][0]["content"].startswith("Please: I am <EMAIL_1>,")

    rec = record(gw)
    assert rec["context"]["sanitizer"] == COUNTS
    # the record keeps what the client got, masked
    assert ai(rec)["payload"]["response"]["choices"][0]["message"]["content"] == (
        "NOTED: <EMAIL_1> <CREDITCARD_1> <OPENAI_KEY_1> <IBAN_1>."
    )
    assert "<EMAIL_1>" in rec["context"]["ai_request_transformer"]["payload"]["request"]
    assert not any(v in json.dumps(rec) for v in VALUES)
