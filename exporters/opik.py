"""Kong's opik-log: every LLM call as an Opik trace with one `llm` span.

Opik's write API takes batches: `POST {base}/v1/private/traces/batch {"traces": [...]}`
and `POST {base}/v1/private/spans/batch {"spans": [...]}`, 1 to 1000 entries each (and,
as Opik's SDK sends them, at most 5 MB of JSON: a request carries the entries that fit,
the delivery sends the others next; a 413 splits the batch further), with
`Authorization: <api key>` (no `Bearer`) and `Comet-Workspace: <workspace>` on Opik
Cloud; a self-hosted Opik needs neither. The queue, batching, retries and disk spool
are the shared delivery's (`exporters.http_delivery`); this module is the pure part:
the config block, the events of a call (`items`), the request of a batch and the
reading of Opik's answer.

What one call becomes (a record without `ai`, i.e. a route without ai-proxy, yields
nothing):

- a trace whose id is the record's id (a UUIDv7 minted when the call began, so Opik and
  the other sinks name the call alike): the conversation as input (`messages`), the
  answer's message as output, the call's facts and its context ids as metadata, tags,
  `thread_id` from `X-Chat-Id` (else `X-Session-Id`, else the body metadata's), and
  `error_info` when the call failed or the client left;
- one `llm` span in it (id minted from the span's start time): the whole request and
  answer (embedding vectors reduced to their size), `model`, `provider` in Opik's own
  names so Opik can price it, `usage` with OpenAI's keys plus the provider's own ones
  (what Opik's price calculators read, cached and reasoning tokens included),
  `total_estimated_cost` when the gateway knows the cost (Opik then keeps it instead
  of pricing the call itself), and `ttft`.

Times are ISO 8601 UTC with millisecond precision. The trace runs from the request's
arrival to the call's end; the span is the upstream part (the record's `llm_latency`),
placed at the end of the trace, since the record keeps only that duration.

`http_endpoint` is taken in each of the forms Opik users meet: Kong's default
`https://www.comet.com/opik/` (the plugin appends `api/v1/private/...`), the SDK's base
URLs `https://www.comet.com/opik/api` and `http://localhost:5173/api` (to which
`/v1/private/...` is appended), or a URL already ending in `/v1/private`.

Credentials live only in the request headers built at send time; items, which may be
spooled to disk, hold neither keys nor the record's (redacted) headers.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import Field, field_validator, model_validator

from exporters.ids import uuid7
from exporters.record import AIInfo, CallRecord
from exporters.sink import Item, Prepared, Verdict, default_verdict, fit, parse_retry_after
from providers.base import Usage
from providers.options import Strict

#: the two channels: one endpoint each
TRACES = "traces"
SPANS = "spans"

#: Opik refuses batches of more entries
MAX_BATCH = 1000

#: most bytes of JSON in one batch request, before compression: the limit Opik's own
#: SDK keeps to (`MAX_BATCH_SIZE_MB = 5`); a larger batch goes in several requests
MAX_BATCH_BYTES = 5 * 1024 * 1024

#: what Opik's request size check answers (a 422) when a batch is over its limit
_TOO_LARGE = b"request size exceeds the maximum allowed size"

#: request bodies from this size on are sent gzip-compressed (as Opik's SDK does)
GZIP_MIN_BYTES = 1024

#: the context ids the gateway reads from headers and the body's `metadata`
CONTEXT_IDS = (
    "user_id",
    "session_id",
    "chat_id",
    "message_id",
    "organization_id",
    "project_id",
)

#: the gateway's provider names -> Opik's (those its price table knows); others are
#: sent as they are (Opik shows them, without a price)
OPIK_PROVIDERS = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "bedrock": "bedrock",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "xai",
    "groq": "groq",
}


class OpikLogConfig(Strict):
    """Kong's opik-log (comet-ml/opik-kong-plugin), plus `project_name`."""

    http_endpoint: str = Field(
        "https://www.comet.com/opik/",
        description="Opik's URL: https://www.comet.com/opik/ (Kong's form), or the SDK's "
        "base URL such as https://www.comet.com/opik/api or http://localhost:5173/api "
        "(self-hosted).",
    )
    ai_proxy_name: str = Field(
        "proxy",
        description="Kong's name of the ai-proxy section of the log; accepted for "
        "compatibility, without effect (llmitm records each call once).",
    )
    opik_api_key: str | None = Field(
        None,
        repr=False,
        description="Opik Cloud's API key (sent as `Authorization`); none for a "
        "self-hosted Opik without authentication.",
    )
    opik_workspace: str | None = Field(
        None, description="The Opik workspace (`Comet-Workspace`); required with an API key."
    )
    project_name: str | None = Field(
        None,
        min_length=1,
        description="The Opik project the traces go to (unset: Opik's 'Default Project').",
    )
    timeout: float = Field(
        10000, gt=0, description="Milliseconds one request to Opik may take before it is retried."
    )
    keepalive: float = Field(
        60000, ge=0, description="Milliseconds an idle connection to Opik is kept open."
    )

    @field_validator("http_endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"http_endpoint must be an http(s) URL, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("http_endpoint must not have a query or a fragment")
        return value

    @model_validator(mode="after")
    def _workspace(self) -> OpikLogConfig:
        if self.opik_api_key and not self.opik_workspace:
            raise ValueError("opik_workspace is required with opik_api_key")
        return self


def batch_url(http_endpoint: str, channel: str) -> str:
    """The batch endpoint of `channel` under any of the accepted `http_endpoint` forms."""
    parts = urlsplit(http_endpoint)
    path = parts.path.rstrip("/")
    if path.endswith("/v1/private"):
        pass
    elif path.endswith("/api"):
        path += "/v1/private"
    else:
        path += "/api/v1/private"
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/{channel}/batch", "", ""))


class OpikSink:
    """The pure part of the opik-log exporter (`exporters.sink.HttpSink`)."""

    max_batch = MAX_BATCH
    max_batch_bytes = MAX_BATCH_BYTES

    def __init__(self, config: OpikLogConfig, key: str) -> None:
        self.name = f"opik-log:{key}"
        self.config = config
        self.timeout = config.timeout / 1000
        #: seconds an idle connection may stay open (for the delivery's HTTP client)
        self.keepalive = config.keepalive / 1000
        self.urls = {ch: batch_url(config.http_endpoint, ch) for ch in (TRACES, SPANS)}

    def __repr__(self) -> str:  # never show the config: it holds the API key
        return f"OpikSink({self.name!r})"

    # ------------------------------------------------------------------ items

    def items(self, record: CallRecord) -> list[Item]:
        ai = record.ai
        if ai is None:
            return []
        trace_id = _trace_id(record)
        span_start, span_end = _span_times(record, ai)
        trace = _trace(record, ai, trace_id)
        span = _span(record, ai, trace_id, uuid7(span_start), span_start, span_end)
        if self.config.project_name:
            trace["project_name"] = span["project_name"] = self.config.project_name
        return [Item(TRACES, trace), Item(SPANS, span)]

    # ---------------------------------------------------------------- request

    def request(self, channel: str, items: list[Item]) -> Prepared:
        """The batch request of the first `items` that fit in `max_batch_bytes` (at
        least one): `Prepared.count` says how many."""
        if channel not in self.urls:
            raise ValueError(f"opik-log has no channel {channel!r}")
        parts = [_dumps(it.data) for it in items]
        head = b'{"' + channel.encode() + b'":['
        count = fit(parts, self.max_batch_bytes, overhead=len(head) + 2)
        body = head + b",".join(parts[:count]) + b"]}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=1, mtime=0)
            headers["Content-Encoding"] = "gzip"
        if self.config.opik_api_key:
            headers["Authorization"] = self.config.opik_api_key
        if self.config.opik_workspace:
            headers["Comet-Workspace"] = self.config.opik_workspace
        return Prepared("POST", self.urls[channel], headers, body, count=count)

    # ---------------------------------------------------------------- verdict

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        """Opik answers a batch with 204; 409 means the entries exist already (Opik's SDK
        counts that as delivered); a 429 says when to come back in `RateLimit-Reset`
        (seconds) rather than `Retry-After`; a batch over Opik's size limit is a 413, or
        a 422 that says so. Other statuses as `default_verdict` (a wrong key, workspace
        or URL: the entries are kept for a fixed config)."""
        lower = {k.lower(): v for k, v in headers.items()}
        if status == 409:
            return Verdict()
        if status == 422 and _TOO_LARGE in body[:2000].lower():
            snippet = body[:300].decode("utf-8", "replace")
            return Verdict(
                retry=list(items),
                too_large=True,
                reason=f"HTTP 422: {snippet} (a batch of {len(items)} entries is too large "
                "for Opik)",
            )
        if status == 429:
            wait = parse_retry_after(lower.get("retry-after"))
            if wait is None:
                wait = parse_retry_after(lower.get("ratelimit-reset"))
            return Verdict(retry=list(items), retry_after=wait, reason="HTTP 429 (rate limited)")
        out = default_verdict(items, status, lower, body)
        if status in (401, 403):
            out.reason = f"{out.reason} (check opik_api_key and opik_workspace)"
        elif 300 <= status < 400:
            where = lower.get("location", "elsewhere")
            out.reason = f"HTTP {status}: Opik is at {where} (set http_endpoint to it)"
        elif status in (404, 405):
            out.reason = f"{out.reason} (is http_endpoint Opik's URL?)"
        elif status == 413:
            out.reason = f"{out.reason} (a batch of {len(items)} entries is too large for Opik)"
        return out


def _dumps(data: Any) -> bytes:
    """JSON bytes; payloads can hold integers beyond 64 bits (the gateway keeps them),
    which orjson refuses: those batches go through the json module."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, ensure_ascii=False, default=str).encode()


def from_config(config: OpikLogConfig, key: str) -> OpikSink:
    """The sink of one configured opik-log plugin (`key` names the instance)."""
    return OpikSink(config, key)


# --------------------------------------------------------------------- events


def _trace_id(record: CallRecord) -> str:
    """The record's id when it is a UUIDv7 (the gateway mints it so), else a new one
    minted for the call's start."""
    try:
        if uuid.UUID(record.id).version == 7:
            return record.id
    except (ValueError, TypeError, AttributeError):
        pass
    return uuid7(record.started_at)


def iso_ms(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    ms = int(ts * 1000)
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _span_times(record: CallRecord, ai: AIInfo) -> tuple[float, float]:
    """The upstream part of the call: its duration, ending with the call."""
    start, end = record.started_at, max(record.ended_at, record.started_at)
    if ai.llm_latency_ms is not None and ai.llm_latency_ms >= 0:
        start = max(start, end - ai.llm_latency_ms / 1000)
    return start, end


def _operation(route_type: str) -> str:
    return route_type.rsplit("/", 1)[-1] if route_type.startswith("llm/") else route_type


def opik_provider(ai: AIInfo) -> str:
    """Opik's name for the provider of this call (its price table's vocabulary)."""
    name = ai.provider
    if name == "gemini":
        parts = urlsplit(ai.upstream_url or "")
        vertex = (parts.hostname or "").endswith("aiplatform.googleapis.com") or (
            "/publishers/google/" in parts.path
        )
        return "google_vertexai" if vertex else "google_ai"
    if name == "anthropic" and "/publishers/anthropic/" in (ai.upstream_url or ""):
        return "anthropic_vertexai"
    return OPIK_PROVIDERS.get(name, name)


def opik_usage(usage: Usage, provider: str) -> dict[str, int]:
    """OpenAI's keys (what Opik's UI shows), plus the provider's own usage keys under
    `original_usage.` as Opik's SDK logs them: Opik's price calculators read cached and
    reasoning tokens from those. Our `prompt_tokens` counts cached input too."""
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    read, write, reasoning = (
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )
    out = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    fresh = max(prompt - read - write, 0)
    # the provider's usage object, flattened: counts always, details only when not zero
    counts: dict[str, int]
    details: dict[str, int]
    if provider in ("anthropic", "anthropic_vertexai"):
        counts = {"input_tokens": fresh, "output_tokens": completion}
        details = {"cache_read_input_tokens": read, "cache_creation_input_tokens": write}
    elif provider == "bedrock":
        counts = {
            "inputTokens": fresh,
            "outputTokens": completion,
            "totalTokens": fresh + completion + read + write,
        }
        details = {"cacheReadInputTokens": read, "cacheWriteInputTokens": write}
    elif provider in ("google_ai", "google_vertexai"):
        counts = {
            "prompt_token_count": prompt,
            "candidates_token_count": max(completion - reasoning, 0),
            "total_token_count": prompt + completion,
        }
        details = {"cached_content_token_count": read, "thoughts_token_count": reasoning}
    else:
        counts = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        details = {
            "prompt_tokens_details.cached_tokens": read,
            "prompt_tokens_details.cache_write_tokens": write,
            "completion_tokens_details.reasoning_tokens": reasoning,
        }
    for key, value in counts.items():
        out[f"original_usage.{key}"] = int(value)
    for key, value in details.items():
        if value:
            out[f"original_usage.{key}"] = int(value)
    return out


def _error_info(record: CallRecord) -> dict[str, Any] | None:
    """Opik's `error_info` of a call that did not end well (None for one that did)."""
    if record.status == "ok":
        return None
    err = record.error or {}
    aborted = record.status == "client_aborted"
    kind = err.get("type") or ("client_aborted" if aborted else "error")
    status = err.get("status") or (record.response or {}).get("status")
    message = err.get("message") or (
        "the client closed the connection before the answer was complete"
        if aborted
        else f"HTTP {status}"
        if status
        else "the call failed"
    )
    lines = [f"{kind}: {message}"]
    for label, value in (
        ("status", status),
        ("code", err.get("code")),
        ("source", err.get("source") or ("client" if aborted else None)),
        ("call", record.status),
    ):
        if value not in (None, ""):
            lines.append(f"  {label}: {value}")
    return {"exception_type": str(kind), "message": str(message), "traceback": "\n".join(lines)}


def _tags(record: CallRecord, ai: AIInfo) -> list[str]:
    tags = ["llmitm", f"provider:{ai.provider}", f"operation:{_operation(ai.route_type)}"]
    if record.route:
        tags.append(f"route:{record.route}")
    if ai.stream:
        tags.append("stream")
    if record.status != "ok":
        tags.append(record.status)
    if ai.log_statistics and ai.usage is not None and ai.usage.estimated:
        tags.append("usage:estimated")
    return tags


def _thread_id(ctx: dict[str, Any]) -> str | None:
    for key in ("chat_id", "session_id"):
        value = ctx.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def _usage_source(ai: AIInfo) -> str:
    u = ai.usage
    return "none" if u is None else "estimated" if u.estimated else "reported"


def _trace_metadata(record: CallRecord, ai: AIInfo) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "created_from": "llmitm",
        "status": record.status,
        "http_status": (record.response or {}).get("status"),
        "route": record.route,
        "service": record.service,
        "consumer": record.consumer,
        "provider": ai.provider,
        "route_type": ai.route_type,
        "request_model": ai.request_model,
        "response_model": ai.response_model,
        "request_mode": "stream" if ai.stream else "oneshot",
        "finish_reason": ai.finish_reason,
        "latencies": dict(record.latencies),
    }
    ctx = record.context or {}
    for key in CONTEXT_IDS:
        if ctx.get(key) not in (None, ""):
            meta[key] = ctx[key]
    if isinstance(ctx.get("metadata"), dict):
        meta["request_metadata"] = ctx["metadata"]
    for key, value in ctx.items():  # whatever else the gateway put in the context
        if key not in meta and key != "metadata" and key not in CONTEXT_IDS:
            meta[key] = value
    if ai.log_statistics:
        meta["usage_source"] = _usage_source(ai)
    return {k: v for k, v in meta.items() if v is not None}


def _span_metadata(record: CallRecord, ai: AIInfo) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "created_from": "llmitm",
        "provider": ai.provider,
        "route_type": ai.route_type,
        "request_model": ai.request_model,
        "response_model": ai.response_model,
        "request_mode": "stream" if ai.stream else "oneshot",
        "finish_reason": ai.finish_reason,
        "upstream_url": ai.upstream_url,
        "upstream_status": (record.upstream or {}).get("status"),
        "llm_latency_ms": ai.llm_latency_ms,
    }
    if ai.log_statistics:
        u = ai.usage
        meta["usage_source"] = _usage_source(ai)
        meta["time_to_first_token_ms"] = ai.time_to_first_token_ms
        meta["time_per_token_ms"] = ai.time_per_token_ms
        if u is not None:
            meta["cache_read_tokens"] = u.cache_read_tokens
            meta["cache_write_tokens"] = u.cache_write_tokens
            meta["reasoning_tokens"] = u.reasoning_tokens
    return {k: v for k, v in meta.items() if v is not None}


