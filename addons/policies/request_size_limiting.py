"""Kong's request-size-limiting: refuse request bodies over `allowed_payload_size`.

With a Content-Length, the decision is made in `requestheaders` and the client gets its
413 at once: the body is neither buffered nor sent anywhere. A chunked body (no
Content-Length) is counted as it streams in and refused the moment it crosses the limit;
under the limit it is reassembled and the request goes on as if mitmproxy had buffered
it (ai-proxy, the prompt plugins and every other plugin see the whole body).

How, in mitmproxy 12.2. mitmproxy either buffers a request body whole before the
`request` hook (and a response an addon set in `requestheaders` is only sent after that),
or, when `flow.request.stream` is set in `requestheaders`, streams it to an upstream
connection it opens right away, and then takes the response from that connection
whatever an addon set in `request`. Neither lets a plugin stop a body halfway and still
let ai-proxy answer a body that stays under the limit. So the plugin gives such a flow a
stand-in upstream, the `BodyGate`: a loopback HTTP/1.1 server in this process. mitmproxy
streams the body to it through `HeldBody`, which keeps the bytes (up to the limit) and
passes none on. Over the limit, the gate answers the 413 at once; mitmproxy reads the rest
of the body and drops it. At the end of a body under the limit, `HeldBody` puts the
client's request back with its body before the `request` hooks run; mitmproxy tells the
gate the body ended only after those hooks, and the gate then answers with the flow's
outcome: the response an addon set (ai-proxy's answer, a plugin's refusal), or, when
the flow is to be forwarded (ai-proxy's stream relay, a plain service route), the
upstream's answer, fetched with the gateway's own HTTP client.

A refusal decided in `requestheaders` is a response set there, so the plugins after
this one skip the request as usual; the gate takes it over at the moment mitmproxy reads
`flow.request.stream` to choose between buffering and streaming (once, after every
`requestheaders` hook): `HeldBody.__bool__`.

Where the gate cannot be used (an HTTP/2 body without Content-Length, an upstream-proxy
mode), mitmproxy buffers the body and the limit is applied once it is complete, as Kong
does: the upstream still never sees it. mitmproxy's own `body_size_limit` option caps
what it ever buffers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from http import HTTPStatus
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from addons.policies.base import PolicyAddon, consumer_pending, deny, logged_url
from providers.base import ProviderError, UpstreamRequest, error_type_for
from providers.options import Strict

# mitmproxy, and the modules that import it or aiohttp, are imported where they are
# used: the config loader imports this module to learn the plugin's config
if TYPE_CHECKING:
    from mitmproxy import http

    from addons.calls import Call
    from addons.config.model import GatewayConfig
    from addons.state import Gateway

log = logging.getLogger("llmitm")

NAME = "request-size-limiting"
PRIORITY = 951
CONSUMER_SCOPE = True

#: bytes per unit (Kong's: binary kilo- and megabytes)
UNITS = {"megabytes": 1 << 20, "kilobytes": 1 << 10, "bytes": 1}

MESSAGE = "Request size limit exceeded"
LENGTH_REQUIRED = "A valid Content-Length header is required"
CODE = "request_too_large"

# A held flow mitmproxy never connects to the gate for is dropped after this long.
CLAIM_TIMEOUT = 30.0


class Config(Strict):
    """Kong's request-size-limiting config."""

    allowed_payload_size: int = Field(
        128, ge=0, description="Largest request body allowed, in size_unit (default 128)."
    )
    size_unit: Literal["megabytes", "kilobytes", "bytes"] = Field(
        "megabytes",
        description="Unit of allowed_payload_size: megabytes (2^20 bytes), kilobytes "
        "(2^10 bytes) or bytes.",
    )
    require_content_length: bool = Field(
        False,
        description="Refuse (411) a request that has neither a valid Content-Length nor "
        "a chunked body.",
    )

    @property
    def limit(self) -> int:
        """The largest body allowed, in bytes."""
        return self.allowed_payload_size * UNITS[self.size_unit]


def content_length(headers: http.Headers) -> int | None:
    """The request's Content-Length when it is a valid number."""
    value = headers.get("content-length")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def is_chunked(headers: http.Headers) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def refusal_status(headers: http.Headers) -> int:
    """Kong's status for a body over the limit: 417 to a client that waits for
    `100 Continue` before sending it, else 413."""
    return 417 if headers.get("expect", "").strip().lower() == "100-continue" else 413


