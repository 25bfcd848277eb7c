"""Counters for the limit plugins (rate-limiting, ai-rate-limiting-advanced): windows of
time, each with a limit, charged atomically.

`Counters.acquire(windows, amount)` checks every window and adds `amount` to all of them
in one atomic step, or to none: under N concurrent requests exactly `limit` pass, in one
process (`LocalCounters`) or in every process sharing a Redis server (`RedisCounters`,
whose Lua scripts do the check-and-add on the server). `adjust(ticket, delta)` corrects a
past charge later (a token limit reserves an estimate, then settles with the real usage).

Windows are fixed (aligned on multiples of their size since the epoch, or on calendar
months and years: Kong's rate-limiting) or sliding (an estimate from the current and the
previous fixed window: Kong's ai-rate-limiting-advanced). Times come from a `clock`
(epoch seconds; tests inject one).

The leading underscore keeps this module out of policy discovery.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import Field

from providers.options import Strict

log = logging.getLogger(__name__)

SECOND, MINUTE, HOUR, DAY = 1, 60, 3600, 86400
MONTH, YEAR = 30 * DAY, 365 * DAY
#: window sizes of Kong's rate-limiting periods
PERIODS: dict[str, int] = {
    "second": SECOND,
    "minute": MINUTE,
    "hour": HOUR,
    "day": DAY,
    "month": MONTH,
    "year": YEAR,
}

# float amounts (costs) must not be refused for a rounding error
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Window:
    #: the counter's identity, e.g. "rl:<plugin scope>:<identifier>:minute"
    key: str
    #: window length in seconds
    size: int
    #: the most `amount` that fits in one window
    limit: float
    #: False: fixed windows aligned on multiples of `size` since the epoch. True: sliding
    #: window estimate used = current + previous * (1 - elapsed fraction of current)
    sliding: bool = False
    #: fixed windows only: a size of MONTH counts calendar months, YEAR calendar years
    #: (UTC), as Kong's rate-limiting does; other sizes are unaffected
    calendar: bool = False

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"window size must be positive, not {self.size}")

    def bounds(self, now: float) -> tuple[int, int]:
        """(start, end) in epoch seconds of the window instance that holds `now`."""
        if self.calendar and not self.sliding and self.size in (MONTH, YEAR):
            d = datetime.fromtimestamp(now, UTC)
            if self.size == MONTH:
                start = calendar.timegm((d.year, d.month, 1, 0, 0, 0))
                y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
                return start, calendar.timegm((y, m, 1, 0, 0, 0))
            return calendar.timegm((d.year, 1, 1, 0, 0, 0)), calendar.timegm(
                (d.year + 1, 1, 1, 0, 0, 0)
            )
        start = int(now // self.size) * self.size
        return start, start + self.size

    def lifetime_end(self, start: int) -> float:
        """When the instance starting at `start` stops counting: its end, or one window
        later for a sliding window (it is then the previous window)."""
        if self.calendar and not self.sliding and self.size in (MONTH, YEAR):
            return self.bounds(start)[1]
        return start + self.size * (2 if self.sliding else 1)


@dataclass(slots=True)
class WindowState:
    window: Window
    #: after this call (with the amount when it was allowed)
    used: float
    #: max(0, limit - used)
    remaining: float
    #: seconds until the current fixed window ends (sliding: until the previous window's
    #: weight is gone, i.e. the end of the current fixed window); > 0
    reset: float


@dataclass(frozen=True, slots=True)
class Ticket:
    """What an acquire charged: the window instances (window, start) and the amount
    (0 when it was denied or a pure check; adjust() may still charge them)."""

    charges: tuple[tuple[Window, int], ...]
    amount: float


@dataclass(slots=True)
class Decision:
    allowed: bool
    #: one per window, same order
    states: list[WindowState]
    #: whole seconds (ceil, >= 1) when denied; 0 when allowed
    retry_after: int
    #: what was charged, for adjust()
    ticket: Ticket


class CountersUnavailable(Exception):
    """The shared store cannot be reached (connection refused, timeout, auth...).
    The caller applies its plugin's `fault_tolerant`."""


