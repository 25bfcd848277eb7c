"""The `mock://` upstream: `provider: mock` served from memory through httpx.

The gateway talks to it exactly as to a remote OpenAI-compatible server (same client,
same response parsing, same relay for streams), so the quickstart exercises the real
request path without a network or an account.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from providers import mock


class _Events(httpx.AsyncByteStream):
    def __init__(self, events: list[bytes], delay: float) -> None:
        self._events = events
        self._delay = delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(self._events):
            if i and self._delay:
                await asyncio.sleep(self._delay)
            yield event


class MockTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            error = {
                "error": {
                    "message": "mock: body is not a JSON object",
                    "type": "invalid_request_error",
                }
            }
            return httpx.Response(400, json=error)
        path = request.url.path
        if data.get("stream"):
            events = mock.stream(path, data)
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=_Events(events, mock.chunk_delay(data)),
            )
        return httpx.Response(200, json=mock.respond(path, data))
