"""exporters/http_delivery: every record reaches the sink once, whatever the sink does.

A real HTTP server on 127.0.0.1 (aiohttp) plays the sink and is scripted per test: down,
erroring, rate limiting, slow, refusing some items. The delivery is the one the
exporters use, with short delays.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporters.http_delivery import HttpDelivery
from exporters.record import CallRecord
from exporters.sink import Item, Prepared, Verdict, default_verdict
from tests.conftest import free_port


def record(n: int) -> CallRecord:
    return CallRecord(
        id=f"r{n}",
        started_at=0.0,
        ended_at=0.0,
        status="ok",
        client_ip="127.0.0.1",
        route="chat",
        service=None,
        request={},
        response={},
        latencies={},
    )


class TestSink:
    """One item per record on channel "events" (two channels when `pairs`), posted as a
    JSON list; the answer is read with default_verdict unless `reader` says otherwise."""

    __test__ = False
    max_batch = 10
    timeout = 10.0  # generous: a loaded CI machine must not turn a slow answer into a failure

    def __init__(self, port: int, pairs: bool = False) -> None:
        self.name = "test-sink"
        self.port = port
        self.pairs = pairs
        self.reader: Callable[..., Verdict] | None = None

    def items(self, rec: CallRecord) -> list[Item]:
        out = [Item("events", {"id": rec.id})]
        if self.pairs:
            out.append(Item("spans", {"id": rec.id + "-span"}))
        return out

    def request(self, channel: str, items: list[Item]) -> Prepared:
        body = json.dumps([it.data for it in items]).encode()
        return Prepared(
            "POST",
            f"http://127.0.0.1:{self.port}/{channel}",
            {"content-type": "application/json", "authorization": "Bearer sink-secret"},
            body,
        )

    def verdict(
        self, items: list[Item], status: int, headers: dict[str, str], body: bytes
    ) -> Verdict:
        if self.reader is not None:
            return self.reader(items, status, headers, body)
        return default_verdict(items, status, headers, body)


class Server:
    """The sink's server: records what it accepted; `script` answers each request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: dict[str, list[str]] = {}
        self.requests: list[tuple[float, str, list[str]]] = []
        self.script: Callable[[str, list[str]], web.Response | None] = lambda path, ids: None
        self.delay = 0.0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{channel}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        ids = [d["id"] for d in await request.json()]
        self.requests.append((time.monotonic(), channel, ids))
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.script(channel, ids)
        if answer is not None:
            return answer
        self.accepted.setdefault(channel, []).extend(ids)
        return web.Response(status=204)

    def ids(self, channel: str = "events") -> list[str]:
        return self.accepted.get(channel, [])


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server(free_port())
    await s.start()
    yield s
    await s.stop()


def delivery(port: int, spool: Path, **kw: Any) -> HttpDelivery:
    options: dict[str, Any] = {
        "linger": 0.01,
        "initial_retry_delay": 0.05,
        "max_retry_delay": 0.2,
        "spool_after": 3,
    }
    options.update(kw)
    sink = kw.pop("sink", None) or TestSink(port)
    options.pop("sink", None)
    return HttpDelivery(sink, spool, **options)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


EXPECTED = [f"r{i}" for i in range(50)]


async def test_every_record_arrives_once_in_order(server: Server, tmp_path: Path) -> None:
    d = delivery(server.port, tmp_path, sink=TestSink(server.port, pairs=True))
    d.start()
    for i in range(50):
        d.submit(record(i))
    await until(lambda: len(server.ids()) == 50 and len(server.ids("spans")) == 50)
    assert server.ids() == EXPECTED
    assert server.ids("spans") == [f"r{i}-span" for i in range(50)]
    assert all(len(ids) <= 10 for _, _, ids in server.requests)  # max_batch
    # the server keeps a batch before it answers: the delivery counts it once the
    # answer is in
    await until(lambda: d.stats.sent + d.stats.dropped + d.stats.spooled >= 100)
    assert (d.stats.sent, d.stats.dropped, d.stats.spooled) == (100, 0, 0)
    await d.aclose()


