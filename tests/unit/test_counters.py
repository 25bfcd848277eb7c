"""The limit plugins' counters: one table of cases run against the in-process counters
and against a real redis-server, with an injected clock."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from addons.config import load_text
from addons.policies import _counters
from addons.policies._counters import (
    MONTH,
    YEAR,
    Counters,
    CountersUnavailable,
    LocalCounters,
    RedisConfig,
    RedisCounters,
    Window,
    close_all,
    counters,
)
from addons.state import Gateway


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


Make = Callable[..., Counters]


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Builds the counters under test (both stores) with a given clock."""
    made: list[Counters] = []

    def build(clock: Clock, **kw: Any) -> Counters:
        if request.param == "local":
            c: Counters = LocalCounters(clock=clock)
        else:
            server = request.getfixturevalue("redis_server")
            c = RedisCounters(RedisConfig(host=server.host, port=server.port), clock=clock, **kw)
        made.append(c)
        return c

    yield build
    for c in made:
        await c.aclose()


async def used(c: Counters, *windows: Window) -> list[float]:
    d = await c.acquire(windows, 0)
    assert d.allowed or any(s.remaining == 0 for s in d.states)
    return [s.used for s in d.states]


async def test_fixed_window_boundaries(make: Make) -> None:
    clock = Clock(1000.0)  # the minute [960, 1020)
    c = make(clock)
    w = Window("t:minute", 60, 3)
    results = [await c.acquire([w], 1) for _ in range(4)]
    assert [d.allowed for d in results] == [True, True, True, False]
    assert [d.states[0].remaining for d in results] == [2, 1, 0, 0]
    denied = results[-1]
    assert denied.retry_after == 20
    assert denied.states[0].reset == pytest.approx(20)
    assert results[0].retry_after == 0
    clock.t = 1019.9  # still the same window
    assert not (await c.acquire([w], 1)).allowed
    clock.t = 1020.0  # a new window starts on a multiple of its size
    d = await c.acquire([w], 1)
    assert d.allowed and d.states[0].used == 1 and d.states[0].reset == pytest.approx(60)


async def test_a_deny_in_one_window_adds_nothing_to_the_others(make: Make) -> None:
    clock = Clock(1000.0)
    c = make(clock)
    second, minute = Window("t:second", 1, 2), Window("t:minute", 60, 3)
    got = [(await c.acquire([second, minute], 1)).allowed for _ in range(3)]
    assert got == [True, True, False]  # the second's limit
    assert await used(c, second, minute) == [2, 2]  # the minute was not charged
    clock.t = 1001.0
    assert (await c.acquire([second, minute], 1)).allowed  # minute: 3
    d = await c.acquire([second, minute], 1)
    assert not d.allowed  # the minute's limit now
    assert d.retry_after == 19  # the minute ends at 1020
    assert await used(c, second, minute) == [1, 3]


async def test_retry_after_is_the_longest_wait_of_the_windows_that_refuse(make: Make) -> None:
    clock = Clock(1000.5)
    c = make(clock)
    second, hour = Window("t:s", 1, 1), Window("t:h", 3600, 1)
    assert (await c.acquire([second, hour], 1)).allowed
    d = await c.acquire([second, hour], 1)
    assert not d.allowed
    assert d.retry_after == 3600 - 1000  # the hour [0, 3600) refuses too


async def test_sliding_window_estimate(make: Make) -> None:
    clock = Clock(1000.0)  # window [1000, 1010)
    c = make(clock)
    w = Window("t:sliding", 10, 10, sliding=True)
    assert (await c.acquire([w], 8)).allowed
    clock.t = 1015.0  # halfway through the next window: the previous one weighs 0.5
    assert await used(c, w) == [pytest.approx(4)]
    assert (await c.acquire([w], 6)).allowed  # 6 + 8 * 0.5 = 10
    d = await c.acquire([w], 1)
    assert not d.allowed
    # 6 + 8 * (1 - f) + 1 <= 10 once f >= 0.625, at 1016.25
    assert d.retry_after == 2
    clock.t = 1016.25
    assert (await c.acquire([w], 1)).allowed
    clock.t = 1030.0  # two windows later: nothing counts any more
    assert await used(c, w) == [0]


async def test_sliding_window_current_alone_over_the_limit_waits_into_the_next(
    make: Make,
) -> None:
    clock = Clock(1000.0)
    c = make(clock)
    w = Window("t:sliding2", 10, 10, sliding=True)
    assert (await c.acquire([w], 10)).allowed
    d = await c.acquire([w], 5)
    assert not d.allowed
    # at 1010 + f*10 the previous (10) weighs 10 * (1 - f): <= 5 once f >= 0.5
    assert d.retry_after == 15


