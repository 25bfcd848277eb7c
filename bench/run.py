"""Benchmark the llmitm gateway against bare mitmdump, on this machine.

    python bench/run.py            # from the repo root, with the venv active
    python bench/run.py --quick    # shorter runs, for a smoke check

It starts a fake OpenAI upstream (bench/fake_upstream.py), bare mitmdump in reverse
mode in front of it, and one gateway mitmdump per variant (bench/variants.py), each on
a free port of 127.0.0.1. Then it loads each with wrk (non-streamed requests, 1 and 16
connections), times the first token of streamed requests, and prints one table with
the gateway's figures next to bare mitmdump's and the project's targets. A MISS is
reported, not an error; the exit status is non-zero only when a component fails.

The forward-proxy variants (observe mode) run mitmdump in regular mode instead; their
clients send absolute-form requests for the fake through it (wrk with a generated Lua
script that sets the request target, and `ForwardConnection`), and they are compared
with bare mitmdump in regular mode (`bare-forward`).

A variant's `headers` (the policy variants: the consumer's API key) go with every
request of every client: wrk (a generated script), the TTFT client and the start check
(`ClientConnection`). A variant whose config names `$redis_port` gets a `redis-server`
the harness starts on a free port and stops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from types import FrameType

import fake_upstream
import yaml
from loadgen import (
    LUA_SCRIPT,
    Connection,
    HTTPError,
    WrkResult,
    parse_wrk,
    run_wrk,
    timed_stream,
    wrk_path,
    wrk_version,
)
from procs import HOST, Process, Processes, StartupError, free_port
from variants import BASELINES, VARIANTS, Variant

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_SCRIPT = ROOT / "addons" / "gateway.py"
LOW, HIGH = 1, 16  # wrk connections: latency is judged at LOW, throughput at HIGH
CONCURRENCY = (LOW, HIGH)

# The project's targets for the gateway, relative to bare mitmdump.
MIN_THROUGHPUT_RATIO = 0.8  # gateway req/s / bare req/s, at HIGH connections
MAX_ADDED_P50_MS = 0.5  # gateway p50 - bare p50, at LOW connections
MAX_ADDED_TTFT_MS = 1.0  # gateway TTFT p50 - bare TTFT p50

WRK_INSTALL_HINT = """\
wrk is not installed; the benchmark uses it to generate load. Install it with:
    sudo apt-get install -y wrk      (Debian, Ubuntu)
    brew install wrk                 (macOS)"""


@dataclass(slots=True)
class Server:
    """A started mitmdump and the variant it runs."""

    variant: Variant
    port: int
    pid: int
    #: the gateway's config file and embedded store ("" when off); None for bare
    config: Path | None = None
    store: str | None = None
    #: where its output goes (warnings and errors)
    log: Path | None = None
    #: the fake's port (forward mode: where clients' requests go, through the proxy)
    fake_port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.variant.client_path}"

    @property
    def target(self) -> str:
        """The request target clients write: the path (reverse mode), or the fake's
        absolute URL (a forward proxy's absolute form)."""
        if self.variant.forward:
            tag = f"/{self.variant.name}" if self.variant.tagged else ""
            return f"http://{HOST}:{self.fake_port}{tag}{self.variant.client_path}"
        return self.variant.client_path

    def connect(self, timeout: float = 30.0) -> Connection:
        headers = self.variant.headers
        if self.variant.forward:
            return ForwardConnection(self.port, f"{HOST}:{self.fake_port}", timeout, headers)
        if headers:
            return ClientConnection(self.port, timeout, headers)
        return Connection(self.port, timeout=timeout)


class ClientConnection(Connection):
    """`loadgen.Connection` that sends extra headers with every request (a variant's
    `headers`, e.g. a consumer's API key) and names `host` in the Host header."""

    def __init__(
        self,
        port: int,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(port, timeout=timeout)
        self.host = host or f"{HOST}:{port}"
        self.extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())

    def send(self, path: str, body: bytes) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n{self.extra}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)


