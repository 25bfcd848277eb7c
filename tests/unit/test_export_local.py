"""The local exporters (file-log, the SQLite store) and the exporters' shutdown.

What /metrics and /status say about a local sink is what reached the disk: a write
error is retried a few times (a full disk may clear), then counted as failed, never as
sent; the writer thread may fall only so far behind, and the records waiting beyond it
are bounded too (the oldest dropped, counted). At shutdown every exporter is closed,
and every later shutdown step runs, whatever one of them does.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from addons.config.loader import load_text
from addons.exporting import Exporters
from exporters import _threads
from exporters import file as file_module
from exporters import sqlite as sqlite_module
from exporters.delivery import Delivery
from exporters.file import FileSink
from exporters.record import CallRecord
from exporters.sqlite import SqliteSink, open_store


def record(n: int) -> CallRecord:
    return CallRecord(
        id=f"0190a000-0000-7000-8000-{n:012d}",
        started_at=1_795_435_812.0 + n,
        ended_at=1_795_435_813.0 + n,
        status="ok",
        client_ip="127.0.0.1",
        route="chat",
        service="llm",
        request={"method": "POST", "uri": "/v1/chat/completions"},
        response={"status": 200},
        latencies={"request": 10.0},
    )


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_module, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    monkeypatch.setattr(sqlite_module, "RETRY_DELAYS", (0.01, 0.01, 0.01))


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------ honest counts


@pytest.mark.parametrize("kind", ["file-log", "store"])
async def test_a_write_error_is_counted_failed_not_sent(tmp_path: Path, kind: str) -> None:
    """The path is a directory: every write fails. The delivery reported them as sent
    (it counted what it handed to the writer thread)."""
    where = tmp_path / "a-directory"
    where.mkdir()
    sink = FileSink(str(where)) if kind == "file-log" else SqliteSink(where)
    d = Delivery(sink)
    d.start()
    for i in range(3):
        d.submit(record(i))
    await until(lambda: d.stats.failed == 3)
    assert (d.stats.sent, d.stats.failed, d.depth) == (0, 3, 0)
    assert (sink.written, sink.pending) == (0, 0)
    await d.aclose()


@pytest.mark.parametrize("kind", ["file-log", "store"])
async def test_what_is_written_is_counted_sent(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("calls.jsonl" if kind == "file-log" else "calls.db")
    sink = FileSink(str(path)) if kind == "file-log" else SqliteSink(path)
    d = Delivery(sink)
    d.start()
    for i in range(5):
        d.submit(record(i))
    await until(lambda: d.stats.sent == 5)
    assert (d.stats.failed, d.depth) == (0, 0)
    await d.aclose()


async def test_the_exporters_report_the_sinks_own_counts(tmp_path: Path) -> None:
    """What /metrics and /status read (`Exporters.stats`)."""
    where = tmp_path / "a-directory"
    where.mkdir()
    config = load_text(
        f"""
_format_version: "3.0"
plugins:
  - name: file-log
    config: {{path: "{where}"}}
"""
    )
    exporters = Exporters()
    exporters.set_paths(str(tmp_path / "spool"), str(where))  # the store too: a directory
    exporters.reconcile(config)
    for i in range(2):
        exporters.export(record(i), None, config)
    await until(lambda: all(s["failed"] == 2 for s in exporters.stats().values()))
    stats = exporters.stats()
    assert len(stats) == 2  # file-log and the store
    assert all((s["sent"], s["failed"], s["depth"]) == (0, 2, 0) for s in stats.values())
    await exporters.aclose()


# ------------------------------------------------------------- retried writes


async def test_a_file_write_that_fails_once_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk for a moment: the first attempt writes half the batch (the kernel
    takes part of it), then fails; the retry writes the rest. Every line is whole and
    there once."""
    path = tmp_path / "calls.jsonl"
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(file_module.os, "write", flaky)
    sink = FileSink(str(path))
    await sink.send([record(i) for i in range(4)])
    await sink.aclose()
    assert (sink.written, sink.failed, sink.pending) == (4, 0, 0)
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [record(i).id for i in range(4)]


async def test_a_store_write_that_fails_once_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = SqliteSink(tmp_path / "calls.db")
    real_insert = sink._insert
    fault = {"left": 2}

    def flaky(rows: Any) -> None:
        if fault["left"]:
            fault["left"] -= 1
            raise sqlite3.OperationalError("database is locked")
        real_insert(rows)

    monkeypatch.setattr(sink, "_insert", flaky)
    await sink.send([record(i) for i in range(3)])
    await sink.aclose()
    assert (sink.written, sink.failed, sink.pending) == (3, 0, 0)
    with open_store(tmp_path / "calls.db") as store:
        assert store.count() == 3


