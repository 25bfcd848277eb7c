"""Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`) behind OpenAI's formats.

Chat (`llm/v1/chat`) goes to `POST /api/chat`, completions (`llm/v1/completions`) to
`POST /api/generate`, embeddings (`llm/v1/embeddings`) to `POST /api/embed`, `preserve`
passes through untouched (observed: a streamed `/api/chat` or `/api/generate` is decoded
for the record). The default base is a local Ollama (`http://127.0.0.1:11434`); Ollama
wants no credentials, but a route's `auth` (an Ollama behind a proxy, or ollama.com's
API key as `Authorization: Bearer`) is sent as configured.

The translation functions here (`chat_body`, `generate_body`, `embed_body`,
`chat_to_openai`, `generate_to_openai`, `embed_to_openai`, `parse_reply`,
`error_from_ollama`, `OllamaStream`) also serve the `ollama` formats of the `llama2` and
`mistral` providers: one translator for the one wire format, with the calling provider's
name in its messages.

Conventions where OpenAI's format and Ollama's differ:

- **stream** is always sent: Ollama streams by default, so a whole answer needs
  `"stream": false`. A streamed answer is NDJSON (one JSON object per line, the last with
  `"done": true` and the counts); it becomes OpenAI `chat.completion.chunk` SSE (or
  `text_completion` chunks for `/api/generate`).
- **Sampling** goes into `options`: `num_predict` (from `max_completion_tokens` or
  `max_tokens`), `temperature`, `top_p`, `top_k`, `stop` (always a list), `seed`,
  `presence_penalty`, `frequency_penalty`. `n` above 1 is refused (Ollama makes one
  answer); `logprobs`, `logit_bias`, `user` and other OpenAI-only fields are not sent.
  The client's `keep_alive` (and on completions `raw` and `system`), Ollama's own
  fields, are passed on.
- **Messages**: Ollama's content is a string, so text parts are joined with a newline
  and `image_url` parts become the message's `images` (the base64 of a data URI: Ollama
  takes no URLs, an http(s) image is a 400). `developer` is `system`. An assistant's
  `tool_calls` are sent with their arguments as an object (Ollama's form) and its
  `reasoning_content` as `thinking`; a `tool` message carries `tool_call_id` and the
  `tool_name` of the call it answers.
- **Tools** are OpenAI's function tools as they are (Ollama takes that shape).
  `tool_choice: "none"` sends no tools; a named function sends only that tool (Ollama
  cannot force a call, offering one tool is the closest); "auto" and "required" send
  all. Ollama gives tool calls no id: each gets `call_...`; its arguments (an object)
  become a JSON string.
- **Structured output**: `response_format` json_object is `format: "json"`,
  json_schema is `format: <the schema>`.
- **Thinking**: `reasoning_effort` becomes `think` as Ollama's own OpenAI layer maps it
  (none -> false, minimal -> "low", low/medium/high as they are, xhigh -> "max"); a
  `think` the client sends itself wins. `message.thinking` comes back as
  `reasoning_content` (streamed: `delta.reasoning_content`).
- **Finish reasons**: `done_reason` stop -> stop (tool_calls when the answer calls
  tools), length -> length, load/unload -> stop. Older Ollama sent no `done_reason`: then,
  as Kong does, an `eval_count` equal to the `num_predict` sent means length.
- **Usage**: `prompt_eval_count` (current Ollama counts cached prompt tokens in it, and
  says how many in `prompt_eval_cached_count`: the cache reads) and `eval_count`. Ollama leaves a zero count out, and older versions counted only the
  prompt tokens they evaluated, so a prompt served whole from the cache showed no
  `prompt_eval_count`: the prompt is then estimated from the request and the usage marked
  estimated (completion tokens stay the reported ones). With no count at all the usage is
  None and the gateway estimates it.
- **Embeddings**: `input` (a string or strings; token arrays are refused) and
  `dimensions`; `encoding_format: "base64"` is honoured by the gateway (little-endian
  float32), Ollama always answers floats.
- **Errors**: `{"error": "..."}` with Ollama's status (404 for an unknown model, 400 for a
  model without tool or thinking support) keeps status and message; an error line inside
  a stream, or a stream that ends without `"done": true`, ends the client's stream with
  an error event.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import struct
import time
from datetime import datetime
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
    estimate_tokens,
    generic_error,
    join_url,
    json_body,
    new_completion_id,
    preserve_url,
    text_of_messages,
)
from providers.openai_compatible import readable

NAME = "ollama"
DEFAULT_BASE_URL = "http://127.0.0.1:11434"

PATHS = {
    RouteType.CHAT: "/api/chat",
    RouteType.COMPLETIONS: "/api/generate",
    RouteType.EMBEDDINGS: "/api/embed",
}

#: OpenAI `reasoning_effort` -> Ollama `think` (the mapping of Ollama's own OpenAI layer)
THINK_LEVELS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "max",
    "max": "max",
}

#: Ollama `done_reason` -> OpenAI `finish_reason`
DONE_REASONS = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}

#: OpenAI body field -> Ollama `options` name (sampling)
OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}

#: Ollama's own top-level fields a client may send along (passed on as given)
NATIVE_FIELDS = {
    RouteType.CHAT: ("keep_alive",),
    RouteType.COMPLETIONS: ("keep_alive", "raw", "system"),
    RouteType.EMBEDDINGS: ("keep_alive", "truncate"),
}

_DATA_URI = re.compile(
    r"data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)", re.S
)


def _bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def call_id(seed: str, n: int) -> str:
    """A tool call id for a call Ollama gave none (stable for one answer and position)."""
    return f"call_{seed[-16:]}{n:02d}"


# ------------------------------------------------------------------ requests


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """The client's output limit (`max_completion_tokens` wins over `max_tokens`)."""
    for key in ("max_completion_tokens", "max_tokens"):
        if _is_int(body.get(key)):
            return body[key]
    return None


