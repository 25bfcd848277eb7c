"""Mistral AI: La Plateforme's API (its dialect of OpenAI's), or Mistral models on Ollama.

`model.options.mistral_format` picks the wire format. Kong requires it; here it defaults
to `openai` when unset, since Mistral's own API (`https://api.mistral.ai`, the default
base) speaks that dialect. `mistral_format: ollama` needs `upstream_url` (where Ollama
runs) and is translated by `providers.ollama` (chat and completions). Route types: chat,
completions, embeddings (openai format only) and preserve.

The openai format: chat goes to `/v1/chat/completions`, completions to Mistral's
fill-in-the-middle API `/v1/fim/completions` (Codestral; its answer has chat-shaped
choices, turned into `text_completion` ones), embeddings to `/v1/embeddings`. A
bare-origin `upstream_url` keeps those paths, a URL with a path is used as written.

Mistral's dialect differs from OpenAI's where this module translates:

- **Unknown fields are refused** (422 extra_forbidden), so only the fields Mistral takes
  are sent: `max_completion_tokens` becomes `max_tokens`, `seed` becomes
  `random_seed`, and `user`, `store`, `stream_options`, `logprobs`, `logit_bias`,
  `service_tier`, `top_k` and the like are not sent. Mistral's own fields (`safe_prompt`,
  `prompt_mode`, `guardrails`, `random_seed`, `min_tokens`) pass when a client sends
  them.
- **Messages** keep only Mistral's fields: a user's `name`, an assistant's
  `reasoning_content`, `refusal` or `thinking_blocks` are dropped (Mistral refuses them);
  `developer` is `system`; `input_audio` and `file` parts take Mistral's shapes.
- **Tool call ids** must be 9 characters of [a-zA-Z0-9] on Mistral: any other id (from
  another provider, or made up by a client) is mapped to such an id, the same on the
  assistant's call and on the tool result that answers it. `tool_choice: "required"`
  is sent as Mistral's `"any"`; legacy `functions`/`function_call` become
  `tools`/`tool_choice`.
- **Answers**: content given as chunks (Magistral's `thinking` chunks and `text` chunks)
  becomes `reasoning_content` and `content`; finish reasons stop, length, tool_calls are
  OpenAI's, `model_length` is length, and `error` (the model failed mid-answer) is a 502
  (in a stream: an error event). Usage is OpenAI's shape, `prompt_tokens` including the
  cached `prompt_tokens_details.cached_tokens`.
- **Streams** always carry usage (Mistral puts it on the last content chunk): it is taken
  off that chunk and sent as a final `choices: []` chunk only when the client asked with
  `stream_options.include_usage`. Streamed tool calls get OpenAI's `index` per call (an
  id seen before continues its call, a new id starts the next index, Mistral's
  placeholder id "null" is no id) and an id and name on their first delta. A stream
  without `data: [DONE]` or a finish reason ends with an error event.
- **Embeddings**: `dimensions` is `output_dimension`; `encoding_format: "base64"` is
  encoded by the gateway from the floats Mistral sends.
- **Errors**: Mistral's `{"object": "error", "message": ..., "type", "code"}` (the
  message may be a pydantic `detail` list, naming each refused field) keep Mistral's
  status and read as one message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import string
import time
from typing import Any

import orjson

from providers import ollama, sse
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
from providers.openai import OpenAIStream, usage_from_openai
from providers.openai_compatible import readable

NAME = "mistral"
DEFAULT_BASE_URL = "https://api.mistral.ai"
FORMATS = ("openai", "ollama")

PATHS = {
    RouteType.CHAT: "/v1/chat/completions",
    RouteType.COMPLETIONS: "/v1/fim/completions",
    RouteType.EMBEDDINGS: "/v1/embeddings",
}

#: body fields of Mistral's chat API that mean what OpenAI's do (sent as they are)
CHAT_FIELDS = (
    "temperature",
    "top_p",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "parallel_tool_calls",
    "prediction",
    "reasoning_effort",
    "prompt_cache_key",
    "metadata",
    # Mistral's own
    "safe_prompt",
    "prompt_mode",
    "guardrails",
)
#: body fields of the FIM API sent as they are
FIM_FIELDS = (
    "temperature",
    "top_p",
    "stop",
    "suffix",
    "min_tokens",
    "metadata",
    "prompt_cache_key",
)

#: Mistral `finish_reason` -> OpenAI's ("error" is an error, see the module docstring)
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "model_length": "length",
    "tool_calls": "tool_calls",
}

#: OpenAI error types kept as Mistral names them (others follow the status)
_OPENAI_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "api_error",
    }
)

_TOOL_ID = re.compile(r"[A-Za-z0-9]{9}")
_ALNUM = string.ascii_letters + string.digits


def _bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------ requests


def mistral_tool_id(call_id: str) -> str:
    """`call_id` if Mistral takes it (9 of [a-zA-Z0-9]), else a stable one that it does."""
    if _TOOL_ID.fullmatch(call_id):
        return call_id
    n = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    out = []
    for _ in range(9):
        n, r = divmod(n, len(_ALNUM))
        out.append(_ALNUM[r])
    return "".join(out)


def new_tool_id() -> str:
    """A tool call id in Mistral's style (for a streamed call that came without one)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


