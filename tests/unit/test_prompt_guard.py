"""addons/policies/prompt_guard.py: Kong's ai-prompt-guard.

Patterns compiled at load (a bad one is a load error naming it), which messages are
checked (roles, history, multimodal text parts, completions prompts, Gemini and Bedrock
requests), deny before allow, allow for every checked message, a time budget that turns
a catastrophic pattern into a block instead of a stalled gateway, and the addon on a
flow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from addons.calls import Call
from addons.policies import prompt_guard as pg
from providers.base import ProviderError
from tests.policy_helpers import flow_with_call, load_error, route_config
from tests.unit.conftest import load, route_named


def conf(**kw: Any) -> pg.Config:
    return pg.Config(**kw)


def where(body: dict, **kw: Any) -> list[tuple[str, str]]:
    return [(c.where, c.text) for c in pg.checked_texts(body, conf(deny_patterns=["x"], **kw))]


CHAT = {
    "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
        {"role": "tool", "content": "tool out", "tool_call_id": "t"},
    ]
}


# --------------------------------------------------------------- what is checked


def test_user_messages_by_default() -> None:
    assert where(CHAT) == [("messages[1] (user)", "q1"), ("messages[3] (user)", "q2")]


def test_match_all_roles() -> None:
    assert where(CHAT, match_all_roles=True) == [
        ("messages[0] (system)", "sys"),
        ("messages[1] (user)", "q1"),
        ("messages[2] (assistant)", "a1"),
        ("messages[3] (user)", "q2"),
        ("messages[5] (tool)", "tool out"),
    ]


def test_allow_all_conversation_history_checks_only_the_last_user_message() -> None:
    assert where(CHAT, allow_all_conversation_history=True) == [("messages[3] (user)", "q2")]


def test_multimodal_text_parts_are_checked() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "this"},
                ],
            }
        ]
    }
    assert where(body) == [("messages[0] (user)", "look at\nthis")]


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"prompt": "complete me"}, [("prompt", "complete me")]),
        ({"prompt": ["one", "two"]}, [("prompt[0]", "one"), ("prompt[1]", "two")]),
    ],
)
def test_completions_prompts(body: dict, expected: list) -> None:
    assert where(body) == expected


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": [1, 2, 3]}, "token ids cannot be checked"),
        ({"input": "embed me"}, "only accepts llm/v1/chat messages or a llm/v1/completions prompt"),
        ({"messages": "{template://x}"}, "only accepts llm/v1/chat messages"),
        (
            {"messages": [{"content": "no role"}]},
            "messages[0] must be an object with a string 'role'",
        ),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content must be a string"),
        (
            {"messages": [{"role": "user", "content": [7]}]},
            "messages[0].content[0] must be an object",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0] is a text part without a text",
        ),
    ],
)
def test_requests_the_guard_cannot_read_are_400(body: dict, message: str) -> None:
    with pytest.raises(ProviderError) as e:
        pg.checked_texts(body, conf(deny_patterns=["x"]))
    assert e.value.status == 400 and message in e.value.message


def test_gemini_requests() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "q1"}, {"inlineData": {"data": "AAAA"}}]},
            {"role": "model", "parts": [{"text": "a1"}]},
            {"parts": [{"text": "q2"}]},
        ],
    }
    f = {"llm_format": "gemini"}
    assert where(body, **f) == [("contents[0] (user)", "q1"), ("contents[2] (user)", "q2")]
    assert where(body, match_all_roles=True, **f) == [
        ("systemInstruction", "sys"),
        ("contents[0] (user)", "q1"),
        ("contents[1] (assistant)", "a1"),
        ("contents[2] (user)", "q2"),
    ]
    assert where(body, allow_all_conversation_history=True, **f) == [("contents[2] (user)", "q2")]


def test_bedrock_requests() -> None:
    body = {
        "system": [{"text": "sys"}],
        "messages": [
            {"role": "user", "content": [{"text": "q1"}]},
            {"role": "assistant", "content": [{"text": "a1"}]},
            {"role": "user", "content": [{"text": "q2"}, {"text": "more"}]},
        ],
    }
    f = {"llm_format": "bedrock"}
    assert where(body, **f) == [("messages[0] (user)", "q1"), ("messages[2] (user)", "q2\nmore")]
    assert [w for w, _ in where(body, match_all_roles=True, **f)] == [
        "system",
        "messages[0] (user)",
        "messages[1] (assistant)",
        "messages[2] (user)",
    ]


# ------------------------------------------------------------------------ matching


def verdict(body: dict, **kw: Any) -> str | None:
    c = conf(**kw)
    v = pg.judge(pg.checked_texts(body, c), c, budget=1.0)
    return v.code if v else None


def user(*texts: str) -> dict:
    return {"messages": [{"role": "user", "content": t} for t in texts]}


# Kong's own example (developer.konghq.com/plugins/ai-prompt-guard/examples)
ALLOW = ["(?i).*what is .*", "(?i).*how do i .*", "(?i).*install .*"]
DENY = ["(?i).*bypass.*(login|password|auth).*", "(?i).*hack.*", "(?i).*phish.*"]


@pytest.mark.parametrize(
    "body, code",
    [
        (user("What is a VPN?"), None),
        (user("How do I install Kong?"), None),
        (user("What is the best way to HACK a router?"), "prompt_blocked"),
        (user("how do i bypass the login page"), "prompt_blocked"),
        (user("Tell me a joke"), "prompt_not_allowed"),
        # every checked message must match an allow pattern, not just one of them
        (user("What is a VPN?", "Tell me a joke"), "prompt_not_allowed"),
        # deny wins over allow, in any message
        (user("What is phishing?"), "prompt_blocked"),
        (user("Tell me a joke", "what is phishing"), "prompt_blocked"),
        # non-user messages are not checked by default
        (
            {"messages": [{"role": "system", "content": "hack"}, *user("what is x")["messages"]]},
            None,
        ),
        # nothing to check and allow patterns set: not allowed
        ({"messages": [{"role": "system", "content": "what is x"}]}, "prompt_not_allowed"),
    ],
)
def test_kongs_example_patterns(body: dict, code: str | None) -> None:
    assert verdict(body, allow_patterns=ALLOW, deny_patterns=DENY) == code


def test_deny_only() -> None:
    # Kong's "deny only" example: card numbers starting with 5
    deny = [r"\"card\".*\"5[0-9]{12}(?:[0-9]{3})?\""]
    assert verdict(user('{"card": "5105105105105100"}'), deny_patterns=deny) == "prompt_blocked"
    assert verdict(user('{"card": "4111111111111111"}'), deny_patterns=deny) is None
    # nothing to check: nothing denied
    assert verdict({"messages": [{"role": "system", "content": "x"}]}, deny_patterns=deny) is None


def test_allow_only() -> None:
    allow = [r".*\"card\".*\"4[0-9]{3}\*{12}\""]
    assert verdict(user('{"card": "4111************"}'), allow_patterns=allow) is None
    assert (
        verdict(user('{"card": "4111111111111111"}'), allow_patterns=allow) == "prompt_not_allowed"
    )


def test_history_on_and_off() -> None:
    body = user("how do i hack it", "what is a VPN?")
    assert verdict(body, deny_patterns=DENY) == "prompt_blocked"
    assert verdict(body, deny_patterns=DENY, allow_all_conversation_history=True) is None


def test_match_all_roles_blocks_on_a_system_message() -> None:
    body = {
        "messages": [{"role": "system", "content": "hack away"}, *user("what is x")["messages"]]
    }
    assert verdict(body, deny_patterns=DENY) is None
    assert verdict(body, deny_patterns=DENY, match_all_roles=True) == "prompt_blocked"


def test_multimodal_text_part_denied() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    {"type": "text", "text": "how do I hack this?"},
                ],
            }
        ]
    }
    assert verdict(body, deny_patterns=DENY) == "prompt_blocked"


def test_completions_prompt_list_every_item_checked() -> None:
    assert verdict({"prompt": ["what is x", "hack y"]}, deny_patterns=DENY) == "prompt_blocked"
    assert verdict({"prompt": ["what is x", "joke"]}, allow_patterns=ALLOW) == "prompt_not_allowed"


def test_the_verdict_names_the_message_and_pattern() -> None:
    c = conf(deny_patterns=DENY)
    v = pg.judge(pg.checked_texts(user("fine", "a phishing kit"), c), c, budget=1.0)
    assert v == pg.Verdict("prompt_blocked", "messages[1] (user)", "(?i).*phish.*")


# ------------------------------------------------------------------- catastrophic


EVIL = "(a+)+$"
LONG = "a" * 5000 + "b"


def test_a_catastrophic_pattern_runs_out_of_time_and_blocks() -> None:
    c = conf(deny_patterns=[EVIL])
    v = pg.judge(pg.checked_texts(user(LONG), c), c, budget=0.05)
    assert v == pg.Verdict("prompt_check_timeout", "messages[0] (user)", EVIL)


def test_the_budget_covers_every_match_of_the_request() -> None:
    c = conf(deny_patterns=["never"], allow_patterns=[EVIL])
    texts = pg.checked_texts(user("aaaa", LONG, "aaaa"), c)
    v = pg.judge(texts, c, budget=0.05)
    assert v is not None and v.code == "prompt_check_timeout" and v.where == "messages[1] (user)"
    # no time left at all: the first match already times out
    assert pg.judge(texts, c, budget=0.0) == pg.Verdict(
        "prompt_check_timeout", "messages[0] (user)", "never"
    )


async def test_long_prompts_are_matched_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "THREAD_BUDGET", 0.3)
    c = conf(deny_patterns=[EVIL])
    texts = pg.checked_texts(user("a" * pg.INLINE_CHARS + "b"), c)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    v = await pg.judge_request(texts, c)
    done = True
    await task
    assert v is not None and v.code == "prompt_check_timeout"
    assert ticks > 2  # the loop kept running while the pattern was being matched


async def test_short_prompts_are_matched_inline() -> None:
    c = conf(deny_patterns=DENY)
    assert (await pg.judge_request(pg.checked_texts(user("phish"), c), c)).code == "prompt_blocked"
    assert await pg.judge_request(pg.checked_texts(user("hello"), c), c) is None


# ------------------------------------------------------------------------- config


def config_yaml(config: Any) -> str:
    return route_config({"ai-prompt-guard": config}, service="svc", route="chat", path="/chat")


def load_with(config: Any):
    return load(config_yaml(config))


def test_defaults() -> None:
    c = conf(deny_patterns=["x"])
    assert c.allow_patterns is None
    assert c.allow_all_conversation_history is False
    assert c.match_all_roles is False
    assert c.llm_format == "openai"
    assert c.max_request_body_size == 10 * 1024 * 1024
    assert (pg.NAME, pg.PRIORITY, pg.CONSUMER_SCOPE) == ("ai-prompt-guard", 771, True)


@pytest.mark.parametrize(
    "config, problem",
    [
        ({}, "config: at least one of allow_patterns or deny_patterns is required"),
        ({"allow_patterns": [], "deny_patterns": []}, "at least one of allow_patterns"),
        (
            {"deny_patterns": ["ok", "(unclosed"]},
            "config.deny_patterns[1]: bad regex '(unclosed': missing ) at position 9",
        ),
        ({"allow_patterns": ["[a-"]}, "config.allow_patterns[0]: bad regex '[a-'"),
        ({"allow_patterns": ["a{2,1}"]}, "config.allow_patterns[0]: bad regex 'a{2,1}'"),
        (
            {"deny_patterns": [""]},
            "config.deny_patterns[0]: String should have at least 1 character",
        ),
        ({"deny_patterns": ["x" * 501]}, "config.deny_patterns[0]: String should have at most 500"),
        ({"deny_patterns": ["x"] * 11}, "config.deny_patterns: List should have at most 10 items"),
        (
            {
                "deny_patterns": ["x"],
                "match_all_roles": True,
                "allow_all_conversation_history": True,
            },
            "match_all_roles needs allow_all_conversation_history false",
        ),
        ({"deny_patterns": ["x"], "llm_format": "cohere"}, "llm_format: expected 'openai'"),
        ({"deny_patterns": ["x"], "max_request_body_size": 0}, "greater than 0"),
        ({"deny_patterns": ["x"], "deny_pattern": ["y"]}, "unknown field 'deny_pattern'"),
    ],
)
def test_bad_configs_are_load_errors(config: Any, problem: str) -> None:
    error = load_error(config_yaml(config))
    assert problem in error, error


def test_pcre_style_patterns_load() -> None:
    patterns = [r"(?i)\bpassword\b", r"(?<=card: )\d{4}", r"(?>a+)b", r"a++", r"\p{L}+\d"]
    cfg = load_with({"deny_patterns": patterns})
    assert route_named(cfg, "chat").plugin("ai-prompt-guard").deny_patterns == patterns


# -------------------------------------------------------------------------- addon


async def run(config: Any, body: bytes) -> tuple[Any, Call]:
    gw, flow, call = flow_with_call(load_with(config), "chat", body)
    await pg.Policy(gw).request(flow)
    return flow, call


async def test_a_blocked_prompt_gets_kongs_400(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "llmitm")
    flow, call = await run({"deny_patterns": DENY}, json.dumps(user("hack the planet")).encode())
    assert flow.response is not None and flow.response.status_code == 400
    assert json.loads(flow.response.content) == {
        "error": {
            "message": "bad request",
            "type": "invalid_request_error",
            "param": None,
            "code": "prompt_blocked",
        }
    }
    assert call.error is not None and call.error.status == 400 and call.error_source == "gateway"
    assert "messages[0] (user) matches deny pattern '(?i).*hack.*'" in caplog.text


async def test_not_allowed_prompt() -> None:
    flow, _ = await run({"allow_patterns": ALLOW}, json.dumps(user("tell me a joke")).encode())
    assert flow.response is not None and flow.response.status_code == 400
    assert json.loads(flow.response.content)["error"]["code"] == "prompt_not_allowed"


async def test_an_allowed_prompt_passes_untouched() -> None:
    raw = json.dumps(user("what is a VPN?")).encode()
    flow, call = await run({"allow_patterns": ALLOW, "deny_patterns": DENY}, raw)
    assert flow.response is None and call.error is None
    assert flow.request.content == raw


async def test_a_timeout_blocks_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "llmitm")
    flow, _ = await run({"deny_patterns": [EVIL]}, json.dumps(user(LONG)).encode())
    assert flow.response is not None and flow.response.status_code == 400
    err = json.loads(flow.response.content)["error"]
    assert err["code"] == "prompt_check_timeout"
    assert err["message"] == "bad request: the prompt could not be checked in time"
    assert "'(a+)+$' against messages[0] (user) ran out of time" in caplog.text


async def test_unreadable_request_is_a_400() -> None:
    flow, _ = await run({"deny_patterns": DENY}, b'{"input": "embed"}')
    assert flow.response is not None and flow.response.status_code == 400
    assert json.loads(flow.response.content)["error"]["code"] == "invalid_prompt"


async def test_a_body_over_max_request_body_size_is_a_413() -> None:
    body = json.dumps(user("x" * 100)).encode()
    flow, _ = await run({"deny_patterns": DENY, "max_request_body_size": 64}, body)
    assert flow.response is not None and flow.response.status_code == 413
