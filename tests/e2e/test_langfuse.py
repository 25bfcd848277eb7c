"""ai-tracing end to end: a real gateway sends every LLM call to a fake Langfuse.

A real `mitmdump -s addons/gateway.py` with Kong's `ai-tracing` plugin configured twice:
globally (OTLP/HTTP, the default) and on one route with the seed's legacy
`.../api/public/ingestion` endpoint. The `openai` SDK is the client, a fake OpenAI
upstream answers, and the fake Langfuse of `tests/fakes/langfuse.py` validates every
request (OTLP spans against the official SDKs' attributes, legacy batches against
Langfuse's OpenAPI spec) and answers as Langfuse does, outages included.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.langfuse import FakeLangfuse, basic
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion, chat_stream

LANGFUSE_PUBLIC = "pk-lf-e2e-public"
LANGFUSE_SECRET = "sk-lf-e2e-SECRET-7f3a9c"
PROVIDER_KEY = "sk-provider-secret-lf-e2e-5566"
CLIENT_KEY = "client-key-lf-e2e-7788"

CONFIG = """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    read_timeout: 3000
    routes:
      - name: chat
        paths: ["/openai/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model:
                provider: openai
                name: gpt-4o-mini
                options: {upstream_url: "@UPSTREAM@", input_cost: 0.15, output_cost: 0.6}
              logging: {log_statistics: true, log_payloads: true}
      - name: embeddings
        paths: ["/openai/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model: {provider: openai, name: text-embedding-3-small, options: {upstream_url: "@UPSTREAM@"}}
              logging: {log_payloads: true}
      - name: legacy
        paths: ["/legacy/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "@UPSTREAM@"}}
              logging: {log_payloads: true}
          - name: ai-tracing
            config:
              langfuse_enabled: true
              langfuse_public_key: pk-lf-e2e-public
              langfuse_secret_key: "{vault://env/LLMITM_LANGFUSE_SECRET}"
              langfuse_endpoint: "@LANGFUSE@/api/public/ingestion"
              langfuse_timeout: 2000
              environment: staging
plugins:
  - name: ai-tracing
    config:
      langfuse_enabled: true
      langfuse_public_key: pk-lf-e2e-public
      langfuse_secret_key: "{vault://env/LLMITM_LANGFUSE_SECRET}"
      langfuse_endpoint: "@LANGFUSE@"
      environment: e2e
      release: "1.0.0"
      tags: [gw]
  - name: file-log
    config: {path: "{records}"}
"""


@pytest.fixture(scope="module")
def langfuse() -> Iterator[FakeLangfuse]:
    fake = FakeLangfuse(LANGFUSE_PUBLIC, LANGFUSE_SECRET).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream, langfuse: FakeLangfuse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = CONFIG.replace("@UPSTREAM@", upstream.url).replace("@LANGFUSE@", langfuse.url)
    g = Gateway(
        tmp_path_factory.mktemp("gw-langfuse"),
        config,
        quiet=False,
        env={"LLMITM_TEST_KEY": PROVIDER_KEY, "LLMITM_LANGFUSE_SECRET": LANGFUSE_SECRET},
    )
    g.wait_ready()
    yield g
    g.stop()
    # Nothing any test did may leak a key into what Langfuse received, or into the log:
    # the Langfuse keys travel only in the Authorization header.
    token = basic(LANGFUSE_PUBLIC, LANGFUSE_SECRET).split()[1]
    for headers, body in langfuse.plain_bodies():
        assert headers["authorization"] == basic(LANGFUSE_PUBLIC, LANGFUSE_SECRET)
        others = json.dumps({k: v for k, v in headers.items() if k != "authorization"})
        for secret in (LANGFUSE_SECRET, token, PROVIDER_KEY, CLIENT_KEY):
            assert secret.encode() not in body, secret
            assert secret not in others, secret
    for secret in (LANGFUSE_SECRET, PROVIDER_KEY, CLIENT_KEY):
        assert secret not in g.log(), secret


@pytest.fixture
def tag() -> str:
    return f"msg-{uuid.uuid4().hex}"


def client(gw: Gateway, tag: str, prefix: str = "/openai/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}{prefix}",
        api_key=CLIENT_KEY,
        max_retries=0,
        default_headers={"X-Message-Id": tag},
    )


def wait(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.time() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def span_of(langfuse: FakeLangfuse, gw: Gateway, tag: str) -> dict[str, Any]:
    """The span of this test's call (its trace id is the call record's id)."""
    trace_id = gw.record(message_id=tag)["id"].replace("-", "")
    return wait(
        lambda: next((s for s in langfuse.spans if s["trace_id"] == trace_id), None),
        f"the span of {tag}",
    )


def meta(attrs: dict[str, Any], prefix: str = "langfuse.trace.metadata.") -> dict[str, Any]:
    return {k.removeprefix(prefix): json.loads(v) for k, v in attrs.items() if k.startswith(prefix)}


def test_chat_call_is_a_trace_with_a_generation(
    gw: Gateway, upstream: FakeUpstream, langfuse: FakeLangfuse, tag: str
) -> None:
    upstream.reset()
    upstream.reply(Reply.json(chat_completion("2", prompt_tokens=20, completion_tokens=5)))
    answer = client(gw, tag).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        temperature=0.2,
        extra_headers={
            "X-User-Id": "u-1",
            "X-Session-Id": "s-1",
            "X-Chat-Id": "c-1",
            "X-Organization-Id": "o-1",
            "X-Project-Id": "p-1",
        },
        extra_body={"metadata": {"feature": "calc", "tags": ["beta"]}},
    )
    assert answer.choices[0].message.content == "2"
    span = span_of(langfuse, gw, tag)
    request = next(r for r in langfuse.received if r.path == "/api/public/otel/v1/traces")
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    a = span["attributes"]
    assert a["langfuse.trace.name"] == "/openai/v1/chat/completions"
    assert (a["user.id"], a["session.id"]) == ("u-1", "s-1")
    assert a["langfuse.trace.tags"] == ["gw", "beta"]
    assert (a["langfuse.environment"], a["langfuse.release"]) == ("e2e", "1.0.0")
    m = meta(a)
    assert (m["chat_id"], m["message_id"]) == ("c-1", tag)
    assert (m["organization_id"], m["project_id"]) == ("o-1", "p-1")
    assert m["feature"] == "calc" and m["route"] == "chat" and m["status_code"] == 200
    assert a["langfuse.observation.type"] == "generation"
    assert a["langfuse.observation.model.name"] == "gpt-4o-mini"
    assert json.loads(a["langfuse.observation.model.parameters"])["temperature"] == 0.2
    assert json.loads(a["langfuse.observation.input"])[1] == {"role": "user", "content": "1+1?"}
    assert json.loads(a["langfuse.observation.output"]) == {"role": "assistant", "content": "2"}
    assert json.loads(a["langfuse.observation.usage_details"]) == {
        "input": 20,
        "output": 5,
        "total": 25,
    }
    cost = json.loads(a["langfuse.observation.cost_details"])["total"]
    assert cost == pytest.approx((20 * 0.15 + 5 * 0.6) / 1e6)
    assert "langfuse.observation.level" not in a
    assert span["resource"]["langfuse.environment"] == "e2e"


def test_streamed_call_has_its_completion_start_time(
    gw: Gateway, upstream: FakeUpstream, langfuse: FakeLangfuse, tag: str
) -> None:
    upstream.reset()
    upstream.reply(Reply.sse(chat_stream(["The ", "answer ", "is ", "2."], pause=0.1)))
    stream = client(gw, tag).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "1+1?"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "The answer is 2."
    )
    span = span_of(langfuse, gw, tag)
    a = span["attributes"]
    started = span["start_time_unix_nano"] / 1e9
    first = json.loads(a["langfuse.observation.completion_start_time"])
    from datetime import datetime

    first_at = datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
    assert 0.05 < first_at - started < span["end_time_unix_nano"] / 1e9 - started
    assert json.loads(a["langfuse.observation.output"])["content"] == "The answer is 2."
    assert json.loads(a["langfuse.observation.usage_details"])["output"] == 4
    assert meta(a, "langfuse.observation.metadata.")["request_mode"] == "stream"


def test_upstream_error_is_an_error_generation(
    gw: Gateway, upstream: FakeUpstream, langfuse: FakeLangfuse, tag: str
) -> None:
    upstream.reset()
    upstream.reply(
        Reply.json(
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}},
            429,
        )
    )
    with pytest.raises(openai.RateLimitError):
        client(gw, tag).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    span = span_of(langfuse, gw, tag)
    a = span["attributes"]
    assert a["langfuse.observation.level"] == "ERROR"
    assert "Rate limit reached" in a["langfuse.observation.status_message"]
    assert span["status"]["code"] == 2
    assert meta(a)["status"] == "error"


def test_embeddings_without_the_vectors(
    gw: Gateway, upstream: FakeUpstream, langfuse: FakeLangfuse, tag: str
) -> None:
    upstream.reset()
    upstream.reply(
        Reply.json(
            {
                "object": "list",
                "model": "text-embedding-3-small",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.5] * 16} for i in range(2)
                ],
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )
    )
    out = client(gw, tag).embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    assert len(out.data) == 2
    a = span_of(langfuse, gw, tag)["attributes"]
    assert a["langfuse.observation.type"] == "embedding"
    assert json.loads(a["langfuse.observation.input"]) == ["a", "b"]
    assert json.loads(a["langfuse.observation.output"]) == {"embeddings": 2, "dimensions": 16}
    assert json.loads(a["langfuse.observation.usage_details"])["input"] == 4


def test_legacy_endpoint_gets_a_trace_and_a_generation_event(
    gw: Gateway, upstream: FakeUpstream, langfuse: FakeLangfuse, tag: str
) -> None:
    upstream.reset()
    upstream.reply(Reply.json(chat_completion("hello", prompt_tokens=7, completion_tokens=2)))
    client(gw, tag, "/legacy/v1").chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-User-Id": "u-legacy", "X-Session-Id": "s-legacy"},
    )
    record_id = gw.record(message_id=tag)["id"]

    def both() -> tuple[dict, dict] | None:
        trace = next(
            (e for e in langfuse.events_of("trace-create") if e["body"]["id"] == record_id), None
        )
        gen = next(
            (
                e
                for e in langfuse.events_of("generation-create")
                if e["body"]["traceId"] == record_id
            ),
            None,
        )
        return (trace, gen) if trace and gen else None

    trace, gen = wait(both, "the legacy events")
    t, g = trace["body"], gen["body"]
    assert (t["name"], t["userId"], t["sessionId"]) == (
        "/legacy/v1/chat/completions",
        "u-legacy",
        "s-legacy",
    )
    assert t["environment"] == g["environment"] == "staging"
    assert t["metadata"]["message_id"] == tag
    assert g["name"] == "chat_completion" and g["model"] == "gpt-4o-mini"
    assert g["usageDetails"] == {"input": 7, "output": 2, "total": 9}
    assert g["output"] == {"role": "assistant", "content": "hello"}
    # the route's own ai-tracing instance replaces the global one: no OTLP span for it
    assert not [s for s in langfuse.spans if s["trace_id"] == record_id.replace("-", "")]


def test_langfuse_outage_loses_nothing(
    gw: Gateway, upstream: FakeUpstream, langfuse: FakeLangfuse, tag: str
) -> None:
    langfuse.fail_next(503, times=2)
    langfuse.fail_next(429, times=1, headers={"retry-after": "1"})
    upstream.reset()
    upstream.reply(Reply.json(chat_completion("ok")))
    client(gw, tag).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}]
    )
    span = span_of(langfuse, gw, tag)
    assert json.loads(span["attributes"]["langfuse.observation.output"])["content"] == "ok"


def test_nothing_refused_by_langfuse(gw: Gateway, langfuse: FakeLangfuse) -> None:
    assert langfuse.problems == []
