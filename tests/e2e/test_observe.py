"""Observe mode end to end: a real `mitmdump -s addons/gateway.py` in regular (forward)
proxy mode, the official SDKs and httpx as clients (HTTPS through the proxy, trusting
mitmproxy's CA), HTTPS fakes of api.openai.com, api.anthropic.com and
generativelanguage.googleapis.com on 127.0.0.1 (a test-only script redirects the
connections, the requests keep their host).

What is checked: the client gets exactly the bytes the fake sent (streams included, and
as they arrive), the fake gets exactly the bytes the client sent, and each LLM call
leaves one record (file-log and the embedded SQLite store) with route `observed`, the
provider, the model, usage and time to first token; other hosts pass with no record.
"""

from __future__ import annotations

import gzip
import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import genai_prices
import httpx
import openai
import pytest

from exporters.sqlite import open_store
from tests.conftest import REPO, Gateway, free_port, mitmdump
from tests.fakes import anthropic as fake_anthropic
from tests.fakes.gemini import FakeGemini
from tests.fakes.tls import TLSFakeUpstream, redirect_script
from tests.fakes.upstream import Received, Reply, chat_completion, chat_stream

KEY = "sk-test-observe-0123456789"
HOSTS = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "example.org",
]

CONFIG = """
_format_version: "3.0"
plugins:
  - name: file-log
    config: {path: "{records}"}
"""


class Proxy:
    """The gateway process in regular mode, and clients configured to use it."""

    def __init__(self, gw: Gateway, port: int) -> None:
        self.gw = gw
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ca = gw.tmp / "confdir" / "mitmproxy-ca-cert.pem"

    def http(self, **kw: Any) -> httpx.Client:
        ca = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(proxy=self.url, verify=ca, trust_env=False, **kw)

    def http2(self) -> Any:
        """The same, for the anthropic SDK (built on the httpx2 package)."""
        import httpx2

        ca = ssl.create_default_context(cafile=str(self.ca))
        return httpx2.Client(proxy=self.url, verify=ca, trust_env=False)


@pytest.fixture(scope="module")
def upstream() -> Iterator[TLSFakeUpstream]:
    up = TLSFakeUpstream(HOSTS).start()
    yield up
    up.stop()


@pytest.fixture
def fake(upstream: TLSFakeUpstream) -> TLSFakeUpstream:
    upstream.reset()
    return upstream


