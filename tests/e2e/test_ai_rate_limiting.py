"""ai-rate-limiting-advanced end to end: a real `mitmdump -s addons/gateway.py`, the
official `openai` SDK as the client, the `mock` provider (its usage is the estimate of
the prompt and of the echoed answer: 4 characters a token) or the fake upstream where a
test needs exact usage numbers, and a real `redis-server` for `strategy: redis`.

What a user notices: a spent budget is a 429 in OpenAI's error shape with Kong's
X-AI-RateLimit-* headers and Retry-After, before anything is sent upstream; a streamed
answer's usage counts; requests fired at once cannot all spend the same remaining
budget; two gateway processes on one Redis enforce one budget, not two.

One gateway serves the module; each test spends its own budget (the plugin counts per
`X-Test` header value).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, RedisServer, free_port
from tests.fakes.upstream import FakeUpstream, Received, Reply, chat_completion, chat_stream
from tests.policy_helpers import module_gateway, openai_client

# the mock's answer on the `long` route: 80 tokens (320 characters)
LONG_ANSWER = " ".join(["abc"] * 80)

CONFIG = (
    """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: mock
        paths: ["/mock/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
          - name: ai-rate-limiting-advanced
            config:
              identifier: header
              header_name: x-test
              llm_providers: [{name: mock, limit: [50, 1000], window_size: [3600, 86400]}]
      - name: long
        paths: ["/long/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: mock, name: mock-gpt, options: {mock_response: "LONG"}}
          - name: ai-rate-limiting-advanced
            config:
              identifier: header
              header_name: x-test
              llm_providers: [{name: mock, limit: [95], window_size: [3600]}]
      - name: fake
        paths: ["/fake/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "UPSTREAM"}}
          - name: ai-rate-limiting-advanced
            config:
              identifier: header
              header_name: x-test
              llm_providers: [{name: openai, limit: [100], window_size: [3600]}]
      - name: tiers
        paths: ["/tiers/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {route_type: llm/v1/chat, model: {provider: mock}}
          - name: ai-rate-limiting-advanced
            config:
              identifier: header
              header_name: x-test
              error_message: "Token budget spent: "
              policies:
                - name: gold
                  match: [{type: header, key: x-tier, values: [gold]}]
                  limits: [{limit: 1000, window_size: 3600}]
                - match: [{type: model, partition_by: true}]
                  limits: [{limit: 20, window_size: 3600}]
      - name: template
        paths: ["/tpl/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
          - name: ai-prompt-template
            config:
              templates:
                - {name: eighty, template: '{"messages": [{"role": "user", "content": "EIGHTY{{x}}"}]}'}
                - {name: huge, template: '{"messages": [{"role": "user", "content": "HUGE{{x}}"}]}'}
          - name: ai-rate-limiting-advanced
            config:
              identifier: header
              header_name: x-test
              llm_providers: [{name: mock, limit: [100], window_size: [3600]}]
plugins:
  - name: file-log
    config: {path: "{records}"}
""".replace("LONG", LONG_ANSWER)
    .replace("EIGHTY", "abcd" * 80)
    .replace("HUGE", "abcd" * 150)
)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with module_gateway(tmp_path_factory, CONFIG, upstream) as g:
        yield g


@pytest.fixture
def who() -> str:
    """This test's budget (the plugin counts per X-Test value)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def client(gw: Gateway, route: str, who: str, **headers: str) -> openai.OpenAI:
    headers = {"X-Test": who, "X-Message-Id": who, **headers}
    return openai_client(gw, route, "client-key", default_headers=headers)


def words(tokens: int) -> str:
    """A prompt of exactly `tokens` estimated tokens (and the mock echoes it)."""
    return "abcd" * tokens


def ask(c: openai.OpenAI, tokens: int, **kw: Any) -> Any:
    """A chat request; the raw response (headers and parsed body)."""
    return c.chat.completions.with_raw_response.create(
        model=kw.pop("model", "mock-gpt"),
        messages=[{"role": "user", "content": words(tokens)}],
        **kw,
    )


def my_records(gw: Gateway, who: str, n: int) -> list[dict[str, Any]]:
    """The call records of this test's requests, once there are `n` of them."""
    deadline = time.time() + 5
    while True:
        mine = [r for r in gw.records() if r["context"].get("message_id") == who]
        if len(mine) >= n or time.time() > deadline:
            assert len(mine) >= n, f"{len(mine)} records of {n}:\n{gw.log()}"
            return mine
        time.sleep(0.02)


def ai_headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if "ratelimit" in k.lower()}


def test_a_spent_budget_is_a_429_with_headers_and_retry_after(gw: Gateway, who: str) -> None:
    c = client(gw, "mock", who)
    # 10 prompt tokens, the echo is 10 more: max_tokens 10 makes the reservation exact
    first = ask(c, 10, max_tokens=10)
    assert first.status_code == 200
    assert ai_headers(first.headers) == {
        "x-ai-ratelimit-limit-3600-mock": "50",
        "x-ai-ratelimit-remaining-3600-mock": "30",
        "x-ai-ratelimit-reset-3600-mock": first.headers["x-ai-ratelimit-reset-3600-mock"],
        "x-ai-ratelimit-limit-86400-mock": "1000",
        "x-ai-ratelimit-remaining-86400-mock": "980",
        "x-ai-ratelimit-reset-86400-mock": first.headers["x-ai-ratelimit-reset-86400-mock"],
    }
    assert int(first.headers["x-ai-ratelimit-reset-3600-mock"]) > 0
    second = ask(c, 10, max_tokens=10)
    assert second.headers["x-ai-ratelimit-remaining-3600-mock"] == "10"

    with pytest.raises(openai.RateLimitError) as e:
        ask(c, 10, max_tokens=10)
    resp = e.value.response
    assert resp.status_code == 429
    assert resp.json() == {
        "error": {
            "message": "AI token rate limit exceeded for provider(s): mock",
            "type": "rate_limit_error",
            "param": None,
            "code": "token_rate_limit_exceeded",
        }
    }
    h = resp.headers
    retry = int(h["retry-after"])
    assert retry > 0
    assert h["x-ai-ratelimit-retry-after"] == h["x-ai-ratelimit-reset"] == str(retry)
    assert h["x-ai-ratelimit-retry-after-3600-mock"] == str(retry)
    assert h["x-ai-ratelimit-remaining-3600-mock"] == "10"
    assert h["x-ai-ratelimit-remaining-86400-mock"] == "960"  # this window had room
    assert "x-ai-ratelimit-retry-after-86400-mock" not in h

    # refused by the gateway: recorded as such, never sent to the model
    refused = my_records(gw, who, 3)[-1]
    assert refused["response"]["status"] == 429
    assert refused["error"]["source"] == "gateway"
    assert refused["ai"]["proxy"]["usage"]["total_tokens"] == 0  # the model was not asked

    # another client (another X-Test value) has its own budget
    other = ask(client(gw, "mock", who + "-other"), 10, max_tokens=10)
    assert other.status_code == 200


def test_a_request_larger_than_the_limit_says_so(gw: Gateway, who: str) -> None:
    c = client(gw, "mock", who)
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, 10, max_tokens=100)
    message = e.value.response.json()["error"]["message"]
    assert "estimated 110 tokens, more than the whole limit of 50 tokens per 3600 seconds" in (
        message
    )
    assert "retry-after" not in e.value.response.headers
    # nothing was charged: a request that fits still passes
    assert ask(c, 10, max_tokens=10).status_code == 200


def test_a_streamed_answer_spends_its_usage(gw: Gateway, who: str) -> None:
    c = client(gw, "long", who)
    # reserved: the 10 prompt tokens (no max_tokens); spent: 10 + the 80 streamed back
    stream = c.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": words(10)}],
        stream=True,
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == LONG_ANSWER
    record = my_records(gw, who, 1)[0]
    assert record["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert record["ai"]["proxy"]["usage"]["total_tokens"] == 90
    # 90 of 95 spent (the reservation was settled when the record was built): the next
    # 10-token prompt does not fit. Kong's counting would let it through (the stream's
    # usage counted only after it), and so would a gateway that forgot a stream's usage.
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": words(10)}]
        )
    assert e.value.response.headers["x-ai-ratelimit-remaining-3600-mock"] == "5"


def test_streamed_responses_carry_the_headers(gw: Gateway, who: str) -> None:
    with httpx.stream(
        "POST",
        f"{gw.url}/mock/v1/chat/completions",
        headers={"X-Test": who},
        json={
            "model": "mock-gpt",
            "stream": True,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": words(5)}],
        },
    ) as r:
        body = r.read()
    assert r.status_code == 200 and b"data: [DONE]" in body
    assert r.headers["x-ai-ratelimit-remaining-3600-mock"] == "40"


def test_concurrent_requests_cannot_all_spend_the_same_budget(
    gw: Gateway, upstream: FakeUpstream, who: str
) -> None:
    # each request reserves 10 + 20 = 30 tokens and spends exactly that: a budget of 100
    # fits 3 of them, however they interleave (counting after the response, as Kong does,
    # lets all 10 through when they arrive together)
    body = chat_completion("ok", prompt_tokens=10, completion_tokens=20)

    def reply(req: Received) -> Reply:
        r = Reply.json(body)
        return Reply(r.status, r.headers, chunks=[0.3, r.body])  # hold the calls in flight

    upstream.reply(reply)
    c = client(gw, "fake", who)

    def one(_: int) -> int:
        try:
            return ask(c, 10, model="gpt-4o-mini", max_tokens=20).status_code
        except openai.APIStatusError as e:
            return e.status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(one, range(10)))
    assert statuses == [200] * 3 + [429] * 7
    sent = [r for r in upstream.received if r.headers.get("x-test") == who]
    assert len(sent) == 3  # the refused ones never reached the upstream


def test_concurrent_streams_without_max_tokens_cannot_overspend(
    gw: Gateway, upstream: FakeUpstream, who: str
) -> None:
    # what the openai SDK sends by default: no max_tokens. Each request spends 10 + 10
    # tokens, streamed, and is held in flight; a budget of 100 must not see 200 spent
    # (reserving only the prompts, 10 x 10 tokens, lets all 10 streams start at once)
    events = chat_stream(["ok"] * 10, usage=(10, 10))
    upstream.reply(lambda req: Reply.sse([0.3, *events]))
    c = client(gw, "fake", who)

    def one(_: int) -> int:
        try:
            stream = c.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": words(10)}],
                stream=True,
                stream_options={"include_usage": True},
            )
            for _chunk in stream:
                pass
            return 200
        except openai.APIStatusError as e:
            assert e.status_code == 429, e
            return e.status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(one, range(10)))
    assert 200 in statuses
    passed = statuses.count(200)
    spent = sum(
        r["ai"]["proxy"]["usage"]["total_tokens"]
        for r in my_records(gw, who, 10)
        if r["response"]["status"] == 200
    )
    assert spent == 20 * passed <= 100, statuses
    sent = [r for r in upstream.received if r.headers.get("x-test") == who]
    assert len(sent) == passed  # the refused ones never reached the upstream


