"""exporters/http_delivery: every record reaches the sink once, whatever the sink does.

A real HTTP server on 127.0.0.1 (aiohttp) plays the sink and is scripted per test: down,
erroring, rate limiting, slow, refusing some items. The delivery is the one the
exporters use, with short delays.
"""

from __future__ import annotations

import asyncio
import json
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
