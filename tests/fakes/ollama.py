"""A fake Ollama server (`/api/chat`, `/api/generate`, `/api/embed`), as a handler for
`FakeUpstream`.

It answers like Ollama: JSON for `"stream": false`, else NDJSON (`application/x-ndjson`,
one object per line, the last with `"done": true`, `done_reason` and the counts), tool
calls whole in one line with their arguments as an object, `thinking` for thinking
models, errors as `{"error": "..."}` with Ollama's status (404 for a model it does not
have, 400 for tools or thinking on a model without them) and, inside a stream, as an
error line.

It checks what it receives the way Ollama's Go structs read it (content a string, images
base64, tool call arguments an object, `think` a bool or a level, option values of the
right type), and it is stricter than Ollama where Ollama is silently lenient, because
that leniency hides a mistranslation: a top-level field Ollama does not know (OpenAI's
`max_tokens`, `temperature`, `tool_choice`...), an unknown name in `options`, or a chat or
generate request without an explicit `stream` (Ollama would stream by default) is a 400.

What it answers is scripted with `Script`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.upstream import Handler, Received, Reply, rechunk

CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "format",
        "keep_alive",
        "tools",
        "options",
        "think",
        "truncate",
        "shift",
        "logprobs",
        "top_logprobs",
    }
)
GENERATE_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "suffix",
        "system",
        "template",
        "context",
        "stream",
        "raw",
        "format",
        "keep_alive",
        "images",
        "options",
        "think",
        "truncate",
        "shift",
        "logprobs",
        "top_logprobs",
    }
)
EMBED_FIELDS = frozenset({"model", "input", "keep_alive", "truncate", "dimensions", "options"})
MESSAGE_FIELDS = frozenset(
    {"role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"}
)
#: Ollama's option names (api.Options and api.Runner) and the JSON type of each
OPTIONS: dict[str, type | tuple[type, ...]] = {
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": (int, float),
    "min_p": (int, float),
    "typical_p": (int, float),
    "repeat_last_n": int,
    "temperature": (int, float),
    "repeat_penalty": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "stop": list,
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "draft_num_predict": int,
}
THINK_LEVELS = ("low", "medium", "high", "max")

#: the models the fake has, with what each can do
MODELS: dict[str, set[str]] = {
    "llama3.2": {"tools"},
    "qwen3": {"tools", "thinking"},
    "llava": {"vision"},
    "llama2": set(),
    "mistral-tiny": {"tools"},
    "mistral": {"tools"},
    "all-minilm": {"embedding"},
    "nomic-embed-text": {"embedding"},
}

CREATED_AT = "2025-07-07T20:22:19.184789Z"


@dataclass
class Script:
    """What the fake answers (every field has a realistic default)."""

    text: str = "The answer is 2."
    # sent as `thinking` when the request turns thinking on (think true or a level)
    thinking: str = "The user asks for a sum. 1 + 1 = 2."
    # (name, arguments) of the tool calls made when the request has tools and its last
    # message is not a tool result
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # newer Ollama gives tool calls ids ("call_..."), older ones none
    tool_ids: bool = False
    done_reason: str | None = "stop"  # None: left out, as older Ollama did
    prompt_eval_count: int | None = 26  # None: left out (a prompt served from the cache)
    eval_count: int | None = None  # default: one per word of the answer
    model: str | None = None  # default: the model asked for
    embedding_size: int = 4
    # streams: re-cut into pieces of this many bytes, a pause (s) before each line,
    # the connection cut after this many pieces, an error line in place of
    # line number `error_at`, the stream ended cleanly after `end_at` lines (no done)
    chunk_size: int = 17
    pause: float = 0.0
    cut_after: int | None = None
    error_at: int | None = None
    end_at: int | None = None


def error(status: int, message: str) -> Reply:
    return Reply.json({"error": message}, status)


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


# ------------------------------------------------------------------ checks


def _check_options(options: Any) -> str | None:
    if options is None:
        return None
    if not isinstance(options, dict):
        return "options must be an object"
    for name, value in options.items():
        if name not in OPTIONS:
            return f"invalid option provided: {name!r}"
        kind = OPTIONS[name]
        if isinstance(value, bool) and kind is not bool:
            return f"option {name!r} must be a {kind}, got {value!r}"
        if not isinstance(value, kind):
            return f"option {name!r} has the wrong type: {value!r}"
        if name == "stop" and not all(isinstance(s, str) for s in value):
            return "option 'stop' must be a list of strings"
    return None


def _check_images(images: Any, where: str) -> str | None:
    if images is None:
        return None
    if not isinstance(images, list):
        return f"json: cannot unmarshal {type(images).__name__} into Go struct field {where}.images"
    for img in images:
        if not isinstance(img, str):
            return f"json: cannot unmarshal into Go struct field {where}.images of type []uint8"
        try:
            base64.b64decode(img, validate=True)
        except (binascii.Error, ValueError):
            return f"illegal base64 data in {where}.images"
    return None


def _check_think(body: dict[str, Any], model: str) -> str | None:
    think = body.get("think")
    if think is None:
        return None
    if not isinstance(think, bool) and think not in THINK_LEVELS:
        return f'invalid think value: {think!r} (must be "high", "medium", "low", "max", true, or false)'
    if think and "thinking" not in MODELS[model]:
        return f'"{model}" does not support thinking'
    return None


def check_common(body: dict[str, Any], fields: frozenset[str], streams: bool) -> str | None:
    for name in body:
        if name not in fields:
            return f"unknown field {name!r} (Ollama would silently ignore it)"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    if streams and not isinstance(body.get("stream"), bool):
        return "'stream' must be given (Ollama streams unless told false)"
    fmt = body.get("format")
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        return f"invalid format: {fmt!r}"
    return _check_options(body.get("options"))


def check_chat(body: dict[str, Any]) -> str | None:
    problem = check_common(body, CHAT_FIELDS, True)
    if problem:
        return problem
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages is required"
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return f"{where} must be an object"
        for name in m:
            if name not in MESSAGE_FIELDS:
                return f"unknown field {where}.{name!r}"
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            return f"{where}: invalid role {m.get('role')!r}"
        if not isinstance(m.get("content", ""), str):
            return (
                "json: cannot unmarshal array into Go struct field "
                f"ChatRequest.{where}.content of type string"
            )
        problem = _check_images(m.get("images"), where)
        if problem:
            return problem
        for j, call in enumerate(m.get("tool_calls") or ()):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                return f"{where}.tool_calls[{j}].function.name is required"
            if not isinstance(fn.get("arguments", {}), dict):
                return (
                    "json: cannot unmarshal string into Go struct field "
                    f"{where}.tool_calls[{j}].function.arguments"
                )
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools must be an array"
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
                return f"tools[{i}] must be a function tool with a name"
    return None


def check_generate(body: dict[str, Any]) -> str | None:
    problem = check_common(body, GENERATE_FIELDS, True)
    if problem:
        return problem
    if not isinstance(body.get("prompt", ""), str):
        return "prompt must be a string"
    return _check_images(body.get("images"), "GenerateRequest")


def check_embed(body: dict[str, Any]) -> str | None:
    problem = check_common(body, EMBED_FIELDS, False)
    if problem:
        return problem
    data = body.get("input")
    if isinstance(data, str):
        return None
    if not isinstance(data, list) or not data or not all(isinstance(t, str) for t in data):
        return "invalid input type"
    return None


# ------------------------------------------------------------------ answers


def _counts(s: Script, words: int) -> dict[str, Any]:
    out: dict[str, Any] = {"total_duration": 4062418334, "load_duration": 1229365792}
    if s.prompt_eval_count is not None:
        out["prompt_eval_count"] = s.prompt_eval_count
        out["prompt_eval_duration"] = 167969000
    out["eval_count"] = s.eval_count if s.eval_count is not None else words
    out["eval_duration"] = 2658646000
    return out


def _answer_words(body: dict[str, Any], s: Script) -> tuple[list[str], str]:
    """The words of the answer and its done_reason (num_predict cuts it: length)."""
    words = _words(s.text)
    limit = (body.get("options") or {}).get("num_predict")
    reason = s.done_reason or "stop"
    if isinstance(limit, int) and 0 < limit < len(words):
        words = words[:limit]
        reason = "length"
    return words, reason


def _thinks(body: dict[str, Any]) -> bool:
    return bool(body.get("think"))


def _wants_tools(body: dict[str, Any], s: Script) -> bool:
    messages = body.get("messages") or []
    return bool(body.get("tools")) and bool(s.tool_calls) and messages[-1].get("role") != "tool"


def _tool_calls(s: Script) -> list[dict[str, Any]]:
    calls = []
    for n, (name, args) in enumerate(s.tool_calls):
        call: dict[str, Any] = {"function": {"name": name, "arguments": args}}
        if s.tool_ids:
            call = {"id": f"call_fake{n:04d}", "function": {"index": n, **call["function"]}}
        calls.append(call)
    return calls


def _final(body: dict[str, Any], s: Script, reason: str, words: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model": s.model or body["model"], "created_at": CREATED_AT}
    return (
        out
        | {"done": True}
        | ({"done_reason": reason} if s.done_reason else {})
        | _counts(s, words)
    )


def chat_json(body: dict[str, Any], s: Script) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    if _thinks(body):
        message["thinking"] = s.thinking
    if _wants_tools(body, s):
        message["tool_calls"] = _tool_calls(s)
        return {
            "model": s.model or body["model"],
            "created_at": CREATED_AT,
            "message": message,
        } | _final(body, s, "stop", 18)
    words, reason = _answer_words(body, s)
    message["content"] = "".join(words)
    return {
        "model": s.model or body["model"],
        "created_at": CREATED_AT,
        "message": message,
    } | _final(body, s, reason, len(words))


def chat_lines(body: dict[str, Any], s: Script) -> list[dict[str, Any]]:
    model = s.model or body["model"]

    def line(**message: Any) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": "", **message},
            "done": False,
        }

    lines = []
    if _thinks(body):
        lines += [line(thinking=w) for w in _words(s.thinking)]
    if _wants_tools(body, s):
        lines.append(line(tool_calls=_tool_calls(s)))
        final = _final(body, s, "stop", 18)
    else:
        words, reason = _answer_words(body, s)
        lines += [line(content=w) for w in words]
        final = _final(body, s, reason, len(words))
    lines.append({"message": {"role": "assistant", "content": ""}} | final)
    return lines


def generate_json(body: dict[str, Any], s: Script) -> dict[str, Any]:
    words, reason = _answer_words(body, s)
    out: dict[str, Any] = {
        "model": s.model or body["model"],
        "created_at": CREATED_AT,
        "response": "".join(words),
    }
    if _thinks(body):
        out["thinking"] = s.thinking
    return out | _final(body, s, reason, len(words)) | {"context": [1, 2, 3]}


def generate_lines(body: dict[str, Any], s: Script) -> list[dict[str, Any]]:
    model = s.model or body["model"]
    words, reason = _answer_words(body, s)
    lines = [
        {"model": model, "created_at": CREATED_AT, "response": w, "done": False} for w in words
    ]
    final = {"response": ""} | _final(body, s, reason, len(words)) | {"context": [1, 2, 3]}
    return [*lines, final]


def vector(text: str, size: int) -> list[float]:
    """A deterministic embedding of `text` (exactly representable in float32)."""
    return [((sum(text.encode()) + 7 * i) % 97) / 64 for i in range(size)]


def embed_json(body: dict[str, Any], s: Script) -> dict[str, Any]:
    texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
    size = body.get("dimensions") or s.embedding_size
    out: dict[str, Any] = {
        "model": s.model or body["model"],
        "embeddings": [vector(t, size) for t in texts],
        "total_duration": 14143917,
        "load_duration": 1019500,
    }
    if s.prompt_eval_count is not None:
        out["prompt_eval_count"] = sum(len(t.split()) for t in texts)
    return out


def ndjson(lines: list[dict[str, Any]], s: Script) -> Reply:
    raw = [json.dumps(line).encode() + b"\n" for line in lines]
    if s.error_at is not None:
        err = b'{"error":"an error was encountered while running the model: unexpected EOF"}\n'
        raw = [*raw[: s.error_at], err]
    if s.end_at is not None:
        raw = raw[: s.end_at]
    timed: list[bytes | float] = []
    for item in raw:
        if s.pause:
            timed.append(s.pause)
        timed.append(item)
    reply = Reply(
        200, {"content-type": "application/x-ndjson"}, chunks=rechunk(timed, s.chunk_size)
    )
    reply.cut_after = s.cut_after
    return reply


# ------------------------------------------------------------------ the handler


def ollama_api(script: Script | None = None, api_key: str | None = None) -> Handler:
    """A handler answering `/api/chat`, `/api/generate` and `/api/embed` like Ollama (with
    `api_key`, requests must carry `Authorization: Bearer <api_key>`, as ollama.com's)."""
    s = script or Script()

    def handle(req: Received) -> Reply:
        path = req.path.split("?")[0]
        if req.method != "POST" or path not in ("/api/chat", "/api/generate", "/api/embed"):
            return Reply(404, {"content-type": "text/plain"}, b"404 page not found")
        if api_key is not None and req.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "unauthorized")
        try:
            body = json.loads(req.body)
        except ValueError:
            return error(400, "invalid character in request body")
        if not isinstance(body, dict):
            return error(400, "json: cannot unmarshal into Go value of type api.ChatRequest")
        check = {
            "/api/chat": check_chat,
            "/api/generate": check_generate,
            "/api/embed": check_embed,
        }
        problem = check[path](body)
        if problem:
            return error(400, problem)
        model = body["model"]
        if model not in MODELS:
            return error(404, f'model "{model}" not found, try pulling it first')
        problem = _check_think(body, model)
        if problem:
            return error(400, problem)
        if path == "/api/embed":
            if "embedding" not in MODELS[model]:
                return error(400, f'"{model}" does not support embeddings')
            return Reply.json(embed_json(body, s))
        if "embedding" in MODELS[model]:
            return error(400, f'"{model}" does not support generate')
        if body.get("tools") and "tools" not in MODELS[model]:
            return error(400, f"registry.ollama.ai/library/{model}:latest does not support tools")
        if path == "/api/chat":
            if body["stream"]:
                return ndjson(chat_lines(body, s), s)
            return Reply.json(chat_json(body, s))
        if body["stream"]:
            return ndjson(generate_lines(body, s), s)
        return Reply.json(generate_json(body, s))

    return handle
