"""Delivering call records to an HTTP sink: never blocking the proxy, never losing one.

`HttpDelivery.submit` only appends the record to a list (no I/O, no await) and wakes
the delivery's tasks, which do everything else on mitmproxy's event loop without ever
holding it:

- the intake task turns records into the sink's items (`HttpSink.items`) and puts them
  in one lane per channel (Opik: traces and spans);
- each lane has a sender task that sends batches of up to `max_batch` items with one
  reused httpx client, reads the answer through `HttpSink.verdict`, and retries with
  exponential backoff and full jitter (never sooner than a Retry-After), giving up only
  on items the sink says would fail again (a 4xx), which are logged and counted;
- a lane whose sink keeps failing (`spool_after` failed attempts in a row) or whose
  memory queue is full (`capacity` items) moves its items to its disk spool
  (`exporters.spool`, written in a worker thread); from then on new items are spooled
  behind them and the sender replays the spool in order, so memory stays bounded
  however long the sink is down, and items spooled by a previous run are sent first
  after a restart;
- `aclose` (at shutdown) sends what it can within a time limit and spools the rest.

The spool directory is named by `spool_name` (the plugin and its scope), not by the
sink's config, so a config edit (a fixed API key, a new endpoint) does not orphan what
the old config spooled: the new delivery is given the old one's closing as `after`, and
opens the spool only once the old one has finished with it.

Guarantee: at least once. An item is removed from memory or the spool only after the
sink accepted it (or said it never will); an item can be sent twice only if the process
dies between a sink's answer and the spool's bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import httpx

from exporters.record import CallRecord
from exporters.sink import HttpSink, Item, Verdict
from exporters.spool import Spool

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HttpStats:
    submitted: int = 0  # records handed to the delivery
    sent: int = 0  # items the sink accepted
    retried: int = 0  # items sent again after a failed attempt
    spooled: int = 0  # items written to the disk spool
    dropped: int = 0  # items given up on (the sink refused them, or the spool was full)
    failed_requests: int = 0


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "sink"


class _Lane:
    """The items of one channel: in memory, in flight, and on disk."""

    def __init__(self, channel: str, spool: Spool) -> None:
        self.channel = channel
        self.mem: deque[Item] = deque()
        self.spool = spool
        self.spooling = False  # items go to the spool (it holds older ones)
        self.failures = 0  # failed attempts in a row
        self.not_before = 0.0  # monotonic time of the next attempt
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a request is in flight
        self.inflight = 0  # items at the front of `mem` that the request in flight carries

    @property
    def depth(self) -> int:
        return len(self.mem) + self.spool.pending


class HttpDelivery:
    def __init__(
        self,
        sink: HttpSink,
        spool_dir: Path,
        *,
        capacity: int = 10_000,
        linger: float = 0.2,
        initial_retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        spool_after: int = 3,
        spool_max_bytes: int = 1024**3,
        client: httpx.AsyncClient | None = None,
        spool_name: str | None = None,
        after: asyncio.Future[object] | None = None,
    ) -> None:
        self.sink = sink
        self.capacity = capacity
        self.linger = linger
        self.initial_retry_delay = initial_retry_delay
        self.max_retry_delay = max_retry_delay
        self.spool_after = spool_after
        self.spool_max_bytes = spool_max_bytes
        self.stats = HttpStats()
        self.spool_name = spool_name or sink.name
        self._dir = spool_dir / _safe(self.spool_name)
        # the delivery this one replaces, still draining into the same spool
        self._after = after
        self._records: list[CallRecord] = []
        self._lanes: dict[str, _Lane] = {}
        # lanes being made (their spool loading): a second caller waits for the first
        self._creating: dict[str, asyncio.Future[_Lane]] = {}
        self._wake = asyncio.Event()
        self._intake: asyncio.Task[None] | None = None
        self._client = client
        self._own_client = client is None
        self._closing = False
        self._started = False
        self._loading: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- public

    @property
    def depth(self) -> int:
        return len(self._records) + sum(lane.depth for lane in self._lanes.values())

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.sink.timeout,
                trust_env=False,  # an HTTPS_PROXY meant for apps must not loop us through ourselves
                limits=httpx.Limits(
                    max_keepalive_connections=4,
                    keepalive_expiry=getattr(self.sink, "keepalive", 60.0),
                ),
            )
        loop = asyncio.get_running_loop()
        self._intake = loop.create_task(self._run_intake(), name=f"llmitm export {self.sink.name}")
        self._loading = loop.create_task(self.load_spools(), name=f"llmitm spools {self.sink.name}")

    def submit(self, record: CallRecord) -> None:
        """Hand over a record: never blocks, never raises, never does I/O."""
        self.stats.submitted += 1
        self._records.append(record)
        self._wake.set()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Send what can be sent within `timeout`, spool the rest, stop."""
        self._closing = True
        deadline = time.monotonic() + timeout
        if self._intake is not None:
            self._intake.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._intake
        await self._take_records()
        for lane in self._lanes.values():  # one more try now, whatever the backoff said
            lane.not_before = 0.0
            lane.wake.set()
        while any(lane.mem or lane.busy for lane in self._lanes.values()):
            if time.monotonic() >= deadline or all(
                lane.failures and not lane.busy for lane in self._lanes.values() if lane.mem
            ):
                break
            await asyncio.sleep(0.01)
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
            if lane.mem:
                left = len(lane.mem)
                await self._spill(lane)
                log.warning(
                    "%s: %d %s item(s) not delivered before shutdown: spooled to %s",
                    self.sink.name,
                    left,
                    lane.channel,
                    lane.spool.dir,
                )
        if self._own_client and self._client is not None:
            await self._client.aclose()

    # ---------------------------------------------------------------- intake

    async def _run_intake(self) -> None:
        while True:
            await self._wake.wait()
            if self.linger:
                await asyncio.sleep(self.linger)
            self._wake.clear()
            await self._take_records()

    async def _take_records(self) -> None:
        records, self._records = self._records, []
        by_channel: dict[str, list[Item]] = {}
        for record in records:
            try:
                items = self.sink.items(record)
            except Exception:  # one bad record must not stop the others
                log.exception(
                    "%s: could not build the events of record %s", self.sink.name, record.id
                )
                continue
            for item in items:
                by_channel.setdefault(item.channel, []).append(item)
        for channel, items in by_channel.items():
            lane = await self._lane(channel)
            if lane.spooling:
                await self._to_spool(lane, items)
            else:
                lane.mem.extend(items)
                if len(lane.mem) > self.capacity:
                    log.warning(
                        "%s: %d %s item(s) waiting: the rest go to the disk spool",
                        self.sink.name,
                        len(lane.mem),
                        channel,
                    )
                    await self._spill(lane)
            lane.wake.set()

    async def _lane(self, channel: str) -> _Lane:
        lane = self._lanes.get(channel)
        if lane is None:
            if self._after is not None:
                # not `await self._after`: cancelling this task must not cancel that one
                await asyncio.wait([self._after])
                self._after = None
                lane = self._lanes.get(channel)  # made by another caller meanwhile
                if lane is not None:
                    return lane
            creating = self._creating
            if channel in creating:
                return await asyncio.shield(creating[channel])
            fut = creating[channel] = asyncio.get_running_loop().create_future()
            spool = Spool(self._dir / _safe(channel), self.spool_max_bytes)
            try:
                pending = await asyncio.to_thread(spool.load)
            except BaseException as e:
                del creating[channel]
                fut.set_exception(e)
                raise
            lane = self._lanes[channel] = _Lane(channel, spool)
            del creating[channel]
            fut.set_result(lane)
            if pending:
                lane.spooling = True
                log.info(
                    "%s: %d %s item(s) spooled earlier: replaying them first",
                    self.sink.name,
                    pending,
                    channel,
                )
            lane.task = asyncio.get_running_loop().create_task(
                self._run_lane(lane), name=f"llmitm export {self.sink.name} {channel}"
            )
        return lane

    async def load_spools(self) -> None:
        """Open the spools a previous run left (so their items are sent without waiting
        for a new record of that channel)."""
        if self._after is not None:
            await asyncio.wait([self._after])  # the spool may get its last items now
            self._after = None
        if not self._dir.exists():
            return
        channels = await asyncio.to_thread(
            lambda: [p.name for p in self._dir.iterdir() if p.is_dir()]
        )
        for channel in channels:
            lane = await self._lane(channel)
            lane.wake.set()

    # ----------------------------------------------------------------- spool

    async def _spill(self, lane: _Lane) -> None:
        """Move the lane's memory queue to the end of its spool (order kept), but for the
        items of a request in flight, which its answer will settle."""
        keep = lane.inflight if lane.busy else 0
        items = list(lane.mem)[keep:]
        while len(lane.mem) > keep:
            lane.mem.pop()
        lane.spooling = True
        await self._to_spool(lane, items)

    async def _to_spool(self, lane: _Lane, items: list[Item]) -> None:
        if not items:
            return
        refused = await asyncio.to_thread(lane.spool.append, [it.data for it in items])
        if lane.spool.pending:
            # the spool holds items: they go from there, in order, whatever `_step`
            # decided while this append ran in its thread
            lane.spooling = True
        self.stats.spooled += len(items) - refused
        if refused:
            self.stats.dropped += refused
            log.error(
                "%s: the spool in %s is full (%d bytes): %d item(s) dropped",
                self.sink.name,
                lane.spool.dir,
                lane.spool.max_bytes,
                refused,
            )

    # ---------------------------------------------------------------- sending

    async def _run_lane(self, lane: _Lane) -> None:
        while True:
            wait = lane.not_before - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.wake.wait(), wait)
                if lane.not_before > time.monotonic():
                    lane.wake.clear()
                    continue
            if not lane.mem and not lane.spool.pending:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            await self._step(lane)

    async def _step(self, lane: _Lane) -> None:
        max_batch = max(1, self.sink.max_batch)
        if lane.spooling and lane.mem:
            # items kept in memory when spooling began (a request's, in flight then):
            # older than everything in the spool, so they go first, from memory
            batch = [lane.mem[i] for i in range(min(max_batch, len(lane.mem)))]
            from_spool = False
        elif lane.spooling:
            data = await asyncio.to_thread(lane.spool.peek, max_batch)
            if not data:
                lane.spooling = bool(lane.spool.pending)
                return
            batch = [Item(lane.channel, d) for d in data]
            from_spool = True
        else:
            batch = [lane.mem[i] for i in range(min(max_batch, len(lane.mem)))]
            from_spool = False
        lane.busy = True
        lane.inflight = 0 if from_spool else len(batch)
        try:
            verdict = await self._send(lane.channel, batch)
        finally:
            lane.busy = False
            lane.inflight = 0
        retry = verdict.retry
        if verdict.reason and not retry and not verdict.dropped:  # accepted, with a remark
            log.warning("%s: %s", self.sink.name, verdict.reason)
        delivered = len(batch) - len(retry) - len(verdict.dropped)
        self.stats.sent += max(delivered, 0)
        if verdict.dropped:
            self.stats.dropped += len(verdict.dropped)
            log.error(
                "%s: %d %s item(s) refused, not retried: %s",
                self.sink.name,
                len(verdict.dropped),
                lane.channel,
                verdict.reason,
            )
        if retry and len(retry) == len(batch):  # nothing went through: back off, same batch
            self._failed(lane, verdict)
            if not from_spool and not lane.spooling and lane.failures >= self.spool_after:
                log.warning(
                    "%s: %s failing (%s): spooling to %s until it recovers",
                    self.sink.name,
                    lane.channel,
                    verdict.reason,
                    lane.spool.dir,
                )
                await self._spill(lane)
            return
        # the batch is done with, but for a partial retry
        if from_spool:
            await asyncio.to_thread(lane.spool.advance, len(batch))
            if not lane.spool.pending:
                lane.spooling = False
        else:
            for _ in range(len(batch)):
                lane.mem.popleft()
        lane.failures = 0
        lane.not_before = 0.0
        if retry:
            if from_spool:
                await self._to_spool(lane, retry)
            else:
                lane.mem.extendleft(reversed(retry))
            self._failed(lane, verdict)

    def _failed(self, lane: _Lane, verdict: Verdict) -> None:
        lane.failures += 1
        self.stats.failed_requests += 1
        self.stats.retried += len(verdict.retry)
        delay = min(self.max_retry_delay, self.initial_retry_delay * 2 ** (lane.failures - 1))
        delay = random.uniform(delay / 2, delay)  # jitter: senders that failed together spread out
        if verdict.retry_after is not None:
            delay = max(delay, min(verdict.retry_after, 3600.0))
        lane.not_before = time.monotonic() + delay
        log.warning(
            "%s: %d %s item(s) not delivered (%s): retrying in %.1fs",
            self.sink.name,
            len(verdict.retry),
            lane.channel,
            verdict.reason,
            delay,
        )

    async def _send(self, channel: str, batch: list[Item]) -> Verdict:
        assert self._client is not None
        try:
            # encoding a batch (JSON, protobuf, gzip) can take tens of milliseconds:
            # in a worker thread, so that the event loop keeps serving calls meanwhile
            prepared = await asyncio.to_thread(self.sink.request, channel, batch)
        except Exception as e:  # a sink bug drops this batch, not the delivery
            log.exception("%s: could not build a request", self.sink.name)
            return Verdict(dropped=list(batch), reason=f"request could not be built: {e}")
        try:
            resp = await self._client.request(
                prepared.method,
                prepared.url,
                headers=prepared.headers,
                content=prepared.body,
                timeout=self.sink.timeout,
            )
        except httpx.HTTPError as e:
            return Verdict(retry=list(batch), reason=f"{type(e).__name__}: {e}")
        headers = {k.lower(): v for k, v in resp.headers.items()}
        try:
            return self.sink.verdict(batch, resp.status_code, headers, resp.content)
        except Exception as e:  # a sink bug: the batch is retried
            log.exception("%s: could not read the answer", self.sink.name)
            return Verdict(retry=list(batch), reason=f"answer could not be read: {e}")