class ForwardConnection(ClientConnection):
    """A client of a forward proxy: the request target is an absolute URL (`path`) and
    the Host header names the destination, as HTTP clients send them to a proxy."""

    def __init__(
        self,
        port: int,
        destination: str,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(port, timeout, headers, host=destination)
        self.destination = destination


@dataclass(slots=True)
class Measured:
    """Everything measured for one variant, over all rounds."""

    wrk: dict[int, list[WrkResult]] = field(default_factory=dict)  # connections -> per round
    ttft_ms: list[list[float]] = field(default_factory=list)  # per round, per request
    #: CPU seconds the mitmdump process (all its threads) used during each wrk run
    cpu_s: list[float] = field(default_factory=list)

    def cpu_ms_per_call(self) -> float:
        """The process's CPU time per request wrk completed, over all its wrk runs."""
        calls = sum(r.requests for runs in self.wrk.values() for r in runs)
        return 1000 * sum(self.cpu_s) / calls if calls and self.cpu_s else float("nan")

    def median(self, connections: int, attr: str) -> float:
        """The median over rounds of a WrkResult field (rps, p50 or p99)."""
        return statistics.median(float(getattr(r, attr)) for r in self.wrk[connections])

    def ttft_p50(self) -> float:
        return statistics.median(t for round_ in self.ttft_ms for t in round_)

    def errors(self) -> int:
        return sum(r.errors for runs in self.wrk.values() for r in runs)


# ------------------------------------------------------------------ machine


def checkout() -> str:
    """The commit of the gateway code under test, and whether it has local changes."""
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "addons", "providers", "exporters"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "llmitm": checkout(),
        "cpu": cpu,
        "cores": str(usable),
        "python": platform.python_version(),
        "mitmproxy": importlib.metadata.version("mitmproxy"),
        "wrk": wrk_version(),
        # other work on the machine skews the figures: say how busy it was at the start
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ------------------------------------------------------------------ servers


def mitmdump_path() -> str:
    """The mitmdump of this Python's environment (the venv), else the one on PATH."""
    local = Path(sys.executable).with_name("mitmdump")
    if local.exists():
        return str(local)
    found = shutil.which("mitmdump")
    if found is None:
        raise StartupError("mitmdump not found: activate the venv (see the README)")
    return found


def start_fake(procs: Processes, args: argparse.Namespace) -> int:
    port = free_port()
    argv = [
        sys.executable,
        str(Path(fake_upstream.__file__).resolve()),
        f"--port={port}",
        f"--chunks={args.chunks}",
        f"--first-delay-ms={args.first_delay_ms}",
        f"--chunk-delay-ms={args.chunk_delay_ms}",
    ]
    procs.start("fake upstream", argv, port)
    return port


def start_redis(procs: Processes) -> int:
    """A throwaway `redis-server` on a free port of 127.0.0.1 (no persistence), for the
    variants whose config names `$redis_port`; `procs` stops it at the end."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise StartupError(
            "redis-server is not installed (a policy variant needs it): "
            "sudo apt-get install -y redis-server"
        )
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    procs.start("redis-server", argv, port)
    return port


def redis_stats(port: int) -> dict[str, str]:
    """`INFO stats` and `INFO commandstats` of the harness's redis-server (what the
    gateways asked of it), as name -> value; empty when it cannot be read."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            out = b""
            for section in (b"stats", b"commandstats"):
                sock.sendall(b"INFO " + section + b"\r\n")
                head = b""
                while not head.endswith(b"\r\n"):
                    head += sock.recv(1)
                size = int(head[1:-2])
                body = b""
                while len(body) < size + 2:
                    body += sock.recv(65536)
                out += body
    except (OSError, ValueError):
        return {}
    stats = {}
    for line in out.decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("#"):
            stats[name] = value
    return stats


def redis_report(port: int | None) -> list[str]:
    """One line: what the redis-server did during the run (its scripts are the policies'
    check-and-count calls)."""
    if port is None:
        return []
    stats = redis_stats(port)
    if not stats:
        return ["", f"redis-server (port {port}): could not read its stats"]
    calls = {
        name.removeprefix("cmdstat_"): value.split(",", 1)[0].removeprefix("calls=")
        for name, value in stats.items()
        if name.startswith("cmdstat_")
    }
    listed = ", ".join(f"{name} {n}" for name, n in sorted(calls.items()))
    return [
        "",
        f"redis-server (port {port}): {stats.get('total_commands_processed', '?')} commands "
        f"({listed or 'none'}), {stats.get('total_connections_received', '?')} connections",
    ]


