"""Fake OpenAI-compatible APIs (vLLM, DeepSeek, Groq, xAI, OpenRouter, ...), as handlers
for `FakeUpstream`.

Each host is a `Dialect`: its paths, its key, the request fields it rejects (with its
400), whether it takes `stream_options`, and how it answers: where reasoning text goes
(`reasoning_content` or `reasoning`), how it reports usage (DeepSeek's cache hit/miss
fields, xAI's reasoning tokens apart from completion tokens, Groq's `x_groq.usage`,
OpenRouter's `cost`, a usage chunk sent unasked), its error body shape, and its
mid-stream errors. Streams are OpenAI's SSE chunks, re-cut at awkward byte boundaries.

What it answers is scripted with `Script` (text, reasoning, tool calls, usage, faults).
The chunk builders are shared with the Azure fake (`tests/fakes/azure.py`).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.upstream import Handler, Received, Reply, rechunk

CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "presence_penalty",
        "response_format",
        "seed",
        "service_tier",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "reasoning_effort",
        "modalities",
        "prediction",
        "audio",
        "store",
        "metadata",
        "web_search_options",
    }
)
COMPLETION_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "suffix",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "logprobs",
        "echo",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "best_of",
        "logit_bias",
        "user",
        "seed",
    }
)
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
MESSAGE_KEYS = frozenset(
    {
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "refusal",
        "reasoning_content",
        "reasoning",
        "function_call",
        "audio",
    }
)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


@dataclass(frozen=True)
class Dialect:
    """What one OpenAI-compatible API accepts and how it answers."""

    name: str
    api_key: str
    #: kind ("chat", "completions", "embeddings") -> full request path
    paths: dict[str, str]
    #: accepts stream_options (else 400 naming it)
    stream_options: bool = True
    #: the last content chunk carries usage even when not asked (Together, Cerebras)
    usage_unasked: bool = False
    #: top-level fields it rejects with a 400 (whatever their value)
    rejected: frozenset[str] = frozenset()
    #: extra fields it accepts on top of OpenAI's
    extra_fields: frozenset[str] = frozenset()
    rejects_message_name: bool = False
    #: answers encoding_format base64 with base64 (else floats, the field ignored)
    base64: bool = True
    #: rejects encoding_format altogether (400)
    rejects_encoding_format: bool = False
    #: where reasoning text goes: "reasoning_content", "reasoning" or None
    reasoning_field: str | None = None
    #: "openai", "deepseek", "xai", "openrouter"
    usage_style: str = "openai"
    #: usage of streams in `x_groq.usage` of the last chunk instead of a usage chunk
    x_groq_usage: bool = False
    #: "openai", "vllm" (top-level message), "openrouter" (numeric code)
    error_style: str = "openai"
    #: only knows max_tokens (max_completion_tokens is a 400)
    max_tokens_only: bool = False
    #: takes text content parts only: an image part is a 400, as DeepSeek's API answers
    #: (its message content is `text` parts or a string; no vision model is served)
    text_only: bool = False


def dialects(api_key: str) -> dict[str, Dialect]:
    """The fake hosts, as the real ones behave (see providers/openai_compatible.py)."""
    v1 = {
        "chat": "/v1/chat/completions",
        "completions": "/v1/completions",
        "embeddings": "/v1/embeddings",
    }
    return {
        "vllm": Dialect(
            "vllm",
            api_key,
            v1,
            extra_fields=frozenset({"top_k", "min_p", "repetition_penalty"}),
            reasoning_field="reasoning_content",
            error_style="vllm",
        ),
        "deepseek": Dialect(
            "deepseek",
            api_key,
            {"chat": "/chat/completions", "completions": "/beta/completions"},
            reasoning_field="reasoning_content",
            usage_style="deepseek",
            max_tokens_only=True,
            extra_fields=frozenset({"thinking"}),
            text_only=True,
        ),
        "xai": Dialect(
            "xai",
            api_key,
            {"chat": "/v1/chat/completions", "completions": "/v1/completions"},
            reasoning_field="reasoning_content",
            usage_style="xai",
        ),
        "groq": Dialect(
            "groq",
            api_key,
            {"chat": "/openai/v1/chat/completions"},
            rejected=frozenset({"logprobs", "logit_bias", "top_logprobs"}),
            rejects_message_name=True,
            reasoning_field="reasoning",
            x_groq_usage=True,
            extra_fields=frozenset({"reasoning_format"}),
        ),
        "openrouter": Dialect(
            "openrouter",
            api_key,
            {k: "/api" + v for k, v in v1.items()},
            extra_fields=frozenset({"top_k", "reasoning", "provider", "models", "usage"}),
            reasoning_field="reasoning",
            usage_style="openrouter",
            error_style="openrouter",
        ),
        "together": Dialect(
            "together",
            api_key,
            v1,
            stream_options=False,
            usage_unasked=True,
            extra_fields=frozenset({"top_k", "repetition_penalty"}),
            rejects_encoding_format=True,
            max_tokens_only=True,
        ),
        "cerebras": Dialect(
            "cerebras",
            api_key,
            {"chat": "/v1/chat/completions", "completions": "/v1/completions"},
            stream_options=False,
            usage_unasked=True,
            rejected=frozenset({"parallel_tool_calls", "service_tier"}),
        ),
        "dashscope": Dialect(
            "dashscope",
            api_key,
            {k: "/compatible-mode" + v for k, v in v1.items()},
            extra_fields=frozenset({"top_k"}),
            rejects_encoding_format=True,
            max_tokens_only=True,
        ),
        "databricks": Dialect(
            "databricks",
            api_key,
            {
                "chat": "/serving-endpoints/chat/completions",
                "completions": "/serving-endpoints/completions",
                "embeddings": "/serving-endpoints/embeddings",
            },
            stream_options=False,
            usage_unasked=True,
            extra_fields=frozenset({"top_k"}),
            rejects_encoding_format=True,
            max_tokens_only=True,
        ),
    }


@dataclass
class Script:
    """What the fake answers (every field has a realistic default)."""

    text: str = "The answer is 2."
    # reasoning text, sent where the dialect puts it (when it has a reasoning field)
    reasoning: str = ""
    # (name, arguments) of the tool calls made when the request has tools and its last
    # message is not a tool result
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finish_reason: str | None = None  # default: stop, or tool_calls
    model: str | None = None  # default: the model asked for
    prompt_tokens: int = 23
    completion_tokens: int = 9
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # whether usage is reported at all (some servers' streams report none)
    report_usage: bool = True
    completion_id: str = "chatcmpl-fake0001"
    # streams: re-cut into pieces of this many bytes; a pause (s) before each content
    # chunk; the connection cut after this many pieces; an error event in place of the
    # content chunk of this number; the stream ended cleanly after this many chunks
    # (without a finish reason or [DONE])
    chunk_size: int = 11
    pause: float = 0.0
    cut_after: int | None = None
    error_at: int | None = None
    end_at: int | None = None
    # an error answer instead: (status, message)
    fail: tuple[int, str] | None = None
    # extra response headers of an error answer
    fail_headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- errors


def error_reply(
    d: Dialect, status: int, message: str, param: str | None = None, code: Any = None
) -> Reply:
    if d.error_style == "vllm":
        kind = {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError"}.get(
            status, "InternalServerError"
        )
        body: dict[str, Any] = {
            "object": "error",
            "message": message,
            "type": kind,
            "param": param,
            "code": status,
        }
    elif d.error_style == "openrouter":
        body = {"error": {"code": status, "message": message}}
    else:
        kind = {
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }.get(status, "invalid_request_error" if status < 500 else "server_error")
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Reply.json(body, status)


# --------------------------------------------------------------------- the checks


def check_request(d: Dialect, kind: str, body: dict[str, Any]) -> str | None:
    """Why the host would reject this body (None: it accepts it)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    known = {"chat": CHAT_FIELDS, "completions": COMPLETION_FIELDS}.get(kind, EMBEDDING_FIELDS)
    for name in body:
        if name in d.rejected:
            return f"'{name}' is not supported"
        if name not in known and name not in d.extra_fields:
            return f"Unrecognized request argument supplied: {name}"
    if kind == "embeddings":
        if "encoding_format" in body and d.rejects_encoding_format:
            return "Unrecognized request argument supplied: encoding_format"
        if body.get("encoding_format") not in (None, "float", "base64"):
            return "encoding_format must be float or base64"
        inputs = body.get("input")
        if not inputs or not isinstance(inputs, (str, list)):
            return "'input' is a required property"
        return None
    if "stream_options" in body:
        if not d.stream_options:
            return "Unrecognized request argument supplied: stream_options"
        if not body.get("stream"):
            return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    if "max_completion_tokens" in body and d.max_tokens_only:
        return "Unrecognized request argument supplied: max_completion_tokens"
    if kind == "completions":
        if not isinstance(body.get("prompt"), (str, list)):
            return "'prompt' is a required property"
        return None
    return check_messages(d, body.get("messages"), body)


