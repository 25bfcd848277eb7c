"""Kong's ai-tracing plugin: every LLM call as a Langfuse trace holding one generation.

Two wire formats, both built from the call record alone (pure code, no I/O: the shared
`exporters.http_delivery` queues, batches, retries and spools the items):

- OTLP/HTTP, the default and Langfuse's current ingestion path:
  `POST {host}/api/public/otel/v1/traces`, protobuf (JSON when `opentelemetry-proto` is
  missing), gzip, Basic auth (public key : secret key) and
  `x-langfuse-ingestion-version: 4`. One span per call, carrying the trace attributes
  (`langfuse.trace.*`, `user.id`, `session.id`, `langfuse.environment`,
  `langfuse.release`) and the generation's (`langfuse.observation.*`), encoded the way
  the Langfuse Python SDK 5 encodes them (JSON strings), plus the OpenTelemetry GenAI
  attributes (`gen_ai.*`) other tools read.
- The legacy batch ingestion: `POST {host}/api/public/ingestion` with
  `{"batch": [trace-create, generation-create]}`, what the seed's Kong plugin sends and
  what self-hosted Langfuse before v4 accepts. Chosen when `langfuse_endpoint` is an
  `.../api/public/ingestion` URL (the seed's example) or with `protocol: ingestion`.
  Its answers are 207 multi-status: only the events that failed with a retryable status
  are sent again; those refused for good are dropped and logged.

A request carries at most 100 spans and 4 MiB of them (OTLP), or 50 events and 3 MB
(ingestion: Langfuse's limit is 3.5 MB); `Prepared.count` says how many, and the
delivery sends the rest next, at once. Wrong keys (401, 403) or a wrong endpoint (404,
3xx) keep the items for a fixed config, with a hint naming the field to check.

Items hold no credential: the keys are turned into the Authorization header only when
a request is built. The record's request headers never enter an item.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import Field, field_validator, model_validator

from exporters.record import AIInfo, CallRecord
from exporters.sink import Item, Prepared, Verdict, default_verdict, fit, parse_retry_after
from providers.options import Strict

#: the channel of each protocol (one per configured instance)
OTEL = "otel"
INGESTION = "ingestion"

OTEL_PATH = "/api/public/otel/v1/traces"
INGESTION_PATH = "/api/public/ingestion"

#: spans per OTLP request
OTEL_MAX_BATCH = 100
#: most bytes of spans in one OTLP request before gzip (Langfuse warns from 16 MiB; a
#: proxy in front of a self-hosted one may take less: a 413 splits the batch)
OTEL_MAX_BYTES = 4 * 1024 * 1024
#: events per legacy ingestion request; the bytes are capped too (`INGESTION_MAX_BYTES`)
INGESTION_MAX_BATCH = 50
#: "Batch sizes are limited to 3.5 MB in total" (Langfuse's API docs): keep a margin
INGESTION_MAX_BYTES = 3_000_000
#: the longest input, output or metadata value (JSON) sent; longer ones are cut
MAX_FIELD_BYTES = 1_000_000

# Langfuse's rule for environments: lowercase letters, digits, '-' and '_', at most 40
# characters, not starting with "langfuse" (reserved for its own).
_ENVIRONMENT = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")

_RETRYABLE = frozenset({408, 425, 429})

log = logging.getLogger(__name__)


class AiTracingConfig(Strict):
    """Kong's ai-tracing (the Langfuse tracing plugin of the seed), with its field names
    and defaults, plus `protocol`, `release` and `tags`."""

    langfuse_enabled: bool = Field(
        False,
        description="Send traces to Langfuse. Kong's default is false: an instance that "
        "does not set it to true sends nothing.",
    )
    langfuse_public_key: str | None = Field(
        None, description="The project's public key (pk-lf-...): the Basic auth user."
    )
    langfuse_secret_key: str | None = Field(
        None,
        description="The project's secret key (sk-lf-...): the Basic auth password. Use a "
        "vault reference: {vault://env/LANGFUSE_SECRET_KEY}.",
    )
    langfuse_endpoint: str = Field(
        "https://cloud.langfuse.com",
        description="The Langfuse host (https://cloud.langfuse.com, "
        "https://us.cloud.langfuse.com, or your own): traces go to "
        "{host}/api/public/otel/v1/traces. An .../api/public/ingestion URL (the seed's "
        "example) selects the legacy batch ingestion.",
    )
    langfuse_timeout: float = Field(
        5000,
        gt=0,
        description="Milliseconds one request may take before it is retried (Kong's "
        "default, 5 s: raise it for a slow or distant Langfuse, since a batch that times "
        "out is sent again).",
    )
    environment: str = Field(
        "production",
        description="Langfuse environment of every trace (lowercase letters, digits, - "
        "and _; not starting with 'langfuse').",
    )
    log_level: Literal["debug", "info", "warn", "error"] = Field(
        "info", description="Level of this plugin's own log lines."
    )
    protocol: Literal["otel", "ingestion"] | None = Field(
        None,
        description="otel (OTLP/HTTP, Langfuse v3 and v4) or ingestion (the legacy batch "
        "API, Langfuse before v4). Unset: ingestion for an .../api/public/ingestion "
        "endpoint, otel otherwise.",
    )
    release: str | None = Field(
        None, description="The release (version of your app) set on every trace."
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Tags set on every trace; a body metadata `tags` (or `langfuse_tags`) "
        "list of strings adds to them.",
    )

    @field_validator("langfuse_endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("langfuse_endpoint must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "langfuse_endpoint must not hold credentials: set langfuse_public_key "
                "and langfuse_secret_key"
            )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("langfuse_endpoint has an invalid port") from None
        return url

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        if not _ENVIRONMENT.match(value):
            raise ValueError(
                f"environment {value!r}: Langfuse takes 1 to 40 lowercase letters, digits, "
                "'-' or '_', not starting with 'langfuse'"
            )
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        if any(not t for t in tags):
            raise ValueError("tags must not be empty strings")
        return tags

    @model_validator(mode="after")
    def _keys(self) -> AiTracingConfig:
        if not self.langfuse_enabled:
            return self
        missing = [
            name
            for name in ("langfuse_public_key", "langfuse_secret_key")
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(f"langfuse_enabled is true: {' and '.join(missing)} must be set")
        # the values are secrets: never quoted in an error
        if (self.langfuse_public_key or "").startswith("sk-lf-"):
            raise ValueError(
                "langfuse_public_key holds a secret key (sk-lf-...): the keys are swapped"
            )
        if (self.langfuse_secret_key or "").startswith("pk-lf-"):
            raise ValueError(
                "langfuse_secret_key holds a public key (pk-lf-...): the keys are swapped"
            )
        return self


def split_endpoint(endpoint: str) -> tuple[str, str | None]:
    """(the Langfuse host with any path prefix, the protocol its path names or None)
    for a configured endpoint: a host, with or without one of the API paths
    (`/api/public/ingestion`, `/api/public/otel`, `/api/public/otel/v1/traces`)."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    found: str | None = None
    for suffix, kind in (
        (INGESTION_PATH, INGESTION),
        (OTEL_PATH, OTEL),
        ("/api/public/otel", OTEL),
    ):
        if path.endswith(suffix):
            path, found = path[: -len(suffix)], kind
            break
    return urlunsplit(parts._replace(path=path, fragment="")), found


