"""providers/eventstream.py: AWS event-stream framing, decoded incrementally and encoded.

Checked against Kong's fixtures (a recorded Bedrock ConverseStream body and the messages
Kong expects from it), against botocore's own decoder (an independent implementation),
at every chunk boundary, and with corrupt input that must fail with a specific error.
"""

from __future__ import annotations

import base64
import datetime
import json
import struct
import uuid
import zlib
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer

from providers import eventstream
from providers.eventstream import (
    ChecksumError,
    EventStreamDecoder,
    EventStreamError,
    HeaderError,
    HeaderType,
    LengthError,
    Message,
    encode_event,
    encode_message,
)
from tests.unit.conftest import byte_by_byte, every_split, fixture, fixture_json, fixtures

AWS = "unit/streaming-chunk-formats/aws"


def decode_all(chunks: list[bytes]) -> list[Message]:
    dec = EventStreamDecoder()
    out: list[Message] = []
    for c in chunks:
        out += dec.feed(c)
    assert dec.pending == 0
    return out


def as_kong(m: Message) -> dict[str, Any]:
    """A message in the shape of Kong's expected-output.json entries."""
    return {"headers": m.headers, "body": json.loads(m.payload)}


def kong_expected() -> list[dict[str, Any]]:
    out = []
    for entry in fixture_json(f"{AWS}/expected-output.json"):
        data = json.loads(entry["data"])
        out.append({"headers": data["headers"], "body": json.loads(data["body"])})
    return out


# ------------------------------------------------------------------ Kong's fixtures


def test_kong_input_decodes_to_kongs_expected_messages() -> None:
    raw = fixture(f"{AWS}/input.bin").read_bytes()
    got = [as_kong(m) for m in decode_all([raw])]
    assert got == kong_expected()
    assert [m["headers"][":event-type"] for m in got] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]


@pytest.mark.parametrize("how", ["every_split", "byte_by_byte"])
def test_kong_input_at_every_chunk_boundary(how: str) -> None:
    raw = fixture(f"{AWS}/input.bin").read_bytes()
    expected = kong_expected()
    cuts = list(every_split(raw)) if how == "every_split" else [byte_by_byte(raw)]
    for chunks in cuts:
        assert [as_kong(m) for m in decode_all(chunks)] == expected


def test_agrees_with_botocores_decoder() -> None:
    raw = fixture(f"{AWS}/input.bin").read_bytes()
    theirs = EventStreamBuffer()
    theirs.add_data(raw)
    reference = [(m.headers, m.payload) for m in theirs]
    assert [(m.headers, m.payload) for m in decode_all([raw])] == reference


def test_messages_re_encode_byte_for_byte() -> None:
    raw = fixture(f"{AWS}/input.bin").read_bytes()
    messages = decode_all([raw])
    assert b"".join(encode_message(m.headers, m.payload, m.types) for m in messages) == raw


def kong_chunks() -> bytes:
    """Kong's bedrock/chunks/*.txt: consecutive pieces of one ConverseStream body, base64."""
    return b"".join(base64.b64decode(p.read_text()) for p in fixtures("bedrock/chunks/chunk-*.txt"))


def test_kong_bedrock_chunk_files_hold_a_streamed_tool_call() -> None:
    raw = kong_chunks()
    for chunks in ([raw], byte_by_byte(raw)):
        messages = decode_all(chunks)
        kinds = [m.event_type for m in messages]
        assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
        payloads = [m.json() for m in messages]
        start = next(p for p in payloads if "start" in p)
        assert start["start"]["toolUse"]["name"] == "add"
        args = "".join(
            p["delta"]["toolUse"]["input"] for p in payloads if "toolUse" in p.get("delta", {})
        )
        assert json.loads(args) == {"a": 2, "b": 12}
        assert payloads[-2]["stopReason"] == "tool_use"
        assert payloads[-1]["usage"] == {"inputTokens": 478, "outputTokens": 44, "totalTokens": 522}


def test_each_kong_chunk_file_holds_whole_messages() -> None:
    for path in fixtures("bedrock/chunks/chunk-*.txt"):
        dec = EventStreamDecoder()
        assert dec.feed(base64.b64decode(path.read_text()))
        assert dec.pending == 0


