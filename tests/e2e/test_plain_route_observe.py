"""The seed's ai-tracing setup end to end: Langfuse on a plain service route (no
ai-proxy) that proxies to an LLM backend, and every LLM call through it traced.

A real `mitmdump -s addons/gateway.py`: service `ai-service` (the fake upstream, which
answers OpenAI's chat completions, whole and streamed, and Anthropic's Messages API)
with routes `/v1/chat/completions`, `/v1/messages` and `/app` (a non-LLM API), and
ai-tracing on the service with the seed's legacy `/api/public/ingestion` endpoint; a
second service behind the `/otel` prefix goes to the global ai-tracing (OTLP). The
clients are the official `openai` and `anthropic` SDKs with their own keys, which the
plain routes pass on. The client must get the upstream's bytes unchanged, Langfuse a
generation with the model and usage, and file-log a record with provider, model,
usage and the route's name; a non-LLM request stays a plain record that no LLM sink
sends.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.anthropic import Script, anthropic_api
from tests.fakes.langfuse import FakeLangfuse, basic
from tests.fakes.upstream import FakeUpstream, Received, Reply, chat_stream

LANGFUSE_PUBLIC = "pk-lf-plain-route"
LANGFUSE_SECRET = "sk-lf-plain-route-SECRET-91b2"
CLIENT_KEY = "sk-client-own-key-plain-route-3344"
ANTHROPIC_KEY = "sk-ant-client-own-key-plain-5566"

CONFIG = """
_format_version: "3.0"
services:
  - name: ai-service
    url: "@UPSTREAM@"
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        strip_path: false
      - name: messages
        paths: ["/v1/messages"]
        strip_path: false
      - name: app
        paths: ["/app"]
        strip_path: false
    plugins:
      - name: ai-tracing
        config:
          langfuse_enabled: true
          langfuse_public_key: pk-lf-plain-route
          langfuse_secret_key: "{vault://env/LLMITM_LANGFUSE_SECRET}"
          langfuse_endpoint: "@LANGFUSE@/api/public/ingestion"
          environment: production
  - name: otel-service
    url: "@UPSTREAM@"
    routes:
      - name: otel-chat
        paths: ["/otel"]
plugins:
  - name: ai-tracing
    config:
      langfuse_enabled: true
      langfuse_public_key: pk-lf-plain-route
      langfuse_secret_key: "{vault://env/LLMITM_LANGFUSE_SECRET}"
      langfuse_endpoint: "@LANGFUSE@"
  - name: file-log
    config: {path: "{records}"}
"""

#: a whole answer as the backend writes it (its spacing, a field of its own): the client
#: must get these bytes
WHOLE = (
    b'{"id": "chatcmpl-plain", "object": "chat.completion",  "created": 1700000000,\n'
    b' "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_plain",\n'
    b' "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},'
    b' "finish_reason": "stop"}],\n'
    b' "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},'
    b' "x_backend": {"node": "gpu-3"}}'
)
STREAM = chat_stream(["The ", "answer ", "is ", "2."], usage=(9, 4), pause=0.3)
APP_ANSWER = b'{"stored": true, "id": 17}'


class Backend:
    """The service behind the routes: OpenAI chat (`openai`, set per test), Anthropic's
    Messages API (checking the client's own key), and a non-LLM API under /app."""

    def __init__(self) -> None:
        self.openai: Reply = Reply(200, {"content-type": "application/json"}, WHOLE)
        self.anthropic = anthropic_api(ANTHROPIC_KEY, Script(pause=0.05))

    def __call__(self, req: Received) -> Reply:
        if req.path.startswith("/v1/messages"):
            # the anthropic SDK of this venv sends its key as `Authorization: Bearer`
            auth = req.headers.get("authorization", "")
            if "x-api-key" not in req.headers and auth.startswith("Bearer "):
                req.headers = {**req.headers, "x-api-key": auth[7:]}
            return self.anthropic(req)
        if req.path.startswith("/v1/chat/completions"):
            return self.openai
        if req.path.startswith("/app"):
            return Reply(201, {"content-type": "application/json"}, APP_ANSWER)
        return Reply.json({"error": "not here"}, 404)


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
        tmp_path_factory.mktemp("gw-plain-observe"),
        config,
        quiet=False,
        env={"LLMITM_LANGFUSE_SECRET": LANGFUSE_SECRET},
        extra=[
            "--set",
            "llmitm_observe_prices=gpt-4o-mini*=1/2",
            "--set",
            "llmitm_observe_prices=anthropic/claude-haiku-4-5*=1/5/0.1/1.25",
        ],
    )
    g.wait_ready()
    yield g
    g.stop()
    # the clients' own keys (passed on to the backend) and the Langfuse secret reach
    # neither Langfuse nor the log
    for _headers, body in langfuse.plain_bodies():
        for secret in (LANGFUSE_SECRET, CLIENT_KEY, ANTHROPIC_KEY):
            assert secret.encode() not in body, secret
    for secret in (LANGFUSE_SECRET, CLIENT_KEY, ANTHROPIC_KEY):
        assert secret not in g.log(), secret