class Counters(Protocol):
    async def acquire(self, windows: Sequence[Window], amount: float) -> Decision:
        """ATOMICALLY across every window and every process sharing the store: if
        used + amount <= limit in every window, add amount to all of them and allow;
        otherwise add nothing and deny. amount may be 0 (a pure check that returns
        the states)."""
        ...

    async def adjust(self, ticket: Ticket, delta: float) -> None:
        """Add delta (may be negative; never drives a counter below 0) to the exact
        window instances a past acquire charged (even if the clock has moved to a new
        window since)."""
        ...

    async def aclose(self) -> None: ...


# -- the arithmetic both stores share -------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """One window at the time of an acquire: its instance and the counts read."""

    window: Window
    start: int
    end: int
    weight: float  # of the previous instance (sliding); 0 for fixed windows

    @classmethod
    def at(cls, window: Window, now: float) -> _Slot:
        start, end = window.bounds(now)
        weight = (1.0 - (now - start) / window.size) if window.sliding else 0.0
        return cls(window, start, end, weight)

    def estimate(self, cur: float, prev: float) -> float:
        return cur + prev * self.weight

    def fits(self, cur: float, prev: float, amount: float) -> bool:
        return self.estimate(cur, prev) + amount <= self.window.limit + _EPS

    def state(self, cur: float, prev: float, now: float) -> WindowState:
        used = self.estimate(cur, prev)
        return WindowState(
            self.window,
            used,
            max(0.0, self.window.limit - used),
            max(self.end - now, 1e-3),
        )

    def wait(self, cur: float, prev: float, amount: float, now: float) -> float:
        """Seconds until `amount` fits, if nothing else is charged meanwhile."""
        w = self.window
        room = w.limit - amount + _EPS
        if not w.sliding or room < 0:
            return self.end - now
        if cur <= room:
            if prev <= 0:
                return 0.0
            # the previous window's weight must fall to (room - cur)
            needed = 1.0 - (room - cur) / prev
            return max(0.0, self.start + needed * w.size - now)
        # the current window alone is too much: it becomes the previous one, whose
        # weight must fall to room
        needed = 1.0 - room / cur
        return self.end + needed * w.size - now


def _decide(
    slots: list[_Slot], counts: list[tuple[float, float]], amount: float, allowed: bool, now: float
) -> Decision:
    """The decision from the counts read (cur, prev per window; cur includes the amount
    when allowed)."""
    states = [s.state(cur, prev, now) for s, (cur, prev) in zip(slots, counts, strict=True)]
    retry_after = 0
    if not allowed:
        waits = [
            s.wait(cur, prev, amount, now)
            for s, (cur, prev) in zip(slots, counts, strict=True)
            if not s.fits(cur, prev, amount)
        ]
        retry_after = max(1, math.ceil(max(waits, default=1.0)))
    ticket = Ticket(tuple((s.window, s.start) for s in slots), amount if allowed else 0.0)
    return Decision(allowed, states, retry_after, ticket)


# -- in process -----------------------------------------------------------------------


