"""An append-only on-disk queue of sink items: where events wait while a sink is down.

One `Spool` per sink and channel, in its own directory: numbered JSON-lines segment
files, and a `head` file saying how far the first segment has been delivered. Items
are appended at the end and consumed from the head, so they are replayed in the order
they were spooled, also after a restart. Every method does disk I/O: the delivery
calls them in a worker thread, never on the event loop; a lock makes them safe to
call from several threads.

Disk use is bounded by `max_bytes`: an append that would exceed it writes nothing and
returns how many items it could not keep (the caller counts them as dropped).

A line that is not JSON (a crash in the middle of an append) is returned by `peek` as
None, in its place, so that the caller skips it (and counts it) without losing the
items around it; `load` ends a last line that a crash cut short, so that the next
append does not glue an item to it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import orjson

SEGMENT_BYTES = 8 * 1024 * 1024


def encoded(item: dict[str, Any]) -> bytes:
    """An item as one line of JSON (without the newline)."""
    try:
        return orjson.dumps(item)
    except TypeError:  # an integer beyond 64 bits, say: the json module takes anything
        return json.dumps(item, separators=(",", ":")).encode()


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 1024**3) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self._lock = threading.RLock()  # load() is re-entered by the others
        self._segments: list[int] = []  # segment numbers, oldest first
        self._head_line = 0  # lines of the first segment already delivered
        self._head_cache: tuple[int, list[bytes]] | None = None
        self._bytes = 0
        self.pending = 0  # items spooled and not yet delivered
        self._loaded = False

    # ------------------------------------------------------------------ state

    def load(self) -> int:
        """Read what a previous run left (segments and head); returns the items pending."""
        with self._lock:
            if self._loaded:
                return self.pending
            self.dir.mkdir(parents=True, exist_ok=True)
            self._segments = sorted(
                int(p.stem) for p in self.dir.glob("*.jsonl") if p.stem.isdigit()
            )
            head = self.dir / "head"
            if head.exists():
                seg, _, line = head.read_text().partition(" ")
                if self._segments and seg.isdigit() and int(seg) == self._segments[0]:
                    self._head_line = int(line or 0)
            self.pending = 0
            self._bytes = 0
            for i, seg in enumerate(self._segments):
                path = self._path(seg)
                data = path.read_bytes()
                if data and not data.endswith(b"\n"):
                    # a crash in the middle of an append: end the line (peek returns it as
                    # None), or the next append would join an item to it
                    with open(path, "ab") as f:
                        f.write(b"\n")
                        f.flush()
                        os.fsync(f.fileno())
                    data += b"\n"
                self._bytes += len(data)
                lines = data.count(b"\n")
                self.pending += lines - (self._head_line if i == 0 else 0)
            self.pending = max(self.pending, 0)
            self._loaded = True
            return self.pending

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:010d}.jsonl"

    def _save_head(self) -> None:
        if not self._segments:
            (self.dir / "head").unlink(missing_ok=True)
            return
        tmp = self.dir / "head.tmp"
        tmp.write_text(f"{self._segments[0]} {self._head_line}")
        os.replace(tmp, self.dir / "head")

    # ------------------------------------------------------------- operations

    def append(self, items: list[dict[str, Any]]) -> int:
        """Append items (JSON-able); returns how many did not fit under `max_bytes`."""
        if not items:
            return 0
        lines = [encoded(item) + b"\n" for item in items]
        with self._lock:
            self.load()
            data = b"".join(lines)
            if self._bytes + len(data) > self.max_bytes:
                room = self.max_bytes - self._bytes
                kept = 0
                size = 0
                for line in lines:
                    if size + len(line) > room:
                        break
                    size += len(line)
                    kept += 1
                lines = lines[:kept]
                data = b"".join(lines)
                refused = len(items) - kept
            else:
                refused = 0
            if not lines:
                return refused
            if not self._segments or self._path(self._segments[-1]).stat().st_size > SEGMENT_BYTES:
                self._segments.append((self._segments[-1] + 1) if self._segments else 1)
                if len(self._segments) == 1:
                    self._head_line = 0
                    self._save_head()
            with open(self._path(self._segments[-1]), "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._bytes += len(data)
            self.pending += len(lines)
            if self._head_cache is not None and self._head_cache[0] == self._segments[-1]:
                self._head_cache[1].extend(lines)
            return refused

    def peek(self, n: int) -> list[dict[str, Any] | None]:
        """Up to `n` items from the head (not consumed: `advance` does that), all from
        the first segment; None for a line that is not JSON."""
        with self._lock:
            self.load()
            while self._segments:
                seg = self._segments[0]
                if self._head_cache is None or self._head_cache[0] != seg:
                    self._head_cache = (seg, self._path(seg).read_bytes().splitlines(True))
                lines = self._head_cache[1]
                if self._head_line < len(lines):
                    out: list[dict[str, Any] | None] = []
                    for line in lines[self._head_line : self._head_line + n]:
                        try:
                            item = orjson.loads(line)
                        except orjson.JSONDecodeError:
                            item = None
                        out.append(item if isinstance(item, dict) else None)
                    return out
                if len(self._segments) == 1:
                    return []
                self._drop_head_segment()
            return []

    def advance(self, n: int) -> None:
        """Mark the first `n` items of the head as delivered (they are never read again)."""
        with self._lock:
            self._head_line += n
            self.pending = max(0, self.pending - n)
            seg = self._segments[0] if self._segments else None
            if seg is not None and self._head_cache is not None and self._head_cache[0] == seg:
                exhausted = self._head_line >= len(self._head_cache[1])
            else:
                exhausted = False
            if exhausted and (len(self._segments) > 1 or self.pending == 0):
                self._drop_head_segment()
            self._save_head()

    def _drop_head_segment(self) -> None:
        seg = self._segments.pop(0)
        path = self._path(seg)
        self._bytes -= path.stat().st_size if path.exists() else 0
        path.unlink(missing_ok=True)
        self._head_line = 0
        self._head_cache = None
