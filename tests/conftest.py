"""Shared fixtures: a scriptable fake upstream, and real gateway processes.

End-to-end tests start the gateway exactly as the README does (`mitmdump -q -s
addons/gateway.py --mode reverse:...`), on a free loopback port, with a config written
to a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mitmdump() -> str:
    found = shutil.which("mitmdump", path=str(Path(sys.executable).parent))
    return found or shutil.which("mitmdump") or "mitmdump"


class Gateway:
    """A running `mitmdump -s addons/gateway.py` process."""

    def __init__(
        self,
        tmp: Path,
        config: str,
        *,
        quiet: bool = True,
        env: dict[str, str] | None = None,
        extra: list[str] | None = None,
        port: int | None = None,
        status_listen: str = "off",
    ) -> None:
        self.tmp = tmp
        self.records_path = tmp / "records.jsonl"
        self.config_path = tmp / "llmitm.yaml"
        self.log_path = tmp / "mitmdump.log"
        self.store_path = tmp / "llmitm.db"
        self.port = port or free_port()
        self.write_config(config)
        cmd = [mitmdump()]
        if quiet:
            cmd.append("-q")
        cmd += [
            "-s",
            "addons/gateway.py",
            "--mode",
            f"reverse:http://127.0.0.1:9@127.0.0.1:{self.port}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"llmitm_config={self.config_path}",
            "--set",
            f"confdir={tmp / 'confdir'}",
            # the exporters' spool and the embedded store live in the test's directory
            "--set",
            f"llmitm_spool_dir={tmp / 'spool'}",
            "--set",
            f"llmitm_store={tmp / 'llmitm.db'}",
            # many gateways run at once in the tests: no status listener unless asked
            "--set",
            f"llmitm_status_listen={status_listen}",
            *(extra or []),
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def write_config(self, text: str) -> None:
        text = text.replace("{records}", str(self.records_path))
        self.config_path.write_text(text)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> Gateway:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"gateway not listening after {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        if not self.records_path.exists():
            return []
        text = self.records_path.read_text()
        # the last line may still be being written: only whole lines count
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]

    def wait_records(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.time() + timeout
        while True:
            recs = self.records()
            if len(recs) >= n or time.time() > deadline:
                assert len(recs) >= n, f"expected {n} records, got {len(recs)}:\n{self.log()}"
                return recs
            time.sleep(0.02)

    def record(self, timeout: float = 5.0, **context: str) -> dict[str, Any]:
        """The last record whose `context` has these values (waits for it)."""
        deadline = time.time() + timeout
        while True:
            found = [
                r
                for r in self.records()
                if all(r["context"].get(k) == v for k, v in context.items())
            ]
            if found:
                return found[-1]
            assert time.time() < deadline, f"no record with context {context}:\n{self.log()}"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class RedisServer:
    """A real `redis-server` on 127.0.0.1 in a temporary directory (no persistence).
    `kill()` stops it hard (SIGKILL: Redis "dies" mid-test), `restart()` starts it again
    on the same port, empty."""

    host = "127.0.0.1"

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.log_path = tmp / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("redis-server")

    def start(self, timeout: float = 10.0) -> RedisServer:
        exe = self.binary()
        assert exe, "redis-server is not on PATH"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
                "--logfile",
                str(self.log_path),
            ],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.time() > deadline:
                log = self.log_path.read_text() if self.log_path.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for this test (stopped at its end)."""
    if RedisServer.binary() is None:
        # not a skip: the shared rate-limit policy would go untested without a word
        pytest.fail("redis-server is not installed (apt-get install redis-server; see README)")
    tmp = tmp_path_factory.mktemp("redis")
    for attempt in range(3):  # a free port can be taken between looking and binding
        try:
            server = RedisServer(tmp).start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def fake(upstream: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream, reset for this test."""
    upstream.reset()
    return upstream


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Any]:
    """Start gateways for one test; all are stopped at its end."""
    started: list[Gateway] = []

    def start(config: str, *, ready: bool = True, **kw: Any) -> Gateway:
        d = tmp_path / f"gw{len(started)}"
        d.mkdir()
        gw = Gateway(d, config, **kw)
        started.append(gw)
        return gw.wait_ready() if ready else gw

    yield start
    for gw in started:
        gw.stop()