def options_of(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's `options` from an OpenAI body's sampling fields."""
    options: dict[str, Any] = {}
    limit = max_tokens_of(body)
    if limit is not None:
        options["num_predict"] = limit
    for src, dst in OPTION_NAMES.items():
        value = body.get(src)
        if value is not None and not isinstance(value, bool):
            options[dst] = value
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        options["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        options["stop"] = [s for s in stop if isinstance(s, str) and s]
    return options


def _one_answer(body: dict[str, Any], name: str) -> None:
    n = body.get("n")
    if _is_int(n) and n > 1:
        raise _bad(f"{name}: Ollama makes one answer per call ('n' must be 1)", "n")


def _image(part: dict[str, Any], where: str, name: str) -> str:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise _bad(f"'{where}.image_url' needs a 'url'", "messages")
    if url.startswith("data:"):
        m = _DATA_URI.fullmatch(url)
        if not m or ";base64" not in m["params"] or not m["data"]:
            raise _bad(
                f"'{where}.image_url' must be a base64 data URI (data:image/png;base64,...)",
                "messages",
            )
        return m["data"]
    raise _bad(
        f"'{where}.image_url': {name} (Ollama) takes images as base64 data URIs only "
        "(data:image/png;base64,...), not URLs",
        "messages",
    )


def _content(content: Any, where: str, name: str) -> tuple[str, list[str]]:
    """(text, base64 images) of an OpenAI message content."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of parts", "messages")
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind == "image_url":
            images.append(_image(part, at, name))
        else:
            raise _bad(f"'{at}': content part type {kind!r} is not supported by {name} (Ollama)")
    return "\n".join(t for t in texts if t), images


