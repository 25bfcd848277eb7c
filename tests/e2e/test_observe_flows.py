"""Observe mode's flows as mitmproxy saves them, and options given on the command line.

One run of a real `mitmdump -s addons/gateway.py` in regular mode with `-w FILE` (flows
saved as they finish) and `store_streamed_bodies` (streams kept for the views), its
list options given twice each on the command line (`--set llmitm_observe_hosts=...`
twice, `--set llmitm_observe_prices=...` twice): clients call HTTPS fakes of the
providers' hosts in every format, streamed and not; then the gateway stops and the
saved flows are read back with mitmproxy's own `FlowReader`, as `mitmweb -r FILE` would.

What is checked on those flows: each LLM flow carries its mark and its one-line comment
(model, tokens, cost, TTFT), other traffic none; mitmproxy picks the LLM contentview for
each of them and renders the conversation of each format, streamed answers included.
And on the records: both hosts of the command line are observed, a known model is
priced from the built-in prices and a model of the user's from their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import genai_prices
import openai
import pytest
from mitmproxy import contentviews, http
from mitmproxy.io import FlowReader
from mitmproxy.test import taddons

from addons.contentview import ContentviewAddon
from tests.conftest import Gateway, free_port
from tests.e2e.test_observe import CONFIG, Proxy, _wait_port
from tests.e2e.test_observe_providers import signed
from tests.fakes import anthropic as fake_anthropic
from tests.fakes import cohere as fake_cohere
from tests.fakes.bedrock import REGION
from tests.fakes.bedrock_invoke import BEDROCK_VERSION, FakeBedrockInvoke
from tests.fakes.gemini import FakeGemini
from tests.fakes.tls import TLSFakeUpstream, redirect_script
from tests.fakes.upstream import Received, Reply, chat_completion, chat_stream

KEY = "sk-test-observe-flows-0123456789"
BEDROCK = f"bedrock-runtime.{REGION}.amazonaws.com"
INVOKE_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
HOSTS = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    BEDROCK,
    "api.cohere.com",
    "llm-a.internal",
    "llm-b.internal",
    "example.org",
]
#: given twice each on the command line
OBSERVE_HOSTS = ["llm-a.internal=openai", "llm-b.internal:8443=anthropic"]
OBSERVE_PRICES = ["openai/house-*=1/2", "anthropic/house-*=off"]


def responses_events(final: dict[str, Any]) -> list[bytes | float]:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    created = {**final, "status": "in_progress", "output": [], "usage": None}
    return [
        ev("response.created", {"response": created}),
        0.05,
        ev("response.output_text.delta", {"item_id": "m", "delta": "Hello"}),
        ev("response.output_text.delta", {"item_id": "m", "delta": " there!"}),
        ev("response.completed", {"response": final}),
    ]


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello there!"}],
        }
    ],
    "usage": {"input_tokens": 30, "output_tokens": 4, "total_tokens": 34},
}


def fakes() -> Any:
    """One handler for every host (the Host header, without its port, picks the API)."""
    anthropic_script = fake_anthropic.Script(
        tool_calls=[("get_weather", {"city": "Paris"})], pause=0.02
    )
    invoke = FakeBedrockInvoke(
        fake_anthropic.Script(
            input_tokens=15, cache_read_input_tokens=0, cache_creation_input_tokens=0
        )
    )

    def openai_api(req: Received) -> Reply:
        body = req.json()
        if req.path.endswith("/responses"):
            return Reply.sse(responses_events(RESPONSE))
        if body.get("stream"):
            return Reply.sse(chat_stream(["The", " answer", " is", " 42."], (12, 5), 0.05))
        return Reply.json(
            chat_completion("Paris.", body["model"] + "-2024-07-18", prompt_tokens=17)
        )

    def anthropic_key(req: Received) -> Reply:
        return fake_anthropic.anthropic_api(KEY, anthropic_script)(req)

    apis = {
        "api.openai.com": openai_api,
        "llm-a.internal": openai_api,
        "api.anthropic.com": anthropic_key,
        "llm-b.internal": anthropic_key,
        "generativelanguage.googleapis.com": FakeGemini(api_key=KEY, text="Bonjour à tous !"),
        BEDROCK: invoke,
        "api.cohere.com": fake_cohere.cohere_api(KEY, fake_cohere.Script(pause=0.01)),
        "example.org": lambda r: Reply.json({"model": "not an LLM", "choices": "none"}),
    }

    def handle(req: Received) -> Reply:
        host = req.headers.get("host", "").rpartition(":")[0] or req.headers.get("host", "")
        handler = apis.get(host) or apis.get(req.headers.get("host", ""))
        return handler(req) if handler else Reply.json({"error": f"no fake for {host}"}, 599)

    return handle


@dataclass
class Run:
    gw: Gateway
    flows: dict[str, http.HTTPFlow]  # by x-session-id

    def record(self, session: str) -> dict[str, Any]:
        return self.gw.record(session_id=session)


def calls(proxy: Proxy) -> None:
    """One call per format, streamed and not, each with its x-session-id."""
    sdk = openai.OpenAI(api_key=KEY, http_client=proxy.http(), max_retries=0)
    ask = [{"role": "user", "content": "Capital of France?"}]
    sdk.chat.completions.create(model="gpt-4o-mini", messages=ask, extra_headers=_s("chat"))
    for _ in sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=_s("chat-stream"),
    ):
        pass
    for _ in sdk.responses.create(
        model="gpt-4.1", input="Say hello", stream=True, extra_headers=_s("responses")
    ):
        pass
    house = openai.OpenAI(
        api_key=KEY, base_url="https://llm-a.internal/v1", http_client=proxy.http(), max_retries=0
    )
    house.chat.completions.create(model="house-model-1", messages=ask, extra_headers=_s("house"))
    claude = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    anthropic_headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with proxy.http(timeout=30) as h:
        post = h.post
        post(
            "https://api.anthropic.com/v1/messages",
            json={**claude, "stream": True},
            headers=anthropic_headers | _s("anthropic-stream"),
        ).raise_for_status()
        post(
            "https://llm-b.internal:8443/v1/messages",
            json={**claude, "model": "house-claude"},
            headers=anthropic_headers | _s("llm-b"),
        ).raise_for_status()
        post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
            f":streamGenerateContent?alt=sse&key={KEY}",
            json={"contents": [{"role": "user", "parts": [{"text": "Say bonjour"}]}]},
            headers=_s("gemini"),
        ).raise_for_status()
        url = f"https://{BEDROCK}/model/{INVOKE_MODEL}/invoke-with-response-stream"
        raw = json.dumps(
            {
                "anthropic_version": BEDROCK_VERSION,
                "max_tokens": 200,
                "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            }
        ).encode()
        headers = signed(url, raw, "application/vnd.amazon.eventstream")
        post(url, content=raw, headers=headers | _s("bedrock-invoke")).raise_for_status()
        post(
            "https://api.cohere.com/v2/chat",
            json={
                "model": "command-a-03-2025",
                "stream": True,
                "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            },
            headers={"authorization": f"Bearer {KEY}"} | _s("cohere"),
        ).raise_for_status()
        post("https://example.org/v1/chat/completions", json={}, headers=_s("other"))


def _s(session: str) -> dict[str, str]:
    return {"x-session-id": session}


SESSIONS = [
    "chat",
    "chat-stream",
    "responses",
    "house",
    "anthropic-stream",
    "llm-b",
    "gemini",
    "bedrock-invoke",
    "cohere",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("observe-flows")
    upstream = TLSFakeUpstream(HOSTS).start()
    upstream.reply(fakes())
    saved = tmp / "flows.mitm"
    port = free_port()
    script = redirect_script({h: ("127.0.0.1", upstream.port) for h in HOSTS}, tmp)
    extra = ["--mode", f"regular@127.0.0.1:{port}", "-s", str(script)]
    extra += ["--set", "ssl_insecure=true", "-w", str(saved)]
    extra += ["--set", "store_streamed_bodies=true"]
    for value in OBSERVE_HOSTS:
        extra += ["--set", f"llmitm_observe_hosts={value}"]
    for value in OBSERVE_PRICES:
        extra += ["--set", f"llmitm_observe_prices={value}"]
    gw = Gateway(tmp, CONFIG, extra=extra)
    try:
        gw.wait_ready()
        _wait_port(port, gw)
        calls(Proxy(gw, port))
        # (mitmproxy saved each flow before its client got the answer)
        gw.wait_records(len(SESSIONS))
    finally:
        gw.stop()  # mitmdump closes the flows file as it exits
        upstream.stop()
    flows: dict[str, http.HTTPFlow] = {}
    with open(saved, "rb") as f:
        for flow in FlowReader(f).stream():
            assert isinstance(flow, http.HTTPFlow)
            flows[flow.request.headers.get("x-session-id", "")] = flow
    yield Run(gw, flows)


# ------------------------------------------------------------------ the records


def test_two_hosts_given_on_the_command_line_are_each_observed(run: Run) -> None:
    assert "llmitm_observe_hosts is given" not in run.gw.log()
    house = run.record("house")["ai"]["proxy"]
    assert house["meta"]["provider_name"] == "openai"
    assert house["meta"]["upstream_url"] == "https://llm-a.internal/v1/chat/completions"
    other = run.record("llm-b")["ai"]["proxy"]
    assert other["meta"]["provider_name"] == "anthropic"
    assert other["meta"]["upstream_url"] == "https://llm-b.internal:8443/v1/messages"
    assert other["usage"]["completion_tokens"] > 0


def test_observed_calls_are_priced(run: Run) -> None:
    """A known model by the built-in prices (the answer's model), a model of the user's
    by theirs (`openai/house-*=1/2`), a model they turned off (`anthropic/house-*=off`)
    and an unknown one have no cost."""
    chat = run.record("chat")["ai"]["proxy"]
    list_price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=17, output_tokens=3),
        "gpt-4o-mini-2024-07-18",
        provider_id="openai",
    )
    assert chat["usage"]["cost"] == pytest.approx(float(list_price.total_price))
    house = run.record("house")["ai"]["proxy"]["usage"]
    assert house["cost"] == pytest.approx((17 * 1 + 3 * 2) / 1e6)
    assert run.record("llm-b")["ai"]["proxy"]["usage"]["cost"] is None
    for session in ("chat-stream", "anthropic-stream", "gemini", "bedrock-invoke", "cohere"):
        cost = run.record(session)["ai"]["proxy"]["usage"]["cost"]
        assert cost is not None and cost > 0, session


# ------------------------------------------------------------------ the saved flows


def test_saved_flows_carry_their_mark_and_comment(run: Run) -> None:
    for session in SESSIONS:
        flow = run.flows[session]
        ai = run.record(session)["ai"]["proxy"]
        meta, usage = ai["meta"], ai["usage"]
        model = meta["response_model"] or meta["request_model"]
        assert flow.marked == ":white_check_mark:", session
        comment = flow.comment
        assert comment.startswith(f"{meta['provider_name']}/{model} · "), (session, comment)
        tokens = f"{usage['prompt_tokens']:,}→{usage['completion_tokens']:,} tok"
        assert tokens in comment, (session, comment)
        assert ("$" in comment) is (usage["cost"] is not None), (session, comment)
        assert ("TTFT" in comment) is (meta["request_mode"] == "stream"), (session, comment)
    other = run.flows["other"]
    assert other.marked == "" and other.comment == ""


EXPECTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # session: (in the request's view, in the response's view)
    "chat": (
        ("openai chat", "model gpt-4o-mini", "── user ──", "Capital of France?"),
        ("openai chat", "── assistant ──", "Paris.", "finish: stop", "usage: 17 in → 3 out"),
    ),
    "chat-stream": (
        ("openai chat", "stream"),
        ("SSE stream", "The answer is 42.", "finish: stop", "usage: 12 in → 5 out"),
    ),
    "responses": (
        ("openai-responses chat", "model gpt-4.1", "Say hello"),
        ("SSE stream", "Hello there!", "finish: stop", "usage: 30 in → 4 out"),
    ),
    "anthropic-stream": (
        ("anthropic chat", "tools: get_weather", "Weather in Paris?"),
        ("anthropic chat", "SSE stream", "[tool call] get_weather", "finish: tool_calls"),
    ),
    "gemini": (
        ("gemini chat", "model gemini-2.5-flash", "Say bonjour"),
        ("gemini chat", "SSE stream", "── assistant ──", "finish:"),
    ),
    "bedrock-invoke": (
        ("bedrock invoke", f"model {INVOKE_MODEL}", "What is 1 + 1?"),
        ("bedrock invoke (anthropic)", "AWS event-stream", "The answer is 2.", "usage: 15 in"),
    ),
    "cohere": (
        ("cohere-v2 chat", "model command-a-03-2025", "What is 1 + 1?"),
        ("cohere-v2 chat", "SSE stream", "── assistant ──", "finish: stop"),
    ),
}


@pytest.fixture
def views() -> Iterator[None]:
    """mitmproxy's views with the gateway's loaded, as in `mitmweb -s addons/gateway.py
    -r FILE`."""
    with taddons.context(ContentviewAddon()):
        yield


@pytest.mark.usefixtures("views")
@pytest.mark.parametrize("session", list(EXPECTED))
def test_the_llm_view_renders_each_saved_format(run: Run, session: str) -> None:
    flow = run.flows[session]
    assert flow.response is not None and flow.response.raw_content  # streams were kept
    for message, needles in zip((flow.request, flow.response), EXPECTED[session], strict=True):
        shown = contentviews.prettify_message(message, flow)
        assert shown.view_name == "LLM", (session, shown.text[:300])
        at = 0
        for needle in needles:
            i = shown.text.find(needle, at)
            assert i >= 0, f"{session}: {needle!r} not in:\n{shown.text}"
            at = i + len(needle)
        assert "error" not in shown.text.lower(), shown.text


@pytest.mark.usefixtures("views")
def test_other_traffic_keeps_mitmproxys_views(run: Run) -> None:
    other = run.flows["other"]
    assert other.response is not None
    assert contentviews.prettify_message(other.response, other).view_name == "JSON"