def check_messages(d: Dialect, messages: Any, body: dict[str, Any]) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must contain at least one message"
    calls: set[str] = set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"{where}.role: must be one of {sorted(ROLES)}"
        for key in m:
            if key == "name" and d.rejects_message_name:
                return f"'{where}.name' : property 'name' is unsupported"
            if key not in MESSAGE_KEYS:
                return f"{where}: unknown property '{key}'"
        content = m.get("content")
        if m["role"] == "assistant":
            if content is None and not m.get("tool_calls"):
                return f"{where}: an assistant message needs content or tool_calls"
            for call in m.get("tool_calls") or ():
                if not isinstance(call, dict) or not call.get("id"):
                    return f"{where}.tool_calls: each call needs an id"
                fn = call.get("function") or {}
                try:
                    json.loads(fn.get("arguments") or "")
                except ValueError:
                    return f"{where}.tool_calls: arguments must be JSON"
                calls.add(call["id"])
        elif m["role"] == "tool":
            if m.get("tool_call_id") not in calls:
                return f"{where}.tool_call_id: no tool call with this id precedes it"
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in (
                    "text",
                    "image_url",
                    "input_audio",
                    "file",
                ):
                    return f"{where}.content[{j}]: unknown content part type"
                if part["type"] != "text" and d.text_only:
                    return (
                        "Failed to deserialize the JSON body into the target type: "
                        f"{where}: unknown variant `{part['type']}`, expected `text`"
                    )
                if part["type"] == "image_url":
                    url = (part.get("image_url") or {}).get("url")
                    if not isinstance(url, str) or not url.startswith(("http", "data:image/")):
                        return f"{where}.content[{j}].image_url.url: invalid image URL"
        elif not isinstance(content, str):
            return f"{where}.content: must be a string or a list of parts"
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(
            isinstance(t, dict)
            and t.get("type") == "function"
            and (t.get("function") or {}).get("name")
            for t in tools
        )
    ):
        return "tools: each tool needs type 'function' and a function name"
    if body.get("tool_choice") is not None and not tools:
        return "'tool_choice' is only allowed when 'tools' are specified"
    return None