# ------------------------------------------------------------------ header types


EVERY_TYPE: list[tuple[str, Any, HeaderType]] = [
    ("t", True, HeaderType.BOOL_TRUE),
    ("f", False, HeaderType.BOOL_FALSE),
    ("byte-min", -128, HeaderType.BYTE),
    ("byte-max", 127, HeaderType.BYTE),
    ("short", -32768, HeaderType.SHORT),
    ("int", 2**31 - 1, HeaderType.INTEGER),
    ("int-neg", -(2**31), HeaderType.INTEGER),
    ("long", -(2**63), HeaderType.LONG),
    ("long-max", 2**63 - 1, HeaderType.LONG),
    ("bytes", b"\x00\xff\x10binary", HeaderType.BYTES),
    ("bytes-empty", b"", HeaderType.BYTES),
    ("string", "héllo ✓ wörld", HeaderType.STRING),
    ("string-empty", "", HeaderType.STRING),
    (
        "timestamp",
        datetime.datetime(2024, 5, 17, 9, 30, 12, 345000, tzinfo=datetime.UTC),
        HeaderType.TIMESTAMP,
    ),
    (
        "before-epoch",
        datetime.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=datetime.UTC),
        HeaderType.TIMESTAMP,
    ),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678"), HeaderType.UUID),
]


@pytest.mark.parametrize("name, value, kind", EVERY_TYPE, ids=[t[0] for t in EVERY_TYPE])
def test_round_trip_of_every_header_type(name: str, value: Any, kind: HeaderType) -> None:
    raw = encode_message({name: value}, b'{"x":1}', {name: kind})
    [m] = decode_all([raw])
    assert m.headers == {name: value}
    assert m.types == {name: kind}
    assert m.payload == b'{"x":1}'
    assert encode_message(m.headers, m.payload, m.types) == raw
    # botocore reads the same value from our bytes (timestamps as ms, UUIDs as bytes)
    theirs = EventStreamBuffer()
    theirs.add_data(raw)
    [ref] = list(theirs)
    expected = value
    if kind is HeaderType.TIMESTAMP:
        expected = round((value - eventstream._EPOCH).total_seconds() * 1000)
    elif kind is HeaderType.UUID:
        expected = value.bytes
    assert ref.headers == {name: expected}


def test_all_header_types_in_one_message_split_everywhere() -> None:
    headers = {name: value for name, value, _ in EVERY_TYPE}
    types = {name: kind for name, _, kind in EVERY_TYPE}
    raw = encode_message(headers, "payload ✓", types) + encode_message({}, b"")
    for chunks in every_split(raw):
        first, second = decode_all(chunks)
        assert first.headers == headers and first.payload == "payload ✓".encode()
        assert second.headers == {} and second.payload == b""


def test_types_are_inferred_from_python_values() -> None:
    now = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    u = uuid.uuid4()
    raw = encode_message(
        {"a": True, "b": 7, "c": 2**40, "d": b"x", "e": "s", "f": now, "g": u}, b""
    )
    [m] = decode_all([raw])
    assert m.types == {
        "a": HeaderType.BOOL_TRUE,
        "b": HeaderType.INTEGER,
        "c": HeaderType.LONG,
        "d": HeaderType.BYTES,
        "e": HeaderType.STRING,
        "f": HeaderType.TIMESTAMP,
        "g": HeaderType.UUID,
    }
    assert m.headers["f"] == now and m.headers["g"] == u


def test_message_accessors() -> None:
    [m] = decode_all([encode_event("contentBlockDelta", {"delta": {"text": "hi"}})])
    assert (m.message_type, m.event_type, m.exception_type) == ("event", "contentBlockDelta", None)
    assert m.headers[":content-type"] == "application/json"
    assert m.json() == {"delta": {"text": "hi"}}


# ------------------------------------------------------------------ corrupt input


def _with_prelude(total: int, headers_length: int, rest: bytes = b"") -> bytes:
    """A prelude with a valid CRC announcing these lengths."""
    head = struct.pack(">II", total, headers_length)
    return head + struct.pack(">I", zlib.crc32(head)) + rest