def _user_part(part: Any, where: str) -> Any:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise _bad(f"'{where}' must be an object", "messages")
    kind = part.get("type")
    if kind == "input_text":
        return {"type": "text", "text": part.get("text")}
    if kind == "text":
        return {"type": "text", "text": part.get("text")}
    if kind == "image_url":
        ref = part.get("image_url")
        if isinstance(ref, dict):
            ref = {k: v for k, v in ref.items() if k in ("url", "detail") and v is not None}
        return {"type": "image_url", "image_url": ref}
    if kind == "input_audio":
        audio = part.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else audio
        return {"type": "input_audio", "input_audio": data}
    if kind == "file":
        ref = part.get("file") if isinstance(part.get("file"), dict) else {}
        if ref.get("file_id"):
            return {"type": "file", "file_id": ref["file_id"]}
        if ref.get("file_data"):
            doc: dict[str, Any] = {"type": "document_url", "document_url": ref["file_data"]}
            if ref.get("filename"):
                doc["document_name"] = ref["filename"]
            return doc
        raise _bad(f"'{where}.file' needs a 'file_id' or 'file_data'", "messages")
    return part  # Mistral's own chunk types (document_url, reference, ...) as given


def _content(content: Any, where: str, user: bool) -> Any:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of parts", "messages")
    if user:
        return [_user_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text", part.get("refusal")), str):
            texts.append(part.get("text", part.get("refusal")))
    return "".join(texts)


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad(f"'{where}' needs a 'function' with a 'name'", "messages")
    args = fn.get("arguments")
    if isinstance(args, dict):
        args = compact_json(args)
    elif not isinstance(args, str):
        args = "{}"
    cid = call.get("id")
    if not isinstance(cid, str) or not cid:
        raise _bad(f"'{where}' needs an 'id'", "messages")
    return {
        "id": mistral_tool_id(cid),
        "type": "function",
        "function": {"name": fn["name"], "arguments": args},
    }


def convert_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI messages -> Mistral messages (only the fields Mistral takes)."""
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array", "messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", "messages")
        role = m.get("role")
        if role in ("system", "developer"):
            out.append(
                {"role": "system", "content": _content(m.get("content"), where, False) or ""}
            )
        elif role == "user":
            out.append({"role": "user", "content": _content(m.get("content"), where, True) or ""})
        elif role == "assistant":
            msg: dict[str, Any] = {"role": "assistant"}
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _bad(f"'{where}.tool_calls' must be an array", "messages")
            content = _content(m.get("content"), where, False)
            if content or not calls:
                msg["content"] = content or ""
            if calls:
                msg["tool_calls"] = [
                    _tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)
                ]
            if m.get("prefix") is True:
                msg["prefix"] = True
            out.append(msg)
        elif role == "tool":
            msg = {"role": "tool", "content": _content(m.get("content"), where, False) or ""}
            if isinstance(m.get("tool_call_id"), str) and m["tool_call_id"]:
                msg["tool_call_id"] = mistral_tool_id(m["tool_call_id"])
            if isinstance(m.get("name"), str) and m["name"]:
                msg["name"] = m["name"]
            out.append(msg)
        else:
            raise _bad(f"'{where}': role {role!r} is not supported by Mistral", "messages")
    return out


def _tool_choice(choice: Any) -> Any:
    if choice == "required":
        return "any"
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = (fn.get("name") if isinstance(fn, dict) else None) or choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("'tool_choice.function' needs a 'name'", "tool_choice")
        return {"type": "function", "function": {"name": name}}
    return choice


def chat_body(spec: CallSpec) -> dict[str, Any]:
    """The `/v1/chat/completions` request Mistral takes for an OpenAI chat body."""
    body = spec.body
    out: dict[str, Any] = {"model": spec.model, "messages": convert_messages(body.get("messages"))}
    for key in CHAT_FIELDS:
        if body.get(key) is not None:
            out[key] = body[key]
    limit = ollama.max_tokens_of(body)
    if limit is not None:
        out["max_tokens"] = limit
    seed = body.get("random_seed", body.get("seed"))
    if _is_int(seed):
        out["random_seed"] = seed
    tools = body.get("tools")
    if not tools and isinstance(body.get("functions"), list):
        tools = [{"type": "function", "function": f} for f in body["functions"]]
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice", body.get("function_call"))
    if choice is not None and tools:
        out["tool_choice"] = _tool_choice(choice)
    out["stream"] = spec.stream
    return out


def fim_body(spec: CallSpec) -> dict[str, Any]:
    """The `/v1/fim/completions` request for an OpenAI completions body."""
    body = spec.body
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("mistral completions (fill-in-the-middle) take one text 'prompt'", "prompt")
    n = body.get("n")
    if _is_int(n) and n > 1:
        raise _bad("mistral completions make one answer per call ('n' must be 1)", "n")
    out: dict[str, Any] = {"model": spec.model, "prompt": prompt}
    for key in FIM_FIELDS:
        if body.get(key) is not None:
            out[key] = body[key]
    limit = ollama.max_tokens_of(body)
    if limit is not None:
        out["max_tokens"] = limit
    seed = body.get("random_seed", body.get("seed"))
    if _is_int(seed):
        out["random_seed"] = seed
    out["stream"] = spec.stream
    return out


def embeddings_body(spec: CallSpec) -> dict[str, Any]:
    """The `/v1/embeddings` request for an OpenAI embeddings body."""
    body = spec.body
    data = body.get("input")
    items = [data] if isinstance(data, str) else data
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise _bad(
            "mistral embeddings take 'input' as a string or an array of strings (not token arrays)",
            "input",
        )
    out: dict[str, Any] = {"model": spec.model, "input": data}
    dims = body.get("output_dimension", body.get("dimensions"))
    if _is_int(dims):
        out["output_dimension"] = dims
    if isinstance(body.get("output_dtype"), str):
        out["output_dtype"] = body["output_dtype"]
    return out


# ------------------------------------------------------------------ answers


def split_content(content: Any) -> tuple[str, str]:
    """(text, thinking) of a Mistral message content: a string, or text and thinking
    chunks."""
    if isinstance(content, str):
        return content, ""
    texts: list[str] = []
    thoughts: list[str] = []
    for chunk in content if isinstance(content, list) else ():
        if isinstance(chunk, str):
            texts.append(chunk)
        elif isinstance(chunk, dict):
            if chunk.get("type") == "thinking":
                inners = chunk.get("thinking")
                for inner in inners if isinstance(inners, list) else (inners,):
                    if isinstance(inner, dict) and isinstance(inner.get("text"), str):
                        thoughts.append(inner["text"])
                    elif isinstance(inner, str):
                        thoughts.append(inner)
            elif isinstance(chunk.get("text"), str):
                texts.append(chunk["text"])
    return "".join(texts), "".join(thoughts)


def _finish(reason: Any) -> str | None:
    if reason is None:
        return None
    if reason == "error":
        raise ProviderError(502, "mistral: the model stopped with an error (finish_reason 'error')")
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _answer_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args = fn.get("arguments")
        args = (
            compact_json(args)
            if isinstance(args, dict)
            else args
            if isinstance(args, str)
            else "{}"
        )
        cid = call.get("id")
        out.append(
            {
                "id": cid if isinstance(cid, str) and cid and cid != "null" else new_tool_id(),
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


def message_to_openai(msg: Any) -> dict[str, Any]:
    """A Mistral assistant message as OpenAI's."""
    msg = msg if isinstance(msg, dict) else {}
    text, thinking = split_content(msg.get("content"))
    calls = _answer_calls(msg.get("tool_calls"))
    out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else text)}
    if thinking:
        out["reasoning_content"] = thinking
    if calls:
        out["tool_calls"] = calls
    return out


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError(502, "mistral: the upstream answer is not a JSON object")
    return data


