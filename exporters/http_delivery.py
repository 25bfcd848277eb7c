"""Delivering call records to an HTTP sink: never blocking the proxy, never losing one.

`HttpDelivery.submit` only appends the record to a list (no I/O, no await) and wakes
the delivery's tasks, which do everything else on mitmproxy's event loop without ever
holding it (blocking work runs in the exporters' own threads, `exporters._threads`):

- the intake task turns records into the sink's items (`HttpSink.items`) and puts them
  in one lane per channel (Opik: traces and spans);
- each lane has a sender task that sends batches of up to `max_batch` items (and, for
  sinks with a byte cap, as many as fit: the rest go in the next request at once) with
  one reused httpx client, reads the answer through `HttpSink.verdict`, and retries
  with exponential backoff and full jitter (never sooner than a Retry-After), giving
  up only on items the sink says would fail again (a 4xx), which are logged and
  counted;
- a 413 splits the batch in halves (a lane then sends at most that many items a
  request); a single item still too large is dropped, logged and counted;
- an answer that refuses the exporter's settings (401, 403, 404, 405, 407, 3xx: a
  wrong key or URL) keeps the items: they go to the spool, an error is logged once,
  and the lane tries again every `max_retry_delay` until the sink accepts them or a
  reloaded config (a new delivery on the same spool) sends them;
- a lane whose sink keeps failing (`spool_after` failed attempts in a row) or whose
  memory queue is full (`capacity` items, or `max_bytes` bytes) moves its items to its
  disk spool (`exporters.spool`); from then on new items are spooled behind them and
  the sender replays the spool in order, so memory stays bounded however long the sink
  is down, and items spooled by a previous run are sent first after a restart;
- `max_retry_time` (Kong's queue field; unset by default) gives up on a batch that has
  failed for that many seconds: it is dropped, logged and counted;
- `senders` > 1 (Kong's `concurrency_limit: -1`) gives a channel that many lanes, each
  with its own spool, so that as many requests are in flight at once; items then
  arrive in no particular order;
- an unexpected error in a lane is logged and the lane goes on after a backoff: a
  lane never dies;
- `aclose` (at shutdown) gives every lane one more try, then sends what is in memory
  and in the spool while the sink accepts it, within a time limit; the rest stays in
  (or goes to) the spool for the next start. It never raises.

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

from exporters._threads import run_blocking
from exporters.record import CallRecord
from exporters.sink import HttpSink, Item, Verdict
from exporters.spool import Spool, encoded

log = logging.getLogger(__name__)

#: the backoff's exponent stops growing here (the delay is capped long before)
MAX_EXPONENT = 32

#: lanes per channel with Kong's `concurrency_limit: -1` (requests in flight at once)
PARALLEL_SENDERS = 8


@dataclass(slots=True)
class HttpStats:
    submitted: int = 0  # records handed to the delivery
    sent: int = 0  # items the sink accepted
    retried: int = 0  # items sent again after a failed attempt
    spooled: int = 0  # items written to the disk spool
    dropped: int = 0  # items given up on (all the reasons below, and a 4xx refusal)
    failed_requests: int = 0
    refused_requests: int = 0  # requests refused for the settings (401, 403, 404, 3xx...)
    expired: int = 0  # items dropped after `max_retry_time` of failed attempts
    too_large: int = 0  # items dropped because even alone they got a 413
    corrupt: int = 0  # spool lines that could not be read (skipped)
    misconfigured: bool = False  # the sink's last answer refused the settings


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "sink"


def _size(item: Item) -> int:
    """The item's size as JSON (what `max_bytes` counts)."""
    try:
        return len(encoded(item.data))
    except (TypeError, ValueError):  # not plain JSON: the sink's encoder will say
        return len(str(item.data))


def _channel(key: str) -> str:
    """The channel of a lane key: "log.3" (one of several senders) is channel "log"."""
    base, dot, n = key.rpartition(".")
    return base if dot and n.isdigit() else key


