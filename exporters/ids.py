"""UUIDv7 ids (RFC 9562): time-ordered, minted when the event happens (Opik requires them)."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def uuid7(at: float | None = None) -> str:
    """A UUIDv7 for the time `at` (epoch seconds, default now); ids minted in the same
    millisecond by this process increase monotonically."""
    global _last_ms, _seq
    ms = int((time.time() if at is None else at) * 1000)
    with _lock:
        if ms == _last_ms:
            _seq = (_seq + 1) & 0xFFF
        else:
            _last_ms = ms
            _seq = int.from_bytes(os.urandom(2)) & 0x7FF  # leave room to count up
        seq = _seq
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
