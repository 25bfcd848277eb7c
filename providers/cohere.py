"""Cohere: the Chat API v2 (default) and v1, Generate (legacy) and Embed, behind OpenAI's formats.

`model.options.cohere.api_version` picks the API (`v2` when unset):

- chat (`llm/v1/chat`): v2 `POST /v2/chat` (OpenAI-like `messages`, SSE streams), or v1
  `POST /v1/chat` (the last user turn as `message`, earlier turns as `chat_history`,
  NDJSON streams: one JSON object per line, `content-type: application/stream+json`).
- completions (`llm/v1/completions`): v1 `POST /v1/generate`, as Kong does (Kong's
  fixtures are v1); with v2 the prompt goes to `POST /v2/chat` as one user message,
  since v2 has no generate endpoint and Cohere keeps `/v1/generate` only as an
  unmaintained legacy API that current models do not serve. The answer is a
  `text_completion` either way.
- embeddings (`llm/v1/embeddings`): `POST /v2/embed` for both versions (v1 clients of
  Cohere use it too), `input_type` from `model.options.cohere.embedding_input_type`
  (default `search_document`), `embedding_types: ["float"]`.
- `preserve`, and `llm_format: cohere` (clients speaking Cohere's own API): passed
  through, observed (usage, the assembled answer) by path: `/v2/chat`, `/v1/chat`,
  `/v1/generate`.

The gateway adds the route's `Authorization: Bearer` header; nothing here sees it.

Conventions where the formats do not line up:

- **Sampling.** `top_p` -> `p`, `top_k` -> `k`, `stop` -> `stop_sequences`,
  `max_completion_tokens`/`max_tokens` -> `max_tokens`; `temperature`, `seed`,
  `frequency_penalty` and `presence_penalty` as they are. Cohere takes `p` in
  0.01..0.99 where OpenAI's top_p runs 0..1 (1, "no nucleus sampling", is common): `p`
  is clamped into Cohere's range rather than failing the call. `n` > 1 is a 400 for chat
  (Cohere answers one message); for v1 generate it is `num_generations`.
- **System messages.** v2: `system` and `developer` messages are `system` messages. v1:
  the leading ones become `preamble` (Kong sends them as USER turns, a known bug), later
  ones SYSTEM turns of `chat_history`.
- **Tools.** v2 takes OpenAI's function tool shape (a function's `strict: true` becomes
  Cohere's request-wide `strict_tools`). `tool_choice` "required" -> REQUIRED, "none" ->
  NONE, a named function -> REQUIRED with only that tool sent; "auto" is the default. v1 needs `parameter_definitions` (JSON Schema properties as Python type names:
  str, int, float, bool, List[...], Dict; enums listed in the description) and cannot
  force a call: tool_choice "none" leaves the tools out, "required" or a named function
  is a 400. v1 tool calls have no id: the gateway mints `call_...` ids, and maps the
  client's tool results back (by `tool_call_id`) to v1 `tool_results` with the call's
  name and parameters; a tool message's content becomes `outputs` (a JSON object as it
  is, a JSON list of objects as it is, anything else as `[{"result": text}]`).
- **Tool plans.** The text Cohere writes before calling tools (v2 `tool_plan`, v1 `text`
  next to `tool_calls`) is the assistant message's `content`, as OpenAI models write
  text before tool calls; sent back on an assistant message that has tool calls, the
  content is the `tool_plan` (v1: the CHATBOT turn's `message`). A `tool_plan` field on
  the client's assistant message wins.
- **Thinking (v2).** `thinking` content comes back as `reasoning_content` (streamed as
  `delta.reasoning_content`). `reasoning_effort` sets `thinking` ("none" disables it,
  the others enable it with `THINKING_BUDGETS` tokens); a Cohere `thinking` object in
  the body is sent as written. v1 has no thinking: `reasoning_effort` is ignored there.
- **Structured output.** `response_format` json_object -> `{"type": "json_object"}`,
  json_schema -> json_object with the schema (v2 `json_schema`, v1 `schema`).
- **Images.** v2 user content parts `image_url` (data URI or http(s) URL, with
  `detail`) are Cohere's own shape; v1 has no images: a 400.
- **Cohere-only fields** a client sends (e.g. through the SDK's `extra_body`) pass
  through: `documents`, `citation_options`, `safety_mode`, `strict_tools`, `priority`
  (v2); `documents`, `connectors`, `prompt_truncation`, `citation_quality`,
  `safety_mode`, `force_single_step`, `max_input_tokens` (v1); `truncate` (embed).
- **finish_reason.** COMPLETE and STOP_SEQUENCE -> stop (tool_calls when the answer calls
  tools), MAX_TOKENS and ERROR_LIMIT (context length reached) -> length, TOOL_CALL ->
  tool_calls, ERROR_TOXIC -> content_filter. ERROR, USER_CANCEL (502) and TIMEOUT (504
  `timeout_error`) mean the generation failed: a whole answer becomes that error; in a
  stream, an error event after what was already sent (Cohere's own message with it).
- **Usage.** From the actual token counts (`usage.tokens` in v2, `meta.tokens` in v1,
  then v1's older `token_count`), falling back to `billed_units` when no count is given
  (Cohere's billed units leave out the prompt template the model also reads, so they
  are lower; Kong reports `token_count` likewise). The cost is computed from the billed
  units, which are what Cohere charges for. `cached_tokens` (prompt tokens that
  hit Cohere's cache, part of the input tokens) is `cache_read_tokens`. Embeddings
  report `billed_units.input_tokens`; an answer with no count at all has no usage (the
  gateway estimates it).
- **Errors.** Cohere answers `{"message": ...}` (with an `id` in v2) and the status,
  which the client gets in OpenAI's error shape; 498 (a deny-listed token in the
  request or the answer, not an auth error) becomes 400 `invalid_request_error` with
  code `content_filter`, since no OpenAI client knows 498.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import struct
import time
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
    compact_json,
    error_type_for,
    estimate_tokens,
    generic_error,
    join_url,
    json_body,
    new_completion_id,
    preserve_url,
)
from providers.openai_compatible import readable

log = logging.getLogger(__name__)

NAME = "cohere"
DEFAULT_BASE_URL = "https://api.cohere.com"

V2_CHAT = "/v2/chat"
V1_CHAT = "/v1/chat"
GENERATE = "/v1/generate"
EMBED = "/v2/embed"

#: Cohere finish_reason (v1 and v2) -> OpenAI finish_reason, for the ones that are not failures
FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "ERROR_LIMIT": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
}

#: Cohere finish_reason values that mean the generation failed: (status, error type)
FAILED = {
    "ERROR": (502, "api_error"),
    "USER_CANCEL": (502, "api_error"),
    "TIMEOUT": (504, "timeout_error"),
}

#: reasoning_effort -> Cohere `thinking` (v2)
THINKING_BUDGETS: dict[str, int | None] = {
    "none": None,
    "minimal": 512,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
}

# Cohere-only request fields passed through as the client sent them.
V2_EXTRAS = ("documents", "citation_options", "safety_mode", "strict_tools", "priority")
V1_EXTRAS = (
    "documents",
    "connectors",
    "prompt_truncation",
    "citation_quality",
    "safety_mode",
    "force_single_step",
    "max_input_tokens",
)

# p (top_p) bounds Cohere accepts
P_MIN, P_MAX = 0.01, 0.99

_PY_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "object": "Dict",
    "array": "List",
}


def _bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _new_id(completions: bool) -> str:
    """An answer id for Cohere answers that carry none, in OpenAI's style."""
    return f"cmpl-{secrets.token_hex(12)}" if completions else new_completion_id()