class LocalCounters:
    """Counters in this process's memory (Kong's `policy: local`). Exact under
    concurrency: an acquire runs without yielding to the event loop."""

    #: seconds between sweeps of the expired counters
    SWEEP_EVERY = 5.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # (window key, instance start) -> [count, time it stops counting]
        self._buckets: dict[tuple[str, int], list[float]] = {}
        self._next_sweep = 0.0

    def _get(self, key: str, start: int, now: float) -> float:
        b = self._buckets.get((key, start))
        if b is None or b[1] <= now:
            return 0.0
        return b[0]

    def _add(self, window: Window, start: int, delta: float, now: float) -> None:
        end = window.lifetime_end(start)
        if end <= now:
            return  # that instance no longer counts
        b = self._buckets.get((window.key, start))
        if b is None or b[1] <= now:
            b = self._buckets[(window.key, start)] = [0.0, end]
        b[0] = max(0.0, b[0] + delta)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_EVERY
        dead = [k for k, b in self._buckets.items() if b[1] <= now]
        for k in dead:
            del self._buckets[k]

    async def acquire(self, windows: Sequence[Window], amount: float) -> Decision:
        now = self.clock()
        self._sweep(now)
        slots = [_Slot.at(w, now) for w in windows]
        counts = [
            (
                self._get(s.window.key, s.start, now),
                self._get(s.window.key, s.start - s.window.size, now) if s.window.sliding else 0.0,
            )
            for s in slots
        ]
        allowed = all(
            s.fits(cur, prev, amount) for s, (cur, prev) in zip(slots, counts, strict=True)
        )
        if allowed and amount:
            for s in slots:
                self._add(s.window, s.start, amount, now)
            counts = [(cur + amount, prev) for cur, prev in counts]
        return _decide(slots, counts, amount, allowed, now)

    async def adjust(self, ticket: Ticket, delta: float) -> None:
        if not delta:
            return
        now = self.clock()
        for window, start in ticket.charges:
            self._add(window, start, delta, now)

    async def aclose(self) -> None:
        self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)


# -- Redis ----------------------------------------------------------------------------