# -------------------------------------------------------------------- the answers


def usage_object(d: Dialect, s: Script) -> dict[str, Any]:
    """The host's usage object for the script's counts."""
    p, c, r = s.prompt_tokens, s.completion_tokens, s.reasoning_tokens
    if d.usage_style == "xai":  # reasoning counted apart from completion tokens
        u: dict[str, Any] = {
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c + r,
            "prompt_tokens_details": {"text_tokens": p, "cached_tokens": s.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": r},
            "num_sources_used": 0,
        }
        return u
    u = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if s.cached_tokens or d.usage_style == "deepseek":
        u["prompt_tokens_details"] = {"cached_tokens": s.cached_tokens}
    if r:
        u["completion_tokens_details"] = {"reasoning_tokens": r}
    if d.usage_style == "deepseek":
        u["prompt_cache_hit_tokens"] = s.cached_tokens
        u["prompt_cache_miss_tokens"] = p - s.cached_tokens
    if d.usage_style == "openrouter":
        u["cost"] = 0.000042
        u["is_byok"] = False
    return u


def wants_tools(body: dict[str, Any], s: Script) -> bool:
    messages = body.get("messages") or [{}]
    return bool(body.get("tools") and s.tool_calls and messages[-1].get("role") != "tool")


def call_id(n: int) -> str:
    return f"call_fake{n:04d}"


def chat_message(d: Dialect, body: dict[str, Any], s: Script) -> tuple[dict[str, Any], str]:
    message: dict[str, Any] = {"role": "assistant", "content": s.text}
    if s.reasoning and d.reasoning_field:
        message[d.reasoning_field] = s.reasoning
    if wants_tools(body, s):
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call_id(n),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for n, (name, args) in enumerate(s.tool_calls)
        ]
        return message, s.finish_reason or "tool_calls"
    return message, s.finish_reason or "stop"