@pytest.fixture(scope="module")
def proxy(upstream: TLSFakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("observe")
    script = redirect_script({h: ("127.0.0.1", upstream.port) for h in HOSTS}, tmp)
    port = free_port()
    gw = Gateway(
        tmp,
        CONFIG,
        extra=[
            "--mode",
            f"regular@127.0.0.1:{port}",
            "-s",
            str(script),
            "--set",
            "ssl_insecure=true",
        ],
    )
    try:
        gw.wait_ready()
        _wait_port(port, gw)
        yield Proxy(gw, port)
    finally:
        gw.stop()


def _wait_port(
    port: int, gw: Gateway | None, log: Path | None = None, timeout: float = 20.0
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    text = gw.log() if gw is not None else log.read_text() if log is not None else ""
    raise TimeoutError(f"proxy not listening:\n{text}")


class Sent:
    """Wraps a handler and keeps the bytes of each reply the fake sent."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.bodies: list[bytes] = []

    def __call__(self, req: Received) -> Reply:
        reply = self.handler(req)
        if reply.chunks is not None:
            self.bodies.append(b"".join(c for c in reply.chunks if isinstance(c, bytes)))
        else:
            self.bodies.append(reply.body)
        return reply


def bearer_as_key(handler: Any) -> Any:
    """The anthropic SDK of this venv authenticates with `Authorization: Bearer`; the
    fake API checks `x-api-key`: take one for the other."""

    def handle(req: Received) -> Reply:
        auth = req.headers.get("authorization", "")
        if "x-api-key" not in req.headers and auth.startswith("Bearer "):
            req.headers = {**req.headers, "x-api-key": auth[7:]}
        return handler(req)

    return handle


def by_host(**handlers: Any) -> Any:
    def handle(req: Received) -> Reply:
        host = req.headers.get("host", "")
        h = handlers.get(host.replace(".", "_").replace("-", "_"))
        if h is None:
            return Reply.json({"error": f"no fake for {host}"}, 599)
        return h(req)

    return handle


def _sse_objects(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line[6:].strip() not in ("", "[DONE]"):
            out.append(json.loads(line[6:]))
    return out


# ------------------------------------------------------------------ OpenAI


def test_openai_chat_sdk(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    answer = chat_completion("Paris.", model="gpt-4o-mini-2024-07-18", prompt_tokens=17)
    sent = Sent(lambda r: Reply.json(answer, headers={"x-request-id": "req_1"}))
    fake.reply(by_host(api_openai_com=sent))
    client = openai.OpenAI(api_key=KEY, http_client=proxy.http(), max_retries=0)
    resp = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Capital of France?"}],
        temperature=0.2,
        extra_headers={"x-session-id": "openai-chat"},
    )
    assert resp.http_response.content == sent.bodies[-1]  # unchanged, byte for byte
    assert resp.parse().choices[0].message.content == "Paris."
    got = fake.last()
    assert got.headers["host"] == "api.openai.com" and got.path == "/v1/chat/completions"
    assert got.headers["authorization"] == f"Bearer {KEY}"  # the client's own, untouched

    rec = proxy.gw.record(session_id="openai-chat")
    assert rec["route"] == {"name": "observed"}
    assert rec["status"] == "ok"
    ai = rec["ai"]["proxy"]
    assert ai["meta"]["provider_name"] == "openai"
    assert ai["meta"]["request_model"] == "gpt-4o-mini"
    assert ai["meta"]["response_model"] == "gpt-4o-mini-2024-07-18"
    assert ai["meta"]["request_mode"] == "oneshot"
    assert ai["meta"]["finish_reason"] == "stop"
    assert ai["meta"]["upstream_url"] == "https://api.openai.com/v1/chat/completions"
    assert ai["meta"]["request_parameters"]["temperature"] == 0.2
    assert ai["usage"]["prompt_tokens"] == 17 and ai["usage"]["completion_tokens"] == 3
    assert ai["usage"]["source"] == "reported"
    # priced by the built-in price database (genai-prices), the answer's model
    list_price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=17, output_tokens=3),
        "gpt-4o-mini-2024-07-18",
        provider_id="openai",
    )
    assert ai["usage"]["cost"] == pytest.approx(float(list_price.total_price))
    assert ai["payload"]["request"]["messages"][0]["content"] == "Capital of France?"
    assert ai["payload"]["response"] == answer
    # the client's credentials never enter a record
    assert rec["request"]["headers"]["authorization"] == "[REDACTED]"
    assert KEY not in json.dumps(rec)


def test_openai_stream_passes_through_as_it_arrives(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    events = chat_stream(["The", " answer", " is", " 42."], usage=(12, 5), pause=0.25)
    sent = Sent(lambda r: Reply.sse(events))
    fake.reply(by_host(api_openai_com=sent))
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "?"}],
        },
        separators=(",", ":"),
    ).encode()
    arrivals: list[tuple[float, bytes]] = []
    start = time.time()
    with (
        proxy.http() as http,
        http.stream(
            "POST",
            "https://api.openai.com/v1/chat/completions",
            content=body,
            headers={
                "authorization": f"Bearer {KEY}",
                "content-type": "application/json",
                "x-session-id": "openai-stream",
            },
        ) as resp,
    ):
        assert resp.status_code == 200
        for piece in resp.iter_raw():
            arrivals.append((time.time(), piece))
    received = b"".join(p for _, p in arrivals)
    assert received == sent.bodies[-1]
    assert fake.last().body == body  # the request too, byte for byte
    # forwarded as it arrived: the first words reached the client long before the end
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first > 0.5, [round(t - start, 3) for t, _ in arrivals]

    rec = proxy.gw.record(session_id="openai-stream")
    ai = rec["ai"]["proxy"]
    assert ai["meta"]["provider_name"] == "openai"
    assert ai["meta"]["request_mode"] == "stream"
    assert ai["meta"]["finish_reason"] == "stop"
    assert ai["usage"]["prompt_tokens"] == 12 and ai["usage"]["completion_tokens"] == 5
    ttft = ai["usage"]["time_to_first_token"]
    # the first word comes after one pause, the whole answer after four
    assert ttft is not None and 200 <= ttft < (last - start) * 1000, ttft
    assert ai["payload"]["response"]["choices"][0]["message"]["content"] == "The answer is 42."
    assert rec["response"]["size"] == len(received)


def test_openai_sdk_stream_without_usage_is_estimated(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    events = [e for e in chat_stream(["Hi", " there"]) if b'"usage"' not in e]
    fake.reply(by_host(api_openai_com=lambda r: Reply.sse(events)))
    client = openai.OpenAI(api_key=KEY, http_client=proxy.http(), max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o",
        stream=True,
        messages=[{"role": "user", "content": "Say hi to everyone in the room"}],
        extra_headers={"x-session-id": "openai-estimated"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hi there"
    ai = proxy.gw.record(session_id="openai-estimated")["ai"]["proxy"]
    assert ai["usage"]["source"] == "estimated"
    assert ai["usage"]["prompt_tokens"] > 0 and ai["usage"]["completion_tokens"] > 0


def test_gzip_stream_is_observed_and_forwarded_compressed(
    proxy: Proxy, fake: TLSFakeUpstream
) -> None:
    plain = b"".join(
        e for e in chat_stream(["Compressed", " words"], usage=(7, 2)) if isinstance(e, bytes)
    )
    packed = gzip.compress(plain)
    pieces: list[bytes | float] = [packed[i : i + 40] for i in range(0, len(packed), 40)]
    reply = Reply(
        200,
        {"content-type": "text/event-stream", "content-encoding": "gzip"},
        chunks=pieces,
    )
    fake.reply(by_host(api_openai_com=lambda r: reply))
    with (
        proxy.http() as http,
        http.stream(
            "POST",
            "https://api.openai.com/v1/chat/completions",
            json={
                "model": "gpt-4o",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
            headers={"x-session-id": "openai-gzip", "accept-encoding": "gzip"},
        ) as resp,
    ):
        raw = b"".join(resp.iter_raw())
    assert raw == packed
    ai = proxy.gw.record(session_id="openai-gzip")["ai"]["proxy"]
    assert ai["usage"]["prompt_tokens"] == 7 and ai["usage"]["completion_tokens"] == 2
    assert ai["payload"]["response"]["choices"][0]["message"]["content"] == "Compressed words"


def test_openai_responses_api_stream(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    final = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "gpt-4.1-2025-04-14",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello!"}],
            }
        ],
        "usage": {
            "input_tokens": 30,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens": 4,
            "output_tokens_details": {"reasoning_tokens": 1},
            "total_tokens": 34,
        },
    }
    created = {**final, "status": "in_progress", "output": [], "usage": None}

    def ev(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    events: list[bytes | float] = [
        ev("response.created", {"response": created}),
        0.1,
        ev("response.output_text.delta", {"item_id": "m", "delta": "Hello"}),
        ev("response.output_text.delta", {"item_id": "m", "delta": "!"}),
        ev("response.completed", {"response": final}),
    ]
    sent = Sent(lambda r: Reply.sse(events))
    fake.reply(by_host(api_openai_com=sent))
    client = openai.OpenAI(api_key=KEY, http_client=proxy.http(), max_retries=0)
    stream = client.responses.create(
        model="gpt-4.1", input="Say hello", stream=True, extra_headers={"x-session-id": "resp"}
    )
    kinds = [e.type for e in stream]
    assert kinds[-1] == "response.completed"
    rec = proxy.gw.record(session_id="resp")
    ai = rec["ai"]["proxy"]
    assert ai["meta"]["request_model"] == "gpt-4.1"
    assert ai["meta"]["response_model"] == "gpt-4.1-2025-04-14"
    assert ai["meta"]["finish_reason"] == "stop"
    assert ai["usage"]["prompt_tokens"] == 30 and ai["usage"]["completion_tokens"] == 4
    assert ai["usage"]["cache_read_tokens"] == 10 and ai["usage"]["reasoning_tokens"] == 1
    assert ai["usage"]["time_to_first_token"] is not None
    assert rec["response"]["size"] == len(sent.bodies[-1])


# ------------------------------------------------------------------ Anthropic


def test_anthropic_stream_with_tool_use_and_thinking(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    script = fake_anthropic.Script(
        tool_calls=[("get_weather", {"city": "Paris", "unit": "celsius"})], chunk_size=29
    )
    sent = Sent(bearer_as_key(fake_anthropic.anthropic_api(KEY, script)))
    fake.reply(by_host(api_anthropic_com=sent))
    client = anthropic.Anthropic(api_key=KEY, http_client=proxy.http2(), max_retries=0)
    tools = [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=tools,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        extra_headers={"x-session-id": "anthropic-stream"},
    ) as stream:
        message = stream.get_final_message()
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text", "tool_use"]
    assert message.content[0].signature == script.signature
    assert message.content[2].input == {"city": "Paris", "unit": "celsius"}

    rec = proxy.gw.record(session_id="anthropic-stream")
    assert rec["route"] == {"name": "observed"}
    ai = rec["ai"]["proxy"]
    assert ai["meta"]["provider_name"] == "anthropic"
    assert ai["meta"]["request_model"] == "claude-sonnet-4-6"
    assert ai["meta"]["request_mode"] == "stream"
    assert ai["meta"]["finish_reason"] == "tool_calls"
    usage = ai["usage"]
    assert usage["completion_tokens"] == script.output_tokens
    assert usage["prompt_tokens"] == 21 + 1800 + 200  # cache reads and writes included
    assert usage["cache_read_tokens"] == 1800 and usage["cache_write_tokens"] == 200
    assert usage["time_to_first_token"] is not None
    answer = ai["payload"]["response"]["choices"][0]["message"]
    assert answer["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(answer["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris",
        "unit": "celsius",
    }
    assert script.thinking in json.dumps(answer)
    assert ai["payload"]["request"]["thinking"]["budget_tokens"] == 1024  # native request
    assert rec["request"]["headers"]["authorization"] == "[REDACTED]"
    assert KEY not in json.dumps(rec)


def test_anthropic_stream_bytes_unchanged(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    script = fake_anthropic.Script(chunk_size=7)
    sent = Sent(fake_anthropic.anthropic_api(KEY, script))
    fake.reply(by_host(api_anthropic_com=sent))
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "1+1?"}],
    }
    with (
        proxy.http() as http,
        http.stream(
            "POST",
            "https://api.anthropic.com/v1/messages",
            json=body,
            headers={
                "x-api-key": KEY,
                "anthropic-version": "2023-06-01",
                "x-session-id": "anthropic-bytes",
            },
        ) as resp,
    ):
        raw = b"".join(resp.iter_raw())
    assert raw == sent.bodies[-1]
    ai = proxy.gw.record(session_id="anthropic-bytes")["ai"]["proxy"]
    assert ai["meta"]["finish_reason"] == "stop"
    assert ai["payload"]["response"]["choices"][0]["message"]["content"] == script.text


def test_anthropic_whole_answer(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    sent = Sent(bearer_as_key(fake_anthropic.anthropic_api(KEY)))
    fake.reply(by_host(api_anthropic_com=sent))
    client = anthropic.Anthropic(api_key=KEY, http_client=proxy.http2(), max_retries=0)
    resp = client.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "1+1?"}],
        extra_headers={"x-session-id": "anthropic-whole"},
    )
    assert resp.http_response.content == sent.bodies[-1]
    ai = proxy.gw.record(session_id="anthropic-whole")["ai"]["proxy"]
    assert ai["meta"]["request_mode"] == "oneshot"
    assert ai["meta"]["finish_reason"] == "stop"  # end_turn, as the gateway maps it
    assert ai["usage"]["completion_tokens"] == 14
    assert ai["payload"]["response"]["stop_reason"] == "end_turn"  # the native answer


def test_anthropic_error_is_recorded(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    fake.reply(
        by_host(api_anthropic_com=bearer_as_key(fake_anthropic.anthropic_api("another-key")))
    )
    client = anthropic.Anthropic(api_key=KEY, http_client=proxy.http2(), max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-session-id": "anthropic-401"},
        )
    rec = proxy.gw.record(session_id="anthropic-401")
    assert rec["status"] == "error"
    assert rec["response"]["status"] == 401
    assert rec["error"]["status"] == 401 and rec["error"]["source"] == "upstream"
    assert rec["error"]["message"] == "invalid x-api-key"


# ------------------------------------------------------------------ Gemini


def test_gemini_sse_stream(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    gemini = FakeGemini(api_key=KEY, text="Bonjour tout le monde, comment allez-vous ?")
    sent = Sent(gemini)
    fake.reply(by_host(generativelanguage_googleapis_com=sent))
    body = {"contents": [{"role": "user", "parts": [{"text": "Say bonjour"}]}]}
    url = (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
        f":streamGenerateContent?alt=sse&key={KEY}"
    )
    with (
        proxy.http() as http,
        http.stream("POST", url, json=body, headers={"x-session-id": "gemini-sse"}) as resp,
    ):
        assert resp.status_code == 200
        raw = b"".join(resp.iter_raw())
    assert raw == sent.bodies[-1]
    events = _sse_objects(raw)
    usage = events[-1]["usageMetadata"]

    rec = proxy.gw.record(session_id="gemini-sse")
    ai = rec["ai"]["proxy"]
    assert ai["meta"]["provider_name"] == "gemini"
    assert ai["meta"]["request_model"] == "gemini-2.5-flash"
    assert ai["meta"]["request_mode"] == "stream"
    assert ai["usage"]["prompt_tokens"] == usage["promptTokenCount"]
    assert ai["usage"]["completion_tokens"] == usage["candidatesTokenCount"] + usage.get(
        "thoughtsTokenCount", 0
    )
    assert ai["usage"]["time_to_first_token"] is not None
    assert ai["meta"]["finish_reason"] == "stop"
    # the API key in the query never enters the record
    assert KEY not in json.dumps(rec)


# ------------------------------------------------------------- other traffic


def test_unknown_host_passes_untouched_without_record(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    page = b'{"model": "looks like an LLM answer", "usage": {"prompt_tokens": 1}}'
    fake.reply(
        by_host(
            example_org=lambda r: Reply(200, {"content-type": "application/json"}, page),
            api_openai_com=lambda r: Reply.json(chat_completion()),
        )
    )
    with proxy.http() as http:
        r = http.post(
            "https://example.org/v1/chat/completions",
            content=b'{"model": "gpt-4o", "messages": []}',
            headers={"x-session-id": "unknown-host"},
        )
        assert r.content == page
        assert fake.last().body == b'{"model": "gpt-4o", "messages": []}'
        # a known host, but no LLM operation: passed, not recorded either
        r = http.get("https://api.openai.com/v1/models", headers={"x-session-id": "models"})
        assert r.status_code == 200
        http.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            headers={"x-session-id": "after-unknown"},
        )
    proxy.gw.record(session_id="after-unknown")  # records are written in order
    sessions = {r["context"].get("session_id") for r in proxy.gw.records()}
    assert "unknown-host" not in sessions and "models" not in sessions


def test_records_land_in_the_embedded_store(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    fake.reply(by_host(api_openai_com=lambda r: Reply.sse(chat_stream(["a", "b"], usage=(3, 2)))))
    client = openai.OpenAI(api_key=KEY, http_client=proxy.http(), max_retries=0)
    for _ in client.chat.completions.create(
        model="gpt-4o-mini",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-session-id": "store"},
    ):
        pass
    rec = proxy.gw.record(session_id="store")
    deadline = time.time() + 5
    row = None
    while row is None and time.time() < deadline:
        with open_store(proxy.gw.store_path) as store:
            row = next((r for r in store.latest(limit=100) if r.id == rec["id"]), None)
        if row is None:
            time.sleep(0.1)
    assert row is not None, "the observed call is not in the SQLite store"
    assert row.route == "observed" and row.provider == "openai" and row.model == "gpt-4o-mini"
    assert row.prompt_tokens == 3 and row.completion_tokens == 2 and row.stream
    assert row.ttft_ms is not None


def test_without_a_config_file_calls_land_in_the_store(
    upstream: TLSFakeUpstream, fake: TLSFakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`mitmdump -s addons/gateway.py` alone (no llmitm_config, regular mode only): observe
    mode records into the embedded store all the same. (Started here, not with
    conftest's Gateway, which always passes a config and a reverse mode.)"""
    tmp = tmp_path_factory.mktemp("observe-noconfig")
    script = redirect_script({"api.openai.com": ("127.0.0.1", upstream.port)}, tmp)
    port = free_port()
    store = tmp / "llmitm.db"
    log_path = tmp / "mitmdump.log"
    cmd = [
        mitmdump(),
        "-s",
        "addons/gateway.py",
        "-s",
        str(script),
        "--mode",
        f"regular@127.0.0.1:{port}",
        "--set",
        f"confdir={tmp / 'confdir'}",
        "--set",
        f"llmitm_spool_dir={tmp / 'spool'}",
        "--set",
        f"llmitm_store={store}",
        "--set",
        "llmitm_status_listen=off",
        "--set",
        "ssl_insecure=true",
        "--set",
        "llmitm_observe_payloads=false",
        # the redirect keeps the request's host only when connecting lazily
        "--set",
        "connection_strategy=lazy",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, None, log_path)
        fake.reply(by_host(api_openai_com=lambda r: Reply.json(chat_completion(model="gpt-4o"))))
        ca = ssl.create_default_context(cafile=str(tmp / "confdir" / "mitmproxy-ca-cert.pem"))
        http = httpx.Client(proxy=f"http://127.0.0.1:{port}", verify=ca, trust_env=False)
        client = openai.OpenAI(api_key=KEY, http_client=http, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        deadline = time.time() + 5
        rows: list[Any] = []
        while not rows and time.time() < deadline:
            if store.exists():
                with open_store(store) as s:
                    rows = s.latest(route="observed")
            if not rows:
                time.sleep(0.1)
        assert rows, f"no observed call in the store:\n{log_path.read_text()}"
        assert rows[0].provider == "openai" and rows[0].model == "gpt-4o"
        assert rows[0].prompt_tokens == 11 and rows[0].completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
