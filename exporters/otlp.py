"""Kong's opentelemetry plugin for LLM calls: one OTLP span per call, GenAI conventions.

Every call record of an LLM route becomes a span following the OpenTelemetry GenAI
semantic conventions (the `gen_ai.*` attributes: operation, provider, request and
response models, finish reasons, token usage with cache and reasoning tokens, server
address), sent as OTLP/HTTP protobuf (`application/x-protobuf`) to any collector or
backend that speaks it. Message content (`gen_ai.input.messages`,
`gen_ai.output.messages`, `gen_ai.system_instructions`) is added only when the record
carries payloads, i.e. when the route logs them (`logging.log_payloads`).

When the client sent a W3C `traceparent`, the span joins its trace as a child of the
client's span; otherwise it starts a trace of its own. Ids are minted when the item is
made and kept in it, so a batch replayed from the spool sends the same ids again.

Records of routes without an LLM call (plain proxied routes, requests that matched no
route) produce no span.

The queue, retries and spool are the shared delivery's (`exporters.http_delivery`);
this module is the pure part: the config block, the items and the request.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import random
import re
import uuid
from types import SimpleNamespace
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from exporters.http_log import QueueConfig, check_headers, check_url
from exporters.record import CallRecord
from exporters.sink import Item, Prepared, Verdict, misconfigured, parse_retry_after
from providers.options import Strict

#: the one channel of this sink
CHANNEL = "otlp"

#: statuses after which the batch is sent again. OTLP/HTTP names 429, 502, 503 and 504
#: and says every other 4xx and 5xx must not be retried; we retry a 500 and a 408 too,
#: as every other sink of ours does: it is what a collector (or the proxy in front of
#: one) says when it is in trouble, and dropping the spans on a passing fault loses
#: calls for good, while retrying costs at worst a few requests (backoff, then the
#: spool). A wrong token or URL (401, 403, 404, 405, 407, 3xx) keeps the spans for a
#: fixed config; a 413 splits the batch.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})

#: most bytes of spans (protobuf) in one request; gRPC collectors take 4 MiB by default
#: and HTTP ones more or less: a 413 splits the batch
MAX_REQUEST_BYTES = 4 * 1024 * 1024

#: longest span status message kept (an upstream's error may be a whole HTML page)
MAX_STATUS_MESSAGE = 1024

SPAN_KIND_CLIENT = 3  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_CODE_ERROR = 2  # opentelemetry.proto.trace.v1.Status.StatusCode
FLAG_SAMPLED = 0x01
FLAG_PARENT_HAS_IS_REMOTE = 0x100  # SpanFlags: the flags say whether the parent is remote
FLAG_PARENT_IS_REMOTE = 0x200


# ------------------------------------------------------------------------------ config


class OtelQueueConfig(QueueConfig):
    """Kong's `queue` for opentelemetry: batches of up to 200 spans by default."""

    max_batch_size: int = Field(200, ge=1, le=1_000_000, description="Most spans per request.")


class PropagationConfig(Strict):
    """Kong's `propagation`. llmitm reads only a W3C `traceparent` (`tracestate`) and
    changes no header on the way upstream."""

    extract: list[str] | None = Field(
        None,
        description="Formats read from the client's request: only 'w3c' is supported; "
        "an empty list joins no client trace.",
    )
    inject: list[str] | None = Field(None, description="Not supported: leave unset.")
    clear: list[str] | None = Field(None, description="Not supported: leave unset.")
    default_format: str = "w3c"

    @field_validator("extract")
    @classmethod
    def _w3c_only(cls, formats: list[str] | None) -> list[str] | None:
        other = [f for f in formats or () if f != "w3c"]
        if other:
            raise ValueError(f"only 'w3c' is supported, not {', '.join(map(repr, other))}")
        return formats

    @field_validator("inject", "clear")
    @classmethod
    def _unsupported(cls, value: list[str] | None) -> list[str] | None:
        if value:
            raise ValueError("is not supported: llmitm does not rewrite tracing headers")
        return value


