"""AWS Bedrock runtime: the Converse and ConverseStream APIs behind OpenAI's formats.

Chat (`llm/v1/chat`) goes to `POST /model/{modelId}/converse`, streamed chat to
`POST /model/{modelId}/converse-stream` (an `application/vnd.amazon.eventstream` body,
decoded by `providers.eventstream`). Embeddings (`llm/v1/embeddings`) go to
`POST /model/{modelId}/invoke` of an Amazon Titan model (one text per request,
`dimensions` passed on) or a Cohere one (`input_type` defaults to "search_document",
`dimensions` becomes `output_dimension`), and are answered as floats or, with
`encoding_format: "base64"` (the openai SDK's default), as base64 float32 like OpenAI.
`preserve` passes through untouched, its usage still read (Converse bodies, InvokeModel
token-count headers, streamed invocation metrics). Native Converse clients
(`llm_format: bedrock`) are passed through to the same path, the model in it replaced
by the route's, and observed.

Every request is signed with AWS SigV4 (service `bedrock`) by `sign`, with credentials
the gateway resolves (route auth, environment or botocore's chain). botocore does the
signing; it is imported only when a request is signed (the extra `llmitm[bedrock]`).

Where the request goes:

- **Region**: `model.options.bedrock.aws_region`, else `AWS_REGION`, else
  `AWS_DEFAULT_REGION`. The default host is `bedrock-runtime.{region}.amazonaws.com`;
  the region is also part of the signature, so it is needed with `upstream_url` too.
- **Model id in the path**: one path segment. `/` (inference-profile and
  provisioned-model ARNs) is percent-encoded, as AWS requires (a literal `/` would be
  routed as more path). The characters a path segment allows literally (RFC 3986
  `pchar`: `:` in ARNs and versioned ids, `@!$&'()*,;=`) stay literal: AWS accepts them
  either way, and HTTP clients (aiohttp's yarl) normalise `%3A` back to `:`, which would
  make the path sent differ from the path signed.
- **upstream_url**: a bare origin keeps the standard path and operation; a URL with a
  path is used as written, except that a stream request to a path ending in `/converse`
  goes to `/converse-stream`.

Conventions where OpenAI's format has no slot for what Bedrock does:

- **Messages**: `system`/`developer` messages (wherever they are) become `system`;
  `tool` messages become `toolResult` blocks of a user turn (`{"json": ...}` when the
  content is a JSON object, else `{"text": ...}`; a non-standard `status` of "success"
  or "error" on the message is passed on); consecutive same-role turns are merged, so
  parallel tool results and the user message after them form one turn. Blank text is
  not sent (Bedrock rejects blank text blocks) and a message left empty is dropped.
- **Images** must be inline: a `data:` URI becomes `{"image": {"format", "source":
  {"bytes"}}}` (png, jpeg, gif, webp); an `s3://` URL becomes an `s3Location` source.
  An `http(s)` URL is a 400: Bedrock does not fetch URLs, and a gateway fetching
  arbitrary client URLs would be a server-side request forgery vector. `file` parts
  with a base64 `file_data` become `document` blocks.
- **cache_control** on a text, image or file part, a system part or a tool adds a
  Bedrock `{"cachePoint": {"type": "default"}}` after it (prompt caching).
- **Tools**: `toolConfig.tools[].toolSpec {name, description, inputSchema: {json}}`.
  tool_choice auto -> `{"auto": {}}`, required -> `{"any": {}}`, a named function ->
  `{"tool": {"name"}}`. Converse has no "none": with `tool_choice: "none"` the tools are
  not sent, unless the conversation already holds tool calls, which Bedrock only
  accepts with a `toolConfig`; then the tools are sent without a toolChoice (the model
  may still call one). For the same reason, a request without `tools` whose history
  calls tools declares those (by name, with an open input schema).
- **inferenceConfig**: maxTokens (max_completion_tokens, else max_tokens), temperature,
  topP, stopSequences (stop). `top_k` is model-specific and goes in
  `additionalModelRequestFields`: `{"inferenceConfig": {"topK"}}` for Amazon Nova
  models, `{"top_k"}` for the others (Anthropic, Mistral, ...).
- **Thinking** (Anthropic models: the id names `anthropic` or `claude`): OpenAI's
  `reasoning_effort` becomes `additionalModelRequestFields.thinking` `{"type":
  "enabled", "budget_tokens"}` (`THINKING_BUDGETS`, as the Anthropic adapter; "none"
  and "minimal" leave it off). For other models `reasoning_effort` is not sent: each
  family has its own field, which `additionalModelRequestFields` carries as given. An
  Anthropic-style `thinking` object in the body is sent as written, for any model.
  With thinking on, maxTokens must exceed the budget (else it becomes budget +
  `DEFAULT_MAX_TOKENS`), and temperature (unless 1), top_k and a top_p below 0.95 are
  not sent to Anthropic models (which reject them). An assistant message's
  `thinking_blocks` (thinking with its signature, redacted thinking) go back first in
  that turn as `reasoningContent` blocks; `reasoning_content` alone, without blocks,
  is not sent back: without a signature Bedrock would reject it.
- **Passed through** from the client's body when present: `guardrailConfig`,
  `additionalModelRequestFields` (merged with the above, the client's keys winning),
  `additionalModelResponseFieldPaths`, `performanceConfig`, `requestMetadata`,
  `promptVariables`. Nothing else of the OpenAI request is sent (no `model`: it is in
  the URL). `n` above 1 is a 400; `response_format`, penalties, seeds and logprobs have
  no Converse equivalent and are not sent.
- **Answers**: text blocks joined as `content`, `toolUse` -> `tool_calls` (arguments as
  compact JSON), `reasoningContent` -> `reasoning_content` and `thinking_blocks` (only
  blocks with a signature or redacted content become blocks: others cannot be sent
  back). stopReason -> finish_reason: end_turn and stop_sequence -> stop; max_tokens
  and model_context_window_exceeded -> length; tool_use -> tool_calls;
  guardrail_intervened and content_filtered -> content_filter; anything else
  (malformed_model_output, malformed_tool_use) -> stop.
- **Streams**: a role chunk first; text, reasoning text and tool-call deltas as each
  event completes, tool calls indexed by their order among tool calls (not by content
  block); a thinking block, signature included, as `delta.thinking_blocks` when its
  content block stops; the mapped finish_reason on messageStop; the usage of the
  `metadata` event in a last `choices: []` chunk when the client asked for it. An
  exception message, a corrupt frame (CRC, length) or a stream that ends before its
  messageStop and metadata events ends the stream with an OpenAI error event.
- **Usage**: Bedrock's `inputTokens` counts the input that was neither read from nor
  written to the prompt cache; `cacheReadInputTokens` and `cacheWriteInputTokens` are
  reported beside it and `totalTokens` is the sum of all four. `prompt_tokens` (every
  input token, by the gateway's contract) is therefore inputTokens + cache reads + cache
  writes. Should a model report an `inputTokens` that already includes the cache (seen
  with some non-Anthropic models: totalTokens = inputTokens + outputTokens with nonzero
  cache counts), `totalTokens` tells, and inputTokens is taken as the whole.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import json
import os
import re
import struct
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from providers import eventstream, sse
from providers.anthropic import AnthropicStream, thinking_config
from providers.base import (
    AWSCredentials,
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
    generic_error,
    join_url,
    json_body,
    new_completion_id,
    preserve_url,
)
from providers.openai import OpenAIStream
from providers.options import ModelOptions

SERVICE = "bedrock"
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
EVENTSTREAM = "application/vnd.amazon.eventstream"

#: maxTokens sent with thinking on when the client's is not above the budget
DEFAULT_MAX_TOKENS = 4096


#: Bedrock `stopReason` -> OpenAI `finish_reason` (anything else: "stop")
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

#: AWS error type -> (HTTP status AWS uses for it, OpenAI error type). The status is
#: used for exceptions inside a stream (whose HTTP status was 200); for a whole error
#: answer the upstream's own status is kept.
ERRORS: dict[str, tuple[int, str]] = {
    "ValidationException": (400, "invalid_request_error"),
    "SerializationException": (400, "invalid_request_error"),
    "ConflictException": (400, "invalid_request_error"),
    "AccessDeniedException": (403, "permission_error"),
    "UnrecognizedClientException": (403, "authentication_error"),
    "InvalidSignatureException": (403, "authentication_error"),
    "IncompleteSignatureException": (403, "authentication_error"),
    "MissingAuthenticationTokenException": (403, "authentication_error"),
    "ExpiredTokenException": (403, "authentication_error"),
    "InvalidClientTokenId": (403, "authentication_error"),
    "ResourceNotFoundException": (404, "not_found_error"),
    "UnknownOperationException": (404, "not_found_error"),
    "ModelTimeoutException": (408, "timeout_error"),
    "ServiceQuotaExceededException": (400, "insufficient_quota"),
    "ThrottlingException": (429, "rate_limit_error"),
    "TooManyRequestsException": (429, "rate_limit_error"),
    "ModelNotReadyException": (429, "rate_limit_error"),
    "ModelErrorException": (424, "api_error"),
    "ModelStreamErrorException": (424, "api_error"),
    "InternalServerException": (500, "api_error"),
    "InternalFailure": (500, "api_error"),
    "ServiceUnavailableException": (503, "api_error"),
    "ServiceUnavailable": (503, "api_error"),
}

#: client body fields that are Converse's own and pass through as given
PASSTHROUGH = (
    "guardrailConfig",
    "additionalModelResponseFieldPaths",
    "performanceConfig",
    "requestMetadata",
    "promptVariables",
)

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_IMAGE_EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "gif": "gif", "webp": "webp"}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}
_DATA_URI = re.compile(
    r"data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)", re.S
)
# RFC 3986 pchar minus unreserved: what a path segment may hold literally
_SEGMENT_SAFE = ":@!$&'()*,;="
_NATIVE_PATH = re.compile(
    r"(?P<head>.*/model/)(?P<model>[^/]+)(?P<op>/(?:converse|converse-stream|invoke|"
    r"invoke-with-response-stream))/?$"
)
_STREAM_OPS = ("/converse-stream", "/invoke-with-response-stream")


# ---------------------------------------------------------------------- helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(message: str, param: str | None = "messages") -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _finish(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def region_of(options: ModelOptions) -> str | None:
    """The AWS region of a route: its option, else the environment."""
    region = options.bedrock.aws_region if options.bedrock else None
    if region:
        return region
    for name in REGION_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def encode_model_id(model: str) -> str:
    """A model id (or ARN) as one URL path segment (see the module docstring)."""
    return quote(model, safe=_SEGMENT_SAFE)


def is_anthropic(model: str | None) -> bool:
    low = (model or "").lower()
    return "anthropic" in low or "claude" in low


def _botocore() -> Any:
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
    except ImportError:
        raise ProviderError(
            500,
            "provider bedrock needs botocore: pip install 'llmitm[bedrock]'",
            "api_error",
            "gateway_credentials",
        ) from None
    return SigV4Auth, AWSRequest, Credentials


# ---------------------------------------------------------------------- usage


def usage_from_bedrock(u: Any) -> Usage | None:
    """Bedrock's `usage` (TokenUsage) as a normalized Usage (see the module docstring),
    or None when it reports no token count."""
    if not isinstance(u, dict):
        return None
    if not any(_is_int(u.get(k)) for k in ("inputTokens", "outputTokens", "totalTokens")):
        # an OpenAI-shaped usage object (Kong's Bedrock test fixtures use one)
        if any(_is_int(u.get(k)) for k in ("prompt_tokens", "completion_tokens")):
            return Usage(
                prompt_tokens=as_int(u.get("prompt_tokens")),
                completion_tokens=as_int(u.get("completion_tokens")),
            )
        return None
    fresh = as_int(u.get("inputTokens"))
    output = as_int(u.get("outputTokens"))
    read = as_int(u.get("cacheReadInputTokens"))
    write = as_int(u.get("cacheWriteInputTokens"))
    prompt = fresh + read + write
    total = u.get("totalTokens")
    if (read or write) and _is_int(total) and total == fresh + output and fresh >= read + write:
        prompt = fresh  # this model's inputTokens already counts the cached input
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def usage_from_counts(fresh: Any, output: Any, read: Any = None, write: Any = None) -> Usage | None:
    """Usage from InvokeModel's token counts (headers or invocation metrics), which
    count the input like Converse does (cache reads and writes apart)."""

    def number(v: Any) -> int | None:
        if _is_int(v):
            return v
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        return None

    counts = [number(v) for v in (fresh, output, read, write)]
    if counts[0] is None and counts[1] is None:
        return None
    fresh_n, output_n, read_n, write_n = (c or 0 for c in counts)
    return Usage(
        prompt_tokens=fresh_n + read_n + write_n,
        completion_tokens=output_n,
        cache_read_tokens=read_n,
        cache_write_tokens=write_n,
    )


# ---------------------------------------------------------------------- errors


def _short_type(value: Any) -> str | None:
    """`ValidationException:http://internal.amazon.com/coral/...` or
    `com.amazon.coral.validate#ValidationException` -> `ValidationException`."""
    if not isinstance(value, str) or not value.strip():
        return None
    short = value.strip().split(":", 1)[0]
    short = short.rsplit("#", 1)[-1]
    return short[:1].upper() + short[1:] if short else None


def error_for(
    kind: str | None, message: str, status: int | None = None, provider: str = SERVICE
) -> ProviderError:
    """A ProviderError for an AWS error type (`status` None: AWS's status for the type)."""
    known = ERRORS.get(kind or "")
    if status is None:
        status = known[0] if known else 502
    err_type = known[1] if known else error_type_for(status)
    return ProviderError(status, message or f"{provider}: {kind or 'error'}", err_type, kind)


# ---------------------------------------------------------------------- requests


def _cache_point(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"cachePoint": {"type": "default"}}] if part.get("cache_control") else []


