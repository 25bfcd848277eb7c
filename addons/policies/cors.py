"""Kong's cors: Cross-Origin Resource Sharing for browser clients.

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by
the gateway itself with 200 and the `Access-Control-Allow-*` headers, before any other
plugin runs (cors has Kong's highest priority, 2000): it never reaches key-auth, a limit
or the upstream. `preflight_continue` hands it on instead.

Every other answer on the route gets `Access-Control-Allow-Origin` (with `Vary: Origin`
unless it is `*`), `Access-Control-Allow-Credentials` and `Access-Control-Expose-Headers`:
the upstream's answers, streamed ones (the headers are set in `responseheaders`, before
the first byte leaves), and the gateway's own errors (401, 403, 413, 429, ...), so a
browser can read why it was refused.

Origins follow Kong: `*` (or no origins) allows every origin; an entry made only of
letters, digits and `.:/-` is a plain origin compared with the request's (scheme, host
and port; default ports ignored); any other entry is a regex that must match the whole
origin, or only its host when the entry has no `:` (Kong's rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

import regex
from pydantic import AfterValidator, Field, PrivateAttr

from addons.policies.base import PolicyAddon
from providers.options import Strict

if TYPE_CHECKING:  # (mitmproxy is imported where used: the config loader imports this module)
    from mitmproxy import http
    from mitmproxy.http import Headers

NAME = "cors"
PRIORITY = 2000
CONSUMER_SCOPE = False

METHODS = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT")
Method = Literal["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]

# flow.metadata keys: the request's Origin (kept: a streamed call's request is rewritten
# before its response headers arrive) and whether the request was a preflight
_ORIGIN = "llmitm.cors.origin"
_PREFLIGHT = "llmitm.cors.preflight"

# Kong: an entry made of these characters only is a plain origin, anything else a regex
_PLAIN = re.compile(r"[A-Za-z0-9.:/-]+")

ACAO = "access-control-allow-origin"

# seconds an origin regex may take on one Origin before it counts as no match
REGEX_TIMEOUT = 0.05


@dataclass(frozen=True, slots=True)
class Origin:
    """An origin as compared: `scheme://host[:port]` without a default port, and the
    host alone (lowercase)."""

    domain: str
    host: str


def normalize_origin(value: str) -> Origin:
    """Kong's normalization of an origin (or of a plain configured entry); a value that
    is not a URL (`null`) stands for itself."""
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return Origin(value, value)
    if not host:
        return Origin(value, value)
    scheme = parts.scheme.lower()
    if (scheme, port) in (("http", 80), ("https", 443)):
        port = None
    shown = f"[{host}]" if ":" in host else host
    domain = (f"{scheme}://" if scheme else "") + shown + (f":{port}" if port is not None else "")
    return Origin(domain, host)


@dataclass(frozen=True, slots=True)
class _Entry:
    any: bool = False
    plain: Origin | None = None
    pattern: regex.Pattern[str] | None = None
    by_host: bool = False

    def matches(self, origin: Origin) -> bool:
        if self.plain is not None:
            return origin.domain == self.plain.domain
        assert self.pattern is not None
        subject = origin.host if self.by_host else origin.domain
        try:  # a client's Origin must not hold the event loop on a costly pattern
            return self.pattern.fullmatch(subject, timeout=REGEX_TIMEOUT) is not None
        except TimeoutError:
            return False


def _compile(entry: str) -> regex.Pattern[str]:
    """A regex entry, matched against the whole subject (Kong anchors it: a leading `^`
    and a trailing `$` are allowed and change nothing)."""
    body = entry[1:] if entry.startswith("^") else entry
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    return regex.compile(body)


def _check_origin(entry: str) -> str:
    if entry == "*" or _PLAIN.fullmatch(entry):
        return entry
    try:
        _compile(entry)
    except regex.error as e:
        raise ValueError(f"{entry!r} is not a valid regex: {e}") from None
    return entry


def _entry(value: str) -> _Entry:
    if value == "*":
        return _Entry(any=True)
    by_host = ":" not in value
    if _PLAIN.fullmatch(value):
        return _Entry(plain=normalize_origin(value), by_host=by_host)
    return _Entry(pattern=_compile(value), by_host=by_host)


class Config(Strict):
    """Kong's cors config."""

    origins: list[Annotated[str, AfterValidator(_check_origin)]] | None = Field(
        None,
        description="Allowed origins: plain origins (https://app.example.com), `*`, or "
        "regexes matched against the whole origin (or its host when the regex has no ':'). "
        "None or empty allows every origin.",
    )
    headers: list[str] | None = Field(
        None,
        description="Access-Control-Allow-Headers of a preflight; by default the request's "
        "Access-Control-Request-Headers are echoed.",
    )
    exposed_headers: list[str] | None = Field(
        None, description="Access-Control-Expose-Headers (response headers a browser may read)."
    )
    methods: list[Method] = Field(
        default_factory=lambda: list(METHODS),
        description="Access-Control-Allow-Methods of a preflight.",
    )
    max_age: float | None = Field(
        None, ge=0, description="Access-Control-Max-Age of a preflight (seconds)."
    )
    credentials: bool = Field(
        False,
        description="Send Access-Control-Allow-Credentials: true (with `*`, the request's "
        "origin is echoed instead, as browsers require).",
    )
    private_network: bool = Field(
        False,
        description="Answer a preflight asking Access-Control-Request-Private-Network: true "
        "with Access-Control-Allow-Private-Network: true.",
    )
    preflight_continue: bool = Field(
        False,
        description="Pass preflights on (to the next plugins and the upstream) instead of "
        "answering them.",
    )
    allow_origin_absent: bool = Field(
        True,
        description="Add the CORS headers to answers whose request has no Origin header.",
    )

    _entries: tuple[_Entry, ...] = PrivateAttr(default=())

    def model_post_init(self, context: object) -> None:
        self._entries = tuple(_entry(o) for o in self.origins or ())


