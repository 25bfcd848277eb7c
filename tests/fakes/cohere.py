"""A fake Cohere API (Chat v2 and v1, Generate, Embed v2), as a handler for `FakeUpstream`.

It checks what the real API checks, where the gateway could get it wrong:

- `Authorization: Bearer <key>`: none is 401 `no api key supplied`, a wrong one 401
  `invalid api token` (Cohere's messages).
- The path: `POST /v2/chat`, `/v1/chat`, `/v1/generate`, `/v2/embed` (anything else 404).
- The body: each endpoint's own fields only (OpenAI-only fields such as `top_p`,
  `stop`, `n`, `user`, `stream_options`, `max_completion_tokens` are a 400 naming the
  field), required fields, ranges (`temperature` 0..1, `p` 0.01..0.99, `k` 0..500, at
  most 5 stop sequences), v2 roles and content parts (text and image_url), v2 tool calls
  answered by tool messages with their ids, v2 `tool_choice` REQUIRED/NONE only with
  tools, v1 `chat_history` roles USER/CHATBOT/SYSTEM/TOOL, v1 tools with
  `parameter_definitions`, v1 `tool_results` only with `tools`, embed `input_type` and
  at most 96 texts.
- Answers like the real API: JSON; v2 streams as SSE (`event: <type>` + `data:`),
  v1 chat and generate streams as newline-delimited JSON (`application/stream+json`),
  re-cut at awkward byte boundaries; usage with `billed_units` and `tokens`.

What it answers is scripted with `Script`: the text, tool calls (made when the request
offers tools and does not answer earlier calls), the plan said before them, thinking,
the usage, the finish reason, and faults (a cut connection, a stream that ends before
its last event, a generation that fails with finish_reason ERROR).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.upstream import Handler, Received, Reply, rechunk

V2_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "tools",
        "strict_tools",
        "documents",
        "citation_options",
        "response_format",
        "safety_mode",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "k",
        "p",
        "logprobs",
        "tool_choice",
        "thinking",
        "priority",
    }
)
V1_CHAT_FIELDS = frozenset(
    {
        "message",
        "model",
        "stream",
        "preamble",
        "chat_history",
        "conversation_id",
        "prompt_truncation",
        "connectors",
        "search_queries_only",
        "documents",
        "citation_quality",
        "temperature",
        "max_tokens",
        "max_input_tokens",
        "k",
        "p",
        "seed",
        "stop_sequences",
        "frequency_penalty",
        "presence_penalty",
        "raw_prompting",
        "tools",
        "tool_results",
        "force_single_step",
        "response_format",
        "safety_mode",
    }
)
GENERATE_FIELDS = frozenset(
    {
        "prompt",
        "model",
        "num_generations",
        "stream",
        "max_tokens",
        "truncate",
        "temperature",
        "seed",
        "preset",
        "end_sequences",
        "stop_sequences",
        "k",
        "p",
        "frequency_penalty",
        "presence_penalty",
        "return_likelihoods",
        "raw_prompting",
    }
)
EMBED_FIELDS = frozenset(
    {
        "texts",
        "images",
        "model",
        "input_type",
        "inputs",
        "max_tokens",
        "output_dimension",
        "embedding_types",
        "truncate",
        "priority",
    }
)
INPUT_TYPES = frozenset(
    {"search_document", "search_query", "classification", "clustering", "image"}
)
FINISH_V2 = frozenset({"COMPLETE", "STOP_SEQUENCE", "MAX_TOKENS", "TOOL_CALL", "ERROR", "TIMEOUT"})


@dataclass
class Script:
    """What the fake answers (every field has a realistic default)."""

    text: str = "The answer is 2."
    # (name, arguments) of the tool calls made when the request offers tools and does
    # not send tool results back
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tool_plan: str = "I will look that up."
    # sent as v2 thinking content before the text when set
    thinking: str | None = None
    finish_reason: str | None = None  # default: COMPLETE, or TOOL_CALL (v2) for calls
    error_text: str = "internal server error, please retry"  # message-end delta.error
    input_tokens: int = 71  # actual counts (usage.tokens / meta.tokens)
    output_tokens: int = 26
    billed_input: int = 5  # billed units
    billed_output: int = 26
    cached_tokens: int | None = None
    report_usage: bool = True
    answer_id: str = "c14c80c3-18eb-4519-9460-6c92edd8cfb4"
    dims: int = 4  # embedding size when output_dimension is not given
    # streams: re-cut into pieces of this many bytes, a pause (s) before each text
    # event, the connection cut after this many pieces, the stream ended cleanly after
    # this many events (before its last event: a truncated answer)
    chunk_size: int = 11
    pause: float = 0.0
    cut_after: int | None = None
    end_at: int | None = None


class Invalid(Exception):
    pass


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    body: dict[str, Any] = {"id": "0c5d1ba4-fake-4e51-9f0f-3c2f4d1e0a11", "message": message}
    return Reply.json(body, status, headers)


def cohere_api(api_key: str, script: Script | None = None) -> Handler:
    """A handler answering Cohere's chat, generate and embed endpoints."""
    s = script or Script()

    def handle(req: Received) -> Reply:
        path = req.path.split("?")[0]
        routes = {
            "/v2/chat": v2_chat,
            "/v1/chat": v1_chat,
            "/v1/generate": generate,
            "/v2/embed": embed,
        }
        if req.method != "POST" or path not in routes:
            return error(404, f"no such endpoint: {req.method} {path}")
        auth = req.headers.get("authorization", "")
        if not auth:
            return error(401, "no api key supplied")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token != api_key:
            return error(401, "invalid api token")
        try:
            body = json.loads(req.body)
        except ValueError:
            return error(400, "invalid request: the body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "invalid request: the body must be a JSON object")
        try:
            return routes[path](body, s)
        except Invalid as e:
            return error(400, f"invalid request: {e}")

    return handle


# ------------------------------------------------------------------ checks


def _fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    for name in body:
        if name not in allowed:
            raise Invalid(f"unknown field: parameter {name} is not a valid field")


def _sampling(body: dict[str, Any]) -> None:
    t = body.get("temperature")
    if t is not None and not 0 <= t <= 1:
        raise Invalid("temperature must be between 0 and 1")
    p = body.get("p")
    if p is not None and not 0.01 <= p <= 0.99:
        raise Invalid("p must be between 0.01 and 0.99")
    k = body.get("k")
    if k is not None and (not isinstance(k, int) or not 0 <= k <= 500):
        raise Invalid("k must be an integer between 0 and 500")
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(x, str) for x in stop):
            raise Invalid("stop_sequences must be a list of strings")
        if len(stop) > 5:
            raise Invalid("stop_sequences can have at most 5 items")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise Invalid("max_tokens must be a positive integer")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid("stream must be a boolean")