def api_version(spec: CallSpec) -> str:
    """ "v2" (the default) or "v1", from `model.options.cohere.api_version`."""
    cohere = spec.options.cohere
    return cohere.api_version if cohere is not None else "v2"


def embedding_input_type(spec: CallSpec) -> str:
    cohere = spec.options.cohere
    return cohere.embedding_input_type if cohere is not None else "search_document"


# ------------------------------------------------------------------ usage, finish


#: a token count above this is not one (and would not fit the JSON of the answer)
_MAX_COUNT = 2**53


def _count(value: Any) -> int | None:
    """A token count from Cohere's JSON (documented as `number`), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value > _MAX_COUNT:
        return None
    if isinstance(value, int):
        return max(value, 0)
    if value.is_integer():
        return max(int(value), 0)
    return None


def usage_from_cohere(meta: Any, token_count: Any = None) -> Usage | None:
    """A v2 `usage` or v1 `meta` object (and v1's older `token_count`) as a Usage: the
    actual token counts first, the billed units when no count is given (see the module
    docstring); None when nothing is reported."""
    meta = meta if isinstance(meta, dict) else {}
    cached = _count(meta.get("cached_tokens")) or 0
    sources: list[tuple[Any, str, str]] = [(meta.get("tokens"), "input_tokens", "output_tokens")]
    sources.append((token_count, "prompt_tokens", "response_tokens"))
    sources.append((meta.get("billed_units"), "input_tokens", "output_tokens"))
    for src, inp_key, out_key in sources:
        if not isinstance(src, dict):
            continue
        inp, out = _count(src.get(inp_key)), _count(src.get(out_key))
        if inp is None and out is None:
            continue
        prompt = inp or 0
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=out or 0,
            cache_read_tokens=min(cached, prompt) if prompt else 0,
        )
        billed = meta.get("billed_units")
        if isinstance(billed, dict):  # what Cohere charges for: the cost's basis
            usage.billed_prompt_tokens = _count(billed.get("input_tokens"))
            usage.billed_completion_tokens = _count(billed.get("output_tokens"))
        return usage
    return None


def _usage_of_answer(data: dict[str, Any]) -> Usage | None:
    """Usage of any Cohere answer: v2 (`usage`), v1 chat and generate (`meta`,
    `token_count`)."""
    if isinstance(data.get("usage"), dict):
        return usage_from_cohere(data["usage"])
    return usage_from_cohere(data.get("meta"), data.get("token_count"))


def finish_reason(reason: Any, has_calls: bool = False) -> str:
    """Cohere's finish_reason (not a failure) as OpenAI's."""
    if has_calls and reason in (None, "COMPLETE", "TOOL_CALL"):
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def failure(reason: Any, detail: Any = None) -> ProviderError | None:
    """The error for a finish_reason that means the generation failed, else None."""
    if not isinstance(reason, str) or reason not in FAILED:
        return None
    status, kind = FAILED[reason]
    message = f"cohere: the generation failed (finish_reason {reason})"
    if isinstance(detail, str) and detail:
        message += f": {detail}"
    return ProviderError(status, message, kind, reason.lower())


# ------------------------------------------------------------------ requests: shared


def _texts(content: Any, where: str, what: str = "text") -> list[str]:
    """The text pieces of a message content that may only hold text."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of parts", "messages")
    out: list[str] = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            if part:
                out.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "refusal"):
            text = part.get("text") if kind != "refusal" else part.get("refusal")
            if isinstance(text, str) and text:
                out.append(text)
        else:
            raise _bad(
                f"'{where}.content[{j}]': {what} may only hold text parts, not {kind!r}",
                "messages",
            )
    return out


def _arguments(call: dict[str, Any], where: str) -> str:
    fn = call.get("function") if isinstance(call.get("function"), dict) else {}
    args = fn.get("arguments")
    if args is None or (isinstance(args, str) and not args.strip()):
        return "{}"
    if isinstance(args, dict):
        return compact_json(args)
    if isinstance(args, str):
        return args
    raise _bad(f"'{where}.function.arguments' must be a JSON string", "messages")


def _calls_of(m: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """An assistant message's tool calls, checked: each with an id, a name, arguments."""
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _bad(f"'{where}.tool_calls' must be an array", "messages")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"'{at}' needs a 'function' with a 'name'", "messages")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise _bad(f"'{at}' needs an 'id'", "messages")
        out.append({"id": call["id"], "name": fn["name"], "arguments": _arguments(call, at)})
    return out


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return None
    found = [s for s in stop if isinstance(s, str) and s]
    return found or None


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    """The sampling fields every Cohere generation endpoint takes."""
    max_tokens = _max_tokens(body)
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    if body.get("temperature") is not None:
        out["temperature"] = body["temperature"]
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)) and not isinstance(top_p, bool):
        out["p"] = min(max(float(top_p), P_MIN), P_MAX)
    top_k = body.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool):
        out["k"] = top_k
    stop = _stop(body)
    if stop:
        out["stop_sequences"] = stop
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if body.get(key) is not None:
            out[key] = body[key]


