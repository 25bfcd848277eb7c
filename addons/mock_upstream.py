"""The `mock://` upstream: `provider: mock` answered from memory.

The gateway treats it exactly like a remote OpenAI-compatible server (same response
parsing, same relay for streams), so the quickstart exercises the real request path
without a network or an account; only the socket is missing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from providers import mock
from providers.base import UpstreamRequest

JSON = [("content-type", "application/json")]


async def _paced(events: list[bytes], delay: float) -> AsyncIterator[bytes]:
    for i, event in enumerate(events):
        if i and delay:
            await asyncio.sleep(delay)
        yield event


def respond(
    req: UpstreamRequest,
) -> tuple[int, list[tuple[str, str]], bytes, AsyncIterator[bytes] | None]:
    """(status, headers, body, chunks) of the mock model's answer to `req`."""
    try:
        data = json.loads(req.body) if req.body else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        error = {
            "error": {"message": "mock: body is not a JSON object", "type": "invalid_request_error"}
        }
        return 400, JSON, json.dumps(error).encode(), None
    path = urlsplit(req.url).path
    if data.get("stream"):
        events = mock.stream(path, data)
        return (
            200,
            [("content-type", "text/event-stream")],
            b"",
            _paced(events, mock.chunk_delay(data)),
        )
    return 200, JSON, json.dumps(mock.respond(path, data)).encode(), None
