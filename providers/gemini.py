"""Google Gemini: Google AI Studio (generativelanguage.googleapis.com) and Vertex AI.

OpenAI chat requests become `generateContent` requests (streamed:
`streamGenerateContent?alt=sse`), and Gemini's answers become OpenAI chat completions
and `chat.completion.chunk` streams. The same module serves Kong's `llm_format: gemini`
(clients speaking Gemini's own API, passed through and observed), `preserve` routes, and
embeddings (`batchEmbedContents` on AI Studio, `predict` on Vertex).

Where the two APIs do not line up, the choices made here are:

- Thinking. `reasoning_effort` becomes `generationConfig.thinkingConfig` with the budgets
  of Google's own OpenAI-compatible endpoint: low 1024, medium 8192, high (and xhigh,
  which Gemini has no higher budget for) 24576 tokens, minimal 512 (the smallest budget every Gemini 2.5 model accepts), none 0 (thinking
  off). `includeThoughts` is set unless the effort is none, and thought parts come back
  as `reasoning_content`. `completion_tokens` counts the thinking tokens (OpenAI's
  completion tokens include reasoning tokens; Gemini bills thoughts as output), and
  `completion_tokens_details.reasoning_tokens` says how many of them were thoughts.
- Thought signatures. Gemini puts a `thoughtSignature` on parts (notably on function
  calls) and wants it back on the next turn. It rides on the OpenAI tool call as
  `extra_content: {"google": {"thought_signature": "..."}}` (the convention of Google's
  OpenAI-compatible endpoint) and is put back on the `functionCall` part when the client
  sends the history back. Signatures on plain text parts are not carried (Gemini does
  not require them).
- Blocked prompts. An answer with no candidate because the prompt was blocked
  (`promptFeedback.blockReason`) is a 400 `invalid_request_error` with code
  `content_filter` naming the reason (in a stream: that error as an error event). A
  candidate stopped by a filter (SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII,
  IMAGE_SAFETY) is a normal answer with `finish_reason: "content_filter"`, as OpenAI
  reports filtered completions; its content is null when Gemini sent none.
- Finish reasons. STOP is `stop`, or `tool_calls` when the answer calls functions;
  MAX_TOKENS is `length`; the filter reasons above are `content_filter`; every other
  reason (MALFORMED_FUNCTION_CALL, OTHER, LANGUAGE, ...) is `stop`.
- Usage. `prompt_tokens` is `promptTokenCount` (cached tokens included, as in OpenAI)
  plus `toolUsePromptTokenCount`, `cache_read_tokens` is `cachedContentTokenCount`,
  `completion_tokens` is `candidatesTokenCount + thoughtsTokenCount`. A stream's usage
  is the last `usageMetadata` seen (Gemini repeats the running totals: set, never
  summed).
- Structured output. `response_format` json_object sets `responseMimeType:
  application/json`; json_schema also sends the client's schema as
  `responseJsonSchema` (Gemini's JSON Schema field, no conversion needed).
- Function parameters. OpenAI tools carry JSON Schema; Gemini's `parameters` takes an
  OpenAPI subset. The schema is converted (`$ref`s to `$defs` inlined, `["x", "null"]`
  types to `nullable`, `oneOf` to `anyOf`, `const` to a one-value enum, unsupported
  keywords such as `additionalProperties` and `$schema` dropped, string formats other
  than `enum`/`date-time` dropped, enums kept for strings only). A schema that cannot be
  converted (a recursive `$ref`) is sent unchanged as `parametersJsonSchema`. An object
  schema without properties is sent without `parameters` (Gemini rejects empty ones).
- Images. `image_url` data URIs become `inlineData`; http(s) and gs:// URLs become
  `fileData` with the MIME type guessed from the URL's extension (image/jpeg when it
  says nothing: the part is an image).
- `n` > 1 becomes `candidateCount`; each candidate is a choice.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

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
    error_type_for,
    estimate_tokens,
    generic_error,
    join_url,
    json_body,
    new_completion_id,
)

log = logging.getLogger(__name__)

NAME = "gemini"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

# ------------------------------------------------------------------------ tables

#: reasoning_effort -> thinkingBudget (tokens)
#: ("xhigh" as "high": 24576 is the largest budget every Gemini 2.5 model accepts)
THINKING_BUDGETS = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
}

#: finishReason values that mean a filter stopped the candidate
FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)

#: Google's error `status` -> OpenAI error type
STATUS_TYPES = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "ALREADY_EXISTS": "conflict_error",
    "ABORTED": "conflict_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "DEADLINE_EXCEEDED": "timeout_error",
    "CANCELLED": "api_error",
    "INTERNAL": "api_error",
    "UNAVAILABLE": "api_error",
    "UNKNOWN": "api_error",
    "DATA_LOSS": "api_error",
    "UNIMPLEMENTED": "api_error",
}

#: file extension -> MIME type, for fileData parts (Gemini requires a mimeType)
MIME_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "heic": "image/heic",
    "heif": "image/heif",
    "bmp": "image/bmp",
    "pdf": "application/pdf",
    "txt": "text/plain",
    "mp3": "audio/mp3",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/m4a",
    "aac": "audio/aac",
    "mp4": "video/mp4",
    "mpeg": "video/mpeg",
    "mov": "video/mov",
    "webm": "video/webm",
}
DEFAULT_FILE_MIME = "image/jpeg"

# Keywords of Gemini's Schema (an OpenAPI 3.0 subset) kept as they are.
_SCHEMA_KEEP = frozenset(
    {
        "title",
        "description",
        "nullable",
        "maxItems",
        "minItems",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "propertyOrdering",
        "minimum",
        "maximum",
    }
)
_FORMATS = {
    "string": {"enum", "date-time"},
    "integer": {"int32", "int64"},
    "number": {"float", "double"},
}

_MODEL_IN_PATH = re.compile(r"/models/([^/:?]+):([A-Za-z]+)")


def _bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# ------------------------------------------------------------------------- URLs


def _vertex(spec: CallSpec) -> tuple[str, str, str] | None:
    g = spec.options.gemini
    if g and g.api_endpoint and g.project_id and g.location_id:
        return g.api_endpoint, g.project_id, g.location_id
    return None


def _origin(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def _model_id(model: str | None) -> str:
    if not model:
        raise _bad("gemini needs a model name (none configured or sent)", "model")
    model = model.removeprefix("models/")
    return quote(model, safe="-._~@")


def _set_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _standard_path(spec: CallSpec, model: str, op: str) -> tuple[str, str]:
    """(default origin, path) of `op` on the model, for Vertex or AI Studio."""
    vertex = _vertex(spec)
    if vertex:
        endpoint, project, location = vertex
        return (
            _origin(endpoint),
            f"/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{op}",
        )
    return DEFAULT_BASE_URL, f"/v1beta/models/{model}:{op}"


def operation_url(spec: CallSpec, op: str, stream: bool = False) -> str:
    """Where `op` (generateContent, batchEmbedContents, ...) goes.

    `upstream_url` as a bare origin keeps the standard path; with a path it is used as
    written, except that a stream turns a path ending in `:generateContent` into
    `:streamGenerateContent?alt=sse` (any other path is used as written, and its answer
    decoded whether it is SSE or Google's JSON-array stream).
    """
    upstream = spec.options.upstream_url
    if stream:
        op = "streamGenerateContent"
    if upstream and urlsplit(upstream).path not in ("", "/"):
        if not stream:
            return upstream
        parts = urlsplit(upstream)
        if parts.path.endswith(":generateContent"):
            path = parts.path.removesuffix(":generateContent") + ":streamGenerateContent"
            return _set_query(urlunsplit(parts._replace(path=path)), alt="sse")
        return upstream
    origin, path = _standard_path(spec, _model_id(spec.model), op)
    url = join_url(upstream, origin, path)
    return _set_query(url, alt="sse") if stream else url


# ------------------------------------------------------- request: OpenAI -> Gemini


def _texts(content: Any) -> list[str]:
    """The text pieces of an OpenAI message content (a string or text parts)."""
    if isinstance(content, str):
        return [content] if content else []
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text", part.get("refusal"))
                if isinstance(text, str) and text:
                    out.append(text)
            elif isinstance(part, str) and part:
                out.append(part)
    return out


def _guess_mime(url: str, default: str = DEFAULT_FILE_MIME) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return MIME_TYPES.get(ext, default)


def _data_uri(uri: str, where: str) -> dict[str, Any]:
    head, sep, data = uri.partition(",")
    meta = head.removeprefix("data:").split(";")
    if not sep or "base64" not in meta[1:] or not data:
        raise _bad(f"{where}: only base64 data URIs are supported", "messages")
    return {"inlineData": {"mimeType": meta[0] or "application/octet-stream", "data": data}}


def _media_part(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise _bad(f"{where}: missing url", "messages")
    if url.startswith("data:"):
        return _data_uri(url, where)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https", "gs"):
        return {"fileData": {"mimeType": _guess_mime(url), "fileUri": url}}
    raise _bad(f"{where}: unsupported URL {url[:40]!r} (data:, http(s):// or gs://)", "messages")


def _user_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        where = f"messages[{i}].content[{j}]"
        if isinstance(part, str):
            if part:
                parts.append({"text": part})
            continue
        if not isinstance(part, dict):
            raise _bad(f"{where} must be an object", "messages")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media_part(url, where))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            data, fmt = audio.get("data"), audio.get("format") or "wav"
            if not isinstance(data, str) or not data:
                raise _bad(f"{where}: input_audio needs base64 data", "messages")
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": data}})
        elif kind == "file":
            file = part.get("file") or {}
            data = file.get("file_data")
            if isinstance(data, str) and data.startswith("data:"):
                parts.append(_data_uri(data, where))
            elif isinstance(data, str) and data:
                mime = _guess_mime(str(file.get("filename") or ""), "application/pdf")
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            else:
                raise _bad(f"{where}: only inline file_data is supported by gemini", "messages")
        else:
            raise _bad(
                f"{where}: content part type {kind!r} is not supported by gemini", "messages"
            )
    return parts


def _call_args(call: dict[str, Any], i: int) -> dict[str, Any]:
    fn = call.get("function") or {}
    raw = fn.get("arguments")
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    name = fn.get("name")
    try:
        args = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise _bad(
            f"messages[{i}]: the arguments of tool call {call.get('id')!r} ({name}) are not "
            "a JSON object",
            "messages",
        )
    return args


def _signature(call: dict[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _tool_response(content: Any) -> dict[str, Any]:
    text = "".join(_texts(content)) if not isinstance(content, str) else content
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"content": text}


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Add a turn; consecutive turns of the same role are merged (Gemini alternates)."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def to_contents(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages -> (Gemini contents, systemInstruction parts)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system.extend({"text": t} for t in _texts(content))
        elif role == "user":
            _append(contents, "user", _user_parts(content, i))
        elif role == "assistant":
            parts: list[dict[str, Any]] = [{"text": t} for t in _texts(content)]
            for call in m.get("tool_calls") or ():
                if not isinstance(call, dict):
                    raise _bad(f"messages[{i}].tool_calls must hold objects", "messages")
                name = (call.get("function") or {}).get("name")
                if not isinstance(name, str) or not name:
                    raise _bad(f"messages[{i}]: tool call {call.get('id')!r} has no name")
                part: dict[str, Any] = {"functionCall": {"name": name, "args": _call_args(call, i)}}
                sig = _signature(call)
                if sig:
                    part["thoughtSignature"] = sig
                if isinstance(call.get("id"), str):
                    names[call["id"]] = name
                parts.append(part)
            _append(contents, "model", parts)
        elif role in ("tool", "function"):
            call_id = m.get("tool_call_id")
            name = names.get(call_id) if isinstance(call_id, str) else None
            name = name or m.get("name")
            if not isinstance(name, str) or not name:
                raise _bad(
                    f"messages[{i}]: tool result for {call_id!r} matches no earlier assistant "
                    "tool call (gemini needs the function's name)",
                    "messages",
                )
            response = {"functionResponse": {"name": name, "response": _tool_response(content)}}
            _append(contents, "user", [response])
        else:
            raise _bad(f"messages[{i}]: role {role!r} is not supported by gemini", "messages")
    return contents, system


def _resolve_ref(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#/"):
        raise _Unconvertible
    node: Any = root
    for key in ref[2:].split("/"):
        key = key.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            raise _Unconvertible
        node = node[key]
    return node


class _Unconvertible(Exception):
    """A JSON Schema that Gemini's OpenAPI subset cannot express."""


def to_schema(schema: Any, root: dict[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """A JSON Schema as Gemini's Schema (see the module docstring for the rules)."""
    if not isinstance(schema, dict):
        return {}
    root = schema if root is None else root
    if depth > 32:
        raise _Unconvertible
    if "$ref" in schema:
        return to_schema(_resolve_ref(schema["$ref"], root), root, depth + 1)
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        if len(types) < len(kind):
            out["nullable"] = True
        if len(types) == 1:
            out["type"] = types[0]
        elif types:
            out["anyOf"] = [{"type": t} for t in types]
    elif isinstance(kind, str):
        out["type"] = kind
    main = out.get("type")
    for key, value in schema.items():
        if key in _SCHEMA_KEEP:
            out[key] = value
        elif key == "properties" and isinstance(value, dict) and value:
            out["properties"] = {k: to_schema(v, root, depth + 1) for k, v in value.items()}
        elif key == "required" and isinstance(value, list) and value:
            out["required"] = value
        elif key == "items" and isinstance(value, dict):
            out["items"] = to_schema(value, root, depth + 1)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            variants = []
            for v in value:
                if isinstance(v, dict) and v.get("type") == "null" and len(v) == 1:
                    out["nullable"] = True
                else:
                    variants.append(to_schema(v, root, depth + 1))
            if len(variants) == 1:
                for k, v in variants[0].items():
                    out.setdefault(k, v)
            elif variants:
                out["anyOf"] = variants
        elif key == "allOf" and isinstance(value, list) and len(value) == 1:
            for k, v in to_schema(value[0], root, depth + 1).items():
                out.setdefault(k, v)
        elif key == "enum" and isinstance(value, list):
            if value and all(isinstance(v, str) for v in value):
                out["enum"] = value
        elif key == "const" and isinstance(value, str):
            out["enum"] = [value]
        elif key == "format" and value in _FORMATS.get(main if isinstance(main, str) else "", ()):
            out["format"] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _declaration(tool: dict[str, Any], i: int) -> dict[str, Any]:
    fn = tool.get("function")
    if tool.get("type", "function") != "function" or not isinstance(fn, dict):
        raise _bad(f"tools[{i}]: only function tools are supported by gemini", "tools")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"tools[{i}]: a function needs a name", "tools")
    decl: dict[str, Any] = {"name": name}
    if isinstance(fn.get("description"), str) and fn["description"]:
        decl["description"] = fn["description"]
    params = fn.get("parameters")
    if isinstance(params, dict) and params:
        try:
            converted = to_schema(params)
        except _Unconvertible:
            decl["parametersJsonSchema"] = params
        else:
            if converted.get("type") != "object" or converted.get("properties"):
                decl["parameters"] = converted
    return decl


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice)
        if mode is None:
            raise _bad(f"tool_choice {choice!r} is not supported", "tool_choice")
        return {"functionCallingConfig": {"mode": mode}}
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
            if isinstance(name, str) and name:
                return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
        if choice.get("type") == "allowed_tools":
            allowed = choice.get("allowed_tools") or {}
            names = [
                (t.get("function") or {}).get("name")
                for t in allowed.get("tools") or ()
                if isinstance(t, dict)
            ]
            if allowed.get("mode") == "required":
                return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": names}}
            return {"functionCallingConfig": {"mode": "AUTO"}}
    raise _bad("tool_choice must be auto, none, required or a function", "tool_choice")


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    gc: dict[str, Any] = {}
    max_out = body.get("max_completion_tokens")
    if max_out is None:
        max_out = body.get("max_tokens")
    if max_out is not None:
        gc["maxOutputTokens"] = max_out
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        if body.get(ours) is not None:
            gc[theirs] = body[ours]
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        gc["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        gc["stopSequences"] = [s for s in stop if isinstance(s, str)]
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        gc["candidateCount"] = n
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_object":
            gc["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            gc["responseMimeType"] = "application/json"
            schema = (fmt.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                gc["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            known = ", ".join(THINKING_BUDGETS)
            raise _bad(f"reasoning_effort must be one of {known}", "reasoning_effort")
        budget = THINKING_BUDGETS[effort]
        gc["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return gc


def to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request body as a Gemini GenerateContentRequest."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array", "messages")
    contents, system = to_contents(messages)
    if not contents:
        raise _bad("gemini needs at least one user or assistant message", "messages")
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        decls = [_declaration(t if isinstance(t, dict) else {}, i) for i, t in enumerate(tools)]
        out["tools"] = [{"functionDeclarations": decls}]
        config = _tool_config(body.get("tool_choice"))
        if config:
            out["toolConfig"] = config
    gc = _generation_config(body)
    if gc:
        out["generationConfig"] = gc
    return out


# ------------------------------------------------------ response: Gemini -> OpenAI


def usage_from_gemini(meta: Any) -> Usage | None:
    """Gemini's `usageMetadata` as a normalized Usage (see the module docstring)."""
    if not isinstance(meta, dict):
        return None
    thoughts = as_int(meta.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=as_int(meta.get("promptTokenCount"))
        + as_int(meta.get("toolUsePromptTokenCount")),
        completion_tokens=as_int(meta.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=as_int(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def finish_reason(reason: Any, has_calls: bool) -> str:
    if not isinstance(reason, str):  # absent, or not what Google documents
        reason = None
    if reason in FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_calls else "stop"


def _tool_call(part: dict[str, Any]) -> dict[str, Any] | None:
    fc = part.get("functionCall")
    if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
        return None
    args = fc.get("args")
    call: dict[str, Any] = {
        "id": _call_id(),
        "type": "function",
        "function": {
            "name": fc["name"],
            "arguments": compact_json(args if args is not None else {}),
        },
    }
    sig = part.get("thoughtSignature")
    if isinstance(sig, str) and sig:
        call["extra_content"] = {"google": {"thought_signature": sig}}
    return call


def _parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def blocked_error(feedback: Any) -> ProviderError | None:
    """The error for an answer without candidates because the prompt was blocked."""
    if not isinstance(feedback, dict) or not feedback.get("blockReason"):
        return None
    reason = feedback["blockReason"]
    message = f"gemini blocked the prompt (blockReason {reason})"
    if isinstance(feedback.get("blockReasonMessage"), str):
        message += f": {feedback['blockReasonMessage']}"
    return ProviderError(400, message, "invalid_request_error", "content_filter", "messages")


def _error_from(err: Any, status: int | None = None) -> ProviderError:
    """A Google `error` object ({code, status, message, details}) as a ProviderError."""
    if not isinstance(err, dict):
        text = str(err) if err else "gemini upstream error"
        return ProviderError(status or 502, text, error_type_for(status or 502))
    code = err.get("code")
    http = status or (code if isinstance(code, int) and 400 <= code < 600 else 502)
    google_status = err.get("status")
    kind = STATUS_TYPES.get(google_status) if isinstance(google_status, str) else None
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = f"gemini upstream error {google_status or code or http}"
    param = None
    for detail in err.get("details") or ():
        if isinstance(detail, dict):
            for violation in detail.get("fieldViolations") or ():
                if isinstance(violation, dict) and isinstance(violation.get("field"), str):
                    param = param or violation["field"]
    return ProviderError(
        http,
        message,
        kind or error_type_for(http),
        google_status if isinstance(google_status, str) else code,
        param,
    )


def from_gemini(data: dict[str, Any], spec: CallSpec) -> dict[str, Any]:
    """A GenerateContentResponse as an OpenAI chat.completion (raises ProviderError for
    blocked prompts and answers without candidates)."""
    if "error" in data and not data.get("candidates"):
        raise _error_from(data["error"])
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        blocked = blocked_error(data.get("promptFeedback"))
        if blocked:
            raise blocked
        raise ProviderError(502, "gemini: the upstream answer has no candidates")
    choices = []
    for i, cand in enumerate(candidates):
        if not isinstance(cand, dict):
            continue
        texts, thoughts, calls = [], [], []
        for part in _parts(cand):
            if "functionCall" in part:
                call = _tool_call(part)
                if call:
                    calls.append(call)
            elif isinstance(part.get("text"), str):
                (thoughts if part.get("thought") else texts).append(part["text"])
        reason = finish_reason(cand.get("finishReason"), bool(calls))
        content: str | None = "".join(texts)
        if not texts and (calls or reason == "content_filter"):
            content = None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        index = cand.get("index")
        choices.append(
            {
                "index": index if isinstance(index, int) else i,
                "message": message,
                "finish_reason": reason,
                "logprobs": None,
            }
        )
    if not choices:
        raise ProviderError(502, "gemini: the upstream answer has no usable candidate")
    response_id = data.get("responseId")
    model = data.get("modelVersion")
    out: dict[str, Any] = {
        "id": f"chatcmpl-{response_id}" if isinstance(response_id, str) else new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model if isinstance(model, str) and model else spec.model,
        "choices": choices,
    }
    usage = usage_from_gemini(data.get("usageMetadata"))
    if usage is not None:
        out["usage"] = usage.to_openai()
    return out


# -------------------------------------------------------------------- the stream


class JSONArrayDecoder:
    """Google's JSON-array stream (`[{...}\\n,\\r\\n{...}\\n]`) cut anywhere: yields
    each top-level object's bytes once it is complete.

    Only the new bytes are scanned (with a regex that jumps to the next quote, brace or
    backslash); the string/escape state and the brace depth carry across chunks.
    """

    _OUTSIDE = re.compile(rb'[{}"\]]')
    _IN_STRING = re.compile(rb'["\\]')

    __slots__ = ("_buf", "_pos", "_depth", "_in_string", "_start", "closed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._start = 0
        self.closed = False  # the array's closing bracket was seen

    @property
    def pending(self) -> bool:
        """Part of an object is buffered (a stream cut here was cut mid-event)."""
        return self._depth > 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        pos = self._pos
        out: list[bytes] = []
        end = len(buf)
        while pos < end:
            if self._in_string:
                m = self._IN_STRING.search(buf, pos)
                if m is None:
                    pos = end
                    break
                if m.group() == b"\\":
                    if m.end() >= end:  # the escaped byte is in the next chunk
                        pos = m.start()
                        break
                    pos = m.end() + 1
                    continue
                self._in_string = False
                pos = m.end()
                continue
            m = self._OUTSIDE.search(buf, pos)
            if m is None:
                pos = end
                break
            c = m.group()
            pos = m.end()
            if c == b'"':
                self._in_string = True
            elif c == b"{":
                if self._depth == 0:
                    self._start = m.start()
                self._depth += 1
            elif c == b"}":
                if self._depth > 0:
                    self._depth -= 1
                    if self._depth == 0:
                        out.append(bytes(buf[self._start : pos]))
            elif self._depth == 0:  # "]" outside any object
                self.closed = True
        # Drop what is consumed: everything outside an object, or what precedes it.
        if self._depth == 0 and not self._in_string:
            del buf[:pos]
            pos = 0
        elif self._depth > 0 and self._start > 0:
            del buf[: self._start]
            pos -= self._start
            self._start = 0
        self._pos = pos
        return out


@dataclass
class _Choice:
    index: int
    text: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None


class GeminiStream:
    """Gemini's stream (SSE with `alt=sse`, or the JSON array without) -> OpenAI chunks.

    Each Gemini event becomes chunks as soon as it is complete: text, thoughts
    (`reasoning_content`) and whole function calls (id, name and arguments in one delta,
    `index` counting the calls of the stream). The finish reason, the usage chunk (only
    when the client asked for it) and `[DONE]` come from `finish()`.
    """

    def __init__(self, spec: CallSpec) -> None:
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self._wants_usage = spec.client_wants_usage
        self._model = spec.model
        self._id: str | None = None
        self._created = int(time.time())
        self._mode: str | None = None  # "sse" or "json"
        self._sse = sse.SSEDecoder()
        self._json = JSONArrayDecoder()
        self._choices: dict[int, _Choice] = {}
        self._events = 0
        self._finished = False

    # ------------------------------------------------------------------ protocol

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if self._finished or not data:
            return out
        try:
            if self._mode is None:
                data = data.lstrip()
                if not data:
                    return out
                self._mode = "json" if data[:1] in b"[{," else "sse"
            if self._mode == "json":
                for raw in self._json.feed(data):
                    self._handle(_loads(raw), out)
            else:
                for ev in self._sse.feed(data):
                    self._handle(_loads(ev.data.encode()), out)
        except Exception:  # a bug here must not take the client's stream down
            log.exception("llmitm: gemini stream translation failed")
            self._fail(ProviderError(502, "gemini: the gateway could not read the stream"), out)
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        if self._finished:
            return out
        try:
            if self._mode == "sse":
                for ev in self._sse.flush():
                    obj = _loads(ev.data.encode())
                    if obj is not None:  # half an event cut by a failure is dropped
                        self._handle(obj, out)
            elif self._mode == "json" and self._json.pending and error is None:
                error = ProviderError(502, "gemini: the stream ended in the middle of an event")
            if error is not None:
                self._fail(error, out)
            elif self.error is None:
                if self._events == 0:
                    self._fail(
                        ProviderError(502, "gemini: the stream ended without any answer"), out
                    )
                elif not any(ch.reason for ch in self._choices.values()):
                    # Gemini's last event carries the finishReason: without one the
                    # upstream broke the stream off between two events
                    self._fail(
                        ProviderError(
                            502, "gemini: the stream ended before the answer did (no finishReason)"
                        ),
                        out,
                    )
                else:
                    if not self._choices:
                        self._choice(0, out)
                    for index in sorted(self._choices):
                        ch = self._choices[index]
                        reason = finish_reason(ch.reason, bool(ch.calls))
                        out.append(
                            self._chunk({"index": index, "delta": {}, "finish_reason": reason})
                        )
                    if self._wants_usage and self.usage is not None:
                        out.append(self._chunk(None, usage=self.usage.to_openai()))
        except Exception:
            log.exception("llmitm: gemini stream translation failed")
            self._fail(ProviderError(502, "gemini: the gateway could not read the stream"), out)
        self._finished = True
        out.append(sse.DONE)
        return out

    def assembled(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            ch = self._choices[index]
            text = "".join(ch.text)
            reason = None if self.error else finish_reason(ch.reason, bool(ch.calls))
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text if text or not (ch.calls or reason == "content_filter") else None,
            }
            if ch.thoughts:
                message["reasoning_content"] = "".join(ch.thoughts)
            if ch.calls:
                message["tool_calls"] = ch.calls
            choices.append({"index": index, "message": message, "finish_reason": reason})
        out: dict[str, Any] = {
            "id": self._id or new_completion_id(),
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out

    # ------------------------------------------------------------------ events

    def _chunk(self, choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
        if self._id is None:
            self._id = new_completion_id()
        obj: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [choice] if choice is not None else [],
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _fail(self, error: ProviderError, out: list[bytes]) -> None:
        if self.error is None:
            self.error = error
            out.append(sse.encode(error.to_openai()))

    def _choice(self, index: int, out: list[bytes]) -> _Choice:
        ch = self._choices.get(index)
        if ch is None:
            ch = self._choices[index] = _Choice(index)
            delta = {"role": "assistant", "content": ""}
            out.append(self._chunk({"index": index, "delta": delta, "finish_reason": None}))
        return ch

    def _delta(self, ch: _Choice, delta: dict[str, Any], out: list[bytes]) -> None:
        self.started = True
        out.append(self._chunk({"index": ch.index, "delta": delta, "finish_reason": None}))

    def _handle(self, obj: Any, out: list[bytes]) -> None:
        if self.error is not None or not isinstance(obj, dict):
            return
        candidates = obj.get("candidates")
        if "error" in obj and not candidates:
            self._fail(_error_from(obj["error"]), out)
            return
        self._events += 1
        if self._id is None and isinstance(obj.get("responseId"), str):
            self._id = f"chatcmpl-{obj['responseId']}"
        if not self._choices and isinstance(obj.get("modelVersion"), str) and obj["modelVersion"]:
            self._model = obj["modelVersion"]  # before the first chunk: same on every chunk
        usage = usage_from_gemini(obj.get("usageMetadata"))
        if usage is not None:
            self.usage = usage  # running totals: the last one wins
        if not isinstance(candidates, list) or not candidates:
            blocked = blocked_error(obj.get("promptFeedback"))
            if blocked is not None:
                self._fail(blocked, out)
            return
        for i, cand in enumerate(candidates):
            if not isinstance(cand, dict):
                continue
            index = cand.get("index")
            ch = self._choice(index if isinstance(index, int) else i, out)
            for part in _parts(cand):
                if "functionCall" in part:
                    call = _tool_call(part)
                    if call is None:
                        continue
                    ch.calls.append(call)
                    self._delta(ch, {"tool_calls": [{"index": len(ch.calls) - 1, **call}]}, out)
                elif isinstance(part.get("text"), str) and part["text"]:
                    if part.get("thought"):
                        ch.thoughts.append(part["text"])
                        self._delta(ch, {"reasoning_content": part["text"]}, out)
                    else:
                        ch.text.append(part["text"])
                        self._delta(ch, {"content": part["text"]}, out)
            if isinstance(cand.get("finishReason"), str):
                ch.reason = cand["finishReason"]


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except ValueError:
        return None


# ---------------------------------------------------------------------- embeddings


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    data = body.get("input")
    items = [data] if isinstance(data, str) else data
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t for t in items):
        raise _bad("gemini embeddings need 'input' as a string or an array of strings", "input")
    return items


def _embedding_request(spec: CallSpec, model: str) -> dict[str, Any]:
    texts = _embedding_inputs(spec.body)
    dims = spec.body.get("dimensions")
    if _vertex(spec):
        out: dict[str, Any] = {"instances": [{"content": t} for t in texts]}
        if isinstance(dims, int):
            out["parameters"] = {"outputDimensionality": dims}
        return out
    requests = []
    for t in texts:
        req: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": t}]}}
        if isinstance(dims, int):
            req["outputDimensionality"] = dims
        requests.append(req)
    return {"requests": requests}


def _encode_vector(values: list[float], encoding: Any) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def from_embeddings(data: dict[str, Any], spec: CallSpec) -> tuple[dict[str, Any], Usage]:
    """batchEmbedContents (`embeddings[].values`) or Vertex predict
    (`predictions[].embeddings.values` with token statistics) as OpenAI's list."""
    vectors: list[list[float]] = []
    tokens = 0
    reported = False
    if isinstance(data.get("embeddings"), list):
        for e in data["embeddings"]:
            values = e.get("values") if isinstance(e, dict) else None
            if not isinstance(values, list):
                raise ProviderError(502, "gemini: an embedding in the answer has no 'values'")
            vectors.append(values)
    elif isinstance(data.get("predictions"), list):
        for p in data["predictions"]:
            emb = p.get("embeddings") if isinstance(p, dict) else None
            values = emb.get("values") if isinstance(emb, dict) else None
            if not isinstance(values, list):
                raise ProviderError(502, "gemini: a prediction in the answer has no embeddings")
            vectors.append(values)
            stats = emb.get("statistics")
            if isinstance(stats, dict) and "token_count" in stats:
                reported = True
                tokens += int(stats.get("token_count") or 0)
    else:
        raise ProviderError(502, "gemini: the upstream answer has no 'embeddings'")
    encoding = spec.body.get("encoding_format")
    if reported:
        usage = Usage(prompt_tokens=tokens)
    else:
        texts = _embedding_inputs(spec.body)
        usage = Usage(prompt_tokens=sum(estimate_tokens(t) for t in texts), estimated=True)
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


# ---------------------------------------------------------------------- provider


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class Gemini(Provider):
    name = NAME
    default_base_url = DEFAULT_BASE_URL
    route_types = frozenset({RouteType.CHAT, RouteType.EMBEDDINGS, RouteType.PRESERVE})
    auth_headers = ("x-goog-api-key", "authorization")
    auth_params = ("key",)
    warm_imports = ("google.oauth2.service_account", "google.auth.transport")
    native_format = "gemini"

    # ------------------------------------------------------------------ config

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        """Base checks, plus (when the gateway passes the route's `auth`) a service
        account that is asked for but configured nowhere."""
        errors = super().config_errors(model, route_type, auth)
        if auth is not None and getattr(auth, "gcp_use_service_account", False):
            info = getattr(auth, "gcp_service_account_json", None)
            if not info and not os.environ.get("GCP_SERVICE_ACCOUNT"):
                errors.append(
                    "auth.gcp_use_service_account is true but no service account is given: "
                    "set auth.gcp_service_account_json or the GCP_SERVICE_ACCOUNT "
                    "environment variable"
                )
            elif info and "{vault://" not in info and "$(" not in info:
                errors.extend(service_account_errors(info))
        return errors

    # ------------------------------------------------------------- credentials

    def credential_kind(self, auth: Any, options: Any) -> str | None:
        return "gcp" if getattr(auth, "gcp_use_service_account", False) else None

    def sign(self, up: UpstreamRequest, spec: CallSpec, credentials: Any) -> None:
        token = getattr(credentials, "token", credentials)
        if isinstance(token, str) and token:
            up.headers["authorization"] = f"Bearer {token}"

    # ------------------------------------------------------------------ build

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        headers = {"content-type": "application/json"}
        if spec.route_type is RouteType.PRESERVE:
            url = self._host_url(spec, spec.options.upstream_path or spec.path or "/", spec.query)
            stream = spec.stream or ":streamGenerateContent" in urlsplit(url).path
            return UpstreamRequest(spec.method, url, headers, spec.raw_body, stream)
        if spec.route_type is RouteType.EMBEDDINGS:
            model = _model_id(spec.model)
            op = "predict" if _vertex(spec) else "batchEmbedContents"
            body = _embedding_request(spec, model)
            return UpstreamRequest("POST", operation_url(spec, op), headers, json_body(body))
        body = to_gemini(spec.body)
        url = operation_url(spec, "generateContent", spec.stream)
        if spec.stream:
            headers["accept"] = "text/event-stream"
        return UpstreamRequest("POST", url, headers, json_body(body), spec.stream)

    def _host_url(self, spec: CallSpec, path: str, query: str) -> str:
        vertex = _vertex(spec)
        base = spec.options.upstream_url or (
            _origin(vertex[0]) if vertex else self.default_base_url
        )
        parts = urlsplit(base)
        # a URL with a path is used as written
        url = base if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}{path}"
        if query:
            url += ("&" if "?" in url else "?") + query
        return url

    # ------------------------------------------------------------------ parse

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        data = _json_body(body)
        if spec.route_type is RouteType.PRESERVE:
            data = data if isinstance(data, dict) else {}
            model = data.get("modelVersion")
            return Reply(
                body, data, self.usage_from(data), model if isinstance(model, str) else None
            )
        if isinstance(data, list) or (data is None and body.lstrip()[:5] == b"data:"):
            return self._from_stream_body(spec, body)
        if not isinstance(data, dict):
            raise ProviderError(502, "gemini: the upstream answer is not a JSON object")
        if spec.route_type is RouteType.EMBEDDINGS:
            if "error" in data:
                raise _error_from(data["error"])
            out, usage = from_embeddings(data, spec)
            return Reply(json.dumps(out).encode(), out, usage, spec.model)
        out = from_gemini(data, spec)
        return Reply(
            json.dumps(out).encode(),
            out,
            usage_from_gemini(data.get("usageMetadata")),
            out.get("model"),
        )

    def _from_stream_body(self, spec: CallSpec, body: bytes) -> Reply:
        """A whole streamed body (an upstream_url path that streams, buffered): decoded
        by the stream translator and assembled."""
        stream = GeminiStream(spec)
        stream.feed(body)
        stream.finish()
        if stream.error is not None:
            raise stream.error
        out = stream.assembled()
        return Reply(json.dumps(out).encode(), out, stream.usage, out.get("model"))

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        data = _json_body(body)
        if isinstance(data, list) and data and isinstance(data[0], dict):
            data = data[0]  # Vertex sometimes wraps the error in an array
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return _error_from(data["error"], status)
        return generic_error(self.name, status, headers, body)

    def stream_translator(self, spec: CallSpec) -> GeminiStream:
        return GeminiStream(spec)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return usage_from_gemini(data.get("usageMetadata")) if isinstance(data, dict) else None

    # --------------------------------------------------- native (llm_format)

    def native_model(self, spec: CallSpec) -> str | None:
        m = _MODEL_IN_PATH.search(spec.path or "")
        return m.group(1) if m else None

    def build_native_request(self, spec: CallSpec) -> UpstreamRequest:
        """A Gemini-format request passed through: the client's path (the model swapped
        for `spec.model` when set), body and query (e.g. `alt=sse`) unchanged, on the
        Vertex or AI Studio host (or `upstream_url`). A Vertex route sends any such path to
        the configured project and location's `.../publishers/google/models/{m}:{op}`
        (an AI Studio client's `/v1beta/models/{m}:{op}` included): the body is the same
        and the credentials are the route's."""
        path = spec.path or "/"
        m = _MODEL_IN_PATH.search(path)
        if m is None:
            raise _bad(
                "gemini: the path must name a model and an operation "
                "(.../models/{model}:generateContent)"
            )
        model, op = m.group(1), m.group(2)
        if spec.model:
            model = _model_id(spec.model)
        if _vertex(spec):
            _, path = _standard_path(spec, model, op)
        else:
            path = path[: m.start(1)] + model + path[m.end(1) :]
        url = self._host_url(spec, path, spec.query)
        headers = {"content-type": "application/json"}
        return UpstreamRequest(
            spec.method, url, headers, spec.raw_body, op == "streamGenerateContent"
        )


def service_account_errors(info: str) -> list[str]:
    """What is wrong with a service-account key (JSON text), if anything."""
    try:
        data = json.loads(info)
    except ValueError:
        return ["auth.gcp_service_account_json is not valid JSON"]
    if not isinstance(data, dict):
        return ["auth.gcp_service_account_json must be a JSON object"]
    missing = [k for k in ("client_email", "private_key", "token_uri") if not data.get(k)]
    if missing:
        return [f"auth.gcp_service_account_json lacks {', '.join(missing)}"]
    return []


PROVIDER = Gemini()
