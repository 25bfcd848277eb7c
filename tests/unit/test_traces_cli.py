"""`llmitm traces` (addons/traces_cli.py) over a store filled through `SqliteSink`.

The records are the kinds of tests/unit/test_sqlite.py (`KINDS`): one of each kind the
gateway produces. The CLI runs in-process through `addons.cli.main` (stdout captured,
so not a terminal: plain text), and `--follow` in a subprocess while records land.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from addons import cli
from addons.traces_cli import (
    fmt_cost,
    fmt_ms,
    make_console,
    parse_time,
    request_messages,
    response_messages,
)
from exporters.record import CallRecord
from exporters.sqlite import open_store
from providers.base import Usage
from tests.unit.test_sqlite import KINDS, T0, ai, rec, write

REPO = Path(__file__).resolve().parents[2]
HEADER = [
    "time",
    "id",
    "route",
    "consumer",
    "provider/model",
    "status",
    "tok in",
    "tok out",
    "cost",
    "latency",
    "TTFT",
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "calls.db"
    write(path, list(KINDS.values()))
    return path


def traces(capsys: pytest.CaptureFixture[str], store: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main(["traces", "--store", str(store), *args])
    except SystemExit as e:  # a usage error, from argparse
        code = e.code
    got = capsys.readouterr()
    return code, got.out, got.err


def table(out: str) -> tuple[str, list[str]]:
    """The header line and the row lines of a plain calls table."""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["time", "id", "route"], out
    rows = [line for line in lines[1:] if line[:4].isdigit()]
    return lines[0], rows


def row_of(rows: list[str], record: CallRecord) -> str:
    when = datetime.fromtimestamp(record.started_at).strftime("%Y-%m-%d %H:%M:%S")
    (line,) = [r for r in rows if r.startswith(when)]
    return line


# --- the table ------------------------------------------------------------------------


def test_the_table_has_every_column_and_every_call_oldest_first(capsys, db: Path) -> None:
    code, out, err = traces(capsys, db)
    assert code == 0 and err == ""
    header, rows = table(out)
    positions = [header.index(name) for name in HEADER]
    assert positions == sorted(positions)  # in this order
    assert len(rows) == len(KINDS)
    assert rows == sorted(rows)  # oldest first, like a log
    assert "\x1b[" not in out  # not a terminal: no colour
    assert all(line == line.rstrip() for line in out.splitlines())
    assert "11 call(s) shown; 11 in " in out

    chat = row_of(rows, KINDS["chat"]).split()
    # time (2 words), id, route, consumer, provider/model, status, in, out, cost, latency
    assert chat[2] == KINDS["chat"].id[:18]
    assert chat[3:] == [
        "chat",
        "-",
        "openai/gpt-4o",
        "ok",
        "12",
        "7",
        "$0.0003",
        "1,000",
        "ms",
        "-",
    ]
    streamed = row_of(rows, KINDS["streamed"])
    assert streamed.endswith("$0.001  2,000 ms  150 ms")
    assert "20" in streamed.split() and "40" in streamed.split()
    error = row_of(rows, KINDS["upstream_error"])
    assert "error 429" in error
    aborted = row_of(rows, KINDS["client_aborted"]).split()
    assert "aborted" in aborted and "~30" in aborted and "~3" in aborted  # estimated usage
    assert aborted[-2:] == ["90", "ms"]
    anthropic = row_of(rows, KINDS["cache_reasoning_cost"]).split()
    assert anthropic[3:11] == [
        "chat",
        "bob",
        "anthropic/claude-sonnet-4",
        "ok",
        "1,200",
        "300",
        "$0.0123",
        "1,000",
    ]
    assert "$0.00000016" in row_of(rows, KINDS["embeddings"])
    assert "ollama/llama3" in row_of(rows, KINDS["no_usage"])
    no_ai = row_of(rows, KINDS["no_ai"]).split()
    assert no_ai[3:7] == ["-", "-", "-", "error"] and "404" in no_ai


def test_the_limit_keeps_the_newest(capsys, db: Path) -> None:
    code, out, _ = traces(capsys, db, "--limit", "3")
    _, rows = table(out)
    assert code == 0 and len(rows) == 3
    assert rows[-1] == row_of(rows, KINDS["no_ai"])
    assert rows[0] == row_of(rows, KINDS["cache_reasoning_cost"])
    assert "3 call(s) shown (--limit for more); 11 in" in out
    code, _, err = traces(capsys, db, "--limit", "0")
    assert code == 2 and "not a positive number" in err


def ids(out: str) -> list[str]:
    return [r["id"] for r in json.loads(out)]


@pytest.mark.parametrize(
    ("args", "kinds"),
    [
        (
            ["--model", "gpt-4o"],
            [
                "chat",
                "streamed",
                "upstream_error",
                "client_aborted",
                "payloads_and_context",
                "no_statistics",
            ],
        ),
        (["--provider", "anthropic"], ["cache_reasoning_cost"]),
        (["--provider", "ollama"], ["no_usage"]),
        (["--consumer", "alice"], ["payloads_and_context"]),
        (["--status", "error"], ["upstream_error", "no_ai"]),
        (["--status", "aborted"], ["client_aborted"]),
        (["--status", "client_aborted"], ["client_aborted"]),
        (["--route", "embeddings"], ["embeddings"]),
        (["--route", "local"], ["no_usage"]),
        (["--model", "gpt-4o", "--status", "ok", "--consumer", "alice"], ["payloads_and_context"]),
        (["--model", "nope"], []),
    ],
)
def test_filters(capsys, db: Path, args: list[str], kinds: list[str]) -> None:
    code, out, _ = traces(capsys, db, "--json", *args)
    assert code == 0
    assert ids(out) == [KINDS[k].id for k in reversed(kinds)]  # newest first
    code, out, _ = traces(capsys, db, *args)
    if kinds:
        assert len(table(out)[1]) == len(kinds)
    else:
        assert out.startswith("no calls match these filters")


def test_since_and_until_with_iso_times(capsys, db: Path) -> None:
    since = datetime.fromtimestamp(T0 + 30).isoformat()  # local time, no offset
    until = datetime.fromtimestamp(T0 + 60).astimezone().isoformat()  # with an offset
    code, out, _ = traces(capsys, db, "--json", "--since", since, "--until", until)
    assert code == 0
    # since inclusive, until exclusive
    assert ids(out) == [KINDS[k].id for k in ("no_usage", "embeddings", "client_aborted")]
    utc = datetime.fromtimestamp(T0 + 95).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
    code, out, _ = traces(capsys, db, "--json", "--since", utc)
    assert ids(out) == [KINDS["no_ai"].id]


def test_since_with_relative_times(capsys, tmp_path: Path) -> None:
    now = time.time()
    ages = {"10s": 10, "20m": 20 * 60, "3h": 3 * 3600, "2d": 2 * 86400, "9d": 9 * 86400}
    records = {
        age: rec(f"0190a000-0000-7000-8000-00000000{i:04d}", ai(usage=Usage(1, 1)), at=now - s)
        for i, (age, s) in enumerate(ages.items())
    }
    path = tmp_path / "rel.db"
    write(path, list(records.values()))

    def since(value: str, *more: str) -> set[str]:
        code, out, err = traces(capsys, path, "--json", "--since", value, *more)
        assert code == 0, err
        return {age for age, r in records.items() if r.id in ids(out)}

    assert since("1m") == {"10s"}
    assert since("1h") == {"10s", "20m"}
    assert since("1d") == {"10s", "20m", "3h"}
    assert since("1w") == {"10s", "20m", "3h", "2d"}
    assert since("30d") == set(ages)
    assert since("90M") == {"10s", "20m"}  # units in either case
    assert since("1d", "--until", "15m") == {"20m", "3h"}
    code, _, err = traces(capsys, path, "--since", "yesterday")
    assert code == 2 and "neither a time ago" in err


def test_parse_time() -> None:
    now = 1_750_000_000.0
    assert parse_time("15m", now) == now - 900
    assert parse_time("2h", now) == now - 7200
    assert parse_time("1d", now) == now - 86400
    assert parse_time("1.5h", now) == now - 5400
    assert parse_time("45s", now) == now - 45
    assert parse_time("2w", now) == now - 14 * 86400
    assert parse_time("now", now) == now
    assert (
        parse_time("2025-06-15T12:00:00Z")
        == datetime.fromisoformat("2025-06-15T12:00:00+00:00").timestamp()
    )
    assert parse_time("2025-06-15T14:00:00+02:00") == parse_time("2025-06-15T12:00:00Z")
    assert parse_time("2025-06-15") == datetime(2025, 6, 15).timestamp()  # local midnight
    for bad in ("", "15", "15 minutes", "-1h", "tomorrow", "2025-13-01"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_time(bad, now)


def test_formats() -> None:
    assert [fmt_cost(c) for c in (None, 0, 0.0003, 0.0123, 1.23456, 0.00000016, 1e-12)] == [
        "-",
        "$0",
        "$0.0003",
        "$0.0123",
        "$1.2346",
        "$0.00000016",
        "$1.00e-12",
    ]
    assert [fmt_ms(m) for m in (None, 1.5, 412.4, 1000.0, 12_345.0)] == [
        "-",
        "2 ms",
        "412 ms",
        "1,000 ms",
        "12.3 s",
    ]


def test_json_rows(capsys, db: Path) -> None:
    code, out, _ = traces(capsys, db, "--json", "--limit", "100")
    assert code == 0
    rows = json.loads(out)  # one document
    assert len(rows) == len(KINDS)
    streamed = next(r for r in rows if r["id"] == KINDS["streamed"].id)
    assert streamed["started_at"] == T0 + 10
    assert streamed["time"] == "2023-11-14T22:13:30.000Z"  # UTC
    assert datetime.fromisoformat(streamed["time"]).timestamp() == T0 + 10
    assert {k: streamed[k] for k in ("provider", "model", "status", "stream")} == {
        "provider": "openai",
        "model": "gpt-4o",
        "status": "ok",
        "stream": True,
    }
    assert (streamed["prompt_tokens"], streamed["completion_tokens"], streamed["cost"]) == (
        20,
        40,
        0.001,
    )
    assert (streamed["latency_ms"], streamed["ttft_ms"]) == (2000.0, 150.0)
    code, out, _ = traces(capsys, db, "--json", "--model", "nope")
    assert json.loads(out) == []


# --- totals ---------------------------------------------------------------------------


def totals_rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()}


def test_totals_by_model(capsys, db: Path) -> None:
    code, out, _ = traces(capsys, db, "totals")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:3] == ["model", "calls", "errors"] and "cost" in header
    rows = totals_rows(out)
    # calls, errors, in, out, total, cost, priced, avg latency; half of the gpt-4o calls
    # have a cost: their sum is marked partial
    assert rows["gpt-4o"][:7] == ["6", "2", "71", "52", "123", "$0.0014*", "3/6"]
    assert rows["claude-sonnet-4"][:7] == ["1", "0", "1,200", "300", "1,500", "$0.0123", "1/1"]
    # the call without a model has no cost: unknown, not $0
    assert rows["(none)"][:7] == ["1", "1", "0", "0", "0", "-", "0/1"]
    assert rows["total"][:7] == ["11", "3", "1,284", "357", "1,641", "$0.0137*", "5/11"]
    assert "* a partial sum" in out


def test_totals_by_each_group_and_options_anywhere(capsys, db: Path) -> None:
    code, out, _ = traces(capsys, db, "totals", "--by", "consumer")
    rows = totals_rows(out)
    assert code == 0 and out.split()[0] == "consumer"
    assert rows["alice"][:2] == ["1", "0"] and rows["bob"][:2] == ["1", "0"]
    assert rows["(none)"][:2] == ["9", "3"]
    # the store and filters after the command's name
    capsys.readouterr()
    code = cli.main(["traces", "totals", "--by", "status", "--store", str(db), "--json"])
    assert code == 0
    by_status = {t["key"]: t for t in json.loads(capsys.readouterr().out)}
    assert code == 0
    assert {k: t["calls"] for k, t in by_status.items()} == {
        "ok": 8,
        "error": 2,
        "client_aborted": 1,
    }
    assert by_status["error"]["errors"] == 2 and by_status["ok"]["errors"] == 0
    for by in ("provider", "route"):
        code, out, _ = traces(capsys, db, "totals", "--by", by, "--json")
        with open_store(db) as store:
            assert json.loads(out) == [dataclasses.asdict(t) for t in store.totals(by)]
    code, out, _ = traces(capsys, db, "totals", "--provider", "openai", "--json")
    assert {t["key"] for t in json.loads(out)} == {"gpt-4o", "text-embedding-3-small"}
    code, _, err = traces(capsys, db, "totals", "--by", "colour")
    assert code == 2 and "invalid choice" in err


def test_totals_of_nothing(capsys, db: Path) -> None:
    code, out, _ = traces(capsys, db, "totals", "--since", "1h")
    assert code == 0 and out.startswith("no calls to sum")


# --- show -----------------------------------------------------------------------------


def test_show_one_call_in_full(capsys, db: Path) -> None:
    record = KINDS["payloads_and_context"]
    code, out, _ = traces(capsys, db, "show", record.id)
    assert code == 0
    assert out.splitlines()[0] == f"call {record.id}"
    for expected in (
        "status          ok (HTTP 200)",
        "consumer        alice",
        "model           gpt-4o",
        "response model  gpt-4o-2024-08-06",
        "request         POST /v1/chat/completions",
        "tokens in   9",
        "tokens out  2",
        "cost        $0.0001",
        "latency    1,000 ms",
        "user_id     u-42",
        '{"user_id": "u-42", "tier": "gold"}',
    ):
        assert expected in out, (expected, out)
    request = out[out.index("\nrequest\n") :]
    assert "[user]\nhi\n" in request
    response = out[out.index("\nresponse\n") :]
    assert "[assistant]\nyo" in response


def test_show_error_usage_and_no_payloads(capsys, db: Path) -> None:
    code, out, _ = traces(capsys, db, "show", KINDS["upstream_error"].id)
    assert code == 0
    error = out[out.index("\nerror\n") :]
    assert "type     rate_limit_error" in error
    assert "message  Rate limit reached for gpt-4o" in error
    assert "log_payloads" in out  # says how to get the messages
    code, out, _ = traces(capsys, db, "show", KINDS["cache_reasoning_cost"].id)
    for expected in ("cache read   1,000", "cache write  100", "reasoning    120"):
        assert expected in out
    code, out, _ = traces(capsys, db, "show", KINDS["streamed"].id)
    assert "TTFT       150 ms" in out and "mode            stream" in out


def test_show_by_prefix_ambiguous_and_unknown(capsys, tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    a = rec("0190b111-aaaa-7000-8000-000000000001", ai(usage=Usage(1, 1)))
    b = rec("0190b222-aaaa-7000-8000-000000000001", ai(usage=Usage(1, 1)), at=T0 + 1)
    c = rec("0190b222-bbbb-7000-8000-000000000001", ai(usage=Usage(1, 1)), at=T0 + 2)
    write(path, [a, b, c])
    code, out, _ = traces(capsys, path, "show", "0190b111")
    assert code == 0 and out.startswith(f"call {a.id}")
    code, out, _ = traces(capsys, path, "show", "0190b222-bbbb")
    assert code == 0 and out.startswith(f"call {c.id}")
    code, out, err = traces(capsys, path, "show", "0190b222")
    assert code == 1 and out == "" and "more than one call id starts with '0190b222'" in err
    code, out, err = traces(capsys, path, "show", "0190b333")
    assert code == 1 and out == "" and "no call with id '0190b333'" in err
    code, _, err = traces(capsys, path, "show", "0190b1")
    assert code == 1 and "8 characters or more" in err
    code, _, err = traces(capsys, path, "show", "0190b111", "--follow")
    assert code == 2


def test_show_json_is_the_whole_record(capsys, db: Path) -> None:
    for record in KINDS.values():
        code, out, _ = traces(capsys, db, "show", record.id, "--json")
        assert code == 0
        assert json.loads(out) == record.to_dict()


# --- the store ------------------------------------------------------------------------


def test_show_of_an_observed_call_without_payloads_names_the_observe_option(
    capsys, tmp_path: Path
) -> None:
    path = tmp_path / "observed.db"
    observed = rec("0190a000-0000-7000-8000-0000000000aa", ai(usage=Usage(3, 2)), route="observed")
    write(path, [observed])
    code, out, _ = traces(capsys, path, "show", observed.id)
    assert code == 0
    assert "llmitm_observe_payloads" in out and "log_payloads" not in out


def test_follow_waits_for_the_store_to_appear(
    capsys, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`traces --follow` started before the gateway's first call waits for the store,
    then follows it (Ctrl-C ends it with status 0)."""
    import addons.traces_cli as traces_cli

    later = tmp_path / "later" / "llmitm.db"
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:  # the gateway records its first calls meanwhile
            later.parent.mkdir()
            later.write_bytes(db.read_bytes())
        if len(naps) == 5:  # following now: the user presses Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setattr(traces_cli.time, "sleep", nap)
    code, out, err = traces(capsys, later, "--follow", "--limit", "2")
    assert code == 0, err
    assert f"no call store at {later} yet" in out
    _, rows = table(out[out.index("time") :])
    assert len(rows) == 2  # the backlog, once the store is there
    assert len(naps) == 5