def _choices(data: dict[str, Any]) -> list[dict[str, Any]]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise ProviderError(502, "mistral: the upstream answer has no 'choices'")
    return choices


def _head(data: dict[str, Any], spec: CallSpec, kind: str) -> dict[str, Any]:
    cid = data.get("id")
    model = data.get("model")
    created = data.get("created")
    return {
        "id": cid if isinstance(cid, str) and cid else new_completion_id(),
        "object": kind,
        "created": created if _is_int(created) else int(time.time()),
        "model": model if isinstance(model, str) and model else spec.model,
    }


def chat_to_openai(data: dict[str, Any], spec: CallSpec) -> dict[str, Any]:
    """A Mistral chat answer as an OpenAI chat.completion."""
    answer = _head(data, spec, "chat.completion")
    answer["choices"] = [
        {
            "index": c.get("index", i) if _is_int(c.get("index")) else i,
            "message": message_to_openai(c.get("message")),
            "finish_reason": _finish(c.get("finish_reason")) or "stop",
        }
        for i, c in enumerate(_choices(data))
    ]
    if isinstance(data.get("usage"), dict):
        answer["usage"] = data["usage"]
    return answer


def fim_to_openai(data: dict[str, Any], spec: CallSpec) -> dict[str, Any]:
    """A FIM answer (chat-shaped choices; or an OpenAI completions answer from a
    self-hosted server) as an OpenAI text_completion."""
    answer = _head(data, spec, "text_completion")
    choices = []
    for i, c in enumerate(_choices(data)):
        if isinstance(c.get("text"), str):
            text = c["text"]
        else:
            message = c.get("message")
            text = split_content(message.get("content") if isinstance(message, dict) else None)[0]
        choices.append(
            {
                "index": c["index"] if _is_int(c.get("index")) else i,
                "text": text,
                "logprobs": None,
                "finish_reason": _finish(c.get("finish_reason")) or "stop",
            }
        )
    answer["choices"] = choices
    if isinstance(data.get("usage"), dict):
        answer["usage"] = data["usage"]
    return answer