def _single_choice(body: dict[str, Any]) -> None:
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        raise _bad("cohere chat answers with one message: 'n' must be 1", "n")


def _json_schema(fmt: Any) -> tuple[bool, dict[str, Any] | None]:
    """(JSON output wanted, its schema) of an OpenAI `response_format`."""
    if not isinstance(fmt, dict):
        return False, None
    kind = fmt.get("type")
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return True, schema if isinstance(schema, dict) else None
    if kind in (None, "text"):
        return False, None
    raise _bad(f"response_format type {kind!r} is not supported by cohere", "response_format")


def _function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The client's tools as (name, description, parameters) dicts, checked."""
    tools = body.get("tools")
    if not tools:
        return []
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _bad(f"'tools[{i}]': cohere supports function tools only", "tools")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"'tools[{i}].function' needs a 'name'", "tools")
        params = fn.get("parameters")
        out.append(
            {
                "name": fn["name"],
                "description": fn.get("description")
                if isinstance(fn.get("description"), str)
                else None,
                "parameters": params
                if isinstance(params, dict) and params
                else {"type": "object", "properties": {}},
                "strict": fn.get("strict") is True,
            }
        )
    return out


def _choice(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """OpenAI `tool_choice` as (mode, function name): mode "auto", "none", "required"."""
    tc = body.get("tool_choice")
    if tc is None or tc == "auto":
        return "auto", None
    if tc in ("none", "required"):
        return tc, None
    if tc in ("NONE", "REQUIRED"):  # Cohere's own values
        return tc.lower(), None
    if isinstance(tc, dict) and tc.get("type") == "function":
        fn = tc.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            return "required", name
        raise _bad("'tool_choice.function' needs a 'name'", "tool_choice")
    raise _bad(
        "'tool_choice' must be 'auto', 'required', 'none' or a named function", "tool_choice"
    )


def _extras(body: dict[str, Any], out: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if body.get(name) is not None:
            out[name] = body[name]


# ------------------------------------------------------------------ requests: v2 chat


def _v2_user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of parts", "messages")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, str):
            if part:
                parts.append({"type": "text", "text": part})
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            text = part.get("text")
            if isinstance(text, str) and text:
                parts.append({"type": "text", "text": text})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise _bad(
                    f"'{at}.image_url' needs a 'url' (a data URI or an http(s) URL)", "messages"
                )
            image: dict[str, Any] = {"url": url}
            detail = ref.get("detail") if isinstance(ref, dict) else None
            if detail in ("auto", "low", "high"):
                image["detail"] = detail
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"'{at}': content part type {kind!r} is not supported by cohere")
    return parts


def _v2_tool_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "document" for p in content
    ):
        return content  # Cohere's own document blocks
    return [{"type": "text", "text": t} for t in _texts(content, where, "a tool result")]


def v2_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI `messages` -> Cohere v2 `messages`."""
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", "messages")
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            texts = _texts(content, where, "a system message")
            if texts:
                out.append({"role": "system", "content": "\n\n".join(texts)})
        elif role == "user":
            out.append({"role": "user", "content": _v2_user_content(content, where)})
        elif role == "assistant":
            calls = _calls_of(m, where)
            text = "".join(_texts(content, where, "an assistant message"))
            msg: dict[str, Any] = {"role": "assistant"}
            if calls:
                plan = m.get("tool_plan") if isinstance(m.get("tool_plan"), str) else text
                if plan:
                    msg["tool_plan"] = plan
                msg["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls
                ]
            else:
                msg["content"] = text
            out.append(msg)
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"'{where}' (role tool) needs a 'tool_call_id'", "messages")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": _v2_tool_content(content, where),
                }
            )
        else:
            raise _bad(f"'{where}': role {role!r} is not supported by cohere", "messages")
    return out


def _thinking(body: dict[str, Any]) -> dict[str, Any] | None:
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise _bad(
                '\'thinking\' must be an object such as {"type": "enabled", "token_budget": 2048}',
                "thinking",
            )
        return thinking
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        raise _bad(
            f"'reasoning_effort' must be one of: {', '.join(THINKING_BUDGETS)}",
            "reasoning_effort",
        )
    budget = THINKING_BUDGETS[effort]
    return {"type": "enabled", "token_budget": budget} if budget else {"type": "disabled"}


def v2_chat_body(spec: CallSpec) -> dict[str, Any]:
    """The `/v2/chat` body for an OpenAI chat request."""
    body = spec.body
    _single_choice(body)
    out: dict[str, Any] = {
        "model": spec.model or body.get("model"),
        "messages": v2_messages(body.get("messages")),
        "stream": spec.stream,
    }
    _sampling(body, out)
    tools = _function_tools(body)
    mode, forced = _choice(body)
    if tools:
        if forced is not None:
            tools = [t for t in tools if t["name"] == forced]
            if not tools:
                raise _bad(f"tool_choice names {forced!r}, which is not in 'tools'", "tool_choice")
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    **({"description": t["description"]} if t["description"] else {}),
                    "parameters": t["parameters"],
                },
            }
            for t in tools
        ]
        if mode == "required":
            out["tool_choice"] = "REQUIRED"
        elif mode == "none":
            out["tool_choice"] = "NONE"
        if any(t["strict"] for t in tools):
            out["strict_tools"] = True
    wants_json, schema = _json_schema(body.get("response_format"))
    if wants_json:
        out["response_format"] = {"type": "json_object"}
        if schema is not None:
            out["response_format"]["json_schema"] = schema
    thinking = _thinking(body)
    if thinking is not None:
        out["thinking"] = thinking
    _extras(body, out, V2_EXTRAS)
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("cohere completions take 'prompt' as one string", "prompt")
    return prompt


def v2_completion_body(spec: CallSpec) -> dict[str, Any]:
    """A completions request for API v2: the prompt as one user message to /v2/chat."""
    body = spec.body
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        raise _bad("cohere v2 completions answer one choice: 'n' must be 1", "n")
    out: dict[str, Any] = {
        "model": spec.model or body.get("model"),
        "messages": [{"role": "user", "content": _prompt(body)}],
        "stream": spec.stream,
    }
    _sampling(body, out)
    return out


# ------------------------------------------------------------------ requests: v1


def _py_type(schema: Any) -> str:
    """A JSON Schema type as the Python type name v1's parameter_definitions want."""
    if not isinstance(schema, dict):
        return "str"
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        for key in ("anyOf", "oneOf"):
            given = schema.get(key)
            variants = [
                v
                for v in (given if isinstance(given, list) else ())
                if isinstance(v, dict) and v.get("type") != "null"
            ]
            if len(variants) == 1:
                return _py_type(variants[0])
        if "properties" in schema:
            return "Dict"
        if "items" in schema:
            return _py_type({**schema, "type": "array"})
        return "str"
    if kind == "array":
        items = schema.get("items")
        return f"List[{_py_type(items)}]" if isinstance(items, dict) and items else "List"
    return _PY_TYPES.get(kind, "str") if isinstance(kind, str) else "str"


