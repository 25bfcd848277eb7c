"""rate-limiting: its config (Kong's fields, clear load errors), whose requests count
together, the headers a client gets, and the addon's decisions (with the local store,
and with a Redis that cannot be reached)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from mitmproxy.test import tflow

from addons.calls import Call, Calls
from addons.config import load_text
from addons.config.model import Consumer, Credential, GatewayConfig
from addons.policies import rate_limiting as rl
from addons.policies._counters import Decision, Ticket, Window, WindowState
from exporters.metrics import Metrics
from tests.conftest import free_port
from tests.policy_helpers import load_error

ROUTE = """
_format_version: "3.0"
consumers:
  - username: alice
    id: alice-id
  - username: bob
    plugins:
      - name: rate-limiting
        config: {{minute: 1}}
services:
  - name: svc
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {{provider: mock, name: mock-gpt}}}}
          - name: rate-limiting
            config: {config}
"""


def load(config: str) -> GatewayConfig:
    return load_text(ROUTE.format(config=config))


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{}", "at least one of second, minute, hour, day, month or year must be set"),
        ("{limit_by: ip}", "at least one of second, minute"),
        (
            "{second: 10, minute: 5}",
            "the limit for minute (5) cannot be lower than the limit for second (10)",
        ),
        (
            "{hour: 100, day: 50}",
            "the limit for day (50) cannot be lower than the limit for hour (100)",
        ),
        ("{minute: 0}", "config.minute: "),
        ("{minute: -1}", "config.minute: "),
        ("{minute: 5, limit_by: header}", "header_name is required when limit_by is header"),
        ("{minute: 5, limit_by: path}", "path is required when limit_by is path"),
        ("{minute: 5, limit_by: route}", "config.limit_by"),
        ("{minute: 5, policy: cluster}", "policy cluster keeps Kong's counters in its database"),
        ("{minute: 5, policy: cluster}", "use policy redis"),
        ("{minute: 5, policy: redis}", "policy redis needs redis.host (or redis_host)"),
        ("{minute: 5, policy: redis, redis: {port: 6380}}", "policy redis needs redis.host"),
        (
            "{minute: 5, policy: redis, redis_host: a, redis: {host: b}}",
            "redis_host and redis.host are both set, to different values",
        ),
        ("{minute: 5, redis: {host: a, port: 0}}", "config.redis.port"),
        ("{minute: 5, redis: {host: a, hots: b}}", "config.redis.hots"),
        ("{minute: 5, policy: redis, redis_host: a, redis_timeout: 0}", "config.redis_timeout"),
        ("{minute: 5, error_code: 200}", "config.error_code"),
        ("{minute: 5, burst: 3}", "config.burst"),
    ],
)
def test_bad_configs_are_load_errors(config: str, message: str) -> None:
    text = load_error(ROUTE.format(config=config))
    assert message in text
    assert "plugins[1].config" in text  # names the plugin's block


def test_defaults_are_kongs() -> None:
    conf = rl.Config(minute=5)
    assert conf.limit_by == "consumer"
    assert conf.policy == "local" and conf.store is None
    assert conf.fault_tolerant is True
    assert conf.hide_client_headers is False
    assert conf.error_code == 429
    assert conf.error_message == "API rate limit exceeded"
    assert conf.periods == (("minute", 60, 5),)


def test_all_periods_shortest_first() -> None:
    conf = rl.Config(year=6, second=1, day=4, minute=2, month=5, hour=3)
    assert [p for p, _, _ in conf.periods] == ["second", "minute", "hour", "day", "month", "year"]
    assert [s for _, s, _ in conf.periods] == [1, 60, 3600, 86400, 2592000, 31536000]


def test_redis_block_and_kongs_flat_fields() -> None:
    block = load(
        "{minute: 5, policy: redis, sync_rate: 10, redis: {host: r.example, port: 6380, "
        "username: u, password: p, database: 2, ssl: true, ssl_verify: true, "
        "server_name: r.internal, timeout: 500}}"
    )
    store = block.routes[0].plugin("rate-limiting").store
    assert (store.host, store.port, store.username, store.password) == ("r.example", 6380, "u", "p")
    assert (store.database, store.ssl, store.ssl_verify, store.server_name) == (
        2,
        True,
        True,
        "r.internal",
    )
    assert store.timeout == 500
    flat = load(
        "{minute: 5, policy: redis, redis_host: r.example, redis_port: 6380, "
        "redis_password: p, redis_username: u, redis_database: 2, redis_ssl: true, "
        "redis_ssl_verify: true, redis_server_name: r.internal, redis_timeout: 500}"
    )
    assert flat.routes[0].plugin("rate-limiting").store == store
    # both forms may say the same thing
    same = load("{minute: 5, policy: redis, redis_host: h, redis: {host: h}}")
    assert same.routes[0].plugin("rate-limiting").store.host == "h"
    # with policy local a redis block is ignored
    local = load("{minute: 5, redis: {host: h}}")
    assert local.routes[0].plugin("rate-limiting").store is None


# ----------------------------------------------------------------------- identity


def call_for(
    config: GatewayConfig,
    consumer: Consumer | None = None,
    credential: Credential | None = None,
    ip: str = "10.0.0.7",
) -> Call:
    route = config.routes[0]
    call = Call(config, route, None, 0.0, client_ip=ip, plugins=route.plugins)
    if consumer is not None or credential is not None:
        call.set_consumer(consumer, credential)
    return call


def flow_to(path: str = "/v1/chat/completions", headers: dict[str, str] | None = None) -> Any:
    f = tflow.tflow()
    f.request.path = path
    for k, v in (headers or {}).items():
        f.request.headers[k] = v
    return f


ALICE = Consumer("alice", None, id="alice-id")
NAMELESS_ID = Consumer(None, "cust-7")
KEY = "sk-very-secret-key"


@pytest.mark.parametrize(
    ("config", "who", "headers", "path", "expected"),
    [
        ("{minute: 1}", "alice", {}, None, ("consumer", "alice-id")),
        ("{minute: 1}", "custom", {}, None, ("consumer", "cust-7")),
        ("{minute: 1}", None, {}, None, ("ip", "10.0.0.7")),
        ("{minute: 1, limit_by: credential}", "alice", {}, None, ("credential", "cred-1")),
        ("{minute: 1, limit_by: credential}", None, {}, None, ("ip", "10.0.0.7")),
        ("{minute: 1, limit_by: ip}", "alice", {}, None, ("ip", "10.0.0.7")),
        ("{minute: 1, limit_by: service}", None, {}, None, ("service", "svc")),
        (
            "{minute: 1, limit_by: header, header_name: X-Tenant}",
            None,
            {"x-tenant": "t1"},
            None,
            ("header", "t1"),
        ),
        (
            "{minute: 1, limit_by: header, header_name: X-Tenant}",
            None,
            {},
            None,
            ("ip", "10.0.0.7"),
        ),
        (
            "{minute: 1, limit_by: header, header_name: X-Tenant}",
            None,
            {"X-Tenant": ""},
            None,
            ("ip", "10.0.0.7"),
        ),
        (
            "{minute: 1, limit_by: path, path: /v1/chat/completions}",
            None,
            {},
            None,
            ("path", "/v1/chat/completions"),
        ),
        (
            "{minute: 1, limit_by: path, path: /v1/chat/completions}",
            None,
            {},
            "/v1/chat/completions?a=1",
            ("path", "/v1/chat/completions"),
        ),
        ("{minute: 1, limit_by: path, path: /v1/other}", None, {}, None, ("ip", "10.0.0.7")),
    ],
)
def test_identifier(
    config: str, who: str | None, headers: dict, path: str | None, expected: tuple
) -> None:
    cfg = load(config)
    consumer = {"alice": ALICE, "custom": NAMELESS_ID, None: None}[who]
    cred = Credential(KEY, consumer, id="cred-1") if consumer else None
    call = call_for(cfg, consumer, cred)
    conf = call.plugin("rate-limiting")
    assert rl.identifier(conf, call, flow_to(path or "/v1/chat/completions", headers)) == expected


def test_a_credential_without_id_is_never_named_by_its_key() -> None:
    cfg = load("{minute: 1, limit_by: credential}")
    call = call_for(cfg, ALICE, Credential(KEY, ALICE))
    kind, ident = rl.identifier(call.plugin("rate-limiting"), call, flow_to())
    assert kind == "credential" and KEY not in ident and ident.startswith("key-sha256:")
    other = call_for(cfg, ALICE, Credential(KEY + "x", ALICE))
    assert rl.identifier(call.plugin("rate-limiting"), other, flow_to())[1] != ident


def test_long_identifiers_are_digested() -> None:
    cfg = load("{minute: 1, limit_by: header, header_name: X-Tenant}")
    call = call_for(cfg)
    kind, ident = rl.identifier(
        call.plugin("rate-limiting"), call, flow_to(headers={"X-Tenant": "t" * 500})
    )
    assert kind == "header" and ident.startswith("sha256:") and len(ident) < 100


def test_windows_are_per_plugin_scope_and_identity() -> None:
    conf = rl.Config(minute=5, hour=100)
    ws = rl.windows(conf, "route:chat", "ip", "1.2.3.4")
    assert [(w.key, w.size, w.limit) for w in ws] == [
        ("rl:route:chat:ip:1.2.3.4:minute", 60, 5),
        ("rl:route:chat:ip:1.2.3.4:hour", 3600, 100),
    ]
    assert rl.windows(conf, "consumer:bob", "ip", "1.2.3.4")[0].key != ws[0].key


# ------------------------------------------------------------------------ headers


def decision(allowed: bool, *states: tuple[int, float, float, float], retry: int = 0) -> Decision:
    """states: (size, limit, used, reset)."""
    st = [
        WindowState(Window(f"k{size}", size, limit), used, max(0, limit - used), reset)
        for size, limit, used, reset in states
    ]
    return Decision(allowed, st, retry, Ticket((), 1 if allowed else 0))


def test_headers_per_period_and_the_closest_window() -> None:
    conf = rl.Config(second=10, minute=100, hour=1000)
    d = decision(True, (1, 10, 2, 0.4), (60, 100, 95, 30.2), (3600, 1000, 95, 1800))
    assert rl.headers(conf, d) == {
        "X-RateLimit-Limit-Second": "10",
        "X-RateLimit-Remaining-Second": "8",
        "X-RateLimit-Limit-Minute": "100",
        "X-RateLimit-Remaining-Minute": "5",
        "X-RateLimit-Limit-Hour": "1000",
        "X-RateLimit-Remaining-Hour": "905",
        # the minute has the fewest left
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "5",
        "RateLimit-Reset": "31",
    }


def test_headers_tie_goes_to_the_later_reset_and_deny_adds_retry_after() -> None:
    conf = rl.Config(minute=5, hour=5)
    d = decision(False, (60, 5, 5, 12.5), (3600, 5, 5, 1500), retry=1500)
    h = rl.headers(conf, d)
    assert h["RateLimit-Remaining"] == "0"
    assert h["RateLimit-Reset"] == "1500"  # the hour: the same remaining, the later reset
    assert h["Retry-After"] == "1500"
    assert h["X-RateLimit-Remaining-Minute"] == "0"


def test_headers_reset_is_at_least_one_second_and_limits_keep_fractions() -> None:
    conf = rl.Config(second=2.5)
    h = rl.headers(conf, decision(True, (1, 2.5, 1, 0.01)))
    assert h["RateLimit-Reset"] == "1"
    assert h["X-RateLimit-Limit-Second"] == "2.5"
    assert h["X-RateLimit-Remaining-Second"] == "1"


# -------------------------------------------------------------------------- addon


class Gw:
    def __init__(self) -> None:
        self.calls = Calls()
        self.counters: dict = {}
        self.metrics = Metrics(process_collectors=False)


async def request(policy: rl.Policy, flow: Any) -> None:
    """The `request` hook, as the chain runs it (sync or async)."""
    pending = policy.request(flow)
    if pending is not None:
        await pending


async def run(policy: rl.Policy, gw: Gw, call: Call, flow: Any) -> Any:
    gw.calls.put(flow, call)
    await request(policy, flow)
    if flow.response is None:  # what the upstream would answer
        flow.response = tflow.tresp()
    policy.responseheaders(flow)
    policy.response(flow)
    return flow.response


async def test_addon_allows_then_refuses_in_openai_error_shape() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load("{minute: 2, hour: 10}")
    got = [await run(policy, gw, call_for(cfg), flow_to()) for _ in range(3)]
    assert [r.status_code for r in got] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining-Minute"] for r in got] == ["1", "0", "0"]
    assert [r.headers["X-RateLimit-Remaining-Hour"] for r in got] == ["9", "8", "8"]
    refused = got[-1]
    body = json.loads(refused.content)
    assert body["error"] == {
        "message": "API rate limit exceeded",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["content-type"] == "application/json"


async def test_addon_refusal_marks_the_call_failed_by_the_gateway() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load("{minute: 1}")
    await run(policy, gw, call_for(cfg), flow_to())
    call = call_for(cfg)
    await run(policy, gw, call, flow_to())
    assert call.error is not None and call.error.status == 429 and call.error_source == "gateway"


async def test_addon_counts_clients_apart() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load("{minute: 1}")
    a = await run(policy, gw, call_for(cfg, ip="10.0.0.1"), flow_to())
    b = await run(policy, gw, call_for(cfg, ip="10.0.0.2"), flow_to())
    again = await run(policy, gw, call_for(cfg, ip="10.0.0.1"), flow_to())
    assert (a.status_code, b.status_code, again.status_code) == (200, 200, 429)


async def test_a_consumers_own_plugin_wins_and_has_its_own_counters() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load("{minute: 5}")
    bob = cfg.consumer("bob")
    first = await run(policy, gw, call_for(cfg, bob), flow_to())
    assert first.headers["X-RateLimit-Limit-Minute"] == "1"  # bob's plugin: minute 1
    assert (await run(policy, gw, call_for(cfg, bob), flow_to())).status_code == 429
    # the route's instance counts on its own (bob's requests did not use it)
    alice = cfg.consumer("alice")
    r = await run(policy, gw, call_for(cfg, alice), flow_to())
    assert r.headers["X-RateLimit-Remaining-Minute"] == "4"


async def test_hide_client_headers() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load("{minute: 1, hide_client_headers: true}")
    ok = await run(policy, gw, call_for(cfg), flow_to())
    refused = await run(policy, gw, call_for(cfg), flow_to())
    assert refused.status_code == 429
    for r in (ok, refused):
        assert not any(h.lower().startswith(("ratelimit", "x-ratelimit")) for h in r.headers)
    assert "Retry-After" in refused.headers


async def test_custom_error_code_and_message() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load("{minute: 1, error_code: 503, error_message: Come back later}")
    await run(policy, gw, call_for(cfg), flow_to())
    r = await run(policy, gw, call_for(cfg), flow_to())
    assert r.status_code == 503
    err = json.loads(r.content)["error"]
    assert (err["message"], err["type"], err["code"]) == (
        "Come back later",
        "rate_limit_error",
        "rate_limit_exceeded",
    )


async def test_a_route_without_the_plugin_is_not_counted() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load_text(
        """