def endpoint_url(base: str, protocol: str) -> str:
    """Where `protocol`'s requests go on the Langfuse at `base` (query string kept)."""
    parts = urlsplit(base)
    path = parts.path + (OTEL_PATH if protocol == OTEL else INGESTION_PATH)
    return urlunsplit(parts._replace(path=path))


def resolve_endpoint(endpoint: str, protocol: str | None) -> tuple[str, str]:
    """(protocol, URL) for a configured endpoint: an explicit `protocol` wins over the
    one the path names; OTLP when neither says."""
    base, found = split_endpoint(endpoint)
    chosen = protocol or found or OTEL
    return chosen, endpoint_url(base, chosen)


# --------------------------------------------------------------------- helpers


def dumps(value: Any) -> bytes:
    """Compact JSON; integers beyond 64 bits (kept by the json module in payloads) fall
    back to the json module."""
    try:
        return orjson.dumps(value, default=str)
    except TypeError:
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":")).encode()


def iso(ts: float) -> str:
    """ISO 8601 in UTC with microseconds and a `Z`, as Langfuse's SDKs write times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_text(value: Any) -> str:
    """A value as JSON text, as the Langfuse SDK 5 encodes its attributes (strings too:
    `"openai"` with the quotes); a value too long is cut first (and stays valid JSON)."""
    return dumps(_bounded(value)).decode()


def _cut(text: str) -> str:
    raw = text.encode()
    if len(raw) <= MAX_FIELD_BYTES:
        return text
    kept = raw[:MAX_FIELD_BYTES].decode("utf-8", "ignore")
    return f"{kept}...[truncated by llmitm: {len(raw)} bytes]"


def _bounded(value: Any) -> Any:
    """A JSON value as is, or (when its JSON is longer than MAX_FIELD_BYTES) its JSON cut
    to that length, as a string."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _cut(value)
    text = dumps(value)
    if len(text) <= MAX_FIELD_BYTES:
        return value
    return _cut(text.decode())


