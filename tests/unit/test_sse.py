"""providers/sse.py: incremental SSE decoding at arbitrary chunk boundaries."""

from __future__ import annotations

import json

import pytest

from providers import sse
from providers.sse import SSEDecoder, SSEEvent
from tests.unit.conftest import KONG, byte_by_byte, every_split, fixture, fixtures

RECORDED = [
    *fixtures("unit/real-stream-frames/openai/*.txt"),
    fixture("unit/streaming-chunk-formats/text-event-stream/input.bin"),
]


def decode(chunks: list[bytes]) -> list[tuple[str | None, str, bytes]]:
    dec = SSEDecoder()
    events: list[SSEEvent] = []
    for c in chunks:
        events += dec.feed(c)
    events += dec.flush()
    assert dec.pending == 0
    return [(e.event, e.data, e.raw) for e in events]


def ids(path):
    return str(path.relative_to(KONG))


@pytest.fixture(params=RECORDED, ids=ids)
def recorded(request) -> bytes:
    return request.param.read_bytes()


def test_recorded_streams_decode_to_json_events(recorded: bytes) -> None:
    events = decode([recorded])
    assert events, "a recorded stream yields at least one event"
    for _, data, _ in events:
        if data != "[DONE]":
            assert isinstance(json.loads(data), dict)
    # Nothing is lost or invented: the raw bytes of the events are the stream.
    assert b"".join(raw for *_, raw in events).rstrip(b"\n") == recorded.rstrip(b"\n")


def test_recorded_stream_every_two_chunk_split_is_the_same(recorded: bytes) -> None:
    whole = decode([recorded])
    for chunks in every_split(recorded):
        assert decode(chunks) == whole, f"split at byte {len(chunks[0])}"


def test_recorded_stream_byte_by_byte_is_the_same(recorded: bytes) -> None:
    assert decode(byte_by_byte(recorded)) == decode([recorded])


def test_kong_text_event_stream_matches_kong_expected_output() -> None:
    raw = fixture("unit/streaming-chunk-formats/text-event-stream/input.bin").read_bytes()
    expected = json.loads(
        fixture("unit/streaming-chunk-formats/text-event-stream/expected-output.json").read_text()
    )
    events = decode([raw])
    # Kong drops the [DONE] terminator from its parsed list; the decoder keeps it as the
    # last event (the OpenAI translator decides what to do with it).
    assert [{"data": d} for _, d, _ in events[:-1]] == expected
    assert events[-1][1] == "[DONE]"


LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n", "CR": "\r"}


@pytest.mark.parametrize("eol", LINE_ENDINGS.values(), ids=LINE_ENDINGS.keys())
def test_line_endings(eol: str) -> None:
    text = (
        f'event: message{eol}data: {{"a": 1}}{eol}{eol}'
        f": keep-alive{eol}{eol}"
        f"data: first{eol}data: second{eol}{eol}"
        f"data: [DONE]{eol}{eol}"
    )
    raw = text.encode()
    expected = [("message", '{"a": 1}'), (None, "first\nsecond"), (None, "[DONE]")]
    whole = decode([raw])
    assert [(e, d) for e, d, _ in whole] == expected
    for chunks in every_split(raw):
        assert decode(chunks) == whole, f"split at byte {len(chunks[0])}"
    assert decode(byte_by_byte(raw)) == whole


@pytest.mark.parametrize(
    "raw",
    [
        b": keep-alive\n\n",
        b":\n\n",
        b": ping\r\n\r\n",
        b"id: 7\nretry: 1000\n\n",  # fields the decoder does not surface: no event
    ],
)
def test_comments_and_keep_alives_yield_nothing(raw: bytes) -> None:
    assert decode([raw]) == []
    assert decode([raw + b"data: x\n\n"]) == [(None, "x", b"data: x\n\n")]


def test_keep_alive_between_events_is_skipped_but_events_keep_their_raw_bytes() -> None:
    raw = b"data: 1\n\n: comment\n\ndata: 2\n\n"
    assert decode([raw]) == [(None, "1", b"data: 1\n\n"), (None, "2", b"data: 2\n\n")]


@pytest.mark.parametrize(
    "raw, data",
    [
        (b"data: a\ndata: b\ndata: c\n\n", "a\nb\nc"),
        (b"data:no-space\n\n", "no-space"),
        (b"data:  two-spaces\n\n", " two-spaces"),  # only one leading space is removed
        (b"data\n\n", ""),
        (b"data: a\ndata:\ndata: b\n\n", "a\n\nb"),
        (b"data: a: b\n\n", "a: b"),  # only the first colon separates the field
    ],
)
def test_data_field_parsing(raw: bytes, data: str) -> None:
    assert [d for _, d, _ in decode([raw])] == [data]


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c"])
def test_unicode_line_separators_inside_json_do_not_split_data(sep: str) -> None:
    payload = json.dumps({"content": f"one{sep}two"}, ensure_ascii=False)
    raw = f"data: {payload}\n\n".encode()
    whole = decode([raw])
    assert len(whole) == 1
    assert json.loads(whole[0][1]) == {"content": f"one{sep}two"}
    # a multi-byte character cut between chunks is reassembled too
    for chunks in every_split(raw):
        assert decode(chunks) == whole


@pytest.mark.parametrize(
    "tail, data",
    [
        (b"data: last", "last"),
        (b"data: last\n", "last"),
        (b"data: last\r\n", "last"),
        (b'event: end\ndata: {"x": 1}', '{"x": 1}'),
    ],
)
def test_flush_returns_a_trailing_event_without_blank_line(tail: bytes, data: str) -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: first\n\n" + tail)[0].data == "first"
    assert dec.pending == len(tail)
    flushed = dec.flush()
    assert [e.data for e in flushed] == [data]
    # the raw bytes are completed into a whole event, so a pass-through stays valid SSE
    assert flushed[0].raw.endswith(b"\n\n")
    assert dec.flush() == []


@pytest.mark.parametrize("tail", [b"", b"\n", b"   \n", b": comment"])
def test_flush_without_an_event_returns_nothing(tail: bytes) -> None:
    dec = SSEDecoder()
    dec.feed(tail)
    assert dec.flush() == []
    assert dec.pending == 0


def test_many_events_in_one_chunk_all_come_out_in_order() -> None:
    raw = b"".join(sse.encode({"n": n}) for n in range(50))
    assert [json.loads(d)["n"] for _, d, _ in decode([raw])] == list(range(50))


def test_encode_round_trips_through_the_decoder() -> None:
    raw = sse.encode({"text": "h\u00e9llo\nworld"}, event="delta") + sse.encode("plain") + sse.DONE
    events = decode(byte_by_byte(raw))
    assert [(e, d) for e, d, _ in events] == [
        ("delta", json.dumps({"text": "h\u00e9llo\nworld"}, separators=(",", ":"))),
        (None, "plain"),
        (None, "[DONE]"),
    ]
    assert json.loads(events[0][1]) == {"text": "h\u00e9llo\nworld"}


@pytest.mark.parametrize("ending", [b"\n\r\n", b"\r\n\n"])
def test_mixed_line_endings_still_end_events(ending: bytes) -> None:
    raw = b"data: 1" + ending + b"data: 2\n\n"
    assert [d for _, d, _ in decode([raw])] == ["1", "2"]
    for chunks in every_split(raw):
        assert [d for _, d, _ in decode(chunks)] == ["1", "2"]