class OpenTelemetryConfig(Strict):
    """Kong's opentelemetry: a span per LLM call, sent as OTLP/HTTP protobuf."""

    traces_endpoint: str | None = Field(
        None, description="The collector's OTLP/HTTP traces URL, e.g. http://host:4318/v1/traces."
    )
    endpoint: str | None = Field(None, description="Deprecated in Kong: use traces_endpoint.")
    headers: dict[str, str] | None = Field(
        None,
        description="Headers sent with every export (e.g. the backend's credentials; "
        "vault references are resolved).",
    )
    resource_attributes: dict[str, str | bool | int | float] | None = Field(
        None,
        description="Resource attributes; they override the defaults (service.name "
        "'llmitm', service.version, service.instance.id).",
    )
    queue: OtelQueueConfig = Field(default_factory=OtelQueueConfig)
    batch_span_count: int | None = Field(
        None, ge=1, description="Deprecated in Kong: use queue.max_batch_size."
    )
    batch_flush_delay: int | None = Field(
        None, ge=0, description="Deprecated in Kong: use queue.max_coalescing_delay."
    )
    connect_timeout: int = Field(1000, ge=0, le=2**31 - 2, description="Milliseconds.")
    send_timeout: int = Field(5000, ge=0, le=2**31 - 2, description="Milliseconds.")
    read_timeout: int = Field(5000, ge=0, le=2**31 - 2, description="Milliseconds.")
    sampling_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of calls exported (by trace id, so a trace is kept or dropped "
        "whole); unset: every call.",
    )
    header_type: Literal["preserve", "ignore", "w3c"] = Field(
        "preserve",
        description="Deprecated in Kong: 'ignore' joins no client trace; otherwise a W3C "
        "traceparent is read.",
    )
    propagation: PropagationConfig = Field(default_factory=PropagationConfig)
    logs_endpoint: str | None = Field(None, description="Not supported: leave unset.")
    http_response_header_for_traceid: str | None = Field(
        None, description="Not supported: leave unset."
    )

    @field_validator("traces_endpoint", "endpoint")
    @classmethod
    def _url(cls, url: str | None, info: Any) -> str | None:
        if url is not None:
            check_url(url, info.field_name)
        return url

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        check_headers(headers, ("host", "content-length", "content-type"))
        return headers

    @field_validator("resource_attributes")
    @classmethod
    def _resource(cls, attrs: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (attrs or {}).items():
            if not key:
                raise ValueError("a key must not be empty")
            if isinstance(value, str) and not value:
                raise ValueError(f"the value of {key!r} must not be empty")
        return attrs

    @field_validator("logs_endpoint", "http_response_header_for_traceid")
    @classmethod
    def _not_supported(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            reason = {
                "logs_endpoint": "llmitm exports spans only (the file-log and http-log "
                "plugins carry the records)",
                "http_response_header_for_traceid": "llmitm does not add tracing headers "
                "to responses",
            }[info.field_name]
            raise ValueError(f"is not supported: {reason}")
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> OpenTelemetryConfig:
        if self.traces_endpoint is None and self.endpoint is None:
            raise ValueError("traces_endpoint is required")
        if self.traces_endpoint and self.endpoint and self.traces_endpoint != self.endpoint:
            raise ValueError("endpoint (deprecated) and traces_endpoint differ: set only one")
        return self

    @property
    def url(self) -> str:
        url = self.traces_endpoint or self.endpoint
        assert url is not None
        return url

    @property
    def max_batch_size(self) -> int:
        """Kong's deprecated `batch_span_count` wins over `queue.max_batch_size`."""
        return self.batch_span_count or self.queue.max_batch_size

    @property
    def joins_client_trace(self) -> bool:
        extract = self.propagation.extract
        return self.header_type != "ignore" and (extract is None or "w3c" in extract)


# ---------------------------------------------------------------------- semconv tables

#: Kong route types -> gen_ai.operation.name
OPERATIONS = {
    "llm/v1/chat": "chat",
    "llm/v1/completions": "text_completion",
    "llm/v1/embeddings": "embeddings",
}

#: llmitm provider names -> gen_ai.provider.name where the conventions name them; the
#: others (OpenAI-compatible hosts, local servers) keep their own name
PROVIDERS = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "cohere": "cohere",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "groq": "groq",
    "xai": "x_ai",
}

#: attributes whose type is double even when a client sent a whole number
DOUBLE_ATTRIBUTES = frozenset(
    {
        "gen_ai.request.temperature",
        "gen_ai.request.top_p",
        "gen_ai.request.top_k",
        "gen_ai.request.frequency_penalty",
        "gen_ai.request.presence_penalty",
        "gen_ai.response.time_to_first_chunk",
        "llmitm.cost",
        "llmitm.latency.request_ms",
        "llmitm.latency.llm_ms",
    }
)

#: attributes whose type is int even if a whole number came back as a float
INT_ATTRIBUTES = frozenset(
    {
        "gen_ai.request.max_tokens",
        "gen_ai.request.seed",
        "gen_ai.request.choice.count",
        "gen_ai.embeddings.dimension.count",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.reasoning.output_tokens",
        "server.port",
        "http.response.status_code",
    }
)

#: context fields (X-*-Id headers, body metadata) -> attributes
CONTEXT_ATTRIBUTES = {
    "user_id": "user.id",
    "session_id": "session.id",
    "chat_id": "llmitm.chat_id",
    "message_id": "llmitm.message_id",
    "organization_id": "llmitm.organization_id",
    "project_id": "llmitm.project_id",
}

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def provider_name(provider: str, upstream_url: str | None) -> str:
    """gen_ai.provider.name for an llmitm provider (Gemini through Vertex is Vertex AI)."""
    if provider == "gemini" and upstream_url and "aiplatform.googleapis.com" in upstream_url:
        return "gcp.vertex_ai"
    return PROVIDERS.get(provider, provider)


def operation_name(route_type: str, upstream_url: str | None) -> str:
    """gen_ai.operation.name; a `preserve` route is read from the upstream path."""
    op = OPERATIONS.get(route_type)
    if op is not None:
        return op
    path = urlsplit(upstream_url or "").path
    if "embed" in path:
        return "embeddings"
    if "generatecontent" in path.lower():  # Gemini: generateContent, streamGenerateContent
        return "generate_content"
    if path.endswith("/completions") and not path.endswith("chat/completions"):
        return "text_completion"
    return "chat"


def parse_traceparent(value: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, trace flags) of a valid W3C traceparent, else None."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, int(flags, 16)


def _random_hex(nbytes: int) -> str:
    value = 0
    while value == 0:  # an all-zero id is invalid
        value = random.getrandbits(nbytes * 8)
    return f"{value:0{nbytes * 2}x}"


def _sampled(trace_id: str, rate: float | None) -> bool:
    """TraceIdRatioBased: keep a trace when its low 64 bits fall under the rate."""
    if rate is None or rate >= 1:
        return True
    return int(trace_id[16:], 16) < rate * 2**64


def _nanos(epoch: float) -> int:
    """Epoch seconds as nanoseconds, without the float error of `epoch * 1e9`."""
    whole = int(epoch)
    return whole * 1_000_000_000 + round((epoch - whole) * 1e6) * 1000


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _int(value: Any) -> int | None:
    """An int attribute value: OTLP ints are 64-bit, a larger one is left out."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        return None
    return value


# ------------------------------------------------------------------- message content


def _text_of(content: Any) -> list[dict[str, Any]]:
    """Parts of one message's content: a string, or a list of blocks (OpenAI content
    parts, Anthropic blocks, Gemini parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return [{"type": "text", "content": _dumps(content)}]
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            parts.append({"type": "text", "content": block})
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if isinstance(block.get("text"), str) and kind in (None, "text", "input_text"):
            parts.append({"type": "text", "content": block["text"]})
        elif kind in ("thinking", "reasoning"):  # Anthropic thinking blocks
            text = block.get("thinking", block.get("text"))
            parts.append({"type": "reasoning", "content": text if isinstance(text, str) else ""})
        elif kind == "tool_use" or "functionCall" in block:  # Anthropic, Gemini
            call = block.get("functionCall") or block
            parts.append(
                {
                    "type": "tool_call",
                    "id": block.get("id"),
                    "name": str(call.get("name") or ""),
                    "arguments": call.get("input", call.get("args")),
                }
            )
        elif kind == "tool_result" or "functionResponse" in block:
            resp = block.get("functionResponse") or block
            parts.append(
                {
                    "type": "tool_call_response",
                    "id": block.get("tool_use_id") or resp.get("name"),
                    "response": resp.get("content", resp.get("response")),
                }
            )
        elif kind in ("image_url", "image", "input_audio", "file", "document") or (
            "inlineData" in block or "fileData" in block
        ):
            # a reference to the data, never the (base64) data itself
            modality = "audio" if kind == "input_audio" else "image"
            image = block.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                parts.append({"type": "uri", "modality": modality, "uri": url})
            else:
                parts.append({"type": str(kind or "blob"), "modality": modality})
        elif kind:
            parts.append({"type": str(kind)})
    return parts


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    parts = []
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = fn.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(ValueError):
                arguments = json.loads(arguments)
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": str(fn.get("name") or ""),
                "arguments": arguments,
            }
        )
    return parts