def _arguments(call: dict[str, Any], where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call.get("function"), dict) else {}
    args = fn.get("arguments")
    if args is None or (isinstance(args, str) and not args.strip()):
        return {}
    if isinstance(args, dict):
        return args
    try:
        parsed = json.loads(args) if isinstance(args, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad(
            f"'{where}': the arguments of tool call {call.get('id')!r} are not a JSON object "
            "(Ollama takes them as an object)",
            "messages",
        )
    return parsed


def convert_messages(messages: Any, name: str = NAME) -> list[dict[str, Any]]:
    """OpenAI `messages` -> Ollama `messages`."""
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array", "messages")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for tool results
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", "messages")
        role = m.get("role")
        text, images = _content(m.get("content"), where, name)
        if role in ("system", "developer"):
            if images:
                raise _bad(f"'{where}': a system message cannot hold images", "messages")
            out.append({"role": "system", "content": text})
        elif role == "user":
            msg: dict[str, Any] = {"role": "user", "content": text}
            if images:
                msg["images"] = images
            out.append(msg)
        elif role == "assistant":
            msg = {"role": "assistant", "content": text}
            if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"]:
                msg["thinking"] = m["reasoning_content"]
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _bad(f"'{where}.tool_calls' must be an array", "messages")
            converted = []
            for j, call in enumerate(calls):
                at = f"{where}.tool_calls[{j}]"
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _bad(f"'{at}' needs a 'function' with a 'name'", "messages")
                entry: dict[str, Any] = {
                    "function": {"name": fn["name"], "arguments": _arguments(call, at)}
                }
                if isinstance(call.get("id"), str) and call["id"]:
                    entry["id"] = call["id"]
                    names[call["id"]] = fn["name"]
                converted.append(entry)
            if converted:
                msg["tool_calls"] = converted
            if images:
                msg["images"] = images
            out.append(msg)
        elif role == "tool":
            msg = {"role": "tool", "content": text}
            tool_id = m.get("tool_call_id")
            if isinstance(tool_id, str) and tool_id:
                msg["tool_call_id"] = tool_id
            tool_name = m.get("name") if isinstance(m.get("name"), str) else None
            tool_name = tool_name or (names.get(tool_id) if isinstance(tool_id, str) else None)
            if tool_name:
                msg["tool_name"] = tool_name
            out.append(msg)
        else:
            raise _bad(f"'{where}': role {role!r} is not supported by {name} (Ollama)", "messages")
    return out


def _tools(body: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if not tools:
        return None
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise _bad(f"'tools[{i}]': {name} (Ollama) takes function tools only", "tools")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"'tools[{i}].function' needs a 'name'", "tools")
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        fn = choice.get("function")
        wanted = fn.get("name") if isinstance(fn, dict) else None
        only = [t for t in tools if t["function"]["name"] == wanted]
        if not only:
            raise _bad(f"'tool_choice' names {wanted!r}, which is not in 'tools'", "tool_choice")
        return only
    return tools


def _format(body: dict[str, Any]) -> Any:
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_object":
        return "json"
    if rf.get("type") == "json_schema":
        given = rf.get("json_schema")
        schema = given.get("schema") if isinstance(given, dict) else None
        return schema if isinstance(schema, dict) else "json"
    return None


def _think(body: dict[str, Any]) -> bool | str | None:
    if "think" in body and isinstance(body["think"], (bool, str)):
        return body["think"]
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        if effort not in THINK_LEVELS:
            raise _bad(
                f"'reasoning_effort' {effort!r} is not one of {', '.join(THINK_LEVELS)}",
                "reasoning_effort",
            )
        return THINK_LEVELS[effort]
    return None


def _common(spec: CallSpec, body: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    for key in NATIVE_FIELDS[spec.route_type]:
        if key in body:
            out[key] = body[key]
    return out


def chat_body(spec: CallSpec, name: str = NAME) -> dict[str, Any]:
    """The `/api/chat` request for an OpenAI chat body."""
    body = spec.body
    _one_answer(body, name)
    out: dict[str, Any] = {
        "model": spec.model,
        "messages": convert_messages(body.get("messages"), name),
        "stream": spec.stream,
    }
    tools = _tools(body, name)
    if tools:
        out["tools"] = tools
    fmt = _format(body)
    if fmt is not None:
        out["format"] = fmt
    think = _think(body)
    if think is not None:
        out["think"] = think
    options = options_of(body)
    if options:
        out["options"] = options
    return _common(spec, body, out)


def _prompt(body: dict[str, Any], name: str) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad(f"{name} (Ollama) completions take one text 'prompt'", "prompt")
    return prompt


def generate_body(spec: CallSpec, name: str = NAME) -> dict[str, Any]:
    """The `/api/generate` request for an OpenAI completions body."""
    body = spec.body
    _one_answer(body, name)
    out: dict[str, Any] = {
        "model": spec.model,
        "prompt": _prompt(body, name),
        "stream": spec.stream,
    }
    if isinstance(body.get("suffix"), str) and body["suffix"]:
        out["suffix"] = body["suffix"]
    fmt = _format(body)
    if fmt is not None:
        out["format"] = fmt
    think = _think(body)
    if think is not None:
        out["think"] = think
    options = options_of(body)
    if options:
        out["options"] = options
    return _common(spec, body, out)


def embedding_inputs(body: dict[str, Any], name: str = NAME) -> list[str]:
    data = body.get("input")
    items = [data] if isinstance(data, str) else data
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise _bad(
            f"{name} (Ollama) embeddings take 'input' as a string or an array of strings "
            "(not token arrays)",
            "input",
        )
    return items


def embed_body(spec: CallSpec, name: str = NAME) -> dict[str, Any]:
    """The `/api/embed` request for an OpenAI embeddings body."""
    body = spec.body
    inputs = embedding_inputs(body, name)
    out: dict[str, Any] = {
        "model": spec.model,
        "input": body["input"] if isinstance(body["input"], str) else inputs,
    }
    if _is_int(body.get("dimensions")):
        out["dimensions"] = body["dimensions"]
    return _common(spec, body, out)


def request_body(spec: CallSpec, name: str = NAME) -> dict[str, Any]:
    if spec.route_type is RouteType.CHAT:
        return chat_body(spec, name)
    if spec.route_type is RouteType.COMPLETIONS:
        return generate_body(spec, name)
    if spec.route_type is RouteType.EMBEDDINGS:
        return embed_body(spec, name)
    raise _bad(f"{name} (Ollama) cannot serve {spec.route_type}")


def build_upstream(spec: CallSpec, url: str, name: str = NAME) -> UpstreamRequest:
    """The whole upstream request of an OpenAI-format call sent in Ollama's format."""
    body = request_body(spec, name)
    stream = spec.stream and spec.route_type is not RouteType.EMBEDDINGS
    headers = {
        "content-type": "application/json",
        "accept": "application/x-ndjson" if stream else "application/json",
    }
    return UpstreamRequest("POST", url, headers, json_body(body), stream)


# ------------------------------------------------------------------ answers


def _created(value: Any) -> int:
    if isinstance(value, str) and value:
        try:
            return int(datetime.fromisoformat(value).timestamp())
        except ValueError:
            pass
    return int(time.time())


def prompt_text(spec: CallSpec) -> str:
    """The text of a request's prompt, for estimates."""
    body = spec.body
    if spec.route_type is RouteType.CHAT:
        return text_of_messages(body.get("messages"))
    if spec.route_type is RouteType.COMPLETIONS:
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else " ".join(map(str, prompt or ()))
    data = body.get("input")
    return data if isinstance(data, str) else " ".join(map(str, data or ()))


def usage_from_ollama(data: Any, spec: CallSpec | None = None) -> Usage | None:
    """`prompt_eval_count` and `eval_count` as a Usage (see the module docstring for a
    missing `prompt_eval_count`); None when neither is there."""
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_eval_count"), data.get("eval_count")
    if _is_int(prompt):
        cached = min(as_int(data.get("prompt_eval_cached_count")), prompt)
        return Usage(
            prompt_tokens=prompt, completion_tokens=as_int(completion), cache_read_tokens=cached
        )
    if not _is_int(completion) or spec is None:
        return None
    return Usage(estimate_tokens(prompt_text(spec)), completion, estimated=True)


def finish_reason(data: dict[str, Any], calls: bool, spec: CallSpec | None) -> str:
    reason = data.get("done_reason")
    if isinstance(reason, str) and reason:
        out = DONE_REASONS.get(reason, "stop")
    else:
        limit = max_tokens_of(spec.body) if spec is not None else None
        out = "length" if limit is not None and data.get("eval_count") == limit else "stop"
    return "tool_calls" if out == "stop" and calls else out


def tool_calls_to_openai(calls: Any, seed: str, start: int = 0) -> list[dict[str, Any]]:
    """Ollama tool calls -> OpenAI ones (ids made up where Ollama gave none)."""
    out: list[dict[str, Any]] = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args = fn.get("arguments")
        if isinstance(args, str):
            arguments = args
        else:
            arguments = compact_json(args if isinstance(args, dict) else {})
        given = call.get("id")
        cid = given if isinstance(given, str) and given else call_id(seed, start + len(out))
        out.append(
            {
                "id": cid,
                "type": "function",
                "function": {"name": fn["name"], "arguments": arguments},
            }
        )
    return out


def _model(data: dict[str, Any], spec: CallSpec) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) and model else spec.model


def chat_to_openai(data: dict[str, Any], spec: CallSpec, name: str = NAME) -> dict[str, Any]:
    """An `/api/chat` answer as an OpenAI chat.completion."""
    msg = data.get("message")
    if not isinstance(msg, dict):
        raise ProviderError(502, f"{name}: the upstream answer has no 'message'")
    cid = new_completion_id()
    calls = tool_calls_to_openai(msg.get("tool_calls"), cid)
    text = msg.get("content") if isinstance(msg.get("content"), str) else ""
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if isinstance(msg.get("thinking"), str) and msg["thinking"]:
        message["reasoning_content"] = msg["thinking"]
    if calls:
        message["tool_calls"] = calls
    answer: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": _created(data.get("created_at")),
        "model": _model(data, spec),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(data, bool(calls), spec),
            }
        ],
    }
    usage = usage_from_ollama(data, spec)
    if usage is not None:
        answer["usage"] = usage.to_openai()
    return answer