# OpenAI request fields that are model parameters (what Langfuse shows as such)
_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "seed",
    "n",
    "stop",
    "response_format",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "service_tier",
    "dimensions",
    "encoding_format",
)

_OBSERVATION_NAMES = {
    "llm/v1/chat": "chat_completion",
    "llm/v1/completions": "completion",
    "llm/v1/embeddings": "embedding",
    "preserve": "passthrough",
}

_OPERATIONS = {
    "llm/v1/chat": "chat",
    "llm/v1/completions": "text_completion",
    "llm/v1/embeddings": "embeddings",
}


def model_parameters(payload: Any) -> dict[str, Any]:
    """The request's model parameters, as Langfuse's `MapValue`s (string, number,
    boolean, list of strings); other values (objects) as their JSON."""
    if not isinstance(payload, dict):
        return {}
    out: dict[str, Any] = {}
    for key in _PARAMS:
        value = payload.get(key)
        if value is None:
            continue
        scalar = isinstance(value, str | bool | int | float)
        if scalar or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            out[key] = value
        else:
            out[key] = dumps(value).decode()
    return out


def observation_input(payload: Any) -> Any:
    """What Langfuse shows as the generation's input: the messages (with the tools when
    there are), the prompt, or the embeddings' input; anything else as it is."""
    if not isinstance(payload, dict):
        return payload
    messages = payload.get("messages")
    if isinstance(messages, list):
        tools = payload.get("tools") or payload.get("functions")
        return {"messages": messages, "tools": tools} if tools else messages
    for key in ("prompt", "input"):
        if key in payload:
            return payload[key]
    return payload


def observation_output(payload: Any) -> Any:
    """The answer: the assistant message (a list of them for n > 1), the completion
    text, or for embeddings their count and dimensions (never the vectors)."""
    if not isinstance(payload, dict):
        return payload
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and all(isinstance(c, dict) for c in choices):
        if all("message" in c for c in choices):
            messages = [c["message"] for c in choices]
            return messages[0] if len(messages) == 1 else messages
        if all("text" in c for c in choices):
            texts = [c["text"] for c in choices]
            return texts[0] if len(texts) == 1 else texts
    data = payload.get("data")
    if payload.get("object") == "list" and isinstance(data, list):
        vectors = [d.get("embedding") for d in data if isinstance(d, dict)]
        first = vectors[0] if vectors else None
        return {
            "embeddings": len(vectors),
            "dimensions": len(first) if isinstance(first, list) else None,
        }
    return payload


