"""A fast fake LLM provider for the benchmark: raw asyncio Protocols, canned answers.

    python bench/fake_upstream.py --port 18000 [--chunks 20] [--first-delay-ms 50]

It must never be the bottleneck, so it parses only what it needs (request line,
Content-Length, Connection) straight from the socket buffer and writes precomputed
bytes: no HTTP library, no JSON parsing. HTTP/1.1 keep-alive and pipelining work.

Endpoints live in `ENDPOINTS` (path -> handler). A handler gets the request body and
returns what to send: one whole response, or an `SSEPlan` the protocol sends as a
chunked stream on a timer. Adding a provider's wire format for a new bench variant
(e.g. Anthropic's `/v1/messages`) is adding one handler and one `ENDPOINTS` entry.

It also stands in for the services the gateway's log plugins send to (`SINKS`: Opik's
batch endpoints, Langfuse's and a collector's OTLP endpoint, an http-log receiver),
answering as they do on success. Any endpoint can be called under a tag, a first path
segment naming the bench variant (`/opik/v1/chat/completions`,
`/opik/api/v1/private/traces/batch`), so one fake serves every variant and still tells
them apart: it counts the requests per tag and endpoint, and keeps the sinks' bodies
(gzip or not) without reading them; `GET /_bench/received` counts the items in them
(Opik traces and spans, OTLP spans, http-log records) and answers with a JSON summary,
so a run can check that every call's record reached every sink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODEL = "gpt-4o-mini"


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How streamed answers are paced: the first event after `first_delay` seconds (so
    that time to first token is measurable), then one every `chunk_delay` seconds."""

    chunks: int = 20
    first_delay: float = 0.05
    chunk_delay: float = 0.002


@dataclass(frozen=True, slots=True)
class SSEPlan:
    """A streamed answer: response head, then each event as one HTTP chunk."""

    head: bytes
    events: list[bytes]


Handler = Callable[[bytes, StreamSettings], "bytes | SSEPlan"]


def _response(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _json_response(obj: object, status: str = "200 OK") -> bytes:
    return _response(status, "application/json", json.dumps(obj, separators=(",", ":")).encode())


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')

# ------------------------------------------------------------------ OpenAI chat

_USAGE = {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}
OPENAI_CHAT_BODY = _json_response(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    }
)


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _openai_chunk(delta: dict[str, str], finish: str | None = None, usage: object = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": choices,
    }
    if usage:
        chunk["usage"] = usage
    return _sse(chunk)


def openai_events(n: int, include_usage: bool) -> list[bytes]:
    """`n` content chunks (the first also carries the role, the last the finish reason),
    the usage chunk when asked for, then `[DONE]`."""
    events = []
    for i in range(n):
        delta = {"role": "assistant", "content": f"tok{i} "} if i == 0 else {"content": f"tok{i} "}
        events.append(_openai_chunk(delta, "stop" if i == n - 1 else None))
    if include_usage:
        events.append(_openai_chunk({}, usage={**_USAGE, "completion_tokens": n}))
    events.append(b"data: [DONE]\n\n")
    return events


def openai_chat(body: bytes, settings: StreamSettings) -> bytes | SSEPlan:
    """OpenAI `POST /v1/chat/completions`: a chat.completion, or its SSE stream."""
    if _STREAM_TRUE.search(body):
        return SSEPlan(SSE_HEAD, openai_events(settings.chunks, bool(_INCLUDE_USAGE.search(body))))
    return OPENAI_CHAT_BODY


ANTHROPIC_MESSAGE_BODY = _json_response(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [{"type": "text", "text": "Hello! How can I help you today?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 9},
    }
)


def _anthropic_event(name: str, data: object) -> bytes:
    return f"event: {name}\n".encode() + _sse(data)


def anthropic_events(n: int) -> list[bytes]:
    """Anthropic's Messages stream: message_start, one text block of `n` deltas,
    message_delta with the stop reason and usage, message_stop. The events before the
    first delta go out together with it (one plan entry), so that the stream's first
    token comes when OpenAI's does and TTFT compares the proxies, not the fakes."""
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 20, "output_tokens": 1},
    }
    events = [
        _anthropic_event("message_start", {"type": "message_start", "message": message}),
        _anthropic_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for i in range(n):
        delta = {"type": "text_delta", "text": f"tok{i} "}
        events.append(
            _anthropic_event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        )
    events[0:3] = [b"".join(events[0:3])]  # message_start, block start, first delta
    events += [
        _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n},
            },
        ),
        _anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    return events