async def test_adjust_on_the_ticket_window_instances(make: Make) -> None:
    clock = Clock(1000.0)
    c = make(clock)
    w = Window("t:adjust", 60, 10)
    d = await c.acquire([w], 5)
    assert d.ticket.amount == 5
    await c.adjust(d.ticket, 3)
    assert await used(c, w) == [8]
    await c.adjust(d.ticket, -20)  # never below 0
    assert await used(c, w) == [0]
    await c.adjust(d.ticket, 4)
    clock.t = 1030.0  # a new window [1020, 1080): the ticket's is another one
    await c.adjust(d.ticket, 4)
    assert await used(c, w) == [0]


async def test_adjust_reaches_the_previous_window_of_a_sliding_limit(make: Make) -> None:
    clock = Clock(1000.0)  # window [960, 1020)
    c = make(clock)
    w = Window("t:adjust-sliding", 60, 100, sliding=True)
    d = await c.acquire([w], 5)
    clock.t = 1050.0  # window [1020, 1080): the previous weighs 0.5
    assert await used(c, w) == [pytest.approx(2.5)]
    await c.adjust(d.ticket, 5)  # the instance [960, 1020) now holds 10
    assert await used(c, w) == [pytest.approx(5)]
    await c.adjust(d.ticket, -100)
    assert await used(c, w) == [0]


async def test_a_pure_check_then_adjust_charges_the_window(make: Make) -> None:
    """How a token limit uses them: check with 0, charge the real usage afterwards."""
    clock = Clock(1000.0)
    c = make(clock)
    w = Window("t:check", 60, 100)
    d = await c.acquire([w], 0)
    assert d.allowed and d.ticket.amount == 0
    await c.adjust(d.ticket, 120)
    d = await c.acquire([w], 0)
    assert not d.allowed and d.states[0].remaining == 0 and d.retry_after == 20


async def test_float_amounts(make: Make) -> None:
    c = make(Clock(1000.0))
    w = Window("t:cost", 60, 1.0)
    got = [(await c.acquire([w], 0.1)).allowed for _ in range(11)]
    assert got == [True] * 10 + [False]


async def test_more_than_the_limit_never_fits(make: Make) -> None:
    c = make(Clock(1000.0))
    d = await c.acquire([Window("t:big", 60, 5)], 6)
    assert not d.allowed and d.retry_after >= 1
    assert d.states[0].used == 0


