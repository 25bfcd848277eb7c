"""CPU cost per call, counted in instructions under valgrind's callgrind.

    python bench/instructions.py [--calls 300] [--variants gateway,anthropic]

Wall-clock figures on a small shared machine move by a millisecond from run to run;
instruction counts do not (the same code, inputs and environment give the same count,
whatever else the machine is doing). This runs bare mitmdump and each gateway variant
under callgrind with counting switched off, warms each up, counts exactly `--calls`
non-streamed calls from one keep-alive connection, and prints the instructions per call
of each mitmdump process and their ratio to bare. It takes a few minutes (callgrind
runs Python about 50 times slower). Needs valgrind (Debian package `valgrind`).

The log plugins send their records in batches, a second or so after the calls: the
count starts once the warm-up's records are out and stops once the counted calls'
records are (for a variant the fake tells apart, when its sinks have received them
all; otherwise after `SETTLE` seconds), so each call's sink work is counted once.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fake_upstream
from loadgen import Connection
from procs import Processes, free_port
from run import (
    ROOT,
    Delivered,
    Server,
    delivered,
    delivery_report,
    mitmdump_options,
    mitmdump_path,
    start_fake,
)
from variants import BARE, VARIANTS, Variant

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


def count(
    procs: Processes, variant: Variant, fake_port: int, workdir: Path, calls: int
) -> tuple[int, Delivered | None]:
    """Instructions the mitmdump of `variant` executes for `calls` calls, and what its
    sinks received."""
    port = free_port()
    out = workdir / f"callgrind-{variant.name}.out"
    args, options = mitmdump_options(variant, fake_port, port, workdir)
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
    )
    body = variant.body()
    with Connection(port, timeout=120) as conn:
        for _ in range(20):  # warm-up: imports, first connections, caches
            status, _ = conn.post(variant.client_path, body)
            assert status == 200, f"{variant.name}: status {status}"
        settle(fake_port, server)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True
        )
        for _ in range(calls):
            conn.post(variant.client_path, body)
        sinks = settle(fake_port, server)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True
        )
    proc.stop(grace=120)
    total = 0
    for path in workdir.glob(f"callgrind-{variant.name}.out*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    if total == 0:
        raise RuntimeError(f"no callgrind totals for {variant.name}: {proc.output_tail()}")
    return total, sinks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="counted calls per target (300)")
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
    variants = [known[n] for n in args.variants.split(",")]
    settings = argparse.Namespace(chunks=20, first_delay_ms=50.0, chunk_delay_ms=2.0)
    assert BARE.fake_endpoint in fake_upstream.ENDPOINTS
    with tempfile.TemporaryDirectory(prefix="llmitm-instr-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        fake_port = start_fake(procs, settings)
        counts = {}
        sinks: dict[str, Delivered] = {}
        for variant in [BARE, *variants]:
            print(f"  counting {variant.name} ({args.calls} calls)...", flush=True)
            total, received = count(procs, variant, fake_port, workdir, args.calls)
            counts[variant.name] = total / args.calls
            if received is not None:
                sinks[variant.name] = received
    bare = counts[BARE.name]
    width = max(10, *(len(name) for name in counts))
    by_name = {v.name: v for v in VARIANTS}
    print(f"\ninstructions per non-streamed call, mitmdump process only ({args.calls} calls)")
    for name, per_call in counts.items():
        line = f"  {name:{width}s} {per_call / 1e6:7.3f} M   {per_call / bare:5.2f}x bare"
        base = by_name[name].compare_to if name in by_name else None
        if base in counts:
            line += f"   {(per_call - counts[base]) / 1e6:+7.3f} M over {base}"
        print(line)
    print("\n".join(delivery_report(sinks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