def generate_to_openai(data: dict[str, Any], spec: CallSpec, name: str = NAME) -> dict[str, Any]:
    """An `/api/generate` answer as an OpenAI text_completion."""
    if not isinstance(data.get("response"), str):
        raise ProviderError(502, f"{name}: the upstream answer has no 'response' text")
    answer: dict[str, Any] = {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": _created(data.get("created_at")),
        "model": _model(data, spec),
        "choices": [
            {
                "index": 0,
                "text": data["response"],
                "logprobs": None,
                "finish_reason": finish_reason(data, False, spec),
            }
        ],
    }
    usage = usage_from_ollama(data, spec)
    if usage is not None:
        answer["usage"] = usage.to_openai()
    return answer


def encode_vector(values: list[Any], encoding: Any) -> Any:
    """A vector as the client asked for it: floats, or base64 of little-endian float32."""
    if encoding == "base64":
        try:
            return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        except struct.error:
            raise ProviderError(502, "an embedding of the upstream answer is not numbers") from None
    return values


def embed_to_openai(
    data: dict[str, Any], spec: CallSpec, name: str = NAME
) -> tuple[dict[str, Any], Usage]:
    """An `/api/embed` answer as OpenAI's embeddings list, with its usage."""
    vectors = data.get("embeddings")
    if not isinstance(vectors, list) or not all(
        isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in vectors
    ):
        raise ProviderError(502, f"{name}: the upstream answer has no 'embeddings' list")
    count = data.get("prompt_eval_count")
    if _is_int(count):
        usage = Usage(prompt_tokens=count)
    else:
        texts = embedding_inputs(spec.body, name)
        usage = Usage(prompt_tokens=sum(estimate_tokens(t) for t in texts), estimated=True)
    encoding = spec.body.get("encoding_format")
    answer = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "model": _model(data, spec),
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return answer, usage


