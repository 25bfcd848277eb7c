"""ai-rate-limiting-advanced: its config (Kong's fields, clear load errors), which
windows a request counts against (llm_providers, policies and their matching), the
estimate a request reserves, the headers and messages a client sees, and the
reservation arithmetic (reserve, refuse, settle with the real usage) on LocalCounters.

The addon is driven through its `request` / `response` hooks with mitmproxy's test
flows and a minimal gateway; end-to-end behaviour (a real mitmdump, the openai SDK,
Redis shared by two processes) is in tests/e2e/test_ai_rate_limiting.py.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy.test import tflow

from addons.calls import Call, Calls
from addons.config import load_text
from addons.config.loader import ConfigError
from addons.policies import _counters
from addons.policies import ai_rate_limiting as arl
from addons.policies._counters import CountersUnavailable, LocalCounters
from exporters.metrics import Metrics
from providers.base import Usage

# --------------------------------------------------------------------------- helpers

ROUTE = """
_format_version: "3.0"
consumers:
  - username: alice
    custom_id: c-alice
    id: id-alice
    keyauth_credentials: [{key: alice-key, id: cred-alice}]
  - username: bob
    keyauth_credentials: [{key: bob-secret-key}]
services:
  - name: svc
    url: http://127.0.0.1:9
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: PROVIDER, name: MODEL, options: OPTIONS}
          - name: ai-rate-limiting-advanced
            config: CONF
      - name: plain
        paths: ["/plain"]
        plugins:
          - name: ai-rate-limiting-advanced
            config: CONF
