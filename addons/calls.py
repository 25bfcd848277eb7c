"""Per-call state shared by the gateway's addons, and the context a call carries.

mitmproxy's `flow.metadata` must stay serializable, so the live state of a call (its
route, translator, timings) lives in a `Call` object kept in a weak mapping keyed by the
flow: it disappears with the flow even if a hook never ran.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers.base import ProviderError, Usage

if TYPE_CHECKING:
    from collections.abc import Callable

    from mitmproxy import http

    from addons.config.model import Consumer, Credential, GatewayConfig, Plugin, Route
    from addons.routing import Match
    from providers.base import CallSpec, Provider, StreamTranslator

# Headers whose values name the caller's user, session and so on (the seeds' set).
CONTEXT_HEADERS = {
    "x-user-id": "user_id",
    "x-session-id": "session_id",
    "x-chat-id": "chat_id",
    "x-message-id": "message_id",
    "x-organization-id": "organization_id",
    "x-project-id": "project_id",
}


@dataclass(eq=False, slots=True)
class Call:
    config: GatewayConfig
    route: Route | None
    match: Match | None
    started_at: float  # epoch seconds, when the request began
    client_ip: str = ""
    # policies: who the client is (key-auth), and the plugins that run for it
    consumer: Consumer | None = None
    credential: Credential | None = None
    plugins: dict[str, Plugin] = field(default_factory=dict)
    # the request body parsed once (by the first plugin that needs it); a policy that
    # rewrites it sets it here and in the flow (addons/policies/base.py)
    body: Any = None
    # names of credentials the record must not show, besides the usual ones (a
    # key-auth key's header, query parameter or body field)
    secret_names: set[str] = field(default_factory=set)
    # run with the finished record (a token limit settles its reservation): (call, record)
    on_finish: list[Callable[[Call, Any], None]] = field(default_factory=list)
    # applied in order to what a stream sends the client: (chunks, last) -> chunks
    stream_filters: list[Callable[[list[bytes], bool], list[bytes]]] = field(default_factory=list)
    # ai-proxy
    provider: Provider | None = None
    spec: CallSpec | None = None
    request_model: str | None = None
    response_model: str | None = None
    request_payload: Any = None
    response_payload: Any = None
    upstream_url: str | None = None
    stream: bool = False
    translator: StreamTranslator | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    log_payloads: bool = False
    log_statistics: bool = True
    context: dict[str, Any] = field(default_factory=dict)
    # timings (epoch seconds)
    upstream_started: float | None = None
    upstream_headers: float | None = None
    upstream_ended: float | None = None
    first_token: float | None = None
    ended_at: float | None = None
    # outcome
    upstream_status: int | None = None
    error: ProviderError | None = None
    error_source: str | None = None  # "gateway", "upstream" or "client"
    # set when an upstream stream broke off after it started
    stream_error: ProviderError | None = None
    client_aborted: bool = False
    bytes_out: int = 0  # body bytes streamed to the client
    # a plain route's request went to its service (mitmproxy did the upstream I/O)
    proxied: bool = False
    relay_token: str | None = None
    # the client's request (url, headers, body) while the flow points at the relay
    client_request: tuple[str, Any, bytes | None] | None = None

    def plugin(self, name: str) -> Any | None:
        """The config of plugin `name` for this call (route, service, global and, once
        key-auth has run, consumer plugins), if it runs."""
        p = self.plugins.get(name)
        return p.config if p else None

    def set_consumer(self, consumer: Consumer | None, credential: Credential | None) -> None:
        """Who the client is: from now on the consumer's plugins apply too."""
        self.consumer, self.credential = consumer, credential
        self.plugins = self.config.plugins_for(self.route, consumer)

    def fail(self, err: ProviderError, source: str) -> None:
        if self.error is None:
            self.error, self.error_source = err, source


class Calls:
    """flow -> Call, without keeping flows alive."""

    def __init__(self) -> None:
        self._calls: weakref.WeakKeyDictionary[http.HTTPFlow, Call] = weakref.WeakKeyDictionary()

    def get(self, flow: http.HTTPFlow) -> Call | None:
        return self._calls.get(flow)

    def put(self, flow: http.HTTPFlow, call: Call) -> None:
        self._calls[flow] = call

    def pop(self, flow: http.HTTPFlow) -> Call | None:
        return self._calls.pop(flow, None)

    def take_all(self) -> list[tuple[http.HTTPFlow, Call]]:
        """Every call still in flight, forgotten here (so no later hook finishes it)."""
        calls = list(self._calls.items())
        self._calls.clear()
        return calls

    def __len__(self) -> int:
        return len(self._calls)


_CONTEXT_FIELDS = {name.encode(): key for name, key in CONTEXT_HEADERS.items()}


def context_from_headers(headers: Any) -> dict[str, Any]:
    """User, session, chat, message, organization and project ids from the context
    headers (one pass over mitmproxy's raw header fields: lookups by name are slow)."""
    ctx: dict[str, Any] = {}
    for name, value in headers.fields:
        key = _CONTEXT_FIELDS.get(name.lower())
        if key is not None and value:
            ctx[key] = value.decode("utf-8", "replace")
    return ctx


def with_body_context(ctx: dict[str, Any], body: Any) -> dict[str, Any]:
    """`ctx` completed from a `metadata` object in the body (headers win)."""
    meta = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(meta, dict):
        return ctx
    out: dict[str, Any] = {}
    for key in CONTEXT_HEADERS.values():
        value = meta.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
            out[key] = str(value)
    out.update(ctx)
    out["metadata"] = meta
    return out


def auth_names(conf: Any) -> tuple[str, ...]:
    """The header and parameter names an ai-proxy `auth` block sends a key in: the
    client may send its own key under them (`allow_override`, or by mistake), so the
    record must not show their values."""
    auth = getattr(conf, "auth", None)
    if auth is None:
        return ()
    names = []
    if auth.header_name:
        names.append(auth.header_name.lower())
    if auth.param_name:
        names.append(auth.param_name)
    return tuple(names)


def configured_model(conf: Any) -> str | None:
    """An ai-proxy route's model name, unless it is a template filled per request."""
    name = conf.model.name
    return name if name and "$(" not in name else None


def now() -> float:
    return time.time()