def mitmdump_options(
    variant: Variant,
    fake_port: int,
    port: int,
    workdir: Path,
    redis_port: int | None = None,
    status_port: int | None = None,
) -> tuple[list[str], dict[str, str | None]]:
    """mitmdump's arguments for `variant` (after the program's name), and the `--set`
    options among them, each given once. The gateway's status listener is off unless
    `status_port` names its port.

    mitmproxy refuses an addon's option given twice ("Received multiple values") and
    then drops every deferred addon option, llmitm_config included: the gateway would
    start without its config and forward everything to the reverse target. So a
    `--set` in the variant's `mitmdump_args` replaces the harness's value of that
    option instead of being added after it."""
    confdir = workdir / f"confdir-{port}"  # isolated from ~/.mitmproxy and its config.yaml
    confdir.mkdir()
    argv: list[str] = []
    # -q, but with warnings (e.g. a sink's retries): -q would override termlog_verbosity
    options: dict[str, str | None] = {"termlog_verbosity": "warn", "flow_detail": "0"}
    if variant.config is None:
        target = f"http://{HOST}:{fake_port}"  # bare: mitmproxy forwards to the fake
    else:
        target = f"http://{HOST}:9"  # unused: the gateway does its own upstream I/O
        config = workdir / f"{variant.name}-{port}.yaml"
        config.write_text(variant.render_config(f"http://{HOST}:{fake_port}", workdir, redis_port))
        options["llmitm_config"] = str(config)
    if variant.uses_gateway:
        argv += ["-s", str(GATEWAY_SCRIPT)]
        # the embedded store stays on, as in a default install, but in the run's directory
        # (a variant may turn it off); each gateway spools to its own directory
        options["llmitm_spool_dir"] = str(workdir / f"spool-{variant.name}")
        options["llmitm_store"] = str(workdir / f"{variant.name}.db")
        options["llmitm_status_listen"] = f"{HOST}:{status_port}" if status_port else "off"
    options["connection_strategy"] = "lazy"
    options["confdir"] = str(confdir)
    extra: list[str] = []
    # `$fake` in an argument: the fake's host:port (e.g. an observe-mode host entry)
    args = [Template(a).safe_substitute(fake=f"{HOST}:{fake_port}") for a in variant.mitmdump_args]
    while args:
        arg = args.pop(0)
        if arg == "--set" and args:
            name, eq, value = args.pop(0).partition("=")
            options[name] = value if eq else None
        else:
            extra.append(arg)
    if variant.forward:  # clients name the fake in each request
        argv += ["--mode", f"regular@{HOST}:{port}"]
    else:
        argv += ["--mode", f"reverse:{target}@{HOST}:{port}"]
    for name, value in options.items():
        argv += ["--set", name if value is None else f"{name}={value}"]
    return argv + extra, options


def start_mitmdump(
    procs: Processes,
    variant: Variant,
    fake_port: int,
    workdir: Path,
    redis_port: int | None = None,
) -> Server:
    """Start mitmdump for `variant` (bare when it has no config) and check it answers."""
    port = free_port()
    args, options = mitmdump_options(variant, fake_port, port, workdir, redis_port)
    argv = [mitmdump_path(), *args]
    name = f"mitmdump ({variant.summary})"
    # Import the gateway from this checkout, even when the venv's editable install of
    # llmitm points at another one.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = procs.start(name, argv, port, env={**os.environ, "PYTHONPATH": pythonpath})
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
    try:
        check(server)
    except (HTTPError, OSError, ValueError) as e:
        raise StartupError(f"{name} does not answer as expected: {e}\n{proc.output_tail()}") from e
    return server


def check(server: Server) -> None:
    """One non-streamed and one streamed request must succeed before any load."""
    variant = server.variant
    with server.connect(timeout=10) as conn:
        status, body = conn.post(server.target, variant.body())
        answer = json.loads(body) if status == 200 else None
        if not isinstance(answer, dict) or not answer.get("choices"):
            raise HTTPError(f"status {status}: {body[:300]!r}")
        timed_stream(conn, server.target, variant.body(stream=True))