def _chat_message(message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role == "model":  # Gemini
        role = "assistant"
    content = message.get("content", message.get("parts"))
    if role == "tool":  # an OpenAI tool result
        parts = [
            {
                "type": "tool_call_response",
                "id": message.get("tool_call_id"),
                "response": content,
            }
        ]
    else:
        parts = _text_of(content) + _tool_calls(message)
        # reasoning text beside the answer (DeepSeek's reasoning_content, OpenRouter's)
        reasoning = message.get("reasoning_content", message.get("reasoning"))
        if isinstance(reasoning, str) and reasoning:
            parts.insert(0, {"type": "reasoning", "content": reasoning})
    if not isinstance(role, str):
        role = "user"
    return {"role": role, "parts": parts}


def input_messages(route_type: str, body: Any) -> tuple[list[dict] | None, list[dict] | None]:
    """(gen_ai.input.messages, gen_ai.system_instructions) of a request body; none for
    embeddings, whose input is not a conversation."""
    if route_type == "llm/v1/embeddings":
        return None, None
    if not isinstance(body, dict):
        return (
            [{"role": "user", "parts": _text_of(body)}] if isinstance(body, str) else None
        ), None
    system = None
    raw_system = body.get("system", body.get("systemInstruction", body.get("system_instruction")))
    if raw_system is not None:  # Anthropic `system`, Gemini `systemInstruction`
        if isinstance(raw_system, dict):
            raw_system = raw_system.get("parts", raw_system)
        system = _text_of(raw_system) or None
    messages = body.get("messages", body.get("contents"))
    if isinstance(messages, list):
        return [_chat_message(m) for m in messages if isinstance(m, dict)], system
    prompt = body.get("prompt", body.get("inputs"))
    if isinstance(prompt, list):
        prompt = "\n".join(map(str, prompt))
    if isinstance(prompt, str):
        return [{"role": "user", "parts": [{"type": "text", "content": prompt}]}], system
    return None, system


def output_messages(body: Any) -> list[dict] | None:
    """gen_ai.output.messages of a response body (OpenAI, Anthropic or Gemini shape)."""
    if isinstance(body, str):
        return [{"role": "assistant", "parts": _text_of(body), "finish_reason": ""}]
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("choices"), list):  # OpenAI
        out = []
        for choice in body["choices"]:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                msg = _chat_message({**message, "role": message.get("role") or "assistant"})
            else:
                msg = {"role": "assistant", "parts": _text_of(choice.get("text"))}
            msg["finish_reason"] = str(choice.get("finish_reason") or "")
            out.append(msg)
        return out
    if isinstance(body.get("candidates"), list):  # Gemini
        out = []
        for cand in body["candidates"]:
            if not isinstance(cand, dict):
                continue
            content = cand.get("content") if isinstance(cand.get("content"), dict) else {}
            out.append(
                {
                    "role": "assistant",
                    "parts": _text_of(content.get("parts")),
                    "finish_reason": str(cand.get("finishReason") or ""),
                }
            )
        return out
    if body.get("type") == "message" and "content" in body:  # Anthropic
        return [
            {
                "role": "assistant",
                "parts": _text_of(body.get("content")),
                "finish_reason": str(body.get("stop_reason") or ""),
            }
        ]
    return None