def _text_parts(content: Any, where: str, images: bool) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise Invalid(f"{where}.content must be a string or a list of content blocks")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if images and kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str) or not url.startswith(("data:image/", "http")):
                raise Invalid(f"{where}.content[{j}].image_url.url must be a data URI or URL")
            continue
        raise Invalid(f"{where}.content[{j}]: unsupported content type {kind!r}")


def check_v2_chat(body: dict[str, Any]) -> None:
    _fields(body, V2_CHAT_FIELDS)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model is required")
    _sampling(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages must be a non-empty list")
    pending: set[str] = set()  # tool call ids not answered yet
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role == "system":
            _keys(m, {"role", "content"}, where)
            _text_parts(m.get("content"), where, images=False)
        elif role == "user":
            _keys(m, {"role", "content"}, where)
            _text_parts(m.get("content"), where, images=True)
        elif role == "assistant":
            _keys(m, {"role", "content", "tool_calls", "tool_plan", "citations"}, where)
            if m.get("content") is not None:
                _text_parts(m["content"], where, images=False)
            for j, call in enumerate(m.get("tool_calls") or ()):
                fn = call.get("function") if isinstance(call, dict) else None
                if (
                    not isinstance(call.get("id"), str)
                    or call.get("type") != "function"
                    or not isinstance(fn, dict)
                    or not isinstance(fn.get("name"), str)
                    or not isinstance(fn.get("arguments"), str)
                ):
                    raise Invalid(f"{where}.tool_calls[{j}] needs id, type and function")
                json.loads(fn["arguments"])
                pending.add(call["id"])
        elif role == "tool":
            _keys(m, {"role", "content", "tool_call_id"}, where)
            if m.get("tool_call_id") not in pending:
                raise Invalid(f"{where}.tool_call_id does not match any tool call")
            pending.discard(m["tool_call_id"])
            content = m.get("content")
            if isinstance(content, list):
                _text_parts(content, where, images=False)
            elif not isinstance(content, str):
                raise Invalid(f"{where}.content is required")
        else:
            raise Invalid(f"{where}.role must be one of user, assistant, system, tool")
    tools = body.get("tools")
    if tools is not None:
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(fn, dict):
                raise Invalid(f"tools[{i}] must be a function tool")
            if not isinstance(fn.get("name"), str) or not isinstance(fn.get("parameters"), dict):
                raise Invalid(f"tools[{i}].function needs name and parameters")
            _keys(fn, {"name", "description", "parameters"}, f"tools[{i}].function")
    choice = body.get("tool_choice")
    if choice is not None:
        if choice not in ("REQUIRED", "NONE"):
            raise Invalid("tool_choice must be one of REQUIRED, NONE")
        if not tools:
            raise Invalid("tool_choice requires tools to be passed")
    fmt = body.get("response_format")
    if fmt is not None and (
        not isinstance(fmt, dict)
        or fmt.get("type") not in ("text", "json_object")
        or set(fmt) - {"type", "json_schema"}
    ):
        raise Invalid("response_format must be {type: text|json_object, json_schema?}")
    thinking = body.get("thinking")
    if thinking is not None and (
        not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled")
    ):
        raise Invalid("thinking.type must be enabled or disabled")


def _keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(obj) - allowed
    if extra:
        raise Invalid(f"{where}: unknown field {sorted(extra)[0]}")


def check_v1_chat(body: dict[str, Any]) -> None:
    _fields(body, V1_CHAT_FIELDS)
    if not isinstance(body.get("message"), str):
        raise Invalid("message is required")
    _sampling(body)
    for i, turn in enumerate(body.get("chat_history") or ()):
        where = f"chat_history[{i}]"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role == "TOOL":
            _keys(turn, {"role", "tool_results"}, where)
            _check_results(turn.get("tool_results"), where)
        elif role in ("USER", "CHATBOT", "SYSTEM"):
            _keys(turn, {"role", "message", "tool_calls"}, where)
            if not isinstance(turn.get("message"), str):
                raise Invalid(f"{where}.message is required")
            for call in turn.get("tool_calls") or ():
                if not isinstance(call.get("name"), str) or not isinstance(
                    call.get("parameters"), dict
                ):
                    raise Invalid(f"{where}.tool_calls need name and parameters")
        else:
            raise Invalid(f"{where}.role must be one of CHATBOT, SYSTEM, TOOL, USER")
    tools = body.get("tools")
    for i, tool in enumerate(tools or ()):
        where = f"tools[{i}]"
        if not isinstance(tool.get("name"), str) or not isinstance(tool.get("description"), str):
            raise Invalid(f"{where} needs name and description")
        _keys(tool, {"name", "description", "parameter_definitions"}, where)
        for name, definition in (tool.get("parameter_definitions") or {}).items():
            if not isinstance(definition, dict) or not isinstance(definition.get("type"), str):
                raise Invalid(f"{where}.parameter_definitions.{name}.type is required")
            _keys(definition, {"type", "description", "required"}, f"{where}.{name}")
    if body.get("tool_results") is not None:
        if not tools:
            raise Invalid("tool_results requires tools to be passed")
        _check_results(body["tool_results"], "tool_results")
    fmt = body.get("response_format")
    if fmt is not None and (
        not isinstance(fmt, dict)
        or fmt.get("type") not in ("text", "json_object")
        or set(fmt) - {"type", "schema"}
    ):
        raise Invalid("response_format must be {type: text|json_object, schema?}")


def _check_results(results: Any, where: str) -> None:
    if not isinstance(results, list):
        raise Invalid(f"{where} must be a list")
    for j, r in enumerate(results):
        call = r.get("call") if isinstance(r, dict) else None
        outputs = r.get("outputs") if isinstance(r, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise Invalid(f"{where}[{j}].call.name is required")
        if not isinstance(call.get("parameters"), dict):
            raise Invalid(f"{where}[{j}].call.parameters must be an object")
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise Invalid(f"{where}[{j}].outputs must be a list of objects")


def check_generate(body: dict[str, Any]) -> None:
    _fields(body, GENERATE_FIELDS)
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        raise Invalid("prompt is required")
    _sampling(body)


def check_embed(body: dict[str, Any]) -> None:
    _fields(body, EMBED_FIELDS)
    if not isinstance(body.get("model"), str):
        raise Invalid("model is required")
    if body.get("input_type") not in INPUT_TYPES:
        raise Invalid("input_type is required for embed v3 and newer models")
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise Invalid("texts must be a non-empty list of strings")
    if len(texts) > 96:
        raise Invalid("too many texts: at most 96")
    types = body.get("embedding_types")
    if not isinstance(types, list) or not types:
        raise Invalid("embedding_types is required")


# ------------------------------------------------------------------ answers


def _usage(s: Script) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "billed_units": {"input_tokens": s.billed_input, "output_tokens": s.billed_output},
        "tokens": {"input_tokens": s.input_tokens, "output_tokens": s.output_tokens},
    }
    if s.cached_tokens is not None:
        usage["cached_tokens"] = s.cached_tokens
    return usage


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _call_id(name: str, n: int) -> str:
    return f"{name}_fake{n:02d}xyz"


def _send(events: list[bytes], s: Script, content_type: str, timed: set[int]) -> Reply:
    if s.end_at is not None:
        events = events[: s.end_at]
    out: list[bytes | float] = []
    for i, e in enumerate(events):
        if s.pause and i in timed:
            out.append(s.pause)
        out.append(e)
    reply = Reply.sse(rechunk(out, s.chunk_size), cut_after=s.cut_after)
    reply.headers = {"content-type": content_type, "x-endpoint-monthly-call-limit": "1000"}
    return reply


def _v2_wants_calls(body: dict[str, Any], s: Script) -> bool:
    return (
        bool(body.get("tools"))
        and bool(s.tool_calls)
        and body.get("tool_choice") != "NONE"
        and body["messages"][-1].get("role") != "tool"
    )


def v2_chat(body: dict[str, Any], s: Script) -> Reply:
    check_v2_chat(body)
    calls = _v2_wants_calls(body, s)
    finish = s.finish_reason or ("TOOL_CALL" if calls else "COMPLETE")
    if body.get("stream"):
        return _v2_stream(body, s, calls, finish)
    message: dict[str, Any] = {"role": "assistant"}
    if calls:
        message["tool_plan"] = s.tool_plan
        message["tool_calls"] = [
            {
                "id": _call_id(name, n),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for n, (name, args) in enumerate(s.tool_calls)
        ]
    else:
        content = []
        if s.thinking:
            content.append({"type": "thinking", "thinking": s.thinking})
        content.append({"type": "text", "text": s.text})
        message["content"] = content
    answer: dict[str, Any] = {"id": s.answer_id, "message": message, "finish_reason": finish}
    if s.report_usage:
        answer["usage"] = _usage(s)
    return Reply.json(answer, headers={"x-endpoint-monthly-call-limit": "1000"})


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _v2_stream(body: dict[str, Any], s: Script, calls: bool, finish: str) -> Reply:
    events = [
        _sse("message-start", {"id": s.answer_id, "delta": {"message": {"role": "assistant"}}})
    ]
    timed: set[int] = set()
    if calls:
        for w in _words(s.tool_plan):
            timed.add(len(events))
            events.append(_sse("tool-plan-delta", {"delta": {"message": {"tool_plan": w}}}))
        for n, (name, args) in enumerate(s.tool_calls):
            start = {
                "id": _call_id(name, n),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            events.append(
                _sse("tool-call-start", {"index": n, "delta": {"message": {"tool_calls": start}}})
            )
            for piece in _pieces(json.dumps(args), 5):
                delta = {"message": {"tool_calls": {"function": {"arguments": piece}}}}
                timed.add(len(events))
                events.append(_sse("tool-call-delta", {"index": n, "delta": delta}))
            events.append(_sse("tool-call-end", {"index": n}))
    else:
        blocks: list[tuple[str, str]] = []
        if s.thinking:
            blocks.append(("thinking", s.thinking))
        blocks.append(("text", s.text))
        for index, (kind, text) in enumerate(blocks):
            opening = {"type": kind, kind: ""}
            events.append(
                _sse("content-start", {"index": index, "delta": {"message": {"content": opening}}})
            )
            for w in _words(text):
                timed.add(len(events))
                delta = {"message": {"content": {kind: w}}}
                events.append(_sse("content-delta", {"index": index, "delta": delta}))
            events.append(_sse("content-end", {"index": index}))
    end: dict[str, Any] = {"finish_reason": finish}
    if finish == "ERROR":
        end["error"] = s.error_text
    if s.report_usage:
        end["usage"] = _usage(s)
    events.append(_sse("message-end", {"id": s.answer_id, "delta": end}))
    return _send(events, s, "text/event-stream", timed)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def v1_chat(body: dict[str, Any], s: Script) -> Reply:
    check_v1_chat(body)
    calls = bool(body.get("tools")) and bool(s.tool_calls) and body.get("tool_results") is None
    finish = s.finish_reason or "COMPLETE"
    text = s.tool_plan if calls else s.text
    tool_calls = [{"name": name, "parameters": args} for name, args in s.tool_calls]
    history = [*(body.get("chat_history") or []), {"role": "USER", "message": body["message"]}]
    turn: dict[str, Any] = {"role": "CHATBOT", "message": text}
    if calls:
        turn["tool_calls"] = tool_calls
    response: dict[str, Any] = {
        "response_id": "3ed9cd6c-afcc-4591-a4d3-5745ba88922e",
        "text": text,
        "generation_id": s.answer_id,
        "chat_history": [*history, turn],
        "finish_reason": finish,
    }
    if calls:
        response["tool_calls"] = tool_calls
    if s.report_usage:
        response["meta"] = {"api_version": {"version": "1"}, **_usage(s)}
    if not body.get("stream"):
        return Reply.json(response)
    events = [
        _line({"is_finished": False, "event_type": "stream-start", "generation_id": s.answer_id})
    ]
    timed: set[int] = set()
    if calls:
        for w in _words(s.tool_plan):
            timed.add(len(events))
            events.append(
                _line({"is_finished": False, "event_type": "tool-calls-chunk", "text": w})
            )
        for n, (name, args) in enumerate(s.tool_calls):
            delta: dict[str, Any] = {"index": n, "name": name}
            events.append(
                _line(
                    {
                        "is_finished": False,
                        "event_type": "tool-calls-chunk",
                        "tool_call_delta": delta,
                    }
                )
            )
            for piece in _pieces(json.dumps(args, indent=4), 6):
                timed.add(len(events))
                delta = {"index": n, "parameters": piece}
                events.append(
                    _line(
                        {
                            "is_finished": False,
                            "event_type": "tool-calls-chunk",
                            "tool_call_delta": delta,
                        }
                    )
                )
        events.append(
            _line(
                {
                    "is_finished": False,
                    "event_type": "tool-calls-generation",
                    "text": s.tool_plan,
                    "tool_calls": tool_calls,
                }
            )
        )
    else:
        for w in _words(s.text):
            timed.add(len(events))
            events.append(_line({"is_finished": False, "event_type": "text-generation", "text": w}))
    events.append(
        _line(
            {
                "is_finished": True,
                "event_type": "stream-end",
                "response": response,
                "finish_reason": finish,
            }
        )
    )
    return _send(events, s, "application/stream+json", timed)


def generate(body: dict[str, Any], s: Script) -> Reply:
    check_generate(body)
    finish = s.finish_reason or "COMPLETE"
    count = body.get("num_generations") or 1
    generations = [
        {"id": f"gen-{i}", "text": s.text, "index": i, "finish_reason": finish}
        for i in range(count)
    ]
    if count == 1:
        del generations[0]["index"]
    answer: dict[str, Any] = {
        "id": s.answer_id,
        "generations": generations,
        "prompt": body["prompt"],
    }
    if s.report_usage:
        answer["meta"] = {
            "api_version": {"version": "1"},
            "billed_units": {"input_tokens": s.billed_input, "output_tokens": s.billed_output},
        }
    if not body.get("stream"):
        return Reply.json(answer)
    events: list[bytes] = []
    timed: set[int] = set()
    for w in _words(s.text):
        timed.add(len(events))
        events.append(_line({"text": w, "is_finished": False, "event_type": "text-generation"}))
    end = {
        "is_finished": True,
        "event_type": "stream-end",
        "finish_reason": finish,
        "response": {"id": s.answer_id, "generations": generations},
    }
    events.append(_line(end))
    return _send(events, s, "application/stream+json", timed)


def _vector(text: str, dims: int) -> list[float]:
    seed = sum(map(ord, text)) or 1
    return [round(((seed * (i + 3)) % 97) / 97 - 0.5, 6) for i in range(dims)]


def embed(body: dict[str, Any], s: Script) -> Reply:
    check_embed(body)
    dims = body.get("output_dimension") or s.dims
    answer: dict[str, Any] = {
        "id": "da6e531f-54c6-4a73-bf92-f60566d8d753",
        "texts": body["texts"],
        "embeddings": {"float": [_vector(t, dims) for t in body["texts"]]},
        "response_type": "embeddings_by_type",
        "meta": {"api_version": {"version": "2"}},
    }
    if s.report_usage:
        answer["meta"]["billed_units"] = {
            "input_tokens": sum(len(t.split()) for t in body["texts"])
        }
    return Reply.json(answer)
