"""A fake OTLP/HTTP trace collector, as a handler for `FakeUpstream`.

It answers `POST {path}` (default `/v1/traces`) as an OpenTelemetry Collector does:
`200` with an empty `ExportTraceServiceResponse` (protobuf) when the export is
accepted, or one with `partial_success` when told to reject spans; `415` for a body
that is not `application/x-protobuf`; `400` with a `google.rpc.Status` (protobuf) for
a body that does not decode or breaks the rules below; `404` for any other path. It
inflates gzip bodies as the collector does.

Every export is decoded with `opentelemetry-proto` and checked against the GenAI
semantic conventions as the official instrumentation emits them
(`../shared/captures/otel-genai-semconv-otlp-requests.json`): each attribute key must
be one the capture has (with the same value type) or one of the documented extras
below (unknown keys are errors), the required ones must be there, ids must be valid,
the span must be a CLIENT span named `"{operation} {model}"`, a failed call must have
status ERROR and `error.type`, and message content must follow the conventions'
message schema.

Faults are scripted with `fail(...)`: the next requests get those replies (a 429 with
`Retry-After`, a 503, ...) before the fake goes back to accepting.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

import jsonschema
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fakes.upstream import Received, Reply

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "captures"
CAPTURE_FILE = CAPTURES / "otel-genai-semconv-otlp-requests.json"

PROTOBUF = "application/x-protobuf"


def json_type(value: Any) -> str:
    """The OTLP value type a captured (JSON) attribute value stands for."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        inner = {json_type(v) for v in value}
        assert len(inner) <= 1, f"mixed array {value!r}"
        return f"array<{inner.pop() if inner else 'string'}>"
    raise TypeError(f"no OTLP type for {value!r}")


def _capture() -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
    """(span attribute types, resource attribute types, the captured spans)."""
    span_types: dict[str, str] = {}
    resource_types: dict[str, str] = {}
    spans = []
    for export in json.loads(CAPTURE_FILE.read_text()):
        for key, value in export["resource"].items():
            resource_types[key] = json_type(value)
        for span in export["spans"]:
            spans.append(span)
            for key, value in span["attributes"].items():
                kind = json_type(value)
                assert span_types.setdefault(key, kind) == kind, f"capture disagrees on {key}"
    return span_types, resource_types, spans


CAPTURED_TYPES, CAPTURED_RESOURCE_TYPES, CAPTURED_SPANS = _capture()

#: attributes llmitm adds that the capture does not show: GenAI conventions
#: (content, cache and reasoning tokens, errors, the pre-1.37 `gen_ai.system`,
#: embeddings), HTTP, and llmitm's own `llmitm.*` (record id, route, cost, context)
EXTRA_TYPES: dict[str, str] = {
    "gen_ai.system": "string",
    "gen_ai.system_instructions": "string",
    "gen_ai.conversation.id": "string",
    "gen_ai.output.type": "string",
    "gen_ai.request.top_p": "double",
    "gen_ai.request.top_k": "double",
    "gen_ai.request.frequency_penalty": "double",
    "gen_ai.request.presence_penalty": "double",
    "gen_ai.request.seed": "int",
    "gen_ai.request.stop_sequences": "array<string>",
    "gen_ai.request.choice.count": "int",
    "gen_ai.request.encoding_formats": "array<string>",
    "gen_ai.embeddings.dimension.count": "int",
    "gen_ai.usage.cache_read.input_tokens": "int",
    "gen_ai.usage.cache_creation.input_tokens": "int",
    "gen_ai.usage.reasoning.output_tokens": "int",
    "gen_ai.response.time_to_first_chunk": "double",
    "error.type": "string",
    "http.response.status_code": "int",
    "llmitm.record_id": "string",
    "llmitm.request_mode": "string",
    "llmitm.route": "string",
    "llmitm.service": "string",
    "llmitm.consumer": "string",
    "llmitm.usage.source": "string",
    "llmitm.cost": "double",
    "llmitm.latency.request_ms": "double",
    "llmitm.latency.llm_ms": "double",
    "llmitm.chat_id": "string",
    "llmitm.message_id": "string",
    "llmitm.organization_id": "string",
    "llmitm.project_id": "string",
}
#: keys under these prefixes are free-form (the client's body `metadata`)
EXTRA_PREFIXES = {"llmitm.metadata.": "string"}

ALLOWED_TYPES = {**CAPTURED_TYPES, **EXTRA_TYPES}
REQUIRED = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system")
OPERATIONS = {"chat", "text_completion", "embeddings", "generate_content"}
JSON_ATTRIBUTES = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions")


