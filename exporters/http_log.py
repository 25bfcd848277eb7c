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
from exporters.sink import Item, Prepared, Verdict, default_verdict, fit
from providers.options import Strict

#: the one channel of this sink
CHANNEL = "log"

#: most bytes of JSON in one request: a larger batch goes in several requests (and a
#: 413 splits it further)
MAX_REQUEST_BYTES = 4 * 1024 * 1024

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
        "(no effect with max_batch_size 1: each entry is sent at once).",
    )
    max_entries: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most entries waiting in memory; more go to the disk spool.",
    )
    max_bytes: int | None = Field(
        None,
        ge=1,
        description="Most bytes of entries (as JSON) waiting in memory; more go to the "
        "disk spool (unset: no limit but max_entries).",
    )
    max_retry_time: float | None = Field(
        None,
        description="Seconds of failed attempts after which a batch is given up (dropped, "
        "logged and counted); 0 or -1: no retry. Kong's default is 60; unset (llmitm's "
        "default): never give up, the entries wait in the disk spool until the endpoint "
        "takes them.",
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
        1,
        description="1: one request in flight, entries sent in order; -1: up to 8 "
        "requests in flight at once, in no particular order (for an endpoint slower than "
        "the traffic).",
    )

    @field_validator("max_retry_time")
    @classmethod
    def _retry_time(cls, value: float | None) -> float | None:
        if value is not None and value < 0 and value != -1:
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
        """The request of the first `items` that fit in `MAX_REQUEST_BYTES` (at least
        one): `Prepared.count` says how many."""
        if self.max_batch == 1:
            body = dumps(items[0].data)
            return Prepared(self.config.method, self._url, dict(self._headers), body, count=1)
        parts = [dumps(item.data) for item in items]
        count = fit(parts, MAX_REQUEST_BYTES, overhead=2)
        body = b"[" + b",".join(parts[:count]) + b"]"
        return Prepared(self.config.method, self._url, dict(self._headers), body, count=count)

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        v = default_verdict(items, status, headers, body)
        if v.hold:
            what = "headers" if status in (401, 403, 407) else "http_endpoint and method"
            v.reason += f" (check {what})"
        return v


def from_config(config: HttpLogConfig, key: str) -> HttpLogSink:
    """The sink of one configured http-log plugin (`key`: the instance's stable id)."""
    return HttpLogSink(config, key)
