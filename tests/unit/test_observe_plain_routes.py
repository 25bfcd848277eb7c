"""Observe mode on plain routes: a route without ai-proxy proxies its requests to its
service unchanged; the ones that are LLM calls get a record with provider, model, usage
and cost under the route's own name (addons/observe.py `_watch_route`).

The gateway's addons are driven by hand in mitmproxy's test harness, in the chain's
order (Router, ServiceProxy, Observe, and the recorder's `build_record`); the upstream's
answer is set on the flow as mitmproxy would receive it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from mitmproxy import http

from addons.calls import Call
from addons.config import load_text
from addons.observe import Observe
from addons.recorder import build_record
from addons.router import Router, ServiceProxy
from addons.state import Gateway
from exporters.record import CallRecord
from providers.prices import PriceTable
from tests.fakes.upstream import chat_completion, chat_stream
from tests.policy_helpers import client_request

CONFIG = """
_format_version: "3.0"
services:
  - name: ai-service
    url: http://llm.internal:8000
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        strip_path: false
      - name: stripped
        paths: ["/stripped/v1/chat/completions"]
      - name: anthropic-like
        paths: ["/claude"]
      - name: ollama-like
        paths: ["/api"]
        strip_path: false
      - name: gemini-like
        paths: ["/v1beta"]
        strip_path: false
      - name: other
        paths: ["/app"]
        plugins:
          - name: ai-tracing
            config:
              langfuse_enabled: true
              langfuse_public_key: pk-lf-unit
              langfuse_secret_key: sk-lf-unit
  - name: anthropic
    url: https://api.anthropic.com
    routes:
      - name: claude
        paths: ["/anthropic"]
  - name: with-ai-proxy
    routes:
      - name: proxied-by-ai-proxy
        paths: ["/mock/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
"""


class Chain:
    """The addons of a plain route's request, in the gateway's order."""

    def __init__(self, config: str = CONFIG) -> None:
        self.gw = Gateway()
        self.gw.config = load_text(config)
        self.router = Router(self.gw)
        self.service_proxy = ServiceProxy(self.gw)
        self.observe = Observe(self.gw)
        self.observe.prices = PriceTable.from_config(["gpt-4o-mini=1/2"])

    def send(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        """A client's request through requestheaders and request; the flow."""
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        flow = client_request(method, path, body=raw if raw is not None else b"")
        self.router.requestheaders(flow)
        self.observe.requestheaders(flow)
        self.service_proxy.request(flow)
        assert self.observe.request(flow) is None  # small bodies: read on the loop
        return flow

    def answer(self, flow: Any, status: int, body: bytes, ctype: str) -> None:
        """The upstream's whole answer."""
        flow.response = http.Response.make(status, body, {"content-type": ctype})
        self.observe.responseheaders(flow)
        assert flow.response.stream is False or flow.response.stream is None
        assert self.observe.response(flow) is None

    def stream(self, flow: Any, chunks: list[bytes], ctype: str) -> list[bytes]:
        """The upstream's streamed answer: what the client gets, chunk by chunk."""
        flow.response = http.Response.make(200, b"", {"content-type": ctype})
        self.observe.responseheaders(flow)
        owner = flow.response.stream
        assert callable(owner), "a stream is passed through by the stream owner"
        sent = [out for chunk in [*chunks, b""] for out in owner(chunk)]
        assert self.observe.response(flow) is None
        return sent

    def call(self, flow: Any) -> Call:
        call = self.gw.calls.get(flow)
        assert call is not None
        return call

    def record(self, flow: Any) -> CallRecord:
        return build_record(self.call(flow), flow)


def test_an_openai_chat_call_on_a_plain_route_is_recorded_as_an_llm_call() -> None:
    c = Chain()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    flow = c.send("POST", "/v1/chat/completions", body)
    assert flow.request.url == "http://llm.internal:8000/v1/chat/completions"
    answer = json.dumps(chat_completion("hello", prompt_tokens=20, completion_tokens=5)).encode()
    c.answer(flow, 200, answer, "application/json")
    assert flow.response.content == answer  # unchanged
    rec = c.record(flow)
    assert rec.route == "chat" and rec.service == "ai-service"
    assert rec.ai is not None
    assert (rec.ai.provider, rec.ai.route_type) == ("openai", "llm/v1/chat")
    assert (rec.ai.request_model, rec.ai.response_model) == ("gpt-4o-mini", "gpt-4o-mini")
    assert rec.ai.usage is not None and not rec.ai.usage.estimated
    assert (rec.ai.usage.prompt_tokens, rec.ai.usage.completion_tokens) == (20, 5)
    assert rec.ai.cost == pytest.approx((20 * 1 + 5 * 2) / 1e6)  # the observe prices
    assert rec.ai.finish_reason == "stop"
    assert rec.ai.upstream_url == "http://llm.internal:8000/v1/chat/completions"
    # no ai-proxy logging block: the observe payload option (on by default)
    assert rec.ai.request_payload == body
    assert rec.ai.response_payload["choices"][0]["message"]["content"] == "hello"
    assert flow.metadata["llmitm.route"] == "chat"


def test_payloads_follow_the_observe_option() -> None:
    c = Chain()
    c.observe.payloads = False
    flow = c.send("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    c.answer(flow, 200, json.dumps(chat_completion()).encode(), "application/json")
    rec = c.record(flow)
    assert rec.ai is not None and rec.ai.usage is not None
    assert rec.ai.request_payload is None and rec.ai.response_payload is None


def test_a_streamed_call_passes_byte_for_byte_and_is_measured() -> None:
    c = Chain()
    flow = c.send(
        "POST",
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    # cut at arbitrary places, as the network does
    whole = b"".join(e for e in chat_stream(["Hel", "lo"], usage=(9, 4)) if isinstance(e, bytes))
    chunks = [whole[i : i + 37] for i in range(0, len(whole), 37)]
    assert c.stream(flow, chunks, "text/event-stream") == chunks
    rec = c.record(flow)
    assert rec.ai is not None and rec.ai.stream
    assert rec.ai.usage is not None
    assert (rec.ai.usage.prompt_tokens, rec.ai.usage.completion_tokens) == (9, 4)
    assert rec.ai.finish_reason == "stop"
    assert rec.ai.response_model == "gpt-4o-mini"
    assert rec.ai.time_to_first_token_ms is not None
    assert rec.response["size"] == len(whole)


def test_an_upstream_error_is_the_calls_error() -> None:
    c = Chain()
    flow = c.send("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    err = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate"}}
    c.answer(flow, 429, json.dumps(err).encode(), "application/json")
    rec = c.record(flow)
    assert rec.status == "error"
    assert rec.ai is not None and rec.ai.provider == "openai"
    assert rec.error is not None and rec.error["status"] == 429
    assert "Rate limit reached" in rec.error["message"] and rec.error["source"] == "upstream"


def test_the_clients_path_names_the_api_when_the_route_strips_it() -> None:
    """Kong's default strip_path: the service gets `/`, the client asked for
    /v1/chat/completions (what the seed's plugin reads)."""
    c = Chain()
    flow = c.send("POST", "/stripped/v1/chat/completions", {"model": "gpt-4o-mini"})
    assert flow.request.url == "http://llm.internal:8000/"
    c.answer(flow, 200, json.dumps(chat_completion()).encode(), "application/json")
    rec = c.record(flow)
    assert rec.ai is not None and rec.ai.provider == "openai"
    assert rec.route == "stripped"
    assert rec.ai.upstream_url == "http://llm.internal:8000/"


@pytest.mark.parametrize(
    ("path", "body", "provider", "route_type", "model"),
    [
        # the service's path, after the route's prefix is stripped: /v1/messages
        (
            "/claude/v1/messages",
            {"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": []},
            "anthropic",
            "llm/v1/chat",
            "claude-sonnet-4-5",
        ),
        ("/api/chat", {"model": "llama3.2", "messages": []}, "ollama", "llm/v1/chat", "llama3.2"),
        (
            "/api/embed",
            {"model": "nomic-embed-text", "input": "x"},
            "ollama",
            "llm/v1/embeddings",
            "nomic-embed-text",
        ),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            "gemini",
            "llm/v1/chat",
            "gemini-2.5-flash",
        ),
    ],
)
def test_the_format_the_path_speaks_chooses_the_provider(
    path: str, body: dict[str, Any], provider: str, route_type: str, model: str
) -> None:
    c = Chain()
    flow = c.send("POST", path, body)
    call = c.call(flow)
    assert call.provider is not None and call.provider.name == provider
    assert call.spec is not None and str(call.spec.route_type) == route_type
    assert call.request_model == model
    assert flow.metadata["llmitm.observed_route"] == "path"


def test_an_anthropic_answer_on_a_plain_route() -> None:
    c = Chain()
    flow = c.send(
        "POST",
        "/claude/v1/messages",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }
    c.answer(flow, 200, json.dumps(answer).encode(), "application/json")
    rec = c.record(flow)
    assert rec.ai is not None and rec.ai.provider == "anthropic"
    assert rec.ai.response_model == "claude-sonnet-4-5-20250929"
    assert rec.ai.usage is not None and rec.ai.usage.prompt_tokens == 12
    assert rec.ai.finish_reason == "stop"  # in chat terms, as a translated call has it


def test_a_known_llm_host_decides_first() -> None:
    """A service at api.anthropic.com: its provider's operations, whatever the prefix."""
    c = Chain()
    flow = c.send("POST", "/anthropic/v1/messages", {"model": "claude-haiku-4-5", "messages": []})
    assert flow.request.url == "https://api.anthropic.com/v1/messages"
    call = c.call(flow)
    assert call.provider is not None and call.provider.name == "anthropic"
    assert flow.metadata["llmitm.observed_route"] == "host"
    # not an LLM call of Anthropic's API: not observed
    flow = c.send("POST", "/anthropic/v1/messages/count_tokens", {"model": "m", "messages": []})
    assert c.call(flow).provider is None


def test_configured_hosts_count_for_services_too() -> None:
    from mitmproxy.test import taddons

    c = Chain()
    with taddons.context(c.observe) as tctx:
        tctx.configure(c.observe, llmitm_observe_hosts=["llm.internal:8000=ollama"])
        flow = c.send("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": []})
    call = c.call(flow)
    assert call.provider is not None and call.provider.name == "ollama"
    assert flow.metadata["llmitm.observed_route"] == "host"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/chat/completions", None),  # not a POST
        ("POST", "/app/upload", {"model": "x"}),  # not an LLM path
        ("GET", "/api/tags", None),  # Ollama's model list
    ],
)
def test_other_requests_are_recorded_as_before(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    c = Chain()
    flow = c.send(method, path, body)
    assert "llmitm.observed" not in flow.metadata
    call = c.call(flow)
    assert call.provider is None and call.spec is None
    c.answer(flow, 200, b'{"ok": true}', "application/json")
    rec = c.record(flow)
    assert rec.ai is None and rec.upstream is None and rec.route is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"to": "+15550100", "body": "see you at 5"}',  # a messaging API's /v1/messages
        b"to=%2B15550100&body=hello",  # a form
        b"[1, 2]",
        b"",
    ],
)
def test_a_path_that_only_looks_like_an_llm_call_is_not_observed(raw: bytes) -> None:
    c = Chain()
    flow = c.send("POST", "/claude/v1/messages", raw=raw)
    call = c.call(flow)
    assert call.provider is None and call.spec is None and call.upstream_url is None
    assert not {k for k in flow.metadata if k.startswith("llmitm.observed")}
    assert "llmitm.provider" not in flow.metadata
    flow.response = http.Response.make(201, b'{"sid": "SM1"}', {"content-type": "application/json"})
    c.observe.responseheaders(flow)
    assert not flow.response.stream
    assert c.observe.response(flow) is None
    rec = c.record(flow)
    assert rec.ai is None and rec.request["headers"] is not None
    assert rec.context == {}  # no body metadata taken either