def anthropic_messages(body: bytes, settings: StreamSettings) -> bytes | SSEPlan:
    """Anthropic `POST /v1/messages`: a message, or its SSE stream."""
    if _STREAM_TRUE.search(body):
        return SSEPlan(SSE_HEAD, anthropic_events(settings.chunks))
    return ANTHROPIC_MESSAGE_BODY


# ------------------------------------------------------------------ sinks


def _decoded(body: bytes) -> bytes:
    """A request body as sent before any gzip content-encoding (told by gzip's magic)."""
    return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body


def _opik_entries(key: str) -> Callable[[bytes], int]:
    """Opik's batches: `{"traces": [...]}` or `{"spans": [...]}`."""
    return lambda body: len(json.loads(_decoded(body))[key])


def otlp_spans(body: bytes) -> int:
    """The spans of an OTLP/HTTP ExportTraceServiceRequest, protobuf or JSON."""
    data = _decoded(body)
    if data.lstrip()[:1] == b"{":
        doc = json.loads(data)
        return sum(
            len(scope.get("spans") or ())
            for rs in doc.get("resourceSpans") or doc.get("resource_spans") or ()
            for scope in rs.get("scopeSpans") or rs.get("scope_spans") or ()
        )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    req.ParseFromString(data)
    return sum(len(scope.spans) for rs in req.resource_spans for scope in rs.scope_spans)


def http_log_records(body: bytes) -> int:
    """Kong's http-log: one record as a JSON object, or a batch as a JSON array."""
    doc = json.loads(_decoded(body))
    return len(doc) if isinstance(doc, list) else 1


@dataclass(frozen=True, slots=True)
class Sink:
    """An endpoint a log plugin sends to: how the service answers a success, and how
    many items (traces, spans, records) one request body holds."""

    name: str
    #: the log plugin that sends here
    plugin: str
    answer: bytes
    items: Callable[[bytes], int]


#: Opik answers a batch with 204 and no body
_NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
#: an OTLP/HTTP success: an empty ExportTraceServiceResponse (zero bytes of protobuf)
_OTLP_OK = _response("200 OK", "application/x-protobuf", b"")

#: path -> the sink that receives there (the paths each exporter builds from its config)
SINKS: dict[str, Sink] = {
    "/api/v1/private/traces/batch": Sink(
        "opik traces", "opik-log", _NO_CONTENT, _opik_entries("traces")
    ),
    "/api/v1/private/spans/batch": Sink(
        "opik spans", "opik-log", _NO_CONTENT, _opik_entries("spans")
    ),
    "/api/public/otel/v1/traces": Sink("langfuse spans", "ai-tracing", _OTLP_OK, otlp_spans),
    "/v1/traces": Sink("otlp spans", "opentelemetry", _OTLP_OK, otlp_spans),
    "/log": Sink(
        "http-log records", "http-log", _response("200 OK", "text/plain", b"ok"), http_log_records
    ),
}


def _sink_handler(sink: Sink) -> Handler:
    return lambda body, settings: sink.answer


#: path -> handler; each bench variant names the endpoint its gateway route calls.
ENDPOINTS: dict[str, Handler] = {
    "/v1/chat/completions": openai_chat,
    "/v1/messages": anthropic_messages,
    **{path: _sink_handler(sink) for path, sink in SINKS.items()},
}

#: GET this path for what the fake received (`Received.summary`)
RECEIVED_PATH = "/_bench/received"


def split_target(target: str) -> tuple[str, str] | None:
    """(tag, endpoint) of a request target: `/v1/messages` is ("", "/v1/messages"),
    `/opik/v1/messages` is ("opik", "/v1/messages"); None for an unknown endpoint."""
    path = target.split("?", 1)[0]
    if path in ENDPOINTS:
        return "", path
    _, tag, rest = path.split("/", 2) if path.count("/") >= 2 else ("", "", "")
    rest = "/" + rest
    return (tag, rest) if tag and rest in ENDPOINTS else None