@dataclass(slots=True)
class CorsHeaders:
    """What the plugin does to an answer's headers."""

    set: dict[str, str]
    vary_origin: bool = False  # add Origin to Vary
    clear_origin: bool = False  # remove Access-Control-Allow-Origin (origin not allowed)

    def apply(self, headers: Headers) -> None:
        if self.clear_origin:
            headers.pop(ACAO, None)
        for name, value in self.set.items():
            headers[name] = value
        if self.vary_origin:
            add_vary_origin(headers)


def add_vary_origin(headers: Headers) -> None:
    """`Vary: Origin`, kept with what the answer already varies on."""
    values = headers.get_all("vary")
    tokens = {t.strip().lower() for v in values for t in v.split(",")}
    if "origin" in tokens or "*" in tokens:
        return
    if values:
        headers["vary"] = ", ".join([*values, "Origin"])
    else:
        headers["vary"] = "Origin"


def _allow_origin(conf: Config, origin: str | None, out: CorsHeaders) -> bool:
    """Sets Access-Control-Allow-Origin; True when it is `*` (Kong's configure_origin)."""
    origins = conf.origins or []
    if not origins or origins == ["*"]:
        out.set[ACAO] = "*"
        return True
    out.vary_origin = True  # the answer depends on the Origin (caches must know)
    if len(origins) == 1 and _PLAIN.fullmatch(origins[0]):
        out.set[ACAO] = origins[0]
        return False
    if origin:
        seen = normalize_origin(origin)
        for entry in conf._entries:
            if entry.any:
                out.set[ACAO] = "*"
                return True
            if entry.matches(seen):
                out.set[ACAO] = origin
                return False
    out.clear_origin = True
    return False


def _credentials(conf: Config, allow_all: bool, origin: str | None, out: CorsHeaders) -> None:
    if not conf.credentials:
        return
    if not allow_all:
        out.set["access-control-allow-credentials"] = "true"
    elif origin:
        # credentials cannot go with `*`: echo the origin instead
        out.vary_origin = True
        out.set[ACAO] = origin
        out.set["access-control-allow-credentials"] = "true"


def preflight_headers(
    conf: Config,
    origin: str,
    request_headers: str | None,
    private_network: bool,
) -> CorsHeaders:
    """The headers of the gateway's answer to a preflight."""
    out = CorsHeaders({})
    allow_all = _allow_origin(conf, origin, out)
    _credentials(conf, allow_all, origin, out)
    if conf.headers:
        out.set["access-control-allow-headers"] = ",".join(conf.headers)
    elif request_headers is not None:
        out.set["access-control-allow-headers"] = request_headers
    out.set["access-control-allow-methods"] = ",".join(conf.methods)
    if conf.max_age is not None:
        age = conf.max_age
        out.set["access-control-max-age"] = str(int(age)) if age == int(age) else str(age)
    if conf.private_network and private_network:
        out.set["access-control-allow-private-network"] = "true"
    return out


def actual_headers(conf: Config, origin: str | None) -> CorsHeaders:
    """The headers added to every other answer."""
    out = CorsHeaders({})
    allow_all = _allow_origin(conf, origin, out)
    _credentials(conf, allow_all, origin, out)
    if conf.exposed_headers:
        out.set["access-control-expose-headers"] = ",".join(conf.exposed_headers)
    return out


def is_preflight(req: http.Request) -> bool:
    return (
        req.method == "OPTIONS"
        and bool(req.headers.get("origin"))
        and "access-control-request-method" in req.headers
    )


class Policy(PolicyAddon):
    """Answers CORS preflights and adds the CORS headers to every answer."""

    name = "llmitm-cors"
    plugin = NAME

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        req = flow.request
        flow.metadata[_ORIGIN] = req.headers.get("origin")
        if not is_preflight(req):
            return
        flow.metadata[_PREFLIGHT] = True  # its answer carries its own headers, or the upstream's
        if conf.preflight_continue:
            return
        from mitmproxy import http

        out = preflight_headers(
            conf,
            req.headers["origin"],
            req.headers.get("access-control-request-headers"),
            req.headers.get("access-control-request-private-network") == "true",
        )
        flow.response = http.Response.make(200, b"")
        out.apply(flow.response.headers)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # before the first byte of a stream leaves; gateway-made answers pass here too
        self._decorate(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        # the same again, in case an addon replaced the response since
        self._decorate(flow)

    def _decorate(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or flow.response is None or flow.metadata.get(_PREFLIGHT):
            return
        conf = call.plugin(NAME)
        if conf is None:
            return
        if _ORIGIN in flow.metadata:
            origin = flow.metadata[_ORIGIN]
        else:  # answered before this plugin ran (no route matched)
            origin = flow.request.headers.get("origin")
        if not origin and not conf.allow_origin_absent:
            return
        actual_headers(conf, origin).apply(flow.response.headers)