def _parameter_definitions(params: dict[str, Any]) -> dict[str, Any]:
    props = params.get("properties")
    required = params.get("required") if isinstance(params.get("required"), list) else []
    out: dict[str, Any] = {}
    for name, schema in (props or {}).items() if isinstance(props, dict) else ():
        schema = schema if isinstance(schema, dict) else {}
        definition: dict[str, Any] = {"type": _py_type(schema)}
        description = (
            schema.get("description") if isinstance(schema.get("description"), str) else ""
        )
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            values = ", ".join(str(v) for v in enum)
            description = f"{description} Possible enum values: {values}.".strip()
        if description:
            definition["description"] = description
        definition["required"] = name in required
        out[name] = definition
    return out


def _v1_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": t["name"],
            # required by v1
            "description": t["description"] or t["name"],
            "parameter_definitions": _parameter_definitions(t["parameters"]),
        }
        for t in tools
    ]


def _tool_outputs(content: Any, where: str) -> list[dict[str, Any]]:
    """A tool message's content as v1 `outputs` (a list of objects)."""
    text = content if isinstance(content, str) else "".join(_texts(content, where, "a tool result"))
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list) and parsed and all(isinstance(p, dict) for p in parsed):
        return parsed
    return [{"result": text}]


def _call_parameters(arguments: str, where: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad(f"'{where}': cohere v1 needs tool call arguments as a JSON object", "messages")
    return parsed


def v1_chat_body(spec: CallSpec) -> dict[str, Any]:
    """The `/v1/chat` body for an OpenAI chat request (see the module docstring)."""
    body = spec.body
    _single_choice(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    preamble: list[str] = []
    history: list[dict[str, Any]] = []
    calls_by_id: dict[str, dict[str, Any]] = {}
    pending_results: list[dict[str, Any]] = []  # consecutive tool messages
    leading = True
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", "messages")
        role = m.get("role")
        content = m.get("content")
        if role != "tool" and pending_results:
            history.append({"role": "TOOL", "tool_results": pending_results})
            pending_results = []
        if role in ("system", "developer"):
            text = "\n\n".join(_texts(content, where, "a system message"))
            if leading:
                if text:
                    preamble.append(text)
            elif text:
                history.append({"role": "SYSTEM", "message": text})
            continue
        leading = False
        if role == "user":
            history.append({"role": "USER", "message": _v1_user_text(content, where)})
        elif role == "assistant":
            text = "".join(_texts(content, where, "an assistant message"))
            calls = _calls_of(m, where)
            turn: dict[str, Any] = {"role": "CHATBOT", "message": text}
            if calls:
                plan = m.get("tool_plan")
                if isinstance(plan, str):
                    turn["message"] = plan
                turn["tool_calls"] = []
                for j, c in enumerate(calls):
                    call = {
                        "name": c["name"],
                        "parameters": _call_parameters(c["arguments"], f"{where}.tool_calls[{j}]"),
                    }
                    calls_by_id[c["id"]] = call
                    turn["tool_calls"].append(call)
            history.append(turn)
        elif role == "tool":
            call_id = m.get("tool_call_id")
            call = calls_by_id.get(call_id) if isinstance(call_id, str) else None
            if call is None:
                raise _bad(
                    f"'{where}': tool result for {call_id!r} answers no earlier assistant tool "
                    "call (cohere v1 needs the call's name and parameters)",
                    "messages",
                )
            pending_results.append({"call": call, "outputs": _tool_outputs(content, where)})
        else:
            raise _bad(f"'{where}': role {role!r} is not supported by cohere", "messages")

    out: dict[str, Any] = {"model": spec.model or body.get("model")}
    if pending_results:  # the conversation ends with tool results: answer them
        out["message"] = ""
        out["tool_results"] = pending_results
    elif history and history[-1]["role"] == "USER":
        out["message"] = history.pop()["message"]
    else:
        raise _bad(
            "cohere v1 chat needs the conversation to end with a user or tool message",
            "messages",
        )
    if preamble:
        out["preamble"] = "\n\n".join(preamble)
    if history:
        out["chat_history"] = history
    out["stream"] = spec.stream
    _sampling(body, out)
    tools = _function_tools(body)
    mode, _forced = _choice(body)
    if tools and mode == "required":
        raise _bad(
            "cohere v1 chat cannot force a tool call (tool_choice 'required' or a named "
            "function): use model.options.cohere.api_version v2",
            "tool_choice",
        )
    if tools and (mode != "none" or "tool_results" in out):
        out["tools"] = _v1_tools(tools)
    elif "tool_results" in out:
        raise _bad("cohere v1 needs the 'tools' with tool results", "tools")
    wants_json, schema = _json_schema(body.get("response_format"))
    if wants_json:
        out["response_format"] = {"type": "json_object"}
        if schema is not None:
            out["response_format"]["schema"] = schema
    _extras(body, out, V1_EXTRAS)
    return out


def _v1_user_text(content: Any, where: str) -> str:
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                raise _bad(
                    f"'{where}.content[{j}]': cohere v1 chat takes no images "
                    "(use model.options.cohere.api_version v2)",
                    "messages",
                )
    return "".join(_texts(content, where, "a user message"))


def generate_body(spec: CallSpec) -> dict[str, Any]:
    """The `/v1/generate` body for an OpenAI completions request (Kong's shape)."""
    body = spec.body
    out: dict[str, Any] = {"prompt": _prompt(body), "model": spec.model or body.get("model")}
    _sampling(body, out)
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        out["num_generations"] = n
    out["stream"] = spec.stream
    return out


def _embedding_texts(body: dict[str, Any]) -> list[str]:
    data = body.get("input")
    items = [data] if isinstance(data, str) else data
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise _bad(
            "cohere embeddings need 'input' as a string or an array of strings "
            "(token arrays are OpenAI's)",
            "input",
        )
    return items


def embed_body(spec: CallSpec) -> dict[str, Any]:
    """The `/v2/embed` body for an OpenAI embeddings request."""
    body = spec.body
    out: dict[str, Any] = {
        "model": spec.model or body.get("model"),
        "texts": _embedding_texts(body),
        "input_type": embedding_input_type(spec),
        "embedding_types": ["float"],
    }
    dims = body.get("dimensions")
    if isinstance(dims, int) and not isinstance(dims, bool):
        out["output_dimension"] = dims
    _extras(body, out, ("truncate",))
    return out


# ------------------------------------------------------------------ answers


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError(502, "cohere: the upstream answer is not a JSON object")
    return data


def _openai_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):
        args = arguments if arguments.strip() else "{}"
    else:
        args = compact_json(arguments if arguments is not None else {})
    return {
        "id": call_id if isinstance(call_id, str) and call_id else _call_id(),
        "type": "function",
        "function": {"name": name if isinstance(name, str) else "", "arguments": args},
    }


def v2_message_to_openai(message: dict[str, Any]) -> dict[str, Any]:
    """A v2 `message` (content blocks, tool_plan, tool_calls) as an OpenAI message."""
    texts: list[str] = []
    thinking: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif isinstance(block.get("text"), str):
            texts.append(block["text"])
    calls = []
    given = message.get("tool_calls")
    for call in given if isinstance(given, list) else ():
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        calls.append(_openai_call(call.get("id"), fn.get("name"), fn.get("arguments")))
    text = "".join(texts)
    plan = message.get("tool_plan")
    if not text and isinstance(plan, str) and plan:
        text = plan
    out: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if thinking:
        out["reasoning_content"] = "".join(thinking)
    if calls:
        out["tool_calls"] = calls
    return out


def _chat_answer(
    answer_id: Any, spec: CallSpec, message: dict[str, Any], reason: str, usage: Usage | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": answer_id if isinstance(answer_id, str) and answer_id else new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": spec.model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
    }
    if usage is not None:
        out["usage"] = usage.to_openai()
    return out


def _completion_answer(
    answer_id: Any, spec: CallSpec, choices: list[dict[str, Any]], usage: Usage | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": answer_id if isinstance(answer_id, str) and answer_id else _new_id(True),
        "object": "text_completion",
        "created": int(time.time()),
        "model": spec.model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage.to_openai()
    return out


def from_v2_chat(data: dict[str, Any], spec: CallSpec) -> tuple[dict[str, Any], Usage | None]:
    """A `/v2/chat` answer as an OpenAI chat.completion (or text_completion for a
    completions route)."""
    message = data.get("message")
    if not isinstance(message, dict):
        raise ProviderError(502, "cohere: the upstream answer has no 'message'")
    err = failure(data.get("finish_reason"))
    if err is not None:
        raise err
    usage = usage_from_cohere(data.get("usage"))
    converted = v2_message_to_openai(message)
    if spec.route_type is RouteType.COMPLETIONS:
        content = message.get("content")
        text = (
            content
            if isinstance(content, str)
            else "".join(
                b["text"]
                for b in (content if isinstance(content, list) else ())
                if isinstance(b, dict)
                and b.get("type", "text") == "text"
                and isinstance(b.get("text"), str)
            )
        )
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason(data.get("finish_reason")),
        }
        return _completion_answer(data.get("id"), spec, [choice], usage), usage
    reason = finish_reason(data.get("finish_reason"), bool(converted.get("tool_calls")))
    return _chat_answer(data.get("id"), spec, converted, reason, usage), usage


def from_v1_chat(data: dict[str, Any], spec: CallSpec) -> tuple[dict[str, Any], Usage | None]:
    """A `/v1/chat` answer as an OpenAI chat.completion."""
    text = data.get("text")
    if not isinstance(text, str):
        raise ProviderError(502, "cohere: the upstream answer has no 'text'")
    err = failure(data.get("finish_reason"))
    if err is not None:
        raise err
    given = data.get("tool_calls")
    calls = [
        _openai_call(None, c.get("name"), c.get("parameters"))
        for c in (given if isinstance(given, list) else ())
        if isinstance(c, dict)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    usage = _usage_of_answer(data)
    answer_id = data.get("generation_id") or data.get("response_id")
    reason = finish_reason(data.get("finish_reason"), bool(calls))
    return _chat_answer(answer_id, spec, message, reason, usage), usage


def from_generate(data: dict[str, Any], spec: CallSpec) -> tuple[dict[str, Any], Usage | None]:
    """A `/v1/generate` answer as an OpenAI text_completion."""
    generations = data.get("generations")
    if not isinstance(generations, list) or not generations:
        raise ProviderError(502, "cohere: the upstream answer has no 'generations'")
    choices = []
    for i, gen in enumerate(generations):
        if not isinstance(gen, dict) or not isinstance(gen.get("text"), str):
            raise ProviderError(502, "cohere: a generation in the answer has no 'text'")
        err = failure(gen.get("finish_reason"))
        if err is not None:
            raise err
        index = gen.get("index")
        choices.append(
            {
                "index": index if isinstance(index, int) else i,
                "text": gen["text"],
                "logprobs": None,
                "finish_reason": finish_reason(gen.get("finish_reason")),
            }
        )
    usage = _usage_of_answer(data)
    return _completion_answer(data.get("id"), spec, choices, usage), usage


def _encode_vector(values: list[float], encoding: Any) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def from_embed(data: dict[str, Any], spec: CallSpec) -> tuple[dict[str, Any], Usage]:
    """An `/v2/embed` answer (`embeddings.float`, or v1's plain list) as OpenAI's list.
    Without a reported count the usage is estimated (and marked so)."""
    embeddings = data.get("embeddings")
    vectors = embeddings.get("float") if isinstance(embeddings, dict) else embeddings
    if not isinstance(vectors, list):
        raise ProviderError(502, "cohere: the upstream answer has no float 'embeddings'")
    for v in vectors:
        if not isinstance(v, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
        ):
            raise ProviderError(502, "cohere: an embedding in the answer is not a list of numbers")
    usage = usage_from_cohere(data.get("meta"))
    if usage is None:
        texts = _embedding_texts(spec.body)
        usage = Usage(prompt_tokens=sum(estimate_tokens(t) for t in texts), estimated=True)
    encoding = spec.body.get("encoding_format")
    out = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "model": spec.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return out, usage


def error_from_cohere(status: int, data: Any) -> ProviderError | None:
    """Cohere's error body `{"message": ...}` (v2 adds an `id`) as a ProviderError."""
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return None
    message = data["message"] or f"cohere upstream returned HTTP {status}"
    if status == 498:
        return ProviderError(400, message, "invalid_request_error", "content_filter")
    return ProviderError(status, message, error_type_for(status))


# ------------------------------------------------------------------ streams


class NDJSONDecoder:
    """Newline-delimited JSON cut anywhere: whole lines only, the tail kept."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        end = self._buf.rfind(b"\n")
        if end < 0:
            return []
        lines = bytes(self._buf[:end]).split(b"\n")
        del self._buf[: end + 1]
        return [line for line in lines if line.strip()]

    def flush(self) -> list[bytes]:
        rest = bytes(self._buf)
        self._buf.clear()
        return [rest] if rest.strip() else []


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except ValueError:
        return None


class _Stream:
    """What the Cohere stream translators share: the OpenAI chunks (chat or completion),
    the answer assembled for the record, the end (finish reason, usage chunk, errors)."""

    def __init__(self, spec: CallSpec, completions: bool) -> None:
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self.id: str | None = None
        self.model = spec.model
        self.created = int(time.time())
        self.finish_reason: str | None = None
        self._wants_usage = spec.client_wants_usage
        self._completions = completions
        self._object = "text_completion" if completions else "chat.completion.chunk"
        self._role_sent = False
        self._complete = False  # the upstream said the answer is whole
        self._ended = False  # an error event went out: nothing more does
        self._texts: dict[int, list[str]] = {}
        self._reasoning: list[str] = []
        # tool calls in OpenAI order: {"id", "name", "args": [...], "sent": bool}
        self._calls: list[dict[str, Any]] = []

    # ---- protocol

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        try:
            for obj, raw in self._decode(data):
                self._dispatch(obj, raw, out)
        except Exception:  # a bug here must not take the client's stream down
            log.exception("llmitm: cohere stream translation failed")
            self._fail(ProviderError(502, "cohere: the gateway could not read the stream"), out)
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        try:
            for obj, raw in self._flush():
                if obj is None and error is not None:
                    continue  # half an event, cut by the failure
                self._dispatch(obj, raw, out)
        except Exception:
            log.exception("llmitm: cohere stream translation failed")
            self._fail(ProviderError(502, "cohere: the gateway could not read the stream"), out)
        if not self._ended and not self._complete:
            # after a whole answer a late failure is not reported: the client has it all
            self._fail(
                error
                or ProviderError(
                    502,
                    "cohere: the upstream stream ended before the answer was complete",
                    "api_error",
                    "upstream_truncated",
                ),
                out,
            )
        self._ended = True
        out.append(sse.DONE)
        return out

    def assembled(self) -> dict[str, Any]:
        indexes = sorted(self._texts) or [0]
        out: dict[str, Any] = {
            "id": self.id or _new_id(self._completions),
            "object": "text_completion" if self._completions else "chat.completion",
            "created": self.created,
            "model": self.model,
        }
        if self._completions:
            out["choices"] = [
                {
                    "index": i,
                    "text": "".join(self._texts.get(i, [])),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
                for i in indexes
            ]
        else:
            text = "".join(self._texts.get(0, []))
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text if text or not self._calls else None,
            }
            if self._reasoning:
                message["reasoning_content"] = "".join(self._reasoning)
            if self._calls:
                message["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": "".join(c["args"])},
                    }
                    for c in self._calls
                ]
            out["choices"] = [{"index": 0, "message": message, "finish_reason": self.finish_reason}]
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out

    # ---- decoding (per wire format)

    def _decode(self, data: bytes) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def _flush(self) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def _dispatch(self, obj: Any, raw: Any, out: list[bytes]) -> None:
        if self._ended or self._complete:
            return
        self._handle(obj, raw, out)

    def _handle(self, obj: Any, raw: Any, out: list[bytes]) -> None:
        raise NotImplementedError

    # ---- chunks

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        if self.id is None:
            self.id = _new_id(self._completions)
        obj = {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _role(self, out: list[bytes]) -> None:
        if self._role_sent or self._completions:
            return
        self._role_sent = True
        delta = {"role": "assistant", "content": ""}
        out.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        self._role(out)
        self.started = True
        out.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def _text(self, text: Any, out: list[bytes], index: int = 0) -> None:
        if not isinstance(text, str) or not text:
            return
        self._texts.setdefault(index, []).append(text)
        if self._completions:
            self.started = True
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
            out.append(self._chunk([choice]))
        else:
            self._delta({"content": text}, out)

    def _thought(self, text: Any, out: list[bytes]) -> None:
        if self._completions or not isinstance(text, str) or not text:
            return
        self._reasoning.append(text)
        self._delta({"reasoning_content": text}, out)

    def _call_start(self, call_id: Any, name: Any, args: Any, out: list[bytes]) -> dict[str, Any]:
        call = {
            "id": call_id if isinstance(call_id, str) and call_id else _call_id(),
            "name": name if isinstance(name, str) else "",
            "args": [],
            "index": len(self._calls),
        }
        self._calls.append(call)
        first = args if isinstance(args, str) else ""
        if first:
            call["args"].append(first)
        if not self._completions:
            delta = {
                "index": call["index"],
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": first},
            }
            self._delta({"tool_calls": [delta]}, out)
        return call

    def _call_args(self, call: dict[str, Any], fragment: Any, out: list[bytes]) -> None:
        if not isinstance(fragment, str) or not fragment:
            return
        call["args"].append(fragment)
        if not self._completions:
            delta = {"index": call["index"], "function": {"arguments": fragment}}
            self._delta({"tool_calls": [delta]}, out)

    def _end(self, reason: Any, usage: Usage | None, detail: Any, out: list[bytes]) -> None:
        """The upstream's last event: the finish chunk(s), the usage chunk, or an error."""
        if usage is not None:
            self.usage = usage
        err = failure(reason, detail)
        if err is None and isinstance(detail, str) and detail:
            err = ProviderError(502, f"cohere: {detail}")
        if err is not None:
            self._fail(err, out)
            return
        self._role(out)
        for call in self._calls:
            if not call["args"]:  # clients parse the arguments as JSON
                self._call_args(call, "{}", out)
        self.finish_reason = reason = finish_reason(reason, bool(self._calls))
        if self._completions:
            for index in sorted(self._texts) or [0]:
                choice = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
                out.append(self._chunk([choice]))
        else:
            out.append(self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}]))
        if self._wants_usage and self.usage is not None:
            out.append(self._chunk([], usage=self.usage.to_openai()))
        self._complete = True

    def _fail(self, err: ProviderError, out: list[bytes]) -> None:
        if self._ended:
            return
        self.error = err
        self._ended = True
        out.append(sse.encode(err.to_openai()))


