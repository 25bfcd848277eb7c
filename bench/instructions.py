"""CPU cost per call, counted in instructions under valgrind's callgrind.

    python bench/instructions.py [--calls 300] [--variants gateway,anthropic]
    python bench/instructions.py --variants observe-off,observe-no-store,observe --stream-calls 100

Wall-clock figures on a small shared machine move by a millisecond from run to run;
instruction counts do not (the same code, inputs and environment give the same count,
whatever else the machine is doing). This runs bare mitmdump and each gateway variant
under callgrind with counting switched off, warms each up, counts exactly `--calls`
non-streamed calls from one keep-alive connection, and prints the instructions per call
of each mitmdump process and their ratio to bare. It takes a few minutes (callgrind
runs Python about 50 times slower). Needs valgrind (Debian package `valgrind`).

With `--stream-calls N` it also counts N streamed calls (after the non-streamed ones,
in the same process: callgrind dumps its counters between the two and starts again
from zero); the baseline for those is the bare mitmdump with stream_large_bodies=1,
which passes a stream on as it arrives, as the gateway does (bare mitmdump proper
would hold it back to its end). A forward-proxy variant (observe mode) is compared
with bare mitmdump in regular mode, its own baseline.

The log plugins send their records in batches, a second or so after the calls: the
count starts once the warm-up's records are out and stops once the counted calls'
records are (for a variant the fake tells apart, when its sinks have received them
all; otherwise after `SETTLE` seconds), so each call's sink work is counted once.

Every call must succeed: a counted call answered with anything but a 200 (a policy
variant's 401 or 429, say) is reported and fails the run (exit status 1), and for a
variant the fake tells apart, the calls the fake received must be exactly the calls
sent (every call went through the whole chain to the upstream), and its sinks must
have every record `DELIVERY_LIMIT` seconds after the warm-up and after the counted
calls (else the run fails too, printing the gateway's exporter counters from its
status listener and the end of its log). A variant's `headers`
(the consumer's API key) go with every request; a variant that names `$redis_port`
gets a `redis-server` the harness starts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fake_upstream
from loadgen import timed_stream
from procs import Processes, free_port
from run import (
    ROOT,
    Delivered,
    Server,
    baselines_of,
    delivered,
    delivery_report,
    mitmdump_options,
    mitmdump_path,
    redis_report,
    start_fake,
    start_redis,
)
from variants import BASELINES, VARIANTS, Variant

#: seconds the sinks get to send what the calls before left (the longest linger is 1 s)
SETTLE = 3.0
#: how long to wait at most for a sink to receive the counted calls' records
DELIVERY_LIMIT = 120.0


def settle(fake_port: int, server: Server) -> Delivered | None:
    """Wait until the sinks have what the calls so far produced (see the module doc)."""
    time.sleep(SETTLE)
    if not server.variant.tagged:
        return None
    deadline = time.monotonic() + DELIVERY_LIMIT
    while True:
        d = delivered(fake_port, [server])[server.variant.name]
        if d.complete() or time.monotonic() > deadline:
            return d
        time.sleep(0.5)


def undelivered(name: str, when: str, d: Delivered, status_port: int | None, proc: Any) -> str:
    """A problem: a sink lacks records `DELIVERY_LIMIT` s after the calls. Says what the
    gateway's exporters counted (its /status) and what it logged, for the diagnosis."""
    short = ", ".join(
        f"{sink} {got}/{want}" for sink, (got, want, _) in d.sinks.items() if got != want
    )
    if d.unreadable:
        short += f", {d.unreadable} unreadable request bodies"
    stats = "(no status listener)"
    if status_port:
        try:
            url = f"http://127.0.0.1:{status_port}/status"
            with urllib.request.urlopen(url, timeout=30) as resp:
                stats = json.dumps(json.loads(resp.read()).get("exporters"), sort_keys=True)
        except (OSError, ValueError) as e:
            stats = f"(/status: {e})"
    return (
        f"{name}: after the {when}, its sinks still lacked records ({short}); "
        f"exporters: {stats}; the gateway's log ends with:\n{proc.output_tail()}"
    )


