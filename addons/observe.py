"""Observe mode: record the LLM calls of unmodified apps, changing nothing.

Point an app at mitmproxy in regular (forward) mode (`HTTPS_PROXY=http://127.0.0.1:8080`,
trusting mitmproxy's CA): each request to a known LLM API host (`addons.llm_hosts`) that
no gateway route handles becomes a call record like a gateway call's (route `observed`),
exported to the config's global log plugins and to the embedded SQLite store.

Nothing is changed on the wire: requests and answers pass byte for byte, and a streamed
answer is forwarded chunk by chunk as it arrives; the stream owner of `addons.streaming`
(passthrough) watches it through the provider's own observer, decoding the response's
content-encoding for the observer only. What a call is observed with is what a
`preserve` route or a native `llm_format` route uses (`stream_observer`,
`parse_passthrough`): the provider modules' native parsers, no second parser per format.

Options: `llmitm_observe` (on by default), `llmitm_observe_hosts` (`host[:port]=provider`
entries added to the built-in table, `host=off` to drop one), `llmitm_observe_payloads`
(request and answer bodies in the records; on by default, for local debugging).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

import orjson
from mitmproxy import ctx, exceptions, http

import providers
from addons.calls import Call, context_from_headers, now, with_body_context
from addons.config.model import GatewayConfig, Route
from addons.config.plugins import LOG_PLUGINS
from addons.llm_hosts import RESPONSES, HostTable, Operation, operation
from addons.streaming import StreamOwner
from providers import sse
from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    Reply,
    RouteType,
    StreamTranslator,
    Usage,
    as_int,
)
from providers.openai import OpenAI
from providers.options import ModelOptions

log = logging.getLogger("llmitm")

ROUTE_NAME = "observed"

#: content types of streamed answers (SSE, NDJSON, AWS event-stream)
_STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/vnd.amazon.eventstream")
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
_EMPTY_CONFIG = GatewayConfig(source="", routes=[], global_plugins={}, table=None)


# ------------------------------------------------------ shared with preserve routes


def stream_observer(provider: Provider, spec: CallSpec) -> StreamTranslator:
    """The observer of a stream passed through unchanged: a native `llm_format`'s own
    observer, else the provider's stream translator (whose output is ignored). The
    same choice as `AIProxy._relay` for preserve and native routes."""
    if spec.native:
        return provider.native_stream_observer(spec)
    return provider.stream_translator(spec)


def parse_passthrough(
    provider: Provider, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
) -> Reply:
    """Usage, model and answer of a whole answer passed through unchanged (the same
    choice as `AIProxy._send`)."""
    if spec.native:
        return provider.parse_native_response(spec, status, headers, body)
    return provider.parse_response(spec, status, headers, body)


# ------------------------------------------------------------ the Responses API


def responses_usage(u: Any) -> Usage | None:
    """The Responses API's `usage` (input/output tokens, cached and reasoning details)."""
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


def responses_finish(response: Any) -> str | None:
    """A finish reason in OpenAI's chat terms for a Responses API `response` object."""
    if not isinstance(response, dict):
        return None
    status = response.get("status")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "length" if reason == "max_output_tokens" else (reason or "incomplete")
    if status == "completed":
        output = response.get("output")
        if isinstance(output, list) and any(
            isinstance(o, dict) and o.get("type") == "function_call" for o in output
        ):
            return "tool_calls"
        return "stop"
    return status if isinstance(status, str) else None


class ResponsesStream:
    """Watches an OpenAI Responses API stream (`/v1/responses`, `stream: true`): text,
    tool-call and reasoning deltas (first token), the final `response` with its usage
    (`response.completed`, `.incomplete` or `.failed`), and `error` events."""

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

    def __init__(self, spec: CallSpec) -> None:
        self._dec = sse.SSEDecoder()
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self.finish_reason: str | None = None
        self._response: dict[str, Any] = {}
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
            self._response = response
            if isinstance(response.get("usage"), dict):
                self.usage = responses_usage(response["usage"])
            if kind in self._FINAL:
                self.finish_reason = responses_finish(response)
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
        """The final `response` object (the Responses API's own shape), or what is known
        of it when the stream ended early."""
        if self._response.get("output"):
            return self._response
        out = dict(self._response)
        if self._text:
            out["output_text"] = "".join(self._text)
        return out


# --------------------------------------------------------- content-encoding