def _at(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


class CohereV2Stream(_Stream):
    """`/v2/chat` SSE (`event: message-start` ... `message-end`) -> OpenAI SSE chunks.

    Text and tool plans are `delta.content`, thinking is `delta.reasoning_content`; a tool
    call's OpenAI `index` counts the calls of the answer, its id and name come in its
    first delta; `message-end` brings the finish reason and the usage.
    """

    def __init__(self, spec: CallSpec, completions: bool = False) -> None:
        super().__init__(spec, completions)
        self._sse = sse.SSEDecoder()
        self._by_index: dict[int, dict[str, Any]] = {}  # Cohere tool-call index -> call

    def _decode(self, data: bytes) -> list[tuple[Any, Any]]:
        return [(_loads(ev.data), ev) for ev in self._sse.feed(data)]

    def _flush(self) -> list[tuple[Any, Any]]:
        return [(_loads(ev.data), ev) for ev in self._sse.flush()]

    def _handle(self, obj: Any, raw: Any, out: list[bytes]) -> None:
        ev: sse.SSEEvent = raw
        if ev.data.strip() == "[DONE]":
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, str):
            kind = ev.event
        if kind == "error" or (
            isinstance(obj, dict) and "type" not in obj and isinstance(obj.get("message"), str)
        ):
            message = obj.get("message") if isinstance(obj, dict) else None
            text = message if isinstance(message, str) and message else ev.data
            self._fail(ProviderError(502, text or "cohere: upstream stream error"), out)
            return
        if not isinstance(obj, dict):
            return
        if kind == "message-start":
            if isinstance(obj.get("id"), str) and obj["id"]:
                self.id = obj["id"]
            self._role(out)
        elif kind in ("content-start", "content-delta"):
            content = _at(obj, "delta", "message", "content")
            if isinstance(content, dict):
                if isinstance(content.get("thinking"), str):
                    self._thought(content["thinking"], out)
                else:
                    self._text(content.get("text"), out)
        elif kind == "tool-plan-delta":
            if not self._completions:
                self._text(_at(obj, "delta", "message", "tool_plan"), out)
        elif kind == "tool-call-start":
            call = _at(obj, "delta", "message", "tool_calls")
            if isinstance(call, list):  # one call per event; tolerate a list of one
                call = call[0] if call else None
            if isinstance(call, dict):
                fn = call.get("function") if isinstance(call.get("function"), dict) else {}
                started = self._call_start(call.get("id"), fn.get("name"), fn.get("arguments"), out)
                index = obj.get("index")
                self._by_index[index if isinstance(index, int) else len(self._by_index)] = started
        elif kind == "tool-call-delta":
            index = obj.get("index")
            call = self._by_index.get(index) if isinstance(index, int) else None
            if call is None and self._calls:
                call = self._calls[-1]
            calls = _at(obj, "delta", "message", "tool_calls")
            if isinstance(calls, list):
                calls = calls[0] if calls else None
            if call is not None:
                self._call_args(call, _at(calls, "function", "arguments"), out)
        elif kind == "message-end":
            delta = obj.get("delta") if isinstance(obj.get("delta"), dict) else {}
            if isinstance(obj.get("id"), str) and obj["id"] and self.id is None:
                self.id = obj["id"]
            self._end(
                delta.get("finish_reason"),
                usage_from_cohere(delta.get("usage")),
                delta.get("error"),
                out,
            )
        # content-end, tool-call-end (handled at the end), citation-*, debug: nothing to say


