"""The embedded call store: every call record in a local SQLite file, no account needed.

With no sink configured, a fresh install still keeps every call: records land in
`~/.llmitm/llmitm.db` (or `$LLMITM_STORE`, or the configured path; parent directories
are created). One table, `calls`, holds the columns the traces CLI lists, filters and
sums on (time, route, consumer, provider, model, status, tokens, cost, latency, time
to first token) as real, indexed columns, plus the whole record as JSON (messages,
response and usage of one call in full).

Writing: `SqliteSink` has the interface of `exporters.file.FileSink`. Records are
serialized on the delivery task (no disk I/O there) and handed through a queue to one
writer thread that owns the only writing connection: each wake-up writes everything
queued in one transaction. The database runs in WAL mode, so readers (the CLI, other
processes) never wait for the writer and the writer never waits for them. Ids are
the records' UUIDv7s and inserts are `OR IGNORE`, so a record delivered twice is
stored once. `aclose()` / `close_sync()` write everything already handed over
before the thread stops.

Schema: versioned with `PRAGMA user_version`; `MIGRATIONS[i]` takes a database from
version i to i + 1, in one transaction. A database from a newer llmitm (a version
beyond the last migration) is refused rather than written to.

Reading: `open_store(path)` returns a `Store` on a read-only connection, usable from
plain synchronous code: `latest(...)` (the calls table, newest first, with filters),
`totals(by=...)` (sums per model, consumer, provider, route or status) and `get(id)`
(one call's full record).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from exporters._threads import run_blocking
from exporters.record import CallRecord
from providers.options import Strict

log = logging.getLogger(__name__)

#: environment variable naming the store when no path is configured
ENV_PATH = "LLMITM_STORE"


def default_path() -> str:
    """Where the store lives when no path is configured: `$LLMITM_STORE`, else
    `~/.llmitm/llmitm.db` (next to nothing else: mitmproxy's own files stay in
    `~/.mitmproxy`)."""
    return os.environ.get(ENV_PATH) or str(Path.home() / ".llmitm" / "llmitm.db")


def resolve_path(path: str | os.PathLike[str] | None) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path) if path else default_path()))


class SqliteConfig(Strict):
    """The embedded store (no Kong equivalent: Kong always needs a sink of its own)."""

    path: str | None = Field(
        None,
        description="SQLite file the call records are written to (parent directories "
        "are created); default $LLMITM_STORE, else ~/.llmitm/llmitm.db.",
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        description="Delete calls older than this many days (checked hourly); "
        "default: keep every call.",
    )


def from_config(config: SqliteConfig, key: str) -> SqliteSink:
    return SqliteSink(config.path, max_age_days=config.max_age_days, name=f"sqlite:{key}")


# --- schema ---------------------------------------------------------------------------

#: one entry per schema version: the statements that take version i to version i + 1
MIGRATIONS: list[Sequence[str]] = [
    (
        """
        CREATE TABLE calls (
            id                 TEXT PRIMARY KEY,   -- the record's UUIDv7
            started_at         INTEGER NOT NULL,   -- epoch milliseconds
            ended_at           INTEGER NOT NULL,
            status             TEXT NOT NULL,      -- ok, error, client_aborted
            http_status        INTEGER,            -- what the client got
            route              TEXT,
            service            TEXT,
            consumer           TEXT,
            client_ip          TEXT,
            method             TEXT,
            uri                TEXT,
            provider           TEXT,
            route_type         TEXT,
            model              TEXT,               -- requested model, else the response's
            request_model      TEXT,
            response_model     TEXT,
            stream             INTEGER,            -- 0/1, NULL without an ai part
            prompt_tokens      INTEGER,            -- NULL: no usage (or log_statistics off)
            completion_tokens  INTEGER,
            total_tokens       INTEGER,
            cache_read_tokens  INTEGER,
            cache_write_tokens INTEGER,
            reasoning_tokens   INTEGER,
            usage_source       TEXT,               -- reported, estimated or none
            cost               REAL,
            latency_ms         REAL,               -- whole call, as the client saw it
            llm_latency_ms     REAL,               -- the provider's part
            ttft_ms            REAL,               -- time to first token
            finish_reason      TEXT,
            error_type         TEXT,
            error_message      TEXT,
            user_id            TEXT,
            session_id         TEXT,
            record             TEXT NOT NULL       -- the whole record, JSON (record.to_dict())
        )
        """,
        "CREATE INDEX calls_started_at ON calls (started_at)",
        "CREATE INDEX calls_model ON calls (model, started_at)",
        "CREATE INDEX calls_provider ON calls (provider, started_at)",
        "CREATE INDEX calls_consumer ON calls (consumer, started_at)",
        "CREATE INDEX calls_status ON calls (status, started_at)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = [
    "id",
    "started_at",
    "ended_at",
    "status",
    "http_status",
    "route",
    "service",
    "consumer",
    "client_ip",
    "method",
    "uri",
    "provider",
    "route_type",
    "model",
    "request_model",
    "response_model",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_source",
    "cost",
    "latency_ms",
    "llm_latency_ms",
    "ttft_ms",
    "finish_reason",
    "error_type",
    "error_message",
    "user_id",
    "session_id",
    "record",
]
_INSERT = (
    f"INSERT OR IGNORE INTO calls ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)


class SchemaError(RuntimeError):
    """The database's schema is one this llmitm cannot use."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to `SCHEMA_VERSION` (each step in one transaction; safe when
    several processes open a new database at once). Returns the version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the call store has schema version {version}, newer than this llmitm's "
            f"{SCHEMA_VERSION}: upgrade llmitm or configure another path"
        )
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have migrated meanwhile: read again under the lock
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