def _data_uri(url: str, where: str, what: str) -> tuple[str, str]:
    m = _DATA_URI.fullmatch(url)
    if not m or ";base64" not in (m["params"] or "") or not m["media"]:
        raise _bad(f"'{where}' must be a base64 data URI (data:{what};base64,...)")
    data = m["data"].strip()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"'{where}' does not hold valid base64 data") from None
    return m["media"].lower(), data


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    at = f"{where}.image_url"
    if not isinstance(url, str) or not url:
        raise _bad(f"'{at}' needs a 'url'")
    if url.startswith("data:"):
        media, data = _data_uri(url, at, "image/png")
        fmt = _IMAGE_FORMATS.get(media)
        if fmt is None:
            raise _bad(f"'{at}': Bedrock takes png, jpeg, gif or webp images, not {media}")
        return {"image": {"format": fmt, "source": {"bytes": data}}}
    if url.startswith("s3://"):
        ext = url.rsplit(".", 1)[-1].lower() if "." in url.rsplit("/", 1)[-1] else ""
        fmt = _IMAGE_EXTENSIONS.get(ext)
        if fmt is None:
            raise _bad(f"'{at}': an s3:// image needs a .png, .jpg, .gif or .webp name")
        return {"image": {"format": fmt, "source": {"s3Location": {"uri": url}}}}
    if url.startswith(("http://", "https://")):
        raise _bad(
            f"'{at}': Bedrock needs inline images: send the image as a base64 data URI "
            "(data:image/png;base64,...) or an s3:// URL, not an http(s) URL"
        )
    raise _bad(f"'{at}' must be a base64 data URI or an s3:// URL")


