"""The two clients of the benchmark: wrk for throughput and latency, and a small
HTTP/1.1 client for time to first token.

wrk runs as its own process (C, event-driven), so the load generator costs the
proxies under test as little CPU as possible; `post.lua` makes it POST a JSON body.
Time to first token needs to look inside the SSE stream, which wrk cannot, so a
blocking-socket client in the bench process sends streamed requests one at a time over
one keep-alive connection, and stamps the arrival of the first event with content.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from procs import HOST, StartupError

LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"

# ------------------------------------------------------------------------- wrk


@dataclass(slots=True)
class WrkResult:
    """What one wrk run measured. Latencies in milliseconds."""

    rps: float
    p50: float
    p99: float
    requests: int
    errors: int  # non-2xx/3xx answers plus socket errors: a run with errors is suspect
    output: str = field(repr=False, default="")


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "absent"
    out = subprocess.run([path, "--version"], check=False, capture_output=True, text=True).stdout
    match = re.search(r"wrk\s+(\S+)", out)
    return match.group(1) if match else "unknown"


def parse_wrk(output: str) -> WrkResult:
    """Parse the report of `wrk --latency` (raises ValueError when it is not one)."""
    percentiles = {p: float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(output)}
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if rps is None or total is None or set(percentiles) != {"50", "99"}:
        raise ValueError(f"not a wrk --latency report:\n{output}")
    errors = sum(int(n) for n in _NON_2XX.findall(output))
    for groups in _SOCKET_ERRORS.findall(output):
        errors += sum(int(n) for n in groups)
    return WrkResult(
        rps=float(rps.group(1)),
        p50=percentiles["50"],
        p99=percentiles["99"],
        requests=int(total.group(1)),
        errors=errors,
        output=output,
    )


def run_wrk(url: str, body_file: Path, connections: int, duration: float) -> WrkResult:
    """POST `body_file` to `url` for `duration` seconds over `connections` connections
    (one wrk thread up to 8 connections, two above: the machine has few cores)."""
    path = wrk_path()
    if path is None:
        raise StartupError("wrk is not installed")
    threads = 1 if connections < 8 else 2
    argv = [
        path,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    env = {**os.environ, "BENCH_BODY": str(body_file)}
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, env=env, timeout=duration + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# ---------------------------------------------------------------- HTTP client


class HTTPError(RuntimeError):
    """The server answered something the bench did not expect."""


class Connection:
    """A minimal HTTP/1.1 keep-alive client over one blocking socket: just enough to
    send a POST and read a Content-Length or chunked answer piece by piece."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def _read_until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, path: str, body: bytes) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)

    def read_head(self) -> tuple[int, dict[str, str]]:
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def iter_body(self, headers: dict[str, str]) -> Iterator[bytes]:
        """The body as it arrives: each HTTP chunk, or the Content-Length body."""
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._read_until(b"\r\n"):  # trailers, then the empty line
                        pass
                    return
                yield self._read_exact(size)
                self._read_exact(2)
        else:
            yield self._read_exact(int(headers.get("content-length", "0")))

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """One whole request and answer."""
        self.send(path, body)
        status, headers = self.read_head()
        return status, b"".join(self.iter_body(headers))


def _has_content(event: bytes) -> bool:
    """Whether an SSE event is an OpenAI chunk that carries generated text."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            return False
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                return True
    return False


@dataclass(slots=True)
class StreamTiming:
    """One streamed request: seconds to the first content event and to the end."""

    ttft: float
    total: float
    events: int


def timed_stream(conn: Connection, path: str, body: bytes) -> StreamTiming:
    """Send one streamed chat request and time its first content event (raises
    HTTPError when the answer is not a 200 SSE stream with content that ends in [DONE])."""
    start = time.perf_counter()
    conn.send(path, body)
    status, headers = conn.read_head()
    first: float | None = None
    pending = b""
    events = 0
    done = False
    for piece in conn.iter_body(headers):
        pending += piece
        *complete, pending = pending.split(b"\n\n")
        for event in complete:
            events += 1
            if first is None and _has_content(event):
                first = time.perf_counter()
            done = done or event.strip() == b"data: [DONE]"
    end = time.perf_counter()
    if status != 200 or first is None or not done:
        raise HTTPError(f"port {conn.port}: not a 200 SSE stream with content: status {status}")
    return StreamTiming(first - start, end - start, events)


def measure_ttft(port: int, path: str, body: bytes, count: int, warmup: int = 5) -> list[float]:
    """Time to first token (milliseconds) of `count` sequential streamed requests over
    one keep-alive connection, after `warmup` untimed ones."""
    with Connection(port) as conn:
        for _ in range(warmup):
            timed_stream(conn, path, body)
        return [timed_stream(conn, path, body).ttft * 1000 for _ in range(count)]
