"""A fake log server for Kong's http-log, as a handler for `FakeUpstream`.

It takes `POST` (or the configured method) on its path and answers `200` with a short
JSON body, as a typical log intake does; `400` for a body that is not JSON or not call
records; `415` for another content type; `401` when it was set up with a token and the
request lacks it; `404` for any other path.

Each record received is checked against the call record's shape (`CallRecord.to_dict()`,
Kong's log serializer layout) written down below as a JSON Schema where every object
with known fields refuses unknown ones. The body is one record (a queue with
`max_batch_size: 1`) or an array of them; the fake says which it expects.

Faults are scripted with `fail(...)`: the next requests get those replies (a 429 with
`Retry-After`, a 503, ...) before the fake goes back to accepting.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any, Literal

import jsonschema

from tests.fakes.upstream import Received, Reply

_STR_OR_NULL = {"type": ["string", "null"]}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


_NAME = {"anyOf": [{"type": "null"}, _obj({"name": {"type": "string"}})]}

USAGE = _obj(
    {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
        "cache_read_tokens": {"type": "integer", "minimum": 0},
        "cache_write_tokens": {"type": "integer", "minimum": 0},
        "reasoning_tokens": {"type": "integer", "minimum": 0},
        "cost": _NUM_OR_NULL,
        "time_to_first_token": _NUM_OR_NULL,
        "time_per_token": _NUM_OR_NULL,
        "source": {"enum": ["reported", "estimated", "none"]},
    }
)

PROXY = _obj(
    {
        "meta": _obj(
            {
                "provider_name": {"type": "string"},
                "request_model": _STR_OR_NULL,
                "response_model": _STR_OR_NULL,
                "route_type": {"type": "string"},
                "request_mode": {"enum": ["stream", "oneshot"]},
                "llm_latency": _NUM_OR_NULL,
                "upstream_url": _STR_OR_NULL,
                "finish_reason": _STR_OR_NULL,
                "response_id": _STR_OR_NULL,
                "request_parameters": {"type": "object"},
            }
        ),
        "usage": USAGE,
        "payload": _obj({"request": {}, "response": {}}),
    },
    required=["meta"],
)

#: the call record as http-log sends it (exporters/record.py)
RECORD_SCHEMA: dict[str, Any] = _obj(
    {
        "id": {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-"},
        "started_at": {"type": "integer", "minimum": 0},
        "ended_at": {"type": "integer", "minimum": 0},
        "status": {"enum": ["ok", "error", "client_aborted"]},
        "client_ip": {"type": "string"},
        "route": _NAME,
        "service": _NAME,
        # Kong's consumer entity: the fields it has of id, username and custom_id
        "consumer": {
            "anyOf": [
                {"type": "null"},
                {
                    **_obj({k: {"type": "string"} for k in ("id", "username", "custom_id")}, []),
                    "minProperties": 1,
                },
            ]
        },
        "request": _obj(
            {
                "method": {"type": "string"},
                "uri": {"type": "string"},
                "size": {"type": "integer", "minimum": 0},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        ),
        "response": _obj({"status": _INT_OR_NULL, "size": _INT_OR_NULL}),
        "upstream": {
            "anyOf": [
                {"type": "null"},
                _obj({"url": {"type": "string"}, "status": _INT_OR_NULL}),
            ]
        },
        "latencies": {
            "type": "object",
            "properties": {
                k: _NUM_OR_NULL
                for k in ("request", "proxy", "gateway", "llm", "time_to_first_token")
            },
            "required": ["request", "proxy", "gateway"],
            "additionalProperties": False,
        },
        "ai": {"anyOf": [{"type": "null"}, _obj({"proxy": PROXY})]},
        "context": {
            "type": "object",
            "properties": {
                **{
                    k: {"type": "string"}
                    for k in (
                        "user_id",
                        "session_id",
                        "chat_id",
                        "message_id",
                        "organization_id",
                        "project_id",
                    )
                },
                "metadata": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "error": {
            "anyOf": [
                {"type": "null"},
                _obj(
                    {
                        "status": _INT_OR_NULL,
                        "type": _STR_OR_NULL,
                        "code": _STR_OR_NULL,
                        "message": {"type": "string"},
                        "source": _STR_OR_NULL,
                    }
                ),
            ]
        },
    }
)

RECORD_VALIDATOR = jsonschema.Draft202012Validator(RECORD_SCHEMA)


def record_problems(record: Any) -> list[str]:
    """What is wrong with one record (empty: nothing)."""
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '<record>'}: {e.message}"
        for e in RECORD_VALIDATOR.iter_errors(record)
    ]
    if not problems and record["ended_at"] < record["started_at"]:
        problems.append("ended_at before started_at")
    return problems


class FakeLogServer:
    """A `FakeUpstream` handler: `upstream.reply(server)`.

    `shape` is what a body must be: "object" (max_batch_size 1), "array", or "any".
    """

    def __init__(
        self,
        path: str = "/logs",
        *,
        method: str = "POST",
        shape: Literal["object", "array", "any"] = "any",
        token: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.path = path
        self.method = method
        self.shape = shape
        self.token = token  # the Authorization header it wants, if any
        self.content_type = content_type
        self.received: list[Received] = []  # every request, as it came
        self.bodies: list[Any] = []  # accepted bodies, decoded
        self.errors: list[str] = []
        self._faults: deque[Reply] = deque()
        self._lock = threading.Lock()

    def fail(self, *replies: Reply) -> None:
        with self._lock:
            self._faults.extend(replies)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every accepted record, in arrival order."""
        with self._lock:
            out: list[dict[str, Any]] = []
            for body in self.bodies:
                out.extend(body if isinstance(body, list) else [body])
            return out

    def __call__(self, req: Received) -> Reply:
        with self._lock:
            self.received.append(req)
            if self._faults:
                return self._faults.popleft()
        if req.path.partition("?")[0] != self.path or req.method != self.method:
            return Reply.json({"error": f"no route for {req.method} {req.path}"}, 404)
        if self.token is not None and req.headers.get("authorization") != self.token:
            return Reply.json({"error": "unauthorized"}, 401)
        ctype = req.headers.get("content-type", "")
        if ctype != self.content_type:
            self._error(f"content-type {ctype!r}, expected {self.content_type!r}")
            return Reply.json({"error": "unsupported content type"}, 415)
        try:
            body = json.loads(req.body)
        except ValueError:
            self._error("the body is not JSON")
            return Reply.json({"error": "invalid JSON"}, 400)
        problems: list[str] = []
        if self.shape == "object" and not isinstance(body, dict):
            problems.append("expected one record (an object)")
        elif self.shape == "array" and not isinstance(body, list):
            problems.append("expected an array of records")
        entries = body if isinstance(body, list) else [body]
        if isinstance(body, list) and not body:
            problems.append("an empty array")
        for i, entry in enumerate(entries):
            problems.extend(f"[{i}] {p}" for p in record_problems(entry))
        if problems:
            for p in problems:
                self._error(p)
            return Reply.json({"error": "; ".join(problems)}, 400)
        with self._lock:
            self.bodies.append(body)
        return Reply.json({"ok": True, "accepted": len(entries)})

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)