async def test_submit_does_not_wait_for_a_slow_sink(server: Server, tmp_path: Path) -> None:
    server.delay = 1.0
    d = delivery(server.port, tmp_path)
    d.start()
    start = time.perf_counter()
    for i in range(50):
        d.submit(record(i))
    assert time.perf_counter() - start < 0.05  # 50 submits, a sink taking 1 s per request
    await until(lambda: len(server.ids()) == 50)
    assert server.ids() == EXPECTED
    await d.aclose()


async def test_sink_down_then_back_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path,
) -> None:
    port = free_port()
    d = delivery(port, tmp_path, capacity=20)
    d.start()
    for i in range(50):
        d.submit(record(i))
    # nobody listens: after a few failures the items go to the disk spool
    await until(lambda: d.stats.spooled >= 50)
    assert d.depth == 50
    assert sum(len(lane.mem) for lane in d._lanes.values()) == 0  # memory freed
    server = Server(port)
    await server.start()
    try:
        for i in range(50, 60):  # records made while it recovers queue behind the spool
            d.submit(record(i))
        await until(lambda: len(server.ids()) == 60)
        await asyncio.sleep(0.3)  # anything sent twice would arrive by now
        assert server.ids() == [f"r{i}" for i in range(60)]
        await until(lambda: d.depth == 0)  # the last answer read
        assert d.depth == 0 and d.stats.sent == 60 and d.stats.dropped == 0
    finally:
        await d.aclose()
        await server.stop()


async def test_a_500_is_retried_until_it_succeeds(server: Server, tmp_path: Path) -> None:
    failures = {"left": 2}

    def script(channel: str, ids: list[str]) -> web.Response | None:
        if failures["left"]:
            failures["left"] -= 1
            return web.Response(status=500, text="oops")
        return None

    server.script = script
    d = delivery(server.port, tmp_path)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(lambda: len(server.ids()) == 5)
    assert server.ids() == EXPECTED[:5]
    assert d.stats.retried >= 5 and d.stats.failed_requests == 2
    await d.aclose()


async def test_429_waits_for_retry_after(server: Server, tmp_path: Path) -> None:
    answers = [web.Response(status=429, headers={"Retry-After": "1"})]
    server.script = lambda channel, ids: answers.pop() if answers else None
    d = delivery(server.port, tmp_path)
    d.start()
    d.submit(record(0))
    await until(lambda: server.ids() == ["r0"])
    (first, *_), (second, *_) = server.requests
    assert second - first >= 0.95  # not the 0.05 s backoff: the server asked for 1 s
    await d.aclose()


async def test_a_400_is_dropped_and_counted_not_retried(server: Server, tmp_path: Path) -> None:
    server.script = lambda channel, ids: web.Response(status=400, text="bad field")
    d = delivery(server.port, tmp_path)
    d.start()
    for i in range(3):
        d.submit(record(i))
    await until(lambda: d.stats.dropped == 3)
    await asyncio.sleep(0.3)
    assert len(server.requests) == 1 and d.stats.sent == 0 and d.depth == 0
    await d.aclose()


async def test_a_partial_failure_resends_only_the_failed_items(
    server: Server, tmp_path: Path
) -> None:
    """Langfuse's 207: some events accepted, some failed with a retryable status."""
    sink = TestSink(server.port)
    attempts: dict[str, int] = {}

    def reader(items: list[Item], status: int, headers: dict[str, str], body: bytes) -> Verdict:
        retry, dropped = [], []
        for it in items:
            n = attempts[it.data["id"]] = attempts.get(it.data["id"], 0) + 1
            if it.data["id"] == "r1" and n == 1:
                retry.append(it)  # a 500 for this one, the first time
            elif it.data["id"] == "r2":
                dropped.append(it)  # a 400 for this one: never again
        return Verdict(retry=retry, dropped=dropped, reason="207")

    sink.reader = reader
    d = delivery(server.port, tmp_path, sink=sink)
    d.start()
    for i in range(4):
        d.submit(record(i))
    await until(lambda: attempts.get("r1") == 2)
    await asyncio.sleep(0.2)  # anything sent again would arrive by now
    assert attempts == {"r0": 1, "r1": 2, "r2": 1, "r3": 1}
    await until(lambda: d.stats.sent + d.stats.dropped >= 4)  # the last answer read
    assert (d.stats.sent, d.stats.dropped) == (3, 1)
    await d.aclose()