"""


def load(
    conf: str,
    provider: str = "mock",
    model: str = "mock-gpt",
    options: str = "{}",
) -> Any:
    text = (
        ROUTE.replace("CONF", conf)
        .replace("PROVIDER", provider)
        .replace("MODEL", model)
        .replace("OPTIONS", options)
    )
    return load_text(text)


def conf_of(cfg: Any, route: str = "chat") -> arl.Config:
    r = next(r for r in cfg.routes if r.name == route)
    return r.plugins[arl.NAME].config


def load_error(conf: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(conf)
    return str(e.value)


class Clock:
    def __init__(self, t: float = 1_000_040.0) -> None:  # 20 s into a minute
        self.t = t

    def __call__(self) -> float:
        return self.t


class Harness:
    """One policy addon on a minimal gateway, with LocalCounters on a fake clock."""

    def __init__(self, cfg: Any, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.local = LocalCounters(self.clock)
        self.gw = SimpleNamespace(
            calls=Calls(),
            counters={"local": self.local},
            metrics=Metrics(process_collectors=False),
        )
        self.addon = arl.Policy(self.gw)  # type: ignore[arg-type]

    def flow(
        self,
        body: Any,
        route: str = "chat",
        headers: dict[str, str] | None = None,
        client_ip: str = "10.0.0.1",
        consumer: str | None = None,
        path: str = "/v1/chat/completions",
    ) -> tuple[Any, Call]:
        f = tflow.tflow()
        f.request.method = "POST"
        f.request.path = path
        f.request.content = body if isinstance(body, bytes) else json.dumps(body).encode()
        for k, v in (headers or {}).items():
            f.request.headers[k] = v
        r = next(r for r in self.cfg.routes if r.name == route)
        call = Call(
            config=self.cfg,
            route=r,
            match=None,
            started_at=self.clock(),
            client_ip=client_ip,
            plugins=r.plugins,
        )
        if consumer is not None:
            c = self.cfg.consumer(consumer)
            cred = next((x for x in self.cfg.credentials.values() if x.consumer is c), None)
            call.set_consumer(c, cred)
        self.gw.calls.put(f, call)
        return f, call

    async def send(self, body: Any, **kw: Any) -> tuple[Any, Call]:
        f, call = self.flow(body, **kw)
        await self.addon.request(f)
        return f, call

    async def finish(self, f: Any, call: Call, record: Any) -> None:
        """The call ends: the response hook, then its record (settles the reservation)."""
        if f.response is None:
            from mitmproxy import http

            f.response = http.Response.make(200, b"{}")
            self.addon.response(f)
        for cb in call.on_finish:
            cb(call, record)
        if self.addon._tasks:
            await asyncio.gather(*list(self.addon._tasks))


def record(prompt: int = 0, completion: int = 0, cost: float | None = None) -> Any:
    return SimpleNamespace(
        ai=SimpleNamespace(usage=Usage(prompt, completion), cost=cost),
    )


NO_AI = SimpleNamespace(ai=None)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": text}], **extra}


def words(tokens: int) -> str:
    """A prompt the estimate counts as exactly `tokens` tokens (4 characters each)."""
    return "abcd" * tokens


def status(f: Any) -> int | None:
    return f.response.status_code if f.response is not None else None


def error_of(f: Any) -> dict[str, Any]:
    return json.loads(f.response.content)["error"]


# ------------------------------------------------------------------ config errors

LIMIT = "{name: mock, limit: [100], window_size: [60]}"


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("{}", "nothing to limit"),
        ("{llm_providers: []}", "nothing to limit"),
        (
            "{llm_providers: [{name: mock, limit: [1, 2], window_size: [60]}]}",
            "limit has 2 value(s) but window_size has 1",
        ),
        (
            "{llm_providers: [{name: mock, limit: [], window_size: []}]}",
            "at least one value",
        ),
        ("{llm_providers: [{name: mock, limit: [-5], window_size: [60]}]}", "limit -5 must be"),
        ("{llm_providers: [{name: mock, limit: [0], window_size: [60]}]}", "limit 0 must be"),
        ("{llm_providers: [{name: mock, limit: [5], window_size: [0]}]}", "window_size 0 must"),
        (
            "{llm_providers: [{name: mock, limit: [5, 6], window_size: [60, 60]}]}",
            "window_size 60 is given twice",
        ),
        (
            "{llm_providers: [{name: chatgpt, limit: [5], window_size: [60]}]}",
            "unknown provider 'chatgpt'",
        ),
        (f"{{llm_providers: [{LIMIT}, {LIMIT}]}}", "'mock' is listed twice"),
        (
            "{llm_providers: [{name: customCost, limit: [5], window_size: [60]}]}",
            "custom_cost_count_function",
        ),
        (
            f"{{llm_providers: [{LIMIT}], policies: [{{limits: [{{limit: 1, window_size: 1}}]}}]}}",
            "mutually exclusive",
        ),
        (f"{{llm_providers: [{LIMIT}], strategy: cluster}}", "strategy 'cluster'"),
        (f"{{llm_providers: [{LIMIT}], strategy: redis}}", "needs redis.host"),
        (f"{{llm_providers: [{LIMIT}], identifier: header}}", "needs header_name"),
        (f"{{llm_providers: [{LIMIT}], identifier: path}}", "identifier 'path' needs path"),
        (f"{{llm_providers: [{LIMIT}], identifier: path, path: v1}}", "must start with '/'"),
        (f"{{llm_providers: [{LIMIT}], identifier: consumer-group}}", "no consumer groups"),
        (f"{{llm_providers: [{LIMIT}], tokens_count_strategy: words}}", "tokens_count_strategy"),
        (f"{{llm_providers: [{LIMIT}], window_type: rolling}}", "window_type"),
        (f"{{llm_providers: [{LIMIT}], error_code: 200}}", "error_code"),
        (f"{{llm_providers: [{LIMIT}], retry_after_jitter_max: -1}}", "retry_after_jitter_max"),
        (f"{{llm_providers: [{LIMIT}], limit_by: ip}}", "limit_by"),
        (
            f"{{llm_providers: [{LIMIT}], request_prompt_count_function: 'return 1'}}",
            "request_prompt_count_function is Lua code",
        ),
        ("{policies: []}", "nothing to limit"),
        ("{policies: [{match: [{type: provider, values: [mock]}]}]}", "limits"),
        ("{policies: [{limits: []}]}", "limits"),
        ("{policies: [{limits: [{limit: -1, window_size: 60}]}]}", "limit"),
        ("{policies: [{limits: [{limit: 1, window_size: -60}]}]}", "window_size"),
        (
            "{policies: [{limits: [{limit: 1, window_size: 60}, {limit: 2, window_size: 60}]}]}",
            "window_size 60 is given twice in one policy",
        ),
        (
            "{policies: [{match: [{type: header}], limits: [{limit: 1, window_size: 60}]}]}",
            "needs key",
        ),
        (
            "{policies: [{match: [{type: consumer, key: email}], limits: [{limit: 1, window_size: 60}]}]}",
            "key 'email'",
        ),
        (
            "{policies: [{match: [{type: model, key: x}], limits: [{limit: 1, window_size: 60}]}]}",
            "takes no key",
        ),
        (
            "{policies: [{match: [{type: ip, values: [not-an-ip]}], limits: [{limit: 1, window_size: 60}]}]}",
            "'not-an-ip' is not an IP address",
        ),
        (
            "{policies: [{match: [{type: path, values: [v1/chat]}], limits: [{limit: 1, window_size: 60}]}]}",
            "'v1/chat' must start with '/'",
        ),
        (
            "{policies: [{match: [{type: provider, values: [gpt]}], limits: [{limit: 1, window_size: 60}]}]}",
            "unknown provider 'gpt'",
        ),
        (
            "{policies: [{match: [{type: consumer_group, values: [gold]}], limits: [{limit: 1, window_size: 60}]}]}",
            "no consumer groups",
        ),
        (
            "{policies: [{match: [{type: model, values: []}], limits: [{limit: 1, window_size: 60}]}]}",
            "values is empty",
        ),
        (
            "{policies: [{match: [{type: planet}], limits: [{limit: 1, window_size: 60}]}]}",
            "type",
        ),
        (
            "{policies: [{id: 7f1c, limits: [{limit: 1, window_size: 60}]}]}",
            "shared Kong policy entity",
        ),
        (
            "{policies: [{name: 'a b', limits: [{limit: 1, window_size: 60}]}]}",
            "header names",
        ),
        (
            "{policies: [{name: a, limits: [{limit: 1, window_size: 60}]},"
            " {name: a, limits: [{limit: 1, window_size: 60}]}]}",
            "two policies are named 'a'",
        ),
        (
            "{policies: [{limits: [{limit: 1, window_size: 60, tokens_count_strategy: bytes}]}]}",
            "tokens_count_strategy",
        ),
    ],
)
def test_bad_configs_are_load_errors_naming_the_problem(conf: str, expected: str) -> None:
    message = load_error(conf)
    assert expected in message
    assert "ai-rate-limiting-advanced" in message or "plugins[1].config" in message


def test_kong_fields_are_accepted() -> None:
    conf = conf_of(
        load(
            "{llm_providers: [{name: mock, limit: [100, 1000], window_size: [60, 3600]},"
            " {name: requestPrompt, limit: [5000], window_size: [60]}],"
            " tokens_count_strategy: prompt_tokens, identifier: header, header_name: x-team,"
            " strategy: redis, redis: {host: 127.0.0.1, port: 6380}, window_type: fixed,"
            " hide_client_headers: true, error_code: 503, error_message: 'slow down',"
            " error_hide_providers: true, retry_after_jitter_max: 5, sync_rate: 0,"
            " disable_penalty: true, decrease_by_fractions_in_redis: true, namespace: team,"
            " dictionary_name: kong_rate_limiting_counters, llm_format: openai}"
        )
    )
    assert conf.llm_providers is not None
    assert [p.name for p in conf.llm_providers] == ["mock", "requestPrompt"]
    assert conf.redis is not None and conf.redis.port == 6380
    assert conf.error_code == 503


def test_defaults_are_kongs() -> None:
    conf = conf_of(load(f"{{llm_providers: [{LIMIT}]}}"))
    assert conf.tokens_count_strategy == "total_tokens"
    assert conf.identifier == "consumer"
    assert conf.strategy == "local"
    assert conf.window_type == "sliding"
    assert conf.error_code == 429
    assert conf.error_message == "AI token rate limit exceeded for provider(s): "
    assert not conf.hide_client_headers and not conf.error_hide_providers
    assert conf.retry_after_jitter_max == 0


def test_policy_labels() -> None:
    conf = conf_of(
        load(
            "{policies: ["
            "{match: [{type: provider, values: [mock]}], limits: [{limit: 1, window_size: 60}]},"
            "{match: [{type: model, values: [a, b]}], limits: [{limit: 1, window_size: 60}]},"
            "{name: gold, match: [{type: consumer}], limits: [{limit: 1, window_size: 60}]},"
            "{match: [{type: provider, values: [mock]}], limits: [{limit: 1, window_size: 60}]},"
            "{name: policy-6, limits: [{limit: 1, window_size: 60}]},"
            "{limits: [{limit: 1, window_size: 60}]}"
            "]}"
        )
    )
    # a single-provider policy is named after it (Kong's llm_providers headers), once
    assert conf.labels() == ["mock", "policy-2", "gold", "policy-4", "policy-6", "policy-6-6"]


# ------------------------------------------------------------------ estimates


def ai_conf(route_type: str = "llm/v1/chat", options: str = "{}", fmt: str = "openai") -> Any:
    provider = {"openai": "openai", "anthropic": "anthropic"}[fmt]
    text = f"""