def _trace(record: CallRecord, ai: AIInfo, trace_id: str) -> dict[str, Any]:
    trace: dict[str, Any] = {
        "id": trace_id,
        "name": record.route or _operation(ai.route_type),
        "start_time": iso_ms(record.started_at),
        "end_time": iso_ms(max(record.ended_at, record.started_at)),
    }
    op = _operation(ai.route_type)
    inp = conversation_input(op, ai.request_payload)
    if inp is not None:
        trace["input"] = inp
    # a failed call's answer is its error, which `error_info` holds (the span keeps it)
    out = answer_output(op, ai.response_payload) if record.status != "error" else None
    if out is not None:
        trace["output"] = out
    trace["metadata"] = _trace_metadata(record, ai)
    trace["tags"] = _tags(record, ai)
    thread = _thread_id(record.context or {})
    if thread is not None:
        trace["thread_id"] = thread
    if ai.log_statistics and ai.time_to_first_token_ms is not None:
        trace["ttft"] = ai.time_to_first_token_ms
    error = _error_info(record)
    if error is not None:
        trace["error_info"] = error
    return trace


def _span(
    record: CallRecord, ai: AIInfo, trace_id: str, span_id: str, start: float, end: float
) -> dict[str, Any]:
    op = _operation(ai.route_type)
    provider = opik_provider(ai)
    span: dict[str, Any] = {
        "id": span_id,
        "trace_id": trace_id,
        "name": f"{ai.provider}.{op}",
        "type": "llm",
        "start_time": iso_ms(start),
        "end_time": iso_ms(end),
    }
    if ai.request_payload is not None:
        span["input"] = _field(ai.request_payload)
    if ai.response_payload is not None:
        resp = ai.response_payload
        span["output"] = _field(summarize_embeddings(resp) if op == "embeddings" else resp)
    span["metadata"] = _span_metadata(record, ai)
    model = ai.response_model or ai.request_model
    if model:
        span["model"] = model
    span["provider"] = provider
    span["tags"] = _tags(record, ai)
    if ai.log_statistics:
        if ai.usage is not None:
            span["usage"] = opik_usage(ai.usage, provider)
        if ai.cost is not None:
            span["total_estimated_cost"] = float(ai.cost)
        if ai.time_to_first_token_ms is not None:
            span["ttft"] = ai.time_to_first_token_ms
    error = _error_info(record)
    if error is not None:
        span["error_info"] = error
    return span


