"""ai-prompt-decorator (Kong's): messages the gateway adds before and after the client's
own in every chat request (a system prompt, a closing instruction).

`prompts.prepend` go first, in their order, before the client's first message (its own
system message included); `prompts.append` go last. The request must be a chat: a body
without a non-empty message list gets 400.

With `llm_format: gemini` or `bedrock` the request is in that provider's own format
(ai-proxy's `llm_format` passthrough) and is decorated in it: system prompts go into
`systemInstruction` / `system`, user and assistant prompts become turns, and a turn next
to one of the same role is merged into it (those APIs want turns to alternate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from addons.policies.base import (
    PolicyAddon,
    max_request_body_size_field,
    read_body,
    refuse_request,
    set_json_body,
)
from providers.base import ProviderError
from providers.options import Strict

if TYPE_CHECKING:
    from mitmproxy import http

NAME = "ai-prompt-decorator"
PRIORITY = 772
CONSUMER_SCOPE = True

NOT_A_CHAT = "this LLM route only supports llm/chat type requests"


class Prompt(Strict):
    """One message to add."""

    role: Literal["system", "assistant", "user"] = Field(
        "system", description="The message's role: system, assistant or user."
    )
    content: str = Field(
        min_length=1, max_length=500, description="The message's text (1 to 500 characters)."
    )


class Prompts(Strict):
    prepend: list[Prompt] | None = Field(
        None,
        max_length=15,
        description="Messages inserted before the client's messages, in this order (at most 15).",
    )
    append: list[Prompt] | None = Field(
        None,
        max_length=15,
        description="Messages inserted after the client's messages, in this order (at most 15).",
    )


class Config(Strict):
    """Kong's ai-prompt-decorator `config`."""

    prompts: Prompts | None = Field(
        None, description="The messages to add: `prepend` and/or `append`."
    )
    max_request_body_size: int = max_request_body_size_field()
    llm_format: Literal["openai", "bedrock", "gemini"] = Field(
        "openai",
        description="The format of the requests: openai (chat `messages`), or gemini / "
        "bedrock for requests in that provider's own format (ai-proxy's llm_format).",
    )

    @model_validator(mode="after")
    def _something_to_add(self) -> Config:
        if self.prompts is None or not (self.prompts.prepend or self.prompts.append):
            raise ValueError("prompts.prepend or prompts.append must hold at least one message")
        return self


# ---------------------------------------------------------------------------- formats


def _chat_turns(body: dict[str, Any], key: str) -> list[Any]:
    """The request's turns under `key`: a non-empty list, or the request is not a chat
    (a 400 ProviderError)."""
    turns = body.get(key)
    if not isinstance(turns, list) or not turns:
        raise _not_a_chat()
    return turns


def _system_parts(
    prepend: list[Prompt], append: list[Prompt]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The system prompts as text parts: those that go before the request's own system
    text, and those that go after it (Gemini and Bedrock keep them out of the turns)."""
    before = [_text_part(p.content) for p in prepend if p.role == "system"]
    after = [_text_part(p.content) for p in append if p.role == "system"]
    return before, after


def _openai(body: dict[str, Any], prepend: list[Prompt], append: list[Prompt]) -> dict[str, Any]:
    messages = _chat_turns(body, "messages")
    added = [{"role": p.role, "content": p.content} for p in prepend]
    added += messages
    added += [{"role": p.role, "content": p.content} for p in append]
    return {**body, "messages": added}


def _turns(
    turns: list[Any],
    prepend: list[Prompt],
    append: list[Prompt],
    role_of: dict[str, str],
    key: str,
    part: Any,
) -> list[Any]:
    """`turns` with the user and assistant prompts added; a prompt next to a turn of
    the same role (or to another prompt of it) joins that turn."""
    out = [dict(t) if isinstance(t, dict) else t for t in turns]

    def merge(at: int, role: str, text: str, first: bool) -> bool:
        t = out[at] if 0 <= at < len(out) else None
        if isinstance(t, dict) and t.get("role", "user") == role and isinstance(t.get(key), list):
            t[key] = [part(text), *t[key]] if first else [*t[key], part(text)]
            return True
        return False

    for p in reversed([p for p in prepend if p.role != "system"]):
        role = role_of[p.role]
        if not merge(0, role, p.content, True):
            out.insert(0, {"role": role, key: [part(p.content)]})
    for p in append:
        if p.role == "system":
            continue
        role = role_of[p.role]
        if not merge(len(out) - 1, role, p.content, False):
            out.append({"role": role, key: [part(p.content)]})
    return out


def _gemini(body: dict[str, Any], prepend: list[Prompt], append: list[Prompt]) -> dict[str, Any]:
    contents = _chat_turns(body, "contents")
    out = dict(body)
    out["contents"] = _turns(
        contents, prepend, append, {"user": "user", "assistant": "model"}, "parts", _text_part
    )
    before, after = _system_parts(prepend, append)
    if before or after:
        field = "system_instruction" if "system_instruction" in body else "systemInstruction"
        current = body.get(field)
        parts = current.get("parts") if isinstance(current, dict) else None
        if isinstance(parts, list):
            out[field] = {**current, "parts": [*before, *parts, *after]}
        elif isinstance(current, dict) and isinstance(parts, dict):  # one part, not a list
            out[field] = {**current, "parts": [*before, parts, *after]}
        else:
            out[field] = {"parts": [*before, *after]}
    return out


def _bedrock(body: dict[str, Any], prepend: list[Prompt], append: list[Prompt]) -> dict[str, Any]:
    messages = _chat_turns(body, "messages")
    out = dict(body)
    out["messages"] = _turns(
        messages, prepend, append, {"user": "user", "assistant": "assistant"}, "content", _text_part
    )
    before, after = _system_parts(prepend, append)
    if before or after:
        system = body.get("system")
        out["system"] = [*before, *(system if isinstance(system, list) else []), *after]
    return out


def _text_part(text: str) -> dict[str, str]:
    return {"text": text}


def _not_a_chat() -> ProviderError:
    return ProviderError(400, NOT_A_CHAT, "invalid_request_error", "not_a_chat_request")


_FORMATS = {"openai": _openai, "gemini": _gemini, "bedrock": _bedrock}


def decorate(body: dict[str, Any], conf: Config) -> dict[str, Any]:
    """The request body with the configured messages added (a new object; raises a 400
    ProviderError when the request is not a chat)."""
    assert conf.prompts is not None
    return _FORMATS[conf.llm_format](body, conf.prompts.prepend or [], conf.prompts.append or [])


class Policy(PolicyAddon):
    """Adds the configured messages, after the template and before the guard."""

    name = "llmitm-ai-prompt-decorator"
    plugin = NAME

    def request(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        try:
            body = read_body(flow, call, conf.max_request_body_size, NAME)
            decorated = decorate(body, conf)
        except ProviderError as e:
            refuse_request(flow, call, NAME, e)
            return
        set_json_body(flow, call, decorated)