@pytest.fixture
def backend(upstream: FakeUpstream) -> Backend:
    upstream.reset()
    b = Backend()
    upstream.reply(b)
    return b


@pytest.fixture
def tag() -> str:
    return f"msg-{uuid.uuid4().hex}"


def openai_client(gw: Gateway, tag: str, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}{prefix}/v1",
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


def legacy_events(langfuse: FakeLangfuse, record_id: str) -> tuple[dict, dict]:
    """The trace-create and generation-create events of a call (waits for both)."""

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
        return (trace["body"], gen["body"]) if trace and gen else None

    return wait(both, f"the Langfuse events of {record_id}")


def test_a_whole_chat_call_is_traced_and_passed_through_unchanged(
    gw: Gateway, upstream: FakeUpstream, backend: Backend, langfuse: FakeLangfuse, tag: str
) -> None:
    raw = openai_client(gw, tag).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Capital of France?"}],
        temperature=0.3,
        extra_headers={"X-User-Id": "user-12345", "X-Session-Id": "session-abc"},
    )
    assert raw.http_response.content == WHOLE  # the backend's bytes, unchanged
    assert raw.parse().choices[0].message.content == "Paris."
    sent = gw.record(message_id=tag)
    got = upstream.last()
    assert got.path == "/v1/chat/completions" and got.headers["x-message-id"] == tag
    assert got.headers["authorization"] == f"Bearer {CLIENT_KEY}"  # the client's own

    assert sent["route"] == {"name": "chat"} and sent["service"] == {"name": "ai-service"}
    assert sent["status"] == "ok"
    ai = sent["ai"]["proxy"]
    assert ai["meta"]["provider_name"] == "openai"
    assert ai["meta"]["request_model"] == "gpt-4o-mini"
    assert ai["meta"]["response_model"] == "gpt-4o-mini-2024-07-18"
    assert ai["meta"]["route_type"] == "llm/v1/chat" and ai["meta"]["finish_reason"] == "stop"
    assert ai["meta"]["request_mode"] == "oneshot"
    assert ai["meta"]["request_parameters"] == {"temperature": 0.3}
    usage = ai["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (20, 5)
    assert usage["source"] == "reported"
    assert usage["cost"] == pytest.approx((20 * 1 + 5 * 2) / 1e6)  # the observe prices
    # the route has no ai-proxy logging block: payloads as observe mode keeps them
    assert ai["payload"]["request"]["messages"][0]["content"] == "Capital of France?"
    assert ai["payload"]["response"]["x_backend"] == {"node": "gpu-3"}
    assert sent["upstream"]["status"] == 200
    assert sent["upstream"]["url"].endswith("/v1/chat/completions")
    assert sent["request"]["headers"]["authorization"] == "[REDACTED]"

    trace, gen = legacy_events(langfuse, sent["id"])
    assert (trace["name"], trace["userId"], trace["sessionId"]) == (
        "/v1/chat/completions",
        "user-12345",
        "session-abc",
    )
    assert gen["model"] == "gpt-4o-mini-2024-07-18"
    assert gen["usageDetails"] == {"input": 20, "output": 5, "total": 25}
    assert gen["costDetails"]["total"] == pytest.approx(30 / 1e6)
    assert gen["output"] == {"role": "assistant", "content": "Paris."}
    assert gen["environment"] == "production"


def test_a_streamed_chat_call_is_passed_on_as_it_comes(
    gw: Gateway, backend: Backend, langfuse: FakeLangfuse, tag: str
) -> None:
    backend.openai = Reply.sse(STREAM)
    client = openai_client(gw, tag)
    arrived: list[tuple[float, bytes]] = []
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "1+1?"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        for piece in response.iter_bytes():
            arrived.append((time.monotonic(), piece))
    assert b"".join(p for _, p in arrived) == b"".join(e for e in STREAM if isinstance(e, bytes))
    # the backend pauses 0.3 s before each word: a stream passed on as it comes arrives
    # over those pauses, not in one piece at the end
    assert arrived[-1][0] - arrived[0][0] >= 0.6

    sent = gw.record(message_id=tag)
    ai = sent["ai"]["proxy"]
    assert sent["route"] == {"name": "chat"}
    assert ai["meta"]["provider_name"] == "openai" and ai["meta"]["request_mode"] == "stream"
    assert ai["meta"]["finish_reason"] == "stop"
    assert (ai["usage"]["prompt_tokens"], ai["usage"]["completion_tokens"]) == (9, 4)
    assert ai["usage"]["time_to_first_token"] is not None
    assert ai["usage"]["time_to_first_token"] < sent["latencies"]["request"]
    assert sent["response"]["size"] == sum(len(p) for _, p in arrived)

    _, gen = legacy_events(langfuse, sent["id"])
    assert gen["model"] == "gpt-4o-mini"
    assert gen["usageDetails"] == {"input": 9, "output": 4, "total": 13}
    assert gen["output"]["content"] == "The answer is 2."
    assert gen["completionStartTime"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_anthropic_messages_call_is_traced(
    gw: Gateway, backend: Backend, langfuse: FakeLangfuse, tag: str, stream: bool
) -> None:
    client = anthropic.Anthropic(
        base_url=gw.url,
        api_key=ANTHROPIC_KEY,
        max_retries=0,
        default_headers={"X-Message-Id": tag},
    )
    question = [{"role": "user", "content": "1+1?"}]
    if stream:
        with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=question
        ) as s:
            text = "".join(s.text_stream)
    else:
        answer = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=question)
        text = answer.content[0].text
    assert text == "The answer is 2."

    sent = gw.record(message_id=tag)
    ai = sent["ai"]["proxy"]
    assert sent["route"] == {"name": "messages"}
    assert ai["meta"]["provider_name"] == "anthropic"
    assert ai["meta"]["request_model"] == "claude-haiku-4-5"
    assert ai["meta"]["request_mode"] == ("stream" if stream else "oneshot")
    assert ai["meta"]["finish_reason"] == "stop"
    usage = ai["usage"]
    assert usage["completion_tokens"] == 14 and usage["cache_read_tokens"] == 1800
    assert usage["cost"] is not None and usage["cost"] > 0
    assert (ai["usage"]["time_to_first_token"] is not None) is stream

    _, gen = legacy_events(langfuse, sent["id"])
    assert gen["model"] == "claude-haiku-4-5"
    assert gen["usageDetails"]["output"] == 14