def usage_details(ai: AIInfo) -> dict[str, int] | None:
    """Langfuse's usage details: `input` and `output` exclusive of the cached and
    reasoning tokens, which have their own keys (the convention of Langfuse's own
    integrations, so that its input and output sums are right), and `total`."""
    u = ai.usage
    if u is None or not ai.log_statistics:
        return None
    out = {
        "input": max(0, u.prompt_tokens - u.cache_read_tokens - u.cache_write_tokens),
        "output": max(0, u.completion_tokens - u.reasoning_tokens),
        "total": u.total_tokens,
    }
    if u.cache_read_tokens:
        out["input_cache_read"] = u.cache_read_tokens
    if u.cache_write_tokens:
        out["input_cache_creation"] = u.cache_write_tokens
    if u.reasoning_tokens:
        out["output_reasoning"] = u.reasoning_tokens
    return out


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class Facts:
    """What a Langfuse trace and generation say about one call, whatever the wire."""

    def __init__(self, record: CallRecord, config: AiTracingConfig) -> None:
        ai = record.ai
        assert ai is not None
        ctx = record.context or {}
        body_meta = ctx.get("metadata") if isinstance(ctx.get("metadata"), dict) else {}
        self.record = record
        self.ai = ai
        uri = str(record.request.get("uri") or "/")
        self.trace_name = uri.split("?", 1)[0] or "/"
        self.name = _OBSERVATION_NAMES.get(ai.route_type, ai.route_type)
        self.observation_type = (
            "embedding" if ai.route_type == "llm/v1/embeddings" else "generation"
        )
        self.user_id = _str(ctx.get("user_id")) or record.consumer
        self.session_id = _str(ctx.get("session_id"))
        tags = list(config.tags)
        for key in ("tags", "langfuse_tags"):
            extra = body_meta.get(key)
            if isinstance(extra, list):
                tags += [t for t in extra if isinstance(t, str) and t]
        self.tags = list(dict.fromkeys(tags))
        self.environment = config.environment
        self.release = config.release
        self.model = ai.response_model or ai.request_model
        self.start = record.started_at
        self.end = max(record.ended_at, record.started_at)
        ttft = ai.time_to_first_token_ms if ai.log_statistics else None
        self.completion_start = (
            min(max(self.start + ttft / 1000, self.start), self.end) if ttft is not None else None
        )
        self.parameters = model_parameters(
            ai.request_payload if ai.request_payload is not None else ai.request_params
        )
        self.input = (
            _bounded(observation_input(ai.request_payload))
            if ai.request_payload is not None
            else None
        )
        self.output = (
            _bounded(observation_output(ai.response_payload))
            if ai.response_payload is not None
            else None
        )
        self.usage = usage_details(ai)
        self.cost = ai.cost if ai.log_statistics else None
        self.level, self.status_message = _level(record)

        status_code = record.response.get("status") if record.response else None
        u = ai.usage if ai.log_statistics else None
        throughput = None
        if u is not None and u.completion_tokens and ai.llm_latency_ms:
            throughput = round(u.completion_tokens / (ai.llm_latency_ms / 1000), 3)
        # the trace: who and where (the body's metadata object, then the gateway's facts)
        self.trace_metadata = {
            **{k: v for k, v in body_meta.items() if isinstance(k, str) and k},
            **_clean(
                {
                    "record_id": record.id,
                    "route": record.route,
                    "service": record.service,
                    "consumer": record.consumer,
                    "status": record.status,
                    "status_code": status_code,
                    "provider": ai.provider,
                    "model": self.model,
                    "environment": config.environment,
                    "chat_id": _str(ctx.get("chat_id")),
                    "message_id": _str(ctx.get("message_id")),
                    "organization_id": _str(ctx.get("organization_id")),
                    "project_id": _str(ctx.get("project_id")),
                    "total_duration_ms": (record.latencies or {}).get("request"),
                    "time_per_token_ms": ai.time_per_token_ms if ai.log_statistics else None,
                    "throughput_tokens_per_second": throughput,
                }
            ),
        }
        # the generation: what the model did
        self.observation_metadata = _clean(
            {
                "provider": ai.provider,
                "route_type": ai.route_type,
                "request_mode": "stream" if ai.stream else "oneshot",
                "request_model": ai.request_model,
                "response_model": ai.response_model,
                "finish_reason": ai.finish_reason,
                "llm_latency_ms": ai.llm_latency_ms,
                "time_to_first_token_ms": ttft,
                "usage_source": _usage_source(ai),
                "upstream_status": (record.upstream or {}).get("status"),
            }
        )


def _usage_source(ai: AIInfo) -> str | None:
    """As the record says it: reported by the provider, estimated by the gateway, none."""
    if not ai.log_statistics:
        return None
    if ai.usage is None:
        return "none"
    return "estimated" if ai.usage.estimated else "reported"


