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
    #: encoded size in bytes, set by the delivery when it bounds its memory by bytes
    size: int = field(default=0, compare=False)


@dataclass(slots=True)
class Prepared:
    """One HTTP request for a batch of items of one channel.

    `count`: how many of the items given to `request()` the body carries, always the
    first ones (None: all of them). A sink whose requests have a byte cap puts in as
    many items as fit (at least one); the delivery sends the others in the next request
    at once, without counting a failure or a retry, and gives `verdict()` only the
    items this request carried."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    count: int | None = None


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
    - the sink refused the exporter's settings (a wrong key, a wrong URL: 401, 403,
      404, 405, 407, a redirect): `Verdict(retry=items, hold=True, reason=...)`. The
      items are kept (spooled) and tried again slowly, so that once the config is
      fixed (a reload) they are sent; an error with the reason is logged once.
    - the request was too large (413): `Verdict(retry=items, too_large=True)`. The
      delivery sends the batch again in halves; a single item still refused is dropped.
    """

    retry: list[Item] = field(default_factory=list)
    dropped: list[Item] = field(default_factory=list)
    retry_after: float | None = None
    reason: str = ""
    hold: bool = False
    too_large: bool = False


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
        """One request delivering `items` (all of `channel`), credentials included; a
        sink with a byte cap puts in the first items that fit and says how many in
        `Prepared.count` (the delivery sends the others next)."""
        ...

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        """Read the answer to a request that carried `items`. A transport failure (no
        answer) is retried by the delivery without asking the sink."""
        ...


#: answers that say the exporter's settings are wrong, not its items: a key refused
#: (401, 403, 407), a URL that is not the API (404, 405). Redirects (3xx) too: a sink
#: does not follow them (the request would lose its credentials or its body).
MISCONFIGURED = frozenset({401, 403, 404, 405, 407})

#: answers retried as they are (honouring Retry-After), with the 5xx
RETRYABLE = frozenset({408, 425, 429})


def misconfigured(status: int) -> bool:
    """Whether `status` says the sink's settings (key, URL) are wrong."""
    return status in MISCONFIGURED or 300 <= status < 400


def default_verdict(
    items: list[Item], status: int, headers: dict[str, str], body: bytes
) -> Verdict:
    """The usual reading: 2xx delivered; 408, 425, 429 and 5xx retried (honouring
    Retry-After); 401, 403, 404, 405, 407 and 3xx held (the settings are wrong: the
    items wait for a fixed config); 413 split; any other 4xx dropped, since sending it
    again would fail again."""
    if 200 <= status < 300:
        return Verdict()
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status in RETRYABLE or status >= 500:
        return Verdict(retry=list(items), retry_after=retry_after, reason=f"HTTP {status}")
    snippet = body[:300].decode("utf-8", "replace").strip()
    reason = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    if status == 413:
        return Verdict(retry=list(items), too_large=True, reason=reason)
    if misconfigured(status):
        if 300 <= status < 400:
            reason = f"HTTP {status}: redirected to {headers.get('location', 'elsewhere')}"
        return Verdict(retry=list(items), hold=True, reason=reason)
    return Verdict(dropped=list(items), reason=reason)


def fit(parts: list[bytes], max_bytes: int, overhead: int = 0, separator: int = 1) -> int:
    """How many of the encoded `parts`, from the first, fit in one request body of at
    most `max_bytes` (`overhead`: the bytes around them; `separator`: between two).
    Always at least one: an item larger than the cap is sent alone (and dropped if the
    sink answers 413)."""
    size = overhead
    for n, part in enumerate(parts):
        size += len(part) + (separator if n else 0)
        if n and size > max_bytes:
            return n
    return len(parts)


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