def _error_line(obj: dict[str, Any]) -> str | None:
    """The message of an `{"error": "..."}` object, if that is what `obj` is."""
    err = obj.get("error")
    if err is None or "message" in obj or "response" in obj or "embeddings" in obj:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or compact_json(err))
    return str(err)


def parse_reply(spec: CallSpec, body: bytes, name: str = NAME) -> Reply:
    """A whole Ollama answer (a JSON object, or an NDJSON stream the upstream sent anyway)
    translated to OpenAI's format."""
    try:
        data = orjson.loads(body)
    except ValueError:
        data = None
        if body.strip() and spec.route_type is not RouteType.EMBEDDINGS:
            return _from_lines(spec, body, name)
    if not isinstance(data, dict):
        raise ProviderError(502, f"{name}: the upstream answer is not a JSON object")
    message = _error_line(data)
    if message is not None:
        raise ProviderError(502, f"{name}: {message}")
    if spec.route_type is RouteType.EMBEDDINGS:
        answer, usage = embed_to_openai(data, spec, name)
        return Reply(orjson.dumps(answer), answer, usage, answer["model"])
    if spec.route_type is RouteType.COMPLETIONS:
        answer = generate_to_openai(data, spec, name)
    else:
        answer = chat_to_openai(data, spec, name)
    return Reply(orjson.dumps(answer), answer, usage_from_ollama(data, spec), answer["model"])


