"""Stopping the gateway (SIGTERM) while calls are in flight.

The gateway stops taking connections, lets the calls in flight finish within
`llmitm_shutdown_grace` seconds, records those that could not as cut off by the
shutdown, then flushes its sinks and exits: no call goes unrecorded.

A real `mitmdump -s addons/gateway.py` in front of the fake upstream of tests/fakes,
with file-log; clients are raw httpx in threads, so the test can signal the gateway
while they wait.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from typing import Any

import httpx

from tests.conftest import Gateway, free_port
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion, chat_stream

CONFIG = """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    read_timeout: 60000
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              logging: {log_payloads: true}
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: UPSTREAM}}
plugins:
  - name: file-log
    config: {path: "{records}"}
"""


class Client(threading.Thread):
    """One call in a thread: `first` is set when the answer's first bytes arrive."""

    def __init__(self, gw: Gateway, message_id: str, stream: bool) -> None:
        super().__init__(daemon=True)
        self.url = gw.url + "/v1/chat/completions"
        self.body = {
            "model": "gpt-4o-mini",
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        }
        self.headers = {"X-Message-Id": message_id}
        self.first = threading.Event()
        self.status: int | None = None
        self.body_received = b""
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST", self.url, json=self.body, headers=self.headers, timeout=30
            ) as r:
                self.status = r.status_code
                for data in r.iter_bytes():
                    self.body_received += data
                    self.first.set()
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.first.set()


def start(start_gateway: Any, fake: FakeUpstream, **kw: Any) -> Gateway:
    return start_gateway(CONFIG.replace("UPSTREAM", fake.url), quiet=False, **kw)


def sigterm(gw: Gateway) -> float:
    """Signal the gateway; returns when it was signalled (monotonic)."""
    gw.proc.send_signal(signal.SIGTERM)
    return time.monotonic()


def refused(gw: Gateway) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=1):
            return False
    except OSError:
        return True


def wait_refused(gw: Gateway, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not refused(gw):
        assert time.monotonic() < deadline, "the gateway still takes connections"
        time.sleep(0.02)


def test_a_stream_in_flight_is_answered_to_its_end_before_the_gateway_exits(
    start_gateway: Any, fake: FakeUpstream
) -> None:
    status = free_port()
    gw = start(start_gateway, fake, status_listen=f"127.0.0.1:{status}")
    health = f"http://127.0.0.1:{status}/health"
    deadline = time.monotonic() + 10
    while True:  # the status listener starts just after the proxy
        try:
            assert httpx.get(health).json() == {"status": "ok"}
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, gw.log()[-3000:]
            time.sleep(0.05)
    fake.reply(Reply.sse(chat_stream(["one", " two", " three", " four"], pause=0.5)))
    client = Client(gw, "stream-drained", stream=True)
    client.start()
    assert client.first.wait(10) and client.error is None
    signalled = sigterm(gw)
    # no new connection is taken while the stream goes on, and a load balancer is told
    wait_refused(gw)
    r = httpx.get(health)
    assert (r.status_code, r.json()) == (503, {"status": "draining"})
    assert client.is_alive(), "the stream ended before the test could check"
    assert gw.wait_exit(20) == 0, gw.log()[-3000:]
    client.join(5)
    assert client.error is None
    assert client.status == 200
    assert client.body_received.endswith(b"data: [DONE]\n\n")
    words = [
        json.loads(line[6:])["choices"][0]["delta"].get("content")
        for line in client.body_received.decode().splitlines()
        if line.startswith("data: {") and '"choices": [{' in line
    ]
    assert "".join(w for w in words if w) == "one two three four"
    rec = gw.record(message_id="stream-drained")
    assert rec["status"] == "ok"
    assert rec["error"] is None
    assert rec["ai"]["proxy"]["usage"]["source"] == "reported"
    assert rec["ai"]["proxy"]["usage"]["completion_tokens"] == 4
    # it waited for the stream (about 1.5 s of it was left), not for the whole grace
    assert time.monotonic() - signalled < 10
    assert "1 call(s) in flight get up to 10 s to finish" in gw.log()


def test_a_call_in_flight_gets_its_answer_before_the_gateway_exits(
    start_gateway: Any, fake: FakeUpstream
) -> None:
    gw = start(start_gateway, fake)
    answer = json.dumps(chat_completion("late but whole")).encode()
    fake.reply(Reply(200, {"content-type": "application/json"}, chunks=[1.5, answer]))
    client = Client(gw, "oneshot-drained", stream=False)
    client.start()
    deadline = time.monotonic() + 10
    while not fake.received:  # the call reached the upstream, which takes 1.5 s
        assert time.monotonic() < deadline, gw.log()[-3000:]
        time.sleep(0.02)
    sigterm(gw)
    assert gw.wait_exit(20) == 0, gw.log()[-3000:]
    client.join(5)
    assert client.error is None and client.status == 200
    assert json.loads(client.body_received)["choices"][0]["message"]["content"] == "late but whole"
    rec = gw.record(message_id="oneshot-drained")
    assert rec["status"] == "ok"
    assert rec["response"]["status"] == 200


def test_a_call_longer_than_the_grace_is_recorded_as_cut_off(
    start_gateway: Any, fake: FakeUpstream
) -> None:
    gw = start(start_gateway, fake, extra=["--set", "llmitm_shutdown_grace=1"])
    fake.reply(Reply.sse(chat_stream(["partial", " answer", " never", " ends"], pause=5.0)))
    client = Client(gw, "stream-cut", stream=True)
    client.start()
    deadline = time.monotonic() + 10
    while b"partial" not in client.body_received:
        assert time.monotonic() < deadline and client.error is None, gw.log()[-3000:]
        time.sleep(0.02)
    signalled = sigterm(gw)
    assert gw.wait_exit(20) == 0, gw.log()[-3000:]
    exited_after = time.monotonic() - signalled
    client.join(5)
    assert b"[DONE]" not in client.body_received  # the client saw the stream break off
    rec = gw.record(message_id="stream-cut")
    assert rec["status"] == "error"
    assert rec["error"]["code"] == "gateway_shutdown"
    assert rec["error"]["source"] == "gateway"
    assert rec["error"]["message"] == "the gateway shut down before the call finished"
    # what the stream had sent is in the record, and its tokens are counted
    payload = rec["ai"]["proxy"]["payload"]["response"]
    assert "partial" in json.dumps(payload)
    assert rec["ai"]["proxy"]["usage"]["completion_tokens"] >= 1
    # the grace (1 s) was waited for, not the stream's remaining 15 s
    assert 1.0 <= exited_after < 10
    assert "1 call(s) still in flight after 1 s were cut off by the shutdown" in gw.log()


def test_an_idle_gateway_exits_without_waiting_for_the_grace(
    start_gateway: Any, fake: FakeUpstream
) -> None:
    gw = start(start_gateway, fake, extra=["--set", "llmitm_shutdown_grace=30"])
    fake.reply(Reply.json(chat_completion("hello")))
    with httpx.Client(base_url=gw.url, timeout=10) as http:  # a keep-alive connection stays
        r = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Message-Id": "idle"},
        )
        assert r.status_code == 200
        signalled = sigterm(gw)
        assert gw.wait_exit(20) == 0, gw.log()[-3000:]
    assert time.monotonic() - signalled < 10  # well under the 30 s grace
    assert gw.record(message_id="idle")["status"] == "ok"
    assert "in flight" not in gw.log()