def test_a_templated_request_reserves_its_expanded_prompt(gw: Gateway, who: str) -> None:
    def templated(name: str) -> httpx.Response:
        budget = f"{who}-{name}"  # (the mock's echo spends more than the whole budget)
        return httpx.post(
            f"{gw.url}/tpl/v1/chat/completions",
            headers={"X-Test": budget, "X-Message-Id": budget},
            json={"messages": f"{{template://{name}}}", "properties": {"x": ""}, "max_tokens": 10},
            trust_env=False,
        )

    # the request names a template; the prompt the mock gets is 80 tokens: with its
    # max_tokens of 10, 90 of the 100 are reserved, not the few of the reference
    r = templated("eighty")
    assert r.status_code == 200, r.text
    assert r.headers["x-ai-ratelimit-remaining-3600-mock"] == "10"
    # a template that expands past the whole budget is told so
    r = templated("huge")
    assert r.status_code == 429
    assert (
        "needs an estimated 160 tokens, more than the whole limit of 100 tokens"
        in (r.json()["error"]["message"])
    )


def test_policies_match_headers_and_partition_by_model(gw: Gateway, who: str) -> None:
    c = client(gw, "tiers", who)
    # no tier header: the model policy, 20 tokens per model
    first = ask(c, 5, model="m1", max_tokens=5)
    assert first.headers["x-ai-ratelimit-remaining-3600-policy-2"] == "10"
    assert "x-ai-ratelimit-limit-3600-gold" not in first.headers
    ask(c, 5, model="m1", max_tokens=5)
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, 5, model="m1", max_tokens=5)
    assert e.value.response.json()["error"]["message"] == "Token budget spent: policy-2"
    # another model has its own budget
    assert ask(c, 5, model="m2", max_tokens=5).status_code == 200
    # gold: both policies match, and both count
    gold = client(gw, "tiers", who + "-gold", **{"X-Tier": "gold"})
    r = ask(gold, 5, model="m1", max_tokens=5)
    assert r.headers["x-ai-ratelimit-remaining-3600-gold"] == "990"
    assert r.headers["x-ai-ratelimit-remaining-3600-policy-2"] == "10"


