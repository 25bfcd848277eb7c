"""OpenAI's Responses API (`POST /v1/responses`): the one reader of its answers.

The gateway has no route type of its own for the Responses API: it reaches it through
`preserve` routes (passed through untouched, observed) and observe mode (forward proxy).
Both, and the mitmweb contentview, read its answers here:

- `speaks(spec)`: whether a passed-through call is a Responses API call (its path);
- `parse(body)`: a whole answer (a `response` object) -> `Reply` (the native object as
  `data`, its usage and model), with `finish_reason(data)` in OpenAI chat's terms;
- `ResponsesStream`: the observer of a streamed answer (`stream: true`): content deltas
  (the first token), the final `response` with its usage (`response.completed`,
  `.incomplete` or `.failed`) and `error` events; `assembled()` is the answer as a chat
  completion, like every other stream observer's, so that a call record reads the same
  whatever the API;
- `to_chat(response)`: a `response` object as an OpenAI chat completion (text, refusal,
  function calls as tool calls, reasoning summaries, finish reason, usage).

Usage: `input_tokens` (cached ones included, as `prompt_tokens`), `output_tokens`
(reasoning included), `input_tokens_details.cached_tokens`,
`output_tokens_details.reasoning_tokens`.

Pure code: no mitmproxy, no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from providers import sse
from providers.base import CallSpec, ProviderError, Reply, Usage, as_int

#: the path suffix of the Responses API's create operation
PATH = "/responses"


def speaks(spec: CallSpec) -> bool:
    """Whether a call passed through in OpenAI's format goes to the Responses API."""
    if spec.native:
        return False
    return spec.path.partition("?")[0].rstrip("/").endswith(PATH)


def usage(u: Any) -> Usage | None:
    """The Responses API's `usage` object as a normalized Usage (None when absent)."""
    if not isinstance(u, dict):
        return None
    details = u.get("input_tokens_details")
    out_details = u.get("output_tokens_details")
    return Usage(
        prompt_tokens=as_int(u.get("input_tokens")),
        completion_tokens=as_int(u.get("output_tokens")),
        cache_read_tokens=as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        reasoning_tokens=as_int(out_details.get("reasoning_tokens"))
        if isinstance(out_details, dict)
        else 0,
    )


def finish_reason(response: Any) -> str | None:
    """A `response` object's outcome as OpenAI chat's finish reason: `stop`,
    `tool_calls` (a function call in the output), `length` (max_output_tokens),
    `content_filter`, else the status itself (`failed`, `cancelled`, ...)."""
    if not isinstance(response, dict):
        return None
    status = response.get("status")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        if reason == "max_output_tokens":
            return "length"
        return reason if isinstance(reason, str) and reason else "incomplete"
    if status == "completed":
        output = response.get("output")
        if isinstance(output, list) and any(
            isinstance(o, dict) and o.get("type") == "function_call" for o in output
        ):
            return "tool_calls"
        return "stop"
    return status if isinstance(status, str) else None


def parse(body: bytes) -> Reply:
    """A whole answer passed through unchanged: the `response` object as `data` (empty
    when the body is not a JSON object), its usage and model."""
    try:
        data = orjson.loads(body) if body else None
    except ValueError:
        data = None
    data = data if isinstance(data, dict) else {}
    model = data.get("model")
    return Reply(body, data, usage(data.get("usage")), model if isinstance(model, str) else None)


def _reasoning_text(item: dict[str, Any]) -> str:
    summary = item.get("summary") or item.get("content") or []
    if isinstance(summary, str):
        return summary
    if not isinstance(summary, list):
        return ""
    return "\n".join(
        s["text"] for s in summary if isinstance(s, dict) and isinstance(s.get("text"), str)
    )


def to_chat(response: dict[str, Any], streamed_text: str = "") -> dict[str, Any]:
    """A `response` object as an OpenAI chat completion. `streamed_text` stands in for
    the output when the stream ended before its final `response` carried any."""
    message: dict[str, Any] = {"role": "assistant", "content": None}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    output = response.get("output")
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            content = item.get("content")
            for c in content if isinstance(content, list) else ():
                if not isinstance(c, dict):
                    continue
                if isinstance(c.get("text"), str):
                    texts.append(c["text"])
                elif isinstance(c.get("refusal"), str):
                    message["refusal"] = c["refusal"]
        elif kind == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
        elif kind == "reasoning":
            text = _reasoning_text(item)
            if text:
                reasoning.append(text)
    if not texts and streamed_text:
        texts = [streamed_text]
    message["content"] = "".join(texts) or None
    if reasoning:
        message["reasoning_content"] = "\n".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    out: dict[str, Any] = {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": response.get("created_at"),
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(response)}],
    }
    u = usage(response.get("usage"))
    if u is not None:
        out["usage"] = u.to_openai()
    return out


def error_of(response: Any) -> str | None:
    """The error a `response` object states (`failed`), as `code: message`."""
    err = response.get("error") if isinstance(response, dict) else None
    if not isinstance(err, dict):
        return None
    return f"{err.get('code')}: {err.get('message')}"


class ResponsesStream:
    """Watches a Responses API stream passed through unchanged (what `feed` returns is
    ignored: the client gets the upstream's bytes)."""

    _CONTENT = frozenset(
        {
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_text.delta",
            "response.refusal.delta",
        }
    )
    _FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def __init__(self, spec: CallSpec | None = None) -> None:
        self._dec = sse.SSEDecoder()
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self.finish_reason: str | None = None
        #: the latest `response` object the stream carried (the final one at its end)
        self.response: dict[str, Any] = {}
        self._text: list[str] = []

    def feed(self, data: bytes) -> list[bytes]:
        for ev in self._dec.feed(data):
            self._handle(ev)
        return []

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        for ev in self._dec.flush():
            self._handle(ev)
        if error is not None and self.error is None:
            self.error = error
        return []

    def _handle(self, ev: sse.SSEEvent) -> None:
        try:
            obj = orjson.loads(ev.data) if ev.data else None
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or ev.event
        if kind in self._CONTENT:
            self.started = True
            if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
                self._text.append(obj["delta"])
            return
        response = obj.get("response")
        if isinstance(response, dict):  # created, in_progress, completed, ...
            self.response = response
            found = usage(response.get("usage"))
            if found is not None:
                self.usage = found
            if kind in self._FINAL:
                self.finish_reason = finish_reason(response)
            if kind == "response.failed":
                err = response.get("error")
                msg = err.get("message") if isinstance(err, dict) else None
                self.error = ProviderError(502, msg or "the response failed", "api_error")
            return
        if kind == "error":
            msg = obj.get("message")
            inner = obj.get("error")
            if not isinstance(msg, str) and isinstance(inner, dict):
                msg = inner.get("message")
            self.error = ProviderError(502, msg or "upstream stream error", "api_error")

    def assembled(self) -> dict[str, Any]:
        """The answer as a chat completion (from the final `response`, or from the text
        deltas seen when the stream ended early)."""
        out = to_chat(self.response, "".join(self._text))
        # only a final event states the outcome (a stream cut short has none)
        out["choices"][0]["finish_reason"] = self.finish_reason
        return out