# -------------------------------------------------------------- request parameters


def _request_attributes(route_type: str, body: Any) -> dict[str, Any]:
    """gen_ai.request.* from a request body (OpenAI names; Anthropic's and Gemini's
    `generationConfig` too)."""
    if not isinstance(body, dict):
        return {}
    attrs: dict[str, Any] = {}
    gen = body.get("generationConfig") if isinstance(body.get("generationConfig"), dict) else {}

    def first(*names: str, src: dict[str, Any] = body) -> Any:
        for name in names:
            if src.get(name) is not None:
                return src[name]
        return None

    max_tokens = _int(first("max_tokens", "max_completion_tokens")) or _int(
        first("maxOutputTokens", src=gen)
    )
    if max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = max_tokens
    for key, gen_name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("frequency_penalty", "frequencyPenalty"),
        ("presence_penalty", "presencePenalty"),
    ):
        value = _number(first(key))
        if value is None:
            value = _number(first(gen_name, src=gen))
        if value is not None:
            attrs[f"gen_ai.request.{key}"] = float(value)
    seed = _int(first("seed"))
    if seed is None:
        seed = _int(gen.get("seed"))
    if seed is not None:
        attrs["gen_ai.request.seed"] = seed
    stop = first("stop", "stop_sequences")
    if stop is None:
        stop = gen.get("stopSequences")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop:
        attrs["gen_ai.request.stop_sequences"] = [str(s) for s in stop]
    count = _int(first("n")) or _int(gen.get("candidateCount"))
    if count is not None and count != 1:
        attrs["gen_ai.request.choice.count"] = count
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("type"), str):
        attrs["gen_ai.output.type"] = "text" if fmt["type"] == "text" else "json"
    elif gen.get("responseMimeType") == "application/json":
        attrs["gen_ai.output.type"] = "json"
    if route_type == "llm/v1/embeddings":
        enc = body.get("encoding_format")
        if isinstance(enc, str):
            attrs["gen_ai.request.encoding_formats"] = [enc]
        dims = _int(body.get("dimensions"))
        if dims is not None:
            attrs["gen_ai.embeddings.dimension.count"] = dims
    return attrs