def test_on_a_known_host_the_body_is_not_second_guessed() -> None:
    c = Chain()
    flow = c.send("POST", "/anthropic/v1/messages", raw=b"not json")
    assert c.call(flow).provider is not None


def test_ai_proxy_routes_are_left_to_ai_proxy() -> None:
    c = Chain()
    flow = c.send("POST", "/mock/v1/chat/completions", {"model": "x", "messages": []})
    call = c.call(flow)
    assert call.route is not None and call.route.name == "proxied-by-ai-proxy"
    assert "llmitm.observed" not in flow.metadata
    assert call.provider is None  # AIProxy (not run here) sets it


def test_observe_off_leaves_plain_routes_alone() -> None:
    c = Chain()
    c.observe.enabled = False
    flow = c.send("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    assert c.call(flow).provider is None


def test_a_reload_is_followed() -> None:
    """The route's service is worked out once per config: a new config is read anew."""
    c = Chain()
    flow = c.send("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    assert c.call(flow).provider is not None
    c.gw.config = load_text(
        CONFIG.replace("url: http://llm.internal:8000", "url: http://127.0.0.1:11434")
    )
    flow = c.send("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": []})
    call = c.call(flow)
    assert call.provider is not None and call.provider.name == "ollama"  # a known host now


def test_a_call_denied_before_the_upstream_has_no_ai() -> None:
    c = Chain()
    flow = client_request("POST", "/v1/chat/completions", body=b'{"model": "gpt-4o-mini"}')
    c.router.requestheaders(flow)
    c.observe.requestheaders(flow)
    flow.response = http.Response.make(429, b"{}")  # a policy refused it
    c.service_proxy.request(flow)
    assert c.observe.request(flow) is None
    c.observe.responseheaders(flow)
    assert c.observe.response(flow) is None
    assert c.record(flow).ai is None


def test_an_llm_sink_on_a_route_without_llm_calls_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = Chain()
    with caplog.at_level(logging.WARNING, logger="llmitm"):
        for path in ("/app/upload", "/app/other", "/app/upload"):
            c.send("POST", path, {"x": 1})
        c.send("GET", "/app/list")
        # a route without an LLM sink: nothing to say
        c.send("POST", "/api/other", {"x": 1})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "ai-tracing on route 'app'" not in warnings[0]  # the route is named `other`
    assert "ai-tracing on route 'other': POST /app/upload" in warnings[0]
    assert "no model or usage" in warnings[0]
    # a new config: said again (once)
    c.gw.config = load_text(CONFIG)
    with caplog.at_level(logging.WARNING, logger="llmitm"):
        c.send("POST", "/app/upload", {"x": 1})
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    # an ai-tracing that sends nothing (langfuse_enabled: false) skips nothing
    caplog.clear()
    c.gw.config = load_text(CONFIG.replace("langfuse_enabled: true", "langfuse_enabled: false"))
    with caplog.at_level(logging.WARNING, logger="llmitm"):
        c.send("POST", "/app/upload", {"x": 1})
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_the_seed_config_traces_the_calls_of_its_plain_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """configs/seed-ai-tracing.yaml: the seed's ai-tracing on a service without
    ai-proxy; its calls are observed, and ai-tracing is among the call's plugins."""
    from pathlib import Path

    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-seed")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-seed")
    seed = Path(__file__).resolve().parents[2] / "configs" / "seed-ai-tracing.yaml"
    c = Chain(seed.read_text())
    for path, route_type in (
        ("/v1/chat/completions", "llm/v1/chat"),
        ("/v1/embeddings", "llm/v1/embeddings"),
    ):
        flow = c.send("POST", path, {"model": "gpt-4", "messages": [], "input": "x"})
        assert flow.request.url == f"http://127.0.0.1:8001{path}"
        call = c.call(flow)
        assert call.route is not None and call.route.name == "ai-api"
        assert call.plugin("ai-tracing") is not None
        assert call.provider is not None and call.provider.name == "openai"
        assert call.spec is not None and str(call.spec.route_type) == route_type


@pytest.mark.parametrize("llm", [True, False], ids=["llm-request", "other-request"])
async def test_a_large_request_is_read_off_the_loop(llm: bool) -> None:
    from addons.observe import OFF_LOOP_BYTES

    c = Chain()
    text = "a" * (OFF_LOOP_BYTES + 10)
    body = (
        {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": text}]}
        if llm
        else {"to": "+15550100", "body": text}
    )
    flow = client_request("POST", "/claude/v1/messages", body=json.dumps(body).encode())
    c.router.requestheaders(flow)
    c.observe.requestheaders(flow)
    c.service_proxy.request(flow)
    pending = c.observe.request(flow)
    assert pending is not None  # a coroutine: the body is read in a thread
    await pending
    call = c.call(flow)
    if llm:
        assert call.provider is not None and call.request_model == "claude-haiku-4-5"
        assert call.upstream_url == "http://llm.internal:8000/v1/messages"
        assert flow.metadata["llmitm.model"] == "claude-haiku-4-5"
    else:
        assert call.provider is None and call.spec is None and call.upstream_url is None
        assert "llmitm.observed" not in flow.metadata