def embeddings_to_openai(data: dict[str, Any], spec: CallSpec) -> tuple[dict[str, Any], Usage]:
    items = data.get("data")
    if not isinstance(items, list) or not all(
        isinstance(d, dict) and isinstance(d.get("embedding"), list) for d in items
    ):
        raise ProviderError(502, "mistral: the upstream answer has no 'data' embeddings")
    usage = usage_from_openai(data.get("usage"))
    if usage is None:
        texts = spec.body.get("input")
        texts = [texts] if isinstance(texts, str) else texts or []
        usage = Usage(sum(estimate_tokens(str(t)) for t in texts), estimated=True)
    encoding = spec.body.get("encoding_format")
    model = data.get("model")
    answer = {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": d["index"] if _is_int(d.get("index")) else i,
                "embedding": ollama.encode_vector(d["embedding"], encoding),
            }
            for i, d in enumerate(items)
        ],
        "model": model if isinstance(model, str) and model else spec.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return answer, usage


def _detail_message(detail: list[Any]) -> tuple[str, str | None]:
    parts = []
    param = None
    for d in detail:
        if not isinstance(d, dict):
            parts.append(str(d))
            continue
        where_list = d.get("loc")
        loc = [str(x) for x in where_list if x != "body"] if isinstance(where_list, list) else []
        if param is None and loc:
            param = loc[0]
        where = ".".join(loc)
        parts.append(f"{where}: {d.get('msg')}" if where else str(d.get("msg")))
    return "; ".join(parts), param


def error_from_mistral(status: int, headers: dict[str, str], body: bytes) -> ProviderError:
    """Mistral's error bodies (see the module docstring) as one ProviderError."""
    try:
        data = orjson.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return readable(generic_error(NAME, status, headers, body), NAME)
    message = data.get("message")
    if isinstance(message, str) and message.startswith("{"):
        with contextlib.suppress(ValueError):
            message = json.loads(message)
    param = None
    if isinstance(message, dict) and isinstance(message.get("detail"), list):
        text, param = _detail_message(message["detail"])
    elif isinstance(message, list):
        text, param = _detail_message(message)
    elif isinstance(data.get("detail"), list):
        text, param = _detail_message(data["detail"])
    elif isinstance(message, str) and message:
        text = message
    elif isinstance(data.get("detail"), str):
        text = data["detail"]
    else:
        text = ""
    if not text.strip():
        return readable(generic_error(NAME, status, headers, body), NAME)
    kind = data.get("type")
    code = data.get("code")
    return ProviderError(
        status,
        text,
        kind if isinstance(kind, str) and kind in _OPENAI_TYPES else error_type_for(status),
        code if isinstance(code, (str, int)) and not isinstance(code, bool) else None,
        param,
    )


# ------------------------------------------------------------------ streams


