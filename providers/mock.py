"""`provider: mock`, an embedded OpenAI-compatible model that needs no account.

It answers with `model.options.mock_response`, or echoes the last user message, and
streams word by word. The gateway serves it from memory (the `mock://` upstream), so a
fresh install can run every part of the request path (routing, streaming, records)
without a network. The functions here are pure: they compute the upstream's answer;
the gateway's mock transport only adds the optional delay between chunks.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from providers import sse
from providers.base import (
    CallSpec,
    RouteType,
    UpstreamRequest,
    estimate_tokens,
    text_of_messages,
)
from providers.openai import OpenAI

# Settings travel to the mock upstream in this body field, as a real model's would.
SETTINGS_FIELD = "llmitm_mock"


class Mock(OpenAI):
    name = "mock"
    default_base_url = "mock://llmitm"

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        req = super().build_request(spec)
        options = spec.options
        if spec.route_type is not RouteType.PRESERVE and (
            options.mock_response is not None or options.mock_chunk_delay_ms
        ):
            body = json.loads(req.body)
            body[SETTINGS_FIELD] = {
                "response": options.mock_response,
                "chunk_delay_ms": options.mock_chunk_delay_ms,
            }
            req.body = json.dumps(body).encode()
        return req


PROVIDER = Mock()


def _answer(request: dict[str, Any], route_type: RouteType) -> tuple[str, int]:
    settings = request.get(SETTINGS_FIELD) or {}
    if route_type is RouteType.COMPLETIONS:
        prompt = request.get("prompt")
        prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        fixed = settings.get("response")
        return (fixed if fixed is not None else prompt_text), estimate_tokens(prompt_text)
    messages = request.get("messages") or []
    last_user = ""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            last_user = text_of_messages([m])
            break
    fixed = settings.get("response")
    return (fixed if fixed is not None else last_user), estimate_tokens(text_of_messages(messages))


def _embedding(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dims:
        digest += hashlib.sha256(digest).digest()
    return [round((b - 127.5) / 127.5, 6) for b in digest[:dims]]


def route_type_of(path: str) -> RouteType:
    if path.endswith("/embeddings"):
        return RouteType.EMBEDDINGS
    if path.endswith("/chat/completions"):
        return RouteType.CHAT
    return RouteType.COMPLETIONS


def respond(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """The whole answer the mock upstream gives to `request` at `path`."""
    route_type = route_type_of(path)
    model = request.get("model") or "mock"
    created = int(time.time())
    if route_type is RouteType.EMBEDDINGS:
        inputs = request.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        dims = request.get("dimensions") or 8
        texts = [i if isinstance(i, str) else json.dumps(i) for i in items]
        tokens = sum(estimate_tokens(t) for t in texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": n, "embedding": _embedding(t, dims)}
                for n, t in enumerate(texts)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    text, prompt_tokens = _answer(request, route_type)
    completion_tokens = estimate_tokens(text)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if route_type is RouteType.COMPLETIONS:
        return {
            "id": f"cmpl-mock-{created}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": usage,
        }
    return {
        "id": f"chatcmpl-mock-{created}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def stream(path: str, request: dict[str, Any]) -> list[bytes]:
    """The SSE events the mock upstream streams for `request`, one per word."""
    whole = respond(path, request)
    route_type = route_type_of(path)
    base = {k: whole[k] for k in ("id", "created", "model")}
    completions = route_type is RouteType.COMPLETIONS
    base["object"] = "text_completion" if completions else "chat.completion.chunk"
    text = whole["choices"][0]["text" if completions else "message"]
    if not completions:
        text = text["content"]
    events: list[bytes] = []
    if not completions:
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        events.append(sse.encode({**base, "choices": [first]}))
    for piece in re.findall(r"\S+\s*|\s+", text) or [""]:
        choice: dict[str, Any] = (
            {"index": 0, "text": piece, "finish_reason": None}
            if completions
            else {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        )
        events.append(sse.encode({**base, "choices": [choice]}))
    last = (
        {"index": 0, "text": "", "finish_reason": "stop"}
        if completions
        else {"index": 0, "delta": {}, "finish_reason": "stop"}
    )
    events.append(sse.encode({**base, "choices": [last]}))
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append(sse.encode({**base, "choices": [], "usage": whole["usage"]}))
    events.append(sse.DONE)
    return events


def chunk_delay(request: dict[str, Any]) -> float:
    """Seconds between streamed chunks, from the route's `mock_chunk_delay_ms`."""
    settings = request.get(SETTINGS_FIELD) or {}
    return (settings.get("chunk_delay_ms") or 0) / 1000
