"""exporters/spool: items come back in the order they went in, across segments and
restarts; delivered items never come back; the disk cap holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters import spool as spool_module
from exporters.spool import Spool


def drain(s: Spool, batch: int = 7) -> list[int]:
    out: list[int] = []
    while True:
        items = s.peek(batch)
        if not items:
            return out
        out += [it["n"] for it in items]
        s.advance(len(items))


def test_fifo_across_segments_and_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 200)  # many small segments
    s = Spool(tmp_path)
    assert s.load() == 0
    for start in range(0, 30, 5):  # a segment is closed once it is over the size
        s.append([{"n": i} for i in range(start, start + 5)])
    assert s.pending == 30
    first = s.peek(10)
    s.advance(10)
    assert [it["n"] for it in first] == list(range(10))
    assert len(list(tmp_path.glob("*.jsonl"))) > 1
    # a new process: the 10 delivered items are not sent again
    again = Spool(tmp_path)
    assert again.load() == 20
    again.append([{"n": i} for i in range(30, 35)])
    assert drain(again) == list(range(10, 35))
    assert again.pending == 0
    assert Spool(tmp_path).load() == 0
    assert not list(tmp_path.glob("*.jsonl"))  # delivered segments are deleted


def test_peek_does_not_consume(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append([{"n": 1}, {"n": 2}])
    assert s.peek(5) == s.peek(5) == [{"n": 1}, {"n": 2}]
    s.advance(1)
    assert s.peek(5) == [{"n": 2}]


def test_the_disk_cap_refuses_what_does_not_fit(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=100)
    refused = s.append([{"n": i, "pad": "x" * 20} for i in range(10)])
    kept = 10 - refused
    assert 0 < kept < 10
    assert sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) <= 100
    assert drain(s) == list(range(kept))


def test_a_corrupt_line_is_none_in_its_place_not_fatal(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append([{"n": 1}])
    seg = next(tmp_path.glob("*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b"{not json\n[1, 2]\n")  # not JSON; JSON but not an item
    s2 = Spool(tmp_path)
    s2.append([{"n": 3}])
    assert s2.pending == 4
    assert s2.peek(10) == [{"n": 1}, None, None, {"n": 3}]
    s2.advance(4)
    assert s2.pending == 0 and s2.peek(10) == []


def test_a_line_cut_short_by_a_crash_does_not_swallow_the_next_item(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append([{"n": 1}])
    seg = next(tmp_path.glob("*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b'{"n": 2, "pa')  # the process died in the middle of this append
    again = Spool(tmp_path)
    assert again.load() == 2  # the cut line counts: the caller skips it
    again.append([{"n": 3}])
    assert again.peek(10) == [{"n": 1}, None, {"n": 3}]


def test_integers_beyond_64_bits_are_kept(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    s.append([{"n": 2**70}])
    assert s.peek(1) == [{"n": 2**70}]