class _Lane:
    """The items of one channel (or one sender of it): in memory, in flight, on disk."""

    def __init__(self, channel: str, key: str, spool: Spool) -> None:
        self.channel = channel
        self.key = key
        self.mem: deque[Item] = deque()
        self.mem_bytes = 0  # encoded size of `mem` (counted only with `max_bytes`)
        self.spool = spool
        self.spooling = False  # items go to the spool (it holds older ones)
        self.failures = 0  # failed attempts in a row
        self.failing_since: float | None = None  # monotonic time of the batch's first failure
        self.not_before = 0.0  # monotonic time of the next attempt
        self.cap: int | None = None  # most items a request, learned from a 413
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a request is in flight
        self.inflight = 0  # items at the front of `mem` that the request in flight carries
        self.close_failed = False  # an attempt failed since `aclose` began
        self.error_logged = False  # an unexpected error was logged (once per streak)

    @property
    def depth(self) -> int:
        return len(self.mem) + self.spool.pending

    @property
    def has_work(self) -> bool:
        return self.busy or bool(self.mem) or self.spool.pending > 0


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
        max_bytes: int | None = None,
        max_retry_time: float | None = None,
        senders: int = 1,
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
        self.max_bytes = max_bytes
        self.max_retry_time = max_retry_time
        self.senders = max(1, senders)
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
        self._taking: asyncio.Task[None] | None = None  # the intake's current take
        self._held_logged = False  # the "settings refused" error was logged
        self._corrupt_logged = False

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
                    max_keepalive_connections=max(4, self.senders),
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
        """Give each lane one more try, then send what memory and the spool hold while
        the sink accepts it, within `timeout`; spool the rest and stop. Never raises
        (but for its own cancellation): a shutdown must go on whatever a sink did."""
        try:
            await self._close(timeout)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: could not close cleanly", self.sink.name)

    async def _close(self, timeout: float) -> None:
        self._closing = True
        deadline = time.monotonic() + timeout
        if self._intake is not None:
            self._intake.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._intake
        if self._taking is not None:
            # a take holds records it has taken out of `_records`: let it queue them
            # (its lanes' spools are opening), or they would be lost
            with contextlib.suppress(Exception):
                await self._taking
        if self._loading is not None and not self._loading.done():
            # the spools of a previous run: their lanes drain too
            await asyncio.wait([self._loading], timeout=max(0.0, deadline - time.monotonic()))
            self._loading.cancel()
        await self._take_records()
        for lane in self._lanes.values():  # one more try now, whatever the backoff said
            lane.close_failed = False
            lane.not_before = 0.0
            lane.wake.set()
        while time.monotonic() < deadline:
            # let the lanes run first: a lane that failed before the shutdown began must
            # get its try before it is judged
            await asyncio.sleep(0)
            working = [lane for lane in self._lanes.values() if lane.has_work]
            if not working or all(lane.close_failed and not lane.busy for lane in working):
                break
            await asyncio.sleep(0.01)
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lane.task
            if lane.mem:
                left = len(lane.mem)
                lane.busy = False  # the request in flight was cancelled: its items too
                try:
                    await self._spill(lane)
                except Exception:
                    log.exception(
                        "%s: %d %s item(s) could not be spooled at shutdown",
                        self.sink.name,
                        left,
                        lane.channel,
                    )
                    continue
                log.warning(
                    "%s: %d %s item(s) not delivered before shutdown: spooled to %s",
                    self.sink.name,
                    left,
                    lane.channel,
                    lane.spool.dir,
                )
        left = sum(lane.spool.pending for lane in self._lanes.values())
        if left:
            log.warning(
                "%s: %d item(s) left in the spool (%s): the next start or config of this "
                "plugin sends them",
                self.sink.name,
                left,
                self._dir,
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
            # shielded: cancelling the intake (at close) must not cancel a take halfway,
            # with its records out of `_records` and not yet in a lane; `_close` awaits it
            self._taking = asyncio.ensure_future(self._take_records())
            await asyncio.shield(self._taking)
            self._taking = None

    async def _take_records(self) -> None:
        """Turn the records handed over into items, and queue them in their lanes.
        Never raises: a failure loses (and counts) only the items it concerns."""
        records, self._records = self._records, []
        by_channel: dict[str, list[Item]] = {}
        for record in records:
            try:
                items = self.sink.items(record)
            except Exception:  # one bad record must not stop the others
                self.stats.dropped += 1
                log.exception(
                    "%s: could not build the events of record %s: dropped",
                    self.sink.name,
                    record.id,
                )
                continue
            for item in items:
                by_channel.setdefault(item.channel, []).append(item)
        for channel, items in by_channel.items():
            try:
                await self._queue(channel, items)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.dropped += len(items)
                log.exception(
                    "%s: could not queue %d %s item(s): dropped",
                    self.sink.name,
                    len(items),
                    channel,
                )

    async def _queue(self, channel: str, items: list[Item]) -> None:
        if self.max_bytes is not None:
            for item in items:
                item.size = _size(item)
        if self.senders == 1:
            await self._put(await self._lane(channel), items)
            return
        lanes = [await self._lane(f"{channel}.{i}") for i in range(self.senders)]
        load = {lane.key: lane.depth + (1 if lane.busy else 0) for lane in lanes}
        share: dict[str, list[Item]] = {}
        for item in items:  # each to the least loaded sender
            lane = min(lanes, key=lambda la: load[la.key])
            load[lane.key] += 1
            share.setdefault(lane.key, []).append(item)
        for lane in lanes:
            if lane.key in share:
                await self._put(lane, share[lane.key])

    async def _put(self, lane: _Lane, items: list[Item]) -> None:
        if lane.spooling:
            await self._to_spool(lane, items)
        else:
            lane.mem.extend(items)
            lane.mem_bytes += sum(it.size for it in items)
            if len(lane.mem) > self.capacity:
                log.warning(
                    "%s: %d %s item(s) waiting: the rest go to the disk spool",
                    self.sink.name,
                    len(lane.mem),
                    lane.channel,
                )
                await self._spill(lane)
            elif self.max_bytes is not None and self._mem_bytes() > self.max_bytes:
                log.warning(
                    "%s: %d bytes of items waiting (queue.max_bytes %d): the rest go to "
                    "the disk spool",
                    self.sink.name,
                    self._mem_bytes(),
                    self.max_bytes,
                )
                await self._spill(lane)
        lane.wake.set()

    def _mem_bytes(self) -> int:
        return sum(lane.mem_bytes for lane in self._lanes.values())

    async def _lane(self, key: str) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            if self._after is not None:
                # not `await self._after`: cancelling this task must not cancel that one
                await asyncio.wait([self._after])
                self._after = None
                lane = self._lanes.get(key)  # made by another caller meanwhile
                if lane is not None:
                    return lane
            creating = self._creating
            if key in creating:
                return await asyncio.shield(creating[key])
            fut = creating[key] = asyncio.get_running_loop().create_future()
            spool = Spool(self._dir / _safe(key), self.spool_max_bytes)
            try:
                pending = await run_blocking(spool.load)
            except BaseException as e:
                del creating[key]
                if isinstance(e, asyncio.CancelledError):
                    fut.cancel()
                else:
                    fut.set_exception(e)
                    fut.exception()  # raised to this caller: no "never retrieved" warning
                raise
            lane = self._lanes[key] = _Lane(_channel(key), key, spool)
            del creating[key]
            fut.set_result(lane)
            if pending:
                lane.spooling = True
                log.info(
                    "%s: %d %s item(s) spooled earlier: replaying them first",
                    self.sink.name,
                    pending,
                    key,
                )
            lane.task = asyncio.get_running_loop().create_task(
                self._run_lane(lane), name=f"llmitm export {self.sink.name} {key}"
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
        keys = await run_blocking(lambda: [p.name for p in self._dir.iterdir() if p.is_dir()])
        for key in keys:
            try:
                lane = await self._lane(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: could not open the spool %s", self.sink.name, key)
                continue
            lane.wake.set()

    # ----------------------------------------------------------------- spool

    async def _spill(self, lane: _Lane) -> None:
        """Move the lane's memory queue to the end of its spool (order kept), but for the
        items of a request in flight, which its answer will settle."""
        keep = lane.inflight if lane.busy else 0
        items = list(lane.mem)[keep:]
        while len(lane.mem) > keep:
            lane.mem.pop()
        lane.mem_bytes = sum(it.size for it in lane.mem)
        lane.spooling = True
        await self._to_spool(lane, items)

    async def _to_spool(self, lane: _Lane, items: list[Item]) -> None:
        if not items:
            return
        refused = await run_blocking(lane.spool.append, [it.data for it in items])
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
                lane.cap = None  # idle: the next batch may be full size again
                lane.wake.clear()
                await lane.wake.wait()
                continue
            try:
                await self._step(lane)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug, a broken disk: logged (_unexpected)
                self._unexpected(lane)

    def _unexpected(self, lane: _Lane) -> None:
        lane.failures += 1
        if self._closing:
            lane.close_failed = True
        delay = self._backoff(lane.failures)
        lane.not_before = time.monotonic() + delay
        if not lane.error_logged:
            lane.error_logged = True
            log.exception(
                "%s: unexpected error sending %s item(s): trying again in %.1fs",
                self.sink.name,
                lane.channel,
                delay,
            )
        else:
            log.error(
                "%s: unexpected error sending %s item(s) again: trying again in %.1fs",
                self.sink.name,
                lane.channel,
                delay,
            )

    async def _step(self, lane: _Lane) -> None:
        limit = max(1, self.sink.max_batch)
        if lane.cap is not None:
            limit = min(limit, lane.cap)
        from_spool = False
        if lane.spooling and not lane.mem:
            data = await run_blocking(lane.spool.peek, limit)
            if not data:
                lane.spooling = bool(lane.spool.pending)
                return
            good = next((i for i, d in enumerate(data) if d is None), len(data))
            if not good:  # lines a crash cut short, at the head: skipped
                bad = next((i for i, d in enumerate(data) if d is not None), len(data))
                await run_blocking(lane.spool.advance, bad)
                self._corrupt(lane, bad)
                if not lane.spool.pending:
                    lane.spooling = False
                return
            batch = [Item(lane.channel, d) for d in data[:good] if d is not None]
            from_spool = True
        else:
            # the memory queue; while spooling, it holds only items kept in memory when
            # spooling began (a request's, in flight then): older than everything in the
            # spool, so they go first
            batch = [lane.mem[i] for i in range(min(limit, len(lane.mem)))]
        lane.busy = True
        lane.inflight = 0 if from_spool else len(batch)
        try:
            sent, verdict = await self._send(lane.channel, batch)
        finally:
            lane.busy = False
            lane.inflight = 0
        await self._settle(lane, sent, verdict, from_spool)

    async def _settle(
        self, lane: _Lane, sent: list[Item], verdict: Verdict, from_spool: bool
    ) -> None:
        """Act on the answer to a request that carried `sent` (the first items of the
        lane's memory queue, or of its spool)."""
        n = len(sent)
        if verdict.too_large:
            if n > 1:
                lane.cap = max(1, n // 2)
                log.warning(
                    "%s: %d %s item(s) are too large for one request (%s): sending at "
                    "most %d a request",
                    self.sink.name,
                    n,
                    lane.channel,
                    verdict.reason,
                    lane.cap,
                )
                return  # nothing failed: the first half goes at once
            self.stats.dropped += 1
            self.stats.too_large += 1
            log.error(
                "%s: a %s item is too large for the sink even alone (%s): dropped",
                self.sink.name,
                lane.channel,
                verdict.reason,
            )
            self._answered(lane)
            await self._consume(lane, 1, from_spool)
            return
        retry = verdict.retry
        if verdict.hold:
            self._held(lane, verdict)
            if self._give_up(lane):
                await self._expire(lane, sent, from_spool, verdict.reason)
            elif not from_spool and not lane.spooling:
                # kept on disk: a restart, or the delivery of a fixed config, sends them
                await self._spill(lane)
            return
        if retry and len(retry) >= n:  # nothing went through: back off, same batch
            expired = self._give_up(lane)
            self._failed(lane, verdict, count_retry=not expired)
            if expired:
                await self._expire(lane, sent, from_spool, verdict.reason)
            elif not from_spool and not lane.spooling and lane.failures >= self.spool_after:
                log.warning(
                    "%s: %s failing (%s): spooling to %s until it recovers",
                    self.sink.name,
                    lane.channel,
                    verdict.reason,
                    lane.spool.dir,
                )
                await self._spill(lane)
            return
        if verdict.reason and not retry and not verdict.dropped:  # accepted, with a remark
            log.warning("%s: %s", self.sink.name, verdict.reason)
        delivered = n - len(retry) - len(verdict.dropped)
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
        # the lane is healthy as soon as the answer is read (before the spool catches up:
        # a reader of the stats must not see the items sent and the settings still refused)
        self._answered(lane)
        # the batch is done with, but for a partial retry
        await self._consume(lane, n, from_spool)
        if retry:
            if from_spool:
                await self._to_spool(lane, retry)
            else:
                lane.mem.extendleft(reversed(retry))
                lane.mem_bytes += sum(it.size for it in retry)
            self._failed(lane, verdict)

    async def _consume(self, lane: _Lane, n: int, from_spool: bool) -> None:
        """The first `n` items of the batch's source are settled: forget them."""
        if from_spool:
            await run_blocking(lane.spool.advance, n)
            if not lane.spool.pending:
                lane.spooling = False
        else:
            for _ in range(min(n, len(lane.mem))):
                lane.mem_bytes -= lane.mem.popleft().size

    def _answered(self, lane: _Lane) -> None:
        """The sink took a request (all of it or part): the lane is healthy."""
        lane.failures = 0
        lane.failing_since = None
        lane.not_before = 0.0
        lane.error_logged = False
        if self.stats.misconfigured:
            log.info("%s: the sink accepts the exporter's settings again", self.sink.name)
        self.stats.misconfigured = False
        self._held_logged = False

    def _backoff(self, failures: int) -> float:
        """Exponential, capped, with jitter (senders that failed together spread out)."""
        exponent = min(max(failures - 1, 0), MAX_EXPONENT)
        delay = min(self.max_retry_delay, self.initial_retry_delay * 2.0**exponent)
        return random.uniform(delay / 2, delay)

    def _failed(self, lane: _Lane, verdict: Verdict, count_retry: bool = True) -> None:
        lane.failures += 1
        if self._closing:
            lane.close_failed = True
        self.stats.failed_requests += 1
        if count_retry:
            self.stats.retried += len(verdict.retry)
        delay = self._backoff(lane.failures)
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

    def _held(self, lane: _Lane, verdict: Verdict) -> None:
        """The sink refused the settings: try again at the longest delay; say it once."""
        lane.failures += 1
        if self._closing:
            lane.close_failed = True
        self.stats.failed_requests += 1
        self.stats.refused_requests += 1
        self.stats.misconfigured = True
        delay = random.uniform(self.max_retry_delay * 0.75, self.max_retry_delay)
        if verdict.retry_after is not None:
            delay = max(delay, min(verdict.retry_after, 3600.0))
        lane.not_before = time.monotonic() + delay
        if not self._held_logged:
            self._held_logged = True
            log.error(
                "%s: the sink refused the exporter's settings (%s). The calls are kept "
                "in the spool (%s) and sent once the sink accepts them: fix the plugin's "
                "config (the key, the endpoint) and it is reloaded. Trying again every "
                "%.0fs meanwhile.",
                self.sink.name,
                verdict.reason,
                self._dir,
                self.max_retry_delay,
            )
        else:
            log.debug("%s: settings refused again (%s)", self.sink.name, verdict.reason)

    def _give_up(self, lane: _Lane) -> bool:
        """After a failed attempt: whether the batch has failed for `max_retry_time`."""
        if self.max_retry_time is None:
            return False
        now = time.monotonic()
        if lane.failing_since is None:
            lane.failing_since = now
        return now - lane.failing_since >= max(self.max_retry_time, 0.0)

    async def _expire(self, lane: _Lane, sent: list[Item], from_spool: bool, reason: str) -> None:
        self.stats.dropped += len(sent)
        self.stats.expired += len(sent)
        lane.failing_since = None
        log.error(
            "%s: gave up on %d %s item(s) after %gs of failed attempts (queue.max_retry_time; "
            "last: %s): dropped",
            self.sink.name,
            len(sent),
            lane.channel,
            self.max_retry_time,
            reason,
        )
        await self._consume(lane, len(sent), from_spool)

    def _corrupt(self, lane: _Lane, n: int) -> None:
        self.stats.corrupt += n
        self.stats.dropped += n
        if not self._corrupt_logged:
            self._corrupt_logged = True
            log.error(
                "%s: %d line(s) of the spool in %s could not be read (cut short by a "
                "crash?): skipped",
                self.sink.name,
                n,
                lane.spool.dir,
            )

    def _split_buildable(self, channel: str, batch: list[Item]) -> tuple[list[Item], list[Item]]:
        """(good, bad): the items of a batch whose request could not be built, by
        whether a request of that item alone can be (in a worker thread: it encodes)."""
        good, bad = [], []
        for item in batch:
            try:
                self.sink.request(channel, [item])
            except Exception:
                log.exception(
                    "%s: could not build a request for one %s item", self.sink.name, channel
                )
                bad.append(item)
            else:
                good.append(item)
        return good, bad

    async def _send(self, channel: str, batch: list[Item]) -> tuple[list[Item], Verdict]:
        """One request with the first items of `batch` (as many as the sink puts in),
        and the sink's reading of the answer."""
        assert self._client is not None
        try:
            # encoding a batch (JSON, protobuf, gzip) can take tens of milliseconds:
            # in a worker thread, so that the event loop keeps serving calls meanwhile
            prepared = await run_blocking(self.sink.request, channel, batch)
        except Exception as e:  # a sink bug: it must cost the items it concerns, no more
            if len(batch) == 1:
                log.exception("%s: could not build a request", self.sink.name)
                return batch, Verdict(
                    dropped=list(batch), reason=f"request could not be built: {e}"
                )
            good, bad = await run_blocking(self._split_buildable, channel, batch)
            if not bad:  # each item alone is fine: send them in smaller requests
                return batch, Verdict(retry=good, too_large=True, reason=str(e))
            return batch, Verdict(
                retry=good, dropped=bad, reason=f"request could not be built: {e}"
            )
        count = prepared.count
        sent = batch if count is None or count >= len(batch) else batch[: max(1, count)]
        try:
            resp = await self._client.request(
                prepared.method,
                prepared.url,
                headers=prepared.headers,
                content=prepared.body,
                timeout=self.sink.timeout,
            )
        except httpx.HTTPError as e:
            return sent, Verdict(retry=list(sent), reason=f"{type(e).__name__}: {e}")
        headers = {k.lower(): v for k, v in resp.headers.items()}
        try:
            return sent, self.sink.verdict(sent, resp.status_code, headers, resp.content)
        except Exception as e:  # a sink bug: the batch is retried
            log.exception("%s: could not read the answer", self.sink.name)
            return sent, Verdict(retry=list(sent), reason=f"answer could not be read: {e}")