def _decoder(encoding: str) -> Callable[[bytes], bytes] | None:
    """An incremental decoder of a response's content-encoding (None: identity or
    unknown, then the observer gets the bytes as they are)."""
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(47 if enc != "deflate" else 15)
        return d.decompress
    if enc == "br":
        try:
            import brotli  # mitmproxy's own dependency
        except ImportError:
            return None
        return brotli.Decompressor().process
    if enc == "zstd":
        try:
            import zstandard  # mitmproxy's own dependency
        except ImportError:
            return None
        return zstandard.ZstdDecompressor().decompressobj().decompress
    return None


class Decoded:
    """A stream observer fed the decoded body of a compressed stream (the client still
    gets the compressed bytes: the stream owner passes them through)."""

    def __init__(self, inner: StreamTranslator, decode: Callable[[bytes], bytes]) -> None:
        self.inner = inner
        self._decode: Callable[[bytes], bytes] | None = decode

    @property
    def usage(self) -> Usage | None:
        return self.inner.usage

    @property
    def error(self) -> ProviderError | None:
        return self.inner.error

    @property
    def started(self) -> bool:
        return self.inner.started

    @property
    def finish_reason(self) -> str | None:
        return getattr(self.inner, "finish_reason", None)

    def feed(self, data: bytes) -> list[bytes]:
        if self._decode is None:
            return []
        try:
            plain = self._decode(data)
        except Exception:  # noqa: BLE001 - corrupt: stop observing, the client gets every byte
            log.warning("llmitm: cannot decode an observed stream's content-encoding")
            self._decode = None
            return []
        return self.inner.feed(plain) if plain else []

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        return self.inner.finish(error)

    def assembled(self) -> dict[str, Any]:
        return self.inner.assembled()


# ------------------------------------------------------------------- the addon


def _native_finish(data: Any) -> str | None:
    """The finish reason a native answer states (where the formats put it)."""
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0].get("finish_reason")
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0].get("finishReason")
    for key in ("stop_reason", "stopReason", "finish_reason", "done_reason"):
        if isinstance(data.get(key), str):
            return data[key]
    return None


def _observed_route(config: GatewayConfig) -> Route:
    """The route observed calls are recorded under: no route of the config, it carries
    the config's global log plugins (and prometheus), so observed calls go where
    unrouted records go, and no other plugin acts on them."""
    plugins = {
        name: p
        for name, p in config.global_plugins.items()
        if p.name in LOG_PLUGINS or p.name == "prometheus"
    }
    return Route(
        name=ROUTE_NAME,
        service=None,
        paths=[],
        hosts=[],
        methods=[],
        headers={},
        strip_path=False,
        preserve_host=False,
        regex_priority=0,
        plugins=plugins,
    )


