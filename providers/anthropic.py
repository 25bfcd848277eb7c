"""Anthropic: the Messages API (and the legacy Text Completions API) behind OpenAI's formats.

Chat (`llm/v1/chat`) goes to `POST /v1/messages`, completions (`llm/v1/completions`) to
the legacy `POST /v1/complete` as Kong does, `preserve` passes through untouched. Every
request carries `anthropic-version: <model.options.anthropic_version>` (required at
load); the gateway adds the route's `x-api-key`.

Conventions where OpenAI's format has no slot for what Anthropic does:

- **max_tokens** is required by Anthropic: the request's `max_completion_tokens` or
  `max_tokens` (the route's `options.max_tokens` is already in the body), else
  `DEFAULT_MAX_TOKENS`. With thinking on, Anthropic needs `max_tokens` above the thinking
  budget: when it is not, it becomes `budget + DEFAULT_MAX_TOKENS`.
- **Thinking** is turned on by OpenAI's `reasoning_effort` (`THINKING_BUDGETS`; "none" and
  "minimal" leave it off) or by an Anthropic-style `thinking` object in the body, sent
  as written (it wins over `reasoning_effort`). With thinking on, Anthropic rejects
  sampling changes, so `temperature` (unless 1), `top_k`, and a `top_p` below 0.95 are
  not sent.
- **Thinking blocks round trip.** An answer's assistant message carries the thinking text
  as `reasoning_content` and the blocks themselves, signatures included, as
  `thinking_blocks: [{"type": "thinking", "thinking": ..., "signature": ...}]` (and
  `{"type": "redacted_thinking", "data": ...}`). A client that sends an assistant message
  back with its `thinking_blocks` gets them sent, unchanged and first, in that assistant
  turn, as Anthropic requires for tool use with thinking. Streamed, thinking text arrives
  as `delta.reasoning_content`, and each block, once complete (its signature arrives
  last), as one `delta.thinking_blocks: [block]`.
- **Messages**: `system` and `developer` messages (wherever they are) become the top-level
  `system`; `tool` messages become `tool_result` blocks of a user turn; consecutive
  same-role turns are merged (Anthropic needs alternating roles), so tool results and
  the user message after them form one turn. A part's `cache_control` is kept (prompt
  caching); tools that are not `type: function` (Anthropic's server tools) pass as given.
- **stop**: whitespace-only stop sequences (such as "\\n") are not sent: Anthropic rejects
  them, and a call that ignores one is more useful than a call that fails.
- **stop_reason -> finish_reason**: end_turn, stop_sequence and pause_turn (a server tool
  loop paused; the client may continue the turn) -> stop; max_tokens and
  model_context_window_exceeded -> length; tool_use -> tool_calls; refusal ->
  content_filter.
- **Usage**: `prompt_tokens` counts every input token: `input_tokens` plus cache reads and
  cache writes, which are also reported on their own.
- **Legacy completions**: a prompt is wrapped as `"\\n\\nHuman: {prompt}\\n\\nAssistant:"`
  unless it already starts with `"\\n\\nHuman:"`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import orjson

from providers import sse
from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    Reply,
    RouteType,
    UpstreamRequest,
    Usage,
    as_int,
    compact_json,
    generic_error,
    join_url,
    json_body,
    preserve_url,
)

#: max_tokens sent when neither the client nor the route set one (Anthropic requires it)
DEFAULT_MAX_TOKENS = 4096

#: thinking budget (tokens) per OpenAI `reasoning_effort`; None: thinking off
THINKING_BUDGETS: dict[str, int | None] = {
    "none": None,
    "minimal": None,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
}

#: Anthropic `stop_reason` -> OpenAI `finish_reason` (see the module docstring)
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: HTTP status of each Anthropic error type (for errors that arrive inside a stream)
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

PATHS = {RouteType.CHAT: "/v1/messages", RouteType.COMPLETIONS: "/v1/complete"}

_DATA_URI = re.compile(
    r"data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)", re.S
)
_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"


def _bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _finish(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_anthropic(u: Any) -> Usage | None:
    """Anthropic's `usage` object as a normalized Usage (prompt tokens include cached
    ones), or None when it reports no token count at all."""
    if not isinstance(u, dict):
        return None
    keys = (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    )
    if not any(isinstance(u.get(k), int) and not isinstance(u.get(k), bool) for k in keys):
        return None
    read = as_int(u.get("cache_read_input_tokens"))
    write = as_int(u.get("cache_creation_input_tokens"))
    return Usage(
        prompt_tokens=as_int(u.get("input_tokens")) + read + write,
        completion_tokens=as_int(u.get("output_tokens")),
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def error_from_anthropic(status: int | None, data: Any) -> ProviderError | None:
    """`{"type": "error", "error": {"type", "message"}}` (or without the outer type) as a
    ProviderError; None if `data` is not of that shape. Without a status (an error event
    in a stream), the status is the one Anthropic uses for that error type."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        return None
    kind = err.get("type") if isinstance(err.get("type"), str) else "api_error"
    if status is None:
        status = ERROR_STATUS.get(kind, 502)
    return ProviderError(status, err["message"], kind)