def _refusal(call: Call, status: int = 413) -> http.Response:
    from addons.errors import from_provider_error

    err = ProviderError(status, MESSAGE, error_type_for(status), CODE)
    call.fail(err, "gateway")
    return from_provider_error(err)


def body_gate(gateway: Gateway) -> BodyGate:
    """The gateway's BodyGate, one for every plugin that answers before the body is
    read (this one; rate-limiting's refusals); closed by this plugin's `done`."""
    gate = getattr(gateway, "body_gate", None)
    if gate is None:
        gate = BodyGate(gateway)
        gateway.body_gate = gate  # type: ignore[attr-defined]
    return gate


#: a refusal decided on the request's headers goes out at once, without the body being
#: read, when the body is at least this large (or chunked, or awaited with
#: `Expect: 100-continue`); a smaller one arrives with the headers or right after them,
#: and reading it is cheaper than the gate's loopback connection
ANSWER_EARLY_FROM = 64 * 1024


async def answer_before_body(gateway: Gateway, flow: http.HTTPFlow, call: Call) -> None:
    """Send the response a `requestheaders` hook has just set (a refusal) at once,
    instead of after mitmproxy has read the whole body (what it does with a response set
    in `requestheaders`): the client does not upload a body that is not wanted."""
    req = flow.request
    held = req.stream
    if isinstance(held, HeldBody):  # this plugin counts the body already: refuse through it
        if held.refusal is None:
            held.refusal = flow.response
            held.refused.set()
        return
    expect = req.headers.pop("expect", None)  # no 100 Continue for an unwanted body
    length = content_length(req.headers)
    if not (expect or is_chunked(req.headers) or (length or 0) >= ANSWER_EARLY_FROM):
        return
    if flow.server_conn.via is not None:  # upstream-proxy mode: the gate is not reachable
        return
    gate = body_gate(gateway)
    try:
        await gate.start()
    except OSError:
        log.exception("llmitm: the body gate could not start")
        return
    req.stream = HeldBody(gate, flow, call, None)


def restore_client_request(flow: http.HTTPFlow) -> None:
    """In `responseheaders` of a flow refused through the gate while its body still
    streams in: the flow shows (and the record keeps) the client's request again, not
    the gate's stand-in."""
    held = flow.request.stream
    if isinstance(held, HeldBody):  # (not bool(): that is mitmproxy's question)
        held.restore()


class Policy(PolicyAddon):
    """Refuses request bodies over the limit (Kong's request-size-limiting)."""

    name = "llmitm-request-size-limiting"
    plugin = NAME

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.gate = body_gate(gateway)
        # config -> route id -> the largest limit any consumer can have there
        self._largest: weakref.WeakKeyDictionary[GatewayConfig, dict[int, int]] = (
            weakref.WeakKeyDictionary()
        )

    def done(self) -> None:
        self.gate.close()

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        req = flow.request
        limit = conf.limit
        pending = consumer_pending(call)
        if pending:  # key-auth reads the body: the consumer's limit, if any, is not known yet
            limit = self._largest_limit(call, conf)
        length = content_length(req.headers)
        if length is not None:
            if length > limit:
                status = refusal_status(req.headers)
                # no "100 Continue" from mitmproxy: the client need not send the body
                req.headers.pop("expect", None)
                deny(flow, call, status, MESSAGE, code=CODE)
                await self._hold(flow, call, None)  # answer now, not once the body is in
            return
        chunked = is_chunked(req.headers)
        if conf.require_content_length and not chunked and not pending:
            deny(flow, call, 411, LENGTH_REQUIRED, code="length_required")
            return
        if chunked:
            await self._hold(flow, call, limit)

    def request(self, flow: http.HTTPFlow) -> None:
        # The body is complete: apply the limit in force now (key-auth may since have
        # named a consumer with a limit of its own) to what arrived, also for bodies
        # nobody could count on the way (HTTP/2 without Content-Length).
        call, conf = self.active(flow)
        if call is None:
            return
        req = flow.request
        if (
            conf.require_content_length
            and content_length(req.headers) is None
            and not is_chunked(req.headers)
        ):
            deny(flow, call, 411, LENGTH_REQUIRED, code="length_required")
        elif len(req.raw_content or b"") > conf.limit:
            deny(flow, call, 413, MESSAGE, code=CODE)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        restore_client_request(flow)

    def _largest_limit(self, call: Call, conf: Config) -> int:
        """The limit to count against before the consumer is known: the largest of the
        route's and of every consumer's own on this route (the exact one is applied once
        the body is in)."""
        routes = self._largest.setdefault(call.config, {})
        found = routes.get(id(call.route))
        if found is None:
            found = conf.limit
            for consumer in call.config.consumers:
                own = call.config.plugins_for(call.route, consumer).get(NAME)
                if own is not None:
                    found = max(found, own.config.limit)
            routes[id(call.route)] = found
        return found

    async def _hold(self, flow: http.HTTPFlow, call: Call, limit: int | None) -> None:
        """Count the body as it streams in (limit None: refused already, drop it)."""
        if flow.server_conn.via is not None:  # upstream-proxy mode: the gate is not reachable
            return
        try:
            await self.gate.start()
        except OSError:
            log.exception("llmitm: request-size-limiting could not start its gate")
            return
        flow.request.stream = HeldBody(self.gate, flow, call, limit)