def _document_name(name: Any, index: int) -> str:
    # Bedrock: alphanumerics, single spaces, hyphens, parentheses and square brackets
    base = name.rsplit(".", 1)[0] if isinstance(name, str) and name else ""
    base = re.sub(r"[^A-Za-z0-9\s\-()\[\]]", "-", base)
    base = re.sub(r"\s+", " ", base).strip()
    return base or f"document-{index}"


def _document(part: dict[str, Any], where: str, index: int) -> dict[str, Any]:
    ref = part.get("file") if isinstance(part.get("file"), dict) else {}
    data = ref.get("file_data")
    at = f"{where}.file"
    if not isinstance(data, str):
        raise _bad(
            f"'{at}' needs 'file_data' as a base64 data URI (file ids are OpenAI's, not Bedrock's)"
        )
    media, raw = _data_uri(data, at, "application/pdf")
    fmt = _DOCUMENT_FORMATS.get(media)
    if fmt is None:
        known = ", ".join(sorted(set(_DOCUMENT_FORMATS.values())))
        raise _bad(f"'{at}': Bedrock takes documents of type {known}, not {media}")
    name = _document_name(ref.get("filename"), index)
    return {"document": {"format": fmt, "name": name, "source": {"bytes": raw}}}


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Text blocks of a system message's content (a string or text parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _bad(f"'{where}' may only hold text parts, not {kind!r}")
        if str(part.get("text") or "").strip():
            blocks.append({"text": str(part["text"])})
            blocks += _cache_point(part)
    return blocks


class _Converter:
    """OpenAI `messages` -> Converse `system` and `messages`."""

    def __init__(self) -> None:
        self.system: list[dict[str, Any]] = []
        self.turns: list[dict[str, Any]] = []
        # the names of the tools the conversation's assistant turns call
        self.tools_used: list[str] = []
        self._documents = 0

    def convert(self, messages: list[Any]) -> None:
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _bad(f"'{where}' must be an object")
            role = m.get("role")
            if role in ("system", "developer"):
                self.system += _text_blocks(m.get("content"), where)
            elif role == "user":
                self._append("user", self._user(m.get("content"), where))
            elif role == "assistant":
                self._append("assistant", self._assistant(m, where))
            elif role == "tool":
                self._append("user", [self._tool_result(m, where)])
            else:
                raise _bad(f"'{where}': role {role!r} is not supported by Bedrock")

    def _append(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return  # Bedrock rejects empty turns; dropping one lets its neighbours merge
        if self.turns and self.turns[-1]["role"] == role:
            self.turns[-1]["content"] += blocks
        else:
            self.turns.append({"role": role, "content": blocks})

    def _parts(self, content: Any, where: str) -> list[dict[str, Any]]:
        if content is None:
            return []
        if isinstance(content, str):
            return [{"text": content}] if content.strip() else []
        if not isinstance(content, list):
            raise _bad(f"'{where}.content' must be a string or an array of parts")
        blocks: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            if isinstance(part, str):
                part = {"type": "text", "text": part}
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(part, dict):
                raise _bad(f"'{at}' must be a content part object")
            if kind in ("text", "input_text"):
                if str(part.get("text") or "").strip():
                    blocks.append({"text": str(part["text"])})
                    blocks += _cache_point(part)
            elif kind == "image_url":
                blocks.append(_image(part, at))
                blocks += _cache_point(part)
            elif kind == "file":
                self._documents += 1
                blocks.append(_document(part, at, self._documents))
                blocks += _cache_point(part)
            else:
                raise _bad(f"'{at}': content part type {kind!r} is not supported by Bedrock")
        return blocks

    def _user(self, content: Any, where: str) -> list[dict[str, Any]]:
        return self._parts(content, where)

    def _assistant(self, m: dict[str, Any], where: str) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        thinking = m.get("thinking_blocks")
        if thinking is not None and not isinstance(thinking, list):
            raise _bad(f"'{where}.thinking_blocks' must be an array")
        for j, block in enumerate(thinking or ()):
            at = f"{where}.thinking_blocks[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "thinking":
                text = block.get("thinking")
                reasoning: dict[str, Any] = {"text": text if isinstance(text, str) else ""}
                if isinstance(block.get("signature"), str) and block["signature"]:
                    reasoning["signature"] = block["signature"]
                blocks.append({"reasoningContent": {"reasoningText": reasoning}})
            elif kind == "redacted_thinking":
                if not isinstance(block.get("data"), str):
                    raise _bad(f"'{at}' needs its 'data'")
                blocks.append({"reasoningContent": {"redactedContent": block["data"]}})
            else:
                raise _bad(f"'{at}' must be a thinking or redacted_thinking block")
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "refusal":
                    if part.get("refusal"):
                        blocks.append({"text": str(part["refusal"])})
                    continue
                blocks += self._parts([part], f"{where}.content[{j}]")
        else:
            blocks += self._parts(content, where)
        tool_calls = m.get("tool_calls") or []
        if not isinstance(tool_calls, list):
            raise _bad(f"'{where}.tool_calls' must be an array")
        for j, call in enumerate(tool_calls):
            blocks.append(self._tool_use(call, f"{where}.tool_calls[{j}]"))
        return blocks

    def _tool_use(self, call: Any, at: str) -> dict[str, Any]:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"'{at}' needs a 'function' with a 'name'")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise _bad(f"'{at}' needs an 'id'")
        args = fn.get("arguments")
        parsed: Any
        if args is None or (isinstance(args, str) and not args.strip()):
            parsed = {}
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
                    "must be a JSON object, Bedrock needs the tool input as an object"
                )
        self.tools_used.append(fn["name"])
        return {"toolUse": {"toolUseId": call["id"], "name": fn["name"], "input": parsed}}

    def _tool_result(self, m: dict[str, Any], where: str) -> dict[str, Any]:
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(f"'{where}' (role tool) needs a 'tool_call_id'")
        content = m.get("content")
        result: list[dict[str, Any]]
        if isinstance(content, str) or content is None:
            text = content or ""
            parsed: Any = None
            if text.lstrip().startswith("{"):
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = None
            result = [{"json": parsed}] if isinstance(parsed, dict) else [{"text": text}]
        else:
            result = [b for b in self._parts(content, where) if "cachePoint" not in b]
            if not result:
                result = [{"text": ""}]
        block: dict[str, Any] = {"toolUseId": call_id, "content": result}
        if m.get("status") in ("success", "error"):
            block["status"] = m["status"]
        return {"toolResult": block}