async def test_a_store_error_that_will_not_pass_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = SqliteSink(tmp_path / "calls.db")
    calls = {"n": 0}

    def broken(rows: Any) -> None:
        calls["n"] += 1
        raise sqlite3.OperationalError('near "NOT": syntax error')

    monkeypatch.setattr(sink, "_insert", broken)
    await sink.send([record(0)])
    await sink.aclose()
    assert calls["n"] == 1 and (sink.written, sink.failed) == (0, 1)


# ---------------------------------------------------------------- bounded memory


async def test_a_stalled_writer_bounds_what_waits_and_counts_what_it_drops(
    tmp_path: Path,
) -> None:
    """The disk stalls: the writer thread holds at most `max_pending` records, the
    delivery's queue at most `capacity`; beyond that the oldest are dropped, counted,
    and the queue depth says how many wait."""
    sink = FileSink(str(tmp_path / "calls.jsonl"))
    sink.max_pending = 5
    gate = threading.Event()
    real_write = sink._write

    def stalled(data: bytes, count: int) -> None:
        gate.wait(10)
        real_write(data, count)

    sink._write = stalled  # type: ignore[method-assign]
    d = Delivery(sink, batch_size=5, capacity=20)
    d.start()
    for i in range(40):
        d.submit(record(i))
        await asyncio.sleep(0)
    await until(lambda: sink.pending == 5)
    await asyncio.sleep(0.2)  # the delivery does not hand over more meanwhile
    assert sink.pending == 5
    assert d.depth == 25 and d.stats.dropped == 15  # 5 with the writer, 20 queued
    gate.set()
    await d.aclose()
    assert (d.stats.sent, d.stats.failed, d.stats.dropped) == (25, 0, 15)
    written = [json.loads(line)["id"] for line in (tmp_path / "calls.jsonl").read_bytes().split()]
    # the first five (handed over before the stall), then the newest twenty
    assert written == [record(i).id for i in (*range(5), *range(20, 40))]


# ------------------------------------------------------------------- shutdown


class _Closing:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.sink = SimpleNamespace(name=name)
        self.fail = fail
        self.closed = False

    async def aclose(self, timeout: float = 5.0) -> None:
        self.closed = True
        if self.fail:
            raise RuntimeError(f"{self.sink.name} broke")


async def test_every_exporter_is_closed_even_if_one_fails(caplog: Any) -> None:
    exporters = Exporters()
    broken, fine = _Closing("broken", fail=True), _Closing("fine")
    exporters.deliveries = {"a": broken, "b": fine}  # type: ignore[dict-item]
    await exporters.aclose()  # does not raise
    assert broken.closed and fine.closed
    assert any("failed to close" in r.message for r in caplog.records)


async def test_shutdown_runs_every_step_whatever_one_does(caplog: Any) -> None:
    from addons.calls import Calls
    from addons.gateway import Lifecycle

    done: list[str] = []

    async def step(name: str, fail: bool = False) -> None:
        done.append(name)
        if fail:
            raise RuntimeError(name)

    gw = SimpleNamespace(
        metrics=SimpleNamespace(stop=lambda: step("metrics")),
        exporters=SimpleNamespace(aclose=lambda: step("exporters", fail=True)),
        upstream=SimpleNamespace(stop=lambda: step("upstream")),
        credentials=SimpleNamespace(close=lambda: done.append("credentials")),
        counters={},
        calls=Calls(),  # none in flight: the drain before the steps does not wait
    )
    await _threads.run_blocking(lambda: None)  # the pool is running
    await Lifecycle(gw).close(exiting=False)  # a reload: the pool stays
    assert done == ["metrics", "exporters", "upstream", "credentials"]
    assert _threads.active()
    done.clear()
    await Lifecycle(gw).close(exiting=True)
    assert done == ["metrics", "exporters", "upstream", "credentials"]
    assert not _threads.active()  # shut down at exit
    assert gw.metrics.draining  # /health said so while the calls drained
    assert not [r for r in caplog.records if "could not drain" in r.message]
    assert await _threads.run_blocking(lambda: 42) == 42  # and made again if needed