async def test_records_queued_at_shutdown_arrive_after_a_restart(tmp_path: Path) -> None:
    port = free_port()
    d = delivery(port, tmp_path)
    d.start()
    for i in range(20):
        d.submit(record(i))
    await d.aclose(timeout=0.5)  # the sink is down: they go to the spool
    assert d.stats.spooled == 20
    server = Server(port)
    await server.start()
    try:
        again = delivery(port, tmp_path)
        again.start()  # a new process: it finds the spool and sends it
        await until(lambda: len(server.ids()) == 20)
        await asyncio.sleep(0.2)
        assert server.ids() == EXPECTED[:20]
        await again.aclose()
        assert again.depth == 0
    finally:
        await server.stop()


async def test_shutdown_flushes_what_is_queued(server: Server, tmp_path: Path) -> None:
    d = delivery(server.port, tmp_path, linger=5.0)  # nothing would go out for 5 s
    d.start()
    for i in range(30):
        d.submit(record(i))
    await d.aclose(timeout=5)
    assert server.ids() == EXPECTED[:30]


@pytest.fixture
def slow_spool_open(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Opening a lane's spool takes 0.3 s (a slow disk); the event is set when it starts."""
    from exporters import spool as spool_module

    opening = threading.Event()
    real_load = spool_module.Spool.load

    def slow_load(self: Any) -> int:
        opening.set()
        time.sleep(0.3)
        return real_load(self)

    monkeypatch.setattr(spool_module.Spool, "load", slow_load)
    return opening


async def test_shutdown_while_a_lane_opens_loses_no_record(
    server: Server, tmp_path: Path, slow_spool_open: threading.Event
) -> None:
    # the intake has taken the records and waits for their lane's spool to open when
    # the shutdown begins: those records must still be delivered
    d = delivery(server.port, tmp_path, linger=0.0)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(slow_spool_open.is_set)
    await d.aclose(timeout=5)
    assert server.ids() == EXPECTED[:5]


async def test_shutdown_while_a_lane_opens_spools_the_records_when_the_sink_is_down(
    tmp_path: Path, slow_spool_open: threading.Event
) -> None:
    d = delivery(free_port(), tmp_path, linger=0.0)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(slow_spool_open.is_set)
    await d.aclose(timeout=0.5)
    assert d.stats.spooled == 5


async def test_memory_stays_bounded_while_the_sink_is_down(tmp_path: Path) -> None:
    d = delivery(free_port(), tmp_path, capacity=50, spool_after=1000)  # never "down"
    d.start()
    for i in range(2000):
        d.submit(record(i))
    await until(lambda: d.stats.spooled >= 1950)
    assert all(len(lane.mem) <= 50 for lane in d._lanes.values())
    assert d.depth == 2000
    await d.aclose(timeout=0.2)
    assert d.stats.spooled + d.stats.sent == 2000


async def test_the_spool_has_no_credentials(tmp_path: Path) -> None:
    d = delivery(free_port(), tmp_path, spool_after=1)
    d.start()
    d.submit(record(0))
    await until(lambda: d.stats.spooled == 1)
    await d.aclose(timeout=0.2)
    spooled = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b'"r0"' in spooled and b"sink-secret" not in spooled


async def test_a_successor_takes_over_the_spool_once_its_predecessor_closed(
    server: Server, tmp_path: Path
) -> None:
    """A config reload: the old delivery (its sink down) is closing while the new one
    (same spool name, a sink that is up) already gets records. The new one waits for
    the old one's last spooled items, and sends them before its own."""
    old = delivery(free_port(), tmp_path, spool_name="test@global", spool_after=1)
    old.start()
    for i in range(10):
        old.submit(record(i))
    await until(lambda: old.stats.spooled >= 5)
    closing = asyncio.get_running_loop().create_task(old.aclose(timeout=0.3))
    new = delivery(server.port, tmp_path, spool_name="test@global", after=closing)
    new.start()
    for i in range(10, 15):
        new.submit(record(i))
    await until(lambda: len(server.ids()) == 15)
    assert closing.done()
    assert server.ids() == EXPECTED[:15]
    await new.aclose()
    assert new.depth == 0


# --------------------------------------------------- a long outage, a broken step


async def test_a_long_outage_keeps_a_finite_delay_and_the_lane_recovers(tmp_path: Path) -> None:
    """After ~1025 failures in a row the backoff's 2**n overflowed a float: the lane's
    task died and nothing was ever sent again. The exponent is capped."""
    port = free_port()
    d = delivery(port, tmp_path, max_retry_delay=0.05)
    d.start()
    d.submit(record(0))
    await until(lambda: d.stats.failed_requests >= 1)
    (lane,) = d._lanes.values()
    lane.failures = 2000  # as after hours down
    server = Server(port)
    await server.start()
    try:
        d.submit(record(1))
        await until(lambda: server.ids() == ["r0", "r1"])
        assert not lane.task.done()
        assert 0 < d._backoff(2000) <= 0.05 and 0 < d._backoff(10**9) <= 0.05
    finally:
        await d.aclose()
        await server.stop()


async def test_an_unexpected_error_in_a_step_does_not_kill_the_lane(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    d = delivery(server.port, tmp_path)
    real_send = d._send
    broken = {"left": 2}

    async def send(channel: str, batch: list[Item]) -> Any:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("a bug in a step")
        return await real_send(channel, batch)

    monkeypatch.setattr(d, "_send", send)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(lambda: len(server.ids()) == 5)
    assert server.ids() == EXPECTED[:5]
    (lane,) = d._lanes.values()
    assert not lane.task.done()
    # logged with its traceback once, then in one line
    tracebacks = [r for r in caplog.records if "unexpected error" in r.message and r.exc_info]
    assert len(tracebacks) == 1
    await d.aclose()


class FlawedSink(TestSink):
    """A sink with a bug: it cannot encode record r3, nor build the items of r7."""

    __test__ = False

    def items(self, rec: CallRecord) -> list[Item]:
        if rec.id == "r7":
            raise ValueError("cannot build the events of r7")
        return super().items(rec)

    def request(self, channel: str, items: list[Item]) -> Prepared:
        if any(it.data["id"] == "r3" for it in items):
            raise ValueError("cannot encode r3")
        return super().request(channel, items)


async def test_a_record_a_sink_cannot_encode_costs_only_itself(
    server: Server, tmp_path: Path
) -> None:
    # linger 0.2 s: the ten records go out as one batch, r3 among them
    d = delivery(server.port, tmp_path, linger=0.2, sink=FlawedSink(server.port))
    d.start()
    for i in range(10):
        d.submit(record(i))
    want = [f"r{i}" for i in range(10) if i not in (3, 7)]
    await until(lambda: len(server.ids()) == len(want))
    await asyncio.sleep(0.2)
    assert server.ids() == want  # in order, each once
    assert d.stats.dropped == 2  # r3 (its request) and r7 (its items), counted
    assert d.stats.sent == len(want)
    await d.aclose()
    assert d.depth == 0


async def test_aclose_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exporters import spool as spool_module

    d = delivery(free_port(), tmp_path, spool_after=1000)
    d.start()
    for i in range(3):
        d.submit(record(i))
    await until(lambda: d.stats.failed_requests >= 1)

    def broken_disk(self: Any, items: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module.Spool, "append", broken_disk)
    await d.aclose(timeout=0.2)  # what is left cannot be spooled: logged, not raised


# ------------------------------------------------------- a wrong key or endpoint


def refuse(status: int, **headers: str) -> Callable[[str, list[str]], web.Response | None]:
    return lambda channel, ids: web.Response(status=status, headers=headers, text="refused")


@pytest.mark.parametrize(
    "status, headers", [(401, {}), (403, {}), (404, {}), (405, {}), (407, {}), (308, {})]
)
async def test_refused_settings_keep_the_items_until_the_sink_accepts_them(
    server: Server, tmp_path: Path, caplog: Any, status: int, headers: dict[str, str]
) -> None:
    """A wrong key (401, 403, 407), a wrong URL (404, 405) or a redirect: the items are
    kept in the spool (not dropped), an error says so once, the attempts come at the
    longest delay, and once the sink takes them (a fixed key) they all arrive."""
    if status == 308:
        headers = {"Location": f"http://127.0.0.1:{server.port}/elsewhere"}
    server.script = refuse(status, **headers)
    d = delivery(server.port, tmp_path, max_retry_delay=0.3)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(lambda: d.stats.refused_requests >= 3)
    assert d.stats.spooled == 5 and d.stats.dropped == 0 and d.stats.sent == 0
    assert d.stats.misconfigured and d.depth == 5
    errors = [r for r in caplog.records if "refused the exporter's settings" in r.message]
    assert len(errors) == 1 and f"HTTP {status}" in errors[0].message
    # at the longest delay (0.3 s, jittered down to 0.225 s), not the 0.05 s backoff
    times = [t for t, _, _ in server.requests]
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(times))
    server.script = lambda channel, ids: None  # the key is fixed
    await until(lambda: server.ids() == EXPECTED[:5])
    await until(lambda: d.depth == 0)
    assert d.stats.sent == 5 and not d.stats.misconfigured
    await d.aclose()


async def test_a_fixed_config_sends_what_the_refused_one_kept(
    server: Server, tmp_path: Path
) -> None:
    """The reload path: the old delivery (its sink refusing the key) closes while the
    new one, on the same spool, sends everything, in order, once."""
    server.script = refuse(401)
    old = delivery(server.port, tmp_path, spool_name="test@global")
    old.start()
    for i in range(10):
        old.submit(record(i))
    await until(lambda: old.stats.spooled == 10)
    accepted = TestSink(server.port)
    accepted.name = "test-sink-fixed"
    closing = asyncio.get_running_loop().create_task(old.aclose(timeout=1))
    await asyncio.sleep(0.05)
    server.script = lambda channel, ids: None  # the new config's key is right
    new = delivery(server.port, tmp_path, spool_name="test@global", after=closing, sink=accepted)
    new.start()
    for i in range(10, 12):
        new.submit(record(i))
    await until(lambda: len(server.ids()) == 12)
    await asyncio.sleep(0.2)
    assert server.ids() == EXPECTED[:12]
    await new.aclose()
    assert new.depth == 0 and old.stats.dropped == 0


# --------------------------------------------------------------- shutdown flush


async def test_shutdown_sends_the_spool_when_the_sink_is_back(tmp_path: Path) -> None:
    """200 items spooled while the sink was down; it is back at shutdown: aclose sends
    them all (in order) within its time, instead of leaving them on disk."""
    port = free_port()
    d = delivery(port, tmp_path, spool_after=1, max_retry_delay=0.05)
    d.start()
    for i in range(200):
        d.submit(record(i))
    await until(lambda: d.stats.spooled == 200)
    server = Server(port)
    await server.start()
    try:
        await d.aclose(timeout=10)
        assert server.ids() == [f"r{i}" for i in range(200)]
        assert sum(lane.spool.pending for lane in d._lanes.values()) == 0
    finally:
        await server.stop()


async def test_shutdown_gives_a_failed_lane_one_more_try(server: Server, tmp_path: Path) -> None:
    """The first request got a 500 and the lane waits out its backoff: at shutdown it
    tries again at once (the sink is fine now) instead of spooling everything."""
    answers = [web.Response(status=500)]
    server.script = lambda channel, ids: answers.pop() if answers else None
    d = delivery(server.port, tmp_path, initial_retry_delay=30, max_retry_delay=30)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(lambda: d.stats.failed_requests == 1)
    await d.aclose(timeout=5)
    assert server.ids() == EXPECTED[:5]
    assert d.stats.spooled == 0


async def test_shutdown_stops_at_once_when_the_sink_still_fails(tmp_path: Path) -> None:
    d = delivery(free_port(), tmp_path, initial_retry_delay=30, max_retry_delay=30)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(lambda: d.stats.failed_requests == 1)
    await asyncio.wait_for(d.aclose(timeout=30), 5)  # one more try fails: no 30 s wait
    assert d.stats.spooled == 5


# ------------------------------------------------------------- batch size, 413


class CappedSink(TestSink):
    """A sink whose requests carry at most `per_request` items (a byte cap)."""

    __test__ = False

    def __init__(self, port: int, per_request: int) -> None:
        super().__init__(port)
        self.per_request = per_request

    def request(self, channel: str, items: list[Item]) -> Prepared:
        count = min(len(items), self.per_request)
        prepared = super().request(channel, items[:count])
        prepared.count = count
        return prepared


async def test_leftovers_of_a_full_request_go_at_once_without_a_failure(
    server: Server, tmp_path: Path
) -> None:
    d = delivery(server.port, tmp_path, sink=CappedSink(server.port, 3), initial_retry_delay=5)
    d.start()
    for i in range(20):
        d.submit(record(i))
    await until(lambda: d.stats.sent == 20)
    assert server.ids() == EXPECTED[:20]
    assert all(len(ids) <= 3 for _, _, ids in server.requests)
    assert (d.stats.failed_requests, d.stats.retried) == (0, 0)  # no failure, no backoff
    await d.aclose()


async def test_a_413_splits_the_batch_and_every_item_that_fits_arrives(
    server: Server, tmp_path: Path
) -> None:
    """The sink takes at most 3 items a request: a 413 halves the batch (10 -> 5 -> 2),
    without counting a failure; the items all arrive, once, in order."""
    server.script = lambda channel, ids: web.Response(status=413) if len(ids) > 3 else None
    d = delivery(server.port, tmp_path, initial_retry_delay=5)
    d.start()
    for i in range(30):
        d.submit(record(i))
    await until(lambda: d.stats.sent == 30)
    assert server.ids() == EXPECTED[:30]
    assert (d.stats.failed_requests, d.stats.retried, d.stats.dropped) == (0, 0, 0)
    await d.aclose()


async def test_a_413_for_a_single_item_drops_only_that_item(
    server: Server, tmp_path: Path, caplog: Any
) -> None:
    server.script = lambda channel, ids: web.Response(status=413) if "r2" in ids else None
    d = delivery(server.port, tmp_path)
    d.start()
    for i in range(6):
        d.submit(record(i))
    await until(lambda: d.stats.sent + d.stats.dropped == 6)
    assert server.ids() == ["r0", "r1", "r3", "r4", "r5"]
    assert (d.stats.dropped, d.stats.too_large) == (1, 1)
    assert any("too large for the sink even alone" in r.message for r in caplog.records)
    await d.aclose()


async def test_a_413_from_the_spool_splits_too(server: Server, tmp_path: Path) -> None:
    port = server.port
    await server.stop()  # down: the items go to the spool
    d = delivery(port, tmp_path, spool_after=1)
    d.start()
    for i in range(12):
        d.submit(record(i))
    await until(lambda: d.stats.spooled == 12)
    server.script = lambda channel, ids: web.Response(status=413) if len(ids) > 2 else None
    await server.start()
    await until(lambda: d.stats.sent == 12)
    assert server.ids() == EXPECTED[:12] and d.stats.dropped == 0
    await d.aclose()


# -------------------------------------------------------- Kong's queue fields


async def test_max_bytes_bounds_the_memory_queue(tmp_path: Path) -> None:
    d = delivery(free_port(), tmp_path, max_bytes=300, spool_after=1000, capacity=10_000)
    d.start()
    for i in range(100):  # about 12 bytes of JSON each
        d.submit(record(i))
    await until(lambda: d.stats.spooled >= 70)
    (lane,) = d._lanes.values()
    assert lane.mem_bytes <= 300 + 20 and len(lane.mem) < 30
    assert d.depth == 100
    await d.aclose(timeout=0.2)


async def test_max_retry_time_gives_up_on_a_failing_batch(tmp_path: Path, caplog: Any) -> None:
    d = delivery(free_port(), tmp_path, max_retry_time=0.3, spool_after=1000)
    d.start()
    for i in range(4):
        d.submit(record(i))
    await until(lambda: d.stats.dropped == 4)
    assert d.stats.expired == 4 and d.depth == 0
    assert any("queue.max_retry_time" in r.message for r in caplog.records)
    await d.aclose(timeout=0.2)


async def test_max_retry_time_unset_never_gives_up(tmp_path: Path) -> None:
    port = free_port()
    d = delivery(port, tmp_path, spool_after=1000)
    d.start()
    d.submit(record(0))
    await until(lambda: d.stats.failed_requests >= 8)  # far beyond Kong's 60 s at this pace
    assert d.stats.dropped == 0 and d.depth == 1
    await d.aclose(timeout=0.2)


async def test_parallel_senders_keep_several_requests_in_flight(
    server: Server, tmp_path: Path
) -> None:
    """Kong's `concurrency_limit: -1`: a slow sink gets several requests at once."""
    in_flight = {"now": 0, "most": 0}
    real = server._handle

    async def counting(request: web.Request) -> web.Response:
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            return await real(request)
        finally:
            in_flight["now"] -= 1

    server._handle = counting  # type: ignore[method-assign]
    await server.stop()
    await server.start()
    server.delay = 0.3
    sink = TestSink(server.port)
    sink.max_batch = 1
    d = delivery(server.port, tmp_path, sink=sink, senders=8)
    d.start()
    for i in range(16):
        d.submit(record(i))
    await until(lambda: len(server.ids()) == 16)
    assert sorted(server.ids()) == sorted(f"r{i}" for i in range(16))
    assert in_flight["most"] > 1
    await until(lambda: d.stats.sent == 16)
    await d.aclose()


# ---------------------------------------------------------- the spool, the pool


async def test_a_corrupt_spool_line_is_skipped_and_counted(server: Server, tmp_path: Path) -> None:
    from exporters.spool import Spool

    left = Spool(tmp_path / "test-sink" / "events")
    left.append([{"id": "old-1"}])
    with open(next(left.dir.glob("*.jsonl")), "ab") as f:
        f.write(b'{"id": "old-2", "cut sh')  # the crash
    d = delivery(server.port, tmp_path)
    d.start()
    d.submit(record(0))
    await until(lambda: server.ids() == ["old-1", "r0"])
    assert (d.stats.corrupt, d.stats.failed_requests) == (1, 0)
    await d.aclose()


async def test_blocking_work_runs_in_the_exporters_own_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spool writes and batch encoding never take a worker of asyncio's default pool,
    which the request path uses (asyncio.to_thread)."""
    import threading

    from exporters import spool as spool_module

    threads: set[str] = set()
    append = spool_module.Spool.append

    def spy(self: Any, items: Any) -> int:
        threads.add(threading.current_thread().name)
        return append(self, items)

    monkeypatch.setattr(spool_module.Spool, "append", spy)
    sink = TestSink(free_port())
    encode = sink.request

    def spy_request(channel: str, items: list[Item]) -> Prepared:
        threads.add(threading.current_thread().name)
        return encode(channel, items)

    sink.request = spy_request  # type: ignore[method-assign]
    d = delivery(sink.port, tmp_path, sink=sink, spool_after=1)
    d.start()
    d.submit(record(0))
    await until(lambda: d.stats.spooled == 1)
    await d.aclose(timeout=0.2)
    assert threads and all(name.startswith("llmitm-export") for name in threads), threads