GOOD = encode_event("messageStart", {"role": "assistant"})


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    "raw, error, words",
    [
        (_flip(GOOD, 8), ChecksumError, "prelude CRC"),  # the prelude CRC itself
        (_flip(GOOD, 2), ChecksumError, "prelude CRC"),  # a length the CRC covers
        (_flip(GOOD, len(GOOD) - 1), ChecksumError, "message CRC"),  # the message CRC
        (_flip(GOOD, 20), ChecksumError, "message CRC"),  # a header byte
        (_flip(GOOD, len(GOOD) - 6), ChecksumError, "message CRC"),  # a payload byte
        (_with_prelude(8, 0), LengthError, "length 8"),  # shorter than a prelude + CRC
        (_with_prelude(2**31, 0), LengthError, "impossible"),  # absurdly long
        (_with_prelude(100, 90), LengthError, "headers length 90"),  # headers past the end
        (_with_prelude(200_000, 150_000), LengthError, "headers length"),  # over AWS's limit
    ],
    ids=[
        "prelude-crc",
        "length-bit",
        "message-crc",
        "header-byte",
        "payload-byte",
        "too-short",
        "absurd-length",
        "headers-past-end",
        "headers-over-limit",
    ],
)
def test_corruption_raises_a_specific_error(raw: bytes, error: type, words: str) -> None:
    for chunks in ([raw], byte_by_byte(raw)):
        dec = EventStreamDecoder()
        with pytest.raises(error, match=words):
            for c in chunks:
                dec.feed(c)
        assert dec.failed
        # the stream cannot be resynchronised: later bytes fail too
        with pytest.raises(EventStreamError):
            dec.feed(GOOD)


def _raw_message(headers: bytes, payload: bytes = b"") -> bytes:
    total = 16 + len(headers) + len(payload)
    head = struct.pack(">II", total, len(headers))
    body = head + struct.pack(">I", zlib.crc32(head)) + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    "headers, words",
    [
        (b"\x03abc\x0a", "unknown type 10"),
        (b"\x03abc\x07\x00\x09short", "runs past"),  # a string longer than the section
        (b"\x03abc\x05\x00\x00", "runs past"),  # a long cut short
        (b"\x09ab", "runs past"),  # a name longer than the section
    ],
)
def test_bad_headers_with_valid_crcs(headers: bytes, words: str) -> None:
    with pytest.raises(HeaderError, match=words):
        EventStreamDecoder().feed(_raw_message(headers))


def test_messages_before_the_corruption_are_kept() -> None:
    second = encode_event("contentBlockDelta", {"delta": {"text": "x"}})
    raw = GOOD + second + _flip(GOOD, len(GOOD) - 1)
    with pytest.raises(ChecksumError) as info:
        EventStreamDecoder().feed(raw)
    assert [m.event_type for m in info.value.messages] == ["messageStart", "contentBlockDelta"]


def test_truncated_message_is_held_not_returned() -> None:
    dec = EventStreamDecoder()
    assert dec.feed(GOOD + GOOD[:-3]) != []
    assert dec.pending == len(GOOD) - 3
    assert dec.feed(b"") == []  # nothing more: the caller sees the pending bytes at its end
    assert len(dec.feed(GOOD[-3:])) == 1 and dec.pending == 0


def test_each_byte_is_checksummed_once_whatever_the_chunking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No re-scan per feed: a big message fed byte by byte costs what it costs whole."""
    payload = json.dumps({"delta": {"text": "x" * 200_000}}).encode()
    raw = encode_message({":event-type": "contentBlockDelta"}, payload)
    seen = [0]
    real = zlib.crc32

    def counting(data: Any, value: int = 0) -> int:
        seen[0] += len(data)
        return real(data, value)

    monkeypatch.setattr(eventstream.zlib, "crc32", counting)
    dec = EventStreamDecoder()
    got: list[Message] = []
    for i in range(0, len(raw), 1):
        got += dec.feed(raw[i : i + 1])
    assert len(got) == 1 and got[0].payload == payload
    assert seen[0] == 8 + len(raw) - 4  # the prelude, then the message, each once
