"""The gateway's own connection to providers, and the relay that streams it to clients.

Why the gateway does the upstream I/O instead of letting mitmproxy forward the flow:
mitmproxy answers a failed upstream connection with its own HTML page, has no read
timeout, and pools upstream connections per client connection only. Owning the I/O
gives OpenAI-shaped 502/504 errors, timeouts from the service's `read_timeout`, one
connection pool for all clients, and a say over every byte before the client sees it.

The client is aiohttp rather than httpx: on the request path its C parser costs about
0.3 ms of CPU per call against httpx's 1.1-1.3 ms on the benchmark machine (measured
with the same fake upstream, see bench/README.md), which decides whether the gateway
keeps up with bare mitmproxy. httpx stays the client of the exporters.

A whole (non-streamed) answer is read here and set as `flow.response`: mitmproxy never
connects anywhere. A streamed answer cannot be produced by an addon (mitmproxy sends an
addon's response in one piece), so once its status and headers are in, the gateway
retargets the flow at `Relay`, a loopback HTTP/1.1 server in the same process, which
hands mitmproxy the open upstream body chunk by chunk. mitmproxy then streams it to the
client through the flow's stream owner, as it would any upstream. A failure before the
first byte is still an ordinary error response; a failure after it reaches the stream
owner, which ends the client's stream with an error event.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import certifi

from addons import mock_upstream
from providers.base import ProviderError, UpstreamRequest

if TYPE_CHECKING:
    from addons.config.model import Route

log = logging.getLogger(__name__)

# A registered stream that mitmproxy never comes to fetch is closed after this long.
CLAIM_TIMEOUT = 30.0

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(slots=True)
class Timeouts:
    connect: float = 60.0
    read: float = 60.0
    write: float = 60.0

    @classmethod
    def of(cls, route: Route | None) -> Timeouts:
        """The timeouts of `route`'s service (Kong's defaults without one)."""
        service = route.service if route is not None else None
        if service is None:
            return cls()
        return cls(service.connect_timeout, service.read_timeout, service.write_timeout)


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class UpstreamResponse:
    """A provider's answer, independent of the HTTP client that fetched it.

    A whole answer has `body`; a streamed one has `chunks` (decoded bytes as they
    arrive) and must be closed with `aclose` when done with.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: AsyncIterator[bytes] = field(default_factory=_no_chunks)
    aclose: Callable[[], Awaitable[None]] = _nothing

    def header_dict(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers}


def _where(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1] or url


def upstream_failure(exc: BaseException, url: str, timeouts: Timeouts) -> ProviderError:
    """A transport exception as the error the client receives (no URL query: it may hold keys)."""
    where = _where(url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderError(
            504, f"timed out connecting to the upstream {where}", "api_error", "upstream_timeout"
        )
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return ProviderError(
            504,
            f"the upstream {where} sent nothing for {timeouts.read:g}s (read_timeout)",
            "api_error",
            "upstream_timeout",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error) if exc.os_error else str(exc)
        return ProviderError(
            502,
            f"cannot connect to the upstream {where}: {reason}",
            "api_error",
            "upstream_unreachable",
        )
    if isinstance(
        exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionError)
    ):
        return ProviderError(
            502,
            f"the upstream {where} broke off the response: {exc or type(exc).__name__}",
            "api_error",
            "upstream_disconnected",
        )
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return ProviderError(
            502, f"the upstream URL is not usable: {exc}", "api_error", "bad_upstream"
        )
    return ProviderError(
        502,
        f"upstream request to {where} failed: {type(exc).__name__}: {exc}",
        "api_error",
        "upstream_error",
    )


@dataclass(slots=True)
class _Source:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
    # called once when the body ends: None, the upstream's exception, or ConnectionError
    # when mitmproxy (the client) went away first
    on_end: Callable[[BaseException | None], None]
    expiry: asyncio.TimerHandle | None = None