def _from_lines(spec: CallSpec, body: bytes, name: str) -> Reply:
    stream = OllamaStream(spec, name)
    stream.feed(body)
    stream.finish()
    if stream.error is not None:
        raise stream.error
    answer = stream.assembled()
    return Reply(orjson.dumps(answer), answer, stream.usage, answer.get("model"))


def error_from_ollama(
    name: str, status: int, headers: dict[str, str], body: bytes
) -> ProviderError:
    """Ollama's `{"error": "..."}` (or anything else) with the upstream status."""
    return readable(generic_error(name, status, headers, body), name)


# ------------------------------------------------------------------ streams


class OllamaStream:
    """Ollama's NDJSON stream (`/api/chat` or `/api/generate`) -> OpenAI SSE chunks."""

    def __init__(self, spec: CallSpec, name: str = NAME) -> None:
        self._spec = spec
        self._name = name
        self._completions = spec.route_type is RouteType.COMPLETIONS or (
            spec.route_type is RouteType.PRESERVE and "/api/generate" in (spec.path or "")
        )
        self._wants_usage = spec.client_wants_usage
        self._buf = bytearray()
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        # the id can be set before the first feed (tests); tool call ids derive from it
        self.id = ("cmpl-" + secrets.token_hex(12)) if self._completions else new_completion_id()
        self.created: int | None = None
        self.model = spec.model
        self.finish_reason: str | None = None
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._calls: list[dict[str, Any]] = []
        self._opened = False
        self._complete = False

    # ---- the protocol

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buf += data
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return out
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            self._line(line, out, final=False)

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        tail = bytes(self._buf)
        self._buf.clear()
        # a last line without its newline is whole at a clean end; after a failure only
        # if it still parses (a half line cut by the failure is dropped)
        self._line(tail, out, final=error is not None)
        if self.error is None:
            if error is not None:
                self._fail(error, out)
            elif not self._complete:
                self._fail(
                    ProviderError(
                        502,
                        f'{self._name}: the stream ended before the answer was complete (no "done": true)',
                    ),
                    out,
                )
        out.append(sse.DONE)
        return out

    # ---- lines

    def _line(self, raw: bytes, out: list[bytes], final: bool) -> None:
        raw = raw.strip()
        if not raw or self.error is not None or self._complete:
            return
        try:
            obj = orjson.loads(raw)
        except ValueError:
            if not final:
                self._fail(
                    ProviderError(
                        502, f"{self._name}: the upstream stream holds a line that is not JSON"
                    ),
                    out,
                )
            return
        if not isinstance(obj, dict):
            self._fail(
                ProviderError(502, f"{self._name}: the upstream stream holds a non-object line"),
                out,
            )
            return
        message = _error_line(obj)
        if message is not None:
            self._fail(ProviderError(500, message, "api_error"), out)
            return
        if not self._opened:
            self._open(obj, out)
        if self._completions:
            text = obj.get("response")
            if isinstance(text, str) and text:
                self._text.append(text)
                self.started = True
                out.append(
                    self._chunk(
                        [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]
                    )
                )
        else:
            msg = obj.get("message") if isinstance(obj.get("message"), dict) else {}
            thinking = msg.get("thinking")
            if isinstance(thinking, str) and thinking:
                self._thinking.append(thinking)
                self._delta({"reasoning_content": thinking}, out)
            text = msg.get("content")
            if isinstance(text, str) and text:
                self._text.append(text)
                self._delta({"content": text}, out)
            for call in tool_calls_to_openai(msg.get("tool_calls"), self.id, len(self._calls)):
                index = len(self._calls)
                self._calls.append(call)
                self._delta({"tool_calls": [{"index": index, **call}]}, out)
        if obj.get("done") is True:
            self._done(obj, out)

    def _open(self, obj: dict[str, Any], out: list[bytes]) -> None:
        self._opened = True
        self.created = _created(obj.get("created_at"))
        if isinstance(obj.get("model"), str) and obj["model"]:
            self.model = obj["model"]
        if not self._completions:
            out.append(
                self._chunk(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ]
                )
            )

    def _done(self, obj: dict[str, Any], out: list[bytes]) -> None:
        self._complete = True
        self.finish_reason = finish_reason(obj, bool(self._calls), self._spec)
        usage = usage_from_ollama(obj, self._spec)
        if usage is not None:
            self.usage = usage
        if self._completions:
            choice: dict[str, Any] = {"index": 0, "text": "", "logprobs": None}
        else:
            choice = {"index": 0, "delta": {}}
        out.append(self._chunk([{**choice, "finish_reason": self.finish_reason}]))
        if self._wants_usage and self.usage is not None:
            out.append(self._chunk([], self.usage.to_openai()))

    # ---- chunks

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        self.started = True
        out.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion" if self._completions else "chat.completion.chunk",
            "created": self.created if self.created is not None else int(time.time()),
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _fail(self, error: ProviderError, out: list[bytes]) -> None:
        self.error = error
        out.append(sse.encode(error.to_openai()))

    def assembled(self) -> dict[str, Any]:
        text = "".join(self._text)
        if self._completions:
            choice: dict[str, Any] = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
        else:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text or (None if self._calls else ""),
            }
            if self._thinking:
                message["reasoning_content"] = "".join(self._thinking)
            if self._calls:
                message["tool_calls"] = self._calls
            choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        out: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion" if self._completions else "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out