def wrk_script(server: Server, workdir: Path) -> Path:
    """wrk's script for a forward proxy or a variant with `headers`: `post.lua`, then
    for a forward proxy the fake's absolute URL as the request target and its address
    as the Host header (wrk itself connects to the proxy, the URL it is given), then the
    variant's headers."""
    variant = server.variant
    path = workdir / f"wrk-{variant.name}-{server.port}.lua"
    lines = [f"dofile({json.dumps(str(LUA_SCRIPT))})"]
    if variant.forward:
        lines += [
            f"wrk.path = {json.dumps(server.target)}",
            f'wrk.headers["Host"] = "{HOST}:{server.fake_port}"',
        ]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in variant.headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_load(server: Server, body_file: Path, connections: int, duration: float) -> WrkResult:
    """wrk against `server`: `loadgen.run_wrk`, or for a forward proxy or a variant with
    headers the same run with its own script (`wrk_script`, next to the body file)."""
    if not server.variant.forward and not server.variant.headers:
        return run_wrk(server.url, body_file, connections, duration)
    exe = wrk_path()
    if exe is None:
        raise StartupError("wrk is not installed")
    argv = [
        exe,
        f"-t{1 if connections < 8 else 2}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(wrk_script(server, body_file.parent)),
        f"http://{HOST}:{server.port}/" if server.variant.forward else server.url,
    ]
    env = {**os.environ, "BENCH_BODY": str(body_file)}
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, env=env, timeout=duration + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def first_tokens(server: Server, body: bytes, count: int, warmup: int = 5) -> list[float]:
    """`loadgen.measure_ttft` through `server`'s kind of connection (forward or not,
    with the variant's headers)."""
    with server.connect() as conn:
        for _ in range(warmup):
            timed_stream(conn, server.target, body)
        return [timed_stream(conn, server.target, body).ttft * 1000 for _ in range(count)]


# ------------------------------------------------------------------ measuring


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and all its threads (Linux: /proc);
    NaN where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profiler(procs: Processes, server: Server, seconds: float, out: Path) -> Process:
    """py-spy records `server` for `seconds` into a flame graph (SVG) in `out`."""
    py_spy = Path(sys.executable).with_name("py-spy")
    exe = str(py_spy) if py_spy.exists() else shutil.which("py-spy")
    if exe is None:
        raise StartupError("--profile needs py-spy: pip install py-spy")
    out.mkdir(parents=True, exist_ok=True)
    svg = out / f"{server.variant.name}-c{HIGH}.svg"
    argv = [exe, "record", "-p", str(server.pid), "-d", str(max(1, round(seconds)))]
    return procs.spawn(f"py-spy {server.variant.name}", [*argv, "-o", str(svg)])


def measure(
    args: argparse.Namespace,
    procs: Processes,
    load: list[Server],
    streams: list[Server],
    workdir: Path,
) -> dict[str, Measured]:
    """Run every wrk and TTFT measurement. Within a round the targets take turns per
    concurrency level, so slow drifts of the machine hit all of them alike."""
    results = {server.variant.name: Measured() for server in load}
    bodies: dict[str, Path] = {}
    for server in load:
        path = bodies[server.variant.name] = workdir / f"{server.variant.name}-body.json"
        path.write_bytes(server.variant.body())
        if args.warmup > 0:
            print(f"  warm-up {server.variant.name}", flush=True)
            run_load(server, path, max(CONCURRENCY), args.warmup)
    for round_ in range(1, args.rounds + 1):
        label = f"round {round_}/{args.rounds}: " if args.rounds > 1 else ""
        for connections in CONCURRENCY:
            for server in load:
                name = server.variant.name
                print(f"  {label}wrk {name} c={connections} {args.duration:g}s", flush=True)
                profiler = None
                if args.profile and connections == HIGH and server.variant.uses_gateway:
                    profiler = start_profiler(procs, server, args.duration - 1, args.profile)
                cpu = cpu_seconds(server.pid)
                result = run_load(server, bodies[name], connections, args.duration)
                results[name].cpu_s.append(cpu_seconds(server.pid) - cpu)
                results[name].wrk.setdefault(connections, []).append(result)
                if profiler is not None:
                    profiler.popen.wait(30)
        for server in streams:
            name = server.variant.name
            print(f"  {label}TTFT {name} x{args.ttft_requests}", flush=True)
            body = server.variant.body(stream=True)
            samples = first_tokens(server, body, args.ttft_requests)
            results[name].ttft_ms.append(samples)
    return results