class HeldBody:
    """`flow.request.stream` of a request whose body is counted as it arrives.

    mitmproxy calls it with each chunk of the body and once with `b""` at its end; it
    returns `[]`, so nothing reaches the gate but the end of the body. It must not raise
    or block.
    """

    __slots__ = (
        "gate",
        "flow",
        "call",
        "limit",
        "refusal",
        "chunks",
        "size",
        "client",
        "refused",
        "attached",
    )

    def __init__(self, gate: BodyGate, flow: http.HTTPFlow, call: Call, limit: int | None) -> None:
        self.gate = gate
        self.flow: http.HTTPFlow | None = flow
        self.call: Call | None = call
        self.limit = limit
        # the answer when the body is refused: set in requestheaders, or when it crosses
        # the limit
        self.refusal: http.Response | None = flow.response if limit is None else None
        self.chunks: list[bytes] = []
        self.size = 0
        self.client: http.Request | None = None  # the client's request, while held
        self.refused = asyncio.Event()
        self.attached: bool | None = None

    def __bool__(self) -> bool:
        # mitmproxy reads `flow.request.stream` once, after every requestheaders hook,
        # to choose between streaming and buffering the body: the moment to hand the
        # flow to the gate
        if self.attached is None:
            self.attached = self.gate.attach(self)
        return self.attached

    def __call__(self, data: bytes) -> list[bytes]:
        if self.flow is None:  # released: the gate has answered
            return []
        try:
            if data:
                if self.refusal is None:
                    self.size += len(data)
                    assert self.limit is not None
                    if self.size > self.limit:
                        self.chunks.clear()
                        self.refusal = _refusal(self.call)
                        self.refused.set()
                    else:
                        self.chunks.append(data)
            else:
                self._end()
        except Exception:
            log.exception("llmitm: request-size-limiting failed on a request body")
        return []

    def _end(self) -> None:
        """The whole body is in, before the `request` hooks: they get the client's
        request back, with its body, or the refusal."""
        self.restore()
        flow = self.flow
        if self.refusal is not None:
            if flow.response is None:  # the gate's 413 is not in yet: the hooks skip the flow
                flow.response = self.refusal
        else:
            flow.request.raw_content = b"".join(self.chunks)
        self.chunks = []
        flow.request.stream = None

    def restore(self) -> None:
        """The client's request in the flow again, in place of the gate's stand-in."""
        client, self.client = self.client, None
        if client is not None and self.flow is not None:
            self.flow.request = client

    def release(self) -> None:
        """Done with the flow (mitmproxy may keep the stand-in a while, with its
        connection to the gate): let go of it."""
        self.flow = None
        self.call = None
        self.client = None
        self.chunks = []


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# headers of an answer the gate writes itself (it frames the body its own way)
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


