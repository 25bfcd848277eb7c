"""AWS event-stream framing (`application/vnd.amazon.eventstream`): decoder and encoder.

Bedrock's ConverseStream (and every AWS streaming API) frames each event as one binary
message::

    prelude   total length (u32 BE) | headers length (u32 BE) | prelude CRC32 (u32 BE)
    headers   repeated: name length (u8) | name (UTF-8) | type (u8) | value
    payload   total length - headers length - 16 bytes
    trailer   message CRC32 (u32 BE) over everything before it

Header value types: 0 bool true and 1 bool false (no value bytes), 2 byte (i8),
3 short (i16), 4 integer (i32), 5 long (i64), 6 byte array and 7 string (u16 length,
then the bytes), 8 timestamp (i64 milliseconds since the epoch), 9 UUID (16 bytes).
All integers are big-endian.

`EventStreamDecoder.feed` takes chunks cut at arbitrary byte boundaries and returns the
messages completed so far. Per feed it only looks at the bytes of the messages it
completes: the buffer holds at most one partial message, a partial prelude is parsed
once, and the CRCs are computed on views, not copies. A corrupt stream (a CRC mismatch,
a length no valid message can have) raises `EventStreamError`; the stream cannot be
resynchronised after that, so the decoder stays failed and raises again on later feeds.
"""

from __future__ import annotations

import datetime
import enum
import json
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

PRELUDE_LENGTH = 12
# prelude + message CRC: the smallest message (no headers, no payload)
MIN_MESSAGE_LENGTH = PRELUDE_LENGTH + 4
# AWS's limits for one message (the same as the AWS SDKs enforce).
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
MAX_MESSAGE_LENGTH = MAX_HEADERS_LENGTH + MAX_PAYLOAD_LENGTH + MIN_MESSAGE_LENGTH

_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class HeaderType(enum.IntEnum):
    """The type byte of a header value."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTES = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


_INT_FORMATS = {
    HeaderType.BYTE: struct.Struct(">b"),
    HeaderType.SHORT: struct.Struct(">h"),
    HeaderType.INTEGER: struct.Struct(">i"),
    HeaderType.LONG: struct.Struct(">q"),
}
_TIMESTAMP = struct.Struct(">q")
_U16 = struct.Struct(">H")


class EventStreamError(ValueError):
    """The stream is corrupt: a CRC does not match, or a length is impossible.

    `messages` holds the whole, valid messages decoded by the same `feed` call before
    the corruption was found, so that nothing already received is lost.
    """

    def __init__(self, message: str, messages: list[Message] | None = None) -> None:
        super().__init__(message)
        self.messages: list[Message] = messages or []


class ChecksumError(EventStreamError):
    """A prelude or message CRC32 does not match the bytes received."""


class LengthError(EventStreamError):
    """A prelude announces a length no valid message can have."""


class HeaderError(EventStreamError):
    """The headers section cannot be parsed (a value runs past it, an unknown type)."""


@dataclass(slots=True)
class Message:
    """One decoded message: its headers (name -> Python value) and raw payload.

    Values decode to bool, int (byte, short, integer, long), bytes, str, an aware UTC
    `datetime` (timestamp) or `uuid.UUID`; `types` keeps each header's wire type so a
    message re-encodes byte for byte.
    """

    headers: dict[str, Any]
    payload: bytes
    types: dict[str, HeaderType] = field(default_factory=dict)

    @property
    def message_type(self) -> str | None:
        """`:message-type`: "event", "exception" or "error"."""
        value = self.headers.get(":message-type")
        return value if isinstance(value, str) else None

    @property
    def event_type(self) -> str | None:
        value = self.headers.get(":event-type")
        return value if isinstance(value, str) else None

    @property
    def exception_type(self) -> str | None:
        value = self.headers.get(":exception-type")
        return value if isinstance(value, str) else None

    def json(self) -> Any:
        """The payload parsed as JSON (an empty payload is an empty object)."""
        return json.loads(self.payload) if self.payload else {}


class EventStreamDecoder:
    """Feed bytes, get whole messages."""

    __slots__ = ("_buf", "_error", "_total")

    def __init__(self) -> None:
        self._buf = bytearray()
        # the total length of the message being received, once its prelude was checked
        self._total = 0
        self._error: EventStreamError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole message."""
        return len(self._buf)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes) -> list[Message]:
        if self._error is not None:
            raise type(self._error)(str(self._error))
        buf = self._buf
        buf += data
        messages: list[Message] = []
        start = 0
        try:
            while True:
                available = len(buf) - start
                if not self._total:
                    if available < PRELUDE_LENGTH:
                        break
                    self._total = _check_prelude(buf, start)
                if available < self._total:
                    break
                messages.append(_decode(buf, start, self._total))
                start += self._total
                self._total = 0
        except EventStreamError as e:
            e.messages = messages
            self._error = e
            buf.clear()
            raise
        if start:
            del buf[:start]  # what remains is at most one partial message
        return messages


