"""rate-limiting: how many requests a client may make per second, minute, hour, day,
month or year (Kong's Rate Limiting plugin).

Who "a client" is comes from `limit_by`: the consumer (key-auth's), its credential, the
client IP, the service, a request header or the request path; when the request has no
such identity (no consumer, no header...) the client IP counts instead, as in Kong.

Counters live in this process (`policy: local`) or in Redis (`policy: redis`: shared by
every gateway process using the same server). Either way a request is checked and
counted in one atomic step (`_counters.Counters.acquire`), in every window at once: under
N concurrent requests exactly `limit` pass. (Kong's open-source plugin reads the counters,
then increments them, so concurrent requests can all pass the check.)

The request is counted in `requestheaders`, before its body is read, unless key-auth
may still find the consumer in the body (`key_in_body`): then in `request`, once it
has. A refusal decided on the headers is sent at once for a large (64 KiB or more),
chunked or `Expect: 100-continue` body, through request-size-limiting's body gate
(mitmproxy itself sends a response set in `requestheaders` only after reading the
body): a limited client does not upload its body for nothing.

Every answer carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (of the
window closest to its limit) and `X-RateLimit-Limit-<Period>` /
`X-RateLimit-Remaining-<Period>` per configured period, unless `hide_client_headers`.
A refused request gets `error_code` (429) with `Retry-After`, in OpenAI's error shape.

When Redis cannot be reached, `fault_tolerant` lets requests through (a warning, at most
one every few seconds, and the metric `llmitm_policy_store_unavailable_total` counts
them) or refuses them with a 500.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from addons.policies._counters import (
    PERIODS,
    CountersUnavailable,
    Decision,
    RedisConfig,
    Window,
    WindowState,
    counters,
)
from addons.policies.base import PolicyAddon, consumer_pending, deny, set_headers
from addons.policies.request_size_limiting import answer_before_body, restore_client_request
from providers.options import Strict

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from mitmproxy import http

    from addons.calls import Call

NAME = "rate-limiting"
PRIORITY = 910
CONSUMER_SCOPE = True

log = logging.getLogger("llmitm")

#: Kong's header names
LIMIT = "RateLimit-Limit"
REMAINING = "RateLimit-Remaining"
RESET = "RateLimit-Reset"
RETRY_AFTER = "Retry-After"
PERIOD_HEADERS = {
    p: (f"X-RateLimit-Limit-{p.capitalize()}", f"X-RateLimit-Remaining-{p.capitalize()}")
    for p in PERIODS
}

# Kong's older flat redis fields -> the `redis` block's
_FLAT_REDIS = {
    "redis_host": "host",
    "redis_port": "port",
    "redis_username": "username",
    "redis_password": "password",
    "redis_database": "database",
    "redis_ssl": "ssl",
    "redis_ssl_verify": "ssl_verify",
    "redis_server_name": "server_name",
    "redis_timeout": "timeout",
}

#: seconds between two "Redis is down" warnings of one plugin addon
WARN_EVERY = 10.0


def _limit(period: str) -> Any:
    return Field(
        None,
        gt=0,
        description=f"Requests allowed per {period} (a {period} window, "
        + (
            "a calendar month, UTC)."
            if period == "month"
            else "a calendar year, UTC)."
            if period == "year"
            else "aligned on the clock)."
        ),
    )


class Config(Strict):
    """Kong's rate-limiting config."""

    second: float | None = _limit("second")
    minute: float | None = _limit("minute")
    hour: float | None = _limit("hour")
    day: float | None = _limit("day")
    month: float | None = _limit("month")
    year: float | None = _limit("year")
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path"] = Field(
        "consumer",
        description="Whose requests are counted together; without a consumer, credential, "
        "service, header or matching path, the client IP.",
    )
    header_name: str | None = Field(
        None, description="The request header whose value identifies the client (limit_by header)."
    )
    path: str | None = Field(
        None,
        description="With limit_by path: requests to exactly this path share one limit "
        "(other paths are limited by client IP).",
    )
    policy: Literal["local", "cluster", "redis"] = Field(
        "local",
        description="Where the counters live: local (this process) or redis (shared by every "
        "gateway process). Kong's cluster (its database) is not available: use redis.",
    )
    redis: RedisConfig | None = Field(None, description="The Redis server of policy redis.")
    fault_tolerant: bool = Field(
        True,
        description="When Redis cannot be reached: true lets requests through (logged and "
        "counted), false answers 500.",
    )
    hide_client_headers: bool = Field(
        False, description="Send no RateLimit-* / X-RateLimit-* headers to the client."
    )
    error_code: int = Field(429, ge=400, le=599, description="Status of a refused request.")
    error_message: str = Field(
        "API rate limit exceeded", description="Message of a refused request."
    )
    sync_rate: float | None = Field(
        None,
        description="Accepted for Kong files; llmitm always counts exactly (every request is "
        "checked and counted at once), so there is nothing to synchronise.",
    )
    # Kong's older flat redis fields (the `redis` block is the newer form)
    redis_host: str | None = Field(None, description="Deprecated: redis.host.")
    redis_port: int | None = Field(None, ge=1, le=65535, description="Deprecated: redis.port.")
    redis_username: str | None = Field(None, description="Deprecated: redis.username.")
    redis_password: str | None = Field(None, description="Deprecated: redis.password.")
    redis_database: int | None = Field(None, ge=0, description="Deprecated: redis.database.")
    redis_ssl: bool | None = Field(None, description="Deprecated: redis.ssl.")
    redis_ssl_verify: bool | None = Field(None, description="Deprecated: redis.ssl_verify.")
    redis_server_name: str | None = Field(None, description="Deprecated: redis.server_name.")
    redis_timeout: int | None = Field(None, gt=0, description="Deprecated: redis.timeout (ms).")

    # computed once at load: the periods with a limit, and the effective redis config
    _periods: tuple[tuple[str, int, float], ...] = PrivateAttr(default=())
    _store: RedisConfig | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> Config:
        periods = [(p, size, getattr(self, p)) for p, size in PERIODS.items()]
        given = [(p, size, lim) for p, size, lim in periods if lim is not None]
        if not given:
            raise ValueError("at least one of second, minute, hour, day, month or year must be set")
        # Kong: a longer period cannot allow fewer requests than a shorter one
        for (p1, _, l1), (p2, _, l2) in itertools.pairwise(given):
            if l2 < l1:
                raise ValueError(
                    f"the limit for {p2} ({l2:g}) cannot be lower than the limit for {p1} ({l1:g})"
                )
        if self.limit_by == "header" and not self.header_name:
            raise ValueError("header_name is required when limit_by is header")
        if self.limit_by == "path" and not self.path:
            raise ValueError("path is required when limit_by is path")
        if self.policy == "cluster":
            raise ValueError(
                "policy cluster keeps Kong's counters in its database, which llmitm does not "
                "have: use policy redis (shared by every gateway process) or local"
            )
        store = self._redis_config()
        if self.policy == "redis" and (store is None or not store.host):
            raise ValueError("policy redis needs redis.host (or redis_host)")
        self._periods = tuple(given)
        self._store = store if self.policy == "redis" else None
        return self

    def _redis_config(self) -> RedisConfig | None:
        """The `redis` block completed by the flat redis_* fields (a field set both ways
        with different values is an error)."""
        block = self.redis.model_dump(exclude_unset=True) if self.redis else {}
        for flat, field in _FLAT_REDIS.items():
            value = getattr(self, flat)
            if value is None:
                continue
            if field in block and block[field] != value:
                raise ValueError(
                    f"{flat} and redis.{field} are both set, to different values: "
                    f"keep redis.{field}"
                )
            block[field] = value
        if not block:
            return None
        return RedisConfig(**block)

    @property
    def periods(self) -> tuple[tuple[str, int, float], ...]:
        """(period, window size, limit) of each configured period, shortest first."""
        return self._periods

    @property
    def store(self) -> RedisConfig | None:
        """The Redis server of policy redis; None for local counters."""
        return self._store


