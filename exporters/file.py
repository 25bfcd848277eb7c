"""Kong's file-log: each call record as one JSON object per line.

Serializing and writing happen in a worker thread, never on mitmproxy's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import IO

from exporters.record import CallRecord


class FileSink:
    def __init__(self, path: str, reopen: bool = False) -> None:
        self.name = f"file-log:{path}"
        self.path = path
        self.reopen = reopen
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()

    async def send(self, records: list[CallRecord]) -> None:
        await asyncio.to_thread(self._write, records)

    def _write(self, records: list[CallRecord]) -> None:
        text = "".join(
            json.dumps(r.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            for r in records
        )
        with self._lock:
            if self._fh is None:
                parent = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(parent, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(text)
            self._fh.flush()
            if self.reopen:
                self._fh.close()
                self._fh = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
