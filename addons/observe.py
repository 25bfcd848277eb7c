"""Observe mode: record the LLM calls of unmodified apps, changing nothing.

Point an app at mitmproxy in regular (forward) mode (`HTTPS_PROXY=http://127.0.0.1:8080`,
trusting mitmproxy's CA): each request to a known LLM API host (`addons.llm_hosts`) that
no gateway route handles becomes a call record like a gateway call's (route `observed`),
exported to the config's global log plugins and to the embedded SQLite store.

Nothing is changed on the wire: requests and answers pass byte for byte, and a streamed
answer is forwarded chunk by chunk as it arrives; the stream owner of `addons.streaming`
(passthrough) watches it through the provider's own observer, decoding the response's
content-encoding for the observer only. What a call is observed with is what a
`preserve` route or a native `llm_format` route uses: `stream_observer` and
`read_passthrough` (`parse_passthrough` + `passthrough_finish`), defined here and called
by `AIProxy` too, which pick the provider modules' native parsers (and
`providers.openai_responses` for OpenAI's Responses API): no second parser per format.

The event loop serves every flow: a request or a whole answer larger than
`OFF_LOOP_BYTES` (a long document, images, a batch of embeddings) is decoded and read in
a thread, and a whole answer is parsed once (its parsed body is the record's payload); a
large one with orjson, by the provider's usage reader (`_read_large`): a JSON parser
holds the GIL, so a thread hides decompression but not parsing, and orjson parses a
15 MB batch of embeddings in a quarter of the json module's time.

Cost: the recorder prices a call from `spec.options` as it does a route's calls; for an
observed call those prices come from `llmitm_observe_prices`, else from the built-in
price database (`providers.prices`, genai-prices), looked up by the answer's model, then
the requested one.

Plain routes. A gateway route without ai-proxy proxies its requests to its service's
url unchanged (`addons.router.ServiceProxy`); when such a request is an LLM call, it is
observed the same way, under the route's own name, so that the route's log plugins
(ai-tracing, opik-log, opentelemetry) get a record with provider, model, usage and cost.
Which requests are LLM calls is decided once per flow in `requestheaders`, from the
path the service gets (else the client's path): on a service whose host the host
table knows, by that provider's operations (`llm_hosts.operation`); on any other host,
by the format the path speaks (`llm_hosts.path_operation`: the OpenAI paths are read
as OpenAI's, `/v1/messages` as Anthropic's, `/api/chat` as Ollama's, ...). A call
recognised by its path alone is observed only when its body is an LLM request (a JSON
object naming a model, or with messages, a prompt or an input): a `POST /v1/messages`
of some messaging API stays a plain record.

Options: `llmitm_observe` (on by default: forward traffic and plain routes),
`llmitm_observe_hosts` (`host[:port]=provider` entries added to the built-in table,
`host=off` to drop one), `llmitm_observe_payloads`
(request and answer bodies in the records; on by default, for local debugging),
`llmitm_observe_prices` (`[provider/]model=input/output[/cache_read[/cache_write]]`, USD
per 1M tokens, `model=off`). The list options are repeatable (`--set` once per entry).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from mitmproxy import ctx, exceptions, http
from mitmproxy.utils.asyncio_utils import create_task

import providers
from addons import llm_request
from addons.calls import Call, context_from_headers, now, with_body_context
from addons.config.model import GatewayConfig, Route
from addons.config.plugins import LOG_PLUGINS
from addons.llm_hosts import RESPONSES, HostTable, Operation, operation, path_operation
from addons.streaming import StreamOwner
from providers import openai_responses, prices
from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    Reply,
    RouteType,
    StreamTranslator,
    Usage,
)
from providers.openai import OpenAI
from providers.options import ModelOptions
from providers.prices import PriceTable

log = logging.getLogger("llmitm")

ROUTE_NAME = "observed"

#: bodies larger than this are decoded and read in a thread, off the event loop
OFF_LOOP_BYTES = 1 << 20

#: content types of streamed answers (SSE, NDJSON, AWS event-stream)
_STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/vnd.amazon.eventstream")
#: native operations (path suffixes) whose answer is streamed
_STREAM_OPERATIONS = (
    ":streamGenerateContent",
    ":streamRawPredict",
    "/converse-stream",
    "/invoke-with-response-stream",
)
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
_PATH_MODEL = re.compile(r"/models/([^/:]+):")
_EMPTY_CONFIG = GatewayConfig(source="", routes=[], global_plugins={}, table=None)
#: the sinks that export only LLM calls (records with `ai`)
_LLM_SINKS = ("ai-tracing", "opik-log", "opentelemetry")
#: request fields that make a body an LLM request (besides a model), for calls on plain
#: routes recognised by their path alone
_LLM_FIELDS = frozenset({"messages", "message", "prompt", "input", "contents", "inputs"})
#: flow.metadata: how a plain route's call was recognised, "host" (the service's host is
#: a known LLM API's) or "path" (the path's format alone); absent in forward mode
_ON_ROUTE = "llmitm.observed_route"


# ------------------------------------------------------ shared with preserve routes


def stream_observer(provider: Provider, spec: CallSpec) -> StreamTranslator:
    """The observer of a stream passed through unchanged: the Responses API's reader for
    a Responses call, a native `llm_format`'s own observer, else the provider's stream
    translator (whose output is ignored). `AIProxy._relay` uses it for preserve and
    native routes, observe mode for what it watches."""
    if openai_responses.speaks(spec):
        return openai_responses.ResponsesStream(spec)
    if spec.native:
        return provider.native_stream_observer(spec)
    return provider.stream_translator(spec)


def parse_passthrough(
    provider: Provider, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
) -> Reply:
    """Usage, model and answer of a whole answer passed through unchanged (`AIProxy._send`
    and observe mode). A native answer the native parser found no usage in is read
    once more the way a `preserve` route reads it (Bedrock's InvokeModel: the token
    counts are in response headers)."""
    if openai_responses.speaks(spec):
        return openai_responses.parse(body)
    if spec.native:
        reply = provider.parse_native_response(spec, status, headers, body)
        if reply.usage is None:
            reply.usage = _preserved_usage(provider, spec, status, headers, body)
        return reply
    return provider.parse_response(spec, status, headers, body)


def read_passthrough(
    provider: Provider, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
) -> tuple[Reply, str | None]:
    """A whole answer passed through unchanged, as a call record has it: the reply of
    `parse_passthrough` and the finish reason of `passthrough_finish` (one call, so
    that both run in the same worker thread for a large answer)."""
    reply = parse_passthrough(provider, spec, status, headers, body)
    return reply, passthrough_finish(provider, spec, status, headers, body, reply)


def passthrough_finish(
    provider: Provider,
    spec: CallSpec,
    status: int,
    headers: dict[str, str],
    body: bytes,
    reply: Reply,
) -> str | None:
    """The finish reason of a whole answer read by `parse_passthrough`, in OpenAI chat's
    terms as a translated call records it (end_turn -> stop, tool_use -> tool_calls,
    ...): an OpenAI answer's own, the Responses API's outcome, else the provider's
    translation of its native reason (the native reason itself when it has none)."""
    if openai_responses.speaks(spec):
        return openai_responses.finish_reason(reply.data)
    stated = _native_finish(reply.data)
    if stated is None or spec.route_type is RouteType.EMBEDDINGS or "choices" in reply.data:
        return stated
    return _translated_finish(provider, spec, status, headers, body) or stated


def _native_finish(data: Any) -> str | None:
    """The finish reason an answer states (where the formats put it)."""
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        finish = choices[0].get("finish_reason")
        return finish if isinstance(finish, str) else None
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        finish = candidates[0].get("finishReason")
        return finish if isinstance(finish, str) else None
    for key in ("stop_reason", "stopReason", "finish_reason", "done_reason"):
        if isinstance(data.get(key), str):
            return data[key]
    return None


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
    """The finish reason of a native answer as the provider's translation maps it."""
    route_type = RouteType.CHAT if spec.route_type is RouteType.PRESERVE else spec.route_type
    try:
        reply = provider.parse_response(
            dataclasses.replace(spec, route_type=route_type, llm_format="openai"),
            status,
            headers,
            body,
        )
    except Exception:  # noqa: BLE001 - an answer this translation cannot read
        return None
    choices = reply.data.get("choices") if isinstance(reply.data, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        finish = choices[0].get("finish_reason")
        return finish if isinstance(finish, str) else None
    return None


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Service:
    """What observing a plain route needs of its service: the provider the host table
    gives its host (None: not a known LLM API host) and its url's path."""

    provider: str | None
    path: str


def _service(route: Route, hosts: HostTable) -> _Service | None:
    """The service of a route whose calls are proxied as they are (no ai-proxy, a
    service url), or None."""
    service = route.service
    if "ai-proxy" in route.plugins or service is None or not service.url:
        return None
    try:
        parts = urlsplit(service.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = parts.hostname or ""
    return _Service(hosts.provider_for(host, port) if host else None, parts.path.rstrip("/"))


def _route_operation(service: _Service, method: str, path: str) -> tuple[str, Operation] | None:
    """The provider and operation of `method path` on a plain route's service."""
    if service.provider is None:
        return path_operation(method, path)
    op = operation(service.provider, method, path)
    return (op.provider or service.provider, op) if op is not None else None


def _llm_request(body: Any, spec: CallSpec) -> bool:
    """Whether a body recognised only by its path is an LLM request."""
    return isinstance(body, dict) and (spec.model is not None or not _LLM_FIELDS.isdisjoint(body))


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except ValueError:
        return None


class Observe:
    """Records the calls of LLM API hosts that no route handles, changing nothing."""

    name = "llmitm-observe"

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self.enabled = True
        self.payloads = True
        self.hosts = HostTable()
        self.prices = PriceTable()
        self._route: tuple[GatewayConfig, Route] | None = None
        # plain routes' services by route, and the routes warned about, per config
        self._services: tuple[GatewayConfig | None, dict[int, _Service | None], set[str]] = (
            None,
            {},
            set(),
        )
        self._running = False
        self._prices_loading: asyncio.Task[bool] | None = None

    # ----------------------------------------------------------------- options

    def load(self, loader: Any) -> None:
        loader.add_option(
            "llmitm_observe",
            bool,
            True,
            "Record the calls to known LLM API hosts that no route handles (forward "
            "proxy mode), and the LLM calls of routes without ai-proxy, changing "
            "nothing on the wire.",
        )
        loader.add_option(
            "llmitm_observe_hosts",
            Sequence[str],
            [],
            "Extra LLM API hosts to observe, as host[:port]=provider ('*' stands for "
            "part of a DNS label; host=off stops observing a built-in host). Repeatable.",
        )
        loader.add_option(
            "llmitm_observe_payloads",
            bool,
            True,
            "Keep request and answer bodies in the records of observed calls.",
        )
        loader.add_option(
            "llmitm_observe_prices",
            Sequence[str],
            [],
            "Prices of observed calls in USD per 1M tokens, as "
            "[provider/]model=input/output[/cache_read[/cache_write]] ('*' in the model "
            "stands for any characters; model=off: no price). They win over the built-in "
            "prices (genai-prices). Repeatable.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llmitm_observe_hosts" in updated:
            try:
                self.hosts = HostTable.from_config(
                    ctx.options.llmitm_observe_hosts, providers.registry()
                )
            except ValueError as e:
                raise exceptions.OptionsError(f"llmitm_observe_hosts: {e}") from None
            self._services = (None, {}, set())
        if "llmitm_observe_prices" in updated:
            try:
                self.prices = PriceTable.from_config(
                    ctx.options.llmitm_observe_prices, providers.registry()
                )
            except ValueError as e:
                raise exceptions.OptionsError(f"llmitm_observe_prices: {e}") from None
        if "llmitm_observe" in updated:
            self.enabled = ctx.options.llmitm_observe
        if "llmitm_observe_payloads" in updated:
            self.payloads = ctx.options.llmitm_observe_payloads
        if self._running and "llmitm_store" in updated:
            self._ensure_store()

    def running(self) -> None:
        self._running = True
        self._ensure_store()
        if not prices.builtin_loaded() and self._prices_loading is None:
            # the price database, read off the event loop (the first calls wait for it)
            self._prices_loading = create_task(
                asyncio.to_thread(prices.load_builtin), name="llmitm prices", keep_ref=True
            )

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
        routed = self.gw.calls.get(flow)
        if routed is not None:  # a gateway route handles it (and records it)
            if routed.route is not None and routed.match is not None:
                self._watch_route(flow, routed)
            return
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
            provider = providers.get(op.provider or name)
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
        flow.metadata["llmitm.observed_format"] = op.format
        flow.metadata["llmitm.provider"] = provider.name

    def _watch_route(self, flow: http.HTTPFlow, call: Call) -> None:
        """A route's request: observed when the route proxies it as it is (no
        ai-proxy) and its path is an LLM call's; its record keeps the route's name."""
        config, services, warned = self._services
        if config is not call.config:
            config, services, warned = self._services = (call.config, {}, set())
        route = call.route
        assert route is not None and call.match is not None
        key = id(route)
        try:
            service = services[key]
        except KeyError:
            service = services[key] = _service(route, self.hosts)
        if service is None:
            return  # an ai-proxy route (it records its calls itself), or no service url
        req = flow.request
        method = req.method
        if method != "POST" and method.upper() != "POST":
            return  # LLM calls are POSTs
        upstream = service.path + call.match.upstream_path  # what ServiceProxy will send
        found = _route_operation(service, method, upstream)
        if found is None:
            client = req.path.partition("?")[0]
            if client != upstream:
                # a stripped prefix: the client's path names the API (what the seed's
                # plugin reads)
                found = _route_operation(service, method, client)
            if found is None:
                if route.name not in warned:
                    self._warn_unobserved(call, client, warned)
                return
        name, op = found
        try:
            provider = providers.get(name)
        except KeyError:
            return
        call.provider = provider
        call.log_payloads = self.payloads
        flow.metadata["llmitm.observed"] = op.kind
        flow.metadata["llmitm.observed_format"] = op.format
        flow.metadata["llmitm.provider"] = provider.name
        flow.metadata[_ON_ROUTE] = "path" if service.provider is None else "host"

    @staticmethod
    def _warn_unobserved(call: Call, path: str, warned: set[str]) -> None:
        """Once per route and config: an LLM sink on a plain route got a POST whose path
        is no LLM API's llmitm knows, so that sink will skip its record."""
        assert call.route is not None
        sinks = [
            name
            for name in _LLM_SINKS
            if name in call.plugins
            # ai-tracing sends nothing unless langfuse_enabled (Kong's default: false)
            and getattr(call.plugins[name].config, "langfuse_enabled", True)
        ]
        if not sinks:
            return
        warned.add(call.route.name)
        log.warning(
            "llmitm: %s on route %r: POST %s is not a path of an LLM API llmitm knows "
            "(OpenAI, Anthropic, Cohere, Gemini, Ollama, Bedrock), so its record carries "
            "no model or usage and is not sent to %s (said once per route). For an LLM "
            "server of another API, give the route ai-proxy with route_type: preserve.",
            " and ".join(sinks),
            call.route.name,
            path,
            " or ".join(sinks),
        )

    # The hooks below are plain functions that return a coroutine (which mitmproxy
    # awaits) only when there is something to wait for: a large body read in a thread,
    # the price database still loading. Every other flow costs no coroutine.

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = self._observed(flow)
        if call is None or flow.response is not None:
            return None
        req = flow.request
        op = Operation(
            flow.metadata.get("llmitm.observed_format", "openai"), flow.metadata["llmitm.observed"]
        )
        guessed = flow.metadata.get(_ON_ROUTE) == "path"
        if len(req.raw_content or b"") > OFF_LOOP_BYTES:  # e.g. images or long documents
            return self._read_request_off_loop(flow, call, op, guessed)
        self._requested(flow, call, self._read_request(call, op, req, guessed))
        return None

    async def _read_request_off_loop(
        self, flow: http.HTTPFlow, call: Call, op: Operation, guessed: bool
    ) -> None:
        read = await asyncio.to_thread(self._read_request, call, op, flow.request, guessed)
        self._requested(flow, call, read)

    def _requested(self, flow: http.HTTPFlow, call: Call, read: bool) -> None:
        if not read:  # a plain route's request whose path only looked like an LLM call's
            for key in ("llmitm.observed", "llmitm.observed_format", "llmitm.provider", _ON_ROUTE):
                flow.metadata.pop(key, None)
            call.provider = None
            call.log_payloads = False
            return
        if _ON_ROUTE in flow.metadata:  # where the route's service proxy sends it
            call.upstream_url = flow.request.url
        self._tag_model(flow, call)

    @staticmethod
    def _tag_model(flow: http.HTTPFlow, call: Call) -> None:
        if call.spec is not None and call.spec.model:
            flow.metadata["llmitm.model"] = call.spec.model

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

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = self._observed(flow)
        if call is None or call.spec is None or flow.response is None:
            return None
        resp = flow.response
        call.upstream_ended = resp.timestamp_end or now()
        call.upstream_status = resp.status_code
        if call.translator is None and len(resp.raw_content or b"") > OFF_LOOP_BYTES:
            # a large answer (embeddings, say): decompressing it would hold every other
            # flow up; the flow itself waits for this hook either way
            return self._answer_off_loop(call, resp)
        if call.translator is None:
            self._read(call, resp)
        if not self._prices_ready():
            return self._priced_once_loaded(call)
        self._priced(call)
        return None

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A stream cut off (the client left, the upstream broke): what was seen of it
        is recorded, priced."""
        call = self._observed(flow)
        if call is None or call.spec is None or call.translator is None:
            return None
        if not self._prices_ready():
            return self._priced_once_loaded(call)
        self._priced(call)
        return None

    async def _answer_off_loop(self, call: Call, resp: http.Response) -> None:
        await asyncio.to_thread(self._read, call, resp)
        await self._priced_once_loaded(call)

    def _read(self, call: Call, resp: http.Response) -> None:
        try:
            self._read_answer(call, resp)
        except Exception:  # observing must never break the proxy
            log.exception("llmitm: could not read an observed answer")

    def _prices_ready(self) -> bool:
        loading = self._prices_loading
        return loading is None or loading.done()

    async def _priced_once_loaded(self, call: Call) -> None:
        """The built-in prices are read in a thread at startup: the calls that end
        before it is done wait for it (once; never blocking other flows)."""
        loading = self._prices_loading
        if loading is not None and not loading.done():
            await asyncio.shield(loading)  # (load_builtin never raises: it logs)
        self._priced(call)

    def _priced(self, call: Call) -> None:
        if call.translator is not None:  # a stream: the observer has seen it all
            finish = getattr(call.translator, "finish_reason", None)
            if isinstance(finish, str) and call.finish_reason is None:
                call.finish_reason = finish
        self._price(call)

    # ---------------------------------------------------------------- internals

    def _observed(self, flow: http.HTTPFlow) -> Call | None:
        if "llmitm.observed" not in flow.metadata:
            return None
        call = self.gw.calls.get(flow)
        return call if call is not None and call.route is not None else None

    def _read_request(
        self, call: Call, op: Operation, req: http.Request, guessed: bool = False
    ) -> bool:
        """The observed request: its spec (route type, model, stream), context and
        payload. Runs in a thread for a large body. False, the call left as it was, when
        a request recognised by its path alone (`guessed`) is no LLM request."""
        assert call.provider is not None
        try:
            raw = req.get_content(strict=False) or b""
        except ValueError:
            raw = req.raw_content or b""
        body = _json(raw)
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        spec = observed_spec(call.provider, op, req.method, req.path, data, raw)
        if guessed and not _llm_request(body, spec):
            return False
        call.spec = spec
        call.stream = spec.stream
        call.request_model = spec.model
        call.context = with_body_context(call.context, data)
        if call.log_payloads:
            call.request_payload = body if body is not None else raw.decode("utf-8", "replace")
        call.upstream_started = req.timestamp_end or now()
        return True

    def _read_answer(self, call: Call, resp: http.Response) -> None:
        """A whole answer: usage, model, finish reason and payload, by the code preserve
        routes use (`parse_passthrough`, `passthrough_finish`), parsing the body once.
        Runs in a thread for a large body."""
        assert call.provider is not None and call.spec is not None
        body = resp.get_content(strict=False) or b""
        headers = llm_request.header_dict(resp.headers)
        spec = call.spec
        status = resp.status_code
        adapter = _adapter(call.provider, spec)
        if status >= 400:
            call.fail(adapter.parse_error(status, headers, body), "upstream")
            if call.log_payloads:
                call.response_payload = _payload(body)
            return
        if len(body) > OFF_LOOP_BYTES and not openai_responses.speaks(spec):
            reply = _read_large(adapter, spec, status, headers, body)
            finish = _native_finish(reply.data)
        else:
            try:
                reply, finish = read_passthrough(adapter, spec, status, headers, body)
            except ProviderError:  # not the answer the format expects: read what is there
                reply = adapter.parse_native_response(spec, status, headers, body)
                finish = passthrough_finish(adapter, spec, status, headers, body, reply)
        call.usage = reply.usage
        call.response_model = reply.model
        call.finish_reason = finish
        if call.log_payloads:
            # the parsed answer (the native one: what the client got), not parsed again
            call.response_payload = reply.data if reply.data else _payload(body)

    def _price(self, call: Call) -> None:
        """Prices for the call's cost (the recorder computes it from `spec.options`, as
        for a route's prices): the user's `llmitm_observe_prices`, else the built-in
        ones; none when neither knows the model."""
        if call.provider is None or call.spec is None:
            return
        translator = call.translator
        usage = call.usage or (translator.usage if translator is not None else None)
        prompt = usage.prompt_tokens if usage is not None else 0
        models = [call.response_model, call.request_model]
        found = self.prices.lookup(call.provider.name, models, prompt, call.started_at)
        if found is None and translator is not None:  # the model the stream named
            streamed = translator.assembled().get("model")
            found = self.prices.lookup(call.provider.name, [streamed], prompt, call.started_at)
        if found is not None:
            call.spec.options = found.options()


def _read_large(
    provider: Provider, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
) -> Reply:
    """A large whole answer (a batch of embeddings, say) read from one parse with orjson:
    its usage by the provider's own reader (`usage_from`, what the passthrough parsers
    use), its model, and the token counts of the headers when the body has none. The
    parsers' own `json` parse of a 15 MB answer holds the interpreter (and so every
    other flow) four times as long, a thread or not: the GIL is not released while
    parsing."""
    data = _json(body)
    data = data if isinstance(data, dict) else {}
    usage = provider.usage_from(data)
    if usage is None and spec.native:
        usage = _preserved_usage(provider, spec, status, headers, b"{}")
    model = data.get("model") or data.get("modelVersion") or spec.model
    return Reply(body, data, usage, model if isinstance(model, str) else None)


def _payload(body: bytes) -> Any:
    value = _json(body)
    return value if value is not None else body.decode("utf-8", "replace")


def _adapter(provider: Provider, spec: CallSpec) -> Provider:
    """Who reads the traffic: the provider itself, but for OpenAI-format calls on hosts
    whose provider is not an OpenAI adapter (Ollama's /v1, Mistral, the OpenAI-compatible
    endpoints of Gemini or Anthropic), OpenAI's own adapter."""
    if spec.extra.get("format") == "openai" and not isinstance(provider, OpenAI):
        return providers.get("openai")
    return provider


def _observer(call: Call) -> StreamTranslator:
    assert call.provider is not None and call.spec is not None
    return stream_observer(_adapter(call.provider, call.spec), call.spec)


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
        if spec.model is None:  # in the path (Claude on Vertex AI)
            m = _PATH_MODEL.search(bare)
            spec.model = unquote(m.group(1)) if m else None
    else:
        model = body.get("model")
        spec.model = model if isinstance(model, str) else None
        if spec.model is None:
            m = _AZURE_DEPLOYMENT.search(bare)
            spec.model = unquote(m.group(1)) if m else None
    spec.stream = body.get("stream") is True or (
        op.format == "native"
        and (
            bare.endswith(_STREAM_OPERATIONS)
            or (
                provider.name == "ollama"
                and route_type is not RouteType.EMBEDDINGS
                and body.get("stream") is not False
            )
        )
    )
    return spec