def _str(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    return str(value) if isinstance(value, str | int) else None


def _level(record: CallRecord) -> tuple[str | None, str | None]:
    """Langfuse's level and status message of a call: ERROR with the error for a failed
    call, WARNING for a client that went away, none for a success."""
    err = record.error or {}
    message = err.get("message")
    if record.status == "client_aborted":
        return "WARNING", "client aborted the request" + (f": {message}" if message else "")
    if record.status == "error":
        head = " ".join(
            str(p) for p in (err.get("source"), err.get("status"), err.get("type")) if p
        )
        if not message:
            status = record.response.get("status") if record.response else None
            message = f"HTTP {status}" if status else "the call failed"
        return "ERROR", _cut(f"{head}: {message}" if head else str(message))
    return None, None


def _span_id(record_id: str) -> str:
    digest = hashlib.sha256(f"llmitm:{record_id}:generation".encode()).digest()
    return (digest[:8] if any(digest[:8]) else b"\x00" * 7 + b"\x01").hex()


def _trace_id(record_id: str) -> str:
    """The record id's 128 bits (a UUIDv7) as an OTLP trace id; any other id hashed."""
    try:
        value = uuid.UUID(record_id).hex
    except ValueError:
        value = hashlib.sha256(record_id.encode()).hexdigest()[:32]
    return value if int(value, 16) else "0" * 31 + "1"


def generation_id(record_id: str) -> str:
    """The legacy generation's id, stable for a record."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"llmitm:{record_id}:generation"))


# ------------------------------------------------------------------ OTLP items


def span_item(facts: Facts) -> dict[str, Any]:
    """The call as one span (plain JSON, spooled as it is): ids as hex, times in epoch
    nanoseconds, attributes by name with their typed values (str, int, float, bool or a
    list of str). JSON-encoded attributes follow the Langfuse SDK 5 (strings too)."""
    ai, record = facts.ai, facts.record
    a: dict[str, Any] = {
        # the trace
        "langfuse.trace.name": facts.trace_name,
        "user.id": facts.user_id,
        "session.id": facts.session_id,
        "langfuse.trace.tags": facts.tags or None,
        "langfuse.environment": facts.environment,
        "langfuse.release": facts.release,
    }
    for key, value in facts.trace_metadata.items():
        a[f"langfuse.trace.metadata.{key}"] = _json_text(value)
    # the generation
    a.update(
        {
            "langfuse.observation.type": facts.observation_type,
            "langfuse.observation.model.name": facts.model,
            "langfuse.observation.model.parameters": (
                _json_text(facts.parameters) if facts.parameters else None
            ),
            "langfuse.observation.input": (
                _json_text(facts.input) if facts.input is not None else None
            ),
            "langfuse.observation.output": (
                _json_text(facts.output) if facts.output is not None else None
            ),
            "langfuse.observation.usage_details": (
                _json_text(facts.usage) if facts.usage else None
            ),
            "langfuse.observation.cost_details": (
                _json_text({"total": facts.cost}) if facts.cost is not None else None
            ),
            "langfuse.observation.completion_start_time": (
                _json_text(iso(facts.completion_start))
                if facts.completion_start is not None
                else None
            ),
            "langfuse.observation.level": facts.level,
            "langfuse.observation.status_message": facts.status_message,
        }
    )
    for key, value in facts.observation_metadata.items():
        a[f"langfuse.observation.metadata.{key}"] = _json_text(value)
    # the OpenTelemetry GenAI conventions (Langfuse's langfuse.* attributes win)
    operation = _OPERATIONS.get(ai.route_type)
    a.update(
        {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": ai.provider,
            "gen_ai.request.model": ai.request_model,
            "gen_ai.response.model": ai.response_model,
            "gen_ai.response.id": _response_id(ai.response_payload) or ai.response_id,
            "gen_ai.response.finish_reasons": [ai.finish_reason] if ai.finish_reason else None,
        }
    )
    if ai.usage is not None and ai.log_statistics:
        a["gen_ai.usage.input_tokens"] = ai.usage.prompt_tokens
        a["gen_ai.usage.output_tokens"] = ai.usage.completion_tokens
    if ai.upstream_url:
        parts = urlsplit(ai.upstream_url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = None
        a["server.address"] = parts.hostname
        a["server.port"] = port
    status = None
    if record.status == "error":
        status = {"code": 2, "message": facts.status_message or ""}
    return {
        "trace_id": _trace_id(record.id),
        "span_id": _span_id(record.id),
        "name": facts.name,
        "kind": 1,  # INTERNAL, as the Langfuse SDK's spans
        "start_ns": int(facts.start * 1e9),
        "end_ns": int(facts.end * 1e9),
        "attributes": {k: v for k, v in a.items() if v is not None},
        "status": status,
    }


def _response_id(payload: Any) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("id"), str):
        return payload["id"]
    return None


# ------------------------------------------------------------- legacy events


def ingestion_items(facts: Facts) -> list[dict[str, Any]]:
    """The call as a trace-create and a generation-create event of the legacy batch API
    (`IngestionEvent` in Langfuse's OpenAPI spec)."""
    record = facts.record
    created = iso(record.ended_at)
    trace = _clean(
        {
            "id": record.id,
            "timestamp": iso(facts.start),
            "name": facts.trace_name,
            "userId": facts.user_id,
            "sessionId": facts.session_id,
            "release": facts.release,
            "tags": facts.tags or None,
            "environment": facts.environment,
            "metadata": _bounded(facts.trace_metadata),
            "input": facts.input,
            "output": facts.output,
        }
    )
    usage = facts.usage
    u = facts.ai.usage if facts.ai.log_statistics else None
    generation = _clean(
        {
            "id": generation_id(record.id),
            "traceId": record.id,
            "name": facts.name,
            "startTime": iso(facts.start),
            "endTime": iso(facts.end),
            "completionStartTime": (
                iso(facts.completion_start) if facts.completion_start is not None else None
            ),
            "model": facts.model,
            "modelParameters": facts.parameters or None,
            "input": facts.input,
            "output": facts.output,
            "usageDetails": usage,
            "costDetails": {"total": facts.cost} if facts.cost is not None else None,
            # the deprecated `usage` too: what servers older than usageDetails read
            "usage": _clean(
                {
                    "input": u.prompt_tokens,
                    "output": u.completion_tokens,
                    "total": u.total_tokens,
                    "unit": "TOKENS",
                    "totalCost": facts.cost,
                }
            )
            if u is not None
            else None,
            "metadata": _bounded(facts.observation_metadata),
            "level": facts.level,
            "statusMessage": facts.status_message,
            "environment": facts.environment,
        }
    )
    return [
        {"id": str(uuid.uuid4()), "timestamp": created, "type": "trace-create", "body": trace},
        {
            "id": str(uuid.uuid4()),
            "timestamp": created,
            "type": "generation-create",
            "body": generation,
        },
    ]


# ----------------------------------------------------------------- OTLP wire


def _any_value_json(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_any_value_json(v) for v in value]}}
    return {"stringValue": str(value)}