_format_version: "3.0"
routes:
  - name: r
    paths: ["/x"]
    plugins:
      - name: ai-proxy
        config:
          route_type: {route_type}
          llm_format: {fmt}
          model: {{provider: {provider}, name: m, options: {options}}}
"""
    return load_text(text).routes[0].plugins["ai-proxy"].config


@pytest.mark.parametrize(
    ("route_type", "options", "body", "prompt", "completion"),
    [
        # chat: the text of every message, ~4 characters a token
        ("llm/v1/chat", "{}", chat(words(10)), 10, 0),
        (
            "llm/v1/chat",
            "{}",
            {
                "messages": [
                    {"role": "system", "content": words(3)},
                    {"role": "user", "content": [{"type": "text", "text": words(4)}]},
                ]
            },
            8,  # two texts joined by a newline: 7*4 + 1 characters
            0,
        ),
        ("llm/v1/chat", "{}", chat(words(10), max_tokens=50), 10, 50),
        ("llm/v1/chat", "{}", chat(words(10), max_completion_tokens=40), 10, 40),
        ("llm/v1/chat", "{}", chat(words(10), max_tokens=50, n=3), 10, 150),
        # the route's max_tokens wins (ai-proxy sends it whatever the client asked)
        ("llm/v1/chat", "{max_tokens: 20}", chat(words(10), max_tokens=500), 10, 20),
        ("llm/v1/chat", "{max_tokens: 20}", chat(words(10)), 10, 20),
        # completions: a prompt string, a list of them, or token ids
        ("llm/v1/completions", "{}", {"prompt": words(7), "max_tokens": 9}, 7, 9),
        ("llm/v1/completions", "{}", {"prompt": [words(2), words(3)]}, 5, 0),
        ("llm/v1/completions", "{}", {"prompt": [1, 2, 3, 4]}, 4, 0),
        # embeddings: the input; no completion ever
        ("llm/v1/embeddings", "{max_tokens: 20}", {"input": words(6)}, 6, 0),
        ("llm/v1/embeddings", "{}", {"input": [words(6), words(2)]}, 8, 0),
        ("llm/v1/embeddings", "{}", {"input": [[5, 6, 7], [8]]}, 4, 0),
    ],
)
def test_estimates(
    route_type: str, options: str, body: dict[str, Any], prompt: int, completion: int
) -> None:
    est = arl.estimate(ai_conf(route_type, options), body)
    assert (est.prompt, est.completion) == (prompt, completion)


def test_estimate_of_a_providers_own_format() -> None:
    body = {
        "model": "claude",
        "system": words(4),
        "messages": [{"role": "user", "content": [{"type": "text", "text": words(4)}]}],
        "max_tokens": 30,
    }
    est = arl.estimate(ai_conf(options="{anthropic_version: '2023-06-01'}", fmt="anthropic"), body)
    assert est.prompt == 9  # "system" and the text, joined by a space (33 characters)
    assert est.completion == 30


def test_amounts_per_strategy() -> None:
    est = arl.Estimate(prompt=1000, completion=500, input_cost=2.0, output_cost=10.0)
    assert est.amount("total_tokens") == 1500
    assert est.amount("prompt_tokens") == 1000
    assert est.amount("completion_tokens") == 500
    # per 1M tokens, like ai-proxy's record.ai.cost
    assert est.amount("cost") == pytest.approx((1000 * 2.0 + 500 * 10.0) / 1_000_000)


def test_spent_reads_the_record() -> None:
    rec = record(prompt=11, completion=4, cost=0.25)
    assert arl.spent("total_tokens", rec) == 15
    assert arl.spent("prompt_tokens", rec) == 11
    assert arl.spent("completion_tokens", rec) == 4
    assert arl.spent("cost", rec) == 0.25
    # refused before the model, or failed without usage: nothing spent
    assert arl.spent("total_tokens", NO_AI) == 0
    assert arl.spent("total_tokens", SimpleNamespace(ai=SimpleNamespace(usage=None))) == 0
    assert arl.spent("cost", SimpleNamespace(ai=SimpleNamespace(usage=None, cost=None))) == 0


# ------------------------------------------------------------------ matching


def facts(**kw: Any) -> arl.Facts:
    from mitmproxy import http

    base: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o",
        "path": "/v1/chat/completions",
        "client_ip": "10.1.2.3",
        "headers": http.Headers(**kw.pop("headers", {})),
        "consumer": None,
    }
    base.update(kw)
    return arl.Facts(**base)


def policies_conf(policies: str) -> arl.Config:
    return conf_of(load(f"{{policies: [{policies}]}}"))


L = "limits: [{limit: 100, window_size: 60}]"


@pytest.mark.parametrize(
    ("match", "request_facts", "matches"),
    [
        ("[{type: provider, values: [openai]}]", {}, True),
        ("[{type: provider, values: [anthropic, mock]}]", {}, False),
        ("[{type: model, values: [gpt-4o]}]", {}, True),
        ("[{type: model}]", {"model": None}, False),
        ("[{type: model}]", {}, True),
        ("[{type: path, values: [/v1/chat]}]", {}, True),  # a prefix, like Kong's routes
        ("[{type: path, values: [/v1/embeddings]}]", {}, False),
        ("[{type: ip, values: [10.0.0.0/8]}]", {}, True),
        ("[{type: ip, values: [10.1.2.3]}]", {}, True),
        ("[{type: ip, values: ['192.168.0.0/16', '::1']}]", {}, False),
        ("[{type: header, key: X-Tier, values: [gold]}]", {"headers": {"x-tier": "gold"}}, True),
        ("[{type: header, key: X-Tier, values: [gold]}]", {"headers": {"x-tier": "free"}}, False),
        ("[{type: header, key: X-Tier}]", {}, False),
        ("[{type: header, key: X-Tier}]", {"headers": {"x-tier": "any"}}, True),
        ("[{type: consumer}]", {}, False),
        ("[{type: consumer}]", {"consumer": "alice"}, True),
        ("[{type: consumer, values: [alice]}]", {"consumer": "alice"}, True),
        ("[{type: consumer, values: [c-alice]}]", {"consumer": "alice"}, True),
        ("[{type: consumer, key: id, values: [id-alice]}]", {"consumer": "alice"}, True),
        ("[{type: consumer, key: username, values: [id-alice]}]", {"consumer": "alice"}, False),
        ("[{type: consumer, values: [alice]}]", {"consumer": "bob"}, False),
        # every condition must hold
        ("[{type: provider, values: [openai]}, {type: model, values: [gpt-4o]}]", {}, True),
        ("[{type: provider, values: [openai]}, {type: model, values: [o3]}]", {}, False),
    ],
)
def test_policy_matching(match: str, request_facts: dict[str, Any], matches: bool) -> None:
    conf = policies_conf(f"{{match: {match}, {L}}}")
    if "consumer" in request_facts and request_facts["consumer"] is not None:
        cfg = load(f"{{llm_providers: [{LIMIT}]}}")
        request_facts = {**request_facts, "consumer": cfg.consumer(request_facts["consumer"])}
    found = arl.matching(conf, facts(**request_facts))
    assert (found == [(0, [])]) is matches


def test_every_matching_policy_applies_and_fallbacks_only_when_none_does() -> None:
    conf = policies_conf(
        f"{{match: [{{type: provider, values: [openai]}}], {L}}},"
        f"{{{L}}},"
        f"{{match: [{{type: model, values: [gpt-4o]}}], {L}}},"
        f"{{match: [{{type: model, values: [o3]}}], {L}}}"
    )
    assert [n for n, _ in arl.matching(conf, facts())] == [0, 2]
    assert [n for n, _ in arl.matching(conf, facts(provider="mock", model="x"))] == [1]


def test_partition_by_counts_each_value_apart() -> None:
    conf = policies_conf(f"{{match: [{{type: model, partition_by: true}}], {L}}}")
    assert arl.matching(conf, facts(model="a")) == [(0, ["model=a"])]
    assert arl.matching(conf, facts(model="b")) == [(0, ["model=b"])]


# ------------------------------------------------------------------ identity


@pytest.mark.parametrize(
    ("extra", "kw", "expected"),
    [
        ("", {}, "ip:10.0.0.1"),  # no consumer: counted by IP, as in Kong
        ("", {"consumer": "alice"}, "consumer:id-alice"),
        ("", {"consumer": "bob"}, "consumer:bob"),
        ("identifier: ip", {"consumer": "alice"}, "ip:10.0.0.1"),
        ("identifier: credential", {"consumer": "alice"}, "credential:cred-alice"),
        ("identifier: credential", {}, "ip:10.0.0.1"),
        ("identifier: service", {}, "service:svc"),
        ("identifier: header, header_name: x-team", {"headers": {"X-Team": "red"}}, "header:red"),
        ("identifier: header, header_name: x-team", {}, "ip:10.0.0.1"),
        ("identifier: path, path: /v1/chat/completions", {}, "path:/v1/chat/completions"),
        ("identifier: path, path: /v1/embeddings", {}, "path:*"),
    ],
)
def test_identity(extra: str, kw: dict[str, Any], expected: str) -> None:
    cfg = load(
        f"{{llm_providers: [{LIMIT}], {extra}}}" if extra else f"{{llm_providers: [{LIMIT}]}}"
    )
    h = Harness(cfg)
    f, call = h.flow(chat("hi"), **kw)
    conf = conf_of(cfg)
    assert arl.identity(conf, call, f.request.path, f.request.headers) == expected


def test_a_credential_without_id_is_counted_by_a_digest_never_its_key() -> None:
    cfg = load(f"{{llm_providers: [{LIMIT}], identifier: credential}}")
    f, call = Harness(cfg).flow(chat("hi"), consumer="bob")
    who = arl.identity(conf_of(cfg), call, f.request.path, f.request.headers)
    assert who.startswith("credential:#") and "bob-secret-key" not in who


# ------------------------------------------------------------------ headers, messages


def test_headers_and_messages() -> None:
    conf = conf_of(load(f"{{llm_providers: [{LIMIT}]}}"))
    w = _counters.Window("k", 60, 100.0)
    state = _counters.WindowState(w, used=30.0, remaining=70.0, reset=12.2)
    lim = arl.Limited(w, "openai")
    assert arl.state_headers(conf, [(lim, state)], set(), 0) == {
        "X-AI-RateLimit-Limit-60-openai": "100",
        "X-AI-RateLimit-Remaining-60-openai": "70",
        "X-AI-RateLimit-Reset-60-openai": "13",
    }
    assert arl.state_headers(conf, [(lim, state)], {0}, 40) == {
        "X-AI-RateLimit-Limit-60-openai": "100",
        "X-AI-RateLimit-Remaining-60-openai": "70",
        "X-AI-RateLimit-Reset-60-openai": "40",
        "X-AI-RateLimit-Retry-After-60-openai": "40",
    }
    hidden = conf.model_copy(update={"hide_client_headers": True})
    assert arl.state_headers(hidden, [(lim, state)], {0}, 40) == {
        "X-AI-RateLimit-Reset-60-openai": "40",
        "X-AI-RateLimit-Retry-After-60-openai": "40",
    }
    assert (
        arl.error_message(conf, ["azure", "cohere", "azure"])
        == "AI token rate limit exceeded for provider(s): azure, cohere"
    )
    quiet = conf.model_copy(update={"error_hide_providers": True})
    assert arl.error_message(quiet, ["azure"]) == "AI token rate limit exceeded for provider(s)"
    # costs are shown as costs
    cost = _counters.WindowState(_counters.Window("k", 60, 0.0025), 0.0007, 0.0018, 5)
    headers = arl.state_headers(conf, [(arl.Limited(cost.window, "mock"), cost)], set(), 0)
    assert headers["X-AI-RateLimit-Remaining-60-mock"] == "0.0018"


# ------------------------------------------------------------------ the addon


async def test_a_request_reserves_its_estimate_and_settles_with_real_usage() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    f, call = await h.send(chat(words(10), max_tokens=20))
    assert f.response is None  # allowed: on to ai-proxy
    h.addon.response(_respond(f))
    assert f.response.headers["X-AI-RateLimit-Limit-60-mock"] == "100"
    assert f.response.headers["X-AI-RateLimit-Remaining-60-mock"] == "70"  # 10 + 20 reserved
    # the model used 10 + 5: the reservation shrinks to 15
    await h.finish(f, call, record(10, 5))
    f2, _ = await h.send(chat(words(10), max_tokens=20))
    h.addon.response(_respond(f2))
    assert f2.response.headers["X-AI-RateLimit-Remaining-60-mock"] == "55"  # 100 - 15 - 30


def _respond(f: Any) -> Any:
    from mitmproxy import http

    f.response = http.Response.make(200, b"{}")
    return f


async def test_a_budget_spent_answers_429_with_kongs_headers() -> None:
    h = Harness(
        load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}], window_type: fixed}")
    )
    statuses = []
    for _ in range(4):
        f, call = await h.send(chat(words(10), max_tokens=20))
        statuses.append(status(f))
    assert statuses == [None, None, None, 429]  # 3 x 30 reserved; 30 more do not fit
    err = error_of(f)
    assert err["message"] == "AI token rate limit exceeded for provider(s): mock"
    assert err["type"] == "rate_limit_error"
    assert err["code"] == "token_rate_limit_exceeded"
    headers = f.response.headers
    assert headers["X-AI-RateLimit-Limit-60-mock"] == "100"
    assert headers["X-AI-RateLimit-Remaining-60-mock"] == "10"
    # the clock stands 20 s into a 60 s fixed window: 40 s until it resets
    for name in (
        "Retry-After",
        "X-AI-RateLimit-Retry-After",
        "X-AI-RateLimit-Reset",
        "X-AI-RateLimit-Reset-60-mock",
        "X-AI-RateLimit-Retry-After-60-mock",
    ):
        assert headers[name] == "40", name
    assert call.error is not None and call.error_source == "gateway"
    # the next window has room again
    h.clock.t += 40
    f, _ = await h.send(chat(words(10), max_tokens=20))
    assert f.response is None


async def test_concurrent_requests_cannot_share_the_same_budget() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    flows = [h.flow(chat(words(10), max_tokens=20)) for _ in range(10)]
    await asyncio.gather(*(h.addon.request(f) for f, _ in flows))
    assert sum(f.response is None for f, _ in flows) == 3


async def test_a_refused_or_failed_call_gives_its_reservation_back() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [60], window_size: [60]}]}"))
    f1, c1 = await h.send(chat(words(10), max_tokens=20))
    f2, _ = await h.send(chat(words(10), max_tokens=20))
    f3, _ = await h.send(chat(words(10), max_tokens=20))
    assert (status(f1), status(f2), status(f3)) == (None, None, 429)
    await h.finish(f1, c1, NO_AI)  # a later plugin refused it: nothing reached the model
    f4, _ = await h.send(chat(words(10), max_tokens=20))
    assert status(f4) is None


async def test_a_call_that_spent_more_than_reserved_is_charged_in_full() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    f, c = await h.send(chat(words(10)))  # no max_tokens: only the prompt is reserved
    await h.finish(f, c, record(10, 85))
    f2, _ = await h.send(chat(words(10)))
    assert status(f2) == 429  # 95 spent, 10 more do not fit


async def test_a_request_larger_than_the_whole_limit_is_told_so() -> None:
    h = Harness(
        load("{llm_providers: [{name: mock, limit: [100, 1000], window_size: [60, 3600]}]}")
    )
    f, _ = await h.send(chat(words(10), max_tokens=500))
    assert status(f) == 429
    message = error_of(f)["message"]
    assert message.startswith("AI token rate limit exceeded for provider(s): mock (")
    assert "estimated 510 tokens, more than the whole limit of 100 tokens per 60 seconds" in message
    assert "Retry-After" not in f.response.headers  # waiting would not help
    assert len(h.local) == 0  # nothing was charged


async def test_other_providers_are_not_limited_and_routes_without_ai_proxy_pass() -> None:
    h = Harness(load("{llm_providers: [{name: openai, limit: [1], window_size: [60]}]}"))
    f, call = await h.send(chat(words(10), max_tokens=20))
    assert f.response is None and call.on_finish == []
    f, call = await h.send(b"not json", route="plain", path="/plain")
    assert f.response is None and call.on_finish == []


async def test_bad_json_is_a_400() -> None:
    h = Harness(load(f"{{llm_providers: [{LIMIT}]}}"))
    f, _ = await h.send(b"{not json")
    assert status(f) == 400


async def test_request_prompt_counts_every_request_and_is_not_settled() -> None:
    h = Harness(
        load(
            "{llm_providers: [{name: requestPrompt, limit: [25], window_size: [60]},"
            " {name: openai, limit: [1000], window_size: [60]}]}"
        )
    )
    f, c = await h.send(chat(words(10), max_tokens=100))
    h.addon.response(_respond(f))
    assert f.response.headers["X-AI-RateLimit-Remaining-60-requestPrompt"] == "15"
    assert f.response.headers["X-AI-RateLimit-Query-Cost-60-requestPrompt"] == "10"
    assert "X-AI-RateLimit-Limit-60-openai" not in f.response.headers  # a mock route
    await h.finish(f, c, record(3, 3))  # the prompt count stays: it is what is limited
    f, _ = await h.send(chat(words(10)))
    f, _ = await h.send(chat(words(10)))
    assert status(f) == 429
    assert error_of(f)["message"].endswith(": requestPrompt")


@pytest.mark.parametrize(("disable_penalty", "passes_later"), [(False, False), (True, True)])
async def test_penalty_counts_refused_request_prompts(
    disable_penalty: bool, passes_later: bool
) -> None:
    cfg = load(
        "{llm_providers: [{name: requestPrompt, limit: [25], window_size: [60]}],"
        f" disable_penalty: {str(disable_penalty).lower()}}}"
    )
    h = Harness(cfg, Clock(1_000_020.0))  # at the start of a minute
    f, _ = await h.send(chat(words(10)))
    f, _ = await h.send(chat(words(10)))
    f, _ = await h.send(chat(words(10)))
    assert status(f) == 429  # 20 used, 10 more would be 30
    # 20 s into the next window the previous one weighs 2/3 of what it counted: without
    # the penalty 20 (13.3 + 10 fit in 25), with it 30 (the refused request too: 20 + 10
    # do not fit)
    h.clock.t += 80
    f, _ = await h.send(chat(words(10)))
    assert (f.response is None) is passes_later


async def test_policies_with_different_strategies_are_all_or_nothing() -> None:
    cfg = load(
        "{policies: [{name: tokens, match: [{type: model}], limits: [{limit: 1000, window_size: 60}]},"
        " {name: money, match: [{type: provider, values: [mock]}],"
        "  limits: [{limit: 0.001, window_size: 60, tokens_count_strategy: cost}]}]}",
        options="{input_cost: 10, output_cost: 30}",
    )
    h = Harness(cfg)
    # cost of 10 prompt + 20 completion tokens: (100 + 600) / 1M = 0.0007
    f, c = await h.send(chat(words(10), max_tokens=20))
    assert f.response is None
    h.addon.response(_respond(f))
    assert f.response.headers["X-AI-RateLimit-Remaining-60-tokens"] == "970"
    assert f.response.headers["X-AI-RateLimit-Remaining-60-money"] == "0.0003"
    f2, _ = await h.send(chat(words(10), max_tokens=20))
    assert status(f2) == 429
    assert error_of(f2)["message"].endswith(": money")
    # the token window shows (and keeps) only the first request: the second was undone
    assert f2.response.headers["X-AI-RateLimit-Remaining-60-tokens"] == "970"
    await h.finish(f, c, record(10, 5, cost=(100 + 150) / 1_000_000))
    f3, _ = await h.send(chat(words(10), max_tokens=20))
    assert f3.response is None  # 0.00025 + 0.0007 fit in 0.001
    h.addon.response(_respond(f3))
    assert f3.response.headers["X-AI-RateLimit-Remaining-60-tokens"] == "955"


async def test_cost_without_prices_is_a_clear_500() -> None:
    h = Harness(load(f"{{llm_providers: [{LIMIT}], tokens_count_strategy: cost}}"))
    f, _ = await h.send(chat("hi"))
    assert status(f) == 500
    assert "input_cost" in error_of(f)["message"]


async def test_budgets_are_per_identifier_and_per_partition() -> None:
    cfg = load(
        "{identifier: header, header_name: x-team, policies: ["
        "{match: [{type: model, partition_by: true}], limits: [{limit: 30, window_size: 60}]}]}",
        model="",
    )
    h = Harness(cfg)

    async def go(team: str, model: str) -> int | None:
        body = {"model": model, "messages": [{"role": "user", "content": words(10)}]}
        f, _ = await h.send({**body, "max_tokens": 20}, headers={"x-team": team})
        return status(f)

    assert await go("red", "a") is None
    assert await go("red", "a") == 429
    assert await go("red", "b") is None  # another model: its own budget
    assert await go("blue", "a") is None  # another team: its own budget


async def test_consumer_plugins_have_their_own_counters() -> None:
    cfg = load_text(
        ROUTE.replace("CONF", "{llm_providers: [{name: mock, limit: [1000], window_size: [60]}]}")
        .replace("PROVIDER", "mock")
        .replace("MODEL", "mock-gpt")
        .replace("OPTIONS", "{}")
        + """