# ------------------------------------------------------------------ delivery


@dataclass(slots=True)
class Delivered:
    """What one variant's sinks received, against the calls it made to the fake."""

    calls: int
    #: sink -> (items received, items expected: one per call, requests they came in; 0
    #: for the store and file-log, which are written locally)
    sinks: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: request bodies a sink could not read
    unreadable: int = 0

    def complete(self) -> bool:
        return not self.unreadable and all(got == want for got, want, _ in self.sinks.values())


def fake_received(fake_port: int) -> dict[str, dict[str, dict[str, int]]]:
    """The fake's count of what it received, per tag (variant) and endpoint."""
    url = f"http://{HOST}:{fake_port}{fake_upstream.RECEIVED_PATH}"
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def _file_log_paths(config: Path) -> list[Path]:
    doc = yaml.safe_load(config.read_text()) or {}
    return [
        Path(p["config"]["path"])
        for p in doc.get("plugins") or ()
        if p.get("name") == "file-log" and p.get("config", {}).get("path")
    ]


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _store_rows(path: str) -> int:
    if not Path(path).exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])


def delivered(fake_port: int, servers: list[Server]) -> dict[str, Delivered]:
    """For each variant the fake tells apart (`Variant.tagged`): the calls it made, and
    what each of its sinks (the fake's stand-ins, the store, file-log) received."""
    received = fake_received(fake_port)
    out: dict[str, Delivered] = {}
    for server in servers:
        variant = server.variant
        if not variant.tagged or not variant.uses_gateway:
            continue
        by_endpoint = received.get(variant.name, {})
        calls = by_endpoint.get(variant.fake_endpoint, {}).get("requests", 0)
        d = out[variant.name] = Delivered(calls)
        if server.store:
            d.sinks["store rows"] = (_store_rows(server.store), calls, 0)
        for path in _file_log_paths(server.config) if server.config else ():
            d.sinks["file-log lines"] = (_lines(path), calls, 0)
        for endpoint, sink in fake_upstream.SINKS.items():
            if f"- name: {sink.plugin}\n" in (variant.config or ""):
                got = by_endpoint.get(endpoint, {})
                d.sinks[sink.name] = (got.get("items", 0), calls, got.get("requests", 0))
                d.unreadable += got.get("unreadable", 0)
    return out


def gateway_logs(servers: list[Server], limit: int = 1500) -> str:
    """The end of what each gateway logged (at -q plus warnings: nothing, normally)."""
    out = []
    for server in servers:
        text = server.log.read_text(errors="replace").strip() if server.log else ""
        if text:
            out.append(f"== {server.variant.name}\n{text[-limit:]}")
    return "\n".join(out)


def wait_delivered(
    fake_port: int, servers: list[Server], patience: float = 5.0, limit: float = 60.0
) -> dict[str, Delivered]:
    """`delivered` once every sink has everything, or nothing more arrived for
    `patience` seconds (sinks batch for up to a second or two), or after `limit`."""
    start = last_change = time.monotonic()
    previous = None
    while True:
        result = delivered(fake_port, servers)
        if all(d.complete() for d in result.values()):
            return result
        now = time.monotonic()
        if result != previous:
            previous, last_change = result, now
        if now - last_change >= patience or now - start >= limit:
            return result
        time.sleep(0.5)


def delivery_report(results: dict[str, Delivered]) -> list[str]:
    if not results:
        return []
    width = max(len(name) for name in results)
    lines = [
        "",
        "sinks received (items / calls the variant made: one item per call expected; in how "
        "many requests):",
    ]
    for name, d in results.items():
        parts = [
            f"{sink} {got}/{want}"
            + (f" in {requests} req" if requests else "")
            + ("" if got == want else " !")
            for sink, (got, want, requests) in d.sinks.items()
        ]
        if d.unreadable:
            parts.append(f"{d.unreadable} unreadable request bodies !")
        line = f"  {name:{width}}  calls {d.calls:6d}  "
        indent = " " * len(line)
        for i, part in enumerate(parts or ["no sink"]):
            text = part + ("," if i < len(parts) - 1 else "")
            if i > 0 and len(line) + len(text) > 100:
                lines.append(line.rstrip())
                line = indent
            line += text + " "
        lines.append(line.rstrip())
    if not all(d.complete() for d in results.values()):
        lines.append("  ! marks a sink that did not receive every record (while the gateway ran)")
    return lines


