"""Child processes of the benchmark: start them, wait until they listen, always stop them.

Every server the bench starts (fake upstream, mitmdump instances) goes through
`Processes`, a context manager that stops all of them on exit, whether the run ended,
failed or was interrupted with Ctrl-C. Children run in their own session (so Ctrl-C
reaches only the harness, which then stops them in order) and, on Linux, are asked by
the kernel to exit if the harness itself dies without cleaning up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"


class StartupError(RuntimeError):
    """A component did not start or did not answer as expected."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _child_setup() -> None:
    """Runs in the child before exec: own session, and SIGTERM when the parent dies."""
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: cleanup then relies on the context manager alone


class Process:
    """One started child: its command, its stderr log, and its port."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log = log
        with open(log, "wb") as err:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_setup,  # safe: the harness starts no threads
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output_tail(self, limit: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Poll the port until it accepts a connection; fail fast if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.popen.poll()
            if code is not None:
                raise StartupError(
                    f"{self.name} exited with status {code} before listening on port "
                    f"{self.port}:\n{self.output_tail()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise StartupError(f"{self.name} did not listen on port {self.port} within {timeout:g}s")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (mitmdump flushes its addons on it), then SIGKILL after `grace`."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


class Processes:
    """Starts children and stops every one of them when the `with` block ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Process] = []

    def start(
        self,
        name: str,
        argv: list[str],
        port: int,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Process:
        """Start `argv` and return once it listens on `port` (raises StartupError)."""
        slug = "".join(c if c.isalnum() else "-" for c in name)
        proc = Process(name, argv, port, self.workdir / f"{slug}-{port}.log", self.workdir, env)
        self.started.append(proc)
        proc.wait_listening(timeout)
        return proc

    def spawn(self, name: str, argv: list[str]) -> Process:
        """Start a helper that listens on nothing (a profiler); stopped like the rest."""
        slug = "".join(c if c.isalnum() else "-" for c in name)
        proc = Process(name, argv, 0, self.workdir / f"{slug}.log", self.workdir)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A second Ctrl-C while stopping must not leave the rest running.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)
