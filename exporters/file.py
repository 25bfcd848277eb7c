"""Kong's file-log: each call record as one JSON object per line.

Records are serialized on the delivery task and handed to a dedicated writer thread
through a queue, so no disk I/O happens on mitmproxy's event loop and the loop never
waits for the thread. Every wake-up of the thread costs the loop a GIL hand-off (and,
when the loop is busy, up to the interpreter's 5 ms switch interval), so the delivery
task batches for a quarter of a second and the thread writes each batch with a single
system call. Encoding in the thread, or an `asyncio.to_thread` per small batch, was
measured to add about 1 ms to p50 at one connection (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading

import orjson

from exporters.record import CallRecord

log = logging.getLogger(__name__)

_STOP = object()  # tells the writer thread to finish


class FileSink:
    def __init__(self, path: str, reopen: bool = False) -> None:
        self.name = f"file-log:{path}"
        self.path = path
        self.reopen = reopen
        self.failed = 0  # records that could not be written
        self._fd: int | None = None
        self._queue: queue.SimpleQueue[tuple[bytes, int] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def send(self, records: list[CallRecord]) -> None:
        data = b"".join(orjson.dumps(r.to_dict(), default=str) + b"\n" for r in records)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
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
        try:
            if self._fd is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(data)
            while view:  # one system call, unless the kernel takes less
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            self.failed += count
            log.error("%s: could not write %d record(s): %s", self.name, count, e)
            self._close()
            return
        if self.reopen:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