class RedisConfig(Strict):
    """Kong's `redis` block."""

    host: str | None = Field(None, description="Redis host name or address.")
    port: int = Field(6379, ge=1, le=65535, description="Redis port.")
    username: str | None = Field(None, description="Redis ACL user name (Redis 6+).")
    password: str | None = Field(None, description="Redis password (AUTH).")
    database: int = Field(0, ge=0, description="Redis database number.")
    ssl: bool = Field(False, description="Connect with TLS.")
    ssl_verify: bool = Field(False, description="Verify the server's TLS certificate.")
    server_name: str | None = Field(
        None, description="Server name for TLS SNI and certificate verification."
    )
    timeout: int = Field(2000, gt=0, description="Connect, send and read timeout, in milliseconds.")

    def label(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


# KEYS: per window, the current and the previous instance.
# ARGV: amount, then per window: limit, sliding (0/1), weight of the previous, ttl (ms).
# Returns {allowed (0/1), cur1, prev1, cur2, prev2, ...} as strings (Lua numbers would
# come back truncated to integers).
_ACQUIRE = """
local amount = tonumber(ARGV[1])
local n = #KEYS / 2
local counts = {}
local allowed = 1
for i = 1, n do
  local a = 2 + (i - 1) * 4
  local limit = tonumber(ARGV[a])
  local sliding = ARGV[a + 1] == '1'
  local weight = tonumber(ARGV[a + 2])
  local cur = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local prev = 0
  if sliding then
    prev = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  end
  counts[2 * i - 1] = cur
  counts[2 * i] = prev
  if cur + prev * weight + amount > limit + 1e-9 then
    allowed = 0
  end
end
if allowed == 1 and amount > 0 then
  for i = 1, n do
    local key = KEYS[2 * i - 1]
    counts[2 * i - 1] = tonumber(redis.call('INCRBYFLOAT', key, ARGV[1]))
    if redis.call('PTTL', key) < 0 then
      redis.call('PEXPIRE', key, ARGV[5 + (i - 1) * 4])
    end
  end
end
local out = {tostring(allowed)}
for i = 1, 2 * n do
  out[i + 1] = string.format('%.17g', counts[i])
end
return out
"""

# KEYS: the window instances to adjust. ARGV: delta, then per key its ttl (ms).
_ADJUST = """
for i, key in ipairs(KEYS) do
  local v = tonumber(redis.call('INCRBYFLOAT', key, ARGV[1]))
  if v < 0 then
    redis.call('SET', key, '0', 'KEEPTTL')
  end
  if redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, ARGV[i + 1])
  end
end
return 1
"""


def _sni_connection_class() -> type:
    from redis.asyncio.connection import SSLConnection

    class SNIConnection(SSLConnection):
        """TLS with a server name other than the host connected to."""

        def __init__(self, *, server_name: str | None = None, **kw: Any) -> None:
            self._server_name = server_name
            super().__init__(**kw)

        def _connection_arguments(self) -> Any:
            kw = dict(super()._connection_arguments())
            if self._server_name:
                kw["server_hostname"] = self._server_name
            return kw

    return SNIConnection


class RedisCounters:
    """Counters in Redis (Kong's `policy: redis`): shared by every process using the same
    server and database. Each acquire or adjust is one Lua script (EVALSHA: loaded once,
    again after NOSCRIPT), so check-and-add is atomic across processes. Keys expire when
    their window instance stops counting.

    When Redis fails, calls raise CountersUnavailable at once for `backoff` seconds
    instead of waiting on a dead server for every request."""

    #: connections kept to the server (more requests wait for one, up to the timeout)
    POOL_SIZE = 64

    def __init__(
        self,
        config: RedisConfig,
        *,
        clock: Callable[[], float] = time.time,
        prefix: str = "llmitm:",
        backoff: float = 1.0,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.connection import Connection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        if not config.host:
            raise ValueError("redis.host is required")
        self.config = config
        self.clock = clock
        self.prefix = prefix
        self.backoff = backoff
        timeout = config.timeout / 1000
        kwargs: dict[str, Any] = {
            "host": config.host,
            "port": config.port,
            "db": config.database,
            "username": config.username,
            "password": config.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # one retry on a broken connection (the server closed an idle one); a dead
            # server fails fast anyway, and a timeout is not retried
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        connection_class: type = Connection
        if config.ssl:
            connection_class = _sni_connection_class()
            kwargs |= {
                "ssl_cert_reqs": "required" if config.ssl_verify else "none",
                "ssl_check_hostname": config.ssl_verify,
                "server_name": config.server_name,
            }
        pool = aioredis.BlockingConnectionPool(
            max_connections=self.POOL_SIZE,
            timeout=timeout,
            connection_class=connection_class,
            **kwargs,
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self._shas: dict[str, str] = {}
        self._down_until = 0.0
        self._last_error = ""

    def _key(self, window: Window, start: int) -> str:
        return f"{self.prefix}{window.key}:{start}"

    @staticmethod
    def _ttl_ms(window: Window, start: int, now: float) -> int:
        return max(1000, math.ceil((window.lifetime_end(start) - now + 1) * 1000))

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import NoScriptError, RedisError

        if time.monotonic() < self._down_until:
            raise CountersUnavailable(
                f"redis {self.config.label()} unavailable: {self._last_error}"
            )
        sha = self._shas.get(script) or hashlib.sha1(script.encode()).hexdigest()
        try:
            try:
                return await self.client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                # the server has not seen the script (first use, restart, flush)
                sha = await self.client.script_load(script)
                self._shas[script] = sha
                return await self.client.evalsha(sha, len(keys), *keys, *args)
        except (RedisError, OSError) as e:
            self._down_until = time.monotonic() + self.backoff
            self._last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise CountersUnavailable(
                f"redis {self.config.label()} unavailable: {self._last_error}"
            ) from e

    async def acquire(self, windows: Sequence[Window], amount: float) -> Decision:
        now = self.clock()
        slots = [_Slot.at(w, now) for w in windows]
        keys: list[str] = []
        args: list[Any] = [repr(float(amount))]
        for s in slots:
            keys += [self._key(s.window, s.start), self._key(s.window, s.start - s.window.size)]
            args += [
                repr(float(s.window.limit)),
                "1" if s.window.sliding else "0",
                repr(s.weight),
                self._ttl_ms(s.window, s.start, now),
            ]
        if not slots:
            return _decide([], [], amount, True, now)
        out = await self._run(_ACQUIRE, keys, args)
        allowed = int(out[0]) == 1
        values = [float(v) for v in out[1:]]
        counts = list(zip(values[0::2], values[1::2], strict=True))
        return _decide(slots, counts, amount, allowed, now)

    async def adjust(self, ticket: Ticket, delta: float) -> None:
        if not delta:
            return
        now = self.clock()
        live = [(w, s) for w, s in ticket.charges if w.lifetime_end(s) > now]
        if not live:
            return
        keys = [self._key(w, s) for w, s in live]
        ttls = [self._ttl_ms(w, s, now) for w, s in live]
        await self._run(_ADJUST, keys, [repr(float(delta)), *ttls])

    async def aclose(self) -> None:
        await self.client.aclose(close_connection_pool=True)


#: seconds a Redis store the config no longer names stays open after a reload, for
#: the calls in flight that still count in it (a use after the close reconnects)
RETIRE_AFTER = 120.0


def counters(gateway: Any, redis: RedisConfig | None) -> Counters:
    """The shared Counters for a store: one LocalCounters per gateway, one RedisCounters
    per distinct redis config (pooled connections), created on first use, retired when
    a reload drops its config (`retire_unused`), closed at shutdown (`close_all`, called
    by the gateway's Lifecycle)."""
    store: dict[Any, Counters] | None = getattr(gateway, "counters", None)
    if store is None:
        store = {}
        gateway.counters = store
    # a frozen config is hashable and compares by value: equal blocks share one pool
    key: Any = "local" if redis is None else ("redis", redis)
    found = store.get(key)
    if found is None:
        found = store[key] = LocalCounters() if redis is None else RedisCounters(redis)
    return found


def redis_stores(config: Any) -> set[RedisConfig]:
    """The Redis servers the limit plugins of a gateway config count in (each plugin
    config's `store`: rate-limiting's and ai-rate-limiting-advanced's)."""
    return {
        store
        for p in config.all_plugins()
        if isinstance(store := getattr(p.config, "store", None), RedisConfig)
    }


def retire_unused(gateway: Any, config: Any) -> None:
    """After a reload: close, `RETIRE_AFTER` seconds later, the Redis pools no plugin of
    the new config counts in (local counters and unchanged Redis blocks are kept, so
    their limits carry over)."""
    store: dict[Any, Counters] = getattr(gateway, "counters", None) or {}
    keep = {("redis", s) for s in redis_stores(config)}
    for key in [k for k in store if k != "local" and k not in keep]:
        retired = store.pop(key)
        task = None
        with contextlib.suppress(RuntimeError):  # no loop (a test): closed by close_all
            task = asyncio.get_running_loop().create_task(
                _close_later(gateway, retired), name="llmitm retire counters"
            )
        _closing(gateway)[retired] = task
        log.info(
            "redis %s: no plugin counts in it now; its connections close in %.0f s",
            key[1].label(),
            RETIRE_AFTER,
        )


def _closing(gateway: Any) -> dict[Counters, asyncio.Task[None] | None]:
    """The retired Counters of a gateway, with the task that closes each."""
    closing = getattr(gateway, "counters_closing", None)
    if closing is None:
        closing = gateway.counters_closing = {}
    return closing


async def _close_later(gateway: Any, c: Counters) -> None:
    await asyncio.sleep(RETIRE_AFTER)
    _closing(gateway).pop(c, None)
    await _close(c)


async def _close(c: Counters) -> None:
    try:
        await c.aclose()
    except Exception as e:  # noqa: BLE001 a broken connection is no news when closing
        log.debug("closing counters: %s", e)


async def close_all(gateway: Any) -> None:
    """Close every Counters of the gateway, retired ones included (at shutdown)."""
    store: dict[Any, Counters] = getattr(gateway, "counters", None) or {}
    items = list(store.values())
    store.clear()
    closing = _closing(gateway)
    for c, task in list(closing.items()):
        if task is not None:
            task.cancel()
        items.append(c)
    closing.clear()
    for c in items:
        await _close(c)