services:
  - name: s
    routes:
      - name: free
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
"""
    )
    r = await run(policy, gw, call_for(cfg), flow_to())
    assert r.status_code == 200 and "RateLimit-Limit" not in r.headers
    assert gw.counters == {}


def dead_redis(extra: str = "") -> GatewayConfig:
    # nothing listens on a fresh free port: connection refused at once
    return load(
        f"{{minute: 1, policy: redis, redis: {{host: 127.0.0.1, port: {free_port()}}}{extra}}}"
    )


async def test_redis_down_fault_tolerant_lets_requests_through(caplog: Any) -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = dead_redis()
    with caplog.at_level(logging.WARNING, logger="llmitm"):
        got = [await run(policy, gw, call_for(cfg), flow_to()) for _ in range(3)]
    assert [r.status_code for r in got] == [200, 200, 200]  # past the limit of 1
    assert gw.metrics.store_unavailable.labels("rate-limiting", "allowed")._value.get() == 3
    warnings = [r for r in caplog.records if "letting requests through" in r.getMessage()]
    assert len(warnings) == 1  # not one line per request
    assert "redis 127.0.0.1:" in warnings[0].getMessage()
    for c in gw.counters.values():
        await c.aclose()


async def test_redis_down_not_fault_tolerant_is_a_500() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = dead_redis(", fault_tolerant: false")
    call = call_for(cfg)
    r = await run(policy, gw, call, flow_to())
    assert r.status_code == 500
    err = json.loads(r.content)["error"]
    assert "Redis is unavailable" in err["message"]
    assert err["code"] == "rate_limit_unavailable"
    assert call.error_source == "gateway"
    assert gw.metrics.store_unavailable.labels("rate-limiting", "refused")._value.get() == 1
    assert gw.metrics.store_unavailable.labels("rate-limiting", "allowed")._value.get() == 0
    for c in gw.counters.values():
        await c.aclose()


async def test_redis_policy_against_a_real_server(redis_server: Any) -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load(
        f"{{minute: 2, policy: redis, redis_host: 127.0.0.1, redis_port: {redis_server.port}}}"
    )
    got = [(await run(policy, gw, call_for(cfg), flow_to())).status_code for _ in range(3)]
    assert got == [200, 200, 429]
    # another gateway process (another addon, another connection pool): the same counters
    gw2 = Gw()
    r = await run(rl.Policy(gw2), gw2, call_for(cfg), flow_to())
    assert r.status_code == 429
    for g in (gw, gw2):
        for c in g.counters.values():
            await c.aclose()


async def test_decided_before_the_body_when_the_client_is_known() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load("{minute: 1}")
    first, second = flow_to(), flow_to()
    for f in (first, second):
        gw.calls.put(f, call_for(cfg))
        await policy.requestheaders(f)
    assert first.response is None
    assert second.response is not None and second.response.status_code == 429
    # the `request` hook does not count the allowed one a second time
    assert policy.request(first) is None
    assert first.response is None
    assert [b[0] for b in gw.counters["local"]._buckets.values()] == [1]


KEY_IN_BODY = """
_format_version: "3.0"
consumers:
  - username: alice
    keyauth_credentials: [{key: alice-key}]
    plugins:
      - name: rate-limiting
        config: {minute: 1}
services:
  - name: svc
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
          - name: key-auth
            config: {key_in_body: true}
          - name: rate-limiting
            config: {minute: 100}
"""


async def test_waits_for_the_body_when_key_auth_may_find_the_consumer_there() -> None:
    gw = Gw()
    policy = rl.Policy(gw)
    cfg = load_text(KEY_IN_BODY)
    f = flow_to()
    call = call_for(cfg)
    gw.calls.put(f, call)
    await policy.requestheaders(f)
    assert "local" not in gw.counters  # not counted yet: the consumer may have its own limit
    # key-auth found alice in the body: her own limit (1 a minute) applies
    call.set_consumer(*next((c.consumer, c) for c in cfg.credentials.values()))
    await request(policy, f)
    assert f.response is None
    f2 = flow_to()
    call2 = call_for(cfg)
    call2.set_consumer(call.consumer, call.credential)
    gw.calls.put(f2, call2)
    await policy.requestheaders(f2)  # known from a header this time: decided at once
    assert f2.response is not None and f2.response.status_code == 429
