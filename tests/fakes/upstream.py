"""A scriptable HTTP/1.1 upstream for end-to-end tests, on 127.0.0.1.

Each test says what the next requests get (`Reply`): a status and body, or a body sent
as timed chunks (split wherever the test wants, to exercise chunk boundaries), or a
connection cut mid-body, or no answer at all. Every request received is recorded with
its headers and body so tests can check what the gateway sent upstream.

It runs its own asyncio loop in a background thread so that synchronous tests (and the
official SDKs) can use it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    body: bytes = b""
    # Sent chunked instead of `body`: bytes are written as they are, floats are pauses (s).
    chunks: list[bytes | float] | None = None
    # Close the connection abruptly after this many chunks (mid-body).
    cut_after: int | None = None
    # Never answer (for timeouts): wait until the client closes the connection, which
    # counts as a disconnect.
    hang: bool = False

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(
            status,
            {"content-type": "application/json", **(headers or {})},
            json.dumps(data).encode(),
        )

    @classmethod
    def sse(cls, events: list[bytes | float], **kw: Any) -> Reply:
        return cls(200, {"content-type": "text/event-stream"}, chunks=events, **kw)


Handler = Callable[[Received], Reply]


class FakeUpstream:
    def __init__(self) -> None:
        self.received: list[Received] = []
        # connections the client closed while we were sending, or while a `hang` reply
        # kept it waiting
        self.disconnects = 0
        self.handler: Handler = lambda r: Reply.json({"error": "no handler"}, 500)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # -------------------------------------------------------------------- control

    def start(self) -> FakeUpstream:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.received.clear()
        self.disconnects = 0
        self.handler = lambda r: Reply.json({"error": "no handler"}, 500)

    def reply(self, reply: Reply | Handler) -> None:
        """Answer every following request with `reply` (or by calling it)."""
        self.handler = (
            reply if callable(reply) and not isinstance(reply, Reply) else (lambda r: reply)
        )

    def last(self) -> Received:
        assert self.received, "the upstream received no request"
        return self.received[-1]

    # --------------------------------------------------------------------- server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await _read_chunked(reader)
                req = Received(method, path, headers, body)
                self.received.append(req)
                reply = self.handler(req)
                if reply.hang:
                    while await reader.read(65536):
                        pass
                    self.disconnects += 1
                    return
                if not await self._write(reply, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _write(self, reply: Reply, writer: asyncio.StreamWriter) -> bool:
        # statuses outside the IANA list exist (Anthropic's 529 overloaded)
        phrase = (
            HTTPStatus(reply.status).phrase
            if reply.status in HTTPStatus._value2member_map_
            else "Unknown"
        )
        head = [f"HTTP/1.1 {reply.status} {phrase}"] + [
            f"{k}: {v}" for k, v in reply.headers.items()
        ]
        if reply.chunks is None:
            head.append(f"content-length: {len(reply.body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + reply.body)
            await writer.drain()
            return True
        head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        try:
            for item in reply.chunks:
                if isinstance(item, float):
                    await asyncio.sleep(item)
                    continue
                if reply.cut_after is not None and sent >= reply.cut_after:
                    writer.transport.abort()
                    return False
                writer.write(b"%x\r\n%b\r\n" % (len(item), item))
                await writer.drain()
                sent += 1
            if reply.cut_after is not None:
                writer.transport.abort()
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.disconnects += 1
            return False
        return True


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return out
        out += await reader.readexactly(size)
        await reader.readline()


# ------------------------------------------------------------- OpenAI-shaped data


def chat_completion(
    content: str = "Hello!", model: str = "gpt-4o-mini", **usage: int
) -> dict[str, Any]:
    u = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14, **usage}
    u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": u,
    }


def sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def chunk(
    delta: dict[str, Any], finish: str | None = None, model: str = "gpt-4o-mini"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def chat_stream(
    words: list[str],
    usage: tuple[int, int] = (9, 4),
    pause: float = 0.0,
    model: str = "gpt-4o-mini",
) -> list[bytes | float]:
    """An OpenAI chat stream: role chunk, one chunk per word, finish, usage, [DONE]."""
    events: list[bytes | float] = [sse(chunk({"role": "assistant", "content": ""}, model=model))]
    for w in words:
        if pause:
            events.append(pause)
        events.append(sse(chunk({"content": w}, model=model)))
    events.append(sse(chunk({}, "stop", model=model)))
    events.append(
        sse(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": sum(usage),
                },
            }
        )
    )
    events.append(b"data: [DONE]\n\n")
    return events


def rechunk(events: list[bytes | float], size: int) -> list[bytes | float]:
    """The same stream re-cut into pieces of `size` bytes (events split mid-way)."""
    out: list[bytes | float] = []
    buf = b""
    for e in events:
        if isinstance(e, float):
            if buf:
                out.append(buf)
                buf = b""
            out.append(e)
            continue
        buf += e
        while len(buf) >= size:
            out.append(buf[:size])
            buf = buf[size:]
    if buf:
        out.append(buf)
    return out
