"""The call record: one per call through the gateway, failed ones included.

Close to Kong's log serializer (`ai.proxy.meta`, `ai.proxy.usage`, `ai.proxy.payload`,
`latencies`) so Kong users recognise it. Every exporter builds its sink's format from
this object. Provider secrets and client credentials never enter it: headers are
redacted when the record is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.base import Usage


@dataclass(slots=True)
class AIInfo:
    provider: str
    route_type: str
    request_model: str | None
    response_model: str | None
    stream: bool
    upstream_url: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    finish_reason: str | None = None
    time_to_first_token_ms: float | None = None
    llm_latency_ms: float | None = None
    log_statistics: bool = True
    # the request's sampling parameters (no content: always recorded, unlike payloads)
    request_params: dict[str, Any] = field(default_factory=dict)
    response_id: str | None = None
    request_payload: Any = None
    response_payload: Any = None

    @property
    def time_per_token_ms(self) -> float | None:
        if self.usage is None or not self.usage.completion_tokens or self.llm_latency_ms is None:
            return None
        return round(self.llm_latency_ms / self.usage.completion_tokens, 3)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "meta": {
                "provider_name": self.provider,
                "request_model": self.request_model,
                "response_model": self.response_model,
                "route_type": self.route_type,
                "request_mode": "stream" if self.stream else "oneshot",
                "llm_latency": self.llm_latency_ms,
                "upstream_url": self.upstream_url,
                "finish_reason": self.finish_reason,
                "response_id": self.response_id,
                "request_parameters": self.request_params,
            }
        }
        if self.log_statistics:
            u = self.usage
            out["usage"] = {
                "prompt_tokens": u.prompt_tokens if u else 0,
                "completion_tokens": u.completion_tokens if u else 0,
                "total_tokens": u.total_tokens if u else 0,
                "cache_read_tokens": u.cache_read_tokens if u else 0,
                "cache_write_tokens": u.cache_write_tokens if u else 0,
                "reasoning_tokens": u.reasoning_tokens if u else 0,
                "cost": self.cost,
                "time_to_first_token": self.time_to_first_token_ms,
                "time_per_token": self.time_per_token_ms,
                # "reported" by the provider, "estimated" by the gateway, or "none"
                "source": "none" if u is None else "estimated" if u.estimated else "reported",
            }
        if self.request_payload is not None or self.response_payload is not None:
            out["payload"] = {"request": self.request_payload, "response": self.response_payload}
        return out


@dataclass(slots=True)
class CallRecord:
    id: str
    started_at: float  # epoch seconds
    ended_at: float
    status: str  # "ok", "error" or "client_aborted"
    client_ip: str
    route: str | None
    service: str | None
    request: dict[str, Any]  # method, uri, size, headers (redacted)
    response: dict[str, Any]  # status, size
    latencies: dict[str, float | None]  # milliseconds
    # the consumer's name (username, else custom_id): what sinks label calls with
    consumer: str | None = None
    # the consumer as Kong's serializer writes it: its id, username and custom_id (the
    # ones it has); when unset, `consumer` stands for the username
    consumer_entity: dict[str, Any] | None = None
    upstream: dict[str, Any] | None = None
    ai: AIInfo | None = None
    context: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    # to_dict() as JSON, encoded once for every sink that writes the record whole
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def encoded(self) -> bytes:
        """The record as JSON (`to_dict()`, orjson), encoded at the first call and kept:
        a record is not changed once it is handed to the sinks. Raises orjson's
        TypeError for what it cannot encode (see addons.recorder.writable)."""
        if self._json is None:
            self._json = orjson.dumps(self.to_dict(), default=str)
        return self._json

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (what file-log writes, one per line)."""
        return {
            "id": self.id,
            "started_at": int(self.started_at * 1000),
            "ended_at": int(self.ended_at * 1000),
            "status": self.status,
            "client_ip": self.client_ip,
            "route": {"name": self.route} if self.route else None,
            "service": {"name": self.service} if self.service else None,
            "consumer": self.consumer_entity
            or ({"username": self.consumer} if self.consumer else None),
            "request": self.request,
            "response": self.response,
            "upstream": self.upstream,
            "latencies": self.latencies,
            "ai": {"proxy": self.ai.to_dict()} if self.ai else None,
            "context": self.context,
            "error": self.error,
        }