def _check_prelude(buf: bytearray, start: int) -> int:
    total, headers_length, crc = _PRELUDE.unpack_from(buf, start)
    view = memoryview(buf)
    try:
        actual = zlib.crc32(view[start : start + 8])
    finally:
        view.release()
    if actual != crc:
        raise ChecksumError(
            f"event-stream prelude CRC mismatch (expected {crc:#010x}, computed {actual:#010x})"
        )
    if total < MIN_MESSAGE_LENGTH or total > MAX_MESSAGE_LENGTH:
        raise LengthError(f"event-stream message length {total} is impossible")
    if headers_length > MAX_HEADERS_LENGTH or headers_length > total - MIN_MESSAGE_LENGTH:
        raise LengthError(
            f"event-stream headers length {headers_length} does not fit a message of {total}"
        )
    if total - MIN_MESSAGE_LENGTH - headers_length > MAX_PAYLOAD_LENGTH:
        raise LengthError(f"event-stream payload of a {total}-byte message is too long")
    return total


def _decode(buf: bytearray, start: int, total: int) -> Message:
    view = memoryview(buf)
    try:
        end = start + total
        (crc,) = _U32.unpack_from(buf, end - 4)
        actual = zlib.crc32(view[start : end - 4])
        if actual != crc:
            raise ChecksumError(
                f"event-stream message CRC mismatch (expected {crc:#010x}, computed {actual:#010x})"
            )
        (headers_length,) = _U32.unpack_from(buf, start + 4)
        h_start = start + PRELUDE_LENGTH
        headers, types = _decode_headers(view, h_start, h_start + headers_length)
        payload = bytes(view[h_start + headers_length : end - 4])
    finally:
        view.release()
    return Message(headers, payload, types)


def _decode_headers(
    view: memoryview, pos: int, end: int
) -> tuple[dict[str, Any], dict[str, HeaderType]]:
    headers: dict[str, Any] = {}
    types: dict[str, HeaderType] = {}

    def need(n: int) -> None:
        if pos + n > end:
            raise HeaderError("event-stream header runs past the headers section")

    while pos < end:
        need(1)
        name_length = view[pos]
        pos += 1
        need(name_length + 1)
        name = bytes(view[pos : pos + name_length]).decode("utf-8", "replace")
        pos += name_length
        code = view[pos]
        pos += 1
        try:
            kind = HeaderType(code)
        except ValueError:
            raise HeaderError(f"event-stream header {name!r} has unknown type {code}") from None
        value: Any
        if kind is HeaderType.BOOL_TRUE:
            value = True
        elif kind is HeaderType.BOOL_FALSE:
            value = False
        elif kind in _INT_FORMATS:
            fmt = _INT_FORMATS[kind]
            need(fmt.size)
            (value,) = fmt.unpack_from(view, pos)
            pos += fmt.size
        elif kind in (HeaderType.BYTES, HeaderType.STRING):
            need(2)
            (length,) = _U16.unpack_from(view, pos)
            pos += 2
            need(length)
            raw = bytes(view[pos : pos + length])
            pos += length
            value = raw.decode("utf-8", "replace") if kind is HeaderType.STRING else raw
        elif kind is HeaderType.TIMESTAMP:
            need(8)
            (millis,) = _TIMESTAMP.unpack_from(view, pos)
            pos += 8
            value = _EPOCH + datetime.timedelta(milliseconds=millis)
        else:  # UUID
            need(16)
            value = uuid.UUID(bytes=bytes(view[pos : pos + 16]))
            pos += 16
        headers[name] = value
        types[name] = kind
    return headers, types