# ------------------------------------------------------------------ requests


def _text_of(content: Any, where: str) -> list[dict[str, Any]]:
    """Text blocks of a system/tool message's content (a string or text parts)."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of parts", "messages")
    blocks = []
    for part in content:
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _bad(f"'{where}' may only hold text parts, not {kind!r}", "messages")
        if part.get("text"):
            blocks.append(_with_cache({"type": "text", "text": str(part["text"])}, part))
    return blocks


def _with_cache(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise _bad(f"'{where}.image_url' needs a 'url'", "messages")
    if url.startswith("data:"):
        m = _DATA_URI.fullmatch(url)
        if not m or ";base64" not in m["params"] or not m["media"]:
            raise _bad(
                f"'{where}.image_url' must be a base64 data URI (data:image/png;base64,...)",
                "messages",
            )
        # `image/jpg` is common in data URIs, but Anthropic knows only `image/jpeg`
        media = "image/jpeg" if m["media"].lower() == "image/jpg" else m["media"]
        source = {"type": "base64", "media_type": media, "data": m["data"]}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise _bad(f"'{where}.image_url' must be an http(s) URL or a data URI", "messages")
    return _with_cache({"type": "image", "source": source}, part)


def _file(part: dict[str, Any], where: str) -> dict[str, Any]:
    ref = part.get("file") if isinstance(part.get("file"), dict) else {}
    data = ref.get("file_data")
    m = _DATA_URI.fullmatch(data) if isinstance(data, str) else None
    if not m or ";base64" not in m["params"] or not m["media"]:
        raise _bad(
            f"'{where}.file' needs 'file_data' as a base64 data URI "
            "(file ids are OpenAI's, not Anthropic's)",
            "messages",
        )
    source = {"type": "base64", "media_type": m["media"], "data": m["data"]}
    return _with_cache({"type": "document", "source": source}, part)


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str):
            if part:
                blocks.append({"type": "text", "text": part})
        elif kind in ("text", "input_text"):
            if part.get("text"):
                blocks.append(_with_cache({"type": "text", "text": str(part["text"])}, part))
        elif kind == "image_url":
            blocks.append(_image(part, at))
        elif kind == "file":
            blocks.append(_file(part, at))
        elif kind in ("image", "document") and isinstance(part.get("source"), dict):
            blocks.append(part)  # already Anthropic's shape
        else:
            raise _bad(f"'{at}': content part type {kind!r} is not supported by Anthropic")
    return blocks


def _assistant_content(m: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    thinking = m.get("thinking_blocks")
    for j, block in enumerate(thinking or ()):
        if not isinstance(block, dict) or block.get("type") not in (
            "thinking",
            "redacted_thinking",
        ):
            raise _bad(
                f"'{where}.thinking_blocks[{j}]' must be a thinking or redacted_thinking block",
                "messages",
            )
        # only Anthropic's own fields (a streamed block also carries its `index`)
        if block["type"] == "thinking":
            keep = {"type": "thinking", "thinking": block.get("thinking", "")}
            if "signature" in block:
                keep["signature"] = block["signature"]
        else:
            keep = {"type": "redacted_thinking", "data": block.get("data")}
        blocks.append(keep)
    content = m.get("content")
    tool_calls = m.get("tool_calls") or []
    if isinstance(content, str) and not blocks and not tool_calls:
        return content
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                part = {"type": "text", "text": part}
            if isinstance(part, dict):
                text = part.get("text") if part.get("type") != "refusal" else part.get("refusal")
                if text:
                    blocks.append(_with_cache({"type": "text", "text": str(text)}, part))
    if not isinstance(tool_calls, list):
        raise _bad(f"'{where}.tool_calls' must be an array", "messages")
    for j, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"'{at}' needs a 'function' with a 'name'", "messages")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise _bad(f"'{at}' needs an 'id'", "messages")
        args = fn.get("arguments")
        if args is None or (isinstance(args, str) and not args.strip()):
            parsed: Any = {}
        elif isinstance(args, dict):
            parsed = args
        else:
            try:
                parsed = json.loads(args)
            except (TypeError, ValueError):
                parsed = None
        if not isinstance(parsed, dict):
            raise _bad(
                f"'{at}' (tool call {call['id']!r} to {fn['name']!r}): 'function.arguments' "
                "must be a JSON object, Anthropic needs the tool input as an object",
                "messages",
            )
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"], "input": parsed})
    return blocks


def _tool_result(m: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"'{where}' (role tool) needs a 'tool_call_id'", "messages")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = m.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content:
        block["content"] = _text_of(content, where)
    return block


def _append(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    """Add a turn, merging it into the previous one if that has the same role."""
    if not content:
        return  # Anthropic rejects empty turns; dropping one lets its neighbours merge
    if turns and turns[-1]["role"] == role:
        prev = turns[-1]["content"]
        if isinstance(prev, str):
            prev = [{"type": "text", "text": prev}]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        turns[-1]["content"] = prev + content
        return
    turns.append({"role": role, "content": content})


def convert_messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI `messages` -> (system text blocks, Anthropic messages)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", "messages")
        role = m.get("role")
        if role in ("system", "developer"):
            system += _text_of(m.get("content"), where)
        elif role == "user":
            _append(turns, "user", _user_content(m.get("content"), where))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_content(m, where))
        elif role == "tool":
            _append(turns, "user", [_tool_result(m, where)])
        else:
            raise _bad(f"'{where}': role {role!r} is not supported by Anthropic", "messages")
    return system, turns


def _tools(body: dict[str, Any]) -> tuple[list[Any] | None, dict[str, Any] | None]:
    tools = body.get("tools")
    if not tools:
        return None, None
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    out: list[Any] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"'tools[{i}]' must be an object", "tools")
        if tool.get("type") != "function":
            out.append(tool)  # an Anthropic server tool (web_search, ...), as given
            continue
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"'tools[{i}].function' needs a 'name'", "tools")
        params = fn.get("parameters")
        converted: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            converted["description"] = fn["description"]
        converted["input_schema"] = (
            params if isinstance(params, dict) and params else {"type": "object", "properties": {}}
        )
        out.append(_with_cache(converted, tool))

    choice: dict[str, Any] | None
    tc = body.get("tool_choice")
    if tc is None:
        choice = None
    elif tc == "auto":
        choice = {"type": "auto"}
    elif tc == "required":
        choice = {"type": "any"}
    elif tc == "none":
        choice = {"type": "none"}
    elif isinstance(tc, dict) and tc.get("type") == "function":
        name = (tc.get("function") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise _bad("'tool_choice.function' needs a 'name'", "tool_choice")
        choice = {"type": "tool", "name": name}
    elif isinstance(tc, dict) and tc.get("type") in ("auto", "any", "tool", "none"):
        choice = dict(tc)  # already Anthropic's shape
    else:
        raise _bad(
            "'tool_choice' must be 'auto', 'required', 'none' or a named function", "tool_choice"
        )
    if body.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out, choice


def thinking_config(body: dict[str, Any]) -> dict[str, Any] | None:
    """Claude's `thinking` object for an OpenAI request (also used for Claude on Bedrock):
    an Anthropic-style `thinking` in the body as written, else one from
    `reasoning_effort`; None when thinking stays off."""
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str):
            raise _bad(
                '\'thinking\' must be an object such as {"type": "enabled", "budget_tokens": 2048}',
                "thinking",
            )
        return thinking
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in THINKING_BUDGETS:
        known = ", ".join(THINKING_BUDGETS)
        raise _bad(f"'reasoning_effort' must be one of: {known}", "reasoning_effort")
    budget = THINKING_BUDGETS[effort]
    return {"type": "enabled", "budget_tokens": budget} if budget else None


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return None
    # Anthropic rejects whitespace-only stop sequences ("\n" is a common OpenAI one): they
    # are not sent, rather than failing the call
    found = [s for s in stop if isinstance(s, str) and s.strip()]
    return found or None


def _max_tokens(body: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS


def messages_body(spec: CallSpec) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat request."""
    body = spec.body
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array", "messages")
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        raise _bad("Anthropic answers with one choice: 'n' must be 1", "n")
    system, turns = convert_messages(messages)
    out: dict[str, Any] = {"model": spec.model or body.get("model"), "messages": turns}
    if system:
        if any("cache_control" in b for b in system):
            out["system"] = system
        else:
            out["system"] = "\n\n".join(b["text"] for b in system)
    max_tokens = _max_tokens(body)
    thinking = thinking_config(body)
    budget = as_int((thinking or {}).get("budget_tokens")) if thinking else 0
    if budget and max_tokens <= budget:
        max_tokens = budget + DEFAULT_MAX_TOKENS
    out["max_tokens"] = max_tokens
    thinking_on = bool(thinking) and thinking.get("type") != "disabled"
    for key in ("temperature", "top_p", "top_k"):
        value = body.get(key)
        if value is None:
            continue
        if thinking_on and (
            (key == "temperature" and value != 1)
            or key == "top_k"
            or (key == "top_p" and value < 0.95)
        ):
            continue  # Anthropic rejects these with thinking on
        out[key] = value
    stop = _stop(body)
    if stop:
        out["stop_sequences"] = stop
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    tools, choice = _tools(body)
    if tools:
        out["tools"] = tools
        if choice:
            out["tool_choice"] = choice
    if thinking:
        out["thinking"] = thinking
    if spec.stream:
        out["stream"] = True
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("'prompt' must be one string for Anthropic", "prompt")
    if prompt.startswith(_HUMAN):
        return prompt
    return f"{_HUMAN} {prompt}{_ASSISTANT}"