# ------------------------------------------------------------------ report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _row(label: str, measured: str, target: str, mark: str, width: int = 36) -> str:
    return f"  {label:<{width}}{measured:>10}   {target:<11} {mark}"


def report(args: argparse.Namespace, info: dict[str, str], results: dict[str, Measured]) -> str:
    """The table: each target's figures, then each variant against bare and the targets."""
    group = "{:-^26}"
    width = max(12, *(len(name) for name in results))
    lines = [
        f"llmitm benchmark, {info['date']}, gateway code {info['llmitm']}",
        (
            f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}; "
            f"mitmproxy {info['mitmproxy']}; wrk {info['wrk']}; "
            f"load average at start {info['load']}"
        ),
        (
            f"load: wrk POSTs a non-streamed chat request, {args.duration:g} s per run after a "
            f"{args.warmup:g} s warm-up; {args.rounds} round(s), medians shown"
        ),
        (
            f"streams: {args.chunks} chunks, the first after {args.first_delay_ms:g} ms, then "
            f"every {args.chunk_delay_ms:g} ms; TTFT over {args.ttft_requests} sequential "
            "requests per round"
        ),
        "",
        f"{'':{width}}  {group.format(f' c={LOW} ')}  {group.format(f' c={HIGH} ')}  {'TTFT':>7}"
        f"  {'CPU ms':>7}",
        (
            f"{'target':{width}}  {'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}  {'req/s':>8}{'p50 ms':>9}"
            f"{'p99 ms':>9}  {'p50 ms':>7}  {'/call':>7}"
        ),
    ]
    for name, m in results.items():
        row = f"{name:{width}}"
        for c in CONCURRENCY:
            row += f"  {m.median(c, 'rps'):8.1f}{m.median(c, 'p50'):9.2f}{m.median(c, 'p99'):9.2f}"
        mark = "*" if name in BASELINES else " "
        lines.append(f"{row}  {m.ttft_p50():7.2f}{mark} {m.cpu_ms_per_call():7.3f}")
    for name in results:
        if name in BASELINES:
            lines.append(
                f"* {name} TTFT: {BASELINES[name][1].summary} (without it mitmdump holds a "
                "stream back until its end)"
            )
    lines.append(
        "CPU ms/call: the mitmdump process's CPU time (all its threads) during its wrk runs, "
        "per request completed"
    )

    by_name = {v.name: v for v in VARIANTS}
    # the label column fits the longest "throughput at c=16 (variant/bare)"
    label = max(
        36,
        *(
            len(f"throughput at c={HIGH} ({n}/{by_name[n].baseline})")
            for n in results
            if n in by_name
        ),
    )
    for name, m in results.items():
        if name in BASELINES:
            continue
        base_name = by_name[name].baseline
        bare = results[base_name]
        ratio = m.median(HIGH, "rps") / bare.median(HIGH, "rps")
        p50 = m.median(LOW, "p50") - bare.median(LOW, "p50")
        ttft = m.ttft_p50() - bare.ttft_p50()
        failed = bool(m.errors() or bare.errors())
        lines += [
            "",
            f"{name + ' vs ' + base_name:<{label + 2}}{'measured':>10}   {'target':<11} verdict",
            _row(
                f"throughput at c={HIGH} ({name}/{base_name})",
                f"{ratio:.2f}x",
                f">= {MIN_THROUGHPUT_RATIO:.2f}x",
                "ERRORS" if failed else verdict(ratio >= MIN_THROUGHPUT_RATIO),
                label,
            ),
            _row(
                f"added p50 latency at c={LOW}",
                f"{p50:+.2f} ms",
                f"<= {MAX_ADDED_P50_MS:.2f} ms",
                "ERRORS" if failed else verdict(p50 <= MAX_ADDED_P50_MS),
                label,
            ),
            _row(
                "added TTFT p50",
                f"{ttft:+.2f} ms",
                f"<= {MAX_ADDED_TTFT_MS:.2f} ms",
                verdict(ttft <= MAX_ADDED_TTFT_MS),
                label,
            ),
        ]
        if args.rounds > 1:
            rounds = zip(
                m.wrk[HIGH],
                bare.wrk[HIGH],
                m.wrk[LOW],
                bare.wrk[LOW],
                m.ttft_ms,
                bare.ttft_ms,
                strict=True,
            )
            lines.append("  per round (throughput, added p50, added TTFT):")
            for g_high, b_high, g_low, b_low, g_ttft, b_ttft in rounds:
                lines.append(
                    f"    {g_high.rps / b_high.rps:.2f}x  {g_low.p50 - b_low.p50:+.2f} ms  "
                    f"{statistics.median(g_ttft) - statistics.median(b_ttft):+.2f} ms"
                )
        if failed:
            lines.append(
                f"  ! {m.errors()} {name} and {bare.errors()} {base_name} requests failed under "
                "load (non-2xx or socket errors): the load figures are not comparable"
            )
    lines += _relative(results)
    return "\n".join(lines)