def _attrs_json(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value_json(v)} for k, v in attrs.items()]


def encode_json(resource: dict[str, Any], scope: tuple[str, str], spans: list[dict]) -> bytes:
    """An ExportTraceServiceRequest in OTLP/JSON (hex ids, 64-bit integers as strings)."""
    out_spans = []
    for s in spans:
        span: dict[str, Any] = {
            "traceId": s["trace_id"],
            "spanId": s["span_id"],
            "name": s["name"],
            "kind": s["kind"],
            "startTimeUnixNano": str(s["start_ns"]),
            "endTimeUnixNano": str(s["end_ns"]),
            "attributes": _attrs_json(s["attributes"]),
        }
        if s.get("parent_span_id"):
            span["parentSpanId"] = s["parent_span_id"]
        if s.get("status"):
            span["status"] = s["status"]
        out_spans.append(span)
    return dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": _attrs_json(resource)},
                    "scopeSpans": [
                        {"scope": {"name": scope[0], "version": scope[1]}, "spans": out_spans}
                    ],
                }
            ]
        }
    )


@cache
def _proto() -> Any:
    """opentelemetry-proto's generated classes, or None when it is not installed."""
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2
    except ImportError:
        return None
    return trace_service_pb2, common_pb2, resource_pb2, trace_pb2


def protobuf_available() -> bool:
    return _proto() is not None


def encode_protobuf(resource: dict[str, Any], scope: tuple[str, str], spans: list[dict]) -> bytes:
    """An ExportTraceServiceRequest in binary protobuf (what the Langfuse SDK sends)."""
    trace_service_pb2, common_pb2, resource_pb2, trace_pb2 = _proto()
    AnyValue, KeyValue = common_pb2.AnyValue, common_pb2.KeyValue

    def any_value(value: Any) -> Any:
        if isinstance(value, bool):
            return AnyValue(bool_value=value)
        if isinstance(value, int):
            return AnyValue(int_value=value)
        if isinstance(value, float):
            return AnyValue(double_value=value)
        if isinstance(value, list):
            return AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value]))
        return AnyValue(string_value=str(value))

    def attrs(d: dict[str, Any]) -> list[Any]:
        return [KeyValue(key=k, value=any_value(v)) for k, v in d.items()]

    out = []
    for s in spans:
        span = trace_pb2.Span(
            trace_id=bytes.fromhex(s["trace_id"]),
            span_id=bytes.fromhex(s["span_id"]),
            name=s["name"],
            kind=s["kind"],
            start_time_unix_nano=s["start_ns"],
            end_time_unix_nano=s["end_ns"],
            attributes=attrs(s["attributes"]),
        )
        if s.get("parent_span_id"):
            span.parent_span_id = bytes.fromhex(s["parent_span_id"])
        if s.get("status"):
            span.status.code = s["status"]["code"]
            span.status.message = s["status"].get("message", "")
        out.append(span)
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=attrs(resource)),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name=scope[0], version=scope[1]),
                        spans=out,
                    )
                ],
            )
        ]
    )
    return request.SerializeToString()


