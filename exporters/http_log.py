"""Kong's http-log: each call record, as JSON, to an HTTP endpoint of your own.

The body is the record in Kong's log shape (`CallRecord.to_dict()`, what file-log
writes). Like Kong, a queue with `max_batch_size: 1` (the default) sends each record as
the JSON object itself; a larger `max_batch_size` always sends a JSON array of records,
even when a batch happens to hold only one. The queue, retries and spool are the shared
delivery's (`exporters.http_delivery`); this module is the pure part: the config block,
the items and the request.

Credentials (configured `headers`, user info in `http_endpoint`) go only into the
request headers built at send time, never into the items that may be spooled to disk.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson
from pydantic import Field, field_validator, model_validator

from exporters.record import CallRecord
from exporters.sink import Item, Prepared, Verdict, default_verdict
from providers.options import Strict

#: the one channel of this sink
CHANNEL = "log"

# an HTTP header name (RFC 9110 token), as Kong's `typedefs.header_name` accepts
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


class QueueConfig(Strict):
    """Kong's `queue` block (kong/tools/queue_schema.lua): how a log plugin's entries
    are batched and retried. The shared delivery reads it from the sink's `queue`."""

    max_batch_size: int = Field(
        1, ge=1, le=1_000_000, description="Most entries sent in one request."
    )
    max_coalescing_delay: float = Field(
        1,
        ge=0,
        le=3600,
        description="Seconds to wait after the first entry for more to join its batch "
        "(no effect with max_batch_size 1).",
    )
    max_entries: int = Field(
        10_000, ge=1, le=1_000_000, description="Most entries waiting in memory."
    )
    max_bytes: int | None = Field(
        None, ge=1, description="Most bytes of entries waiting in memory (unset: no limit)."
    )
    max_retry_time: float = Field(
        60,
        description="Seconds before giving up on a failing batch; -1: never retry.",
    )
    initial_retry_delay: float = Field(
        0.01, ge=0.001, le=1_000_000, description="Seconds before the first retry."
    )
    max_retry_delay: float = Field(
        60,
        ge=0.001,
        le=1_000_000,
        description="Most seconds between retries (the delay doubles up to this).",
    )
    concurrency_limit: Literal[-1, 1] = Field(
        1, description="Requests in flight at once: 1, or -1 for no limit."
    )

    @field_validator("max_retry_time")
    @classmethod
    def _retry_time(cls, value: float) -> float:
        if value < 0 and value != -1:
            raise ValueError("must be -1 (no retries) or at least 0")
        return value


def check_headers(headers: dict[str, str] | None, forbidden: tuple[str, ...] = ()) -> None:
    """Kong's checks on a `headers` map: valid names, non-empty values, none of
    `forbidden` (case-insensitive). Values are never quoted: they may be secrets."""
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in forbidden:
            raise ValueError(f"cannot contain {name!r} header")
        if not value:
            raise ValueError(f"the value of {name!r} must not be empty")
        if "\r" in value or "\n" in value:
            raise ValueError(f"the value of {name!r} must be one line")


def check_url(url: str, field: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{field} has an invalid port") from None


class HttpLogConfig(Strict):
    """Kong's http-log: every call record as JSON to an HTTP endpoint."""

    http_endpoint: str = Field(
        description="Where records are sent. User info (https://user:pass@host/...) is "
        "sent as Basic auth."
    )
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    content_type: Literal["application/json", "application/json; charset=utf-8"] = (
        "application/json"
    )
    timeout: float = Field(
        10_000, gt=0, description="Milliseconds one request may take before it is retried."
    )
    keepalive: float = Field(
        60_000, ge=0, description="Milliseconds an idle connection to the endpoint is kept."
    )
    headers: dict[str, str] | None = Field(
        None,
        description="Headers sent with every request (e.g. credentials; vault references "
        "are resolved). Host, Content-Length and Content-Type are not allowed.",
    )
    queue: QueueConfig = Field(default_factory=QueueConfig)
    custom_fields_by_lua: dict[str, str] | None = Field(
        None, description="Not supported: llmitm runs no Lua. Leave unset."
    )

    @field_validator("http_endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        check_url(url, "http_endpoint")
        return url

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        check_headers(headers, ("host", "content-length", "content-type"))
        return headers

    @field_validator("custom_fields_by_lua")
    @classmethod
    def _no_lua(cls, fields: dict[str, str] | None) -> dict[str, str] | None:
        if fields:
            raise ValueError(
                "is not supported: llmitm runs no Lua code (the record already holds "
                "the route, consumer, usage and context fields)"
            )
        return fields

    @model_validator(mode="after")
    def _one_authorization(self) -> HttpLogConfig:
        userinfo = urlsplit(self.http_endpoint).username is not None
        if userinfo and any(h.lower() == "authorization" for h in self.headers or {}):
            raise ValueError(
                "specifying both an 'Authorization' header and user info in "
                "'http_endpoint' is not allowed"
            )
        return self


def dumps(data: Any) -> bytes:
    """JSON bytes; integers beyond 64 bits (kept by the json module in payloads) fall
    back to the json module, which writes them exactly."""
    try:
        return orjson.dumps(data, default=str)
    except TypeError:
        return json.dumps(data, default=str, ensure_ascii=False, separators=(",", ":")).encode()


class HttpLogSink:
    """The pure part of http-log (`exporters.sink.HttpSink`)."""

    def __init__(self, config: HttpLogConfig, key: str) -> None:
        self.config = config
        self.name = f"http-log:{key}"
        self.queue = config.queue
        self.max_batch = config.queue.max_batch_size
        self.timeout = config.timeout / 1000
        #: seconds an idle connection is kept (Kong's `keepalive`)
        self.keepalive = config.keepalive / 1000
        parts = urlsplit(config.http_endpoint)
        headers = dict(config.headers or {})
        if parts.username is not None:
            userinfo = unquote(parts.username) + ":" + unquote(parts.password or "")
            token = base64.b64encode(userinfo.encode()).decode()
            headers["Authorization"] = f"Basic {token}"
            netloc = parts.hostname or ""
            if ":" in netloc:  # an IPv6 literal
                netloc = f"[{netloc}]"
            if parts.port is not None:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        headers["Content-Type"] = config.content_type
        self._url = urlunsplit(parts._replace(path=parts.path or "/"))
        self._headers = headers

    @classmethod
    def from_config(cls, config: HttpLogConfig, key: str) -> HttpLogSink:
        return cls(config, key)

    def items(self, record: CallRecord) -> list[Item]:
        return [Item(CHANNEL, record.to_dict())]

    def request(self, channel: str, items: list[Item]) -> Prepared:
        if self.max_batch == 1 and len(items) == 1:
            body = dumps(items[0].data)
        else:
            body = b"[" + b",".join(dumps(item.data) for item in items) + b"]"
        return Prepared(self.config.method, self._url, dict(self._headers), body)

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        return default_verdict(items, status, headers, body)


def from_config(config: HttpLogConfig, key: str) -> HttpLogSink:
    """The sink of one configured http-log plugin (`key`: the instance's stable id)."""
    return HttpLogSink(config, key)