class Observe:
    """Records the calls of LLM API hosts that no route handles, changing nothing."""

    name = "llmitm-observe"

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self.enabled = True
        self.payloads = True
        self.hosts = HostTable()
        self._route: tuple[GatewayConfig, Route] | None = None
        self._running = False

    # ----------------------------------------------------------------- options

    def load(self, loader: Any) -> None:
        loader.add_option(
            "llmitm_observe",
            bool,
            True,
            "Record the calls to known LLM API hosts that no route handles (forward "
            "proxy mode), changing nothing on the wire.",
        )
        loader.add_option(
            "llmitm_observe_hosts",
            Sequence[str],
            [],
            "Extra LLM API hosts to observe, as host[:port]=provider ('*' stands for "
            "part of a DNS label; host=off stops observing a built-in host).",
        )
        loader.add_option(
            "llmitm_observe_payloads",
            bool,
            True,
            "Keep request and answer bodies in the records of observed calls.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llmitm_observe_hosts" in updated:
            try:
                self.hosts = HostTable.from_config(
                    ctx.options.llmitm_observe_hosts, providers.registry()
                )
            except ValueError as e:
                raise exceptions.OptionsError(f"llmitm_observe_hosts: {e}") from None
        if "llmitm_observe" in updated:
            self.enabled = ctx.options.llmitm_observe
        if "llmitm_observe_payloads" in updated:
            self.payloads = ctx.options.llmitm_observe_payloads
        if self._running and "llmitm_store" in updated:
            self._ensure_store()

    def running(self) -> None:
        self._running = True
        self._ensure_store()

    def _ensure_store(self) -> None:
        # With no config file the exporters have not started the embedded store:
        # observed calls still land in it.
        if self.gw.config is None and self.enabled:
            self.gw.exporters.reconcile(_EMPTY_CONFIG)

    def _config(self) -> tuple[GatewayConfig, Route]:
        config = self.gw.config or _EMPTY_CONFIG
        if self._route is None or self._route[0] is not config:
            self._route = (config, _observed_route(config))
        return self._route

    # ------------------------------------------------------------------- hooks

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or flow.response is not None:
            return
        if self.gw.calls.get(flow) is not None:
            return  # a gateway route handles it (and records it)
        req = flow.request
        # the name the client asked for (Host header, also in transparent and local
        # modes), else where the request goes (a reverse mode to an LLM host)
        name = self.hosts.provider_for(req.pretty_host, req.port)
        if name is None and req.host != req.pretty_host:
            name = self.hosts.provider_for(req.host, req.port)
        if name is None:
            return
        op = operation(name, req.method, req.path)
        if op is None:
            return
        try:
            provider = providers.get(name)
        except KeyError:
            return
        config, route = self._config()
        peer = flow.client_conn.peername
        call = Call(
            config=config,
            route=route,
            match=None,
            started_at=req.timestamp_start or now(),
            client_ip=peer[0] if peer else "",
            context=context_from_headers(req.headers),
        )
        call.provider = provider
        call.log_payloads = self.payloads
        call.upstream_url = req.url
        self.gw.calls.put(flow, call)
        flow.metadata["llmitm.route"] = ROUTE_NAME
        flow.metadata["llmitm.observed"] = op.kind
        flow.metadata["llmitm.provider"] = provider.name

    def request(self, flow: http.HTTPFlow) -> None:
        call = self._observed(flow)
        if call is None or flow.response is not None:
            return
        assert call.provider is not None
        req = flow.request
        try:
            raw = req.get_content(strict=False) or b""
        except ValueError:
            raw = req.raw_content or b""
        try:
            body = orjson.loads(raw) if raw else None
        except ValueError:
            body = None
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        op = operation(call.provider.name, req.method, req.path)
        if op is None:  # cannot happen: requestheaders checked it on the same request
            return
        spec = observed_spec(call.provider, op, req.method, req.path, data, raw)
        call.spec = spec
        call.stream = spec.stream
        call.request_model = spec.model
        call.context = with_body_context(call.context, data)
        if call.log_payloads:
            call.request_payload = body if body is not None else raw.decode("utf-8", "replace")
        call.upstream_started = req.timestamp_end or now()
        if spec.model:
            flow.metadata["llmitm.model"] = spec.model

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self._observed(flow)
        if call is None or call.spec is None or flow.response is None:
            return
        resp = flow.response
        call.upstream_headers = resp.timestamp_start or now()
        call.upstream_status = resp.status_code
        ctype = resp.headers.get("content-type", "").lower()
        streamed = resp.status_code < 400 and (
            any(t in ctype for t in _STREAM_TYPES) or (call.spec.stream and "html" not in ctype)
        )
        if not streamed:
            call.stream = False
            return  # mitmproxy buffers it, unchanged; read in `response`
        call.stream = True
        observer = _observer(call)
        decode = _decoder(resp.headers.get("content-encoding", ""))
        call.translator = Decoded(observer, decode) if decode is not None else observer
        resp.stream = StreamOwner(call, call.translator, passthrough=True)

    def response(self, flow: http.HTTPFlow) -> None:
        call = self._observed(flow)
        if call is None or call.spec is None or flow.response is None:
            return
        resp = flow.response
        call.upstream_ended = resp.timestamp_end or now()
        call.upstream_status = resp.status_code
        if call.translator is not None:  # a stream: the observer has seen it all
            finish = getattr(call.translator, "finish_reason", None)
            if isinstance(finish, str):
                call.finish_reason = finish
            return
        try:
            self._whole(call, resp)
        except Exception:  # observing must never break the proxy
            log.exception("llmitm: could not read an observed answer")

    # ---------------------------------------------------------------- internals

    def _observed(self, flow: http.HTTPFlow) -> Call | None:
        if "llmitm.observed" not in flow.metadata:
            return None
        call = self.gw.calls.get(flow)
        return call if call is not None and call.route is not None else None

    def _whole(self, call: Call, resp: http.Response) -> None:
        assert call.provider is not None and call.spec is not None
        body = resp.get_content(strict=False) or b""
        headers = {k.lower(): v for k, v in resp.headers.items()}
        spec = call.spec
        adapter = _adapter(call.provider, spec)
        if call.log_payloads:
            try:
                call.response_payload = orjson.loads(body) if body else None
            except ValueError:
                call.response_payload = body.decode("utf-8", "replace")
        if resp.status_code >= 400:
            call.fail(adapter.parse_error(resp.status_code, headers, body), "upstream")
            return
        if spec.extra.get("operation") == RESPONSES:
            try:
                data = orjson.loads(body)
            except ValueError:
                data = None
            if isinstance(data, dict):
                call.usage = responses_usage(data.get("usage"))
                call.response_model = data.get("model")
                call.finish_reason = responses_finish(data)
                if call.response_payload is None and call.log_payloads:
                    call.response_payload = data
            return
        try:
            reply = parse_passthrough(adapter, spec, resp.status_code, headers, body)
        except ProviderError:  # not the answer the format expects: read what is there
            reply = adapter.parse_native_response(spec, resp.status_code, headers, body)
        call.usage = reply.usage
        if call.usage is None and spec.native:  # e.g. Bedrock's InvokeModel: counts in headers
            call.usage = _preserved_usage(adapter, spec, resp.status_code, headers, body)
        call.response_model = reply.model
        call.finish_reason = _native_finish(reply.data)
        if spec.native:  # the provider's mapping to OpenAI's finish reasons, when it has one
            finish = _translated_finish(adapter, spec, resp.status_code, headers, body)
            call.finish_reason = finish or call.finish_reason
        if call.log_payloads and call.response_payload is None:
            call.response_payload = reply.data


def _adapter(provider: Provider, spec: CallSpec) -> Provider:
    """Who reads the traffic: the provider itself, but for OpenAI-format calls on hosts
    whose provider is not an OpenAI adapter (Ollama's /v1, Mistral, the OpenAI-compatible
    endpoints of Gemini or Anthropic), OpenAI's own adapter."""
    if spec.extra.get("format") == "openai" and not isinstance(provider, OpenAI):
        return providers.get("openai")
    return provider


def _observer(call: Call) -> StreamTranslator:
    assert call.provider is not None and call.spec is not None
    if call.spec.extra.get("operation") == RESPONSES:
        return ResponsesStream(call.spec)
    return stream_observer(_adapter(call.provider, call.spec), call.spec)


def _preserved_usage(
    provider: Provider, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
) -> Usage | None:
    """The usage a `preserve` route reads from an answer the native parser found none in
    (a request to the provider's host in another format, such as Bedrock's InvokeModel
    with a model vendor's own body, whose token counts come in response headers)."""
    try:
        reply = provider.parse_response(
            dataclasses.replace(spec, route_type=RouteType.PRESERVE, llm_format="openai"),
            status,
            headers,
            body,
        )
    except Exception:  # noqa: BLE001 - an answer this parser cannot read either
        return None
    return reply.usage


def _translated_finish(
    provider: Provider, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
) -> str | None:
    """The finish reason of a native answer as the provider's translation maps it
    (end_turn -> stop, tool_use -> tool_calls, ...), as a gateway call would record it."""
    try:
        reply = provider.parse_response(
            dataclasses.replace(spec, llm_format="openai"), status, headers, body
        )
    except Exception:  # noqa: BLE001 - an answer this translation cannot read
        return None
    choices = reply.data.get("choices") if isinstance(reply.data, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        finish = choices[0].get("finish_reason")
        return finish if isinstance(finish, str) else None
    return None


def observed_spec(
    provider: Provider, op: Operation, method: str, path: str, body: dict[str, Any], raw: bytes
) -> CallSpec:
    """The CallSpec of an observed request: its route type from the operation, the
    provider's native format when the request speaks it, the model it asks for and
    whether it asks for a stream."""
    bare, _, query = path.partition("?")
    route_type = RouteType.PRESERVE if op.kind == RESPONSES else RouteType(op.kind)
    native = op.format == "native" and provider.native_format is not None
    spec = CallSpec(
        route_type=route_type,
        body=body,
        model=None,
        options=ModelOptions(),
        stream=False,
        client_wants_usage=isinstance(body.get("stream_options"), dict)
        and body["stream_options"].get("include_usage") is True,
        path=bare,
        query=query,
        method=method,
        raw_body=raw,
        llm_format=provider.native_format if native else "openai",
    )
    spec.extra["format"] = op.format
    spec.extra["operation"] = op.kind
    if native:
        spec.model = provider.native_model(spec)
    else:
        model = body.get("model")
        spec.model = model if isinstance(model, str) else None
        if spec.model is None:
            m = _AZURE_DEPLOYMENT.search(bare)
            spec.model = unquote(m.group(1)) if m else None
    spec.stream = body.get("stream") is True or (
        op.format == "native"
        and (
            bare.endswith(
                (":streamGenerateContent", "/converse-stream", "/invoke-with-response-stream")
            )
            or (
                provider.name == "ollama"
                and route_type is not RouteType.EMBEDDINGS
                and body.get("stream") is not False
            )
        )
    )
    return spec