def _connect_writer(path: str) -> sqlite3.Connection:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")  # another writer (process) may hold it
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


# --- records to rows ------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """A string SQLite can store (lone surrogates from JSON escapes are replaced)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _dump(record: CallRecord) -> tuple[str, bool]:
    """The record as JSON text, and whether it was clean UTF-8. orjson refuses lone
    surrogates and integers beyond 64 bits, which decoded request bodies may hold: the
    json module writes those (surrogates escaped)."""
    try:
        return record.encoded().decode(), True
    except TypeError:
        return json.dumps(record.to_dict(), default=str, ensure_ascii=True), False


def row(record: CallRecord) -> tuple[Any, ...]:
    """The `calls` row of a record, in `_COLUMNS` order."""
    ai = record.ai
    usage = ai.usage if ai is not None and ai.log_statistics else None
    stats = ai is not None and ai.log_statistics
    err = record.error or {}
    ctx = record.context or {}
    lat = record.latencies or {}
    ttft = ai.time_to_first_token_ms if ai is not None else None
    if ttft is None:
        ttft = lat.get("time_to_first_token")
    text, clean = _dump(record)
    values = (
        record.id,
        int(record.started_at * 1000),
        int(record.ended_at * 1000),
        record.status,
        (record.response or {}).get("status"),
        record.route,
        record.service,
        record.consumer,
        record.client_ip,
        (record.request or {}).get("method"),
        (record.request or {}).get("uri"),
        ai.provider if ai else None,
        ai.route_type if ai else None,
        (ai.request_model or ai.response_model) if ai else None,
        ai.request_model if ai else None,
        ai.response_model if ai else None,
        int(ai.stream) if ai else None,
        usage.prompt_tokens if usage else None,
        usage.completion_tokens if usage else None,
        usage.total_tokens if usage else None,
        usage.cache_read_tokens if usage else None,
        usage.cache_write_tokens if usage else None,
        usage.reasoning_tokens if usage else None,
        ("none" if usage is None else "estimated" if usage.estimated else "reported")
        if stats
        else None,
        ai.cost if stats else None,
        lat.get("request"),
        ai.llm_latency_ms if ai else None,
        ttft,
        ai.finish_reason if ai else None,
        _str(err.get("type")),
        _str(err.get("message")),
        _str(ctx.get("user_id")),
        _str(ctx.get("session_id")),
        text,
    )
    return values if clean else tuple(_clean(v) for v in values)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# --- the sink -------------------------------------------------------------------------