plugins:
  - name: ai-rate-limiting-advanced
    consumer: alice
    config: {identifier: ip, llm_providers: [{name: mock, limit: [30], window_size: [60]}]}
"""
    )
    h = Harness(cfg)
    f, _ = await h.send(chat(words(10), max_tokens=20), consumer="alice")
    assert f.response is None
    f, _ = await h.send(chat(words(10), max_tokens=20), consumer="alice")
    assert status(f) == 429  # alice's own plugin: 30 per minute
    f, _ = await h.send(chat(words(10), max_tokens=20), consumer="bob")
    assert f.response is None  # the route's: 1000


async def test_namespace_shares_counters_between_plugin_instances() -> None:
    cfg = load_text(
        """
_format_version: "3.0"
routes:
  - name: one
    paths: ["/one"]
    plugins:
      - name: ai-proxy
        config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
      - name: ai-rate-limiting-advanced
        config: {namespace: team, llm_providers: [{name: mock, limit: [50], window_size: [60]}]}
  - name: two
    paths: ["/two"]
    plugins:
      - name: ai-proxy
        config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
      - name: ai-rate-limiting-advanced
        config: {namespace: team, llm_providers: [{name: mock, limit: [50], window_size: [60]}]}
"""
    )
    h = Harness(cfg)
    f, _ = await h.send(chat(words(10), max_tokens=20), route="one", path="/one")
    assert f.response is None
    f, _ = await h.send(chat(words(10), max_tokens=20), route="two", path="/two")
    assert status(f) == 429


class DownStore:
    async def acquire(self, windows: Any, amount: float) -> Any:
        raise CountersUnavailable("redis 127.0.0.1:1/0 unavailable: ConnectionError")

    async def adjust(self, ticket: Any, delta: float) -> None:
        raise CountersUnavailable("down")


async def test_store_unreachable_lets_requests_through_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(load(f"{{llm_providers: [{LIMIT}]}}"))
    h.gw.counters["local"] = DownStore()
    f, call = await h.send(chat("hi"))
    assert f.response is None and call.on_finish == []
    assert "counters unavailable, request allowed" in caplog.text


async def test_fault_tolerant_false_refuses_with_a_500_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(load(f"{{llm_providers: [{LIMIT}], fault_tolerant: false}}"))
    h.gw.counters["local"] = DownStore()
    f, call = await h.send(chat("hi"))
    assert status(f) == 500
    err = error_of(f)
    assert (
        err["message"]
        == "ai-rate-limiting-advanced cannot reach its counters (Redis is unavailable)"
    )
    assert err["code"] == "rate_limit_unavailable"
    assert call.error_source == "gateway" and call.on_finish == []
    assert "request refused (fault_tolerant is false)" in caplog.text
    metric = h.gw.metrics.store_unavailable
    assert metric.labels(arl.NAME, "refused")._value.get() == 1
    assert metric.labels(arl.NAME, "allowed")._value.get() == 0


def test_llmitm_defaults() -> None:
    conf = conf_of(load(f"{{llm_providers: [{LIMIT}]}}"))
    assert conf.fault_tolerant is True  # as Kong's rate-limiting
    assert conf.reserve_completion_tokens == 1024
    assert "reserve_completion_tokens" in load_error(
        f"{{llm_providers: [{LIMIT}], reserve_completion_tokens: -1}}"
    )


@pytest.mark.parametrize(
    ("options", "body", "completion", "guessed"),
    [
        ("{}", chat(words(10)), 300, True),  # nothing says how long the answer may be
        ("{}", chat(words(10), n=2), 600, True),
        ("{}", chat(words(10), max_tokens=50), 50, False),
        ("{max_tokens: 20}", chat(words(10)), 20, False),  # the route's, sent by ai-proxy
    ],
)
def test_an_answer_size_is_guessed_only_when_nothing_limits_it(
    options: str, body: dict[str, Any], completion: int, guessed: bool
) -> None:
    est = arl.estimate(ai_conf("llm/v1/chat", options), body, reserve=300)
    assert (est.prompt, est.completion, est.guessed) == (10, completion, guessed)
    assert est.least("total_tokens") == (10 if guessed else 10 + completion)
    embeddings = arl.estimate(ai_conf("llm/v1/embeddings"), {"input": words(6)}, reserve=300)
    assert (embeddings.completion, embeddings.guessed) == (0, False)


@pytest.mark.parametrize(
    ("reserve", "passed"),
    [
        ("", 1),  # the default (1024): the first takes what is left, the rest wait
        (", reserve_completion_tokens: 20", 3),  # 10 + 20 each: 3 fit in 100
        (", reserve_completion_tokens: 0", 10),  # the prompt only (Kong's optimism)
    ],
)
async def test_requests_without_max_tokens_reserve_an_answer(reserve: str, passed: int) -> None:
    h = Harness(
        load(f"{{llm_providers: [{{name: mock, limit: [100], window_size: [60]}}]{reserve}}}")
    )
    flows = [h.flow(chat(words(10))) for _ in range(10)]
    await asyncio.gather(*(h.addon.request(f) for f, _ in flows))
    assert sum(f.response is None for f, _ in flows) == passed
    refused = [f for f, _ in flows if f.response is not None]
    assert all(status(f) == 429 for f in refused)


async def test_what_is_left_is_reserved_when_the_whole_guess_does_not_fit() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    await h.send(chat(words(10), max_tokens=60))  # 70 held
    f2, c2 = await h.send(chat(words(10)))  # 1034 wanted: the 30 left are enough to start
    assert f2.response is None
    h.addon.response(_respond(f2))
    assert f2.response.headers["X-AI-RateLimit-Remaining-60-mock"] == "0"
    f3, _ = await h.send(chat(words(1)))  # nothing left beyond its prompt
    assert status(f3) == 429
    # the second call used 10 + 5: 15 of its 30 come back
    await h.finish(f2, c2, record(10, 5))
    f4, _ = await h.send(chat(words(10)))
    assert f4.response is None  # 15 left, more than its 10-token prompt
    h.addon.response(_respond(f4))
    assert f4.response.headers["X-AI-RateLimit-Remaining-60-mock"] == "0"


async def late(h: Harness, f: Any) -> None:
    """The plugin's late request hook, as the chain runs it (sync or async)."""
    pending = h.addon.request_late(f)
    if pending is not None:
        await pending