# ------------------------------------------------------------ input and output


def _field(value: Any) -> dict[str, Any] | list[dict[str, Any]] | str:
    """A value in a shape Opik's `input`/`output` take: an object, a list of objects or
    a string (anything else is wrapped in an object)."""
    if isinstance(value, dict | str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    return {"value": value}


def conversation_input(op: str, request: Any) -> Any:
    """The trace's input: the conversation (chat), the prompt (completions) or the
    texts (embeddings) of an OpenAI-format request; a native request as it is."""
    if request is None:
        return None
    if isinstance(request, dict):
        if op == "chat" and isinstance(request.get("messages"), list):
            out: dict[str, Any] = {"messages": request["messages"]}
            if "system" in request:  # Anthropic's native format keeps it apart
                out["system"] = request["system"]
            return out
        if op == "completions" and "prompt" in request:
            return {"prompt": request["prompt"]}
        if op == "embeddings" and "input" in request:
            return {"input": request["input"]}
    return _field(request)


def answer_output(op: str, response: Any) -> Any:
    """The trace's output: the answer's message (chat), text (completions) or the size
    of the vectors (embeddings) of an OpenAI-format answer; a native one as it is."""
    if response is None:
        return None
    if isinstance(response, dict):
        choices = response.get("choices")
        if op == "chat" and isinstance(choices, list) and choices:
            messages = [c.get("message") for c in choices if isinstance(c, dict)]
            messages = [m for m in messages if isinstance(m, dict)]
            if len(messages) == 1:
                return messages[0]
            if messages:
                return {"choices": messages}
        if op == "completions" and isinstance(choices, list) and choices:
            texts = [c.get("text") for c in choices if isinstance(c, dict)]
            return {"text": texts[0]} if len(texts) == 1 else {"texts": texts}
        if op == "embeddings" and isinstance(response.get("data"), list):
            dims = [
                _dimensions(d.get("embedding")) for d in response["data"] if isinstance(d, dict)
            ]
            return {"embeddings": len(dims), "dimensions": dims[0] if dims else 0}
        if op == "chat" and response.get("type") == "message" and "content" in response:
            return {"role": response.get("role", "assistant"), "content": response["content"]}
    return _field(response)


def _dimensions(vector: Any) -> int:
    if isinstance(vector, list):
        return len(vector)
    if isinstance(vector, str):  # base64 of little-endian float32
        try:
            return len(base64.b64decode(vector, validate=False)) // 4
        except (binascii.Error, ValueError):
            return 0
    return 0


def summarize_embeddings(response: Any) -> Any:
    """An embeddings answer with each vector replaced by its size: the vectors say
    nothing to a reader and would make every span kilobytes long."""
    if not isinstance(response, dict) or not isinstance(response.get("data"), list):
        return response
    data = []
    for entry in response["data"]:
        if isinstance(entry, dict) and "embedding" in entry:
            entry = {**entry, "embedding": f"<{_dimensions(entry['embedding'])} dimensions>"}
        data.append(entry)
    return {**response, "data": data}