def complete_body(spec: CallSpec) -> dict[str, Any]:
    """The legacy Text Completions body for an OpenAI completions request (Kong's shape)."""
    body = spec.body
    out: dict[str, Any] = {
        "model": spec.model or body.get("model"),
        "prompt": _prompt(body),
        "max_tokens_to_sample": _max_tokens(body),
    }
    stop = _stop(body)
    if stop:
        out["stop_sequences"] = stop
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if spec.stream:
        out["stream"] = True
    return out


# ------------------------------------------------------------------ answers


def message_to_openai(data: dict[str, Any]) -> dict[str, Any]:
    """The assistant message of a Messages API answer (its `content` list) in OpenAI's shape."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": compact_json(block.get("input") or {}),
                    },
                }
            )
        elif kind == "thinking":
            text = block.get("thinking") if isinstance(block.get("thinking"), str) else ""
            reasoning.append(text)
            thinking_blocks.append(
                {"type": "thinking", "thinking": text, "signature": block.get("signature")}
            )
        elif kind == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data")})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        message["thinking_blocks"] = thinking_blocks
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError(502, f"anthropic: the upstream {what} is not a JSON object")
    return data


# ------------------------------------------------------------------ streams


class _Stream:
    """What both stream translators share: SSE decoding, the chunk head, the end."""

    object = "chat.completion.chunk"

    def __init__(self, spec: CallSpec, id_prefix: str) -> None:
        self._dec = sse.SSEDecoder()
        self._wants_usage = spec.client_wants_usage
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        # Every chunk carries these; `id` and `model` come from the upstream when it
        # says them (Anthropic reports no creation time: the translator's own is used).
        self.id = _new_id(id_prefix)
        self.model: str | None = spec.model
        self.created = int(time.time())
        self._complete = False  # the upstream said the answer is whole
        self._ended = False  # an error event was sent: nothing more goes out
        self.finish_reason: str | None = None

    # ---- protocol

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.feed(data):
            self._event(ev, out)
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.flush():
            if error is not None and not _is_json(ev.data):
                continue  # half an event, cut by the failure
            self._event(ev, out)
        if not self._ended and not self._complete:
            # After a whole answer a late failure is not reported: the client has it all.
            self._fail(
                error
                or ProviderError(
                    502,
                    "anthropic: the upstream stream ended before the answer was complete",
                    "api_error",
                    "upstream_truncated",
                ),
                out,
            )
        out.append(sse.DONE)
        return out

    # ---- helpers

    def _event(self, ev: sse.SSEEvent, out: list[bytes]) -> None:
        if self._ended or self._complete:
            return  # after an error, or after the whole answer: nothing more goes out
        try:
            obj = orjson.loads(ev.data) if ev.data else None
        except ValueError:
            obj = None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, str):
            kind = ev.event
        if kind == "error":
            err = error_from_anthropic(None, obj)
            if err is None:
                text = ev.data if isinstance(ev.data, str) and ev.data else "upstream stream error"
                err = ProviderError(502, text, "api_error")
            self._fail(err, out)
            return
        if isinstance(obj, dict):
            self._handle(kind, obj, out)

    def _handle(self, kind: str | None, obj: dict[str, Any], out: list[bytes]) -> None:
        raise NotImplementedError

    def _fail(self, err: ProviderError, out: list[bytes]) -> None:
        self.error = err
        self._ended = True
        out.append(sse.encode(err.to_openai()))

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _usage_chunk(self, out: list[bytes]) -> None:
        if self._wants_usage and self.usage is not None:
            out.append(self._chunk([], usage=self.usage.to_openai()))


def _is_json(data: str) -> bool:
    try:
        orjson.loads(data)
    except ValueError:
        return False
    return True


class AnthropicStream(_Stream):
    """Messages API SSE -> OpenAI `chat.completion.chunk` SSE, event by event.

    Content blocks are told apart by Anthropic's block index; a tool call's OpenAI
    `index` is its position among the message's tool calls.
    """

    def __init__(self, spec: CallSpec) -> None:
        super().__init__(spec, "msg")
        self._blocks: dict[int, dict[str, Any]] = {}
        self._order: list[int] = []  # block indexes in arrival order
        self._tools = 0
        self._thinking_sent = 0  # thinking blocks streamed so far
        self._input = [0, 0, 0]  # input, cache read, cache write tokens
        self._output = 0
        self._has_usage = False
        self._finished = False  # the finish_reason chunk went out

    def _delta(self, delta: dict[str, Any], out: list[bytes], content: bool = True) -> None:
        if content:
            self.started = True
        out.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def _set_usage(self, u: Any) -> None:
        if not isinstance(u, dict):
            return
        # message_delta's counts are cumulative: each one given replaces the last
        for i, key in enumerate(
            ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        ):
            if isinstance(u.get(key), int):
                self._input[i] = as_int(u[key])
                self._has_usage = True
        if isinstance(u.get("output_tokens"), int):
            self._output = as_int(u["output_tokens"])
            self._has_usage = True
        if self._has_usage:
            inp, read, write = self._input
            self.usage = Usage(inp + read + write, self._output, read, write)

    def _handle(self, kind: str | None, obj: dict[str, Any], out: list[bytes]) -> None:
        if kind == "message_start":
            message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
            if isinstance(message.get("id"), str):
                self.id = message["id"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self._set_usage(message.get("usage"))
            self._delta({"role": "assistant", "content": ""}, out, content=False)
        elif kind == "content_block_start":
            self._block_start(obj, out)
        elif kind == "content_block_delta":
            self._block_delta(obj, out)
        elif kind == "content_block_stop":
            self._block_stop(obj, out)
        elif kind == "message_delta":
            self._set_usage(obj.get("usage"))
            delta = obj.get("delta") if isinstance(obj.get("delta"), dict) else {}
            if delta.get("stop_reason") is not None:
                self._finish_chunk(_finish(delta.get("stop_reason")), out)
        elif kind == "message_stop":
            if not self._finished:
                self._finish_chunk("stop", out)
            self._usage_chunk(out)
            self._complete = True

    def _finish_chunk(self, reason: str, out: list[bytes]) -> None:
        self.finish_reason = reason
        self._finished = True
        out.append(self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}]))

    def _block_start(self, obj: dict[str, Any], out: list[bytes]) -> None:
        index, block = obj.get("index"), obj.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return
        kind = block.get("type")
        state: dict[str, Any] = {"type": kind, "parts": []}
        self._blocks[index] = state
        self._order.append(index)
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                state["parts"].append(text)
                self._delta({"content": text}, out)
        elif kind == "tool_use":
            state.update(
                tool=self._tools,
                id=block.get("id"),
                name=block.get("name"),
                input=block.get("input"),
            )
            self._tools += 1
            call = {
                "index": state["tool"],
                "id": state["id"],
                "type": "function",
                "function": {"name": state["name"], "arguments": ""},
            }
            self._delta({"tool_calls": [call]}, out)
        elif kind == "thinking":
            text = block.get("thinking")
            signature = block.get("signature")
            state["signature"] = signature if isinstance(signature, str) else ""
            if isinstance(text, str) and text:
                state["parts"].append(text)
                self._delta({"reasoning_content": text}, out)
        elif kind == "redacted_thinking":
            state["data"] = block.get("data")

    def _state(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        index = obj.get("index")
        return self._blocks.get(index) if isinstance(index, int) else None

    def _block_delta(self, obj: dict[str, Any], out: list[bytes]) -> None:
        state = self._state(obj)
        delta = obj.get("delta")
        if state is None or not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta" and state["type"] == "text":
            text = delta.get("text")
            if isinstance(text, str) and text:
                state["parts"].append(text)
                self._delta({"content": text}, out)
        elif kind == "input_json_delta" and state["type"] == "tool_use":
            frag = delta.get("partial_json")
            if isinstance(frag, str) and frag:
                state["parts"].append(frag)
                call = {"index": state["tool"], "function": {"arguments": frag}}
                self._delta({"tool_calls": [call]}, out)
        elif kind == "thinking_delta" and state["type"] == "thinking":
            text = delta.get("thinking")
            if isinstance(text, str) and text:
                state["parts"].append(text)
                self._delta({"reasoning_content": text}, out)
        elif (
            kind == "signature_delta"
            and state["type"] == "thinking"
            and isinstance(delta.get("signature"), str)
        ):
            state["signature"] += delta["signature"]

    def _block_stop(self, obj: dict[str, Any], out: list[bytes]) -> None:
        state = self._state(obj)
        if state is None or state.get("stopped"):
            return
        state["stopped"] = True
        if state["type"] == "tool_use" and not state["parts"]:
            # no input fragments (a tool without parameters): clients parse the
            # arguments as JSON, so send the whole input (at least "{}")
            args = compact_json(state["input"] if isinstance(state["input"], dict) else {})
            state["parts"].append(args)
            call = {"index": state["tool"], "function": {"arguments": args}}
            self._delta({"tool_calls": [call]}, out)
        elif state["type"] in ("thinking", "redacted_thinking"):
            # `index` numbers the blocks, as for tool calls: the openai SDK's stream
            # helper merges list deltas by it (and refuses a second block without one)
            block = {"index": self._thinking_sent, **self._thinking_block(state)}
            self._thinking_sent += 1
            self._delta({"thinking_blocks": [block]}, out)

    @staticmethod
    def _thinking_block(state: dict[str, Any]) -> dict[str, Any]:
        if state["type"] == "redacted_thinking":
            return {"type": "redacted_thinking", "data": state.get("data")}
        return {
            "type": "thinking",
            "thinking": "".join(state["parts"]),
            "signature": state.get("signature") or "",
        }

    def assembled(self) -> dict[str, Any]:
        texts: list[str] = []
        reasoning: list[str] = []
        thinking_blocks: list[dict[str, Any]] = []
        tool_calls: list[dict[str, Any]] = []
        for index in self._order:
            state = self._blocks[index]
            kind = state["type"]
            if kind == "text":
                texts += state["parts"]
            elif kind == "tool_use":
                tool_calls.append(
                    {
                        "id": state["id"],
                        "type": "function",
                        "function": {"name": state["name"], "arguments": "".join(state["parts"])},
                    }
                )
            elif kind == "thinking":
                reasoning += state["parts"]
                thinking_blocks.append(self._thinking_block(state))
            elif kind == "redacted_thinking":
                thinking_blocks.append(self._thinking_block(state))
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
        }
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if thinking_blocks:
            message["thinking_blocks"] = thinking_blocks
        if tool_calls:
            message["tool_calls"] = tool_calls
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out


class AnthropicCompletionStream(_Stream):
    """Legacy Text Completions SSE (`event: completion`) -> OpenAI `text_completion` SSE."""

    object = "text_completion"

    def __init__(self, spec: CallSpec) -> None:
        super().__init__(spec, "cmpl")
        self._parts: list[str] = []
        self._seen_id = False

    def _handle(self, kind: str | None, obj: dict[str, Any], out: list[bytes]) -> None:
        if kind != "completion":
            return  # ping and events of later API versions
        if not self._seen_id:
            self._seen_id = True
            if isinstance(obj.get("id"), str):
                self.id = obj["id"]
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        text = obj.get("completion") if isinstance(obj.get("completion"), str) else ""
        stop = obj.get("stop_reason")
        finish = _finish(stop) if stop is not None else None
        if not text and finish is None:
            return
        if text:
            self._parts.append(text)
            self.started = True
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        out.append(self._chunk([choice]))
        if finish is not None:
            self.finish_reason = finish
            self._complete = True

    def assembled(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(self._parts),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
        }


# ------------------------------------------------------------------ the provider


class Anthropic(Provider):
    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    route_types = frozenset({RouteType.CHAT, RouteType.COMPLETIONS, RouteType.PRESERVE})
    auth_headers = ("x-api-key", "authorization")
    native_format = "anthropic"
    input_includes_cache = False  # input_tokens excludes cache reads and writes

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        errors = super().config_errors(model, route_type, auth)
        options = getattr(model, "options", None)
        if not getattr(options, "anthropic_version", None):
            errors.append(
                "provider 'anthropic' needs model.options.anthropic_version "
                '(the anthropic-version header Anthropic requires, e.g. "2023-06-01")'
            )
        return errors

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        if spec.route_type is RouteType.PRESERVE:
            url = preserve_url(spec, self.default_base_url)
            return UpstreamRequest(spec.method, url, {}, spec.raw_body, spec.stream)
        if spec.route_type is RouteType.CHAT:
            body = messages_body(spec)
        elif spec.route_type is RouteType.COMPLETIONS:
            body = complete_body(spec)
        else:
            raise _bad(f"anthropic cannot serve {spec.route_type}")
        url = join_url(spec.options.upstream_url, self.default_base_url, PATHS[spec.route_type])
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if spec.stream else "application/json",
            "anthropic-version": spec.options.anthropic_version or "2023-06-01",
        }
        return UpstreamRequest("POST", url, headers, json_body(body), spec.stream)

    def build_native_request(self, spec: CallSpec) -> UpstreamRequest:
        """A Messages API request passed through; the route's `anthropic_version` is
        sent when the client sent no `anthropic-version` of its own (SDKs always do)."""
        up = super().build_native_request(spec)
        up.default_headers["anthropic-version"] = spec.options.anthropic_version or "2023-06-01"
        return up

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        if spec.route_type is RouteType.PRESERVE:
            return self.parse_native_response(spec, status, headers, body)
        data = _json_object(body, "answer")
        if data.get("type") == "error":
            err = error_from_anthropic(None, data)
            if err is not None:
                raise err
        if spec.route_type is RouteType.COMPLETIONS:
            return self._completion(spec, data)
        if not isinstance(data.get("content"), list):
            raise ProviderError(502, "anthropic: the upstream answer has no 'content' list")
        usage = self.usage_from(data)
        model = data.get("model") if isinstance(data.get("model"), str) else spec.model
        answer: dict[str, Any] = {
            "id": data["id"] if isinstance(data.get("id"), str) else _new_id("msg"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message_to_openai(data),
                    "finish_reason": _finish(data.get("stop_reason")),
                }
            ],
        }
        if usage is not None:
            answer["usage"] = usage.to_openai()
        return Reply(orjson.dumps(answer), answer, usage, model)

    def _completion(self, spec: CallSpec, data: dict[str, Any]) -> Reply:
        if not isinstance(data.get("completion"), str):
            raise ProviderError(502, "anthropic: the upstream answer has no 'completion' text")
        model = data.get("model") if isinstance(data.get("model"), str) else spec.model
        answer = {
            "id": data["id"] if isinstance(data.get("id"), str) else _new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "text": data["completion"],
                    "logprobs": None,
                    "finish_reason": _finish(data.get("stop_reason")),
                }
            ],
        }
        # the legacy API reports no usage: the gateway estimates it
        return Reply(orjson.dumps(answer), answer, None, model)

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        try:
            data = orjson.loads(body)
        except ValueError:
            data = None
        err = error_from_anthropic(status, data)
        return err if err is not None else generic_error(self.name, status, headers, body)

    def stream_translator(self, spec: CallSpec) -> AnthropicStream | AnthropicCompletionStream:
        legacy = spec.route_type is RouteType.COMPLETIONS or (
            spec.route_type is RouteType.PRESERVE and spec.path.rstrip("/").endswith("/complete")
        )
        return AnthropicCompletionStream(spec) if legacy else AnthropicStream(spec)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return usage_from_anthropic(data.get("usage")) if isinstance(data, dict) else None


PROVIDER = Anthropic()