# ---------------------------------------------------------------------------- encoding


def _infer_type(value: Any) -> HeaderType:
    if value is True:
        return HeaderType.BOOL_TRUE
    if value is False:
        return HeaderType.BOOL_FALSE
    if isinstance(value, int):
        return HeaderType.INTEGER if -(2**31) <= value < 2**31 else HeaderType.LONG
    if isinstance(value, (bytes, bytearray)):
        return HeaderType.BYTES
    if isinstance(value, str):
        return HeaderType.STRING
    if isinstance(value, datetime.datetime):
        return HeaderType.TIMESTAMP
    if isinstance(value, uuid.UUID):
        return HeaderType.UUID
    raise TypeError(f"no event-stream header type for {type(value).__name__}")


def _encode_value(kind: HeaderType, value: Any) -> bytes:
    if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        return b""
    if kind in _INT_FORMATS:
        return _INT_FORMATS[kind].pack(int(value))
    if kind in (HeaderType.BYTES, HeaderType.STRING):
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if len(raw) > 0xFFFF:
            raise ValueError("an event-stream header value is at most 65535 bytes")
        return _U16.pack(len(raw)) + raw
    if kind is HeaderType.TIMESTAMP:
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            value = (value - _EPOCH) // datetime.timedelta(milliseconds=1)
        return _TIMESTAMP.pack(int(value))
    raw = value.bytes if isinstance(value, uuid.UUID) else bytes(value)
    if len(raw) != 16:
        raise ValueError("an event-stream UUID header is 16 bytes")
    return raw


def encode_headers(headers: dict[str, Any], types: dict[str, HeaderType] | None = None) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        kind = (types or {}).get(name)
        if kind is None:
            kind = _infer_type(value)
        elif kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
            kind = HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE
        raw_name = name.encode()
        if not 0 < len(raw_name) < 256:
            raise ValueError(f"event-stream header name {name!r} must be 1-255 bytes")
        out += bytes([len(raw_name)]) + raw_name + bytes([kind]) + _encode_value(kind, value)
    return bytes(out)


def encode_message(
    headers: dict[str, Any], payload: bytes | str, types: dict[str, HeaderType] | None = None
) -> bytes:
    """One event-stream message. Header types are inferred from the Python values (bool,
    int as integer or long, bytes, str, datetime as timestamp, UUID) unless `types` names
    one (to send a byte, a short, or a timestamp given as int milliseconds)."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    raw_headers = encode_headers(headers, types)
    total = MIN_MESSAGE_LENGTH + len(raw_headers) + len(body)
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += _U32.pack(zlib.crc32(prelude))
    message = prelude + raw_headers + body
    return message + _U32.pack(zlib.crc32(message))


def encode_event(event_type: str, payload: Any) -> bytes:
    """An AWS JSON event, as Bedrock sends them (`payload` is JSON-encoded)."""
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        json.dumps(payload, separators=(",", ":")),
    )


def encode_exception(exception_type: str, message: str, **extra: Any) -> bytes:
    """An AWS modeled exception (e.g. `throttlingException`) inside a stream."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message, **extra}, separators=(",", ":")),
    )
