"""Getting records to a sink without ever making the proxy path wait.

`Delivery.submit` is a non-blocking append to a bounded in-memory queue; one task per
sink drains it in batches. A sink's `send` runs on that task, never in a hook.
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


class Delivery:
    """A bounded queue and a worker task for one sink."""

    def __init__(
        self, sink: Sink, *, batch_size: int = 500, capacity: int = 100_000, linger: float = 0.0
    ) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.capacity = capacity
        self.linger = linger
        self.stats = Stats()
        self._queue: deque[CallRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"llmitm delivery {self.sink.name}"
            )

    def submit(self, record: CallRecord) -> None:
        """Queue a record; never blocks and never raises."""
        self.stats.submitted += 1
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.stats.dropped += 1
            log.warning("%s: queue full, dropped the oldest record", self.sink.name)
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
            n = min(len(self._queue), self.batch_size)
            batch = [self._queue[i] for i in range(n)]
            try:
                await self.sink.send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a sink failure must not stop delivery
                self.stats.failed += n
                log.error("%s: could not deliver %d record(s): %s", self.sink.name, n, e)
            else:
                self.stats.sent += n
            for _ in range(n):
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
            log.error(
                "%s: %d record(s) not delivered at shutdown", self.sink.name, len(self._queue)
            )
        await self.sink.aclose()