class Relay:
    """Loopback server that serves each registered stream once, to mitmproxy."""

    def __init__(self) -> None:
        self._pending: dict[str, _Source] = {}
        self._active: dict[str, asyncio.Task[None]] = {}  # token -> task relaying it
        self._pumps: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for token in list(self._pending):
            self.cancel(token)

    def register(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        on_end: Callable[[BaseException | None], None],
    ) -> str:
        token = secrets.token_urlsafe(18)
        src = _Source(status, headers, body, close, on_end)
        src.expiry = asyncio.get_running_loop().call_later(CLAIM_TIMEOUT, self.cancel, token)
        self._pending[token] = src
        return token

    def url(self, token: str) -> str:
        return f"http://127.0.0.1:{self.port}/{token}"

    def cancel(self, token: str) -> None:
        """Drop a stream nobody claimed (the client left before mitmproxy connected)."""
        src = self._pending.pop(token, None)
        if src is None:
            return
        if src.expiry:
            src.expiry.cancel()
        src.on_end(ConnectionError("stream cancelled before it was relayed"))
        task = asyncio.ensure_future(src.close())
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    def abort(self, token: str) -> None:
        """Stop relaying `token` (its client left): closes the upstream response too."""
        if token in self._pending:
            self.cancel(token)
        task = self._active.pop(token, None)
        if task is not None:
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or 0)
                if length:
                    await reader.readexactly(length)
                token = target.lstrip("/")
                src = self._pending.pop(token, None)
                if src is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                if src.expiry:
                    src.expiry.cancel()
                task = asyncio.current_task()
                assert task is not None
                self._active[token] = task
                try:
                    if not await self._pump(src, writer):
                        return
                finally:
                    self._active.pop(token, None)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        except asyncio.CancelledError:
            pass  # aborted: the client left
        finally:
            writer.close()

    async def _pump(self, src: _Source, writer: asyncio.StreamWriter) -> bool:
        """Relay one body; False when the connection to mitmproxy is gone."""
        reason = (
            HTTPStatus(src.status).phrase if src.status in HTTPStatus._value2member_map_ else ""
        )
        lines = [f"HTTP/1.1 {src.status} {reason}"]
        lines += [f"{k}: {v}" for k, v in src.headers]
        lines.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        upstream_error: BaseException | None = None
        try:
            it = src.body.__aiter__()
            while True:
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as e:  # noqa: BLE001 - the upstream failed mid-body, whatever the cause
                    upstream_error = e
                    break
                if chunk:
                    writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    await writer.drain()
        except (ConnectionError, RuntimeError) as e:  # mitmproxy closed our connection
            src.on_end(e if isinstance(e, ConnectionError) else ConnectionError(str(e)))
            await src.close()
            return False
        except asyncio.CancelledError:
            src.on_end(ConnectionError("relay stopped"))
            await src.close()
            raise
        src.on_end(upstream_error)
        await src.close()
        writer.write(b"0\r\n\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            return False
        return True


class Upstream:
    """One pooled HTTP client for every provider, plus the relay for streams."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.relay = Relay()

    async def start(self) -> None:
        if self.session is None:
            connector = aiohttp.TCPConnector(
                limit=1000,
                keepalive_timeout=60,
                ssl=ssl.create_default_context(cafile=certifi.where()),
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                # an HTTPS_PROXY meant for apps must not loop us through ourselves
                trust_env=False,
                # no cookies kept between calls: a provider's Set-Cookie (a load
                # balancer's, a CDN's) must not follow one client's call into another's
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
            )
        await self.relay.start()

    async def stop(self) -> None:
        await self.relay.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def send(self, req: UpstreamRequest, timeouts: Timeouts) -> UpstreamResponse:
        """Send `req`. A streamed 2xx answer is returned open (headers read, body not);
        anything else is returned read. Transport failures raise ProviderError."""
        if req.url.startswith("mock://"):
            status, headers, body, chunks = mock_upstream.respond(req)
            if chunks is None:
                return UpstreamResponse(status, headers, body)
            return UpstreamResponse(status, headers, chunks=chunks)
        if self.session is None:
            await self.start()
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        try:
            resp = await self.session.request(
                req.method,
                req.url,
                headers=req.headers,
                data=req.body or None,
                timeout=timeout,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise upstream_failure(e, req.url, timeouts) from None
        headers = list(resp.headers.items())
        if req.stream and resp.status < 300:

            async def close() -> None:
                resp.release()

            return UpstreamResponse(resp.status, headers, chunks=_iter(resp), aclose=close)
        try:
            body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise upstream_failure(e, req.url, timeouts) from None
        finally:
            resp.release()
        return UpstreamResponse(resp.status, headers, body)


async def _iter(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive. When the upstream breaks off, aiohttp raises
    before handing out bytes it had already received; those are yielded first, so the
    client gets everything the provider sent before the error event."""
    content = resp.content
    while True:
        try:
            chunk = await content.readany()
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError):
            pending = getattr(content, "_buffer", None)  # aiohttp keeps them here
            offset = getattr(content, "_buffer_offset", 0)
            if pending:
                received = b"".join(pending)[offset:]
                pending.clear()
                if received:
                    yield received
            raise
        if not chunk:
            return
        yield chunk