def _response_id(body: Any) -> str | None:
    if isinstance(body, dict):
        rid = body.get("id", body.get("responseId"))
        if isinstance(rid, str) and rid:
            return rid
    return None


def _finish_reasons(body: Any, finish_reason: str | None) -> list[str]:
    reasons: list[str] = []
    if isinstance(body, dict):
        for choice in body.get("choices") or body.get("candidates") or ():
            if isinstance(choice, dict):
                reason = choice.get("finish_reason", choice.get("finishReason"))
                if isinstance(reason, str) and reason:
                    reasons.append(reason)
    if not reasons and finish_reason:
        reasons.append(finish_reason)
    return reasons


def _server(url: str | None) -> tuple[str, int] | None:
    if not url:
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.hostname, port


def _error_type(record: CallRecord) -> str:
    """A low-cardinality error.type: the provider's error code or type, an HTTP
    status, or what happened."""
    if record.status == "client_aborted":
        return "client_aborted"
    err = record.error or {}
    for key in ("code", "type"):
        value = err.get(key)
        if isinstance(value, str) and value:
            return value
    status = err.get("status") or (record.upstream or {}).get("status")
    if not status and (record.response.get("status") or 0) >= 400:
        status = record.response["status"]
    return str(status) if status else "_OTHER"


def span_attributes(record: CallRecord) -> dict[str, Any]:
    """The span's attributes (plain JSON values) for an LLM call record."""
    ai = record.ai
    assert ai is not None
    attrs: dict[str, Any] = {}
    op = operation_name(ai.route_type, ai.upstream_url)
    provider = provider_name(ai.provider, ai.upstream_url)
    attrs["gen_ai.operation.name"] = op
    attrs["gen_ai.provider.name"] = provider
    attrs["gen_ai.system"] = provider  # the name before semconv 1.37, still read by many
    if ai.request_model:
        attrs["gen_ai.request.model"] = ai.request_model
    params = ai.request_payload if ai.request_payload is not None else ai.request_params
    attrs.update(_request_attributes(ai.route_type, params))

    if ai.response_model:
        attrs["gen_ai.response.model"] = ai.response_model
    response_id = _response_id(ai.response_payload) or ai.response_id
    if response_id:
        attrs["gen_ai.response.id"] = response_id
    reasons = _finish_reasons(ai.response_payload, ai.finish_reason)
    if reasons and op != "embeddings":
        attrs["gen_ai.response.finish_reasons"] = reasons

    if ai.log_statistics:
        u = ai.usage
        if u is not None:
            attrs["gen_ai.usage.input_tokens"] = u.prompt_tokens
            if op != "embeddings":
                attrs["gen_ai.usage.output_tokens"] = u.completion_tokens
            if u.cache_read_tokens:
                attrs["gen_ai.usage.cache_read.input_tokens"] = u.cache_read_tokens
            if u.cache_write_tokens:
                attrs["gen_ai.usage.cache_creation.input_tokens"] = u.cache_write_tokens
            if u.reasoning_tokens:
                attrs["gen_ai.usage.reasoning.output_tokens"] = u.reasoning_tokens
            attrs["llmitm.usage.source"] = "estimated" if u.estimated else "reported"
        if ai.cost is not None:
            attrs["llmitm.cost"] = float(ai.cost)
        if ai.stream and ai.time_to_first_token_ms is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = ai.time_to_first_token_ms / 1000
        if ai.llm_latency_ms is not None:
            attrs["llmitm.latency.llm_ms"] = float(ai.llm_latency_ms)
    request_ms = record.latencies.get("request")
    if request_ms is not None:
        attrs["llmitm.latency.request_ms"] = float(request_ms)

    server = _server(ai.upstream_url)
    if server is not None:
        attrs["server.address"], attrs["server.port"] = server
    upstream_status = (record.upstream or {}).get("status")
    if isinstance(upstream_status, int):
        attrs["http.response.status_code"] = upstream_status
    if record.status != "ok":
        attrs["error.type"] = _error_type(record)

    ctx = record.context or {}
    for key, attr in CONTEXT_ATTRIBUTES.items():
        value = ctx.get(key)
        if isinstance(value, str) and value:
            attrs[attr] = value
    conversation = ctx.get("chat_id") or ctx.get("session_id")
    if isinstance(conversation, str) and conversation:
        attrs["gen_ai.conversation.id"] = conversation
    metadata = ctx.get("metadata")
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if value is None or value == "" or not isinstance(key, str) or not key:
                continue
            attrs[f"llmitm.metadata.{key}"] = value if isinstance(value, str) else _dumps(value)

    attrs["llmitm.record_id"] = record.id
    attrs["llmitm.request_mode"] = "stream" if ai.stream else "oneshot"
    if record.route:
        attrs["llmitm.route"] = record.route
    if record.service:
        attrs["llmitm.service"] = record.service
    if record.consumer:
        attrs["llmitm.consumer"] = record.consumer

    # message content: only when the route logs payloads
    if ai.request_payload is not None:
        messages, system = input_messages(ai.route_type, ai.request_payload)
        if messages:
            attrs["gen_ai.input.messages"] = _dumps(messages)
        if system:
            attrs["gen_ai.system_instructions"] = _dumps(system)
    if ai.response_payload is not None and op != "embeddings":
        out = output_messages(ai.response_payload)
        if out:
            attrs["gen_ai.output.messages"] = _dumps(out)
    return attrs