class CohereV1Stream(_Stream):
    """`/v1/chat` and `/v1/generate` NDJSON streams (`event_type` per line) -> OpenAI SSE.

    Chat: `text-generation` is text; `tool-calls-chunk` streams the tool plan (`text`)
    and each call (its `name` first, then `parameters` fragments); `tool-calls-generation`
    carries the whole calls (sent then only when no chunk announced them);
    `stream-end` the finish reason and, in its `response`, the usage. Generate:
    `text-generation` per generation `index`, `stream-end`, `stream-error`. Lines with an
    SSE `data:` prefix are read too.
    """

    def __init__(self, spec: CallSpec, generate: bool = False) -> None:
        super().__init__(spec, completions=generate)
        self._lines = NDJSONDecoder()
        self._by_index: dict[int, dict[str, Any]] = {}
        self._pending_args: dict[int, list[str]] = {}
        self._plan_streamed = False

    @staticmethod
    def _parse(line: bytes) -> tuple[Any, Any] | None:
        text = line.strip()
        if not text or text.startswith((b"event:", b":")):
            return None
        if text.startswith(b"data:"):
            text = text[5:].strip()
        if text == b"[DONE]":
            return None
        return _loads(text), text

    def _decode(self, data: bytes) -> list[tuple[Any, Any]]:
        return [p for p in map(self._parse, self._lines.feed(data)) if p is not None]

    def _flush(self) -> list[tuple[Any, Any]]:
        return [p for p in map(self._parse, self._lines.flush()) if p is not None]

    def _handle(self, obj: Any, raw: Any, out: list[bytes]) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("event_type")
        if kind == "stream-start":
            if isinstance(obj.get("generation_id"), str):
                self.id = obj["generation_id"]
            self._role(out)
        elif kind == "text-generation":
            index = obj.get("index")
            self._text(obj.get("text"), out, index if isinstance(index, int) else 0)
        elif kind == "tool-calls-chunk":
            self._tool_chunk(obj, out)
        elif kind == "tool-calls-generation":
            if not self._plan_streamed and not self._calls and not self._texts:
                self._text(obj.get("text"), out)
            if not self._calls:
                self._whole_calls(obj.get("tool_calls"), out)
        elif kind == "stream-end":
            response = obj.get("response") if isinstance(obj.get("response"), dict) else {}
            if self.id is None:
                rid = response.get("generation_id") or response.get("id")
                if isinstance(rid, str):
                    self.id = rid
            if not self._completions:
                if not self._calls:
                    self._whole_calls(response.get("tool_calls"), out)
                if not self._texts and not self._calls:
                    self._text(response.get("text"), out)
            reason = obj.get("finish_reason") or response.get("finish_reason")
            self._end(reason, _usage_of_answer(response), None, out)
        elif kind == "stream-error":
            err = obj.get("err") if isinstance(obj.get("err"), str) else None
            self._fail(
                failure(obj.get("finish_reason"), err)
                or ProviderError(502, f"cohere: {err or 'upstream stream error'}"),
                out,
            )
        elif kind is None and isinstance(obj.get("message"), str):
            self._fail(ProviderError(502, obj["message"] or "cohere: upstream stream error"), out)

    def _tool_chunk(self, obj: dict[str, Any], out: list[bytes]) -> None:
        delta = obj.get("tool_call_delta") if isinstance(obj.get("tool_call_delta"), dict) else {}
        plan = obj.get("text") if isinstance(obj.get("text"), str) else delta.get("text")
        if isinstance(plan, str) and plan and not self._completions:
            self._plan_streamed = True
            self._text(plan, out)
        raw_index = delta.get("index")
        index = int(raw_index) if isinstance(raw_index, (int, float)) else len(self._by_index)
        name = delta.get("name")
        fragment = delta.get("parameters")
        call = self._by_index.get(index)
        if call is None and isinstance(name, str) and name:
            pending = "".join(self._pending_args.pop(index, []))
            call = self._by_index[index] = self._call_start(None, name, pending, out)
        if isinstance(fragment, str) and fragment:
            if call is None:  # parameters before the name: held until the name comes
                self._pending_args.setdefault(index, []).append(fragment)
            else:
                self._call_args(call, fragment, out)

    def _whole_calls(self, calls: Any, out: list[bytes]) -> None:
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and isinstance(call.get("name"), str):
                params = call.get("parameters")
                self._call_start(
                    None, call["name"], compact_json(params if params is not None else {}), out
                )