# ------------------------------------------------------------------ the provider


def _stream_path(path: str) -> bool:
    return path.rstrip("/").endswith(("/api/chat", "/api/generate"))


class Ollama(Provider):
    name = NAME
    # prompt_eval_count counts the whole prompt, the KV-cache hits included (Ollama 0.30
    # and later; `prompt_eval_cached_count` says how many were cached). Older versions
    # counted only what they evaluated, or left the field out on a cache hit: the prompt
    # is estimated then.
    input_includes_cache = True
    default_base_url = DEFAULT_BASE_URL
    route_types = frozenset(
        {RouteType.CHAT, RouteType.COMPLETIONS, RouteType.EMBEDDINGS, RouteType.PRESERVE}
    )

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        if spec.route_type is RouteType.PRESERVE:
            url = preserve_url(spec, self.default_base_url)
            body = spec.body if isinstance(spec.body, dict) else {}
            # Ollama streams unless told not to: such an answer is relayed as a stream
            stream = spec.stream or (
                spec.method == "POST"
                and _stream_path(spec.options.upstream_path or spec.path)
                and body.get("stream") is not False
            )
            return UpstreamRequest(spec.method, url, {}, spec.raw_body, stream)
        url = join_url(spec.options.upstream_url, self.default_base_url, PATHS[spec.route_type])
        return build_upstream(spec, url, self.name)

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        if spec.route_type is RouteType.PRESERVE:
            return self._preserved(spec, body)
        return parse_reply(spec, body, self.name)

    def _preserved(self, spec: CallSpec, body: bytes) -> Reply:
        """A preserved answer, passed on unchanged, with its usage and model read (from
        the last line when it is NDJSON)."""
        data: Any = None
        for line in reversed(body.strip().splitlines()):
            try:
                data = orjson.loads(line)
            except ValueError:
                data = None
            break
        data = data if isinstance(data, dict) else {}
        model = data.get("model")
        return Reply(body, data, self.usage_from(data), model if isinstance(model, str) else None)

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        return error_from_ollama(self.name, status, headers, body)

    def stream_translator(self, spec: CallSpec) -> OllamaStream:
        return OllamaStream(spec, self.name)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return usage_from_ollama(data)


PROVIDER = Ollama()