_STOP = object()  # tells the writer thread to finish
_PRUNE_EVERY = 3600.0  # seconds between deletions of calls older than max_age_days

#: seconds to wait before each new attempt at a write that failed for a reason that
#: may pass (a locked database, a full disk, an I/O error); then the rows count as failed
RETRY_DELAYS = (0.05, 0.25, 1.0)

#: records handed to the writer thread and not yet written, at most (the delivery keeps
#: the rest, bounded too: exporters/delivery.py)
MAX_PENDING = 2_000

# sqlite3.OperationalError messages of faults that may clear by themselves
_TRANSIENT = ("locked", "busy", "full", "i/o", "unable to open", "readonly")


def _transient(error: Exception) -> bool:
    if isinstance(error, OSError):
        return True
    if isinstance(error, sqlite3.OperationalError):
        text = str(error).lower()
        return any(word in text for word in _TRANSIENT)
    return False


class SqliteSink:
    """Writes call records to the SQLite store from a dedicated thread.

    `written`, `failed` and `pending` count records: stored (duplicates included),
    lost to a database error (after the retries), and handed over but not yet written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_age_days: float | None = None,
        name: str | None = None,
    ) -> None:
        self.path = resolve_path(path)
        self.name = name or f"sqlite:{self.path}"
        self.max_age_days = max_age_days
        self.written = 0
        self.failed = 0
        self.pending = 0
        self.max_pending = MAX_PENDING
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards `pending`, updated by both sides
        self._conn: sqlite3.Connection | None = None
        self._pruned_at = 0.0

    # -- event loop side

    async def send(self, records: list[CallRecord]) -> None:
        if not records:
            return
        rows = [row(r) for r in records]
        with self._lock:
            self.pending += len(rows)
        self._ensure_thread()
        self._queue.put(rows)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait (off the loop) until everything handed over so far is written."""
        return await run_blocking(self.flush_sync, timeout)

    async def aclose(self) -> None:
        await run_blocking(self.close_sync)

    # -- any thread

    def flush_sync(self, timeout: float = 10.0) -> bool:
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close_sync(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer thread (closing the database)."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            log.error("%s: writer did not finish within %.0f s", self.name, timeout)
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    # -- the writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[tuple[Any, ...]] = []
            waiters: list[threading.Event] = []
            stop = False
            while True:  # take whatever else is queued: one transaction for all of it
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.extend(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            self._maybe_prune()
            for w in waiters:
                w.set()
            if stop:
                self._close()
                return

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            for attempt, delay in enumerate(RETRY_DELAYS):
                try:
                    self._insert(rows)
                    return
                except Exception as e:
                    self._close()  # reopened at the next attempt (the file may be fixed)
                    if not _transient(e):
                        raise
                    if not attempt:
                        log.warning(
                            "%s: could not write %d record(s) (%s): trying again %d times",
                            self.name,
                            len(rows),
                            e,
                            len(RETRY_DELAYS),
                        )
                time.sleep(delay)  # the writer thread's own time: nothing else waits
            self._insert(rows)
        except Exception as e:  # noqa: BLE001 - the writer thread must survive any failure
            with self._lock:
                self.failed += len(rows)
            log.error("%s: could not write %d record(s): %s", self.name, len(rows), e)
            self._close()  # reopen next time (the file may have been removed or fixed)
        finally:
            with self._lock:
                self.pending -= len(rows)

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction with every row (counted in `written`), or an exception."""
        if self._conn is None:
            self._conn = _connect_writer(self.path)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        with self._lock:
            self.written += len(rows)

    def _maybe_prune(self) -> None:
        if self.max_age_days is None or self._conn is None:
            return
        now = time.time()
        if now - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = now
        cutoff = int((now - self.max_age_days * 86400) * 1000)
        try:
            deleted = self._conn.execute(
                "DELETE FROM calls WHERE started_at < ?", (cutoff,)
            ).rowcount
        except sqlite3.Error as e:
            log.error("%s: could not delete old calls: %s", self.name, e)
            return
        if deleted:
            log.info(
                "%s: deleted %d call(s) older than %g days", self.name, deleted, self.max_age_days
            )

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


# --- reading --------------------------------------------------------------------------

#: what `totals(by=...)` can group on
GROUPS = ("model", "provider", "consumer", "route", "status")


@dataclass(frozen=True, slots=True)
class CallRow:
    """One line of the calls table (times in epoch seconds, latencies in ms)."""

    id: str
    started_at: float
    status: str
    http_status: int | None
    route: str | None
    consumer: str | None
    provider: str | None
    model: str | None
    response_model: str | None
    stream: bool | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    usage_source: str | None
    cost: float | None
    latency_ms: float | None
    ttft_ms: float | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class Total:
    """Sums over the calls of one group (`key` is None for calls without one)."""

    key: str | None
    calls: int
    errors: int  # calls whose status is not "ok"
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float | None  # sum of the known costs; None when no call of the group has one
    avg_latency_ms: float | None
    priced_calls: int = 0  # calls with a known cost: `cost` sums these only


_ROW_SQL = (
    "SELECT id, started_at, status, http_status, route, consumer, provider, model, "
    "response_model, stream, prompt_tokens, completion_tokens, total_tokens, usage_source, "
    "cost, latency_ms, ttft_ms, error_message FROM calls"
)

Since = float | datetime | None


def _ms(value: float | datetime) -> int:
    seconds = value.timestamp() if isinstance(value, datetime) else float(value)
    return int(seconds * 1000)


def _where(
    *,
    model: str | None = None,
    provider: str | None = None,
    consumer: str | None = None,
    status: str | None = None,
    route: str | None = None,
    since: Since = None,
    until: Since = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("model", model),
        ("provider", provider),
        ("consumer", consumer),
        ("status", status),
        ("route", route),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        clauses.append("started_at >= ?")
        args.append(_ms(since))
    if until is not None:
        clauses.append("started_at < ?")
        args.append(_ms(until))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class Store:
    """Read-only access to the call store (one connection; use from one thread)."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path

    def latest(
        self,
        limit: int = 50,
        *,
        model: str | None = None,
        provider: str | None = None,
        consumer: str | None = None,
        status: str | None = None,
        route: str | None = None,
        since: Since = None,
        until: Since = None,
    ) -> list[CallRow]:
        """The newest calls first; `since` (inclusive) and `until` (exclusive) are epoch
        seconds or datetimes."""
        where, args = _where(
            model=model,
            provider=provider,
            consumer=consumer,
            status=status,
            route=route,
            since=since,
            until=until,
        )
        cur = self.conn.execute(
            f"{_ROW_SQL}{where} ORDER BY started_at DESC, id DESC LIMIT ?", [*args, int(limit)]
        )
        return [_call_row(r) for r in cur]

    def newer(self, after: int, **filters: Any) -> list[tuple[int, CallRow]]:
        """The calls stored after position `after` (SQLite's rowid), in the order they
        landed, with their positions: what a follower prints next. Insertion order, not
        start time: a long stream lands after shorter calls that started later."""
        where, args = _where(**filters)
        where = f"{where} AND rowid > ?" if where else " WHERE rowid > ?"
        sql = _ROW_SQL.replace("SELECT ", "SELECT rowid, ", 1)
        cur = self.conn.execute(f"{sql}{where} ORDER BY rowid", [*args, int(after)])
        return [(r[0], _call_row(r[1:])) for r in cur]

    def last_position(self) -> int:
        """The position of the last stored call (0 when empty)."""
        return self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM calls").fetchone()[0]

    def totals(
        self,
        by: str = "model",
        *,
        model: str | None = None,
        provider: str | None = None,
        consumer: str | None = None,
        status: str | None = None,
        route: str | None = None,
        since: Since = None,
        until: Since = None,
    ) -> list[Total]:
        """Sums per `by` (one of GROUPS), the most expensive first, then the busiest."""
        if by not in GROUPS:
            raise ValueError(f"cannot group by {by!r} (expected one of: {', '.join(GROUPS)})")
        where, args = _where(
            model=model,
            provider=provider,
            consumer=consumer,
            status=status,
            route=route,
            since=since,
            until=until,
        )
        # SUM, not TOTAL: calls without a known cost add nothing, and a group where no
        # call has one sums to NULL (unknown), not to $0; COUNT(cost) says how many had one
        cur = self.conn.execute(
            f"SELECT {by}, COUNT(*), SUM(status != 'ok'), TOTAL(prompt_tokens), "
            f"TOTAL(completion_tokens), TOTAL(total_tokens), SUM(cost), AVG(latency_ms), "
            f"COUNT(cost) "
            f"FROM calls{where} GROUP BY {by} ORDER BY TOTAL(cost) DESC, COUNT(*) DESC, {by}",
            args,
        )
        return [
            Total(
                key=r[0],
                calls=r[1],
                errors=r[2] or 0,
                prompt_tokens=int(r[3]),
                completion_tokens=int(r[4]),
                total_tokens=int(r[5]),
                cost=round(r[6], 10) if r[6] is not None else None,
                avg_latency_ms=r[7],
                priced_calls=r[8],
            )
            for r in cur
        ]

    def get(self, id: str) -> dict[str, Any] | None:
        """One call's full record (`CallRecord.to_dict()`), by id or by a unique prefix of
        at least 8 characters; None if there is none. An ambiguous prefix is an error."""
        found = self.conn.execute("SELECT record FROM calls WHERE id = ?", (id,)).fetchone()
        if found is None and len(id) >= 8:
            hits = self.conn.execute(
                "SELECT record FROM calls WHERE id >= ? AND id < ? LIMIT 2",
                (id, id + "\U0010ffff"),
            ).fetchall()
            if len(hits) > 1:
                raise LookupError(f"more than one call id starts with {id!r}")
            found = hits[0] if hits else None
        return json.loads(found[0]) if found else None

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[CallRow]:  # every call, oldest first
        for r in self.conn.execute(f"{_ROW_SQL} ORDER BY started_at, id"):
            yield _call_row(r)


def _call_row(r: tuple[Any, ...]) -> CallRow:
    return CallRow(
        id=r[0],
        started_at=r[1] / 1000,
        status=r[2],
        http_status=r[3],
        route=r[4],
        consumer=r[5],
        provider=r[6],
        model=r[7],
        response_model=r[8],
        stream=None if r[9] is None else bool(r[9]),
        prompt_tokens=r[10],
        completion_tokens=r[11],
        total_tokens=r[12],
        usage_source=r[13],
        cost=r[14],
        latency_ms=r[15],
        ttft_ms=r[16],
        error_message=r[17],
    )


def open_store(path: str | os.PathLike[str] | None = None) -> Store:
    """The store at `path` (default: `default_path()`), read-only. Raises
    FileNotFoundError when no call was ever recorded there, SchemaError when it was
    written by a newer llmitm."""
    resolved = resolve_path(path)
    if not os.path.exists(resolved):
        raise FileNotFoundError(f"no call store at {resolved} (no call recorded yet?)")
    conn = sqlite3.connect(f"{Path(resolved).as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the call store at {resolved} has schema version {version}, newer than "
                f"this llmitm's {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            raise SchemaError(
                f"the call store at {resolved} has schema version {version}; the gateway "
                f"upgrades it to {SCHEMA_VERSION} when it next writes a call"
            )
    except BaseException:
        conn.close()
        raise
    return Store(conn, resolved)
