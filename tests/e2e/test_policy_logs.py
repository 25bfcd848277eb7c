"""What the policies write to the gateway's log never holds a client's key.

key-auth with `hide_credentials: false` leaves the key in the request, here in the query
string (under a name of the config's own, and under Kong's default `apikey`); the prompt
guard then blocks the prompt and logs the request it blocked, at INFO. The log line names
the request with its query's credentials redacted, as the call record does. The gateway
runs with its log at INFO and mitmproxy's own per-flow lines off (they print every URL
as it came: that is mitmproxy's dumper, which a deployment runs with `flow_detail=0`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway
from tests.policy_helpers import module_gateway

ALICE = f"alice-secret-{uuid.uuid4().hex}"
BOB = f"bob-secret-{uuid.uuid4().hex}"

CONFIG = f"""
_format_version: "3.0"
consumers:
  - username: alice
    keyauth_credentials: [{{key: {ALICE}}}]
  - username: bob
    keyauth_credentials: [{{key: {BOB}}}]
services:
  - name: llm
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config: {{route_type: llm/v1/chat, model: {{provider: mock, name: mock-gpt}}}}
          - name: key-auth
            config: {{key_names: [client_token, apikey], hide_credentials: false}}
          - name: ai-prompt-guard
            config: {{deny_patterns: ["(?i)forbidden"]}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with module_gateway(
        tmp_path_factory, CONFIG, quiet=False, extra=["--set", "flow_detail=0"]
    ) as g:
        yield g


def blocked(gw: Gateway, query: str) -> None:
    r = httpx.post(
        f"{gw.url}/v1/chat/completions?{query}",
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "a forbidden topic"}]},
        trust_env=False,
    )
    assert r.status_code == 400, r.text


def wait_for_lines(gw: Gateway, needle: str, count: int) -> str:
    deadline = time.time() + 5
    while (log := gw.log()).count(needle) < count:
        assert time.time() < deadline, log
        time.sleep(0.05)
    return log


def test_a_blocked_request_is_logged_without_the_key(gw: Gateway) -> None:
    blocked(gw, f"client_token={ALICE}&lang=en")  # a key name of the config's own
    blocked(gw, f"apikey={BOB}")  # Kong's default name
    log = wait_for_lines(gw, "ai-prompt-guard: POST /v1/chat/completions?", 2)
    assert "?client_token=[REDACTED]&lang=en blocked" in log
    assert "?apikey=[REDACTED] blocked" in log
    assert ALICE not in log and BOB not in log