def test_a_missing_store_says_how_to_get_one(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "llmitm.db"
    for args in ([], ["totals"], ["show", "0190a000-0000"], ["--json"]):
        code, out, err = traces(capsys, missing, *args)
        assert code == 1 and out == ""
        assert f"no call store at {missing}" in err
        assert "run the gateway" in err
    assert not missing.parent.exists()  # reading creates nothing


def test_the_default_store_is_the_gateways(
    capsys, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMITM_STORE", str(db))
    capsys.readouterr()
    assert cli.main(["traces", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(KINDS)
    monkeypatch.delenv("LLMITM_STORE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.main(["traces"]) == 1
    assert str(tmp_path / "home" / ".llmitm" / "llmitm.db") in capsys.readouterr().err


def test_a_store_from_a_newer_llmitm_or_not_a_store(capsys, db: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    code, _, err = traces(capsys, db)
    assert code == 1 and "schema version 99" in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, not at all" * 100)
    code, _, err = traces(capsys, junk)
    assert code == 1 and "llmitm traces:" in err and "Traceback" not in err


def test_the_other_commands_still_work(capsys) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["type"] == "object"


def test_colour_on_a_terminal_only(db: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for out in (tty, pipe):
        console = make_console(out)
        console.print("x", style="red")
    assert "\x1b[" in tty.getvalue()
    assert pipe.getvalue() == "x\n"


# --- the messages of each format ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (  # OpenAI chat, with tool calls and a tool answer
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city":"Paris"}',
                                },
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                ],
            },
            [
                ("system", "be brief"),
                ("user", "weather?"),
                ("assistant", '[tool call] get_weather({"city":"Paris"})'),
                ("tool c1", "sunny"),
            ],
        ),
        (  # Anthropic messages
            {
                "system": [{"type": "text", "text": "sys"}],
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image", "source": {}},
                        ],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}],
                    },
                ],
            },
            [("system", "sys"), ("user", "look\n[image]"), ("user", "[tool result] 42")],
        ),
        ({"model": "m", "prompt": "complete me"}, [("prompt", "complete me")]),
        ({"input": ["a", "b"]}, [("input", "a"), ("input", "b")]),
        (  # OpenAI Responses
            {"instructions": "sys", "input": [{"role": "user", "content": "hi"}]},
            [("system", "sys"), ("user", "hi")],
        ),
        (  # Gemini
            {
                "systemInstruction": {"parts": [{"text": "sys"}]},
                "contents": [{"role": "user", "parts": [{"text": "hola"}]}],
            },
            [("system", "sys"), ("user", "hola")],
        ),
        ([1, 2], [("body", "[1, 2]")]),
    ],
)
def test_request_messages(body: Any, expected: list[tuple[str, str]]) -> None:
    assert request_messages(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": "ok",
                            "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                        },
                        "finish_reason": "tool_calls",
                    }
                ]
            },
            [("assistant", "ok\n[tool call] f({})")],
        ),
        ({"choices": [{"text": "done", "index": 0}]}, [("completion", "done")]),
        (
            {"object": "list", "data": [{"embedding": [0.1, 0.2, 0.3]}, {"embedding": [1, 2, 3]}]},
            [("embeddings", "2 vector(s) of dimension 3")],
        ),
        (  # Anthropic, thinking and tool use
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "t", "name": "calc", "input": {"x": 1}},
                ],
            },
            [("assistant", '[thinking] hmm\ncalling\n[tool call] calc({"x": 1})')],
        ),
        (  # OpenAI Responses
            {
                "output": [
                    {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}]},
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "hi"}],
                    },
                    {"type": "function_call", "name": "f", "arguments": '{"a":1}'},
                ]
            },
            [
                ("assistant", "[thinking] plan"),
                ("assistant", "hi"),
                ("assistant", '[tool call] f({"a":1})'),
            ],
        ),
        (  # Gemini
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"text": "a"}, {"functionCall": {"name": "g", "args": {}}}],
                        }
                    }
                ]
            },
            [("assistant", "a\n[tool call] g({})")],
        ),
        ({"message": {"role": "assistant", "content": "llama"}}, [("assistant", "llama")]),
        ({"unknown": 1}, [("body", '{"unknown": 1}')]),
    ],
)
def test_response_messages(body: Any, expected: list[tuple[str, str]]) -> None:
    assert response_messages(body) == expected


