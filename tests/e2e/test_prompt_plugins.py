"""ai-prompt-template, ai-prompt-decorator and ai-prompt-guard end to end.

A real mitmdump, the `openai` SDK as the client. The `mock` provider answers with the
last user message it got, so what reached the "model" is in the answer; routes on the
fake OpenAI upstream show the exact messages sent upstream. The plugins are listed in
the config in the reverse of Kong's order: they run by priority (template, decorator,
guard, then ai-proxy), which the combined routes show.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion
from tests.policy_helpers import FAKE_OPENAI_MODEL, MessageTag, module_gateway

MOCK = "{route_type: llm/v1/chat, model: {provider: mock, name: gpt-4o-mini}}"
MOCK_COMPLETIONS = "{route_type: llm/v1/completions, model: {provider: mock, name: gpt-4o-mini}}"
FAKE = f"{{route_type: llm/v1/chat, logging: {{log_payloads: true}}, model: {FAKE_OPENAI_MODEL}}}"

EXPLAIN = json.dumps(
    {
        "messages": [
            {"role": "system", "content": "You explain things simply."},
            {"role": "user", "content": "Explain {{thing}} to a {{audience}}."},
        ]
    }
)
CODE = json.dumps({"prompt": "Write a {{program}} program in {{language}}."})
TEMPLATES = f"[{{name: explain, template: '{EXPLAIN}'}}, {{name: code, template: '{CODE}'}}]"

DENY = r'["(?i)\\bhack", "(?i)phish"]'

CONFIG = f"""
_format_version: "3.0"
services:
  - name: llm
    routes:
      - name: template
        paths: ["/tpl/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK}
          - name: ai-prompt-template
            config: {{templates: {TEMPLATES}, log_original_request: true}}
      - name: template-completions
        paths: ["/tpl/v1/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK_COMPLETIONS}
          - name: ai-prompt-template
            config: {{templates: {TEMPLATES}}}
      - name: template-only
        paths: ["/tpl-only/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK}
          - name: ai-prompt-template
            config: {{templates: {TEMPLATES}, allow_untemplated_requests: false}}
      - name: decorator
        paths: ["/deco/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {FAKE}
          - name: ai-prompt-decorator
            config:
              prompts:
                prepend:
                  - {{role: system, content: "You are a pirate."}}
                  - {{role: user, content: "Context: the sea."}}
                append:
                  - {{role: user, content: "Answer in one sentence."}}
      - name: guard
        paths: ["/guard/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK}
          - name: ai-prompt-guard
            config: {{deny_patterns: {DENY}}}
      - name: guard-completions
        paths: ["/guard/v1/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK_COMPLETIONS}
          - name: ai-prompt-guard
            config: {{deny_patterns: {DENY}}}
      - name: guard-allow
        paths: ["/guard-allow/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK}
          - name: ai-prompt-guard
            config: {{allow_patterns: ["(?i)^what is ", "(?i)^how do i "]}}
      - name: guard-last
        paths: ["/guard-last/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK}
          - name: ai-prompt-guard
            config: {{deny_patterns: {DENY}, allow_all_conversation_history: true}}
      # template -> decorator -> guard: the guard allows only when the LAST user
      # message is the decorator's, and the client's body has no message list at all
      - name: combo-allow
        paths: ["/combo-allow/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {MOCK}
          - name: ai-prompt-guard
            config:
              allow_patterns: ["^Answer in one sentence[.]$"]
              allow_all_conversation_history: true
          - name: ai-prompt-decorator
            config:
              prompts:
                append: [{{role: user, content: "Answer in one sentence."}}]
          - name: ai-prompt-template
            config: {{templates: {TEMPLATES}, allow_untemplated_requests: false}}
      # the guard denies a phrase only the rendered template holds
      - name: combo-deny
        paths: ["/combo-deny/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {FAKE}
          - name: ai-prompt-guard
            config: {{deny_patterns: ["(?i)explain (bombs|poison)"]}}
          - name: ai-prompt-decorator
            config:
              prompts:
                prepend: [{{role: system, content: "Be safe."}}]
                append: [{{role: user, content: "Answer in one sentence."}}]
          - name: ai-prompt-template
            config: {{templates: {TEMPLATES}}}
plugins:
  - name: file-log
    config: {{path: "{{records}}"}}
"""


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with module_gateway(tmp_path_factory, CONFIG, upstream) as g:
        yield g


TAG = MessageTag()


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG.new()


client = TAG.client
my_record = TAG.record


def answer(resp: Any) -> str:
    return resp.choices[0].message.content


def chat(gw: Gateway, prefix: str, *texts: str, **kw: Any) -> Any:
    return client(gw, prefix).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": t} for t in texts], **kw
    )


# ------------------------------------------------------------------------ template


def test_template_renders_values_with_quotes_and_newlines(gw: Gateway) -> None:
    thing = 'the "observer effect"\n(and\\or "}] tricks)'
    resp = client(gw, "tpl").chat.completions.create(
        model="gpt-4o-mini",
        messages="{template://explain}",  # type: ignore[arg-type]
        temperature=0.2,
        extra_body={"properties": {"thing": thing, "audience": "child"}},
    )
    # the mock echoes the last user message: the rendered one, quotes and all
    assert answer(resp) == f"Explain {thing} to a child."
    rec = my_record(gw)
    assert rec["status"] == "ok"
    # log_original_request: the client's own body is in the record
    assert rec["context"]["original_request"] == {
        "model": "gpt-4o-mini",
        "messages": "{template://explain}",
        "temperature": 0.2,
        "properties": {"thing": thing, "audience": "child"},
    }


def test_template_keeps_stream_and_streams_the_rendered_prompt(gw: Gateway) -> None:
    stream = client(gw, "tpl").chat.completions.create(
        model="gpt-4o-mini",
        messages="{template://explain}",  # type: ignore[arg-type]
        stream=True,
        extra_body={"properties": {"thing": "tides", "audience": "sailor"}},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Explain tides to a sailor."
    assert my_record(gw)["ai"]["proxy"]["meta"]["request_mode"] == "stream"


def test_template_for_completions(gw: Gateway) -> None:
    resp = client(gw, "tpl").completions.create(
        model="gpt-4o-mini",
        prompt="{template://code}",
        extra_body={"properties": {"program": "fizzbuzz", "language": "Go"}},
    )
    assert resp.choices[0].text == "Write a fizzbuzz program in Go."


def test_template_missing_property_is_a_400_naming_it(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "tpl").chat.completions.create(
            model="gpt-4o-mini",
            messages="{template://explain}",  # type: ignore[arg-type]
            extra_body={"properties": {"thing": "gravity"}},
        )
    assert e.value.status_code == 400
    assert e.value.body["message"] == "missing template parameters: [audience]"
    rec = my_record(gw)
    assert rec["error"]["status"] == 400 and rec["error"]["source"] == "gateway"


def test_template_unknown_name_is_a_400_naming_it(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "tpl").chat.completions.create(
            model="gpt-4o-mini",
            messages="{template://nope}",  # type: ignore[arg-type]
        )
    assert e.value.body["message"] == "could not find template name [nope]"


def test_untemplated_request_passes_by_default(gw: Gateway) -> None:
    assert answer(chat(gw, "tpl", "plain question")) == "plain question"


def test_untemplated_request_refused_when_not_allowed(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        chat(gw, "tpl-only", "plain question")
    assert e.value.body["message"] == "this LLM route only supports templated requests"
    resp = client(gw, "tpl-only").chat.completions.create(
        model="gpt-4o-mini",
        messages="{template://explain}",  # type: ignore[arg-type]
        extra_body={"properties": {"thing": "tides", "audience": "sailor"}},
    )
    assert answer(resp) == "Explain tides to a sailor."


# ----------------------------------------------------------------------- decorator


def test_decorator_messages_reach_the_upstream(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("Arr.")))
    resp = client(gw, "deco").chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Client system."},
            {"role": "user", "content": "Where is the treasure?"},
        ],
    )
    assert answer(resp) == "Arr."
    assert fake.last().json()["messages"] == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Context: the sea."},
        {"role": "system", "content": "Client system."},
        {"role": "user", "content": "Where is the treasure?"},
        {"role": "user", "content": "Answer in one sentence."},
    ]


def test_decorator_refuses_a_request_that_is_not_a_chat(gw: Gateway, fake: FakeUpstream) -> None:
    r = httpx.post(
        f"{gw.url}/deco/v1/chat/completions",
        json={"model": "gpt-4o-mini", "prompt": "not a chat"},
        timeout=10,
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "this LLM route only supports llm/chat type requests"
    assert fake.received == []


# --------------------------------------------------------------------------- guard


def test_guard_denies(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        chat(gw, "guard", "How do I HACK my neighbour's wifi?")
    assert e.value.status_code == 400
    assert e.value.body == {
        "message": "bad request",
        "type": "invalid_request_error",
        "param": None,
        "code": "prompt_blocked",
    }
    assert answer(chat(gw, "guard", "How do I secure my wifi?")) == "How do I secure my wifi?"


def test_a_blocked_call_is_recorded_as_a_gateway_error(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError):
        chat(gw, "guard", "write a phishing email")
    rec = my_record(gw)
    assert rec["status"] == "error"
    assert rec["response"]["status"] == 400
    assert rec["error"]["status"] == 400
    assert rec["error"]["source"] == "gateway"
    assert rec["error"]["code"] == "prompt_blocked"


def test_guard_checks_completions_prompts(gw: Gateway) -> None:
    c = client(gw, "guard")
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="gpt-4o-mini", prompt=["a poem", "a phishing kit"])
    assert c.completions.create(model="gpt-4o-mini", prompt="a poem").choices[0].text == "a poem"


def test_guard_allow_only(gw: Gateway) -> None:
    assert answer(chat(gw, "guard-allow", "What is DNS?")) == "What is DNS?"
    with pytest.raises(openai.BadRequestError) as e:
        chat(gw, "guard-allow", "Write me a song")
    assert e.value.body["code"] == "prompt_not_allowed"
    # every user message must match, not only one of them
    with pytest.raises(openai.BadRequestError):
        chat(gw, "guard-allow", "What is DNS?", "Write me a song")


def test_guard_history_on_and_off(gw: Gateway) -> None:
    history = ("how do i hack a bank", "never mind: what is a bank?")
    # default: every user message of the conversation is checked
    with pytest.raises(openai.BadRequestError):
        chat(gw, "guard", *history)
    # allow_all_conversation_history: only the last one
    assert answer(chat(gw, "guard-last", *history)) == "never mind: what is a bank?"
    with pytest.raises(openai.BadRequestError):
        chat(gw, "guard-last", "what is a bank?", "how do i hack a bank")


def test_guard_checks_the_text_parts_of_multimodal_messages(gw: Gateway) -> None:
    c = client(gw, "guard")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {
                    "role": "user",
                    "content": [image, {"type": "text", "text": "how to hack this device?"}],
                }
            ],
        )
    assert e.value.body["code"] == "prompt_blocked"
    resp = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "what is it?"}]}],
    )
    assert "what is it?" in answer(resp)


# ------------------------------------------------------------------ the three at once


def test_template_then_decorator_then_guard(gw: Gateway) -> None:
    # The client sends no message list: only a rendered template gives the guard one;
    # the guard's allow pattern matches only the decorator's appended message, and it
    # checks only the last user message: it passes only if it runs after both.
    resp = client(gw, "combo-allow").chat.completions.create(
        model="gpt-4o-mini",
        messages="{template://explain}",  # type: ignore[arg-type]
        extra_body={"properties": {"thing": "gravity", "audience": "child"}},
    )
    assert answer(resp) == "Answer in one sentence."


def test_guard_sees_the_rendered_and_decorated_body(gw: Gateway, fake: FakeUpstream) -> None:
    c = client(gw, "combo-deny")
    # "Explain bombs" is only in the rendered template: the client sent a value
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages="{template://explain}",  # type: ignore[arg-type]
            extra_body={"properties": {"thing": "bombs", "audience": "child"}},
        )
    assert e.value.body["code"] == "prompt_blocked"
    assert fake.received == []

    fake.reply(Reply.json(chat_completion("ok")))
    c.chat.completions.create(
        model="gpt-4o-mini",
        messages="{template://explain}",  # type: ignore[arg-type]
        extra_body={"properties": {"thing": "tides", "audience": "sailor"}},
    )
    sent = fake.last().json()
    assert sent["messages"] == [
        {"role": "system", "content": "Be safe."},
        {"role": "system", "content": "You explain things simply."},
        {"role": "user", "content": "Explain tides to a sailor."},
        {"role": "user", "content": "Answer in one sentence."},
    ]
    assert "properties" not in sent
    assert sent["model"] == "gpt-4o-mini"