def _otlp_rejected(headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """(rejected spans, message) of an OTLP partial success answer (JSON or protobuf)."""
    if not body:
        return 0, ""
    if "protobuf" in headers.get("content-type", ""):
        proto = _proto()
        if proto is None:
            return 0, ""
        resp = proto[0].ExportTraceServiceResponse()
        try:
            resp.ParseFromString(body)
        except Exception:  # noqa: BLE001 - an unreadable answer to a 2xx is a success
            return 0, ""
        ps = resp.partial_success
        return int(ps.rejected_spans), ps.error_message
    try:
        data = json.loads(body)
    except ValueError:
        return 0, ""
    ps = (
        (data.get("partialSuccess") or data.get("partial_success"))
        if isinstance(data, dict)
        else None
    )
    if not isinstance(ps, dict):
        return 0, ""
    try:
        rejected = int(ps.get("rejectedSpans") or ps.get("rejected_spans") or 0)
    except (TypeError, ValueError):
        rejected = 0
    return rejected, str(ps.get("errorMessage") or ps.get("error_message") or "")


# ------------------------------------------------------------------------ sink

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("llmitm")
    except Exception:  # noqa: BLE001 - not installed as a package
        return "0"


class LangfuseSink:
    """The pure part of ai-tracing (`exporters.sink.HttpSink`)."""

    def __init__(
        self,
        config: AiTracingConfig,
        key: str,
        *,
        encoding: Literal["protobuf", "json"] | None = None,
    ) -> None:
        self.config = config
        self.name = f"ai-tracing:{key}"
        self.enabled = config.langfuse_enabled
        self.protocol, self.url = resolve_endpoint(config.langfuse_endpoint, config.protocol)
        # items spooled under the other protocol (before a config change) still go to
        # their own endpoint on the same host
        base, _ = split_endpoint(config.langfuse_endpoint)
        self._urls = {OTEL: endpoint_url(base, OTEL), INGESTION: endpoint_url(base, INGESTION)}
        self.max_batch = OTEL_MAX_BATCH if self.protocol == OTEL else INGESTION_MAX_BATCH
        self.timeout = config.langfuse_timeout / 1000
        if encoding == "protobuf" and not protobuf_available():
            raise RuntimeError("OTLP protobuf needs the opentelemetry-proto package")
        self.encoding = encoding or ("protobuf" if protobuf_available() else "json")
        self.log = logging.getLogger(f"{__name__}.{re.sub(r'[^A-Za-z0-9_-]+', '_', key)}")
        self.log.setLevel(_LEVELS[config.log_level])
        self._version = _version()
        self._instance = str(uuid.uuid4())
        if not self.enabled:
            self.log.warning(
                "%s: langfuse_enabled is false: no trace is sent to Langfuse", self.name
            )

    @classmethod
    def from_config(cls, config: AiTracingConfig, key: str) -> LangfuseSink:
        return cls(config, key)

    # ------------------------------------------------------------------ items

    def items(self, record: CallRecord) -> list[Item]:
        """One span (otel) or a trace-create and a generation-create (ingestion) for
        each call through ai-proxy; nothing for other records or when disabled."""
        if not self.enabled or record.ai is None:
            return []
        facts = Facts(record, self.config)
        if self.protocol == OTEL:
            return [Item(OTEL, span_item(facts))]
        return [Item(INGESTION, event) for event in ingestion_items(facts)]

    # ---------------------------------------------------------------- request

    def _headers(self, content_type: str) -> dict[str, str]:
        user = f"{self.config.langfuse_public_key or ''}:{self.config.langfuse_secret_key or ''}"
        return {
            "Authorization": "Basic " + base64.b64encode(user.encode()).decode(),
            "Content-Type": content_type,
            "User-Agent": f"llmitm/{self._version}",
        }

    def resource(self) -> dict[str, Any]:
        """The OTLP resource of this gateway (the SDK's keys, our values)."""
        return _clean(
            {
                "service.name": "llmitm",
                "service.instance.id": self._instance,
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "llmitm",
                "telemetry.sdk.version": self._version,
                "langfuse.environment": self.config.environment,
                "langfuse.release": self.config.release,
            }
        )

    def request(self, channel: str, items: list[Item]) -> Prepared:
        """The request of the first `items` that fit in one (at least one):
        `Prepared.count` says how many."""
        if channel == OTEL:
            # each span's JSON: near its protobuf size, and no smaller
            count = fit([dumps(item.data) for item in items], OTEL_MAX_BYTES)
            spans = [item.data for item in items[:count]]
            scope = ("llmitm", self._version)
            if self.encoding == "protobuf":
                body = encode_protobuf(self.resource(), scope, spans)
                headers = self._headers("application/x-protobuf")
            else:
                body = encode_json(self.resource(), scope, spans)
                headers = self._headers("application/json")
            headers["Content-Encoding"] = "gzip"
            headers["x-langfuse-ingestion-version"] = "4"
            url = self._urls[OTEL]
            self.log.debug("%s: %d span(s) to %s", self.name, count, url)
            return Prepared("POST", url, headers, gzip.compress(body, compresslevel=1), count=count)
        if channel != INGESTION:
            raise ValueError(f"{self.name}: unknown channel {channel!r}")
        # Langfuse refuses batches over 3.5 MB: the rest go in the next request
        parts = [dumps(item.data) for item in items]
        count = fit(parts, INGESTION_MAX_BYTES, overhead=len(b'{"batch":[]}'))
        body = b'{"batch":[' + b",".join(parts[:count]) + b"]}"
        url = self._urls[INGESTION]
        self.log.debug("%s: %d event(s) to %s", self.name, count, url)
        return Prepared("POST", url, self._headers("application/json"), body, count=count)

    # ---------------------------------------------------------------- verdict

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        """The answer to `request(channel, items)` (`items`: those it carried)."""
        if not items or items[0].channel == OTEL:
            return self._otel_verdict(items, status, headers, body)
        if not 200 <= status < 300:
            return self._hint(default_verdict(items, status, headers, body), status)
        return self._multi_status(items, headers, body)

    def _hint(self, v: Verdict, status: int) -> Verdict:
        if status in (401, 403):
            v.reason += " (check langfuse_public_key and langfuse_secret_key)"
        elif status in (404, 405) or 300 <= status < 400:
            v.reason += " (check langfuse_endpoint)"
        return v

    def _otel_verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        v = self._hint(default_verdict(items, status, headers, body), status)
        if 200 <= status < 300:
            rejected, message = _otlp_rejected(headers, body)
            if rejected:
                # OTLP: a partial success is not retried; which spans it refused is not said
                self.log.warning(
                    "%s: Langfuse rejected %d of %d span(s): %s",
                    self.name,
                    rejected,
                    len(items),
                    message,
                )
                v.reason = f"{rejected} span(s) rejected: {message}"
        return v

    def _multi_status(self, sent: list[Item], headers: dict[str, str], body: bytes) -> Verdict:
        """Langfuse's 207: per event, a success or an error with its own status. Events
        that failed with a retryable status (or that the answer does not mention) are
        sent again, those refused for good are dropped."""
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("successes"), list):
            return Verdict()  # a 2xx without the multi-status body: Langfuse took the batch
        ok = {s.get("id") for s in data["successes"] if isinstance(s, dict)}
        errors: dict[str, dict[str, Any]] = {}
        for e in data.get("errors") or ():
            if isinstance(e, dict) and isinstance(e.get("id"), str):
                errors[e["id"]] = e
        retry: list[Item] = []
        dropped: list[Item] = []
        reasons: list[str] = []
        for item in sent:
            event_id = item.data.get("id")
            error = errors.get(event_id)
            if error is not None:
                code = error.get("status")
                code = code if isinstance(code, int) else 500
                what = f"{item.data.get('type')} {event_id}: {code} {_error_text(error)}"
                if code in _RETRYABLE or code >= 500:
                    retry.append(item)
                else:
                    dropped.append(item)
                reasons.append(what)
            elif event_id not in ok:
                retry.append(item)
                reasons.append(f"{item.data.get('type')} {event_id}: not in the answer")
        if reasons:
            self.log.warning(
                "%s: %d of %d event(s) not ingested: %s",
                self.name,
                len(retry) + len(dropped),
                len(sent),
                "; ".join(reasons[:5]),
            )
        return Verdict(
            retry=retry,
            dropped=dropped,
            retry_after=parse_retry_after(headers.get("retry-after")) if retry else None,
            reason="; ".join(reasons[:5]),
        )


def _error_text(error: dict[str, Any]) -> str:
    message = error.get("message")
    detail = error.get("error")
    text = " ".join(str(p) for p in (message, detail) if p)
    return text[:300]


def from_config(config: AiTracingConfig, key: str) -> LangfuseSink:
    """The sink of one configured ai-tracing plugin (`key`: the instance's stable id)."""
    return LangfuseSink(config, key)