# ------------------------------------------------------------------------ protobuf


@functools.cache
def _pb() -> Any:
    """The OTLP protobuf modules, imported on first use (not when the config loads)."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    return SimpleNamespace(
        service=trace_service_pb2, common=common_pb2, resource=resource_pb2, trace=trace_pb2
    )


def _any_value(value: Any, key: str = "") -> Any:
    common = _pb().common
    if isinstance(value, bool):
        return common.AnyValue(bool_value=value)
    if isinstance(value, int):
        if key in DOUBLE_ATTRIBUTES:
            return common.AnyValue(double_value=float(value))
        if not -(2**63) <= value < 2**63:  # beyond int64: keep it exact, as text
            return common.AnyValue(string_value=str(value))
        return common.AnyValue(int_value=value)
    if isinstance(value, float):
        if key in INT_ATTRIBUTES and value.is_integer():
            return common.AnyValue(int_value=int(value))
        return common.AnyValue(double_value=value)
    if isinstance(value, str):
        return common.AnyValue(string_value=value)
    if isinstance(value, list):
        return common.AnyValue(array_value=common.ArrayValue(values=[_any_value(v) for v in value]))
    return common.AnyValue(string_value=_dumps(value))


def _key_values(attrs: dict[str, Any]) -> list[Any]:
    common = _pb().common
    return [common.KeyValue(key=k, value=_any_value(v, k)) for k, v in attrs.items()]


def _version() -> str:
    try:
        return importlib.metadata.version("llmitm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


#: one id per gateway process, as the SDKs mint it
INSTANCE_ID = str(uuid.uuid4())


def default_resource() -> dict[str, Any]:
    version = _version()
    return {
        "service.name": "llmitm",
        "service.version": version,
        "service.instance.id": INSTANCE_ID,
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "llmitm",
        "telemetry.sdk.version": version,
    }


def _status_message(body: bytes) -> str | None:
    """`message` of a google.rpc.Status (the body of an OTLP/HTTP error), if it is one."""
    i, n = 0, len(body)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated")
            b = body[i]
            i += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    try:
        while i < n:
            tag = varint()
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                varint()
            elif wire == 2:
                size = varint()
                chunk = body[i : i + size]
                if len(chunk) != size:
                    return None
                i += size
                if field == 2:
                    return chunk.decode("utf-8")
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return None
    except (ValueError, UnicodeDecodeError):
        return None
    return None


# ---------------------------------------------------------------------------- sink


class OtlpSink:
    """The pure part of the opentelemetry plugin (`exporters.sink.HttpSink`)."""

    def __init__(self, config: OpenTelemetryConfig, key: str) -> None:
        self.config = config
        self.name = f"opentelemetry:{key}"
        self.queue = config.queue
        self.max_batch = config.max_batch_size
        #: seconds to wait for a batch to fill (Kong's deprecated batch_flush_delay wins)
        self.linger = (
            float(config.batch_flush_delay)
            if config.batch_flush_delay is not None
            else config.queue.max_coalescing_delay
        )
        self.connect_timeout = config.connect_timeout / 1000
        self.send_timeout = config.send_timeout / 1000
        self.read_timeout = config.read_timeout / 1000
        #: seconds one export may take in all: connect, send and read
        self.timeout = self.connect_timeout + self.send_timeout + self.read_timeout
        self.url = config.url
        headers = {k: v for k, v in (config.headers or {}).items()}
        headers["Content-Type"] = "application/x-protobuf"
        self._headers = headers
        self.resource = {**default_resource(), **(config.resource_attributes or {})}

    @classmethod
    def from_config(cls, config: OpenTelemetryConfig, key: str) -> OtlpSink:
        return cls(config, key)

    def items(self, record: CallRecord) -> list[Item]:
        if record.ai is None:
            return []
        parent = None
        trace_state = None
        if self.config.joins_client_trace:
            headers = record.request.get("headers") or {}
            parent = parse_traceparent(headers.get("traceparent"))
            if parent is not None:
                state = headers.get("tracestate")
                trace_state = state if isinstance(state, str) and state else None
        if parent is not None:
            trace_id, parent_span_id, trace_flags = parent
            flags = FLAG_PARENT_HAS_IS_REMOTE | FLAG_PARENT_IS_REMOTE
        else:
            trace_id, parent_span_id, trace_flags = _random_hex(16), None, 0
            flags = FLAG_PARENT_HAS_IS_REMOTE
        if not _sampled(trace_id, self.config.sampling_rate):
            return []
        # an exported span is a recorded one: say so, whatever the client decided
        flags |= (trace_flags | FLAG_SAMPLED) & 0xFF

        attrs = span_attributes(record)
        op = attrs["gen_ai.operation.name"]
        model = attrs.get("gen_ai.request.model")
        status = None
        if record.status != "ok":
            err = record.error or {}
            message = err.get("message") if isinstance(err.get("message"), str) else None
            if not message:
                message = "the client went away" if record.status == "client_aborted" else "error"
            status = {"code": STATUS_CODE_ERROR, "message": message[:MAX_STATUS_MESSAGE]}
        data = {
            "trace_id": trace_id,
            "span_id": _random_hex(8),
            "parent_span_id": parent_span_id,
            "trace_state": trace_state,
            "flags": flags,
            "name": f"{op} {model}" if model else op,
            "kind": SPAN_KIND_CLIENT,
            "start_time_unix_nano": _nanos(record.started_at),
            "end_time_unix_nano": _nanos(max(record.ended_at, record.started_at)),
            "attributes": attrs,
            "status": status,
        }
        return [Item(CHANNEL, data)]

    def _span(self, data: dict[str, Any]) -> Any:
        trace = _pb().trace
        span = trace.Span(
            trace_id=bytes.fromhex(data["trace_id"]),
            span_id=bytes.fromhex(data["span_id"]),
            name=data["name"],
            kind=data.get("kind", SPAN_KIND_CLIENT),
            start_time_unix_nano=int(data["start_time_unix_nano"]),
            end_time_unix_nano=int(data["end_time_unix_nano"]),
            attributes=_key_values(data.get("attributes") or {}),
            flags=int(data.get("flags") or 0),
        )
        if data.get("parent_span_id"):
            span.parent_span_id = bytes.fromhex(data["parent_span_id"])
        if data.get("trace_state"):
            span.trace_state = data["trace_state"]
        status = data.get("status")
        if status:
            span.status.code = int(status["code"])
            span.status.message = str(status.get("message") or "")
        return span

    def request(self, channel: str, items: list[Item]) -> Prepared:
        """The export of the first `items` whose spans fit in `MAX_REQUEST_BYTES` (at
        least one): `Prepared.count` says how many."""
        pb = _pb()
        spans = []
        size = 0
        for item in items:
            span = self._span(item.data)
            size += span.ByteSize() + 8  # the field's tag and length
            if spans and size > MAX_REQUEST_BYTES:
                break
            spans.append(span)
        export = pb.service.ExportTraceServiceRequest(
            resource_spans=[
                pb.trace.ResourceSpans(
                    resource=pb.resource.Resource(attributes=_key_values(self.resource)),
                    scope_spans=[
                        pb.trace.ScopeSpans(
                            scope=pb.common.InstrumentationScope(name="llmitm", version=_version()),
                            spans=spans,
                        )
                    ],
                )
            ]
        )
        return Prepared(
            "POST", self.url, dict(self._headers), export.SerializeToString(), count=len(spans)
        )

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        if 200 <= status < 300:
            rejected, message = self._partial_success(body)
            if rejected:
                # OTLP: a partial success must not be retried, and it does not say
                # which spans were rejected
                return Verdict(reason=f"the collector rejected {rejected} span(s): {message}")
            return Verdict()
        ctype = headers.get("content-type", "")
        message = _status_message(body) if "protobuf" in ctype or not ctype else None
        message = message or body[:300].decode("utf-8", "replace").strip()
        reason = f"HTTP {status}: {message}" if message else f"HTTP {status}"
        if status in RETRYABLE:
            retry_after = parse_retry_after(headers.get("retry-after"))
            return Verdict(retry=list(items), retry_after=retry_after, reason=reason)
        if status == 413:
            return Verdict(retry=list(items), too_large=True, reason=reason)
        if misconfigured(status):
            if 300 <= status < 400:
                reason = f"HTTP {status}: redirected to {headers.get('location', 'elsewhere')}"
            hint = "headers" if status in (401, 403, 407) else "traces_endpoint"
            return Verdict(retry=list(items), hold=True, reason=f"{reason} (check {hint})")
        return Verdict(dropped=list(items), reason=reason)

    @staticmethod
    def _partial_success(body: bytes) -> tuple[int, str]:
        if not body:
            return 0, ""
        if body.lstrip()[:1] == b"{":  # a collector answering in OTLP/JSON
            try:
                data = json.loads(body)
                partial = data.get("partialSuccess") or data.get("partial_success") or {}
                rejected = int(partial.get("rejectedSpans") or partial.get("rejected_spans") or 0)
                message = partial.get("errorMessage") or partial.get("error_message") or ""
                return rejected, str(message)
            except (ValueError, TypeError, AttributeError):
                return 0, ""
        response = _pb().service.ExportTraceServiceResponse()
        try:
            response.ParseFromString(body)
        except Exception:  # noqa: BLE001 - a body we cannot read is no partial success
            return 0, ""
        partial = response.partial_success
        return partial.rejected_spans, partial.error_message


def from_config(config: OpenTelemetryConfig, key: str) -> OtlpSink:
    """The sink of one configured opentelemetry plugin (`key`: the instance's stable id)."""
    return OtlpSink(config, key)
