"""Turns every finished call into a call record and hands it to the route's log plugins.

Runs in `response` and in `error` (a client that leaves mid-stream fires only
`error`), so every call yields exactly one record. Building it is cheap and sending it
is a queue append: nothing here waits on I/O.

What never enters a record: credential headers and query parameters (the usual names,
the names of the route's ai-proxy `auth` and of key-auth's keys), and any configured
secret (`{vault://}` values, consumer keys) wherever it shows up, as a substring of a
header, a URL, the payloads, the context or an error message. Secrets shorter than
`MIN_SECRET_LENGTH` characters are only redacted where they are a whole value (a
header, a query parameter): searched for inside texts, a short value would blank out
ordinary words.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from mitmproxy import http

from addons.calls import Call, configured_model, now
from addons.state import Gateway
from addons.webview import annotate
from exporters.ids import uuid7
from exporters.record import AIInfo, CallRecord
from providers.base import (
    ProviderError,
    RouteType,
    Usage,
    estimate_tokens,
    text_of_messages,
)

log = logging.getLogger("llmitm")

REDACTED = "[REDACTED]"
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "apikey",
        "x-goog-api-key",
        "x-amz-security-token",  # AWS session credentials (observed Bedrock calls)
        "cookie",
        "set-cookie",
    }
)
SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "access_token", "token", "sig"})


_SECRET_FIELDS = frozenset(h.encode() for h in SECRET_HEADERS)


def redact_headers(
    headers: http.Headers, secrets: frozenset[str], names: Iterable[str] = ()
) -> dict[str, str]:
    """Headers for a record: credentials (and the headers `names`) and any value holding
    a configured secret are replaced (one pass over the raw fields: mitmproxy's per-name
    lookups are slow)."""
    fields = _SECRET_FIELDS | {n.lower().encode() for n in names} if names else _SECRET_FIELDS
    out: dict[str, str] = {}
    for raw_name, raw_value in headers.fields:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("utf-8", "replace")
        if raw_name.lower() in fields or (secrets and any(s in value for s in secrets if s)):
            value = REDACTED
        out[name] = value
    return out


def redact_url(url: str, secrets: frozenset[str] = frozenset(), names: Iterable[str] = ()) -> str:
    base, sep, query = url.partition("?")
    if not sep:
        return url
    pairs = [
        (k, REDACTED if k.lower() in SECRET_PARAMS or k in names or v in secrets else v)
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return f"{base}?{urlencode(pairs, safe='[]')}"


#: shorter configured secrets are not searched for inside texts (see the docstring)
MIN_SECRET_LENGTH = 8


class SecretScrubber:
    """Replaces every configured secret inside the strings of a JSON-like value.

    Built once per config. `probe` finds whether a value holds a secret at all, on its
    JSON encoding (one C-speed search, the common answer being no); only then is the
    value walked and rebuilt with the secrets replaced."""

    __slots__ = ("pattern", "probe")

    def __init__(self, secrets: Iterable[str]) -> None:
        found = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, found))) if found else None
        # a secret as it appears in JSON text: itself, or with JSON's escapes
        forms = {f.encode() for s in found for f in (s, orjson.dumps(s).decode()[1:-1])}
        self.probe = (
            re.compile(b"|".join(map(re.escape, sorted(forms, key=len, reverse=True))))
            if forms
            else None
        )

    def __call__(self, value: Any) -> Any:
        """`value`, or a copy of it without the secrets."""
        if self.pattern is None or value is None:
            return value
        if isinstance(value, str):
            return self.pattern.sub(REDACTED, value)
        try:
            encoded = orjson.dumps(value, default=str)
        except (TypeError, orjson.JSONEncodeError):
            return self._walk(value)
        assert self.probe is not None
        return self._walk(value) if self.probe.search(encoded) else value

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            assert self.pattern is not None
            return self.pattern.sub(REDACTED, value)
        if isinstance(value, dict):
            return {self._walk(k): self._walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._walk(v) for v in value]
        return value


_scrubbers: weakref.WeakKeyDictionary[Any, SecretScrubber] = weakref.WeakKeyDictionary()


def scrubber(config: Any) -> SecretScrubber:
    """The secret scrubber of a config (built at its first record)."""
    try:
        found = _scrubbers.get(config)
    except TypeError:  # not weak-referenceable (a stand-in config in a test)
        return SecretScrubber(config.secrets)
    if found is None:
        found = _scrubbers[config] = SecretScrubber(config.secrets)
    return found


def _estimate(call: Call, response: dict[str, Any] | None) -> Usage | None:
    """Count tokens ourselves when the provider reported none (marked estimated)."""
    spec = call.spec
    if spec is None or spec.route_type is RouteType.PRESERVE:
        return None
    body = spec.body
    if spec.native:  # a provider's own format: count the text wherever it is
        prompt = " ".join(_texts(body))
    elif spec.route_type is RouteType.CHAT:
        prompt = text_of_messages(body.get("messages"))
    elif spec.route_type is RouteType.COMPLETIONS:
        prompt = (
            body.get("prompt") if isinstance(body.get("prompt"), str) else str(body.get("prompt"))
        )
    else:
        inputs = body.get("input")
        prompt = inputs if isinstance(inputs, str) else " ".join(map(str, inputs or ()))
    completion = ""
    for choice in (response or {}).get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message")
            completion += text_of_messages([message]) if isinstance(message, dict) else ""
            completion += choice.get("text") or ""
    return Usage(estimate_tokens(prompt), estimate_tokens(completion), estimated=True)


#: request fields that are parameters, not content (recorded even without log_payloads)
_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "max_tokens_to_sample",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "n",
        "stop",
        "stop_sequences",
        "stream",
        "reasoning_effort",
        "parallel_tool_calls",
        "tool_choice",
        "encoding_format",
        "dimensions",
        "generationConfig",
        "inferenceConfig",
    }
)


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 200)


def request_params(body: Any) -> dict[str, Any]:
    """The sampling parameters of a request (OpenAI's names, or the provider's own for
    native requests): numbers, short strings and lists of them; never content."""
    if not isinstance(body, dict):
        return {}
    out: dict[str, Any] = {}
    for key in _PARAMS:
        value = body.get(key)
        if value is None:
            continue
        if _scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value)):
            out[key] = value
        elif isinstance(value, dict):  # Gemini's generationConfig, Bedrock's inferenceConfig
            inner = {k: v for k, v in value.items() if _scalar(v)}
            if inner:
                out[key] = inner
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("type"), str):
        out["response_format"] = fmt["type"]
    return out


def _response_id(data: Any) -> str | None:
    if isinstance(data, dict):
        rid = data.get("id") or data.get("responseId")
        if isinstance(rid, str) and rid:
            return rid
    return None


_NOT_TEXT = frozenset({"model", "role", "type", "id", "mime_type", "mimeType", "media_type"})


def _texts(value: Any) -> list[str]:
    """Every string in a JSON value but identifiers (for estimates of native requests:
    Anthropic's `messages`, Gemini's `contents`, TGI's `inputs`, ...)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for k, v in value.items() if k not in _NOT_TEXT for t in _texts(v)]
    return []


def _without(payload: Any, names: set[str]) -> Any:
    """A request payload with the top-level fields `names` (a key in the body) redacted."""
    if not names or not isinstance(payload, dict) or names.isdisjoint(payload):
        return payload
    return {k: REDACTED if k in names else v for k, v in payload.items()}


def _ms(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return round((b - a) * 1000, 3)


def _consumer_entity(consumer: Any) -> dict[str, Any] | None:
    """The consumer as Kong's serializer shows it: its id, username and custom_id, the
    ones it has (Kong leaves unset fields out)."""
    if consumer is None:
        return None
    fields = (
        ("id", consumer.id),
        ("username", consumer.username),
        ("custom_id", consumer.custom_id),
    )
    return {k: v for k, v in fields if v}


def _billed(call: Call) -> bool:
    """Whether the upstream accepted the call (a 2xx): it generated, and bills, tokens
    even if the answer then broke off."""
    return call.upstream_status is not None and 200 <= call.upstream_status < 300


def build_record(call: Call, flow: http.HTTPFlow) -> CallRecord:
    end = call.ended_at or now()
    req = flow.request
    resp = flow.response
    secrets = call.config.secrets
    names = call.secret_names
    scrub = scrubber(call.config)

    if call.client_aborted:
        status = "client_aborted"
    elif call.error is not None or flow.error is not None or (resp and resp.status_code >= 400):
        status = "error"
    else:
        status = "ok"

    error = None
    if call.error is not None:
        error = {
            "status": call.error.status,
            "type": call.error.type,
            "code": call.error.code,
            "message": scrub(call.error.message),
            "source": call.error_source,
        }
    elif flow.error is not None:
        source = "client" if call.client_aborted else "proxy"
        error = {
            "status": None,
            "type": "connection_error",
            "code": None,
            "message": flow.error.msg,
            "source": source,
        }

    # proxy: the time the upstream took; None when no upstream was contacted (a route
    # without a match, a refused or malformed request). Kong writes -1 there.
    upstream_ms = _ms(call.upstream_started, call.upstream_ended)
    total_ms = _ms(call.started_at, end)
    if upstream_ms is None and call.proxied and resp is not None and resp.timestamp_start:
        # a plain proxied route: mitmproxy did the upstream I/O
        upstream_ms = _ms(req.timestamp_end, resp.timestamp_end)
    latencies = {
        "request": total_ms,
        "proxy": upstream_ms,
        "gateway": round(total_ms - upstream_ms, 3)
        if total_ms is not None and upstream_ms is not None
        else total_ms,
        # the LLM's part of it (ai.proxy.meta.llm_latency)
        "llm": upstream_ms if call.provider is not None else None,
        "time_to_first_token": _ms(call.started_at, call.first_token),
    }

    ai = None
    conf = call.plugin("ai-proxy") if call.route is not None else None
    if call.provider is not None and call.spec is not None:
        translator = call.translator
        response_data = translator.assembled() if translator is not None else None
        usage = call.usage or (translator.usage if translator is not None else None)
        response_model = call.response_model or (response_data or {}).get("model")
        finish = call.finish_reason
        if finish is None and response_data:
            choices = response_data.get("choices") or [{}]
            finish = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
        if usage is None and (status != "error" or _billed(call)):
            # a stream that broke off was billed for what it generated: count it
            usage = _estimate(call, response_data)
        upstream_url = (
            scrub(redact_url(call.upstream_url, secrets, names)) if call.upstream_url else None
        )
        ai = AIInfo(
            provider=call.provider.name,
            route_type=str(call.spec.route_type),
            request_model=call.request_model,
            response_model=response_model,
            stream=call.stream,
            upstream_url=upstream_url,
            usage=usage,
            cost=usage.cost(call.spec.options) if usage else None,
            finish_reason=finish,
            time_to_first_token_ms=latencies["time_to_first_token"],
            llm_latency_ms=upstream_ms,
            log_statistics=call.log_statistics,
            request_params=request_params(call.spec.body),
            response_id=_response_id(response_data) or _response_id(call.response_payload),
        )
        if call.log_payloads:
            ai.request_payload = scrub(_without(call.request_payload, names))
            ai.response_payload = scrub(
                call.response_payload if call.response_payload is not None else response_data
            )
    elif conf is not None:
        # refused before the provider was called (bad JSON, too large, streaming denied):
        # the route still says which provider and model the call was for
        ai = AIInfo(
            provider=conf.model.provider,
            route_type=str(conf.route_type),
            request_model=call.request_model or configured_model(conf),
            response_model=None,
            stream=call.stream,
            log_statistics=conf.logging.log_statistics,
        )

    return CallRecord(
        id=uuid7(call.started_at),
        started_at=call.started_at,
        ended_at=end,
        status=status,
        client_ip=call.client_ip,
        route=call.route.name if call.route else None,
        service=call.route.service.name if call.route and call.route.service else None,
        request={
            "method": req.method,
            "uri": scrub(redact_url(req.path, secrets, names)),
            "size": len(req.raw_content or b""),
            "headers": redact_headers(req.headers, secrets, names),
        },
        response={
            "status": resp.status_code if resp is not None else None,
            "size": call.bytes_out
            if call.translator is not None
            else (len(resp.raw_content or b"") if resp is not None else None),
        },
        latencies=latencies,
        upstream={
            "url": scrub(redact_url(call.upstream_url, secrets, names)),
            "status": call.upstream_status,
        }
        if call.upstream_url
        else None,
        ai=ai,
        context=scrub(call.context),
        error=error,
        consumer=call.consumer.name if call.consumer is not None else None,
        consumer_entity=_consumer_entity(call.consumer),
    )


#: containers nested deeper than this inside a record field are not recorded (orjson,
#: which most sinks write with, stops at 254 levels)
MAX_RECORD_DEPTH = 100
TOO_DEEP = "[not recorded: nested too deeply]"
_AI_VALUES = ("request_model", "response_model", "upstream_url", "finish_reason", "response_id")


def writable(record: CallRecord) -> CallRecord:
    """`record`, made writable by every sink when it is not: a lone surrogate (a client's
    `"\\ud800"`, a path that is not UTF-8), an integer beyond 64 bits or a value nested
    too deeply would make orjson refuse it, and a sink would lose the whole batch it is
    in. One encoding checks it; the rare record that fails is cleaned field by field."""
    try:
        record.encoded()  # kept: file-log and the store write these bytes
        return record
    except TypeError:  # orjson.JSONEncodeError
        pass
    for name in ("request", "response", "upstream", "latencies", "context", "error"):
        setattr(record, name, _clean(getattr(record, name)))
    for name in ("client_ip", "route", "service", "consumer", "consumer_entity"):
        setattr(record, name, _clean(getattr(record, name)))
    ai = record.ai
    if ai is not None:
        for name in _AI_VALUES:
            setattr(ai, name, _clean(getattr(ai, name)))
        ai.request_params = _clean(ai.request_params)
        ai.request_payload = _clean(ai.request_payload)
        ai.response_payload = _clean(ai.response_payload)
    return record


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode()
        return value
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_RECORD_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {_clean(str(k)): _clean(v, depth + 1) for k, v in value.items()}
        return [_clean(v, depth + 1) for v in value]
    return str(value)


class Recorder:
    name = "llmitm-recorder"

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is not None:
            if call.relay_token is not None:
                self.gw.upstream.relay.abort(call.relay_token)
            msg = flow.error.msg.lower() if flow.error else ""
            if "client" in msg or call.relay_token is not None:
                call.client_aborted = True
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.pop(flow)
        if call is None:
            return
        call.ended_at = now()
        # The response hook runs before mitmproxy sends the response: build the record
        # just after, so it adds nothing to the client's latency.
        asyncio.get_running_loop().call_soon(self._export, call, flow)

    def _export(self, call: Call, flow: http.HTTPFlow) -> None:
        export(self.gw, call, flow)


def export(gw: Gateway, call: Call, flow: http.HTTPFlow) -> None:
    """Build the record of a finished call and hand it to its log plugins and metrics."""
    try:
        record = build_record(call, flow)
    except Exception as e:  # a bug: the call still gets a record, with what is sure
        log.exception("llmitm: could not build the call record: a reduced one is sent")
        try:
            record = reduced_record(call, flow, e)
        except Exception:
            log.exception("llmitm: could not build even a reduced call record")
            return
    for finish in call.on_finish:  # e.g. a token limit settling its reservation
        try:
            finish(call, record)
        except Exception:
            log.exception("llmitm: a policy failed on the finished call")
    record = writable(record)
    gw.exporters.export(record, call.route, call.config)
    route = call.route
    gw.metrics.observe(record, route.plugin("prometheus") if route is not None else None)
    flow.metadata["llmitm.record_id"] = record.id
    flow.metadata["llmitm.status"] = record.status
    annotate(flow, record)  # mitmweb: the mark and comment of the call


def reduced_record(call: Call, flow: http.HTTPFlow, error: Exception) -> CallRecord:
    """The record of a call whose full record could not be built (a bug): when, where,
    the status codes and the failure, without headers, payloads or usage (the parts
    that failed may hold secrets not yet redacted)."""
    end = call.ended_at or now()
    resp = flow.response
    path = flow.request.path.split("?", 1)[0]
    return CallRecord(
        id=uuid7(call.started_at),
        started_at=call.started_at,
        ended_at=end,
        status="error",
        client_ip=call.client_ip,
        route=call.route.name if call.route else None,
        service=call.route.service.name if call.route and call.route.service else None,
        request={"method": flow.request.method, "uri": path},
        response={"status": resp.status_code if resp is not None else None},
        latencies={"request": _ms(call.started_at, end)},
        error={
            "status": None,
            "type": "record_error",
            "code": "record_incomplete",
            "message": f"the gateway could not build this call's record: {type(error).__name__}",
            "source": "gateway",
        },
        consumer=call.consumer.name if call.consumer is not None else None,
    )


#: the error of a call still in flight when the gateway stopped (`record_unfinished`)
SHUTDOWN_MESSAGE = "the gateway shut down before the call finished"


def record_unfinished(gw: Gateway) -> int:
    """At shutdown, once the calls in flight had their time: record each call still
    unfinished as failed (503, code `gateway_shutdown`, with what a stream had sent so
    far) and forget it, so that no later hook records it twice. Returns how many."""
    left = gw.calls.take_all()
    for flow, call in left:
        call.fail(ProviderError(503, SHUTDOWN_MESSAGE, code="gateway_shutdown"), "gateway")
        call.ended_at = now()
        export(gw, call, flow)
    return len(left)
