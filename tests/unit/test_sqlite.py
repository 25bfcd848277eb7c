"""exporters/sqlite.py: the embedded call store, written through the sink, read back
through the read API (`open_store`, `latest`, `totals`, `get`).

`KINDS` holds one record of every kind the gateway produces; the metrics tests use
them too.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import exporters.sqlite as store_mod
from exporters.record import AIInfo, CallRecord
from exporters.sqlite import (
    SCHEMA_VERSION,
    SchemaError,
    SqliteConfig,
    SqliteSink,
    from_config,
    open_store,
)
from providers.base import Usage

T0 = 1_700_000_000.0


def ai(**kw: Any) -> AIInfo:
    base: dict[str, Any] = {
        "provider": "openai",
        "route_type": "llm/v1/chat",
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "stream": False,
        "upstream_url": "https://api.openai.com/v1/chat/completions",
        "llm_latency_ms": 800.0,
        "finish_reason": "stop",
    }
    return AIInfo(**{**base, **kw})


def rec(id: str, ai_info: AIInfo | None, at: float = T0, **kw: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": id,
        "started_at": at,
        "ended_at": at + 1.0,
        "status": "ok",
        "client_ip": "127.0.0.1",
        "route": "chat",
        "service": "llm",
        "request": {
            "method": "POST",
            "uri": "/v1/chat/completions",
            "size": 120,
            "headers": {"authorization": "[REDACTED]", "content-type": "application/json"},
        },
        "response": {"status": 200, "size": 456},
        "latencies": {"request": 1000.0, "proxy": 800.0, "gateway": 200.0},
        "ai": ai_info,
    }
    return CallRecord(**{**base, **kw})


KINDS: dict[str, CallRecord] = {
    "chat": rec("0190a000-0000-7000-8000-000000000001", ai(usage=Usage(12, 7), cost=0.0003)),
    "streamed": rec(
        "0190a000-0000-7000-8000-000000000002",
        ai(
            stream=True,
            usage=Usage(20, 40),
            cost=0.001,
            time_to_first_token_ms=150.0,
            llm_latency_ms=1900.0,
        ),
        at=T0 + 10,
        latencies={
            "request": 2000.0,
            "proxy": 1900.0,
            "gateway": 100.0,
            "time_to_first_token": 150.0,
        },
    ),
    "upstream_error": rec(
        "0190a000-0000-7000-8000-000000000003",
        ai(response_model=None, finish_reason=None, llm_latency_ms=300.0),
        at=T0 + 20,
        status="error",
        response={"status": 429, "size": 90},
        upstream={"url": "https://api.openai.com/v1/chat/completions", "status": 429},
        error={
            "status": 429,
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
            "message": "Rate limit reached for gpt-4o",
            "source": "upstream",
        },
    ),
    "client_aborted": rec(
        "0190a000-0000-7000-8000-000000000004",
        ai(stream=True, usage=Usage(30, 3, estimated=True), time_to_first_token_ms=90.0),
        at=T0 + 30,
        status="client_aborted",
        error={
            "status": None,
            "type": "connection_error",
            "code": None,
            "message": "client disconnected",
            "source": "client",
        },
    ),
    "embeddings": rec(
        "0190a000-0000-7000-8000-000000000005",
        ai(
            route_type="llm/v1/embeddings",
            request_model="text-embedding-3-small",
            response_model="text-embedding-3-small",
            usage=Usage(8, 0),
            cost=0.00000016,
            finish_reason=None,
            llm_latency_ms=40.0,
        ),
        at=T0 + 40,
        route="embeddings",
        request={"method": "POST", "uri": "/v1/embeddings", "size": 50, "headers": {}},
    ),
    "no_usage": rec(
        "0190a000-0000-7000-8000-000000000006",
        ai(provider="ollama", request_model="llama3", response_model="llama3", usage=None),
        at=T0 + 50,
        route="local",
    ),
    "estimated": rec(
        "0190a000-0000-7000-8000-000000000007",
        ai(provider="mock", request_model="mock-gpt", usage=Usage(5, 5, estimated=True)),
        at=T0 + 60,
    ),
    "payloads_and_context": rec(
        "0190a000-0000-7000-8000-000000000008",
        ai(
            usage=Usage(9, 2),
            cost=0.0001,
            request_payload={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            response_payload={"choices": [{"message": {"role": "assistant", "content": "yo"}}]},
        ),
        at=T0 + 70,
        consumer="alice",
        context={
            "user_id": "u-42",
            "session_id": "s-7",
            "chat_id": "c-1",
            "metadata": {"user_id": "u-42", "tier": "gold"},
        },
    ),
    "cache_reasoning_cost": rec(
        "0190a000-0000-7000-8000-000000000009",
        ai(
            provider="anthropic",
            request_model="claude-sonnet-4",
            response_model="claude-sonnet-4-20250514",
            usage=Usage(
                1200, 300, cache_read_tokens=1000, cache_write_tokens=100, reasoning_tokens=120
            ),
            cost=0.0123,
        ),
        at=T0 + 80,
        consumer="bob",
    ),
    "no_statistics": rec(
        "0190a000-0000-7000-8000-00000000000a",
        ai(usage=Usage(3, 4), cost=0.5, log_statistics=False),
        at=T0 + 90,
    ),
    "no_ai": rec(
        "0190a000-0000-7000-8000-00000000000b",
        None,
        at=T0 + 100,
        route=None,
        service=None,
        status="error",
        response={"status": 404, "size": 60},
        latencies={"request": 1.5, "proxy": None, "gateway": 1.5},
        error={"status": 404, "type": "not_found", "code": None, "message": "no route"},
    ),
}


def write(path: Path, records: list[CallRecord], **kw: Any) -> SqliteSink:
    """Write records through the sink (as the delivery task does) and close it."""
    sink = SqliteSink(path, **kw)

    async def go() -> None:
        await sink.send(records)
        await sink.aclose()

    asyncio.run(go())
    return sink


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "calls.db"
    write(path, list(KINDS.values()))
    return path


# --- what each kind of record becomes -----------------------------------------------


# kind -> (status, http_status, provider, model, prompt, completion, total, source, cost,
#          latency, ttft, error_message)
EXPECTED: dict[str, tuple[Any, ...]] = {
    "chat": ("ok", 200, "openai", "gpt-4o", 12, 7, 19, "reported", 0.0003, 1000.0, None, None),
    "streamed": ("ok", 200, "openai", "gpt-4o", 20, 40, 60, "reported", 0.001, 2000.0, 150.0, None),
    "upstream_error": (
        "error", 429, "openai", "gpt-4o", None, None, None, "none", None, 1000.0, None,
        "Rate limit reached for gpt-4o",
    ),
    "client_aborted": (
        "client_aborted", 200, "openai", "gpt-4o", 30, 3, 33, "estimated", None, 1000.0, 90.0,
        "client disconnected",
    ),
    "embeddings": (
        "ok", 200, "openai", "text-embedding-3-small", 8, 0, 8, "reported", 0.00000016, 1000.0,
        None, None,
    ),
    "no_usage": ("ok", 200, "ollama", "llama3", None, None, None, "none", None, 1000.0, None, None),
    "estimated": ("ok", 200, "mock", "mock-gpt", 5, 5, 10, "estimated", None, 1000.0, None, None),
    "payloads_and_context": (
        "ok", 200, "openai", "gpt-4o", 9, 2, 11, "reported", 0.0001, 1000.0, None, None,
    ),
    "cache_reasoning_cost": (
        "ok", 200, "anthropic", "claude-sonnet-4", 1200, 300, 1500, "reported", 0.0123, 1000.0,
        None, None,
    ),
    # log_statistics off: the record has no usage, neither has the row
    "no_statistics": ("ok", 200, "openai", "gpt-4o", None, None, None, None, None, 1000.0, None, None),
    "no_ai": ("error", 404, None, None, None, None, None, None, None, 1.5, None, "no route"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_record_round_trips(db: Path, kind: str) -> None:
    record = KINDS[kind]
    with open_store(db) as store:
        # the full record, as file-log would write it
        assert store.get(record.id) == record.to_dict()
        (row,) = [r for r in store.latest(100) if r.id == record.id]
    assert (
        row.status,
        row.http_status,
        row.provider,
        row.model,
        row.prompt_tokens,
        row.completion_tokens,
        row.total_tokens,
        row.usage_source,
        row.cost,
        row.latency_ms,
        row.ttft_ms,
        row.error_message,
    ) == EXPECTED[kind]
    assert row.started_at == pytest.approx(record.started_at, abs=0.001)
    assert row.route == record.route and row.consumer == record.consumer


def test_extra_columns_of_a_full_record(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    r = conn.execute(
        "SELECT * FROM calls WHERE id = ?", (KINDS["cache_reasoning_cost"].id,)
    ).fetchone()
    assert (r["cache_read_tokens"], r["cache_write_tokens"], r["reasoning_tokens"]) == (
        1000,
        100,
        120,
    )
    assert r["request_model"] == "claude-sonnet-4"
    assert r["response_model"] == "claude-sonnet-4-20250514"
    assert r["llm_latency_ms"] == 800.0 and r["finish_reason"] == "stop"
    assert r["ended_at"] - r["started_at"] == 1000
    r = conn.execute(
        "SELECT * FROM calls WHERE id = ?", (KINDS["payloads_and_context"].id,)
    ).fetchone()
    assert (r["user_id"], r["session_id"], r["consumer"]) == ("u-42", "s-7", "alice")
    assert (r["method"], r["uri"], r["client_ip"], r["service"]) == (
        "POST",
        "/v1/chat/completions",
        "127.0.0.1",
        "llm",
    )
    r = conn.execute("SELECT * FROM calls WHERE id = ?", (KINDS["upstream_error"].id,)).fetchone()
    assert r["error_type"] == "rate_limit_error"
    r = conn.execute("SELECT * FROM calls WHERE id = ?", (KINDS["no_ai"].id,)).fetchone()
    assert (r["provider"], r["stream"], r["route_type"]) == (None, None, None)
    conn.close()


def test_payloads_and_context_are_in_the_full_record(db: Path) -> None:
    with open_store(db) as store:
        full = store.get(KINDS["payloads_and_context"].id)
        bare = store.get(KINDS["chat"].id)
    assert full["ai"]["proxy"]["payload"]["request"]["messages"] == [
        {"role": "user", "content": "hi"}
    ]
    assert full["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == "yo"
    assert full["context"]["metadata"] == {"user_id": "u-42", "tier": "gold"}
    assert "payload" not in bare["ai"]["proxy"]
    # the headers are the record's, already redacted
    assert full["request"]["headers"]["authorization"] == "[REDACTED]"


# --- the read API ---------------------------------------------------------------------


def ids(rows: list[Any]) -> list[str]:
    return [r.id[-2:] for r in rows]


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({}, ["0b", "0a", "09", "08", "07", "06", "05", "04", "03", "02", "01"]),
        ({"limit": 3}, ["0b", "0a", "09"]),
        ({"model": "gpt-4o"}, ["0a", "08", "04", "03", "02", "01"]),
        ({"provider": "anthropic"}, ["09"]),
        ({"consumer": "alice"}, ["08"]),
        ({"status": "error"}, ["0b", "03"]),
        ({"status": "client_aborted"}, ["04"]),
        ({"route": "embeddings"}, ["05"]),
        ({"since": T0 + 30, "until": T0 + 60}, ["06", "05", "04"]),  # until is exclusive
        ({"since": T0 + 95}, ["0b"]),
        ({"model": "gpt-4o", "status": "ok", "since": T0 + 5}, ["0a", "08", "02"]),
        ({"model": "no-such-model"}, []),
    ],
)
def test_latest_filters(db: Path, filters: dict[str, Any], expected: list[str]) -> None:
    limit = filters.pop("limit", 50)
    with open_store(db) as store:
        assert ids(store.latest(limit, **filters)) == expected


def test_latest_takes_datetimes(db: Path) -> None:
    from datetime import UTC, datetime

    with open_store(db) as store:
        rows = store.latest(since=datetime.fromtimestamp(T0 + 95, UTC))
    assert ids(rows) == ["0b"]


def test_totals_by_model(db: Path) -> None:
    with open_store(db) as store:
        totals = {t.key: t for t in store.totals("model")}
    gpt = totals["gpt-4o"]
    # chat, streamed, upstream_error, client_aborted, payloads_and_context, no_statistics
    assert gpt.calls == 6
    assert gpt.errors == 2  # the 429 and the client that left
    assert gpt.prompt_tokens == 12 + 20 + 30 + 9
    assert gpt.completion_tokens == 7 + 40 + 3 + 2
    assert gpt.total_tokens == gpt.prompt_tokens + gpt.completion_tokens
    assert gpt.cost == pytest.approx(0.0003 + 0.001 + 0.0001)
    assert gpt.avg_latency_ms == 1000.0 + (2000.0 - 1000.0) / 6
    assert totals[None].calls == 1  # the call without an ai part
    assert totals["claude-sonnet-4"].cost == 0.0123
    # most expensive first
    assert next(iter(totals)) == "claude-sonnet-4"


@pytest.mark.parametrize(
    "by, filters, expected",
    [
        ("consumer", {}, {None: 9, "alice": 1, "bob": 1}),
        ("provider", {}, {"openai": 7, "anthropic": 1, "ollama": 1, "mock": 1, None: 1}),
        ("status", {}, {"ok": 8, "error": 2, "client_aborted": 1}),
        ("route", {"status": "ok"}, {"chat": 6, "embeddings": 1, "local": 1}),
        ("model", {"since": T0 + 85}, {"gpt-4o": 1, None: 1}),
    ],
)
def test_totals_by_group(db: Path, by: str, filters: dict[str, Any], expected: dict) -> None:
    with open_store(db) as store:
        assert {t.key: t.calls for t in store.totals(by, **filters)} == expected


def test_totals_refuses_an_unknown_group(db: Path) -> None:
    with open_store(db) as store, pytest.raises(ValueError, match="cannot group by 'cost; DROP"):
        store.totals("cost; DROP TABLE calls")


def test_get_by_prefix(tmp_path: Path) -> None:
    other = rec("0190b111-2222-7000-8000-000000000001", None)
    write(tmp_path / "p.db", [*KINDS.values(), other])
    with open_store(tmp_path / "p.db") as store:
        assert store.get(KINDS["no_ai"].id)["status"] == "error"
        assert store.get("0190b111")["id"] == other.id  # a unique prefix
        with pytest.raises(LookupError, match="more than one call id starts with '0190a000'"):
            store.get("0190a000")
        assert store.get("ffffffff") is None
        assert store.get("0190b11") is None  # under 8 characters: an id, not a prefix


def test_open_store_without_a_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no call store"):
        open_store(tmp_path / "none.db")


def test_the_read_connection_is_read_only(db: Path) -> None:
    with open_store(db) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.conn.execute("DELETE FROM calls")
    with open_store(db) as store:
        assert store.count() == len(KINDS)


# --- schema ---------------------------------------------------------------------------


def test_schema_version_wal_and_indexes(db: Path) -> None:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {
        name: sql
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'calls'"
        )
    }
    for column in ("started_at", "model", "provider", "consumer", "status"):
        assert f"calls_{column}" in indexes
    # the CLI's queries use them
    for where, index in (
        ("model = 'x' ORDER BY started_at DESC", "calls_model"),
        ("consumer = 'x'", "calls_consumer"),
        ("status = 'x' AND started_at > 0", "calls_status"),
        ("started_at > 5 ORDER BY started_at DESC", "calls_started_at"),
    ):
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(f"EXPLAIN QUERY PLAN SELECT id FROM calls WHERE {where}")
        )
        assert index in plan, (where, plan)
    conn.close()


def test_a_migration_upgrades_an_existing_store(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        store_mod,
        "MIGRATIONS",
        [*store_mod.MIGRATIONS, ("ALTER TABLE calls ADD COLUMN tier TEXT",)],
    )
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    write(db, [rec("0190a000-0000-7000-8000-0000000000ff", None, at=T0 + 200)])
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    columns = [r[1] for r in conn.execute("PRAGMA table_info(calls)")]
    assert "tier" in columns
    assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == len(KINDS) + 1
    conn.close()


def test_a_failed_migration_leaves_the_store_as_it_was(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        store_mod,
        "MIGRATIONS",
        [*store_mod.MIGRATIONS, ("ALTER TABLE calls ADD COLUMN tier TEXT", "NOT SQL")],
    )
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    sink = write(db, [rec("0190a000-0000-7000-8000-0000000000ff", None, at=T0 + 200)])
    assert (sink.written, sink.failed) == (0, 1)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "tier" not in [r[1] for r in conn.execute("PRAGMA table_info(calls)")]
    conn.close()


def test_a_store_from_a_newer_llmitm_is_not_written_to(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    sink = write(db, [rec("0190a000-0000-7000-8000-0000000000ff", None)])
    assert (sink.written, sink.failed, sink.pending) == (0, 1, 0)
    with pytest.raises(SchemaError, match="schema version 99"):
        open_store(db)


def test_a_new_store_is_created_with_its_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "calls.db"
    write(path, [KINDS["chat"]])
    with open_store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.count() == 1


# --- writing --------------------------------------------------------------------------


def test_the_same_record_twice_is_stored_once(tmp_path: Path) -> None:
    sink = write(tmp_path / "c.db", [KINDS["chat"], KINDS["chat"], KINDS["streamed"]])
    assert sink.failed == 0
    with open_store(tmp_path / "c.db") as store:
        assert store.count() == 2


def test_unicode_and_lone_surrogates(tmp_path: Path) -> None:
    text = "héllo 世界 🚀 مرحبا \u200d"
    record = rec(
        "0190a000-0000-7000-8000-0000000000aa",
        ai(
            request_model="模型-ü",
            usage=Usage(1, 1),
            request_payload={"messages": [{"role": "user", "content": text}]},
            # json.loads("\"\\ud800\"") gives a lone surrogate: clients can send them
            response_payload={"choices": [{"text": "broken \ud800 half"}]},
        ),
        context={"user_id": "ユーザー"},
    )
    plain = rec(
        "0190a000-0000-7000-8000-0000000000ab",
        ai(request_model="🚀-model", usage=Usage(1, 1), request_payload={"content": text}),
    )
    sink = write(tmp_path / "u.db", [record, plain])
    assert (sink.written, sink.failed) == (2, 0)
    with open_store(tmp_path / "u.db") as store:
        got = store.get(record.id)
        assert got["ai"]["proxy"]["payload"]["request"]["messages"][0]["content"] == text
        # the lone surrogate survives as JSON's own escape
        assert (
            got["ai"]["proxy"]["payload"]["response"]["choices"][0]["text"] == "broken \ud800 half"
        )
        assert store.latest(model="模型-ü")[0].id == record.id
        assert store.get(plain.id)["ai"]["proxy"]["payload"]["request"]["content"] == text
        assert store.latest(model="🚀-model")[0].id == plain.id


def test_big_integers_in_a_payload(tmp_path: Path) -> None:
    record = rec(
        "0190a000-0000-7000-8000-0000000000ac",
        ai(request_payload={"seed": 2**70}, usage=Usage(1, 1)),
    )
    sink = write(tmp_path / "i.db", [record])
    assert sink.failed == 0
    with open_store(tmp_path / "i.db") as store:
        assert store.get(record.id)["ai"]["proxy"]["payload"]["request"]["seed"] == 2**70


def test_everything_handed_over_is_written_on_close(tmp_path: Path) -> None:
    path = tmp_path / "drain.db"
    sink = SqliteSink(path)
    gate = threading.Event()
    real_write = sink._write

    def slow_write(rows: list[Any]) -> None:
        gate.wait(5)
        real_write(rows)

    sink._write = slow_write  # type: ignore[method-assign]

    async def go() -> None:
        for b in range(20):
            await sink.send(
                [rec(f"0190a000-0000-7000-8000-{b:06d}{i:06d}", None, at=T0 + b) for i in range(50)]
            )
        assert sink.pending == 1000  # nothing written yet: the writer is held
        gate.set()
        await sink.aclose()  # shut down mid-batch

    asyncio.run(go())
    assert (sink.written, sink.failed, sink.pending) == (1000, 0, 0)
    with open_store(path) as store:
        assert store.count() == 1000


def test_send_never_waits_for_the_disk(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "slow.db")
    gate = threading.Event()
    threads: list[str] = []
    real_write = sink._write

    def held(rows: list[Any]) -> None:
        threads.append(threading.current_thread().name)
        gate.wait(5)
        real_write(rows)

    sink._write = held  # type: ignore[method-assign]

    async def go() -> float:
        start = time.perf_counter()
        for i in range(10):
            await sink.send([rec(f"0190a000-0000-7000-8000-{i:012d}", None)])
        took = time.perf_counter() - start
        gate.set()
        await sink.aclose()
        return took

    took = asyncio.run(go())
    assert took < 0.5  # the writer was blocked the whole time
    assert threads and set(threads) == {sink.name}  # written on the sink's own thread
    assert threading.main_thread().name not in threads
    assert sink.written == 10


def test_the_writer_connection_lives_on_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened_on: list[str] = []
    real = store_mod._connect_writer

    def spy(path: str) -> sqlite3.Connection:
        opened_on.append(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(store_mod, "_connect_writer", spy)
    sink = write(tmp_path / "t.db", [KINDS["chat"]])
    assert opened_on == [sink.name]


def test_a_reader_while_the_writer_writes(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    write(path, [KINDS["chat"]])  # the store exists before the reader opens it
    sink = SqliteSink(path)
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            with open_store(path) as store:
                while not stop.is_set():
                    seen.append(store.count())
                    store.latest(20, model="gpt-4o")
                    store.totals("model")
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()

    async def go() -> None:
        for b in range(40):
            await sink.send(
                [
                    rec(
                        f"0190a001-0000-7000-8000-{b:06d}{i:06d}",
                        ai(usage=Usage(1, 1)),
                        at=T0 + b,
                    )
                    for i in range(25)
                ]
            )
            await asyncio.sleep(0.002)
        await sink.aclose()

    asyncio.run(go())
    time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert not errors
    assert len(seen) > 5
    assert seen == sorted(seen)  # never a partial or rolled-back view
    assert seen[-1] == 1001
    assert sink.written == 1000


def test_a_database_error_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sink = write(blocker / "calls.db", [KINDS["chat"], KINDS["streamed"]])
    assert (sink.written, sink.failed, sink.pending) == (0, 2, 0)


def test_the_store_can_be_written_again_after_close(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    sink = SqliteSink(path)

    async def go() -> None:
        await sink.send([KINDS["chat"]])
        await sink.aclose()
        await sink.send([KINDS["streamed"]])
        assert await sink.flush()
        await sink.aclose()

    asyncio.run(go())
    with open_store(path) as store:
        assert store.count() == 2


def test_old_calls_are_deleted_with_max_age_days(tmp_path: Path) -> None:
    now = time.time()
    old = rec("0190a000-0000-7000-8000-0000000000c1", None, at=now - 10 * 86400)
    new = rec("0190a000-0000-7000-8000-0000000000c2", None, at=now - 3600)
    write(tmp_path / "age.db", [old, new], max_age_days=7)
    with open_store(tmp_path / "age.db") as store:
        assert [r.id for r in store.latest()] == [new.id]
    write(tmp_path / "keep.db", [old, new])  # default: keep every call
    with open_store(tmp_path / "keep.db") as store:
        assert store.count() == 2


def test_a_closed_store_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "closed.db"
    write(path, [KINDS["chat"]])
    # the writer closed its connection: no -wal or -shm is left behind
    assert not Path(f"{path}-wal").exists()
    with open_store(path) as store:
        assert store.count() == 1


# --- config ---------------------------------------------------------------------------


def test_config_and_from_config(tmp_path: Path) -> None:
    sink = from_config(SqliteConfig(path=str(tmp_path / "x.db"), max_age_days=30), "abc123")
    assert sink.name == "sqlite:abc123"
    assert sink.path == str(tmp_path / "x.db")
    assert sink.max_age_days == 30
    with pytest.raises(ValidationError, match="pth"):
        SqliteConfig(pth="x.db")
    with pytest.raises(ValidationError, match="greater than 0"):
        SqliteConfig(max_age_days=0)


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(store_mod.ENV_PATH, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert SqliteSink().path == str(tmp_path / ".llmitm" / "llmitm.db")
    assert SqliteSink("~/calls.db").path == str(tmp_path / "calls.db")
    monkeypatch.setenv(store_mod.ENV_PATH, str(tmp_path / "env.db"))
    assert SqliteSink().path == str(tmp_path / "env.db")
    write(tmp_path / "env.db", [KINDS["chat"]])
    with open_store() as store:  # the CLI's default is the same file
        assert store.count() == 1
