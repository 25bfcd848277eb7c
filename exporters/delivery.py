"""Getting records to a local sink (file-log, the SQLite store) without ever making the
proxy path wait.

`Delivery.submit` is a non-blocking append to a bounded in-memory queue; one task per
sink drains it in batches. A sink's `send` runs on that task, never in a hook: it hands
the batch to the sink's writer thread and returns.

Bounds: the writer thread holds at most `max_pending` records handed over and not yet
written (the sink's own figure); while it is that far behind (a stalled disk), the
task stops handing over and records wait in the delivery's queue, which holds at most
`capacity` of them. Past that, the oldest record is dropped for each new one, and
counted: blocking the event loop is not an option, and the newest records say the most
about the gateway now (Kong's queues drop the oldest too).

Counts (`stats`, for /metrics and /status) are the sink's own when it keeps them: `sent`
is what reached the disk, `failed` what a write error lost (after the sink's retries),
`depth` what waits in the queue and in the writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from exporters.record import CallRecord

log = logging.getLogger(__name__)


class Sink(Protocol):
    """A local sink. It may keep counts of its own, which the delivery reports:
    `written` (records stored), `failed` (records lost to errors), `pending` (handed
    over, not yet written) and `max_pending` (how far behind it may fall)."""

    name: str

    async def send(self, records: list[CallRecord]) -> None:
        """Deliver a batch; raise to signal failure."""

    async def aclose(self) -> None: ...

    def close_sync(self) -> None:
        """Release resources without an event loop (used at interpreter exit)."""


@dataclass(slots=True)
class Stats:
    submitted: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0


#: seconds between two looks at a sink that is too far behind
BACKPRESSURE_POLL = 0.05


class Delivery:
    """A bounded queue and a worker task for one sink."""

    def __init__(
        self, sink: Sink, *, batch_size: int = 500, capacity: int = 10_000, linger: float = 0.0
    ) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.capacity = capacity
        self.linger = linger
        self._own = Stats()
        self._queue: deque[CallRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._full_logged = False

    @property
    def stats(self) -> Stats:
        """What happened to the records: the sink's own counts where it keeps them."""
        own = self._own
        written = getattr(self.sink, "written", None)
        return Stats(
            submitted=own.submitted,
            sent=own.sent if written is None else int(written),
            failed=own.failed + int(getattr(self.sink, "failed", 0) or 0),
            dropped=own.dropped,
        )

    @property
    def depth(self) -> int:
        """Records waiting: in the queue, and handed to the sink but not yet written."""
        return len(self._queue) + int(getattr(self.sink, "pending", 0) or 0)

    def _sink_full(self) -> bool:
        limit = getattr(self.sink, "max_pending", None)
        return limit is not None and int(getattr(self.sink, "pending", 0) or 0) >= limit

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"llmitm delivery {self.sink.name}"
            )

    def submit(self, record: CallRecord) -> None:
        """Queue a record; never blocks and never raises."""
        self._own.submitted += 1
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self._own.dropped += 1
            if not self._full_logged:  # once per episode: a stalled disk drops many
                self._full_logged = True
                log.error(
                    "%s: %d records wait (the writer is behind): dropping the oldest",
                    self.sink.name,
                    len(self._queue) + 1,
                )
        elif self._full_logged and len(self._queue) < self.capacity // 2:
            self._full_logged = False
        self._queue.append(record)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self.linger and len(self._queue) < self.batch_size:
                await asyncio.sleep(self.linger)
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        while self._queue:
            if self._sink_full():  # the writer is behind: wait, records queue here
                await asyncio.sleep(BACKPRESSURE_POLL)
                continue
            n = min(len(self._queue), self.batch_size)
            batch = [self._queue[i] for i in range(n)]
            try:
                await self.sink.send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a sink failure must not stop delivery
                self._own.failed += n
                log.error("%s: could not deliver %d record(s): %s", self.sink.name, n, e)
            else:
                self._own.sent += n
            for _ in range(min(n, len(self._queue))):
                self._queue.popleft()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within `timeout`), then stop and close the sink."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self._drain(), timeout)
        except TimeoutError:
            self._own.dropped += len(self._queue)
            log.error(
                "%s: %d record(s) not delivered at shutdown", self.sink.name, len(self._queue)
            )
            self._queue.clear()
        except Exception:
            log.exception("%s: could not deliver the queue at shutdown", self.sink.name)
        try:
            await self.sink.aclose()
        except Exception:
            log.exception("%s: could not close", self.sink.name)