# The GenAI conventions' message shapes (gen-ai-input-messages.json,
# gen-ai-output-messages.json, gen-ai-system-instructions.json), written down here with
# the parts llmitm emits and nothing else allowed.
_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "text"}}},
            "then": {
                "required": ["content"],
                "properties": {"type": {}, "content": {"type": "string"}},
                "additionalProperties": False,
            },
        },
        {
            "if": {"properties": {"type": {"const": "reasoning"}}},
            "then": {
                "required": ["content"],
                "properties": {"type": {}, "content": {"type": "string"}},
                "additionalProperties": False,
            },
        },
        {
            "if": {"properties": {"type": {"const": "tool_call"}}},
            "then": {
                "required": ["name"],
                "properties": {
                    "type": {},
                    "id": {"type": ["string", "null"]},
                    "name": {"type": "string"},
                    "arguments": {},
                },
                "additionalProperties": False,
            },
        },
        {
            "if": {"properties": {"type": {"const": "tool_call_response"}}},
            "then": {
                "required": ["response"],
                "properties": {"type": {}, "id": {"type": ["string", "null"]}, "response": {}},
                "additionalProperties": False,
            },
        },
        {
            "if": {"properties": {"type": {"const": "uri"}}},
            "then": {
                "required": ["modality", "uri"],
                "properties": {
                    "type": {},
                    "modality": {"enum": ["image", "video", "audio"]},
                    "uri": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
    ],
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "parts"],
    "properties": {"role": {"type": "string"}, "parts": {"type": "array", "items": _PART}},
    "additionalProperties": False,
}
_OUTPUT_MESSAGE = {
    "type": "object",
    "required": ["role", "parts", "finish_reason"],
    "properties": {
        "role": {"type": "string"},
        "parts": {"type": "array", "items": _PART},
        "finish_reason": {"type": "string"},
    },
    "additionalProperties": False,
}
MESSAGE_VALIDATORS = {
    "gen_ai.input.messages": jsonschema.Draft202012Validator({"type": "array", "items": _MESSAGE}),
    "gen_ai.output.messages": jsonschema.Draft202012Validator(
        {"type": "array", "items": _OUTPUT_MESSAGE}
    ),
    "gen_ai.system_instructions": jsonschema.Draft202012Validator(
        {"type": "array", "items": _PART}
    ),
}


# ------------------------------------------------------------------- decoding


def value_of(any_value: Any) -> tuple[str, Any]:
    """(type, Python value) of an OTLP AnyValue."""
    which = any_value.WhichOneof("value")
    if which == "string_value":
        return "string", any_value.string_value
    if which == "int_value":
        return "int", any_value.int_value
    if which == "double_value":
        return "double", any_value.double_value
    if which == "bool_value":
        return "bool", any_value.bool_value
    if which == "array_value":
        values = [value_of(v) for v in any_value.array_value.values]
        inner = {t for t, _ in values}
        kind = inner.pop() if len(inner) == 1 else ("string" if not inner else "mixed")
        return f"array<{kind}>", [v for _, v in values]
    if which == "kvlist_value":
        return "kvlist", {kv.key: value_of(kv.value)[1] for kv in any_value.kvlist_value.values}
    if which == "bytes_value":
        return "bytes", any_value.bytes_value
    return "empty", None


def typed_attributes(key_values: Any) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for kv in key_values:
        if kv.key in out:
            raise ValueError(f"attribute {kv.key!r} appears twice")
        out[kv.key] = value_of(kv.value)
    return out


def attributes(key_values: Any) -> dict[str, Any]:
    """The attributes as plain values."""
    return {k: v for k, (_, v) in typed_attributes(key_values).items()}


def decode(body: bytes) -> ExportTraceServiceRequest:
    export = ExportTraceServiceRequest()
    export.ParseFromString(body)
    return export


# ------------------------------------------------------------------ validation


def _expected_type(key: str) -> str | None:
    if key in ALLOWED_TYPES:
        return ALLOWED_TYPES[key]
    for prefix, kind in EXTRA_PREFIXES.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return kind
    return None