def _tool_config(body: dict[str, Any], used: list[str]) -> dict[str, Any] | None:
    """`toolConfig` for the request's tools; `used` names the tools the conversation
    already called (Bedrock needs a toolConfig whenever tool blocks are in it)."""
    tools = body.get("tools")
    if tools is None or tools == []:
        if not used:
            return None
        # The client dropped its tools after a tool loop: declare the ones the history
        # uses, with an open schema, so that Bedrock accepts the conversation.
        return {
            "tools": [
                {
                    "toolSpec": {
                        "name": name,
                        "description": f"{name} (declared by the gateway for the history)",
                        "inputSchema": {"json": {"type": "object"}},
                    }
                }
                for name in dict.fromkeys(used)
            ]
        }
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    specs: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _bad(f"'tools[{i}]': Bedrock only takes function tools", "tools")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"'tools[{i}]' needs a 'function' with a 'name'", "tools")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        elif not isinstance(params, dict):
            raise _bad(f"'tools[{i}].function.parameters' must be a JSON schema object", "tools")
        spec: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str) and fn["description"]:
            spec["description"] = fn["description"]
        spec["inputSchema"] = {"json": params}
        specs.append({"toolSpec": spec})
        if tool.get("cache_control"):
            specs.append({"cachePoint": {"type": "default"}})
    if not specs:
        return None
    choice = body.get("tool_choice")
    config: dict[str, Any] = {"tools": specs}
    if choice is None or choice == "auto":
        if choice == "auto":
            config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "none":
        return config if used else None
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    else:
        raise _bad(
            "'tool_choice' must be 'auto', 'required', 'none' or a named function", "tool_choice"
        )
    return config


def _thinking(body: dict[str, Any], model: str | None) -> dict[str, Any] | None:
    """Claude's thinking (as the Anthropic adapter sends it), for Anthropic models only;
    an explicit `thinking` object is passed whatever the model."""
    thinking = thinking_config(body)
    if thinking is not None and "thinking" not in body and not is_anthropic(model):
        return None
    return thinking


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return None
    found = [s for s in stop if isinstance(s, str) and s]
    return found or None