def chat_json(d: Dialect, body: dict[str, Any], s: Script) -> dict[str, Any]:
    message, finish = chat_message(d, body, s)
    return {
        "id": s.completion_id,
        "object": "chat.completion",
        "created": 1700000000,
        "model": s.model or body["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "system_fingerprint": "fp_fake",
    } | ({"usage": usage_object(d, s)} if s.report_usage else {})


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def chat_chunks(d: Dialect, body: dict[str, Any], s: Script) -> list[dict[str, Any]]:
    """The chunks of a streamed chat answer (before any usage chunk)."""
    model = s.model or body["model"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": s.completion_id,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    if s.reasoning and d.reasoning_field:
        chunks += [chunk({d.reasoning_field: w}) for w in _words(s.reasoning)]
    _, finish = chat_message(d, body, s)
    if wants_tools(body, s):
        for n, (name, args) in enumerate(s.tool_calls):
            opening = {"index": n, "id": call_id(n), "type": "function"}
            opening["function"] = {"name": name, "arguments": ""}
            chunks.append(chunk({"tool_calls": [opening]}))
            text = json.dumps(args)
            for i in range(0, len(text), 7):
                piece = {"index": n, "function": {"arguments": text[i : i + 7]}}
                chunks.append(chunk({"tool_calls": [piece]}))
    else:
        chunks += [chunk({"content": w}) for w in _words(s.text)]
    chunks.append(chunk({}, finish))
    return chunks


def completion_json(d: Dialect, body: dict[str, Any], s: Script) -> dict[str, Any]:
    return {
        "id": "cmpl-fake0001",
        "object": "text_completion",
        "created": 1700000000,
        "model": s.model or body["model"],
        "choices": [
            {
                "index": 0,
                "text": s.text,
                "logprobs": None,
                "finish_reason": s.finish_reason or "stop",
            }
        ],
    } | ({"usage": usage_object(d, s)} if s.report_usage else {})


def completion_chunks(d: Dialect, body: dict[str, Any], s: Script) -> list[dict[str, Any]]:
    model = s.model or body["model"]

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-fake0001",
            "object": "text_completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    chunks = [chunk(w) for w in _words(s.text)]
    chunks.append(chunk("", s.finish_reason or "stop"))
    return chunks


def vector(i: int, dims: int = 4) -> list[float]:
    """A deterministic embedding (exact in float32)."""
    return [round(0.125 * (i + 1) * (k + 1), 3) for k in range(dims)]


def embeddings_json(d: Dialect, body: dict[str, Any], s: Script) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 4
    data = []
    for i, _ in enumerate(inputs):
        v: Any = vector(i, dims)
        if body.get("encoding_format") == "base64" and d.base64:
            v = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append({"object": "embedding", "index": i, "embedding": v})
    return {
        "object": "list",
        "data": data,
        "model": s.model or body["model"],
        "usage": {"prompt_tokens": s.prompt_tokens, "total_tokens": s.prompt_tokens},
    }


def sse_data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def stream_reply(
    d: Dialect,
    body: dict[str, Any],
    s: Script,
    chunks: list[dict[str, Any]],
    decorate: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
) -> Reply:
    """The SSE answer: the chunks, usage as the dialect reports it, faults, [DONE]."""
    usage = usage_object(d, s)
    options = body.get("stream_options") or {}
    last = chunks[-1]
    asked = bool(options.get("include_usage"))
    if s.report_usage and d.x_groq_usage and not asked:
        last["x_groq"] = {"id": "req_fake", "usage": {**usage, "queue_time": 0.01}}
    elif s.report_usage and d.usage_unasked:
        last["usage"] = usage
    elif s.report_usage and asked:
        chunks = [*chunks, {k: last[k] for k in ("id", "object", "created", "model")}]
        chunks[-1].update({"choices": [], "usage": usage})
    if decorate is not None:
        chunks = decorate(chunks)
    events = [sse_data(c) for c in chunks]
    if s.error_at is not None:
        events = [*events[: s.error_at], sse_data(stream_error(d, chunks[0]))]
    elif s.end_at is not None:
        events = events[: s.end_at]
    else:
        events.append(DONE)
    timed: list[bytes | float] = []
    for e in events:
        if s.pause and (b'"content"' in e or b'"text"' in e):
            timed.append(s.pause)
        timed.append(e)
    reply = Reply.sse(rechunk(timed, s.chunk_size), cut_after=s.cut_after)
    reply.headers = {"content-type": "text/event-stream; charset=utf-8"}
    return reply


def stream_error(d: Dialect, first: dict[str, Any]) -> dict[str, Any]:
    if d.error_style == "openrouter":  # the error rides on a chunk that finishes with "error"
        return {
            "id": first["id"],
            "object": "chat.completion.chunk",
            "created": first["created"],
            "model": first["model"],
            "provider": "FakeProvider",
            "error": {"code": 502, "message": "Provider disconnected"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
    return {"error": {"message": "Internal server error", "type": "server_error", "code": None}}


# ----------------------------------------------------------------------- handler


def openai_like_api(d: Dialect, script: Script | None = None) -> Handler:
    """A handler answering the dialect's paths like the real host."""
    s = script or Script()
    kinds = {path: kind for kind, path in d.paths.items()}

    def handle(req: Received) -> Reply:
        path = req.path.split("?")[0]
        kind = kinds.get(path)
        if req.method != "POST" or kind is None:
            return error_reply(d, 404, f"Not Found: {req.method} {path}")
        auth = req.headers.get("authorization", "")
        if auth != f"Bearer {d.api_key}":
            return error_reply(d, 401, "Incorrect API key provided", code="invalid_api_key")
        try:
            body = json.loads(req.body)
        except ValueError:
            return error_reply(d, 400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return error_reply(d, 400, "The request body must be a JSON object")
        problem = check_request(d, kind, body)
        if problem:
            return error_reply(d, 400, problem)
        if s.fail is not None:
            reply = error_reply(d, *s.fail)
            reply.headers.update(s.fail_headers)
            return reply
        if kind == "embeddings":
            return Reply.json(embeddings_json(d, body, s))
        if kind == "completions":
            if body.get("stream"):
                return stream_reply(d, body, s, completion_chunks(d, body, s))
            return Reply.json(completion_json(d, body, s))
        if body.get("stream"):
            return stream_reply(d, body, s, chat_chunks(d, body, s))
        return Reply.json(chat_json(d, body, s))

    return handle
