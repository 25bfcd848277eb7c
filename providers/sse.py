"""Incremental Server-Sent Events decoding and encoding.

Chunk boundaries are arbitrary: a chunk may hold half an event or many. The decoder
keeps the undecoded tail and returns only whole events, each with its original bytes so
a pass-through can forward them unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# A blank line ends an event; lines may end in LF, CRLF or CR, even mixed.
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n")
# Only CR, LF and CRLF end lines: str.splitlines() would also split on U+2028 inside JSON.
_LINES = re.compile(r"\r\n|\r|\n")


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str
    raw: bytes


def _parse(block: bytes, raw: bytes) -> SSEEvent | None:
    event: str | None = None
    data: list[str] = []
    for line in _LINES.split(block.decode("utf-8", "replace")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if event is None and not data:
        return None  # a comment or keep-alive
    return SSEEvent(event, "\n".join(data), raw)


class SSEDecoder:
    """Feed bytes, get whole events."""

    __slots__ = ("_buf", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0

    def feed(self, data: bytes) -> list[SSEEvent]:
        self._buf += data
        events: list[SSEEvent] = []
        while True:
            end = -1
            sep = 0
            for boundary in _BOUNDARIES:
                i = self._buf.find(boundary, self._scan)
                if i >= 0 and (end < 0 or i < end):
                    end, sep = i, len(boundary)
            if end < 0:
                # Resume the search just before the tail: a boundary may straddle chunks.
                self._scan = max(0, len(self._buf) - 3)
                return events
            raw = bytes(self._buf[: end + sep])
            del self._buf[: end + sep]
            self._scan = 0
            ev = _parse(raw[:end], raw)
            if ev is not None:
                events.append(ev)

    def flush(self) -> list[SSEEvent]:
        """Whatever is left at end of stream, as a last event if it holds one."""
        if not self._buf.strip():
            self._buf.clear()
            return []
        raw = bytes(self._buf)
        self._buf.clear()
        ev = _parse(raw, raw + b"\n\n")
        return [ev] if ev else []

    @property
    def pending(self) -> int:
        return len(self._buf)


def encode(data: Any, event: str | None = None) -> bytes:
    """One SSE event; `data` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


DONE = b"data: [DONE]\n\n"