def converse_body(spec: CallSpec) -> dict[str, Any]:
    """The Converse (and ConverseStream) body for an OpenAI chat request."""
    body = spec.body
    model = spec.model or (body.get("model") if isinstance(body.get("model"), str) else None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array")
    n = body.get("n")
    if _is_int(n) and n > 1:
        raise _bad("Bedrock answers with one choice: 'n' must be 1", "n")
    conv = _Converter()
    conv.convert(messages)
    if not conv.turns:
        raise _bad("the conversation has no user or assistant content for Bedrock")
    out: dict[str, Any] = {"messages": conv.turns}
    if conv.system:
        out["system"] = conv.system

    thinking = _thinking(body, model)
    thinking_on = bool(thinking) and thinking.get("type") != "disabled"
    inference: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if _is_int(value) and value > 0:
            inference["maxTokens"] = value
            break
    budget = as_int((thinking or {}).get("budget_tokens")) if thinking_on else 0
    if budget and inference.get("maxTokens", 0) <= budget:
        inference["maxTokens"] = budget + DEFAULT_MAX_TOKENS
    temperature, top_p, top_k = body.get("temperature"), body.get("top_p"), body.get("top_k")
    if thinking_on and is_anthropic(model):  # Anthropic rejects sampling changes then
        temperature = temperature if temperature == 1 else None
        top_p = top_p if isinstance(top_p, (int, float)) and top_p >= 0.95 else None
        top_k = None
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        inference["temperature"] = temperature
    if isinstance(top_p, (int, float)) and not isinstance(top_p, bool):
        inference["topP"] = top_p
    stop = _stop(body)
    if stop:
        inference["stopSequences"] = stop
    if inference:
        out["inferenceConfig"] = inference

    tool_config = _tool_config(body, conv.tools_used)
    if tool_config:
        out["toolConfig"] = tool_config

    extra = body.get("additionalModelRequestFields")
    if extra is not None and not isinstance(extra, dict):
        raise _bad(
            "'additionalModelRequestFields' must be an object", "additionalModelRequestFields"
        )
    fields: dict[str, Any] = dict(extra or {})
    if _is_int(top_k):
        if "nova" in (model or "").lower():
            nova = fields.get("inferenceConfig")
            fields["inferenceConfig"] = {**(nova if isinstance(nova, dict) else {}), "topK": top_k}
        else:
            fields.setdefault("top_k", top_k)
    if thinking:
        fields.setdefault("thinking", thinking)
    if fields:
        out["additionalModelRequestFields"] = fields
    for key in PASSTHROUGH:
        if body.get(key) is not None:
            out[key] = body[key]
    return out


# ---------------------------------------------------------------------- answers


def message_to_openai(message: Any) -> dict[str, Any]:
    """A Converse `output.message` as an OpenAI assistant message."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    content = message.get("content") if isinstance(message, dict) else None
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            tool_calls.append(
                {
                    "id": use.get("toolUseId") or "call_" + uuid.uuid4().hex[:24],
                    "type": "function",
                    "function": {
                        "name": use.get("name") or "",
                        "arguments": compact_json(use.get("input", {})),
                    },
                }
            )
        elif isinstance(block.get("reasoningContent"), dict):
            rc = block["reasoningContent"]
            rt = rc.get("reasoningText")
            if isinstance(rt, dict):
                text = rt.get("text") if isinstance(rt.get("text"), str) else ""
                reasoning.append(text)
                if rt.get("signature"):
                    thinking_blocks.append(
                        {"type": "thinking", "thinking": text, "signature": rt["signature"]}
                    )
            elif isinstance(rc.get("redactedContent"), str):
                thinking_blocks.append({"type": "redacted_thinking", "data": rc["redactedContent"]})
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        out["thinking_blocks"] = thinking_blocks
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out


# ---------------------------------------------------------------------- embeddings


def embedding_family(model: str | None) -> str | None:
    """The embedding model family spoken to through InvokeModel: "titan", "cohere" or None."""
    low = (model or "").lower()
    if "titan-embed" in low:
        return "titan"
    if "cohere.embed" in low:
        return "cohere"
    return None


def embeddings_body(spec: CallSpec, model: str) -> dict[str, Any]:
    """The InvokeModel body of an embedding model for an OpenAI embeddings request."""
    family = embedding_family(model)
    if family is None:
        raise _bad(
            f"bedrock embeddings need an amazon.titan-embed-* or cohere.embed-* model, not {model!r}",
            "model",
        )
    raw = spec.body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise _bad("Bedrock embeds text: 'input' must be a string or an array of strings", "input")
    dimensions = spec.body.get("dimensions")
    if family == "titan":
        if len(inputs) != 1:
            raise _bad(
                "amazon.titan-embed models embed one text per request: send one 'input'", "input"
            )
        out: dict[str, Any] = {"inputText": inputs[0]}
        if _is_int(dimensions):
            out["dimensions"] = dimensions
        return out
    out = {"texts": inputs, "input_type": spec.body.get("input_type") or "search_document"}
    if _is_int(dimensions):
        out["output_dimension"] = dimensions
    return out


def embeddings_to_openai(
    spec: CallSpec, data: dict[str, Any], headers: dict[str, str]
) -> tuple[dict[str, Any], Usage | None]:
    """A Titan or Cohere InvokeModel answer as OpenAI's embeddings list."""
    vectors: Any
    if isinstance(data.get("embedding"), list):  # Titan
        vectors = [data["embedding"]]
    else:  # Cohere: a list of vectors, or {"float": [...]} with embedding_types
        vectors = data.get("embeddings")
        if isinstance(vectors, dict):
            vectors = vectors.get("float")
    if (
        not isinstance(vectors, list)
        or not vectors
        or not all(
            isinstance(v, list)
            and v
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in vectors
        )
    ):
        raise ProviderError(502, "bedrock: the embedding answer has no 'embedding' or 'embeddings'")
    as_base64 = spec.body.get("encoding_format") == "base64"
    items = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if as_base64:  # what OpenAI sends: little-endian float32s
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        items.append({"object": "embedding", "index": i, "embedding": value})
    low = {k.lower(): v for k, v in headers.items()}
    usage = usage_from_counts(
        data.get("inputTextTokenCount", low.get("x-amzn-bedrock-input-token-count")), None
    )
    out: dict[str, Any] = {"object": "list", "data": items, "model": spec.model}
    if usage is not None:
        out["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    return out, usage


# ---------------------------------------------------------------------- stream


class BedrockStream:
    """ConverseStream's event-stream -> OpenAI `chat.completion.chunk` SSE.

    Also the observer of native ConverseStream passthrough (its output is ignored
    there): usage, errors and the assembled answer come from the same decoding.
    """

    def __init__(self, spec: CallSpec, model: str | None = None, strict: bool = True) -> None:
        self._dec = eventstream.EventStreamDecoder()
        self._spec = spec
        # an InvokeModel stream of Claude's Messages events or of an OpenAI-shaped
        # model: read by that API's own translator (`_vendor_stream`)
        self._vendor: AnthropicStream | OpenAIStream | None = None
        # a stream without messageStop and metadata is an error (ConverseStream); a
        # preserved InvokeModelWithResponseStream is only observed
        self._strict = strict
        self._wants_usage = spec.client_wants_usage
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self.id = new_completion_id()
        self.created = int(time.time())
        self.model = model or spec.model
        self._closed = False  # an error ended the stream: later bytes are ignored
        self._role_sent = False
        self._stopped = False  # messageStop seen
        self._metadata = False  # metadata seen
        self.finish_reason: str | None = None
        self.latency_ms: int | None = None
        # content blocks by contentBlockIndex, in order of appearance
        self._blocks: dict[int, dict[str, Any]] = {}
        self._tool_count = 0
        self._thinking_sent = 0  # thinking blocks streamed so far

    # -- protocol

    def feed(self, data: bytes) -> list[bytes]:
        if self._closed or not data:
            return []
        out: list[bytes] = []
        try:
            messages = self._dec.feed(data)
        except eventstream.EventStreamError as e:
            for message in e.messages:
                self._message(message, out)
                if self._closed:
                    return out
            self._fail(ProviderError(502, f"bedrock: corrupt event stream: {e}"), out)
            return out
        for message in messages:
            self._message(message, out)
            if self._closed:
                break
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        if self._closed:
            return []
        out: list[bytes] = []
        if error is None and self._strict and not (self._stopped and self._metadata):
            missing = "messageStop" if not self._stopped else "metadata"
            cut = (
                f" ({self._dec.pending} bytes of an unfinished message)"
                if self._dec.pending
                else ""
            )
            error = ProviderError(
                502, f"bedrock: the stream ended before its {missing} event{cut}: truncated"
            )
        if error is not None:
            self._fail(error, out)
            return out
        self._closed = True
        out.append(sse.DONE)
        return out

    def assembled(self) -> dict[str, Any]:
        if self._vendor is not None:  # the model's answer, with Bedrock's usage if it said
            out = self._vendor.assembled()
            if self.usage is not None:
                out["usage"] = self.usage.to_openai()
            return out
        texts: list[str] = []
        reasoning: list[str] = []
        thinking_blocks: list[dict[str, Any]] = []
        calls: list[tuple[int, dict[str, Any]]] = []
        for block in self._blocks.values():
            texts += block["text"]
            reasoning += block["reasoning"]
            thinking = self._thinking_block(block)
            if thinking:
                thinking_blocks.append(thinking)
            if block.get("tool") is not None:
                calls.append(
                    (
                        block["tool"],
                        {
                            "id": block["id"],
                            "type": "function",
                            "function": {
                                "name": block["name"],
                                "arguments": "".join(block["args"]),
                            },
                        },
                    )
                )
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if thinking_blocks:
            message["thinking_blocks"] = thinking_blocks
        if calls:
            message["tool_calls"] = [call for _, call in sorted(calls, key=lambda c: c[0])]
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

    # -- decoding

    def _message(self, message: eventstream.Message, out: list[bytes]) -> None:
        kind = message.message_type
        try:
            payload = message.json()
        except ValueError:
            payload = None
        if kind == "exception":
            text = None
            if isinstance(payload, dict):
                text = payload.get("message") or payload.get("Message")
            exc = _short_type(message.exception_type) or "Exception"
            self._fail(error_for(exc, str(text or f"bedrock: {exc} in the stream")), out)
            return
        if kind == "error":  # AWS's generic error frame: the code and message are headers
            code = message.headers.get(":error-code")
            text = message.headers.get(":error-message")
            self._fail(
                error_for(_short_type(code), str(text or code or "bedrock stream error")), out
            )
            return
        if kind not in (None, "event"):
            return
        if not isinstance(payload, dict):
            self._fail(
                ProviderError(
                    502, f"bedrock: the {message.event_type or 'stream'} event is not a JSON object"
                ),
                out,
            )
            return
        handler = _HANDLERS.get(message.event_type or "")
        if handler is not None:
            handler(self, payload, out)

    def _block(self, index: Any) -> dict[str, Any]:
        key = as_int(index)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = {
                "text": [],
                "reasoning": [],
                "signature": "",
                "redacted": [],
                "tool": None,
                "args": [],
            }
        return block

    def _on_message_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        self._role(out)

    def _on_block_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        start = payload.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(use, dict):
            return
        block = self._block(payload.get("contentBlockIndex"))
        self._start_tool(block, use.get("toolUseId"), use.get("name"), out)

    def _start_tool(self, block: dict[str, Any], tool_id: Any, name: Any, out: list[bytes]) -> None:
        block["tool"] = self._tool_count
        self._tool_count += 1
        block["id"] = (
            tool_id if isinstance(tool_id, str) and tool_id else "call_" + uuid.uuid4().hex[:24]
        )
        block["name"] = name if isinstance(name, str) else ""
        self._delta(
            {
                "tool_calls": [
                    {
                        "index": block["tool"],
                        "id": block["id"],
                        "type": "function",
                        "function": {"name": block["name"], "arguments": ""},
                    }
                ]
            },
            out,
        )

    def _on_block_delta(self, payload: dict[str, Any], out: list[bytes]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        block = self._block(payload.get("contentBlockIndex"))
        text = delta.get("text")
        if isinstance(text, str):
            if text:
                block["text"].append(text)
                self._delta({"content": text}, out)
            return
        use = delta.get("toolUse")
        if isinstance(use, dict):
            if block["tool"] is None:  # no contentBlockStart for it: start it now
                self._start_tool(block, None, "", out)
            fragment = use.get("input")
            if isinstance(fragment, str) and fragment:
                block["args"].append(fragment)
                self._delta(
                    {"tool_calls": [{"index": block["tool"], "function": {"arguments": fragment}}]},
                    out,
                )
            return
        rc = delta.get("reasoningContent")
        if isinstance(rc, dict):
            if isinstance(rc.get("text"), str) and rc["text"]:
                block["reasoning"].append(rc["text"])
                self._delta({"reasoning_content": rc["text"]}, out)
            if isinstance(rc.get("signature"), str):
                block["signature"] += rc["signature"]
            if isinstance(rc.get("redactedContent"), str):
                block["redacted"].append(rc["redactedContent"])
                self.started = True

    def _on_block_stop(self, payload: dict[str, Any], out: list[bytes]) -> None:
        block = self._blocks.get(as_int(payload.get("contentBlockIndex")))
        if block is None or block.get("closed"):
            return
        block["closed"] = True
        if block["tool"] is not None and not block["args"]:
            # a call without input: "{}" as the non-streamed answer has, so that the
            # client's json.loads of the arguments works
            block["args"].append("{}")
            self._delta(
                {"tool_calls": [{"index": block["tool"], "function": {"arguments": "{}"}}]}, out
            )
        thinking = self._thinking_block(block)
        if thinking:
            # numbered like tool calls: the openai SDK's stream helper merges by `index`
            self._delta({"thinking_blocks": [{"index": self._thinking_sent, **thinking}]}, out)
            self._thinking_sent += 1

    @staticmethod
    def _thinking_block(block: dict[str, Any]) -> dict[str, Any] | None:
        if block["redacted"]:
            return {"type": "redacted_thinking", "data": "".join(block["redacted"])}
        if block["signature"]:
            return {
                "type": "thinking",
                "thinking": "".join(block["reasoning"]),
                "signature": block["signature"],
            }
        return None

    def _on_message_stop(self, payload: dict[str, Any], out: list[bytes]) -> None:
        self._role(out)
        self._stopped = True
        self.finish_reason = _finish(payload.get("stopReason"))
        out.append(self._chunk([{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]))

    def _on_metadata(self, payload: dict[str, Any], out: list[bytes]) -> None:
        self._metadata = True
        usage = usage_from_bedrock(payload.get("usage"))
        if usage is not None:
            self.usage = usage
        metrics = payload.get("metrics")
        if isinstance(metrics, dict) and _is_int(metrics.get("latencyMs")):
            self.latency_ms = metrics["latencyMs"]
        if self._wants_usage and self.usage is not None:
            out.append(self._chunk([], usage=self.usage.to_openai()))

    def _on_invoke_chunk(self, payload: dict[str, Any], out: list[bytes]) -> None:
        """InvokeModelWithResponseStream (preserve routes): the model's own JSON, base64
        in `bytes`; its last chunk carries Bedrock's invocation metrics (the usage)."""
        try:
            inner = json.loads(base64.b64decode(payload.get("bytes") or ""))
        except (ValueError, TypeError):
            return
        if not isinstance(inner, dict):
            return
        if not self.started and _invoke_output(inner):
            self.started = True  # the first token: time to first token counts to here
        vendor = self._vendor_stream(inner)
        if vendor is not None:  # its OpenAI chunks are only observed here
            kind = inner.get("type")
            vendor.feed(sse.encode(inner, kind if isinstance(kind, str) else None))
        else:
            text, stop = invoke_text(inner)
            if text:
                self._block(0)["text"].append(text)
            if stop is not None:
                self.finish_reason = _invoke_finish(stop)
        metrics = inner.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            usage = usage_from_counts(
                metrics.get("inputTokenCount"),
                metrics.get("outputTokenCount"),
                metrics.get("cacheReadInputTokenCount"),
                metrics.get("cacheWriteInputTokenCount"),
            )
            if usage is not None:
                self.usage = usage
            self._stopped = self._metadata = True

    def _vendor_stream(self, inner: dict[str, Any]) -> AnthropicStream | OpenAIStream | None:
        """The translator of an InvokeModel stream whose model speaks a known API
        (decided by its first chunk): Anthropic's Messages events, OpenAI's chunks."""
        if self._vendor is None and not self._blocks:
            if isinstance(inner.get("type"), str):
                self._vendor = AnthropicStream(self._spec)
            elif isinstance(inner.get("choices"), list):
                self._vendor = OpenAIStream(self._spec)
        return self._vendor

    # -- output

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return sse.encode(obj)

    def _role(self, out: list[bytes]) -> None:
        if not self._role_sent:
            self._role_sent = True
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

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        self._role(out)
        self.started = True
        out.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def _fail(self, err: ProviderError, out: list[bytes]) -> None:
        self.error = err
        self._closed = True
        out.append(sse.encode(err.to_openai()))
        out.append(sse.DONE)


_HANDLERS = {
    "messageStart": BedrockStream._on_message_start,
    "contentBlockStart": BedrockStream._on_block_start,
    "contentBlockDelta": BedrockStream._on_block_delta,
    "contentBlockStop": BedrockStream._on_block_stop,
    "messageStop": BedrockStream._on_message_stop,
    "metadata": BedrockStream._on_metadata,
    "chunk": BedrockStream._on_invoke_chunk,
}


#: where the model families' InvokeModel stream chunks carry generated output:
#: Titan, Llama, Anthropic's legacy completions, Cohere, Mistral, AI21/OpenAI-shaped
_INVOKE_OUTPUT = ("outputText", "generation", "completion", "text", "outputs", "choices")


#: where the model families' InvokeModel answers (and stream chunks) put their text and
#: stop reason: Titan, Llama, Anthropic's legacy completions, Cohere Command, Mistral,
#: AI21 (Claude's Messages and OpenAI-shaped models are read by their own translators)
_INVOKE_TEXT = ("outputText", "generation", "completion", "text")
_INVOKE_LISTS = ("results", "outputs", "generations", "completions")
_INVOKE_STOP = ("completionReason", "stop_reason", "finish_reason", "stopReason")


def invoke_text(obj: dict[str, Any]) -> tuple[str, str | None]:
    """Text and stop reason (as the model says it) of one InvokeModel answer or stream
    chunk of a model family without a translator of its own."""
    texts: list[str] = []
    stop = next((obj[k] for k in _INVOKE_STOP if isinstance(obj.get(k), str)), None)
    for key in _INVOKE_TEXT:
        if isinstance(obj.get(key), str):
            texts.append(obj[key])
    for key in _INVOKE_LISTS:
        for item in obj.get(key) or ():
            if isinstance(item, dict):
                data = item.get("data") if isinstance(item.get("data"), dict) else item
                text, item_stop = invoke_text(data)
                texts.append(text)
                stop = stop or item_stop
    return "".join(texts), stop


#: finish reasons of the InvokeModel families, lower-cased -> OpenAI's
_INVOKE_FINISH = {
    **FINISH_REASONS,
    "stop": "stop",
    "finish": "stop",  # Titan
    "complete": "stop",  # Cohere
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}


def _invoke_finish(reason: Any) -> str | None:
    if not isinstance(reason, str) or not reason:
        return None
    return _INVOKE_FINISH.get(reason.lower(), reason.lower())


def _invoke_output(inner: dict[str, Any]) -> bool:
    """Whether an InvokeModelWithResponseStream chunk carries output (Anthropic's
    messages stream: a content block delta; the others: a non-empty output field)."""
    if inner.get("type") == "content_block_delta":
        return True
    return any(inner.get(key) for key in _INVOKE_OUTPUT)


# ---------------------------------------------------------------------- provider


class Bedrock(Provider):
    name = "bedrock"
    default_base_url = "https://bedrock-runtime.{region}.amazonaws.com"
    route_types = frozenset({RouteType.CHAT, RouteType.EMBEDDINGS, RouteType.PRESERVE})
    auth_headers = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")
    warm_imports = ("botocore.auth", "botocore.awsrequest", "botocore.session")
    native_format = "bedrock"
    input_includes_cache = False  # input_tokens excludes cache reads and writes

    # -- configuration

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        errors = super().config_errors(model, route_type, auth)
        if importlib.util.find_spec("botocore") is None:
            errors.append("provider bedrock needs botocore: pip install 'llmitm[bedrock]'")
        options = getattr(model, "options", None)
        if isinstance(options, ModelOptions):
            configured = options.bedrock.aws_region if options.bedrock else None
            templated = isinstance(configured, str) and "$(" in configured
            if not templated and region_of(options) is None:
                errors.append(
                    "provider bedrock needs an AWS region: set model.options.bedrock.aws_region "
                    "(or AWS_REGION in the gateway's environment)"
                )
        name = getattr(model, "name", None)
        if (
            route_type is RouteType.EMBEDDINGS
            and isinstance(name, str)
            and "$(" not in name
            and embedding_family(name) is None
        ):
            errors.append(
                f"bedrock embeddings need an amazon.titan-embed-* or cohere.embed-* model, "
                f"not {name!r}"
            )
        return errors

    def region(self, options: ModelOptions) -> str:
        region = region_of(options)
        if not region:
            raise ProviderError(
                500,
                "bedrock: no AWS region: set model.options.bedrock.aws_region "
                "(or AWS_REGION in the gateway's environment)",
                "api_error",
                "gateway_config",
            )
        return region

    def base_url(self, options: ModelOptions) -> str:
        return self.default_base_url.format(region=self.region(options))

    # -- URLs

    def url_for(self, spec: CallSpec, model: str, stream: bool) -> str:
        op = "converse-stream" if stream else "converse"
        path = f"/model/{encode_model_id(model)}/{op}"
        base = self.base_url(spec.options)  # checks the region even with upstream_url
        upstream = spec.options.upstream_url
        if upstream:
            parts = urlsplit(upstream)
            if (
                parts.path not in ("", "/")
                and stream
                and parts.path.rstrip("/").endswith("/converse")
            ):
                new_path = parts.path.rstrip("/") + "-stream"
                return urlunsplit(parts._replace(path=new_path))
        return join_url(upstream, base, path)

    # -- OpenAI-format calls

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        if spec.route_type is RouteType.PRESERVE:
            url = preserve_url(spec, self.base_url(spec.options))
            stream = spec.stream or spec.path.rstrip("/").endswith(_STREAM_OPS)
            headers = {"content-type": "application/json"} if spec.raw_body else {}
            return UpstreamRequest(spec.method, url, headers, spec.raw_body, stream)
        model = spec.model or spec.body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("bedrock needs a model id", "model")
        if spec.route_type is RouteType.EMBEDDINGS:
            path = f"/model/{encode_model_id(model)}/invoke"
            url = join_url(spec.options.upstream_url, self.base_url(spec.options), path)
            headers = {"content-type": "application/json", "accept": "application/json"}
            body = json_body(embeddings_body(spec, model))
            return UpstreamRequest("POST", url, headers, body, False)
        if spec.route_type is not RouteType.CHAT:
            raise ProviderError(400, f"bedrock cannot serve route_type {spec.route_type}")
        body = converse_body(spec)
        headers = {
            "content-type": "application/json",
            "accept": EVENTSTREAM if spec.stream else "application/json",
        }
        return UpstreamRequest(
            "POST",
            self.url_for(spec, model, spec.stream),
            headers,
            json_body(body),
            spec.stream,
        )

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if spec.route_type is RouteType.PRESERVE:
            data = data if isinstance(data, dict) else {}
            low = {k.lower(): v for k, v in headers.items()}
            usage = self.usage_from(data) or usage_from_counts(
                low.get("x-amzn-bedrock-input-token-count"),
                low.get("x-amzn-bedrock-output-token-count"),
                low.get("x-amzn-bedrock-cache-read-input-token-count"),
                low.get("x-amzn-bedrock-cache-write-input-token-count"),
            )
            return Reply(body, data, usage, spec.model)
        if not isinstance(data, dict):
            raise ProviderError(502, "bedrock: the upstream answer is not a JSON object")
        if spec.route_type is RouteType.EMBEDDINGS:
            out, usage = embeddings_to_openai(spec, data, headers)
            return Reply(json.dumps(out).encode(), out, usage, spec.model)
        output = data.get("output")
        message = output.get("message") if isinstance(output, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise ProviderError(502, "bedrock: the upstream answer has no 'output.message.content'")
        translated = message_to_openai(message)
        usage = self.usage_from(data)
        out: dict[str, Any] = {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": spec.model,
            "choices": [
                {
                    "index": 0,
                    "message": translated,
                    "finish_reason": _finish(data.get("stopReason")),
                    "logprobs": None,
                }
            ],
        }
        if usage is not None:
            out["usage"] = usage.to_openai()
        return Reply(json.dumps(out, ensure_ascii=False).encode(), out, usage, spec.model)

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        low = {k.lower(): v for k, v in headers.items()}
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        kind = _short_type(low.get("x-amzn-errortype"))
        if kind is None and isinstance(data, dict):
            kind = _short_type(data.get("__type") or data.get("code"))
        message = None
        if isinstance(data, dict):
            for key in ("message", "Message"):
                if isinstance(data.get(key), str) and data[key]:
                    message = data[key]
                    break
        if kind is None and message is None:
            return generic_error(self.name, status, headers, body)
        if message is None:
            message = generic_error(self.name, status, headers, body).message
        return error_for(kind, message, status)

    def stream_translator(self, spec: CallSpec) -> BedrockStream:
        strict = spec.route_type is not RouteType.PRESERVE or spec.path.rstrip("/").endswith(
            "/converse-stream"
        )
        return BedrockStream(spec, strict=strict)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return usage_from_bedrock(data.get("usage")) if isinstance(data, dict) else None

    # -- signing

    def credential_kind(self, auth: Any, options: ModelOptions) -> str | None:
        return "aws"

    def sign(self, up: UpstreamRequest, spec: CallSpec, credentials: Any) -> None:
        """SigV4-sign the final request. What is signed: the method, the URL's path and
        query, the host the request goes to, `content-type`, the body's SHA-256 (also
        sent as `x-amz-content-sha256`), `x-amz-date` and, with temporary credentials,
        `x-amz-security-token`. Other headers are left out of the signature so that
        hop-by-hop changes on the way cannot invalidate it. Stale AWS auth headers a
        client sent (native passthrough) are replaced."""
        if not isinstance(credentials, AWSCredentials):
            raise ProviderError(
                500,
                "bedrock: AWS credentials are needed to sign",
                "api_error",
                "gateway_credentials",
            )
        sigv4, aws_request, botocore_credentials = _botocore()
        region = self.region(spec.options)
        drop = set(self.auth_headers) | {"host", "date"}
        headers = {k.lower(): v for k, v in up.headers.items() if k.lower() not in drop}
        signed = {
            k: v
            for k, v in headers.items()
            if k == "content-type" or (k.startswith("x-amz-") and k != "x-amz-user-agent")
        }
        signed["x-amz-content-sha256"] = hashlib.sha256(up.body or b"").hexdigest()
        request = aws_request(method=up.method, url=up.url, headers=signed, data=up.body or b"")
        creds = botocore_credentials(
            credentials.access_key, credentials.secret_key, credentials.token or None
        )
        sigv4(creds, SERVICE, region).add_auth(request)
        for name, value in request.headers.items():
            headers[name.lower()] = value
        up.headers = headers

    # -- native passthrough (llm_format: bedrock)

    def native_model(self, spec: CallSpec) -> str | None:
        m = _NATIVE_PATH.match(spec.path.partition("?")[0])
        return unquote(m["model"]) if m else None

    def build_native_request(self, spec: CallSpec) -> UpstreamRequest:
        path = spec.path.partition("?")[0] or "/"
        m = _NATIVE_PATH.match(path)
        if m is None:
            raise _bad(
                "a native Bedrock request goes to /model/{modelId}/converse or "
                "/model/{modelId}/converse-stream",
                None,
            )
        if spec.model:
            path = m["head"] + encode_model_id(spec.model) + m["op"]
        base = self.base_url(spec.options)
        if spec.options.upstream_url:
            parts = urlsplit(spec.options.upstream_url)
            base = f"{parts.scheme}://{parts.netloc}"
        url = base + path + (f"?{spec.query}" if spec.query else "")
        stream = m["op"] in _STREAM_OPS
        headers = {
            "content-type": "application/json",
            "accept": EVENTSTREAM if stream else "application/json",
        }
        return UpstreamRequest("POST", url, headers, spec.raw_body, stream)

    def parse_native_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        data = data if isinstance(data, dict) else {}
        return Reply(body, data, self.usage_from(data), spec.model or self.native_model(spec))

    def native_stream_observer(self, spec: CallSpec) -> BedrockStream:
        return BedrockStream(spec, spec.model or self.native_model(spec))


PROVIDER = Bedrock()
