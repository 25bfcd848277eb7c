"""Kong's file-log: each call record as one JSON object per line.

Records are serialized on the delivery task and handed to a dedicated writer thread
through a queue, so no disk I/O happens on mitmproxy's event loop and the loop never
waits for the thread. Every wake-up of the thread costs the loop a GIL hand-off (and,
when the loop is busy, up to the interpreter's 5 ms switch interval), so the delivery
task batches for a quarter of a second and the thread writes each batch with a single
system call. Encoding in the thread, or an `asyncio.to_thread` per small batch, was
measured to add about 1 ms to p50 at one connection (bench/README.md).

A write that fails (a full disk, an I/O error, a path that is not writable) is tried
again after `RETRY_DELAYS` (the file is reopened each time, so a rotated or recreated
file is picked up), and only then counted in `failed` and logged. `written`, `failed`
and `pending` (handed over, not yet written) are what /metrics and /status report;
`max_pending` bounds how far behind the thread may fall (exporters/delivery.py keeps
the rest, bounded too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time

from exporters._threads import run_blocking
from exporters.record import CallRecord

log = logging.getLogger(__name__)

_STOP = object()  # tells the writer thread to finish

#: seconds to wait before each new attempt at a failed write (then it counts as failed)
RETRY_DELAYS = (0.05, 0.25, 1.0)

#: records handed to the writer thread and not yet written, at most
MAX_PENDING = 2_000


class FileSink:
    def __init__(self, path: str, reopen: bool = False) -> None:
        self.name = f"file-log:{path}"
        self.path = path
        self.reopen = reopen
        self.written = 0  # records written
        self.failed = 0  # records that could not be written, after the retries
        self.pending = 0  # records handed over and not yet written (or given up)
        self.max_pending = MAX_PENDING
        self._lock = threading.Lock()  # guards the counts, updated by both sides
        self._fd: int | None = None
        self._queue: queue.SimpleQueue[tuple[bytes, int] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def send(self, records: list[CallRecord]) -> None:
        data = b"".join(r.encoded() + b"\n" for r in records)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        with self._lock:
            self.pending += len(records)
        self._queue.put((data, len(records)))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is _STOP
            chunks, count = ([], 0) if stop else ([item[0]], item[1])
            while not stop:  # take whatever else is queued: one write for all of it
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    chunks.append(item[0])
                    count += item[1]
            if chunks:
                self._write(b"".join(chunks), count)
            if stop:
                self._close()
                return

    def _write(self, data: bytes, count: int) -> None:
        view = memoryview(data)
        error: OSError | None = None
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
            if attempt == 1:
                log.warning(
                    "%s: could not write %d record(s) (%s): trying again %d times",
                    self.name,
                    count,
                    error,
                    len(RETRY_DELAYS),
                )
            if delay:
                time.sleep(delay)  # the writer thread's own time: nothing else waits
            try:
                if self._fd is None:
                    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                while view:  # one system call, unless the kernel takes less
                    view = view[os.write(self._fd, view) :]
            except OSError as e:
                error = e
                self._close()  # reopened at the next attempt
                continue
            error = None
            break
        # what reached the file: whole lines, at the start of `data`
        done = data.count(b"\n", 0, len(data) - len(view))
        with self._lock:
            self.written += done
            self.failed += count - done
            self.pending -= count
        if error is not None:
            log.error(
                "%s: could not write %d record(s), after %d attempts: %s",
                self.name,
                count - done,
                1 + len(RETRY_DELAYS),
                error,
            )
        elif self.reopen:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    async def aclose(self) -> None:
        await run_blocking(self.close_sync)

    def close_sync(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