def _relative(results: dict[str, Measured]) -> list[str]:
    """What a variant costs over the one it names in `compare_to` (no target: informative)."""
    lines: list[str] = []
    by_name = {v.name: v for v in VARIANTS}
    for name, m in results.items():
        for base_name in by_name[name].compared_with if name in by_name else ():
            if base_name in results:
                lines += _relative_to(name, m, base_name, results[base_name])
    return lines


def _relative_to(name: str, m: Measured, base_name: str, base: Measured) -> list[str]:
    """One `compare_to` line: `name`'s cost over `base_name`."""
    lines = [
        "",
        f"{name} vs {base_name}: throughput at c={HIGH} "
        f"{m.median(HIGH, 'rps') / base.median(HIGH, 'rps'):.2f}x, "
        f"added p50 at c={LOW} {m.median(LOW, 'p50') - base.median(LOW, 'p50'):+.2f} ms, "
        f"added TTFT p50 {m.ttft_p50() - base.ttft_p50():+.2f} ms, "
        f"added CPU {m.cpu_ms_per_call() - base.cpu_ms_per_call():+.3f} ms/call",
    ]
    if len(m.wrk[HIGH]) > 1:
        rounds = zip(m.wrk[HIGH], base.wrk[HIGH], m.wrk[LOW], base.wrk[LOW], strict=True)
        lines.append(
            "  per round (throughput, added p50): "
            + ", ".join(
                f"{g_high.rps / b_high.rps:.2f}x {g_low.p50 - b_low.p50:+.2f} ms"
                for g_high, b_high, g_low, b_low in rounds
            )
        )
    if m.errors() or base.errors():
        lines.append(
            f"  ! {m.errors()} {name} and {base.errors()} {base_name} requests failed under "
            "load: not comparable"
        )
    return lines


