"""A fake Langfuse for the ai-tracing exporter: OTLP/HTTP traces and the legacy batch
ingestion, validated as strictly as we can, answering as Langfuse does.

- Legacy batches (`POST /api/public/ingestion`) are validated against Langfuse's own
  OpenAPI spec (`shared/specs/langfuse-openapi.yml`, `IngestionEvent`), converted to
  JSON Schema with unknown fields rejected (`openapi_schema`); the answer is a 207 with
  a success or an error per event, like Langfuse's.
- OTLP requests (`POST /api/public/otel/v1/traces`, protobuf or JSON, gzip or not) are
  decoded with the official OpenTelemetry protobuf classes, and every span and resource
  attribute is checked against what the official SDKs really sent
  (`shared/captures/langfuse-sdk-5.0.4-otlp-requests.json` and
  `otel-genai-semconv-otlp-requests.json`): the same keys with the same value types
  (`check_otlp`). The JSON-encoded `langfuse.*` values are parsed and checked too.

Anything invalid is answered with a 400 (or a 207 error for one event) and recorded in
`problems`, which tests assert to be empty. Faults are scripted: `fail_next` (statuses
for the next requests, e.g. 500, 429 with Retry-After) and `fail_event` (per-event
statuses inside a 207).
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import re
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.fakes.upstream import FakeUpstream, Received, Reply

SHARED = Path(__file__).resolve().parents[3] / "shared"
SPEC = SHARED / "specs" / "langfuse-openapi.yml"
CAPTURES = [
    SHARED / "captures" / "langfuse-sdk-5.0.4-otlp-requests.json",
    SHARED / "captures" / "otel-genai-semconv-otlp-requests.json",
]

OTEL_PATH = "/api/public/otel/v1/traces"
INGESTION_PATH = "/api/public/ingestion"

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


# ------------------------------------------------------------------- OpenAPI


@cache
def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text())


def openapi_schema(root: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.0 schema as a JSON Schema (2020-12) that rejects unknown fields.

    - `allOf` compositions of objects are flattened into one object (their properties
      and required fields merged) so that `additionalProperties: false` can hold: on
      the parts it would reject the fields of the others;
    - `nullable: true` becomes a `null` alternative;
    - `oneOf` becomes `anyOf`: the spec's unions are untagged and overlap (MapValue's
      `integer` and `number`, UsageDetails' map and OpenAI shapes), so under `oneOf`
      every integer model parameter would be rejected, which Langfuse does not do;
    - `format: date-time` is checked with the ISO 8601 `Z` form Langfuse's SDKs write.
    """
    defs: dict[str, Any] = {}

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = components[node["$ref"].rsplit("/", 1)[1]]
        return node

    def flat(node: dict[str, Any]) -> tuple[dict[str, Any], list[str], Any]:
        props: dict[str, Any] = {}
        required: list[str] = []
        extra: Any = None
        for part in node.get("allOf", []):
            p, r, x = flat(resolve(part))
            props.update(p)
            required += r
            extra = x if x is not None else extra
        props.update(node.get("properties", {}))
        required += node.get("required", [])
        if "additionalProperties" in node:
            extra = node["additionalProperties"]
        return props, required, extra

    def nullable(out: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
        if not node.get("nullable"):
            return out
        if "type" in out and "anyOf" not in out:
            out = dict(out)
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
            return out
        return {"anyOf": [out, {"type": "null"}]}

    def ref(name: str) -> dict[str, Any]:
        if name not in defs:
            defs[name] = {}  # placeholder: recursion
            defs[name] = conv(components[name])
        return {"$ref": f"#/$defs/{name}"}

    def conv(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return nullable(ref(node["$ref"].rsplit("/", 1)[1]), node)
        if "oneOf" in node or "anyOf" in node:
            out: dict[str, Any] = {
                "anyOf": [conv(x) for x in node.get("oneOf", node.get("anyOf", []))]
            }
            return nullable(out, node)
        if "allOf" in node or "properties" in node or node.get("type") == "object":
            props, required, extra = flat(node)
            out = {"type": "object"}
            if props:
                out["properties"] = {k: conv(v) for k, v in props.items()}
            if required:
                out["required"] = sorted(set(required))
            if extra is None:
                out["additionalProperties"] = False
            elif extra is not True:
                out["additionalProperties"] = conv(extra) if isinstance(extra, dict) else extra
            return nullable(out, node)
        out = {}
        for key in ("type", "enum", "format"):
            if key in node:
                out[key] = node[key]
        if "items" in node:
            out["items"] = conv(node["items"])
        return nullable(out, node)

    schema = conv(root)
    schema["$defs"] = defs
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time")
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(ISO_Z.match(value))


@cache
def ingestion_validator() -> jsonschema.Draft202012Validator:
    """The request body of `POST /api/public/ingestion`, from Langfuse's spec."""
    spec = _spec()
    body = spec["paths"][INGESTION_PATH]["post"]["requestBody"]["content"]["application/json"]
    schema = openapi_schema(body["schema"], spec["components"]["schemas"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


@cache
def event_validator(kind: str | None = None) -> jsonschema.Draft202012Validator:
    """One `IngestionEvent` from Langfuse's spec; with `kind` ("trace-create", ...) only
    that variant of the union, for precise error messages."""
    spec = _spec()
    schema = openapi_schema(
        {"$ref": "#/components/schemas/IngestionEvent"}, spec["components"]["schemas"]
    )
    if kind is not None:
        variants = schema["$defs"]["IngestionEvent"]["anyOf"]
        (variant,) = [v for v in variants if v["properties"]["type"]["enum"] == [kind]]
        schema = {**variant, "$defs": schema["$defs"], "$schema": schema["$schema"]}
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


def event_problems(event: Any) -> list[str]:
    """What is wrong with one ingestion event (the spec, plus Langfuse's rules the spec
    leaves out: ISO 8601 times with Z, an envelope id per event)."""
    kind = event.get("type") if isinstance(event, dict) else None
    known = kind in ("trace-create", "generation-create")
    out = [
        f"{'/'.join(map(str, e.absolute_path)) or '<event>'}: {e.message}"
        for e in event_validator(kind if known else None).iter_errors(event)
    ]
    if isinstance(event, dict):
        ts = event.get("timestamp")
        if not isinstance(ts, str) or not ISO_Z.match(ts):
            out.append(f"timestamp {ts!r} is not ISO 8601 with Z")
        if event.get("type") not in ("trace-create", "generation-create"):
            out.append(f"unexpected event type {event.get('type')!r}")
    return out


def batch_problems(body: Any) -> list[str]:
    """What is wrong with a whole ingestion request body."""
    out = [
        f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
        for e in ingestion_validator().iter_errors(body)
    ]
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        ids = [e.get("id") for e in body["batch"] if isinstance(e, dict)]
        if len(ids) != len(set(ids)):
            out.append("event ids are not unique in the batch")
    return out


# ---------------------------------------------------------------------- OTLP


def _proto_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_proto_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _proto_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value
    return getattr(v, kind) if kind else None


def _json_value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [_json_value(x) for x in v["arrayValue"].get("values", [])]
    raise ValueError(f"unsupported OTLP JSON value {v!r}")


def decode_otlp(body: bytes, headers: dict[str, str]) -> list[dict[str, Any]]:
    """An OTLP/HTTP trace export (protobuf or JSON, gzip or not) in the captures' shape:
    per resource, its attributes and spans (hex ids, attributes by key)."""
    if headers.get("content-encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    content_type = headers.get("content-type", "")
    out: list[dict[str, Any]] = []
    if content_type.startswith("application/x-protobuf"):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            spans = []
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        {
                            "name": s.name,
                            "kind": s.kind,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex() or None,
                            "start_time_unix_nano": s.start_time_unix_nano,
                            "end_time_unix_nano": s.end_time_unix_nano,
                            "attributes": {a.key: _proto_value(a.value) for a in s.attributes},
                            "status": {"code": s.status.code, "message": s.status.message},
                            "scope": ss.scope.name,
                            "scope_version": ss.scope.version,
                        }
                    )
            out.append(
                {
                    "resource": {a.key: _proto_value(a.value) for a in rs.resource.attributes},
                    "spans": spans,
                }
            )
        return out
    if content_type.startswith("application/json"):
        data = json.loads(body)
        for rs in data["resourceSpans"]:
            spans = []
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    status = s.get("status") or {}
                    spans.append(
                        {
                            "name": s["name"],
                            "kind": s.get("kind", 0),
                            "trace_id": s["traceId"],
                            "span_id": s["spanId"],
                            "parent_span_id": s.get("parentSpanId") or None,
                            "start_time_unix_nano": int(s["startTimeUnixNano"]),
                            "end_time_unix_nano": int(s["endTimeUnixNano"]),
                            "attributes": {
                                a["key"]: _json_value(a["value"]) for a in s.get("attributes", [])
                            },
                            "status": {
                                "code": status.get("code", 0),
                                "message": status.get("message", ""),
                            },
                            "scope": ss.get("scope", {}).get("name", ""),
                            "scope_version": ss.get("scope", {}).get("version", ""),
                        }
                    )
            out.append(
                {
                    "resource": {
                        a["key"]: _json_value(a["value"])
                        for a in rs.get("resource", {}).get("attributes", [])
                    },
                    "spans": spans,
                }
            )
        return out
    raise ValueError(f"unsupported content-type {content_type!r}")


def type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array<" + ("|".join(sorted({type_of(v) for v in value})) or "string") + ">"
    return type(value).__name__


@cache
def reference() -> tuple[dict[str, str], dict[str, str]]:
    """(span attribute key -> type, resource attribute key -> type) as the official SDKs
    sent them (the captures)."""
    span_types: dict[str, str] = {}
    resource_types: dict[str, str] = {}
    for path in CAPTURES:
        for req in json.loads(path.read_text()):
            for k, v in req["resource"].items():
                resource_types[k] = type_of(v)
            for span in req["spans"]:
                for k, v in span["attributes"].items():
                    span_types[k] = type_of(v)
    return span_types, resource_types


# Attributes the Langfuse SDK (langfuse/_client/attributes.py) defines and serializes
# like its captured siblings, but which the captured calls did not set: the cost
# details (JSON like the usage details) and metadata keys (JSON strings, one attribute
# per top-level key, like `langfuse.trace.metadata.route` in the capture).
EXTRA_SPAN_KEYS = {"langfuse.observation.cost_details": "string"}
SPAN_KEY_PREFIXES = {
    "langfuse.trace.metadata.": "string",
    "langfuse.observation.metadata.": "string",
}

LEVELS = {"DEBUG", "DEFAULT", "WARNING", "ERROR"}
OBSERVATION_TYPES = {
    "span",
    "generation",
    "event",
    "agent",
    "tool",
    "chain",
    "retriever",
    "evaluator",
    "embedding",
    "guardrail",
}


def _expected_type(key: str) -> str | None:
    spans, _ = reference()
    if key in spans:
        return spans[key]
    if key in EXTRA_SPAN_KEYS:
        return EXTRA_SPAN_KEYS[key]
    for prefix, kind in SPAN_KEY_PREFIXES.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return kind
    return None


def _json_of(key: str, value: str, problems: list[str]) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        problems.append(f"{key}: not JSON: {value[:80]!r}")
        return None


def check_otlp(resources: list[dict[str, Any]]) -> list[str]:
    """What differs from the SDKs' requests in decoded OTLP resources: unknown keys,
    other value types, malformed JSON-encoded Langfuse values, bad ids or times."""
    problems: list[str] = []
    _, resource_types = reference()
    for rs in resources:
        for key, value in rs["resource"].items():
            want = resource_types.get(key)
            if want is None:
                problems.append(f"resource: unknown attribute {key!r}")
            elif type_of(value) != want:
                problems.append(f"resource {key}: {type_of(value)}, the SDK sends {want}")
        for span in rs["spans"]:
            where = f"span {span['name']!r}"
            if not re.fullmatch(r"[0-9a-f]{32}", span["trace_id"]) or not int(span["trace_id"], 16):
                problems.append(f"{where}: bad trace id {span['trace_id']!r}")
            if not re.fullmatch(r"[0-9a-f]{16}", span["span_id"]) or not int(span["span_id"], 16):
                problems.append(f"{where}: bad span id {span['span_id']!r}")
            if not 0 < span["start_time_unix_nano"] <= span["end_time_unix_nano"]:
                problems.append(f"{where}: bad times")
            if span["kind"] not in range(6) or span["status"]["code"] not in range(3):
                problems.append(f"{where}: bad kind or status")
            for key, value in span["attributes"].items():
                want = _expected_type(key)
                if want is None:
                    problems.append(f"{where}: unknown attribute {key!r}")
                    continue
                if type_of(value) != want:
                    problems.append(f"{where} {key}: {type_of(value)}, the SDK sends {want}")
                    continue
                problems += _check_value(f"{where} {key}", key, value)
    return problems


def _check_value(where: str, key: str, value: Any) -> list[str]:
    problems: list[str] = []
    if key == "langfuse.observation.usage_details":
        d = _json_of(where, value, problems)
        if not isinstance(d, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in d.values()
        ):
            problems.append(f"{where}: not a map of token counts: {value}")
    elif key == "langfuse.observation.cost_details":
        d = _json_of(where, value, problems)
        if not isinstance(d, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in d.values()
        ):
            problems.append(f"{where}: not a map of costs: {value}")
    elif key == "langfuse.observation.model.parameters":
        d = _json_of(where, value, problems)
        ok = isinstance(d, dict) and all(
            v is None
            or isinstance(v, str | int | float | bool)
            or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            for v in d.values()
        )
        if not ok:
            problems.append(f"{where}: not a map of MapValue: {value}")
    elif key == "langfuse.observation.completion_start_time":
        d = _json_of(where, value, problems)
        if not isinstance(d, str) or not ISO_Z.match(d):
            problems.append(f"{where}: not a JSON ISO 8601 time with Z: {value}")
    elif key == "langfuse.observation.level" and value not in LEVELS:
        problems.append(f"{where}: {value!r} is not a level")
    elif key == "langfuse.observation.type" and value not in OBSERVATION_TYPES:
        problems.append(f"{where}: {value!r} is not an observation type")
    elif key.startswith(tuple(SPAN_KEY_PREFIXES)) or key in (
        "langfuse.observation.input",
        "langfuse.observation.output",
    ):
        _json_of(where, value, problems)
    return problems


# ---------------------------------------------------------------------- server


def basic(public: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{public}:{secret}".encode()).decode()


class FakeLangfuse:
    """Langfuse's two ingestion endpoints on 127.0.0.1, validating what they get."""

    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test") -> None:
        self.public_key = public_key
        self.secret_key = secret_key
        self.server = FakeUpstream()
        self.server.reply(self._handle)
        self._lock = threading.Lock()
        self.problems: list[str] = []
        #: decoded OTLP requests (the captures' shape), accepted ones only
        self.otlp: list[list[dict[str, Any]]] = []
        #: ingestion events accepted (201 in the 207 answer), each envelope id once
        self.events: list[dict[str, Any]] = []
        #: events sent again with an envelope id already accepted (Langfuse dedupes them)
        self.duplicates = 0
        self._faults: list[Reply] = []
        self._event_fault: Callable[[dict[str, Any]], int | None] | None = None

    # -------------------------------------------------------------- control

    def start(self) -> FakeLangfuse:
        # build the validators now: loading the spec takes a second, which the first
        # request must not wait for (the exporter's timeout would fire)
        ingestion_validator()
        for kind in (None, "trace-create", "generation-create"):
            event_validator(kind)
        reference()
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def received(self) -> list[Received]:
        return self.server.received

    def reset(self) -> None:
        with self._lock:
            self.server.received.clear()
            self.problems.clear()
            self.otlp.clear()
            self.events.clear()
            self.duplicates = 0
            self._faults.clear()
            self._event_fault = None

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` requests with `status` (a JSON error body)."""
        reply = Reply.json({"message": f"scripted failure {status}"}, status, headers)
        with self._lock:
            self._faults += [reply] * times

    def fail_event(self, fault: Callable[[dict[str, Any]], int | None] | None) -> None:
        """In 207 answers, the status `fault(event)` gives (None: accepted)."""
        self._event_fault = fault

    # -------------------------------------------------------------- results

    @property
    def spans(self) -> list[dict[str, Any]]:
        """Every accepted span, with its resource under "resource"."""
        return [
            {**span, "resource": rs["resource"]}
            for req in self.otlp
            for rs in req
            for span in rs["spans"]
        ]

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def plain_bodies(self) -> list[tuple[dict[str, str], bytes]]:
        """Every request received: its headers and its body, decompressed."""
        out = []
        for r in list(self.received):
            body = r.body
            if r.headers.get("content-encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            out.append((dict(r.headers), body))
        return out

    # -------------------------------------------------------------- serving

    def _handle(self, req: Received) -> Reply:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
        if req.method != "POST":
            return Reply.json({"message": "Method not allowed"}, 405)
        if req.headers.get("authorization") != basic(self.public_key, self.secret_key):
            return Reply.json({"message": "Invalid credentials"}, 401)
        if req.path == OTEL_PATH:
            return self._otel(req)
        if req.path == INGESTION_PATH:
            return self._ingestion(req)
        return Reply.json({"message": "Not found"}, 404)

    def _problem(self, text: str, status: int = 400) -> Reply:
        with self._lock:
            self.problems.append(text)
        return Reply.json({"message": text}, status)

    def _otel(self, req: Received) -> Reply:
        if req.headers.get("x-langfuse-ingestion-version") != "4":
            self._problem("x-langfuse-ingestion-version is not 4")
        try:
            resources = decode_otlp(req.body, req.headers)
        except Exception as e:
            return self._problem(f"undecodable OTLP request: {e}")
        problems = check_otlp(resources)
        if problems:
            return self._problem("; ".join(problems))
        with self._lock:
            self.otlp.append(resources)
        if req.headers.get("content-type", "").startswith("application/x-protobuf"):
            # an empty ExportTraceServiceResponse, in the request's encoding
            return Reply(200, {"content-type": "application/x-protobuf"}, b"")
        return Reply.json({})

    def _ingestion(self, req: Received) -> Reply:
        if not req.headers.get("content-type", "").startswith("application/json"):
            return self._problem("content-type is not application/json")
        try:
            body = json.loads(req.body)
        except ValueError:
            return self._problem("body is not JSON")
        if len(req.body) > 3_500_000:
            return self._problem("batch over 3.5 MB", 413)
        # the envelope here, each event below (Langfuse answers bad events one by one)
        top = [p for p in batch_problems(body) if not p.startswith("batch/")]
        if top or not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            return self._problem("; ".join(top) or "no batch")
        successes, errors = [], []
        for event in body["batch"]:
            event_id = event.get("id") if isinstance(event, dict) else None
            bad = event_problems(event)
            if bad:
                with self._lock:
                    self.problems.extend(bad)
                errors.append(
                    {
                        "id": str(event_id),
                        "status": 400,
                        "message": "Invalid request data",
                        "error": "; ".join(bad),
                    }
                )
                continue
            status = self._event_fault(event) if self._event_fault else None
            if status is not None:
                errors.append({"id": event_id, "status": status, "message": "scripted failure"})
                continue
            with self._lock:
                if any(e["id"] == event_id for e in self.events):
                    self.duplicates += 1
                else:
                    self.events.append(copy.deepcopy(event))
            successes.append({"id": event_id, "status": 201})
        return Reply.json({"successes": successes, "errors": errors}, 207)