async def test_exact_under_concurrency(make: Make) -> None:
    c = make(Clock(1000.0))
    windows = [Window("t:conc:minute", 60, 50), Window("t:conc:hour", 3600, 1000)]
    decisions = await asyncio.gather(*(c.acquire(windows, 1) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert await used(c, *windows) == [50, 50]


async def test_different_keys_are_different_counters(make: Make) -> None:
    c = make(Clock(1000.0))
    a, b = Window("t:a", 60, 1), Window("t:b", 60, 1)
    assert (await c.acquire([a], 1)).allowed
    assert (await c.acquire([b], 1)).allowed
    assert not (await c.acquire([a], 1)).allowed


# ---------------------------------------------------------------- Redis specifics


async def test_redis_keys_expire_after_their_window(redis_server: Any) -> None:
    clock = Clock(1000.0)
    c = RedisCounters(
        RedisConfig(host=redis_server.host, port=redis_server.port), clock=clock, prefix="p:"
    )
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        await c.acquire([Window("fixed", 60, 10), Window("sliding", 60, 10, sliding=True)], 1)
        assert sorted(await client.keys("*")) == [b"p:fixed:960", b"p:sliding:960"]
        # the fixed window [960, 1020) ends in 20 s; a sliding one counts one more window
        assert 19_000 < await client.pttl("p:fixed:960") <= 21_000
        assert 79_000 < await client.pttl("p:sliding:960") <= 81_000
        # a key adjust creates expires too
        d = await c.acquire([Window("later", 60, 10)], 0)
        assert await client.keys("p:later*") == []  # a pure check writes nothing
        await c.adjust(d.ticket, 2)
        assert 19_000 < await client.pttl("p:later:960") <= 21_000
    finally:
        await client.aclose()
        await c.aclose()


async def test_two_clients_share_one_limit(redis_server: Any) -> None:
    """Two gateway processes = two clients of one server: one limit."""
    conf = RedisConfig(host=redis_server.host, port=redis_server.port)
    clock = Clock(1000.0)
    a, b = RedisCounters(conf, clock=clock), RedisCounters(conf, clock=clock)
    try:
        w = [Window("shared", 60, 30)]
        decisions = await asyncio.gather(*(x.acquire(w, 1) for _ in range(50) for x in (a, b)))
        assert sum(d.allowed for d in decisions) == 30
    finally:
        await a.aclose()
        await b.aclose()


async def test_scripts_are_loaded_again_after_a_flush(redis_server: Any) -> None:
    c = RedisCounters(RedisConfig(host=redis_server.host, port=redis_server.port))
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        w = [Window("flush", 60, 5)]
        assert (await c.acquire(w, 1)).allowed
        await client.script_flush()  # the server forgets the scripts (NOSCRIPT)
        d = await c.acquire(w, 1)
        assert d.allowed and d.states[0].used == 2
    finally:
        await client.aclose()
        await c.aclose()


async def test_unavailable_when_redis_is_down_then_back(redis_server: Any) -> None:
    c = RedisCounters(
        RedisConfig(host=redis_server.host, port=redis_server.port, timeout=500), backoff=0.0
    )
    w = [Window("down", 60, 5)]
    try:
        assert (await c.acquire(w, 1)).allowed
        redis_server.kill()
        with pytest.raises(CountersUnavailable, match="unavailable"):
            await c.acquire(w, 1)
        with pytest.raises(CountersUnavailable):
            await c.adjust((await LocalCounters().acquire(w, 1)).ticket, 1)
        redis_server.restart()
        d = await c.acquire(w, 1)
        assert d.allowed and d.states[0].used == 1  # a restarted Redis starts empty
    finally:
        await c.aclose()


async def test_backoff_fails_fast_without_contacting_redis(redis_server: Any) -> None:
    c = RedisCounters(RedisConfig(host=redis_server.host, port=redis_server.port), backoff=60)
    w = [Window("backoff", 60, 5)]
    try:
        redis_server.kill()
        with pytest.raises(CountersUnavailable):
            await c.acquire(w, 1)
        redis_server.restart()
        # within the back-off the store is not tried again, even though it is back
        with pytest.raises(CountersUnavailable, match="ConnectionError"):
            await c.acquire(w, 1)
    finally:
        await c.aclose()


async def test_password_and_wrong_password(redis_server: Any) -> None:
    admin = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    good = RedisCounters(
        RedisConfig(host=redis_server.host, port=redis_server.port, password="s3cret")
    )
    bad = RedisCounters(RedisConfig(host=redis_server.host, port=redis_server.port, password="no"))
    try:
        assert (await good.acquire([Window("auth", 60, 5)], 1)).allowed
        with pytest.raises(CountersUnavailable):
            await bad.acquire([Window("auth", 60, 5)], 1)
    finally:
        await good.aclose()
        await bad.aclose()


async def test_database_is_used(redis_server: Any) -> None:
    c = RedisCounters(RedisConfig(host=redis_server.host, port=redis_server.port, database=3))
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port, db=3)
    try:
        await c.acquire([Window("db", 60, 5)], 1)
        assert len(await client.keys("llmitm:db:*")) == 1
    finally:
        await client.aclose()
        await c.aclose()


# -------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("when", "size", "start", "end"),
    [
        ((2024, 2, 15, 12, 0, 0), MONTH, (2024, 2, 1), (2024, 3, 1)),
        ((2024, 12, 31, 23, 59, 59), MONTH, (2024, 12, 1), (2025, 1, 1)),
        ((2024, 2, 15, 12, 0, 0), YEAR, (2024, 1, 1), (2025, 1, 1)),
    ],
)
def test_calendar_windows(when: tuple, size: int, start: tuple, end: tuple) -> None:
    now = calendar.timegm(when)
    w = Window("cal", size, 1, calendar=True)
    assert w.bounds(now) == (
        calendar.timegm((*start, 0, 0, 0)),
        calendar.timegm((*end, 0, 0, 0)),
    )
    # without calendar: multiples of the size since the epoch
    plain = Window("cal", size, 1).bounds(now)
    assert plain[0] % size == 0 and plain[1] - plain[0] == size


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Window("bad", 0, 1)


async def test_local_counters_forget_expired_windows() -> None:
    clock = Clock(1000.0)
    c = LocalCounters(clock=clock)
    for i in range(100):
        await c.acquire([Window(f"ip-{i}", 1, 5)], 1)
    assert len(c) == 100
    clock.t += LocalCounters.SWEEP_EVERY + 1
    await c.acquire([Window("other", 1, 5)], 1)
    assert len(c) == 1