def span_problems(span: Any) -> list[str]:
    """What is wrong with one span (empty: nothing)."""
    problems: list[str] = []
    where = f"span {span.name!r}"
    if len(span.trace_id) != 16 or not any(span.trace_id):
        problems.append(f"{where}: trace_id must be 16 bytes, not all zero")
    if len(span.span_id) != 8 or not any(span.span_id):
        problems.append(f"{where}: span_id must be 8 bytes, not all zero")
    if span.parent_span_id and (len(span.parent_span_id) != 8 or not any(span.parent_span_id)):
        problems.append(f"{where}: parent_span_id must be 8 bytes, not all zero")
    if span.kind != trace_pb2.Span.SPAN_KIND_CLIENT:
        problems.append(f"{where}: kind must be CLIENT, not {span.kind}")
    if not span.start_time_unix_nano or span.end_time_unix_nano < span.start_time_unix_nano:
        problems.append(
            f"{where}: bad times {span.start_time_unix_nano}..{span.end_time_unix_nano}"
        )
    try:
        attrs = typed_attributes(span.attributes)
    except ValueError as e:
        return [*problems, f"{where}: {e}"]
    for key, (kind, value) in attrs.items():
        expected = _expected_type(key)
        if expected is None:
            problems.append(f"{where}: unknown attribute {key!r}")
        elif kind != expected:
            problems.append(f"{where}: {key} is {kind}, expected {expected}")
        elif kind == "string" and not value:
            problems.append(f"{where}: {key} is empty")
    for key in REQUIRED:
        if key not in attrs:
            problems.append(f"{where}: missing {key}")
    if problems:
        return problems
    op = attrs["gen_ai.operation.name"][1]
    if op not in OPERATIONS:
        problems.append(f"{where}: unknown operation {op!r}")
    model = attrs.get("gen_ai.request.model", (None, None))[1]
    expected_name = f"{op} {model}" if model else op
    if span.name != expected_name:
        problems.append(f"{where}: name must be {expected_name!r}")
    if attrs["gen_ai.system"][1] != attrs["gen_ai.provider.name"][1]:
        problems.append(f"{where}: gen_ai.system differs from gen_ai.provider.name")
    failed = span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    if failed != ("error.type" in attrs):
        problems.append(f"{where}: status ERROR and error.type go together")
    if failed and not span.status.message:
        problems.append(f"{where}: an ERROR status needs a message")
    if span.status.code == trace_pb2.Status.STATUS_CODE_OK:
        problems.append(f"{where}: instrumentation leaves a success UNSET, never OK")
    if ("server.address" in attrs) != ("server.port" in attrs):
        problems.append(f"{where}: server.port goes with server.address")
    for key in JSON_ATTRIBUTES:
        if key in attrs:
            try:
                content = json.loads(attrs[key][1])
            except ValueError:
                problems.append(f"{where}: {key} is not JSON")
                continue
            for err in MESSAGE_VALIDATORS[key].iter_errors(content):
                problems.append(f"{where}: {key}: {err.message} at {list(err.absolute_path)}")
    return problems


def export_problems(export: ExportTraceServiceRequest) -> list[str]:
    """What is wrong with one export request (empty: nothing)."""
    problems: list[str] = []
    if not export.resource_spans:
        problems.append("no resource_spans")
    for rs in export.resource_spans:
        resource = typed_attributes(rs.resource.attributes)
        for key, kind in CAPTURED_RESOURCE_TYPES.items():
            if key not in resource:
                problems.append(f"resource: missing {key}")
            elif resource[key][0] != kind:
                problems.append(f"resource: {key} is {resource[key][0]}, expected {kind}")
        if not rs.scope_spans:
            problems.append("no scope_spans")
        for ss in rs.scope_spans:
            if not ss.scope.name:
                problems.append("the instrumentation scope has no name")
            if not ss.spans:
                problems.append("a scope without spans")
            for span in ss.spans:
                problems.extend(span_problems(span))
    return problems


def status_body(code: int, message: str) -> bytes:
    """A google.rpc.Status in protobuf (what a collector sends with an error)."""
    msg = message.encode()
    out = b"\x08" + _varint(code)
    out += b"\x12" + _varint(len(msg)) + msg
    return out


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


# ------------------------------------------------------------------ the fake


class FakeCollector:
    """A `FakeUpstream` handler: `upstream.reply(collector)`."""

    def __init__(self, path: str = "/v1/traces") -> None:
        self.path = path
        self.received: list[Received] = []  # every request, as it came
        self.exports: list[ExportTraceServiceRequest] = []  # accepted ones, decoded
        self.errors: list[str] = []  # what broke the rules
        self.reject_spans = 0  # answer with a partial success rejecting this many
        self._faults: deque[Reply] = deque()
        self._lock = threading.Lock()

    def fail(self, *replies: Reply) -> None:
        """The next requests get these replies, in order."""
        with self._lock:
            self._faults.extend(replies)

    @property
    def spans(self) -> list[Any]:
        with self._lock:
            return [
                s
                for e in self.exports
                for rs in e.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            ]

    def resources(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                attributes(rs.resource.attributes) for e in self.exports for rs in e.resource_spans
            ]

    def __call__(self, req: Received) -> Reply:
        with self._lock:
            self.received.append(req)
            if self._faults:
                return self._faults.popleft()
        if req.path.partition("?")[0] != self.path or req.method != "POST":
            return _status(404, 5, f"no route for {req.method} {req.path}")
        ctype = req.headers.get("content-type", "").split(";")[0].strip()
        if ctype != PROTOBUF:
            self._error(f"content-type {ctype!r}, expected {PROTOBUF}")
            return _status(415, 3, f"unsupported content type {ctype!r}")
        body = req.body
        if req.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        try:
            export = decode(body)
        except Exception as e:
            self._error(f"undecodable export: {e}")
            return _status(400, 3, "the body is not an ExportTraceServiceRequest")
        problems = export_problems(export)
        if problems:
            for p in problems:
                self._error(p)
            return _status(400, 3, "; ".join(problems))
        with self._lock:
            self.exports.append(export)
        response = ExportTraceServiceResponse()
        if self.reject_spans:
            response.partial_success.rejected_spans = self.reject_spans
            response.partial_success.error_message = "span too large"
        return Reply(200, {"content-type": PROTOBUF}, response.SerializeToString())

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)


def _status(http_status: int, code: int, message: str) -> Reply:
    return Reply(http_status, {"content-type": PROTOBUF}, status_body(code, message))