# --- follow ---------------------------------------------------------------------------


class Follower:
    """`llmitm traces --follow` in a subprocess, its output read as it comes."""

    def __init__(self, store: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "addons.cli", "traces", "--store", str(store), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        os.set_blocking(self.fd, False)
        self.raw = b""

    def read(self) -> str:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 65536):
                self.raw += chunk
        return self.raw.decode()

    def wait_for(self, *texts: str, timeout: float = 10.0) -> str:
        deadline = time.time() + timeout
        while not all(t in self.read() for t in texts):
            assert self.proc.poll() is None, self.proc.stderr.read()  # type: ignore[union-attr]
            assert time.time() < deadline, f"waited for {texts}; got:\n{self.read()}"
            time.sleep(0.05)
        return self.read()

    def interrupt(self) -> tuple[int, str, str]:
        """Ctrl-C; the exit status and everything printed."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        os.set_blocking(self.fd, True)
        self.raw += self.proc.stdout.read()  # type: ignore[union-attr]
        return code, self.raw.decode(), self.proc.stderr.read().decode()  # type: ignore[union-attr]


def test_follow_prints_calls_as_they_land(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    write(path, [KINDS["chat"], KINDS["streamed"]])
    f = Follower(path, "--follow")
    try:
        out = f.wait_for(KINDS["streamed"].id[:18], "150 ms")
        assert out.splitlines()[0].split()[:3] == ["time", "id", "route"]
        now = time.time()
        fresh = rec("0190c000-0000-7000-8000-000000000001", ai(usage=Usage(321, 654)), at=now)
        write(path, [fresh])
        f.wait_for("321", "654")
        # a long stream that started before `fresh` but landed after it still shows
        late = rec(
            "0190bfff-0000-7000-8000-000000000001",
            ai(provider="anthropic", request_model="claude-late", usage=Usage(5, 6)),
            at=now - 60,
        )
        other = rec("0190c000-0000-7000-8000-000000000002", None, at=now + 1, route="r2")
        write(path, [late])
        write(path, [other])
        f.wait_for("anthropic/claude-late", "r2")
        time.sleep(1.2)  # more polls: nothing is printed twice
    finally:
        code, out, err = f.interrupt()
    assert code == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert sum("321" in line for line in lines) == 1
    assert sum("claude-late" in line for line in lines) == 1
    assert sum(line.startswith("time ") for line in lines) == 1  # one header
    order = [i for i, line in enumerate(lines) if "claude-late" in line or " r2 " in line]
    assert len(order) == 2 and "claude-late" in lines[order[0]]  # in landing order


def test_follow_json_lines_with_a_filter(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    write(path, [KINDS["chat"], KINDS["embeddings"], KINDS["cache_reasoning_cost"]])
    f = Follower(path, "--follow", "--json", "--provider", "openai", "--limit", "1")
    try:
        f.wait_for(KINDS["embeddings"].id)
        now = time.time()
        mine = rec("0190d000-0000-7000-8000-000000000001", ai(usage=Usage(1, 2), cost=0.5), at=now)
        theirs = rec(
            "0190d000-0000-7000-8000-000000000002",
            ai(provider="anthropic", request_model="claude", usage=Usage(1, 2)),
            at=now,
        )
        write(path, [theirs, mine])
        f.wait_for(mine.id)
        time.sleep(0.7)
    finally:
        code, out, _ = f.interrupt()
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    assert [r["id"] for r in rows] == [KINDS["embeddings"].id, mine.id]  # backlog of 1
    assert rows[1]["cost"] == 0.5 and rows[1]["provider"] == "openai"


def test_follow_an_empty_store_then_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    write(path, [])  # nothing sent: no file yet
    write(path, [KINDS["chat"]])
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM calls")
    conn.commit()
    conn.close()
    f = Follower(path, "--follow")
    try:
        f.wait_for("waiting for calls")
        write(path, [KINDS["streamed"]])
        f.wait_for("150 ms")
    finally:
        code, _, err = f.interrupt()
    assert code == 0 and "KeyboardInterrupt" not in err
