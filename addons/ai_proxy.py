"""Kong's ai-proxy plugin: OpenAI-format requests in, the configured provider upstream.

For a request on a route with ai-proxy, in the `request` hook: read and check the body,
apply Kong's model rules and the route's options, let the provider's adapter build the
native request, add the provider's auth, and send it with the gateway's own client
(see `addons.upstream` for why). A whole answer is translated and set as the flow's
response; a stream is handed to mitmproxy through the relay and translated chunk by
chunk by the stream owner installed in `responseheaders`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mitmproxy import http
from mitmproxy.connection import ConnectionState

import providers
from addons import llm_request
from addons.calls import Call, auth_names, configured_model, now, with_body_context
from addons.config.plugins import AIProxyConfig
from addons.errors import from_provider_error, make_response
from addons.observe import read_passthrough, stream_observer
from addons.state import Gateway
from addons.streaming import StreamOwner
from addons.upstream import HOP_BY_HOP, Timeouts, UpstreamResponse, upstream_failure
from providers import sse
from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    Reply,
    RouteType,
    StreamTranslator,
    UpstreamRequest,
    generic_error,
)
from providers.openai import OpenAIStream

log = logging.getLogger("llmitm")

# Client headers never forwarded upstream.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "expect",
    "cookie",
}
# Upstream headers never passed back to the client.
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "set-cookie", "alt-svc"}
# Credentials a client may send; dropped when the route authenticates by itself.
_CLIENT_AUTH = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})

RELAY_MARK = "x-llmitm-relay"
# Whole answers larger than this are parsed in a worker thread (providers' parsers are
# pure): a 100 MB embeddings answer must not stall every other flow.
_PARSE_OFF_LOOP_BYTES = 1 << 20

T = TypeVar("T")

# How often the clients of calls waiting for their upstream are checked (seconds).
CLIENT_CHECK_INTERVAL = 0.2


class _ClientLeft(Exception):
    """The client closed its connection while the gateway waited for the upstream."""


def _ms(seconds: float | None) -> int:
    return max(0, round((seconds or 0.0) * 1000))


class AIProxy:
    name = "llmitm-ai-proxy"

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        # templated model blocks, by config identity (render per request only if needed)
        self._templated: dict[int, bool] = {}
        # calls waiting for their upstream's answer: the hook task -> its flow, checked
        # every CLIENT_CHECK_INTERVAL for a client that left (see _watched)
        self._waiting: dict[asyncio.Task[Any], http.HTTPFlow] = {}
        self._watch: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------------- hooks

    def _route_conf(self, flow: http.HTTPFlow) -> tuple[Call | None, AIProxyConfig | None]:
        call = self.gw.calls.get(flow)
        if call is None or call.route is None or flow.response is not None:
            return call, None
        return call, call.plugin("ai-proxy")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call, conf = self._route_conf(flow)
        if conf is None or call is None:
            return
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > conf.max_request_body_size:
            self._reply_error(
                flow,
                call,
                conf,
                llm_request.too_large(int(length), conf.max_request_body_size),
                "gateway",
            )

    async def request(self, flow: http.HTTPFlow) -> None:
        call, conf = self._route_conf(flow)
        if conf is None or call is None:
            return
        try:
            await self._proxy(flow, call, conf)
        except ProviderError as e:
            self._reply_error(flow, call, conf, e, call.error_source or "gateway")
        except _ClientLeft:
            # no answer: mitmproxy finds the client gone and fires `error` (the record)
            log.debug("llmitm: the client left before the upstream answered")
        except Exception:
            log.exception(
                "llmitm: ai-proxy failed on %s %s", flow.request.method, flow.request.path
            )
            err = ProviderError(500, "internal gateway error", "api_error", "gateway_error")
            self._reply_error(flow, call, conf, err, "gateway")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or call.relay_token is None or flow.response is None:
            return
        if flow.response.headers.pop(RELAY_MARK, None) is None:
            return
        if call.client_request is not None:  # show the client's request again in the flow
            url, headers, body = call.client_request
            flow.request.url = url
            flow.request.headers = headers
            flow.request.raw_content = body
        assert call.translator is not None
        passthrough = call.spec is not None and _passthrough(call.spec)
        flow.response.stream = StreamOwner(call, call.translator, passthrough)

    # ------------------------------------------------------------------ the call

    async def _proxy(self, flow: http.HTTPFlow, call: Call, conf: AIProxyConfig) -> None:
        raw = llm_request.body_bytes(flow.request)
        if len(raw) > conf.max_request_body_size:
            raise llm_request.too_large(len(raw), conf.max_request_body_size)
        # a key the client sends under the route's auth names never reaches the record
        # (the router adds them too; a consumer's own ai-proxy may name others)
        call.secret_names.update(auth_names(conf))
        provider = providers.get(conf.model.provider)
        call.provider = provider
        route_type = conf.route_type
        model_cfg = self._model(conf, flow, call)

        native = conf.llm_format != "openai"
        if call.body is not None:  # parsed (perhaps rewritten) by a policy before us
            body = call.body
            if not native and route_type is not RouteType.PRESERVE:
                llm_request.validate(route_type, body)
        elif route_type is RouteType.PRESERVE:
            try:
                body = llm_request.parse_json(raw)
            except ProviderError:
                body = {}
        else:
            body = llm_request.parse_json(raw)
            if not native:
                llm_request.validate(route_type, body)

        assert call.match is not None
        options = body.get("stream_options")
        spec = CallSpec(
            route_type=route_type,
            body=body,
            model=None,
            options=model_cfg.options,
            stream=False,
            client_wants_usage=isinstance(options, dict) and options.get("include_usage") is True,
            path=call.match.upstream_path,
            query=flow.request.path.partition("?")[2],
            method=flow.request.method,
            raw_body=raw,
            llm_format=conf.llm_format,
        )
        call.spec = spec
        call.body = body
        call.context = with_body_context(call.context, body)
        call.stream = body.get("stream") is True  # what was asked, until decided below
        call.log_payloads = conf.logging.log_payloads
        call.log_statistics = conf.logging.log_statistics
        if call.log_payloads:
            call.request_payload = body if body else raw.decode("utf-8", "replace")
        if native:  # the client speaks the provider's API: pass it through, observe it
            asked = provider.native_model(spec)
            spec.model = llm_request.resolve_model(
                RouteType.PRESERVE, model_cfg.name, {"model": asked}
            )
            up = provider.build_native_request(spec)
            spec.stream = up.stream
            if spec.stream and conf.response_streaming == "deny":
                raise llm_request.bad_request("response streaming is not enabled for this LLM")
        else:
            spec.model = llm_request.resolve_model(route_type, model_cfg.name, body)
            spec.stream = self._streams(flow, conf, route_type, body)
            if route_type is not RouteType.PRESERVE:
                spec.body = llm_request.apply_options(
                    route_type, llm_request.strip_gateway_fields(body), model_cfg
                )
            up = provider.build_request(spec)
            spec.stream = up.stream  # a preserved request may stream by the API's default

        call.request_model = spec.model
        call.stream = spec.stream
        self._authenticate(up, conf, flow, provider)
        kind = provider.credential_kind(conf.auth, model_cfg.options)
        if kind is not None:
            credentials = await self.gw.credentials.get(kind, conf.auth)
            provider.sign(up, spec, credentials)
        call.upstream_url = up.url
        flow.metadata["llmitm.provider"] = provider.name
        flow.metadata["llmitm.model"] = spec.model
        await self._send(flow, call, conf, provider, spec, up)

    @staticmethod
    def _streams(
        flow: http.HTTPFlow, conf: AIProxyConfig, route_type: RouteType, body: dict[str, Any]
    ) -> bool:
        """Whether the answer is streamed to the client (Kong's response_streaming)."""
        if route_type is RouteType.EMBEDDINGS:
            return False
        stream = bool(body.get("stream")) or conf.response_streaming == "always"
        if stream and conf.response_streaming == "deny":
            raise llm_request.bad_request(
                "response streaming is not enabled for this LLM", "stream"
            )
        if route_type is RouteType.PRESERVE:
            stream = stream or "text/event-stream" in flow.request.headers.get("accept", "")
        return stream

    def _model(self, conf: AIProxyConfig, flow: http.HTTPFlow, call: Call) -> Any:
        templated = self._templated.get(id(conf))
        if templated is None:
            templated = self._templated[id(conf)] = llm_request.has_templates(conf.model)
        if not templated:
            return conf.model
        assert call.match is not None
        query = dict(parse_qsl(flow.request.path.partition("?")[2]))
        lookup = {
            "headers": flow.request.headers,
            "uri_captures": call.match.captures,
            "query_params": query,
        }
        return llm_request.render_model(conf.model, lookup)

    def _authenticate(
        self, up: UpstreamRequest, conf: AIProxyConfig, flow: http.HTTPFlow, provider: Provider
    ) -> None:
        """Forward the client's headers, then set the route's provider auth (Kong's rules:
        the configured value wins unless `allow_override` and the client sent one)."""
        auth = conf.auth
        own_auth = bool(auth.header_name or auth.param_name) or (
            provider.credential_kind(auth, conf.model.options) is not None
        )
        drop_auth = _CLIENT_AUTH | set(provider.auth_headers) if own_auth else frozenset()
        override_name = auth.header_name.lower() if auth.header_name else None
        headers: dict[str, str] = {}
        for low, value in llm_request.header_dict(flow.request.headers).items():
            if low in _DROP_REQUEST or low.startswith("x-llmitm"):
                continue
            if low in drop_auth and not (auth.allow_override and low == override_name):
                continue
            headers[low] = value
        headers.update(up.headers)
        for name, value in up.default_headers.items():
            headers.setdefault(name, value)
        if (
            override_name
            and auth.header_value
            and not (auth.allow_override and override_name in headers)
        ):
            headers[override_name] = auth.header_value
        up.headers = headers
        if own_auth and provider.auth_params:  # a key the client put in the query
            keep = auth.param_name if auth.allow_override else None
            up.url = _without_params(up.url, set(provider.auth_params) - {keep})
        if auth.param_name and auth.param_value:
            if auth.param_location == "query":
                client_query = dict(parse_qsl(flow.request.path.partition("?")[2]))
                value = auth.param_value
                if auth.allow_override and auth.param_name in client_query:
                    value = client_query[auth.param_name]
                up.url = llm_request.set_query_param(up.url, auth.param_name, value)
            elif auth.param_location == "body":
                up.body = llm_request.set_body_param(
                    up.body, auth.param_name, auth.param_value, auth.allow_override
                )

    async def _send(
        self,
        flow: http.HTTPFlow,
        call: Call,
        conf: AIProxyConfig,
        provider: Provider,
        spec: CallSpec,
        up: UpstreamRequest,
    ) -> None:
        timeouts = Timeouts.of(call.route)
        call.upstream_started = now()
        try:
            resp = await self._watched(flow, call, self.gw.upstream.send(up, timeouts))
        except ProviderError:
            call.upstream_ended = now()
            call.error_source = "upstream"
            raise
        call.upstream_headers = now()
        call.upstream_status = resp.status
        upstream_headers = {
            k.lower(): v for k, v in resp.headers if k.lower() not in _DROP_RESPONSE
        }
        passthrough = _passthrough(spec)

        if resp.status >= 400:
            call.upstream_ended = call.upstream_headers
            try:
                err = provider.parse_error(resp.status, resp.header_dict(), resp.body)
            except Exception:  # an adapter's bug must not turn the upstream's status into 500
                log.exception("llmitm: %s could not read an error answer", provider.name)
                err = generic_error(provider.name, resp.status, resp.header_dict(), resp.body)
            call.fail(err, "upstream")
            if passthrough:  # untouched, as the upstream sent it
                flow.response = make_response(
                    resp.status, resp.body, self._headers(call, conf, upstream_headers)
                )
            else:
                upstream_headers.pop("content-type", None)
                flow.response = from_provider_error(
                    err, self._headers(call, conf, upstream_headers)
                )
            return

        if up.stream:
            observer = stream_observer(provider, spec)  # shared with observe mode
            if _is_stream(provider, resp.header_dict()):
                self._relay(flow, call, conf, resp, upstream_headers, timeouts, observer)
                return
            # A JSON body: a stream in Google's JSON-array form, or an upstream that
            # ignored `stream` and sent the whole answer (read it, then answer as the
            # client asked).
            head, rest = await self._read_json_start(flow, call, resp, timeouts)
            if head.lstrip()[:1] == b"[":  # the array, streamed on as it comes
                array = UpstreamResponse(
                    resp.status, resp.headers, chunks=_chained(head, rest), aclose=resp.aclose
                )
                self._relay(flow, call, conf, array, upstream_headers, timeouts, observer)
                return
            body = await self._read_whole(flow, call, resp, rest, timeouts, head)
            resp = UpstreamResponse(resp.status, resp.headers, body)
            if not passthrough:
                self._stream_whole_answer(flow, call, conf, resp, upstream_headers, timeouts)
                return
            # preserve and native routes: the client gets the upstream's answer as it is

        call.upstream_ended = now()
        args = (provider, spec, resp.status, resp.header_dict(), resp.body)
        try:
            # the same reading as observe mode's (one code path for native answers); a
            # large answer (a batch of embeddings) is read off the event loop
            if len(resp.body) > _PARSE_OFF_LOOP_BYTES:
                reply, finish = await asyncio.to_thread(read_passthrough, *args)
            else:
                reply, finish = read_passthrough(*args)
        except ProviderError:
            call.error_source = "upstream"
            raise
        except RecursionError:
            call.error_source = "upstream"
            raise ProviderError(
                502, f"{provider.name}: the upstream answer is nested too deeply to read"
            ) from None
        call.usage = reply.usage
        call.response_model = reply.model
        call.finish_reason = finish
        if call.log_payloads:
            call.response_payload = reply.data
        if not passthrough:
            upstream_headers["content-type"] = "application/json"
        flow.response = make_response(
            resp.status, reply.body, self._headers(call, conf, upstream_headers)
        )

    async def _read_json_start(
        self, flow: http.HTTPFlow, call: Call, resp: UpstreamResponse, timeouts: Timeouts
    ) -> tuple[bytes, AsyncIterator[bytes]]:
        """The first bytes of a JSON body opened as a stream (enough to see whether it
        is an array or an object), and the iterator over the rest."""
        chunks = resp.chunks.__aiter__()

        async def start() -> bytes:
            head = b""
            while not head.strip():
                try:
                    head += await chunks.__anext__()
                except StopAsyncIteration:
                    break
            return head

        try:
            return await self._watched(flow, call, start()), chunks
        except _ClientLeft:
            await resp.aclose()
            raise
        except Exception as e:  # noqa: BLE001 - any transport failure while reading
            await resp.aclose()
            raise self._read_failure(call, e, timeouts) from None

    async def _read_whole(
        self,
        flow: http.HTTPFlow,
        call: Call,
        resp: UpstreamResponse,
        rest: AsyncIterator[bytes],
        timeouts: Timeouts,
        head: bytes = b"",
    ) -> bytes:
        """`head` and the rest of a body that was opened as a stream, to its end."""

        async def read() -> bytes:
            return head + b"".join([chunk async for chunk in rest])

        try:
            return await self._watched(flow, call, read())
        except _ClientLeft:
            raise
        except Exception as e:  # noqa: BLE001 - any transport failure while reading
            raise self._read_failure(call, e, timeouts) from None
        finally:
            await resp.aclose()

    @staticmethod
    def _read_failure(call: Call, exc: BaseException, timeouts: Timeouts) -> ProviderError:
        call.upstream_ended = now()
        call.error_source = "upstream"
        return upstream_failure(exc, call.upstream_url or "", timeouts)

    def _stream_whole_answer(
        self,
        flow: http.HTTPFlow,
        call: Call,
        conf: AIProxyConfig,
        resp: UpstreamResponse,
        upstream_headers: dict[str, str],
        timeouts: Timeouts,
    ) -> None:
        """A whole answer to a streamed request, sent to the client as the stream it
        asked for: the content in one chunk, the finish chunk, the usage chunk if asked,
        [DONE]. It goes through the relay and the stream owner like any stream, so the
        record, the stream filters of the policies and the headers are the same."""
        assert call.provider is not None and call.spec is not None
        spec = call.spec
        call.upstream_ended = now()
        try:
            reply = call.provider.parse_response(
                dataclasses.replace(spec, stream=False), resp.status, resp.header_dict(), resp.body
            )
        except ProviderError as e:
            call.error_source = "upstream"
            raise ProviderError(
                502,
                f"the upstream answered the streamed request with a whole answer the "
                f"gateway cannot read: {e.message}",
                "api_error",
                "bad_upstream_response",
            ) from None
        call.usage = reply.usage
        call.response_model = reply.model
        events = whole_answer_as_sse(spec.route_type, reply)
        whole = UpstreamResponse(resp.status, resp.headers, chunks=_iterate(events))
        upstream_headers.pop("content-type", None)
        self._relay(flow, call, conf, whole, upstream_headers, timeouts, OpenAIStream(spec))

    async def _watched(self, flow: http.HTTPFlow, call: Call, aw: Awaitable[T]) -> T:
        """`await aw`, given up (the upstream request closed) as soon as the client closes
        its connection: mitmproxy only notices a client that left when the hook returns,
        and without this the gateway would wait out the read_timeout of an upstream
        still generating an answer nobody will read."""
        task = asyncio.current_task()
        conn = flow.client_conn
        if task is None or flow.is_replay or not conn.state & ConnectionState.CAN_READ:
            return await aw  # no live client connection to watch
        self._waiting[task] = flow
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(
                CLIENT_CHECK_INTERVAL, self._check_clients
            )
        try:
            return await aw
        except asyncio.CancelledError:
            # ours (the client left) unless something else cancels the hook too
            if not call.client_aborted or task.uncancel() > 0:
                raise
            raise _ClientLeft from None
        finally:
            self._waiting.pop(task, None)

    def _check_clients(self) -> None:
        """Cancel the waits of calls whose client closed its connection (EOF read:
        mitmproxy drops such a client's answer anyway)."""
        self._watch = None
        for task, flow in list(self._waiting.items()):
            if flow.client_conn.state & ConnectionState.CAN_READ:
                continue
            del self._waiting[task]
            call = self.gw.calls.get(flow)
            if call is None:
                continue
            call.client_aborted = True
            call.fail(
                ProviderError(
                    499,
                    "the client closed its connection before the upstream answered",
                    "client_error",
                    "client_disconnected",
                ),
                "client",
            )
            task.cancel()
        if self._waiting:
            self._watch = asyncio.get_running_loop().call_later(
                CLIENT_CHECK_INTERVAL, self._check_clients
            )

    def _relay(
        self,
        flow: http.HTTPFlow,
        call: Call,
        conf: AIProxyConfig,
        resp: UpstreamResponse,
        upstream_headers: dict[str, str],
        timeouts: Timeouts,
        translator: StreamTranslator,
    ) -> None:
        assert call.provider is not None and call.spec is not None
        spec = call.spec
        call.translator = translator
        url = call.upstream_url or ""

        def on_end(exc: BaseException | None) -> None:
            if call.upstream_ended is None:
                call.upstream_ended = now()
            if exc is None:
                return
            if isinstance(exc, ConnectionError):
                call.client_aborted = True
            else:
                call.stream_error = upstream_failure(exc, url, timeouts)
                call.fail(call.stream_error, "upstream")

        headers = self._headers(call, conf, upstream_headers)
        if not _passthrough(spec):
            headers["content-type"] = "text/event-stream"
            headers.setdefault("cache-control", "no-cache")
        headers[RELAY_MARK] = "1"
        relay = self.gw.upstream.relay
        token = relay.register(resp.status, list(headers.items()), resp.chunks, resp.aclose, on_end)
        call.relay_token = token
        call.client_request = (
            flow.request.url,
            flow.request.headers.copy(),
            flow.request.raw_content,
        )
        flow.request.url = relay.url(token)
        flow.request.headers = http.Headers(host=f"127.0.0.1:{relay.port}", content_length="0")
        flow.request.raw_content = b""

    # ------------------------------------------------------------------ answers

    def _headers(self, call: Call, conf: AIProxyConfig, base: dict[str, str]) -> dict[str, str]:
        headers = dict(base)
        upstream = (call.upstream_ended or call.upstream_headers or now()) - (
            call.upstream_started or now()
        )
        total = now() - call.started_at
        headers["x-llmitm-upstream-latency"] = str(_ms(upstream))
        headers["x-llmitm-proxy-latency"] = str(_ms(total - upstream))
        if conf.model_name_header:
            # the model the call was sent with (or is configured for: an error before
            # the request was read), the same on whole and streamed answers; the
            # model that answered is in the body
            model = call.request_model or configured_model(conf) or call.response_model
            if model:
                provider = call.provider.name if call.provider else conf.model.provider
                headers["x-llm-model"] = f"{provider}/{model}"
        return headers

    def _reply_error(
        self,
        flow: http.HTTPFlow,
        call: Call,
        conf: AIProxyConfig,
        err: ProviderError,
        source: str,
    ) -> None:
        call.fail(err, source)
        flow.response = from_provider_error(err, self._headers(call, conf, {}))


def _without_params(url: str, names: set[str]) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _is_stream(provider: Provider, headers: dict[str, str]) -> bool:
    """Whether a 2xx answer to a streamed request is a stream: one of the provider's
    stream types, or anything but a plain JSON body (which an upstream that ignored
    `stream` sends: it holds the whole answer)."""
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    return media != "application/json" or media in provider.stream_content_types


async def _chained(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def whole_answer_as_sse(route_type: RouteType, reply: Reply) -> list[bytes]:
    """A whole OpenAI answer (chat or completions) as OpenAI's stream of it: one chunk
    with each choice's content, one with the finish reasons, the usage chunk, [DONE]."""
    data = reply.data
    completions = route_type is RouteType.COMPLETIONS
    head = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
    head["object"] = "text_completion" if completions else "chat.completion.chunk"
    content: list[dict[str, Any]] = []
    finish: list[dict[str, Any]] = []
    for position, choice in enumerate(data.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        reason = choice.get("finish_reason") or "stop"
        if completions:
            content.append(
                {
                    "index": index,
                    "text": choice.get("text") or "",
                    "logprobs": choice.get("logprobs"),
                    "finish_reason": None,
                }
            )
            finish.append({"index": index, "text": "", "logprobs": None, "finish_reason": reason})
            continue
        message = choice.get("message")
        delta: dict[str, Any] = {"role": "assistant"}
        for key, value in message.items() if isinstance(message, dict) else ():
            if key == "tool_calls" and isinstance(value, list):
                value = [
                    {"index": i, **call} for i, call in enumerate(value) if isinstance(call, dict)
                ]
            if value is not None:
                delta[key] = value
        entry: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if choice.get("logprobs") is not None:
            entry["logprobs"] = choice["logprobs"]
        content.append(entry)
        finish.append({"index": index, "delta": {}, "finish_reason": reason})
    events = [sse.encode({**head, "choices": content}), sse.encode({**head, "choices": finish})]
    usage = reply.usage.to_openai() if reply.usage is not None else data.get("usage")
    if usage:  # the stream owner drops it again if the client did not ask for it
        events.append(sse.encode({**head, "choices": [], "usage": usage}))
    events.append(sse.DONE)
    return events


def _passthrough(spec: CallSpec) -> bool:
    """The client gets the upstream's own bytes (preserve routes, native llm_format)."""
    return spec.route_type is RouteType.PRESERVE or spec.native