def save_json(
    path: Path,
    args: argparse.Namespace,
    info: dict[str, str],
    results: dict[str, Measured],
    sinks: dict[str, Delivered],
) -> None:
    data = {
        "machine": info,
        "args": vars(args)
        | {
            "json": str(args.json),
            "profile": str(args.profile) if args.profile else None,
            "variants": [v.name for v in args.variants],
        },
        "results": {
            name: {
                "wrk": {
                    str(c): [{k: v for k, v in asdict(r).items() if k != "output"} for r in runs]
                    for c, runs in m.wrk.items()
                },
                "ttft_ms": m.ttft_ms,
                "cpu_s": m.cpu_s,
            }
            for name, m in results.items()
        },
        "sinks": {name: asdict(d) for name, d in sinks.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark the llmitm gateway against bare mitmdump.",
    )
    ap.add_argument("--duration", type=float, help="seconds per wrk run (10; --quick: 3)")
    ap.add_argument(
        "--warmup", type=float, help="seconds of wrk warm-up per target (2; --quick: 1)"
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="repeat all runs; medians are reported (1)"
    )
    ap.add_argument(
        "--ttft-requests", type=int, help="streamed requests per round (50; --quick: 20)"
    )
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per stream (20)")
    ap.add_argument(
        "--first-delay-ms", type=float, default=50.0, help="fake's delay to the first chunk (50)"
    )
    ap.add_argument(
        "--chunk-delay-ms", type=float, default=2.0, help="fake's delay between chunks (2)"
    )
    ap.add_argument(
        "--variants",
        default=",".join(v.name for v in VARIANTS if v.default),
        help="comma-separated gateway variants to run (default: %(default)s; all: "
        + ",".join(v.name for v in VARIANTS)
        + ")",
    )
    ap.add_argument("--quick", action="store_true", help="shorter defaults, for a smoke check")
    ap.add_argument("--json", type=Path, help="also write the raw results to this file")
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help=f"py-spy flame graphs of each gateway variant during its c={HIGH} runs, into "
        "DIR (sampling slows the gateway: do not compare the figures of such a run)",
    )
    args = ap.parse_args(argv)
    if args.profile is not None:  # py-spy runs in the run's temporary directory
        args.profile = args.profile.resolve()
    quick = args.quick
    if args.duration is None:
        args.duration = 3.0 if quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if quick else 2.0
    if args.ttft_requests is None:
        args.ttft_requests = 20 if quick else 50
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in args.variants.split(",") if n not in known]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.variants = [known[n] for n in args.variants.split(",")]
    if args.rounds < 1 or args.ttft_requests < 1 or args.duration < 1:
        ap.error("--rounds, --ttft-requests and --duration must be at least 1")
    return args


def baselines_of(variants: list[Variant]) -> list[Variant]:
    """The bare mitmdumps `variants` are judged against: for each baseline they name, its
    load variant and its streaming one (`variants.BASELINES`)."""
    names = dict.fromkeys(v.baseline for v in variants)
    return [b for name in names for b in BASELINES[name]]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through Processes, which stops the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if wrk_path() is None:
        print(WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    baselines = baselines_of(args.variants)
    for variant in [*baselines, *args.variants]:
        if variant.fake_endpoint not in fake_upstream.ENDPOINTS:
            print(
                f"variant {variant.name}: the fake has no {variant.fake_endpoint}", file=sys.stderr
            )
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    info = machine()
    redis_port: int | None = None
    with tempfile.TemporaryDirectory(prefix="llmitm-bench-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        try:
            print("starting the fake upstream, bare mitmdump and the gateway...", flush=True)
            fake_port = start_fake(procs, args)
            if any(v.needs_redis for v in args.variants):
                redis_port = start_redis(procs)
                print(f"  redis-server: port {redis_port}")
            bares = [start_mitmdump(procs, v, fake_port, workdir) for v in baselines]
            gateways = [
                start_mitmdump(procs, v, fake_port, workdir, redis_port) for v in args.variants
            ]
            for server in [*bares, *gateways]:
                print(f"  {server.variant.summary}: port {server.port}, pid {server.pid}")
            print("measuring...", flush=True)
            # each baseline: one mitmdump for load and latency, one for time to first token
            loaded = [s for s in bares if any(s.variant is b[0] for b in BASELINES.values())]
            streamed = [s for s in bares if s not in loaded]
            results = measure(args, procs, [*loaded, *gateways], [*streamed, *gateways], workdir)
            if any(server.variant.tagged for server in gateways):
                print("waiting for the sinks to receive every record...", flush=True)
            sinks = wait_delivered(fake_port, gateways)
            logs = gateway_logs(gateways)
            redis = redis_report(redis_port)
        except StartupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (HTTPError, OSError, RuntimeError) as e:
            print(f"error while measuring: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; stopping the servers", file=sys.stderr)
            return 130
    print()
    print(report(args, info, results))
    print("\n".join(delivery_report(sinks) + redis))
    if logs:
        print("\ngateway warnings and errors (their last lines):")
        print(logs)
    if args.json:
        save_json(args.json, args, info, results, sinks)
        print(f"\nraw results: {args.json}")
    if args.profile:
        print(f"flame graphs: {args.profile}/ (figures of a profiled run are skewed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