def totals(out: Path) -> list[int]:
    """The instructions of each part of a callgrind run, in order (one part per dump;
    the last part is the file without a number, written at exit)."""

    def part(path: Path) -> int:
        suffix = path.name.rsplit(".", 1)[1] if path.name != out.name else ""
        return int(suffix) if suffix.isdigit() else 1 << 30

    counts = []
    for path in sorted(out.parent.glob(f"{out.name}*"), key=part):
        found = {}
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key in ("summary", "totals") and value.strip().isdigit():
                found[key] = int(value)
        # a later part's `summary` is not its own: its `totals` is
        counts.append(found.get("totals", found.get("summary", 0)))
    return counts


@dataclass(slots=True)
class Counted:
    """What `count` measured for one mitmdump."""

    #: instructions for the non-streamed calls, and for the streamed ones (None: none)
    plain: int | None
    stream: int | None
    #: what its sinks received (None: the fake cannot tell its calls apart)
    sinks: Delivered | None
    #: problems that make the figures suspect: calls that were not a 200, calls that did
    #: not reach the fake
    problems: list[str] = field(default_factory=list)


def count(
    procs: Processes,
    variant: Variant,
    fake_port: int,
    workdir: Path,
    calls: int,
    stream_calls: int = 0,
    redis_port: int | None = None,
) -> Counted:
    """Instructions the mitmdump of `variant` executes for `calls` non-streamed calls,
    then for `stream_calls` streamed ones, what its sinks received, and whether every
    call succeeded."""
    port = free_port()
    out = workdir / f"callgrind-{variant.name}-{port}.out"  # a baseline's two share a name
    # the status listener answers only when asked (an idle aiohttp server: no cost per
    # call): its exporter counters say what became of records a sink did not get
    status_port = free_port() if variant.tagged and variant.uses_gateway else None
    args, options = mitmdump_options(variant, fake_port, port, workdir, redis_port, status_port)
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        mitmdump_path(),
        *args,
    ]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = procs.start(f"callgrind {variant.name}", argv, port, env=env, timeout=600)
    config = options.get("llmitm_config")
    server = Server(
        variant,
        port,
        proc.pid,
        Path(config) if config else None,
        options.get("llmitm_store"),
        proc.log,
        fake_port,
    )
    body = variant.body()
    streamed = variant.body(stream=True)

    def control(*command: str) -> None:
        subprocess.run(
            ["callgrind_control", *command, str(proc.pid)], check=True, capture_output=True
        )

    sinks = None
    problems: list[str] = []
    statuses: Counter[int] = Counter()
    warmup, stream_warmup = 20, 5 if stream_calls else 0
    with server.connect(timeout=120) as conn:
        for _ in range(warmup):  # warm-up: imports, first connections, caches
            status, answer = conn.post(server.target, body)
            if status != 200:
                raise RuntimeError(f"{variant.name}: status {status} in the warm-up: {answer!r}")
        for _ in range(stream_warmup):
            timed_stream(conn, server.target, streamed)
        warm = settle(fake_port, server)
        if warm is not None and not warm.complete():
            problems.append(undelivered(variant.name, "warm-up", warm, status_port, proc))
        control("-i", "on")
        for _ in range(calls):
            status, _ = conn.post(server.target, body)
            statuses[status] += 1
        if calls:
            sinks = settle(fake_port, server)
        if calls and stream_calls:
            control("-d")  # the non-streamed calls' part; counting goes on from zero
        for _ in range(stream_calls):
            timed_stream(conn, server.target, streamed)  # raises on anything but a 200
        if stream_calls:
            sinks = settle(fake_port, server)
        control("-i", "off")
        if sinks is not None and not sinks.complete():
            problems.append(undelivered(variant.name, "counted calls", sinks, status_port, proc))
    proc.stop(grace=120)
    parts = totals(out)
    if not parts or parts[-1] == 0 or (calls and stream_calls and len(parts) < 2):
        raise RuntimeError(f"no callgrind totals for {variant.name}: {proc.output_tail()}")
    problems += [
        f"{variant.name}: {n} of {calls} counted calls answered {status}"
        for status, n in sorted(statuses.items())
        if status != 200
    ]
    if sinks is not None:
        sent = warmup + stream_warmup + calls + stream_calls
        if sinks.calls != sent:
            problems.append(
                f"{variant.name}: the fake received {sinks.calls} calls of the {sent} sent"
            )
    if calls and stream_calls:
        return Counted(parts[0], parts[-1], sinks, problems)
    if calls:
        return Counted(parts[-1], None, sinks, problems)
    return Counted(None, parts[-1], sinks, problems)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="counted calls per target (300)")
    ap.add_argument(
        "--stream-calls",
        type=int,
        default=0,
        help="also count this many streamed calls per target (0: none)",
    )
    ap.add_argument(
        "--variants",
        default=",".join(v.name for v in VARIANTS if v.default),
        help="comma-separated gateway variants (default: %(default)s; all: "
        + ",".join(v.name for v in VARIANTS)
        + ")",
    )
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: sudo apt-get install -y valgrind", file=sys.stderr)
        return 2
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in args.variants.split(",") if n not in known]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.calls < 1 or args.stream_calls < 0:
        ap.error("--calls must be at least 1 and --stream-calls at least 0")
    variants = [known[n] for n in args.variants.split(",")]
    for variant in [*baselines_of(variants), *variants]:
        if variant.fake_endpoint not in fake_upstream.ENDPOINTS:
            ap.error(f"variant {variant.name}: the fake has no {variant.fake_endpoint}")
    settings = argparse.Namespace(chunks=20, first_delay_ms=50.0, chunk_delay_ms=2.0)
    with tempfile.TemporaryDirectory(prefix="llmitm-instr-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        fake_port = start_fake(procs, settings)
        redis_port = start_redis(procs) if any(v.needs_redis for v in variants) else None
        counts: dict[str, float] = {}
        stream_counts: dict[str, float] = {}
        sinks: dict[str, Delivered] = {}
        problems: list[str] = []
        for variant in [*baselines_of(variants), *variants]:
            if variant.name in BASELINES and variant is BASELINES[variant.name][1]:
                if not args.stream_calls:
                    continue
                calls, stream_calls = 0, args.stream_calls  # the streaming baseline
            elif variant.name in BASELINES:
                calls, stream_calls = args.calls, 0
            else:
                calls, stream_calls = args.calls, args.stream_calls
            what = f"{calls} calls" + (f", {stream_calls} streamed" if stream_calls else "")
            if not calls:
                what = f"{stream_calls} streamed calls, stream_large_bodies=1"
            print(f"  counting {variant.name} ({what})...", flush=True)
            counted = count(
                procs, variant, fake_port, workdir, calls, stream_calls, redis_port=redis_port
            )
            if counted.plain is not None:
                counts[variant.name] = counted.plain / calls
            if counted.stream is not None:
                stream_counts[variant.name] = counted.stream / stream_calls
            if counted.sinks is not None:
                sinks[variant.name] = counted.sinks
            problems += counted.problems
        redis = redis_report(redis_port)
    print(f"\ninstructions per non-streamed call, mitmdump process only ({args.calls} calls)")
    print("\n".join(per_call_report(counts)))
    if stream_counts:
        print(
            f"\ninstructions per streamed call ({args.stream_calls} calls, 20 content chunks "
            "each; bare: stream_large_bodies=1)"
        )
        print("\n".join(per_call_report(stream_counts)))
    print("\n".join(delivery_report(sinks) + redis))
    if problems:
        print("\n! some calls failed or did not reach the fake: the figures are not comparable")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    return 0


def per_call_report(counts: dict[str, float]) -> list[str]:
    """Each target's instructions per call, its ratio to its baseline and, for a
    variant that names one in `compare_to`, what it adds over that one."""
    width = max(10, *(len(name) for name in counts))
    by_name = {v.name: v for v in VARIANTS}
    lines = []
    for name, per_call in counts.items():
        base_name = by_name[name].baseline if name in by_name else name
        line = f"  {name:{width}s} {per_call / 1e6:7.3f} M"
        if base_name in counts:
            base = counts[base_name]
            line += f"   {per_call / base:5.2f}x {base_name:12s} {(per_call - base) / 1e6:+7.3f} M"
        for other in by_name[name].compared_with if name in by_name else ():
            if other in counts:
                line += f"   {(per_call - counts[other]) / 1e6:+7.3f} M over {other}"
        lines.append(line)
    return lines


if __name__ == "__main__":
    sys.exit(main())