async def test_one_counters_per_store_per_gateway(redis_server: Any) -> None:
    class Gw:
        pass

    gw = Gw()
    local = counters(gw, None)
    assert isinstance(local, LocalCounters) and counters(gw, None) is local
    conf = RedisConfig(host=redis_server.host, port=redis_server.port)
    r = counters(gw, conf)
    assert isinstance(r, RedisCounters)
    assert counters(gw, RedisConfig(host=redis_server.host, port=redis_server.port)) is r
    assert counters(gw, conf.model_copy(update={"database": 1})) is not r
    assert counters(Gw(), None) is not local
    await close_all(gw)
    assert gw.counters == {}  # type: ignore[attr-defined]


# ------------------------------------------------------------------ after a reload

RELOADABLE = """
_format_version: "3.0"
services:
  - name: svc
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {{provider: mock, name: mock-gpt}}}}
          - name: {plugin}
            config: {config}
"""

RATE_REDIS = "{{minute: 5, policy: redis, redis: {{host: {host}, port: {port}}}}}"
AI_REDIS = (
    "{{llm_providers: [{{name: mock, limit: [100], window_size: [60]}}],"
    " strategy: redis, redis: {{host: {host}, port: {port}}}}}"
)


Retiring = Callable[[float], Gateway]


@pytest.fixture
def gateway_retiring_after(monkeypatch: pytest.MonkeyPatch) -> Retiring:
    """A gateway whose reloads close the Redis pools they drop after that many seconds."""

    def make(seconds: float) -> Gateway:
        monkeypatch.setattr(_counters, "RETIRE_AFTER", seconds)
        return Gateway()

    return make


def gateway_config(redis_server: Any, plugin: str = "rate-limiting", conf: str = RATE_REDIS) -> Any:
    text = conf.format(host=redis_server.host, port=redis_server.port)
    return load_text(RELOADABLE.format(plugin=plugin, config=text))


def local_config() -> Any:
    return load_text(RELOADABLE.format(plugin="rate-limiting", config="{minute: 5}"))


async def clients(redis_server: Any) -> int:
    """The connections redis-server has, but for the one asking."""
    observer = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        return len(await observer.client_list()) - 1
    finally:
        await observer.aclose()


async def store_in_use(gw: Any) -> Counters:
    plugin = gw.config.routes[0].plugins
    (conf,) = [p.config for name, p in plugin.items() if name != "ai-proxy"]
    c = counters(gw, conf.store)
    assert isinstance(c, RedisCounters)
    await c.acquire([Window("r", 60, 5)], 1)  # opens a connection
    return c


@pytest.mark.parametrize(
    ("plugin", "conf"),
    [("rate-limiting", RATE_REDIS), ("ai-rate-limiting-advanced", AI_REDIS)],
    ids=["rate-limiting", "ai-rate-limiting-advanced"],
)
async def test_a_reload_that_drops_a_redis_store_closes_its_connections(
    redis_server: Any, gateway_retiring_after: Retiring, plugin: str, conf: str
) -> None:
    gw = gateway_retiring_after(0.3)
    gw.apply(gateway_config(redis_server, plugin, conf))
    old = await store_in_use(gw)
    assert await clients(redis_server) == 1
    gw.apply(local_config())  # the limit is counted in memory now
    assert ("redis", old.config) not in gw.counters
    # calls in flight still count in it for a while
    await old.acquire([Window("r", 60, 5)], 1)
    assert await clients(redis_server) == 1
    deadline = asyncio.get_running_loop().time() + 10
    while await clients(redis_server):
        assert asyncio.get_running_loop().time() < deadline, "the old pool stayed open"
        await asyncio.sleep(0.05)
    assert not gw.counters_closing
    await close_all(gw)


async def test_a_reload_keeping_the_redis_block_keeps_its_pool(
    redis_server: Any, gateway_retiring_after: Retiring
) -> None:
    gw = gateway_retiring_after(0.0)
    gw.apply(gateway_config(redis_server))
    first = await store_in_use(gw)
    gw.apply(gateway_config(redis_server))  # the same file, saved again
    again = await store_in_use(gw)
    assert again is first
    await asyncio.sleep(0.1)
    assert await clients(redis_server) == 1
    assert not gw.counters_closing
    await close_all(gw)
    assert await clients(redis_server) == 0


async def test_shutdown_closes_retired_stores_at_once(
    redis_server: Any, gateway_retiring_after: Retiring
) -> None:
    gw = gateway_retiring_after(3600.0)
    gw.apply(gateway_config(redis_server))
    await store_in_use(gw)
    gw.apply(local_config())
    assert await clients(redis_server) == 1
    await close_all(gw)
    assert await clients(redis_server) == 0
    assert not gw.counters_closing