# ----------------------------------------------------------------------- identity


def _short(value: str) -> str:
    """A counter key part: the value, or its digest when long."""
    if len(value) <= 128:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def identifier(conf: Config, call: Call, flow: http.HTTPFlow) -> tuple[str, str]:
    """(what is limited, its identity): Kong's `limit_by`, falling back to the client IP
    when the request has no such identity."""
    kind = conf.limit_by
    ident: str | None = None
    if kind == "consumer" and call.consumer is not None:
        ident = call.consumer.id or call.consumer.name
    elif kind in ("consumer", "credential") and call.credential is not None:
        ident = _credential_id(call)
    elif kind == "service" and call.route is not None and call.route.service is not None:
        ident = call.route.service.name
    elif kind == "header":
        assert conf.header_name is not None
        ident = flow.request.headers.get(conf.header_name)
    elif kind == "path" and flow.request.path.partition("?")[0] == conf.path:
        ident = conf.path
    if ident:
        return kind, _short(ident)
    return "ip", call.client_ip


def _credential_id(call: Call) -> str:
    cred = call.credential
    assert cred is not None
    # the key itself is a secret: never in a counter's name
    return cred.id or "key-sha256:" + hashlib.sha256(cred.key.encode()).hexdigest()[:32]


def windows(conf: Config, scope: str, kind: str, ident: str) -> list[Window]:
    """The counters of one client under one plugin instance (its scope: global, a
    route, a service or a consumer's own)."""
    return [
        Window(f"rl:{scope}:{kind}:{ident}:{period}", size, limit, calendar=True)
        for period, size, limit in conf.periods
    ]


