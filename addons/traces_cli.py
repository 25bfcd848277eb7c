"""`llmitm traces`: the calls in the embedded SQLite store, from a terminal.

    llmitm traces [FILTERS] [--limit N] [--follow] [--json]   the latest calls, a table
    llmitm traces totals [--by model|provider|consumer|route|status] [FILTERS] [--json]
    llmitm traces show ID [--json]                              one call in full

FILTERS: --model, --provider, --consumer, --status (ok, error, client_aborted),
--route, --since and --until (an ISO time, or a duration ago such as 30s, 15m, 2h, 1d,
1w). Every command takes --store PATH (default: $LLMITM_STORE, else
~/.llmitm/llmitm.db, the gateway's `llmitm_store` default).

Everything is read through `exporters.sqlite`'s read-only `Store`, so the gateway can
keep writing meanwhile (WAL). `--follow` polls the store twice a second for calls that
landed since the last poll (by insertion order, so a long stream that started before
a short call still shows up when it ends) and prints them as they come; started before
the gateway's first call, it waits for the store to appear. Ctrl-C ends it with status
0. `--json` prints one JSON document (JSON lines with `--follow`).

`totals` sums the cost of the calls that have one (a model with no price has none, not
$0): the `priced` column counts them, `*` marks a partial sum, `-` a group of calls
none of which has a cost.

Tables are drawn by `rich`: coloured on a terminal, plain aligned text (no colour, no
box characters, no wrapping) when the output is a pipe or a file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from exporters import sqlite as store_mod
from exporters.sqlite import GROUPS, CallRow, SchemaError, Store, Total, open_store

#: seconds between two polls of the store in --follow
POLL_INTERVAL = 0.5
#: calls shown before following when no --limit is given
FOLLOW_BACKLOG = 10
#: how many characters of an id the table shows (the UUIDv7's millisecond and its
#: per-millisecond counter: unique in practice, and accepted by `show`)
SHORT_ID = 18
#: console width when the output is not a terminal: wide enough that rows never wrap
PLAIN_WIDTH = 300
#: the route name of observe mode's calls (addons.observe.ROUTE_NAME, not imported:
#: the command stays free of mitmproxy)
OBSERVED_ROUTE = "observed"

_FILTERS = ("model", "provider", "consumer", "status", "route", "since", "until")
_STATUS_ALIASES = {"aborted": "client_aborted", "err": "error", "errors": "error"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)


class CliError(Exception):
    """A problem to report in one line, exit status 1."""


# --- arguments ------------------------------------------------------------------------


def parse_time(value: str, now: float | None = None) -> float:
    """Epoch seconds of `--since`/`--until`: a duration ago (`90s`, `15m`, `2h`, `1d`,
    `1w`), `now`, or an ISO 8601 date or time (without an offset: local time)."""
    now = time.time() if now is None else now
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    if text.lower() == "now":
        return now
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a time ago (30s, 15m, 2h, 1d, 1w) nor an ISO time "
            "(2025-01-31, 2025-01-31T14:05, 2025-01-31T14:05:00Z)"
        ) from None
    return when.timestamp()  # naive: local time


def _limit(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return n


def _common(p: argparse.ArgumentParser, *, top: bool) -> None:
    # The options are on `traces` and on each of its commands, so they can go before or
    # after the command's name; on the commands their default is SUPPRESS, so that a
    # value given before the name is not reset by the command's own default.
    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--store",
        metavar="PATH",
        default=d(None),
        help="the SQLite store (default: $LLMITM_STORE, else ~/.llmitm/llmitm.db)",
    )
    p.add_argument("--json", action="store_true", default=d(False), help="print JSON (for scripts)")


def _filters(p: argparse.ArgumentParser, *, top: bool) -> None:
    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    g = p.add_argument_group("filters")
    g.add_argument("--model", default=d(None), help="requested model (else the response's)")
    g.add_argument("--provider", default=d(None), help="provider name (openai, anthropic, ...)")
    g.add_argument("--consumer", default=d(None), help="consumer name")
    g.add_argument(
        "--status", default=d(None), help="call status: ok, error or client_aborted (aborted)"
    )
    g.add_argument("--route", default=d(None), help="route name")
    g.add_argument(
        "--since",
        type=parse_time,
        default=d(None),
        metavar="TIME",
        help="calls started at or after TIME: ISO time, or ago like 15m, 2h, 1d",
    )
    g.add_argument(
        "--until",
        type=parse_time,
        default=d(None),
        metavar="TIME",
        help="calls started before TIME: ISO time, or ago like 15m, 2h, 1d",
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add `traces` to the `llmitm` command's subparsers."""
    traces = sub.add_parser(
        "traces",
        help="list, sum and show the calls in the embedded store",
        description="The calls the gateway recorded in its embedded SQLite store: the "
        "latest as a table (default), totals per group, or one call in full.",
    )
    _common(traces, top=True)
    _filters(traces, top=True)
    traces.add_argument(
        "--limit", type=_limit, default=None, help="how many calls (default 50; 10 with --follow)"
    )
    traces.add_argument(
        "-f", "--follow", action="store_true", help="keep printing calls as they land (Ctrl-C)"
    )
    traces.set_defaults(func=run, traces_command="list", by="model")
    commands = traces.add_subparsers(dest="traces_command", metavar="{totals,show}")

    totals = commands.add_parser(
        "totals", help="calls, tokens, cost and errors per model, consumer, ..."
    )
    _common(totals, top=False)
    _filters(totals, top=False)
    totals.add_argument(
        "--by", choices=GROUPS, default="model", help="what to group on (default: model)"
    )

    show = commands.add_parser("show", help="one call in full (an id or its first 8+ chars)")
    _common(show, top=False)
    show.add_argument("id", help="the call's id, or a unique prefix of 8 characters or more")
    return traces