def rewrite(f: Any, call: Call, body: dict[str, Any]) -> None:
    """What a prompt plugin after the token limit does (template, decorator)."""
    from addons.policies.base import set_json_body

    set_json_body(f, call, body)


async def test_a_rewritten_prompt_tops_the_reservation_up_before_ai_proxy() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    f, call = await h.send(chat(words(5), max_tokens=10))  # 15 reserved
    rewrite(f, call, chat(words(45), max_tokens=10))  # the template made it 45 tokens
    await late(h, f)
    assert f.response is None
    h.addon.response(_respond(f))
    assert f.response.headers["X-AI-RateLimit-Remaining-60-mock"] == "45"  # 100 - 55
    # settled with the real usage: the top-up is part of the reservation
    await h.finish(f, call, record(45, 10))
    f2, _ = await h.send(chat(words(35), max_tokens=10))
    h.addon.response(_respond(f2))
    assert f2.response.headers["X-AI-RateLimit-Remaining-60-mock"] == "0"


async def test_a_top_up_that_does_not_fit_is_a_429_and_releases_the_reservation() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    await h.send(chat(words(50), max_tokens=10))  # 60 held by another call
    f, call = await h.send(chat(words(5), max_tokens=10))  # 15 more: 75
    rewrite(f, call, chat(words(40), max_tokens=10))  # 35 more do not fit (75 + 35 > 100)
    await late(h, f)
    assert status(f) == 429
    assert error_of(f)["code"] == "token_rate_limit_exceeded"
    assert f.response.headers["X-AI-RateLimit-Remaining-60-mock"] == "25"
    await h.finish(f, call, NO_AI)
    # its 15 came back: 40 are left
    f2, _ = await h.send(chat(words(30), max_tokens=10))
    assert f2.response is None


async def test_a_rewritten_prompt_larger_than_the_limit_is_told_so() -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    f, call = await h.send(chat("{template://big}"))
    rewrite(f, call, chat(words(150)))
    await late(h, f)
    assert status(f) == 429
    assert "estimated 150 tokens, more than the whole limit of 100" in error_of(f)["message"]
    await h.finish(f, call, NO_AI)
    assert all(b[0] == 0 for b in h.local._buckets.values())  # nothing stays held


async def test_an_unchanged_body_is_not_estimated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(load("{llm_providers: [{name: mock, limit: [100], window_size: [60]}]}"))
    f, _ = await h.send(chat(words(10), max_tokens=10))
    estimates: list[Any] = []
    monkeypatch.setattr(arl, "estimate", lambda *a, **kw: estimates.append(a))
    assert h.addon.request_late(f) is None  # no coroutine either: a cheap exit
    assert f.response is None and estimates == []
