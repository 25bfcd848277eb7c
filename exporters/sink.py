"""What an HTTP exporter (Opik, Langfuse, OTLP, http-log) provides: pure functions.

An HTTP sink turns a finished call record into events ("items": JSON-able dicts, no
secrets in them), and a batch of items of one channel into one HTTP request; it reads
the answer into a `Verdict`. Everything else (the bounded queue, batching, retries
with backoff, the disk spool, shutdown flush, counters) is `exporters.http_delivery`,
shared by every sink. A sink never does I/O itself, so it is tested without a server
and can never block mitmproxy's event loop.

Items are spooled to disk as they are when a sink is down and replayed later, possibly
by another process after a restart: they must be plain JSON (str, int, float, bool,
None, lists and dicts) and must not hold credentials. Credentials go into the request
`headers` that `request()` builds at send time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from exporters.record import CallRecord


@dataclass(slots=True)
class Item:
    """One event for a sink. `channel` picks the endpoint (Opik: "traces" or "spans");
    items of one channel are batched together, in the order they were made."""

    channel: str
    data: dict[str, Any]


@dataclass(slots=True)
class Prepared:
    """One HTTP request for a batch of items of one channel."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Verdict:
    """What happened to a batch, as the sink reads the answer.

    - everything delivered: `Verdict()`
    - retry the whole batch (a 5xx, a 429, a timeout): `Verdict(retry=items)`, with
      `retry_after` (seconds) when the server said how long to wait
    - some items failed for good (a 4xx that would fail again, a 207 entry with a
      400): `Verdict(dropped=[...], reason="...")`; they are logged and counted,
      never retried
    - a partial success (Langfuse's 207): `retry` holds the items to send again,
      `dropped` those to give up on; the others were delivered.
    """

    retry: list[Item] = field(default_factory=list)
    dropped: list[Item] = field(default_factory=list)
    retry_after: float | None = None
    reason: str = ""


class HttpSink(Protocol):
    #: unique and stable per configured instance (it names the spool directory)
    name: str
    #: most items of one channel in one request (Opik: 1000)
    max_batch: int
    #: seconds one request may take before it counts as failed (retried)
    timeout: float

    def items(self, record: CallRecord) -> list[Item]:
        """The events of one call (pure; may be empty for records the sink skips)."""
        ...

    def request(self, channel: str, items: list[Item]) -> Prepared:
        """One request delivering `items` (all of `channel`), credentials included."""
        ...

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        """Read the answer to `request(channel, items)`. A transport failure (no
        answer) is retried by the delivery without asking the sink."""
        ...


def default_verdict(
    items: list[Item], status: int, headers: dict[str, str], body: bytes
) -> Verdict:
    """The usual reading: 2xx delivered; 408, 425, 429 and 5xx retried (honouring
    Retry-After); any other 4xx dropped, since sending it again would fail again."""
    if 200 <= status < 300:
        return Verdict()
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status in (408, 425, 429) or status >= 500:
        return Verdict(retry=list(items), retry_after=retry_after, reason=f"HTTP {status}")
    snippet = body[:300].decode("utf-8", "replace")
    return Verdict(dropped=list(items), reason=f"HTTP {status}: {snippet}")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delta-seconds form; an HTTP date is read too)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when.timestamp() - time.time())