def _is_json(data: str) -> bool:
    try:
        orjson.loads(data)
    except ValueError:
        return False
    return True


class MistralStream:
    """Mistral's SSE -> OpenAI's (see the module docstring): each chunk is normalized,
    then handed to an `OpenAIStream`, which assembles the answer and drops the usage chunk
    a client did not ask for."""

    def __init__(self, spec: CallSpec) -> None:
        self._dec = sse.SSEDecoder()
        self._completions = spec.route_type is RouteType.COMPLETIONS
        self._inner = OpenAIStream(spec)
        self.error: ProviderError | None = None
        self._done = False
        self._finished = False
        # per choice: the calls seen ({"id", "made_up"}), by Mistral index and by id
        self._calls: dict[int, dict[str, Any]] = {}

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    @property
    def started(self) -> bool:
        return self._inner.started

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.feed(data):
            self._event(ev.data, out)
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.flush():
            if error is not None and not _is_json(ev.data):
                continue  # half an event, cut by the failure
            self._event(ev.data, out)
        if self.error is None:
            if error is not None:
                self._fail(error, out)
            elif not (self._done or self._finished):
                self._fail(
                    ProviderError(
                        502,
                        "mistral: the stream ended before the answer was complete "
                        "(no finish_reason nor [DONE])",
                    ),
                    out,
                )
        out += self._inner.finish()
        return out

    def _fail(self, error: ProviderError, out: list[bytes]) -> None:
        self.error = error
        out.append(sse.encode(error.to_openai()))

    def _event(self, data: str, out: list[bytes]) -> None:
        if self.error is not None or self._done or not data:
            return
        if data == "[DONE]":
            self._done = True
            return
        try:
            obj = orjson.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self._fail(
                ProviderError(
                    502, "mistral: the upstream stream holds an event that is not a JSON object"
                ),
                out,
            )
            return
        if "choices" not in obj and ("message" in obj or "error" in obj or "detail" in obj):
            err = error_from_mistral(502, {}, data.encode())
            self._fail(err, out)
            return
        try:
            chunk = self._normalize(obj)
        except ProviderError as e:  # finish_reason "error"
            self._fail(e, out)
            return
        if chunk["choices"]:
            out += self._inner.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")
        usage = obj.get("usage")
        if isinstance(usage, dict):
            tail = {**chunk, "choices": [], "usage": usage}
            out += self._inner.feed(b"data: " + orjson.dumps(tail) + b"\n\n")

    def _normalize(self, obj: dict[str, Any]) -> dict[str, Any]:
        head = {
            "id": obj.get("id"),
            "object": "text_completion" if self._completions else "chat.completion.chunk",
            "created": obj.get("created"),
            "model": obj.get("model"),
        }
        choices = []
        given = obj.get("choices")
        for pos, ch in enumerate(given if isinstance(given, list) else ()):
            if not isinstance(ch, dict):
                continue
            index = ch["index"] if _is_int(ch.get("index")) else pos
            finish = _finish(ch.get("finish_reason"))
            if finish is not None:
                self._finished = True
            delta = ch.get("delta") if isinstance(ch.get("delta"), dict) else {}
            text, thinking = split_content(delta.get("content"))
            if self._completions:
                if text or finish is not None:
                    choices.append(
                        {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
                    )
                continue
            out: dict[str, Any] = {}
            if delta.get("role"):
                out["role"] = "assistant"
                out["content"] = text
            elif text:
                out["content"] = text
            if thinking:
                out["reasoning_content"] = thinking
            if delta.get("tool_calls"):
                calls = self._index_calls(index, delta["tool_calls"])
                if calls:
                    out["tool_calls"] = calls
            if out or finish is not None:
                choices.append({"index": index, "delta": out, "finish_reason": finish})
        return {**head, "choices": choices}

    def _index_calls(self, choice: int, calls: Any) -> list[dict[str, Any]]:
        state = self._calls.setdefault(choice, {"calls": [], "by_index": {}, "by_id": {}})
        known, by_index, by_id = state["calls"], state["by_index"], state["by_id"]
        out = []
        for pos, tc in enumerate(calls if isinstance(calls, list) else ()):
            if not isinstance(tc, dict):
                continue
            cid = tc.get("id")
            cid = cid if isinstance(cid, str) and cid and cid != "null" else None
            up = tc["index"] if _is_int(tc.get("index")) else pos
            fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
            ours = None
            if cid is not None and cid in by_id:
                ours = by_id[cid]
            elif up in by_index:
                entry = known[by_index[up]]
                if cid is None or entry["id"] == cid or entry["made_up"]:
                    ours = by_index[up]
            args = fn.get("arguments")
            args = (
                compact_json(args)
                if isinstance(args, dict)
                else args
                if isinstance(args, str)
                else ""
            )
            if ours is None:
                ours = len(known)
                known.append({"id": cid or new_tool_id(), "made_up": cid is None})
                by_index[up] = ours
                by_id[known[ours]["id"]] = ours
                name = fn.get("name") if isinstance(fn.get("name"), str) else ""
                out.append(
                    {
                        "index": ours,
                        "id": known[ours]["id"],
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                )
            elif args:
                out.append({"index": ours, "function": {"arguments": args}})
        return out

    def assembled(self) -> dict[str, Any]:
        return self._inner.assembled()


# ------------------------------------------------------------------ the provider


def _format(spec: CallSpec) -> str:
    return spec.options.mistral_format or "openai"


class Mistral(Provider):
    name = NAME
    # OpenAI's meaning: prompt_tokens counts the cached prompt_tokens_details.cached_tokens
    # too (and Ollama's prompt_eval_count, for mistral_format ollama, the whole prompt)
    input_includes_cache = True
    default_base_url = DEFAULT_BASE_URL
    route_types = frozenset(
        {RouteType.CHAT, RouteType.COMPLETIONS, RouteType.EMBEDDINGS, RouteType.PRESERVE}
    )

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        errors = super().config_errors(model, route_type, auth)
        options = getattr(model, "options", None)
        if getattr(options, "mistral_format", None) == "ollama":
            if not getattr(options, "upstream_url", None):
                errors.append(
                    "provider 'mistral' with mistral_format ollama needs "
                    'model.options.upstream_url (where Ollama runs, e.g. "http://127.0.0.1:11434")'
                )
            if route_type is RouteType.EMBEDDINGS:
                errors.append(
                    "provider 'mistral' serves llm/v1/embeddings in mistral_format openai only"
                )
        return errors

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        fmt = _format(spec)
        if spec.route_type is RouteType.PRESERVE:
            if fmt == "ollama":
                return ollama.PROVIDER.build_request(spec)
            url = preserve_url(spec, self.default_base_url)
            return UpstreamRequest(spec.method, url, {}, spec.raw_body, spec.stream)
        if fmt == "ollama":
            upstream = spec.options.upstream_url or ollama.DEFAULT_BASE_URL
            url = join_url(upstream, upstream, ollama.PATHS[spec.route_type])
            return ollama.build_upstream(spec, url, self.name)
        if spec.route_type is RouteType.CHAT:
            body = chat_body(spec)
        elif spec.route_type is RouteType.COMPLETIONS:
            body = fim_body(spec)
        else:
            body = embeddings_body(spec)
        stream = spec.stream and spec.route_type is not RouteType.EMBEDDINGS
        url = join_url(spec.options.upstream_url, self.default_base_url, PATHS[spec.route_type])
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        return UpstreamRequest("POST", url, headers, json_body(body), stream)

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        fmt = _format(spec)
        if spec.route_type is RouteType.PRESERVE:
            if fmt == "ollama":
                return ollama.PROVIDER.parse_response(spec, status, headers, body)
            return self.parse_native_response(spec, status, headers, body)
        if fmt == "ollama":
            return ollama.parse_reply(spec, body, self.name)
        data = _json_object(body)
        if "choices" not in data and "data" not in data and ("message" in data or "detail" in data):
            raise error_from_mistral(502, headers, body)
        if spec.route_type is RouteType.EMBEDDINGS:
            answer, usage = embeddings_to_openai(data, spec)
            return Reply(orjson.dumps(answer), answer, usage, answer["model"])
        if spec.route_type is RouteType.COMPLETIONS:
            answer = fim_to_openai(data, spec)
        else:
            answer = chat_to_openai(data, spec)
        return Reply(
            orjson.dumps(answer), answer, usage_from_openai(data.get("usage")), answer["model"]
        )

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        return error_from_mistral(status, headers, body)

    def stream_translator(self, spec: CallSpec) -> MistralStream | ollama.OllamaStream:
        if _format(spec) == "ollama":
            return ollama.OllamaStream(spec, self.name)
        return MistralStream(spec)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        if not isinstance(data, dict):
            return None
        if "eval_count" in data or "prompt_eval_count" in data:
            return ollama.usage_from_ollama(data)
        return usage_from_openai(data.get("usage"))


PROVIDER = Mistral()
