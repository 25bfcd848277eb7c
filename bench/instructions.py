"""CPU cost per call, counted in instructions under valgrind's callgrind.

    python bench/instructions.py [--calls 300] [--variants gateway,no-log]

Wall-clock figures on a small shared machine move by a millisecond from run to run;
instruction counts do not (the same code, inputs and environment give the same count,
whatever else the machine is doing). This runs bare mitmdump and each gateway variant
under callgrind with counting switched off, warms each up, counts exactly `--calls`
non-streamed calls from one keep-alive connection, and prints the instructions per call
of each mitmdump process and their ratio to bare. It takes a few minutes (callgrind
runs Python about 50 times slower). Needs valgrind (Debian package `valgrind`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fake_upstream
from loadgen import Connection
from procs import HOST, Processes, free_port
from run import GATEWAY_SCRIPT, ROOT, mitmdump_path, start_fake
from variants import BARE, VARIANTS, Variant


def count(procs: Processes, variant: Variant, fake_port: int, workdir: Path, calls: int) -> int:
    """Instructions the mitmdump of `variant` executes for `calls` calls."""
    port = free_port()
    out = workdir / f"callgrind-{variant.name}.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        mitmdump_path(),
        "-q",
    ]
    if variant.config is None:
        target = f"http://{HOST}:{fake_port}"
    else:
        target = f"http://{HOST}:9"
        config = workdir / f"{variant.name}.yaml"
        config.write_text(variant.render_config(f"http://{HOST}:{fake_port}", workdir))
        argv += ["-s", str(GATEWAY_SCRIPT), "--set", f"llmitm_config={config}"]
        # the embedded store stays on, as in a default install, but in the run's directory
        argv += [
            "--set",
            f"llmitm_spool_dir={workdir / 'spool'}",
            "--set",
            f"llmitm_store={workdir / (variant.name + '.db')}",
        ]
        argv += ["--set", "llmitm_status_listen=off"]
    confdir = workdir / f"confdir-{variant.name}"
    confdir.mkdir()
    argv += [
        "--mode",
        f"reverse:{target}@{HOST}:{port}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        f"confdir={confdir}",
    ]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = procs.start(f"callgrind {variant.name}", argv, port, env=env, timeout=600)
    body = variant.body()
    with Connection(port, timeout=120) as conn:
        for _ in range(20):  # warm-up: imports, first connections, caches
            status, _ = conn.post(variant.client_path, body)
            assert status == 200, f"{variant.name}: status {status}"
        subprocess.run(
            ["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True
        )
        for _ in range(calls):
            conn.post(variant.client_path, body)
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
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="counted calls per target (300)")
    ap.add_argument(
        "--variants",
        default=",".join(v.name for v in VARIANTS),
        help="comma-separated gateway variants (default: all)",
    )
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: sudo apt-get install -y valgrind", file=sys.stderr)
        return 2
    known = {v.name: v for v in VARIANTS}
    variants = [known[n] for n in args.variants.split(",")]
    settings = argparse.Namespace(chunks=20, first_delay_ms=50.0, chunk_delay_ms=2.0)
    assert BARE.fake_endpoint in fake_upstream.ENDPOINTS
    with tempfile.TemporaryDirectory(prefix="llmitm-instr-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        fake_port = start_fake(procs, settings)
        counts = {}
        for variant in [BARE, *variants]:
            print(f"  counting {variant.name} ({args.calls} calls)...", flush=True)
            counts[variant.name] = (
                count(procs, variant, fake_port, workdir, args.calls) / args.calls
            )
    bare = counts[BARE.name]
    print(f"\ninstructions per non-streamed call, mitmdump process only ({args.calls} calls)")
    for name, per_call in counts.items():
        print(f"  {name:10s} {per_call / 1e6:7.3f} M   {per_call / bare:5.2f}x bare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