def main(argv: list[str] | None = None) -> int:
    """`llmitm traces ...` on its own (the `llmitm` command calls `run`)."""
    parser = argparse.ArgumentParser(prog="llmitm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["traces", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = sys.stdout if out is None else out
    console = make_console(out)
    command = args.traces_command or "list"
    if command != "list" and (args.follow or args.limit is not None):
        print(f"llmitm traces: --follow and --limit are not for `{command}`", file=sys.stderr)
        return 2
    try:
        if command == "list" and args.follow:
            store = _wait_for_store(args.store, args.json, console)
        else:
            store = _open(args.store)
    except CliError as e:
        print(f"llmitm traces: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    try:
        with store:
            if command == "show":
                return _show(store, args, out, console)
            filters = _filter_values(args)
            if command == "totals":
                return _totals(store, args.by, filters, args.json, out, console)
            if args.follow:
                limit = FOLLOW_BACKLOG if args.limit is None else args.limit
                return follow(store, filters, limit, args.json, out, console)
            limit = 50 if args.limit is None else args.limit
            return _list(store, filters, limit, args.json, out, console)
    except CliError as e:
        print(f"llmitm traces: {e}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:
        print(f"llmitm traces: cannot read {store.path}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `llmitm traces --json | head`: the reader left. No traceback, and status 1 as
        # rich itself (and Python's documentation) does for a broken pipe.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1


def _open(path: str | None) -> Store:
    resolved = store_mod.resolve_path(path)
    try:
        return open_store(resolved)
    except FileNotFoundError:
        raise CliError(
            f"no call store at {resolved}.\n"
            "The gateway creates it when it records its first call: run the gateway "
            "(`llmitm run`, or mitmdump -s addons/gateway.py ... with "
            "`--set llmitm_store=PATH`), send it a request, then try again; or point "
            f"--store (or ${store_mod.ENV_PATH}) at an existing store."
        ) from None
    except SchemaError as e:
        raise CliError(str(e)) from None
    except sqlite3.Error as e:
        raise CliError(f"cannot open the call store at {resolved}: {e}") from None


def _wait_for_store(path: str | None, as_json: bool, console: Console) -> Store:
    """--follow before the gateway recorded anything: wait for the store to appear (the
    gateway creates it with its first call), then follow it. Ctrl-C ends the wait."""
    resolved = store_mod.resolve_path(path)
    said = False
    while True:
        try:
            return open_store(resolved)
        except FileNotFoundError:
            pass
        except SchemaError as e:
            if _schema_version(resolved) > store_mod.SCHEMA_VERSION:
                raise CliError(str(e)) from None  # written by a newer llmitm
            # older, or just created: the gateway brings it up to date as it writes
        except sqlite3.Error as e:
            raise CliError(f"cannot open the call store at {resolved}: {e}") from None
        if not said and not as_json:
            console.print(
                f"(no call store at {resolved} yet: waiting for the gateway's first call; "
                "Ctrl-C to stop)",
                style="" if _plain(console) else "dim",
            )
            console.file.flush()
            said = True
        time.sleep(POLL_INTERVAL)


def _schema_version(path: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error:
        return 0


def _filter_values(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name, None) for name in _FILTERS}
    if values["status"] is not None:
        values["status"] = _STATUS_ALIASES.get(values["status"].lower(), values["status"])
    return values


# --- output helpers -------------------------------------------------------------------


def make_console(out: IO[str]) -> Console:
    """Colour and the terminal's width on a terminal; plain, unwrapped text otherwise."""
    isatty = hasattr(out, "isatty") and out.isatty()
    if isatty:
        return Console(file=out, highlight=False)
    return Console(
        file=out,
        highlight=False,
        color_system=None,
        force_terminal=False,
        width=PLAIN_WIDTH,
        soft_wrap=True,
    )


def _plain(console: Console) -> bool:
    return not console.is_terminal


def emit(console: Console, renderable: Any) -> None:
    """Print a table; in plain mode without the cells' trailing padding."""
    if not _plain(console):
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    console.file.write(text + "\n" if text else "")


def fmt_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def fmt_int(n: int | None, estimated: bool = False) -> str:
    if n is None:
        return "-"
    return f"~{n:,}" if estimated else f"{n:,}"


def fmt_cost(cost: float | None) -> str:
    if cost is None:
        return "-"
    if cost == 0:
        return "$0"
    text = f"{cost:.4f}" if abs(cost) >= 0.01 else f"{cost:.8f}"
    text = text.rstrip("0").rstrip(".")
    return f"${text}" if text not in ("0", "-0") else f"${cost:.2e}"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 10_000:
        return f"{ms / 1000:,.1f} s"
    return f"{ms:,.0f} ms"


def fmt_status(row: CallRow) -> str:
    if row.status == "ok":
        return "ok" if row.http_status in (None, 200) else f"ok {row.http_status}"
    if row.status == "client_aborted":
        return "aborted"
    return f"{row.status} {row.http_status}" if row.http_status else row.status


def _status_style(row: CallRow) -> str:
    return {"ok": "green", "client_aborted": "yellow"}.get(row.status, "red")


def _model(row: CallRow) -> str:
    if row.provider and row.model:
        return f"{row.provider}/{row.model}"
    return row.provider or row.model or "-"


def _json_default(value: Any) -> Any:
    return str(value)


def _dump(data: Any, out: IO[str], *, indent: int | None = 2) -> None:
    out.write(json.dumps(data, indent=indent, ensure_ascii=False, default=_json_default))
    out.write("\n")
    out.flush()


def row_json(row: CallRow) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    return {"id": row.id, "time": iso(row.started_at), **data}


# --- the calls table ------------------------------------------------------------------

# (header, justify, width when following)
_COLUMNS: list[tuple[str, str, int]] = [
    ("time", "left", 19),
    ("id", "left", SHORT_ID),
    ("route", "left", 12),
    ("consumer", "left", 10),
    ("provider/model", "left", 30),
    ("status", "left", 9),
    ("tok in", "right", 9),
    ("tok out", "right", 8),
    ("cost", "right", 11),
    ("latency", "right", 9),
    ("TTFT", "right", 8),
]


_SHRINKABLE = ("id", "route", "consumer", "provider/model")


def calls_table(rows: Iterable[CallRow], console: Console, *, header: bool = True,
                fixed: bool = False) -> Table:  # fmt: skip
    """The calls as a table; `fixed` column widths line up tables printed one after
    another (follow mode)."""
    plain = _plain(console)
    table = Table(
        box=None,
        show_header=header,
        header_style="" if plain else "bold underline",
        pad_edge=False,
        padding=(0, 1),
    )
    for name, justify, width in _COLUMNS:
        text = name in _SHRINKABLE
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            # on a narrow terminal the text columns give way (ellipsis), never numbers
            no_wrap=not text,
            overflow="ellipsis",
            min_width=width if fixed else None,
            max_width=width if fixed else None,
        )
    for r in rows:
        estimated = r.usage_source == "estimated"
        status = Text(fmt_status(r), style="" if plain else _status_style(r))
        table.add_row(
            fmt_time(r.started_at),
            r.id[:SHORT_ID],
            r.route or "-",
            r.consumer or "-",
            _model(r),
            status,
            fmt_int(r.prompt_tokens, estimated),
            fmt_int(r.completion_tokens, estimated),
            fmt_cost(r.cost),
            fmt_ms(r.latency_ms),
            fmt_ms(r.ttft_ms),
        )
    return table


def _list(
    store: Store, filters: dict[str, Any], limit: int, as_json: bool, out: IO[str], console: Console
) -> int:
    rows = store.latest(limit, **filters)
    if as_json:
        _dump([row_json(r) for r in rows], out)
        return 0
    if not rows:
        what = (
            "calls match these filters"
            if any(v is not None for v in filters.values())
            else ("calls recorded yet")
        )
        console.print(f"no {what} (store: {store.path})")
        return 0
    emit(console, calls_table(reversed(rows), console))  # oldest first, like a log
    more = " (--limit for more)" if len(rows) == limit else ""
    console.print(
        f"{len(rows)} call(s) shown{more}; {store.count():,} in {store.path}",
        style="" if _plain(console) else "dim",
    )
    return 0


# --- follow ---------------------------------------------------------------------------


def _newer(store: Store, after: int, filters: dict[str, Any]) -> list[tuple[int, CallRow]]:
    return store.newer(after, **filters)


def _max_rowid(store: Store) -> int:
    return store.last_position()


def follow(
    store: Store,
    filters: dict[str, Any],
    backlog: int,
    as_json: bool,
    out: IO[str],
    console: Console,
    *,
    interval: float = POLL_INTERVAL,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Print the last `backlog` calls, then each call as it lands, until Ctrl-C (or
    `stop()` says so). Returns 0."""

    def show(rows: list[CallRow], header: bool) -> None:
        if as_json:
            for r in rows:
                out.write(json.dumps(row_json(r), ensure_ascii=False, default=_json_default))
                out.write("\n")
        else:
            emit(console, calls_table(rows, console, header=header, fixed=True))
        out.flush()

    try:
        # one read transaction: no call can land between the backlog and the cursor
        store.conn.execute("BEGIN")
        try:
            last = _max_rowid(store)
            first = list(reversed(store.latest(backlog, **filters)))
        finally:
            store.conn.execute("COMMIT")
        if not as_json:
            show(first, True)
            if not first:
                console.print("(waiting for calls; Ctrl-C to stop)", style="dim")
                out.flush()
        else:
            show(first, False)
        header = False
        while stop is None or not stop():
            time.sleep(interval)
            if _max_rowid(store) < last:
                last = 0  # the store was emptied (max_age_days): rowids start again
            new = _newer(store, last, filters)
            if not new:
                continue
            last = new[-1][0]
            show([r for _, r in new], header)
    except KeyboardInterrupt:
        pass
    return 0


# --- totals ---------------------------------------------------------------------------


def _totals(
    store: Store,
    by: str,
    filters: dict[str, Any],
    as_json: bool,
    out: IO[str],
    console: Console,
) -> int:
    groups = store.totals(by, **filters)
    if as_json:
        _dump([dataclasses.asdict(t) for t in groups], out)
        return 0
    if not groups:
        console.print(f"no calls to sum (store: {store.path})")
        return 0
    plain = _plain(console)
    costs = [t.cost for t in groups if t.cost is not None]
    sums = Total(
        key="total",
        calls=sum(t.calls for t in groups),
        errors=sum(t.errors for t in groups),
        prompt_tokens=sum(t.prompt_tokens for t in groups),
        completion_tokens=sum(t.completion_tokens for t in groups),
        total_tokens=sum(t.total_tokens for t in groups),
        cost=round(sum(costs), 10) if costs else None,
        avg_latency_ms=None,
        priced_calls=sum(t.priced_calls for t in groups),
    )
    table = Table(
        box=None,
        header_style="" if plain else "bold underline",
        show_footer=len(groups) > 1,
        footer_style="" if plain else "bold",
        pad_edge=False,
    )
    cells: list[tuple[str, str, Callable[[Total], str]]] = [
        (by, "left", lambda t: t.key if t.key is not None else "(none)"),
        ("calls", "right", lambda t: f"{t.calls:,}"),
        ("errors", "right", lambda t: f"{t.errors:,}"),
        ("tok in", "right", lambda t: f"{t.prompt_tokens:,}"),
        ("tok out", "right", lambda t: f"{t.completion_tokens:,}"),
        ("tok total", "right", lambda t: f"{t.total_tokens:,}"),
        ("cost", "right", total_cost),
        ("priced", "right", lambda t: f"{t.priced_calls:,}/{t.calls:,}"),
        ("avg latency", "right", lambda t: fmt_ms(t.avg_latency_ms)),
    ]
    for name, justify, cell in cells:
        footer = cell(sums) if name != "avg latency" else ""
        table.add_column(name, justify=justify, footer=footer, no_wrap=True)  # type: ignore[arg-type]
    for t in groups:
        table.add_row(*(cell(t) for _, _, cell in cells))
    emit(console, table)
    if sums.priced_calls < sums.calls:
        console.print(
            f"{PARTIAL} a partial sum: only the calls counted in `priced` have a known cost "
            "(the others' model has no price: set one on the route, or "
            "--set llmitm_observe_prices for observed calls); - no call has one",
            style="" if plain else "dim",
        )
    return 0


#: marks a cost that sums some of a group's calls only (the others have no known cost)
PARTIAL = "*"


def total_cost(t: Total) -> str:
    """A group's cost: `-` when none of its calls has one, `$0.12*` when some have."""
    if t.cost is None:
        return "-"
    return fmt_cost(t.cost) + (PARTIAL if t.priced_calls < t.calls else "")


# --- one call in full -----------------------------------------------------------------


def _show(store: Store, args: argparse.Namespace, out: IO[str], console: Console) -> int:
    ident = args.id.strip()
    try:
        record = store.get(ident)
    except LookupError:
        raise CliError(f"more than one call id starts with {ident!r}: give more of it") from None
    if record is None:
        hint = " (a prefix needs 8 characters or more)" if len(ident) < 8 else ""
        raise CliError(f"no call with id {ident!r} in {store.path}{hint}")
    if args.json:
        _dump(record, out)
        return 0
    render_record(record, console)
    return 0


def render_record(record: dict[str, Any], console: Console) -> None:
    """One call as sections: summary, usage, timings, error, context, messages."""
    plain = _plain(console)
    proxy = ((record.get("ai") or {}).get("proxy")) or {}
    meta = proxy.get("meta") or {}
    usage = proxy.get("usage")
    payload = proxy.get("payload")
    request = record.get("request") or {}
    response = record.get("response") or {}
    lat = record.get("latencies") or {}

    def section(title: str) -> None:
        console.print()
        console.print(Text(title, style="" if plain else "bold underline"))

    def fields(pairs: Iterable[tuple[str, Any]]) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="" if plain else "cyan", no_wrap=True)
        grid.add_column()
        shown = False
        for key, value in pairs:
            if value is None or value == "":
                continue
            grid.add_row(key, Text(str(value)))
            shown = True
        if shown:
            emit(console, grid)

    status = record.get("status")
    console.print(Text(f"call {record.get('id')}", style="" if plain else "bold"))
    started = (record.get("started_at") or 0) / 1000
    ended = (record.get("ended_at") or 0) / 1000
    name = lambda d, k: (d or {}).get(k)  # noqa: E731
    fields(
        [
            ("time", f"{fmt_time(started)} ({iso(started)})"),
            ("status", f"{status} (HTTP {response.get('status')})"),
            ("route", name(record.get("route"), "name")),
            ("service", name(record.get("service"), "name")),
            # Kong's consumer entity: a consumer may have only a custom_id
            (
                "consumer",
                name(record.get("consumer"), "username")
                or name(record.get("consumer"), "custom_id"),
            ),
            ("client", record.get("client_ip")),
            ("request", f"{request.get('method', '')} {request.get('uri', '')}".strip()),
            ("provider", meta.get("provider_name")),
            ("route type", meta.get("route_type")),
            ("model", meta.get("request_model")),
            (
                "response model",
                meta.get("response_model")
                if meta.get("response_model") != meta.get("request_model")
                else None,
            ),
            ("mode", meta.get("request_mode")),
            ("upstream", meta.get("upstream_url")),
            ("finish reason", meta.get("finish_reason")),
            ("response id", meta.get("response_id")),
            ("parameters", _compact(meta.get("request_parameters") or None) or None),
        ]
    )

    if usage is not None:
        section("usage")
        source = usage.get("source")
        fields(
            [
                ("tokens in", fmt_int(usage.get("prompt_tokens"))),
                ("tokens out", fmt_int(usage.get("completion_tokens"))),
                ("total", fmt_int(usage.get("total_tokens"))),
                ("cache read", _nonzero(usage.get("cache_read_tokens"))),
                ("cache write", _nonzero(usage.get("cache_write_tokens"))),
                ("reasoning", _nonzero(usage.get("reasoning_tokens"))),
                ("cost", fmt_cost(usage.get("cost"))),
                ("source", source),
            ]
        )

    section("timings")
    fields(
        [
            ("latency", fmt_ms(lat.get("request"))),
            ("provider", fmt_ms(meta.get("llm_latency") or lat.get("proxy"))),
            ("gateway", fmt_ms(lat.get("gateway")) if lat.get("gateway") is not None else None),
            (
                "TTFT",
                fmt_ms((usage or {}).get("time_to_first_token") or lat.get("time_to_first_token")),
            ),
            (
                "per token",
                f"{usage['time_per_token']} ms" if (usage or {}).get("time_per_token") else None,
            ),
            ("ended", fmt_time(ended) if ended else None),
        ]
    )

    error = record.get("error")
    if error:
        section("error")
        fields(
            [(k, v if isinstance(v, str | int | float) else _compact(v)) for k, v in error.items()]
        )

    context = {k: v for k, v in (record.get("context") or {}).items() if v not in (None, {}, "")}
    if context:
        section("context")
        fields(
            [
                (k, v if isinstance(v, str | int | float) else _compact(v))
                for k, v in context.items()
            ]
        )

    if payload is None:
        section("messages")
        observed = (record.get("route") or {}).get("name") == OBSERVED_ROUTE
        hint = (
            "observe mode ran with `--set llmitm_observe_payloads=false`; it keeps them "
            "by default (true)"
            if observed
            else "the route's ai-proxy plugin needs `logging: {log_payloads: true}`"
        )
        console.print(f"(not recorded: {hint})", style="" if plain else "dim")
        return
    section("request")
    _print_messages(console, request_messages(payload.get("request")), plain)
    section("response")
    _print_messages(console, response_messages(payload.get("response")), plain)


def _print_messages(console: Console, messages: list[tuple[str, str]], plain: bool) -> None:
    if not messages:
        console.print("(empty)", style="" if plain else "dim")
    styles = {"user": "green", "assistant": "magenta", "system": "yellow", "tool": "blue"}
    for role, text in messages:
        label = Text(f"[{role}]", style="" if plain else f"bold {styles.get(role, 'cyan')}")
        console.print(label)
        console.print(Text(text), soft_wrap=plain)


def _nonzero(n: int | None) -> str | None:
    return fmt_int(n) if n else None


def _compact(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_json_default, separators=(", ", ": "))


# --- the messages of any recorded payload (the formats the providers speak) -----------


def _part(part: Any) -> str:
    """One content block (OpenAI parts, Anthropic blocks, Gemini parts, Bedrock blocks)."""
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return _compact(part)
    kind = part.get("type")
    if kind in ("thinking", "reasoning", "redacted_thinking") or "thinking" in part:
        text = part.get("thinking") or part.get("text") or _summary(part.get("summary"))
        return f"[thinking] {text or '(redacted)'}"
    if kind in ("tool_use", "server_tool_use", "function_call"):
        args = part.get("input", part.get("arguments"))
        return f"[tool call] {part.get('name')}({_args(args)})"
    if "functionCall" in part:  # Gemini
        call = part["functionCall"] or {}
        return f"[tool call] {call.get('name')}({_args(call.get('args'))})"
    if "toolUse" in part:  # Bedrock converse
        call = part["toolUse"] or {}
        return f"[tool call] {call.get('name')}({_args(call.get('input'))})"
    if kind in ("tool_result", "function_call_output"):
        return f"[tool result] {_content(part.get('content', part.get('output')))}"
    if "functionResponse" in part:
        resp = part["functionResponse"] or {}
        return f"[tool result] {resp.get('name')}: {_compact(resp.get('response'))}"
    if "toolResult" in part:
        return f"[tool result] {_content((part['toolResult'] or {}).get('content'))}"
    if kind in ("image", "image_url", "input_image") or "inlineData" in part or "image" in part:
        return "[image]"
    if kind in ("input_audio", "audio"):
        return "[audio]"
    if isinstance(part.get("text"), str):
        return part["text"]
    if isinstance(part.get("content"), str | list):
        return _content(part["content"])
    return _compact(part)


def _summary(summary: Any) -> str:
    if isinstance(summary, list):
        return " ".join(_part(s) for s in summary)
    return summary or ""


def _args(args: Any) -> str:
    if isinstance(args, str):
        return args
    return _compact(args) if args is not None else ""


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for t in (_part(p) for p in content) if t)
    return _part(content)


def _message(msg: Any, default_role: str) -> tuple[str, str]:
    if not isinstance(msg, dict):
        return default_role, _content(msg)
    if msg.get("type") in ("function_call", "function_call_output", "reasoning"):
        return default_role if msg["type"] != "function_call_output" else "tool", _part(msg)
    role = str(msg.get("role") or default_role)
    role = {"model": "assistant", "USER": "user", "CHATBOT": "assistant"}.get(role, role)
    lines = []
    body = msg.get("content", msg.get("parts", msg.get("message", msg.get("text"))))
    text = _content(body)
    if text:
        lines.append(text)
    for key in ("reasoning_content", "reasoning", "thinking"):
        if isinstance(msg.get(key), str) and msg[key]:
            lines.insert(0, f"[thinking] {msg[key]}")
    for call in msg.get("tool_calls") or []:
        fn = (call or {}).get("function") or call or {}
        lines.append(f"[tool call] {fn.get('name')}({_args(fn.get('arguments'))})")
    if isinstance(msg.get("function_call"), dict):
        fn = msg["function_call"]
        lines.append(f"[tool call] {fn.get('name')}({_args(fn.get('arguments'))})")
    if msg.get("tool_call_id") and role == "tool":
        role = f"tool {msg['tool_call_id']}"
    return role, "\n".join(lines)


def request_messages(body: Any) -> list[tuple[str, str]]:
    """(role, text) of a request body: chat messages, a system prompt, a completion
    prompt, embedding inputs, Responses API input, Gemini contents, Cohere messages."""
    if body is None:
        return []
    if not isinstance(body, dict):
        return [("body", _compact(body))]
    out: list[tuple[str, str]] = []
    for key in ("system", "instructions", "preamble", "systemInstruction", "system_instruction"):
        if body.get(key):
            out.append(
                (
                    "system",
                    _content(body[key].get("parts") if isinstance(body[key], dict) else body[key]),
                )
            )
    for msg in body.get("chat_history") or []:
        out.append(_message(msg, "user"))
    if isinstance(body.get("messages"), list):
        out += [_message(m, "user") for m in body["messages"]]
    if isinstance(body.get("contents"), list):
        out += [_message(m, "user") for m in body["contents"]]
    for key, role in (("prompt", "prompt"), ("message", "user"), ("inputText", "prompt")):
        if isinstance(body.get(key), str | list):
            value = body[key]
            out.append((role, value if isinstance(value, str) else "\n".join(map(_content, value))))
    if "input" in body:
        value = body["input"]
        if isinstance(value, list) and value and isinstance(value[0], dict):
            out += [_message(m, "user") for m in value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out += [("input", v) for v in value]
        else:
            out.append(("input", _content(value) if isinstance(value, str) else _compact(value)))
    if not out:
        out.append(("body", _compact(body)))
    return out


def response_messages(body: Any) -> list[tuple[str, str]]:
    """(role, text) of a response body in any of the supported formats."""
    if body is None:
        return []
    if not isinstance(body, dict):
        return [("body", _compact(body))]
    out: list[tuple[str, str]] = []
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("message"), dict):
            out.append(_message(choice["message"], "assistant"))
        elif isinstance(choice.get("delta"), dict):
            out.append(_message(choice["delta"], "assistant"))
        elif "text" in choice:
            out.append(("completion", str(choice.get("text") or "")))
    if isinstance(body.get("data"), list) and body.get("object") == "list" and not out:
        vectors = [d for d in body["data"] if isinstance(d, dict) and "embedding" in d]
        if vectors:
            dim = len(vectors[0]["embedding"]) if isinstance(vectors[0]["embedding"], list) else "?"
            out.append(("embeddings", f"{len(vectors)} vector(s) of dimension {dim}"))
    if body.get("type") == "message" and "content" in body:  # Anthropic
        out.append(
            _message(
                {"role": body.get("role", "assistant"), "content": body["content"]}, "assistant"
            )
        )
    if isinstance(body.get("output"), list):  # OpenAI Responses
        for item in body["output"]:
            out.append(_message(item, "assistant"))
    elif isinstance(body.get("output"), dict) and isinstance(body["output"].get("message"), dict):
        out.append(_message(body["output"]["message"], "assistant"))  # Bedrock converse
    for cand in body.get("candidates") or []:  # Gemini
        if isinstance(cand, dict) and isinstance(cand.get("content"), dict):
            out.append(_message(cand["content"], "assistant"))
    if not out and isinstance(body.get("message"), dict):  # Ollama, Cohere v2
        out.append(_message(body["message"], "assistant"))
    if not out and isinstance(body.get("response"), str):  # Ollama generate
        out.append(("assistant", body["response"]))
    if not out and isinstance(body.get("text"), str):  # Cohere v1
        out.append(("assistant", body["text"]))
    if not out and isinstance(body.get("embeddings"), list):
        out.append(("embeddings", f"{len(body['embeddings'])} vector(s)"))
    if not out:
        out.append(("body", _compact(body)))
    return out


if __name__ == "__main__":
    sys.exit(main())