# ------------------------------------------------------------------------ headers


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def headers(conf: Config, decision: Decision) -> dict[str, str]:
    """The client's headers for a decision (Kong's): per period, and the RateLimit-*
    of the window closest to its limit (of those as close, the one that resets last)."""
    out: dict[str, str] = {}
    closest: WindowState | None = None
    for (period, _, _), st in zip(conf.periods, decision.states, strict=True):
        limit_h, remaining_h = PERIOD_HEADERS[period]
        remaining = math.floor(st.remaining + 1e-9)
        out[limit_h] = _num(st.window.limit)
        out[remaining_h] = str(remaining)
        if (
            closest is None
            or st.remaining < closest.remaining
            or (st.remaining == closest.remaining and st.reset > closest.reset)
        ):
            closest = st
    if closest is not None:
        out[LIMIT] = _num(closest.window.limit)
        out[REMAINING] = str(math.floor(closest.remaining + 1e-9))
        out[RESET] = str(max(1, math.ceil(closest.reset)))
    if not decision.allowed:
        out[RETRY_AFTER] = str(decision.retry_after)
    return out


# -------------------------------------------------------------------------- addon


class Policy(PolicyAddon):
    """Counts each request against its client's limits; 429 past them."""

    name = "llmitm-rate-limiting"
    plugin = NAME

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        # warning kind -> (when last logged, how many held back since)
        self._warned: dict[str, tuple[float, int]] = {}
        # flow -> the headers its answer gets (weak: gone with the flow)
        self._headers: weakref.WeakKeyDictionary[http.HTTPFlow, dict[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        # flow -> the config its request was counted under
        self._decided: weakref.WeakKeyDictionary[http.HTTPFlow, Config] = (
            weakref.WeakKeyDictionary()
        )

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # decided before the body is read, so a limited client does not upload it first;
        # unless key-auth may still find the consumer in the body (key_in_body)
        call, conf = self.active(flow)
        if call is not None and not consumer_pending(call):
            await self._check(flow, call, conf)
            if flow.response is not None:  # refused: answered now, not after the body
                await answer_before_body(self.gw, flow, call)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call, conf = self.active(flow)
        if call is None or self._decided.get(flow) is conf:
            return None  # decided on the headers (the usual case: no coroutine)
        # not decided yet (key_in_body), or the consumer brought its own config
        return self._check(flow, call, conf)

    async def _check(self, flow: http.HTTPFlow, call: Call, conf: Config) -> None:
        self._decided[flow] = conf
        plugin = call.plugins.get(NAME)
        scope = plugin.scope if plugin is not None else "global"
        kind, ident = identifier(conf, call, flow)
        store = counters(self.gw, conf.store)
        try:
            decision = await store.acquire(windows(conf, scope, kind, ident), 1)
        except CountersUnavailable as e:
            self._unavailable(flow, call, conf, e)
            return
        hdrs = {} if conf.hide_client_headers else headers(conf, decision)
        if decision.allowed:
            if hdrs:
                self._headers[flow] = hdrs
            return
        deny(
            flow,
            call,
            conf.error_code,
            conf.error_message,
            code="rate_limit_exceeded",
            type="rate_limit_error",
            headers={**hdrs, RETRY_AFTER: str(decision.retry_after)},
        )

    def _unavailable(
        self, flow: http.HTTPFlow, call: Call, conf: Config, err: CountersUnavailable
    ) -> None:
        where = conf.store.label() if conf.store is not None else "local"
        outcome = "allowed" if conf.fault_tolerant else "refused"
        self.gw.metrics.store_unavailable.labels(NAME, outcome).inc()
        if conf.fault_tolerant:
            self._warn(
                f"{where}|pass", f"rate-limiting: {err}; letting requests through (fault_tolerant)"
            )
            return
        self._warn(
            f"{where}|refuse", f"rate-limiting: {err}; refusing requests (fault_tolerant is false)"
        )
        deny(
            flow,
            call,
            500,
            "rate-limiting cannot reach its counters (Redis is unavailable)",
            code="rate_limit_unavailable",
        )

    def _warn(self, what: str, message: str) -> None:
        """Log a warning of kind `what` at most once every WARN_EVERY seconds (saying how
        many were held back), not one line per request."""
        now = time.monotonic()
        last, held = self._warned.get(what, (-math.inf, 0))
        if now - last < WARN_EVERY:
            self._warned[what] = (last, held + 1)
            return
        more = f" ({held} more since the last warning)" if held else ""
        self._warned[what] = (now, 0)
        log.warning("llmitm: %s%s", message, more)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # a refusal sent before the body: the flow gets the client's request back
        restore_client_request(flow)
        # a streamed answer's headers leave before the `response` hook
        self._apply(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        # answers the gateway made itself (ai-proxy's buffered ones) only get this hook
        self._apply(flow)

    def _apply(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        hdrs = self._headers.pop(flow, None)  # once: responseheaders, else response
        if hdrs:
            set_headers(flow.response.headers, hdrs)