class BodyGate:
    """Loopback HTTP/1.1 server standing in for the upstream of held flows."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._server: asyncio.Server | None = None
        self._pending: dict[str, tuple[HeldBody, asyncio.TimerHandle]] = {}
        self.port = 0

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for _, timer in self._pending.values():
            timer.cancel()
        self._pending.clear()

    def attach(self, held: HeldBody) -> bool:
        """Point the flow at the gate (mitmproxy connects to it next); False when the
        body is better left to mitmproxy's buffering."""
        from mitmproxy import http

        flow = held.flow
        if flow.response is not None and flow.response is not held.refusal:
            return False  # a later plugin answered: mitmproxy reads the body, then sends that
        if self._server is None:
            return False  # closed meanwhile: a refusal stays an ordinary response
        flow.response = None  # a refusal goes out through the gate, at once
        token = secrets.token_urlsafe(16)
        stand_in = http.Request.make(
            "POST",
            f"http://127.0.0.1:{self.port}/{token}",
            b"",
            {"transfer-encoding": "chunked"},
        )
        stand_in.stream = held
        client = flow.request
        client.stream = held  # (the flow may get it back while the body still streams)
        held.client = client
        timer = asyncio.get_running_loop().call_later(CLAIM_TIMEOUT, self._expire, token)
        self._pending[token] = (held, timer)
        flow.request = stand_in
        return True

    def _expire(self, token: str) -> None:
        self._pending.pop(token, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # mitmproxy closed the connection (the client left)
        except Exception:
            log.exception("llmitm: request-size-limiting's gate failed")
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one held flow; False when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        token = parts[1].decode("latin-1").lstrip("/") if len(parts) > 1 else ""
        entry = self._pending.pop(token, None)
        if entry is None:
            writer.write(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            await writer.drain()
            return False
        held, timer = entry
        timer.cancel()
        ended = asyncio.ensure_future(_read_chunked(reader))
        try:
            if held.refusal is None:
                refused = asyncio.ensure_future(held.refused.wait())
                await asyncio.wait({ended, refused}, return_when=asyncio.FIRST_COMPLETED)
                refused.cancel()
            if held.refusal is not None:
                # over the limit: answer now; mitmproxy drains the rest of the body
                await _send(writer, held.refusal, close=True)
                await ended
                return False
            # the body ended under the limit, after every `request` hook ran
            await ended
            return await self._answer(held, writer)
        finally:
            ended.cancel()
            held.release()

    async def _answer(self, held: HeldBody, writer: asyncio.StreamWriter) -> bool:
        flow = held.flow
        assert flow is not None
        if flow.response is not None:  # ai-proxy's answer, a plugin's refusal
            await _send(writer, flow.response, close=False)
            return True
        return await self._forward(held, writer)

    async def _forward(self, held: HeldBody, writer: asyncio.StreamWriter) -> bool:
        """The flow goes on to `flow.request.url` (ai-proxy's relay for a streamed
        answer, the service of a plain route): fetch it and pass the answer back."""
        from addons.errors import from_provider_error
        from addons.llm_request import header_dict
        from addons.upstream import HOP_BY_HOP, Timeouts

        req = held.flow.request
        call = held.call
        timeouts = Timeouts.of(call.route)
        drop = HOP_BY_HOP | {"content-length", "expect", "accept-encoding"}
        headers = {k: v for k, v in header_dict(req.headers).items() if k not in drop}
        headers["accept-encoding"] = "identity"
        up = UpstreamRequest(req.method, req.url, headers, req.raw_content or b"", stream=True)
        try:
            res = await self.gw.upstream.send(up, timeouts)
        except ProviderError as err:
            call.fail(err, "upstream")
            await _send(writer, from_provider_error(err), close=False)
            return True
        try:
            lines = [f"HTTP/1.1 {res.status} {_phrase(res.status)}"]
            # (the gateway's client decodes the body: no content-encoding any more)
            drop = HOP_BY_HOP | {"content-length", "content-encoding"}
            lines += [f"{k}: {v}" for k, v in res.headers if k.lower() not in drop]
            lines.append("transfer-encoding: chunked")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace"))
            if res.body:
                writer.write(b"%x\r\n%b\r\n" % (len(res.body), res.body))
            async for chunk in res.chunks:
                if chunk:
                    writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception:  # noqa: BLE001 - the upstream broke off, whatever the cause: end the answer short
            log.warning("llmitm: upstream of %s broke off", logged_url(req.pretty_url, call))
            return False
        finally:
            await res.aclose()
        return True


async def _send(writer: asyncio.StreamWriter, resp: http.Response, close: bool) -> None:
    """Write a whole response for mitmproxy to read back."""
    body = resp.raw_content or b""
    lines = [f"HTTP/1.1 {resp.status_code} {resp.reason or _phrase(resp.status_code)}"]
    lines += [
        f"{k.decode('latin-1')}: {v.decode('latin-1')}"
        for k, v in resp.headers.fields
        if k.decode("latin-1").lower() not in _FRAMING
    ]
    lines.append(f"content-length: {len(body)}")
    if close:
        lines.append("connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    """Read (and drop) a chunked body to its end."""
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            raise ConnectionError("bad chunked framing from mitmproxy") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return
        await reader.readexactly(size + 2)