# ------------------------------------------------------------------ the provider


def _path_kind(path: str) -> str:
    """Which Cohere operation a native or preserved path is: v2, v1, generate, embed."""
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith("/v1/generate") or p.endswith("/generate"):
        return "generate"
    if p.endswith("/v1/chat"):
        return "v1"
    if p.endswith("/embed"):
        return "embed"
    return "v2"


class Cohere(Provider):
    name = NAME
    default_base_url = DEFAULT_BASE_URL
    route_types = frozenset(
        {RouteType.CHAT, RouteType.COMPLETIONS, RouteType.EMBEDDINGS, RouteType.PRESERVE}
    )
    auth_headers = ("authorization",)
    native_format = "cohere"
    # v2's usage.tokens.input_tokens (v1's meta.tokens) counts the whole prompt, the
    # `cached_tokens` that hit Cohere's cache among them
    input_includes_cache = True

    def path_for(self, spec: CallSpec) -> str:
        if spec.route_type is RouteType.EMBEDDINGS:
            return EMBED
        v1 = api_version(spec) == "v1"
        if spec.route_type is RouteType.COMPLETIONS:
            return GENERATE if v1 else V2_CHAT
        return V1_CHAT if v1 else V2_CHAT

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        if spec.route_type is RouteType.PRESERVE:
            url = preserve_url(spec, self.default_base_url)
            return UpstreamRequest(spec.method, url, {}, spec.raw_body, spec.stream)
        path = self.path_for(spec)
        if spec.route_type is RouteType.EMBEDDINGS:
            body = embed_body(spec)
        elif path == GENERATE:
            body = generate_body(spec)
        elif spec.route_type is RouteType.COMPLETIONS:
            body = v2_completion_body(spec)
        elif path == V1_CHAT:
            body = v1_chat_body(spec)
        else:
            body = v2_chat_body(spec)
        stream = spec.stream and spec.route_type is not RouteType.EMBEDDINGS
        headers = {"content-type": "application/json"}
        if not stream:
            headers["accept"] = "application/json"
        elif path == V2_CHAT:
            headers["accept"] = "text/event-stream"
        # v1 streams are newline-delimited JSON by default (an `Accepts: text/event-stream`
        # header would turn them into SSE): no accept header of ours
        url = join_url(spec.options.upstream_url, self.default_base_url, path)
        return UpstreamRequest("POST", url, headers, json_body(body), stream)

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        if spec.route_type is RouteType.PRESERVE:
            return self.parse_native_response(spec, status, headers, body)
        data = _json_object(body)
        path = self.path_for(spec)
        usage: Usage | None
        if spec.route_type is RouteType.EMBEDDINGS:
            answer, usage = from_embed(data, spec)
        elif path == GENERATE:
            answer, usage = from_generate(data, spec)
        elif path == V1_CHAT:
            answer, usage = from_v1_chat(data, spec)
        else:
            answer, usage = from_v2_chat(data, spec)
        return Reply(orjson.dumps(answer), answer, usage, spec.model)

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        data = _loads(body)
        err = error_from_cohere(status, data)
        if err is not None:
            return err
        err = readable(generic_error(self.name, status, headers, body), self.name)
        if status == 498:
            return ProviderError(400, err.message, "invalid_request_error", "content_filter")
        return err

    def stream_translator(self, spec: CallSpec) -> CohereV1Stream | CohereV2Stream:
        if spec.route_type is RouteType.PRESERVE or spec.native:
            kind = _path_kind(spec.path)
        elif spec.route_type is RouteType.COMPLETIONS:
            kind = "generate" if api_version(spec) == "v1" else "v2-completions"
        else:
            kind = "v1" if api_version(spec) == "v1" else "v2"
        if kind == "generate":
            return CohereV1Stream(spec, generate=True)
        if kind == "v1":
            return CohereV1Stream(spec)
        return CohereV2Stream(spec, completions=kind == "v2-completions")

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return _usage_of_answer(data) if isinstance(data, dict) else None

    def parse_native_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        """A Cohere-format answer passed on unchanged; Cohere's answers name no model, so
        the record gets the one asked for."""
        reply = super().parse_native_response(spec, status, headers, body)
        reply.model = reply.model or spec.model
        return reply


PROVIDER = Cohere()