def test_the_otlp_sink_gets_them_too(
    gw: Gateway, backend: Backend, langfuse: FakeLangfuse, tag: str
) -> None:
    """The second service strips `/otel`: the backend gets /v1/chat/completions."""
    answer = openai_client(gw, tag, "/otel").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Capital of France?"}]
    )
    assert answer.choices[0].message.content == "Paris."
    sent = gw.record(message_id=tag)
    assert sent["route"] == {"name": "otel-chat"}
    trace_id = sent["id"].replace("-", "")
    span = wait(
        lambda: next((s for s in langfuse.spans if s["trace_id"] == trace_id), None),
        "the OTLP span",
    )
    a = span["attributes"]
    assert a["langfuse.observation.type"] == "generation"
    assert a["langfuse.observation.model.name"] == "gpt-4o-mini-2024-07-18"
    assert json.loads(a["langfuse.observation.usage_details"]) == {
        "input": 20,
        "output": 5,
        "total": 25,
    }


def test_other_requests_stay_plain_records(
    gw: Gateway, backend: Backend, langfuse: FakeLangfuse, tag: str
) -> None:
    headers = {"X-Message-Id": tag, "Authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=gw.url, headers=headers) as http:
        stored = http.post("/app/upload", json={"model": "a field of its own", "name": "x"})
        listed = http.get("/app/items", headers={"X-Message-Id": f"{tag}-get"})
    assert (stored.status_code, stored.content) == (201, APP_ANSWER)
    assert listed.status_code == 201
    plain = [gw.record(message_id=tag), gw.record(message_id=f"{tag}-get")]
    for rec in plain:
        assert rec["route"] == {"name": "app"} and rec["ai"] is None and rec["status"] == "ok"
    # a later LLM call through the same ai-tracing instance arrives: the earlier
    # records were handed to it first, and it sent nothing for them
    later = f"{tag}-later"
    openai_client(gw, later).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    legacy_events(langfuse, gw.record(message_id=later)["id"])
    sent_ids = {e["body"].get("id") for e in langfuse.events} | {
        e["body"].get("traceId") for e in langfuse.events
    }
    assert not sent_ids & {rec["id"] for rec in plain}
    log = gw.log()
    # one warning: that route's POSTs are not LLM calls, so ai-tracing skips them
    assert log.count("ai-tracing on route 'app'") == 1
    assert "POST /app/upload is not a path of an LLM API llmitm knows" in log
    assert "Traceback" not in log and "could not read" not in log


def test_nothing_refused_by_langfuse(gw: Gateway, langfuse: FakeLangfuse) -> None:
    assert langfuse.problems == []
    assert all(
        r.headers["authorization"] == basic(LANGFUSE_PUBLIC, LANGFUSE_SECRET)
        for r in langfuse.received
    )
