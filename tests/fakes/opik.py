"""A fake Opik write API, as a handler for `FakeUpstream`.

It answers `POST {prefix}/v1/private/traces/batch` and `.../spans/batch` as Opik does:
`204 No Content` when the batch is accepted; `401`/`403` with Opik's `{"code",
"message"}` body when the API key or the workspace is wrong (when the fake is set up
like Opik Cloud, with a key); `400` for a body that is not JSON; `422` with
`{"errors": [...]}` for a batch that breaks the rules; `404` for any other path. It
inflates gzip bodies as the real server does.

Every entry is checked against the write schemas of Opik's SDK
(`../shared/specs/opik-write-schemas.json`: TraceWrite, SpanWrite) made strict:
unknown fields are errors here, where the real server would silently drop them. On
top of the schema: 1 to 1000 entries per batch, ids (and a span's trace id) UUIDv7
with a timestamp near now, and no entry ending before it starts.

Faults are scripted with `fail(...)`: the next requests get those replies (a 429 with
`RateLimit-Reset`, a 503, ...) before the fake goes back to accepting.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

from tests.fakes.upstream import Received, Reply

SPECS = Path(__file__).resolve().parents[3] / "shared" / "specs"
SCHEMAS_FILE = SPECS / "opik-write-schemas.json"

CHANNELS = {"traces": "TraceWrite", "spans": "SpanWrite"}
MAX_BATCH = 1000

#: how our exporter writes times: ISO 8601 UTC with milliseconds
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def strict_schema(name: str) -> dict[str, Any]:
    """Opik's write schema `name`, with unknown fields refused (top level and
    `error_info`): Opik itself ignores them silently, so a typo would go unnoticed.
    Enum fields take only their values."""
    schemas = json.loads(SCHEMAS_FILE.read_text())
    schema = copy.deepcopy(schemas[name])
    schema["additionalProperties"] = False
    for prop in schema["properties"].values():
        # the SDK's enums (span `type`, `source`) also allow anything, for forward
        # compatibility; Opik's server refuses a value it does not know
        options = prop.get("anyOf", [])
        if any("enum" in o for o in options):
            prop["anyOf"] = [o for o in options if o != {}]
    for sub in schema.get("$defs", {}).values():
        if sub.get("type") == "object":
            sub["additionalProperties"] = False
    return schema


_formats = jsonschema.FormatChecker()


@_formats.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


VALIDATORS = {
    channel: jsonschema.Draft202012Validator(strict_schema(name), format_checker=_formats)
    for channel, name in CHANNELS.items()
}


def _when(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def uuid7_time(value: Any) -> float | None:
    """The time (epoch seconds) in a UUIDv7, or None if `value` is not one."""
    try:
        u = uuid.UUID(str(value))
    except ValueError:
        return None
    if u.version != 7 or str(u) != str(value).lower():
        return None
    return (u.int >> 80) / 1000


def entry_problems(channel: str, entry: Any, *, max_age: float | None = None) -> list[str]:
    """Everything wrong with one entry of a `channel` batch ([] if nothing)."""
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '<entry>'}: {e.message}"
        for e in VALIDATORS[channel].iter_errors(entry)
    ]
    if problems or not isinstance(entry, dict):
        return problems
    keys = ["id"] + (["trace_id"] if channel == "spans" else [])
    for key in keys:
        at = uuid7_time(entry.get(key))
        if at is None:
            problems.append(f"{key}: {entry.get(key)!r} is not a UUIDv7")
        elif max_age is not None and abs(time.time() - at) > max_age:
            problems.append(f"{key}: the UUIDv7's time is not near now")
    if entry.get("end_time") and _when(entry["end_time"]) < _when(entry["start_time"]):
        problems.append("end_time is before start_time")
    return problems


def batch_problems(channel: str, body: Any, *, max_age: float | None = None) -> list[str]:
    """Everything wrong with a batch body `{channel: [...]}` ([] if nothing)."""
    if not isinstance(body, dict) or set(body) != {channel}:
        return [f"the body must be an object with exactly the key {channel!r}"]
    entries = body[channel]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_BATCH:
        return [f"{channel} must hold 1 to {MAX_BATCH} entries"]
    out = []
    for i, entry in enumerate(entries):
        out += [f"{channel}[{i}].{p}" for p in entry_problems(channel, entry, max_age=max_age)]
    return out


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply.json({"code": status, "message": message}, status, headers)


class FakeOpik:
    """Opik's batch endpoints. `api_key`/`workspace` set: Opik Cloud (both required);
    unset: a self-hosted Opik without authentication. `prefix` is where the API lives
    on the fake's server (`/opik/api` like Comet's cloud, `/api` like a local Opik)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        workspace: str | None = None,
        prefix: str = "/api",
        max_age: float = 24 * 3600,
    ) -> None:
        self.api_key = api_key
        self.workspace = workspace
        self.prefix = prefix.rstrip("/")
        self.max_age = max_age
        self.received: list[Received] = []
        self.traces: list[dict[str, Any]] = []
        self.spans: list[dict[str, Any]] = []
        #: (status, problems) of every request refused for its content or credentials
        self.refused: list[tuple[int, list[str]]] = []
        self._faults: deque[Reply] = deque()
        self._lock = threading.Lock()

    def fail(self, *replies: Reply) -> None:
        """Answer the next requests with these replies (in order), then accept again."""
        self._faults.extend(replies)

    # ---------------------------------------------------------------- serving

    def __call__(self, req: Received) -> Reply:
        with self._lock:
            self.received.append(req)
            if self._faults:
                return self._faults.popleft()
            return self._handle(req)

    def _handle(self, req: Received) -> Reply:
        channel = None
        for name in CHANNELS:
            if req.path == f"{self.prefix}/v1/private/{name}/batch":
                channel = name
        if channel is None:
            return _error(404, "HTTP 404 Not Found")
        if req.method != "POST":
            return _error(405, "HTTP 405 Method Not Allowed")
        if self.api_key is not None:
            if req.headers.get("authorization") != self.api_key:
                self.refused.append((401, ["bad Authorization"]))
                return _error(401, "User not allowed to access workspace")
            if req.headers.get("comet-workspace") != self.workspace:
                self.refused.append((403, ["bad Comet-Workspace"]))
                return _error(403, "User has no permission to the workspace")
        if not req.headers.get("content-type", "").startswith("application/json"):
            return _error(415, "HTTP 415 Unsupported Media Type")
        raw = req.body
        if req.headers.get("content-encoding", "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except OSError:
                return _error(400, "Unable to process the request body")
        try:
            body = json.loads(raw)
        except ValueError:
            self.refused.append((400, ["not JSON"]))
            return _error(400, "Unable to process JSON")
        problems = batch_problems(channel, body, max_age=self.max_age)
        if problems:
            self.refused.append((422, problems))
            return Reply.json({"errors": problems}, 422)
        (self.traces if channel == "traces" else self.spans).extend(body[channel])
        return Reply(204, {}, b"")

    # ---------------------------------------------------------------- reading

    def all_bodies(self) -> list[bytes]:
        """Every body received, inflated."""
        out = []
        for r in self.received:
            raw = r.body
            if r.headers.get("content-encoding", "").lower() == "gzip":
                raw = gzip.decompress(raw)
            out.append(raw)
        return out

    def wait(self, cond: Any, timeout: float = 10.0, what: str = "entries") -> None:
        """Wait until `cond()` is true (polling); fail naming `what` otherwise."""
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                raise AssertionError(
                    f"the fake Opik did not get the {what} in {timeout}s "
                    f"(traces {len(self.traces)}, spans {len(self.spans)}, "
                    f"refused {self.refused})"
                )
            time.sleep(0.02)

    def trace_where(self, **metadata: Any) -> dict[str, Any] | None:
        for t in reversed(self.traces):
            meta = t.get("metadata") or {}
            if all(meta.get(k) == v for k, v in metadata.items()):
                return t
        return None

    def span_of(self, trace_id: str) -> dict[str, Any] | None:
        for s in reversed(self.spans):
            if s.get("trace_id") == trace_id:
                return s
        return None
