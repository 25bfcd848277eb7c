"""UUIDv7 ids (RFC 9562): time-ordered, minted when the event happens (Opik requires them)."""

from __future__ import annotations

import random
import threading
import time

_lock = threading.Lock()
_first_ms = 0  # the millisecond asked for when the current run of ids began
_last_ms = 0  # the millisecond in the last id (past _first_ms if the counter overflowed)
_seq = 0


def uuid7(at: float | None = None) -> str:
    """A UUIDv7 for the time `at` (epoch seconds, default now); ids minted in the same
    millisecond by this process increase monotonically. When more than the 12-bit
    counter holds are minted in one millisecond, the time field moves on by 1 ms
    (RFC 9562, 6.2) rather than wrapping the counter."""
    global _first_ms, _last_ms, _seq
    with _lock:
        # read the clock under the lock: a reading another thread overtook would restart
        # the run and break the order
        ms = int((time.time() if at is None else at) * 1000)
        if _first_ms <= ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _first_ms = _last_ms = ms
            _seq = random.getrandbits(11)  # leave room to count up
        seq = _seq
    rand_b = random.getrandbits(62)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
    # str(uuid.UUID(int=value)), without building the UUID (a third of the time)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
