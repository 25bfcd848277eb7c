"""ai-prompt-guard (Kong's): allow and deny lists of regular expressions checked against
the prompts of chat and completions requests; a request that fails them gets 400.

What is checked: the text of every `user` message (all roles with `match_all_roles`),
or only the last user message with `allow_all_conversation_history`; for a
completions request, its `prompt` (a string or each string of a list). The text parts
of multimodal messages are checked (Kong refuses those requests); other parts (images,
audio, files) are not text and are not checked.

How: deny patterns first: any match in any checked message blocks. Then, when allow
patterns are set, every checked message must match at least one of them (Kong checks
the messages joined into one text, so one allowed message lets the others through).

Patterns are PCRE-style, compiled with the `regex` module when the config loads (a bad
one is a load error naming it). Each match runs with a time budget, so a pattern that
backtracks catastrophically on some prompt cannot stall the gateway: running out of
time blocks the request (logged), as a guard that cannot decide must not let through.
Long prompts are matched in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import regex
from pydantic import AfterValidator, Field, PrivateAttr, model_validator

from addons.policies.base import (
    PolicyAddon,
    deny,
    logged_path,
    max_request_body_size_field,
    read_body,
    refuse_request,
)
from providers.base import ProviderError
from providers.options import Strict

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.calls import Call

NAME = "ai-prompt-guard"
PRIORITY = 771
CONSUMER_SCOPE = True

log = logging.getLogger("llmitm")

#: Kong's answer to a blocked prompt (it does not tell the client why)
BLOCKED = "bad request"
TIMED_OUT = "bad request: the prompt could not be checked in time"

#: checked text up to this size is matched on the event loop, longer in a thread
INLINE_CHARS = 64 * 1024
#: time budget (seconds) for all the matches of one request, on the loop / in a thread
INLINE_BUDGET = 0.05
THREAD_BUDGET = 1.0


def _compiles(pattern: str) -> str:
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"bad regex {pattern!r}: {e}") from None
    return pattern


Pattern = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_compiles)]


class Config(Strict):
    """Kong's ai-prompt-guard `config`."""

    allow_patterns: list[Pattern] | None = Field(
        None,
        max_length=10,
        description="Regexes (PCRE-style, at most 10 of 1 to 500 characters): when set, "
        "every checked message must match at least one.",
    )
    deny_patterns: list[Pattern] | None = Field(
        None,
        max_length=10,
        description="Regexes (PCRE-style, at most 10 of 1 to 500 characters): a checked "
        "message that matches any is blocked. Checked before allow_patterns.",
    )
    allow_all_conversation_history: bool = Field(
        False,
        description="Check only the last user message, not the earlier ones of the conversation.",
    )
    match_all_roles: bool = Field(
        False,
        description="Check the messages of every role (system, assistant, ...), not only "
        "user messages. Needs allow_all_conversation_history false.",
    )
    max_request_body_size: int = max_request_body_size_field()
    llm_format: Literal["openai", "bedrock", "gemini"] = Field(
        "openai",
        description="The format of the requests: openai (chat `messages` or completions "
        "`prompt`), or gemini / bedrock for requests in that provider's own format "
        "(ai-proxy's llm_format).",
    )
    _allow: list[regex.Pattern[str]] = PrivateAttr(default_factory=list)
    _deny: list[regex.Pattern[str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.allow_patterns and not self.deny_patterns:
            raise ValueError("at least one of allow_patterns or deny_patterns is required")
        if self.match_all_roles and self.allow_all_conversation_history:
            raise ValueError(
                "match_all_roles needs allow_all_conversation_history false (the last "
                "user message is the only one checked otherwise)"
            )
        self._allow = [regex.compile(p) for p in self.allow_patterns or ()]
        self._deny = [regex.compile(p) for p in self.deny_patterns or ()]
        return self


# ------------------------------------------------------------------ what is checked


@dataclass(frozen=True, slots=True)
class Checked:
    """One text the patterns are checked against, and where it is in the request."""

    where: str  # e.g. "messages[2] (user)"
    text: str


def _invalid(message: str) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", "invalid_prompt")


def _openai_text(content: Any, where: str) -> str | None:
    """The text of an OpenAI message's content: a string, or the text parts of a list."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if part.get("type") in ("text", "input_text"):
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise _invalid(f"{where}.content[{j}] is a text part without a text")
                    texts.append(text)
            else:
                raise _invalid(f"{where}.content[{j}] must be an object")
        return "\n".join(texts)
    raise _invalid(f"{where}.content must be a string or a list of parts")


def _parts_text(parts: Any, where: str) -> str | None:
    """The text of a Gemini `parts` list or a Bedrock `content` list."""
    if isinstance(parts, dict):
        parts = [parts]
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise _invalid(f"{where} must be a list of parts")
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(texts) if texts else None


def _select(turns: list[tuple[str, str, str | None]], conf: Config) -> Iterator[Checked]:
    """The (where, role, text) turns that are checked under `conf`."""
    if conf.allow_all_conversation_history:
        for where, role, text in reversed(turns):
            if role == "user":
                if text is not None:
                    yield Checked(where, text)
                return
        return
    for where, role, text in turns:
        if text is not None and (role == "user" or conf.match_all_roles):
            yield Checked(where, text)


def _openai_checked(body: dict[str, Any], conf: Config) -> list[Checked]:
    messages = body.get("messages")
    if isinstance(messages, list):
        turns = []
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _invalid(f"{where} must be an object with a string 'role'")
            role = m["role"]
            wanted = role == "user" or conf.match_all_roles
            text = _openai_text(m.get("content"), where) if wanted else None
            turns.append((f"{where} ({role})", role, text))
        return list(_select(turns, conf))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [Checked("prompt", prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [Checked(f"prompt[{i}]", p) for i, p in enumerate(prompt)]
        raise _invalid("a prompt given as token ids cannot be checked: send it as text")
    raise _invalid(
        "this LLM route only accepts llm/v1/chat messages or a llm/v1/completions prompt"
    )


def _gemini_checked(body: dict[str, Any], conf: Config) -> list[Checked]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _invalid("the request has no 'contents' to check")
    turns: list[tuple[str, str, str | None]] = []
    for field in ("systemInstruction", "system_instruction"):
        system = body.get(field)
        if isinstance(system, dict):
            turns.append((field, "system", _parts_text(system.get("parts"), f"{field}.parts")))
    for i, c in enumerate(contents):
        if not isinstance(c, dict):
            raise _invalid(f"contents[{i}] must be an object")
        role = c.get("role") or "user"
        role = "assistant" if role == "model" else role
        turns.append(
            (f"contents[{i}] ({role})", role, _parts_text(c.get("parts"), f"contents[{i}].parts"))
        )
    return list(_select(turns, conf))


def _bedrock_checked(body: dict[str, Any], conf: Config) -> list[Checked]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("the request has no 'messages' to check")
    turns: list[tuple[str, str, str | None]] = []
    system = body.get("system")
    if isinstance(system, list):
        turns.append(("system", "system", _parts_text(system, "system")))
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _invalid(f"messages[{i}] must be an object with a string 'role'")
        role = m["role"]
        turns.append(
            (f"messages[{i}] ({role})", role, _parts_text(m.get("content"), f"messages[{i}]"))
        )
    return list(_select(turns, conf))


_FORMATS = {"openai": _openai_checked, "gemini": _gemini_checked, "bedrock": _bedrock_checked}


def checked_texts(body: dict[str, Any], conf: Config) -> list[Checked]:
    """What the patterns are checked against (raises a 400 ProviderError when the
    request has no prompt this guard can read)."""
    return _FORMATS[conf.llm_format](body, conf)


# ------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a request is blocked (None: it passes)."""

    code: str  # prompt_blocked, prompt_not_allowed or prompt_check_timeout
    where: str  # the message that decided
    pattern: str | None  # the pattern that matched or timed out


def judge(
    texts: list[Checked], conf: Config, budget: float, concurrent: bool = False
) -> Verdict | None:
    """Check `texts` against the patterns: deny first, then allow. Every match shares
    `budget` seconds; running out blocks (prompt_check_timeout)."""
    deadline = time.monotonic() + budget
    current: tuple[str, str] = ("", "")

    def found(pattern: regex.Pattern[str], text: str) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return pattern.search(text, timeout=left, concurrent=concurrent) is not None

    try:
        for item in texts:
            for p in conf._deny:
                current = (item.where, p.pattern)
                if found(p, item.text):
                    return Verdict("prompt_blocked", item.where, p.pattern)
        if conf._allow:
            if not texts:
                return Verdict("prompt_not_allowed", "the request", None)
            for item in texts:
                matched = False
                for p in conf._allow:
                    current = (item.where, p.pattern)
                    if found(p, item.text):
                        matched = True
                        break
                if not matched:
                    return Verdict("prompt_not_allowed", item.where, None)
    except TimeoutError:
        return Verdict("prompt_check_timeout", current[0], current[1])
    return None


async def judge_request(texts: list[Checked], conf: Config) -> Verdict | None:
    """`judge`, on the event loop for short texts and in a worker thread (the `regex`
    module releases the GIL) for long ones."""
    size = sum(len(t.text) for t in texts)
    if size <= INLINE_CHARS:
        return judge(texts, conf, INLINE_BUDGET)
    return await asyncio.to_thread(judge, texts, conf, THREAD_BUDGET, True)


def block(flow: http.HTTPFlow, call: Call, verdict: Verdict) -> None:
    """Refuse the request as Kong does (400, "bad request"), and log why."""
    if verdict.code == "prompt_check_timeout":
        log.warning(
            "%s: matching %r against %s ran out of time; request %s %s blocked",
            NAME,
            verdict.pattern,
            verdict.where,
            flow.request.method,
            logged_path(flow, call),
        )
        message = TIMED_OUT
    else:
        why = (
            f"matches deny pattern {verdict.pattern!r}"
            if verdict.code == "prompt_blocked"
            else "matches no allow pattern"
        )
        log.info(
            "%s: %s %s blocked: %s %s",
            NAME,
            flow.request.method,
            logged_path(flow, call),
            verdict.where,
            why,
        )
        message = BLOCKED
    deny(flow, call, 400, message, code=verdict.code)


class Policy(PolicyAddon):
    """Checks the prompts, after the template and decorator and before ai-proxy."""

    name = "llmitm-ai-prompt-guard"
    plugin = NAME

    async def request(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        try:
            body = read_body(flow, call, conf.max_request_body_size, NAME)
            texts = checked_texts(body, conf)
        except ProviderError as e:
            refuse_request(flow, call, NAME, e)
            return
        verdict = await judge_request(texts, conf)
        if verdict is not None:
            block(flow, call, verdict)
