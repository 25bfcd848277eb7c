"""exporters/ids.py: UUIDv7 ids (RFC 9562), as Opik requires them."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from exporters.ids import uuid7


def ms_of(u: str) -> int:
    return uuid.UUID(u).int >> 80


@pytest.mark.parametrize(
    "at", [None, 0.0, 1.0005, 1_700_000_000.123, 1_763_900_000.9999, 2**47 / 1000]
)
def test_version_variant_and_time_prefix(at: float | None) -> None:
    before = int(time.time() * 1000)
    u = uuid7(at)
    after = int(time.time() * 1000)
    parsed = uuid.UUID(u)
    assert str(parsed) == u
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    if at is None:
        assert before <= ms_of(u) <= after
    else:
        assert ms_of(u) == int(at * 1000)


def test_time_prefix_orders_ids_by_event_time() -> None:
    early, late = uuid7(1_700_000_000.001), uuid7(1_700_000_000.002)
    again_early = uuid7(1_700_000_000.001)  # minted later, for an earlier event
    assert early < late and again_early < late
    assert ms_of(again_early) == ms_of(early)


def test_ids_minted_in_a_tight_loop_are_unique_and_sorted() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # as strings (what sinks compare) ...
    assert [uuid.UUID(i).int for i in ids] == sorted(
        uuid.UUID(i).int for i in ids
    )  # ... and as numbers


def test_many_ids_for_the_same_millisecond_stay_sorted() -> None:
    at = 1_700_000_000.5
    ids = [uuid7(at) for _ in range(10_000)]  # more than the 12-bit counter holds
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    # the time field may move on by a millisecond per 4096 ids, never back
    assert ms_of(ids[0]) == int(at * 1000)
    assert int(at * 1000) <= ms_of(ids[-1]) <= int(at * 1000) + 4


def test_threads_get_unique_ids() -> None:
    out: list[list[str]] = [[] for _ in range(8)]

    def mint(slot: list[str]) -> None:
        slot.extend(uuid7() for _ in range(2000))

    threads = [threading.Thread(target=mint, args=(slot,)) for slot in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for slot in out for i in slot]
    assert len(set(every)) == len(every)
    for slot in out:
        assert slot == sorted(slot)