# ------------------------------------------------------------------------ Redis

REDIS_CONFIG = """
_format_version: "3.0"
routes:
  - name: mock
    paths: ["/mock/v1/chat/completions"]
    plugins:
      - name: ai-proxy
        config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
      - name: ai-rate-limiting-advanced
        config:
          identifier: header
          header_name: x-test
          strategy: redis
          redis: {host: 127.0.0.1, port: PORT, timeout: 500}
          llm_providers: [{name: mock, limit: [100], window_size: [3600]}]
  - name: strict
    paths: ["/strict/v1/chat/completions"]
    plugins:
      - name: ai-proxy
        config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
      - name: ai-rate-limiting-advanced
        config:
          identifier: header
          header_name: x-test
          strategy: redis
          fault_tolerant: false
          redis: {host: 127.0.0.1, port: PORT, timeout: 500}
          llm_providers: [{name: mock, limit: [100], window_size: [3600]}]
"""


def test_two_gateways_on_one_redis_share_one_budget(
    redis_server: RedisServer, start_gateway: Any, who: str
) -> None:
    config = REDIS_CONFIG.replace("PORT", str(redis_server.port))
    status = f"127.0.0.1:{free_port()}"
    gateways = [
        start_gateway(config, quiet=False, status_listen=status),
        start_gateway(config, quiet=False),
    ]
    # 10 requests at once, 5 on each gateway; each spends exactly 20 (10 + the echo
    # of 10, reserved as max_tokens 10): 100 fit 5 of them in all, not 5 per gateway
    clients = [client(g, "mock", who) for g in gateways]

    def one(n: int) -> int:
        try:
            return ask(clients[n % 2], 10, max_tokens=10).status_code
        except openai.APIStatusError as e:
            return e.status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(one, range(10)))
    assert statuses == [200] * 5 + [429] * 5
    # both see the same counter
    for c in clients:
        with pytest.raises(openai.RateLimitError) as e:
            ask(c, 1, max_tokens=1)
        assert e.value.response.headers["x-ai-ratelimit-remaining-3600-mock"] == "0"

    # with Redis up, the strict route counts as the other one does
    assert ask(client(gateways[0], "strict", who), 10, max_tokens=10).status_code == 200

    # Redis dies: fault_tolerant (the default) lets the request through, uncounted and
    # saying so in the log
    redis_server.kill()
    r = ask(client(gateways[0], "mock", who + "-down"), 10, max_tokens=10)
    assert r.status_code == 200
    assert "x-ai-ratelimit-remaining-3600-mock" not in r.headers
    # fault_tolerant: false refuses it, as rate-limiting does
    with pytest.raises(openai.InternalServerError) as e:
        ask(client(gateways[0], "strict", who + "-down"), 10, max_tokens=10)
    assert e.value.response.json()["error"] == {
        "message": "ai-rate-limiting-advanced cannot reach its counters (Redis is unavailable)",
        "type": "api_error",
        "param": None,
        "code": "rate_limit_unavailable",
    }
    deadline = time.time() + 5
    while "request refused (fault_tolerant is false)" not in (log := gateways[0].log()):
        assert time.time() < deadline, log
        time.sleep(0.05)
    assert "counters unavailable, request allowed" in log
    # both counted, for the operator's dashboards
    metrics = httpx.get(f"http://{status}/metrics", trust_env=False).text
    for outcome in ("allowed", "refused"):
        line = (
            "llmitm_policy_store_unavailable_total"
            f'{{outcome="{outcome}",plugin="ai-rate-limiting-advanced"}} 1.0'
        )
        assert line in metrics, metrics