class Received:
    """Requests per (tag, endpoint), and the sinks' bodies, counted only when asked (so
    the bench's load is not slowed by parsing them)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.items: Counter[tuple[str, str]] = Counter()
        self.unreadable: Counter[tuple[str, str]] = Counter()
        self.pending: dict[tuple[str, str], list[bytes]] = {}

    def add(self, tag: str, endpoint: str, body: bytes) -> None:
        key = (tag, endpoint)
        self.requests[key] += 1
        if endpoint in SINKS:
            self.pending.setdefault(key, []).append(body)

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{tag: {endpoint: {"requests", "items", and for sinks "sink", "unreadable"}}}
        (for a provider endpoint, items are its requests: one call each)."""
        for key, bodies in self.pending.items():
            count = SINKS[key[1]].items
            for body in bodies:
                try:
                    self.items[key] += count(body)
                except Exception:  # noqa: BLE001 - a body the sink would refuse: say so
                    self.unreadable[key] += 1
        self.pending = {}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (tag, endpoint), n in sorted(self.requests.items()):
            entry: dict[str, Any] = {"requests": n, "items": n}
            sink = SINKS.get(endpoint)
            if sink is not None:
                entry |= {
                    "sink": sink.name,
                    "items": self.items[(tag, endpoint)],
                    "unreadable": self.unreadable[(tag, endpoint)],
                }
            out.setdefault(tag, {})[endpoint] = entry
        return out


NOT_FOUND = _json_response({"error": {"message": "no such endpoint"}}, "404 Not Found")
BAD_REQUEST = _response("400 Bad Request", "text/plain", b"unsupported request\n")


class FakeProvider(asyncio.Protocol):
    """One client connection: parse requests from the buffer, answer them in order.

    While a stream is being sent, further (pipelined) requests wait in the buffer."""

    def __init__(self, settings: StreamSettings, received: Received) -> None:
        self.settings = settings
        self.received = received
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.TimerHandle | None = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.streaming is None:
            self.process()

    def process(self) -> None:
        """Answer every complete request in the buffer (stops at a stream)."""
        while self.transport is not None and self.streaming is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value) if value.strip().isdigit() else -1
                elif name == b"transfer-encoding":
                    self.reply(BAD_REQUEST, close=True)  # chunked uploads: not needed here
                    return
                elif name == b"connection" and b"close" in value:
                    self.close_after = True
            if length < 0:
                self.reply(BAD_REQUEST, close=True)
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            parts = head.split(b" ", 2)
            target = parts[1].decode("latin-1") if len(parts) == 3 else ""
            if parts[0] == b"get" and target == RECEIVED_PATH:
                self.reply(_json_response(self.received.summary()))
                continue
            found = split_target(target) if parts[0] == b"post" else None
            if found is None:
                self.reply(NOT_FOUND)
                continue
            self.received.add(*found, body)
            answer = ENDPOINTS[found[1]](body, self.settings)
            if isinstance(answer, SSEPlan):
                self.transport.write(answer.head)
                self.send_events(answer.events, 0)
            else:
                self.reply(answer)

    def reply(self, data: bytes, close: bool = False) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if close or self.close_after:
            self.transport.close()
            self.transport = None

    def send_events(self, events: list[bytes], i: int) -> None:
        """Schedule event `i`; each sends itself, then schedules the next."""
        delay = self.settings.first_delay if i == 0 else self.settings.chunk_delay
        loop = asyncio.get_running_loop()
        self.streaming = loop.call_later(delay, self._send_event, events, i)

    def _send_event(self, events: list[bytes], i: int) -> None:
        if self.transport is None:
            return
        ev = events[i]
        self.transport.write(b"%x\r\n%b\r\n" % (len(ev), ev))
        if i + 1 < len(events):
            self.send_events(events, i + 1)
            return
        self.streaming = None
        self.reply(b"0\r\n\r\n")
        self.process()


async def serve(port: int, settings: StreamSettings) -> None:
    loop = asyncio.get_running_loop()
    received = Received()
    server = await loop.create_server(lambda: FakeProvider(settings, received), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    ap.add_argument("--first-delay-ms", type=float, default=50.0)
    ap.add_argument("--chunk-delay-ms", type=float, default=2.0)
    args = ap.parse_args()
    settings = StreamSettings(args.chunks, args.first_delay_ms / 1000, args.chunk_delay_ms / 1000)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, settings))


if __name__ == "__main__":
    main()
