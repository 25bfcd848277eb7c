"""addons/policies/base.py logged_path: the request's path as a policy's log line shows
it, its query's credentials redacted as the call record redacts them; and the policies
log through it (ai-prompt-guard's block, a prompt plugin's refusal)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from addons.policies import prompt_guard
from addons.policies.base import logged_path, logged_url, refuse_request
from providers.base import ProviderError
from tests.policy_helpers import gateway_for, mock_chat_config, routed_request

KEY = "alice-secret-key-123"

CONFIG = mock_chat_config(
    {
        "key-auth": "{key_names: [client_token, apikey], hide_credentials: false}",
        "ai-prompt-guard": '{deny_patterns: ["(?i)forbidden"]}',
    },
    tail=f"""
consumers:
  - username: alice
    keyauth_credentials: [{{key: {KEY}}}]
""",
)


def call_for(path: str) -> tuple[Any, Any, Any]:
    """(the gateway, a POST to `path` routed, its call)."""
    gw = gateway_for(CONFIG)
    flow = routed_request(gw, "POST", path, body=b"{}")
    call = gw.calls.get(flow)
    assert call is not None
    return gw, flow, call


@pytest.mark.parametrize(
    ("path", "names", "shown"),
    [
        ("/v1/chat/completions", (), "/v1/chat/completions"),
        # the usual credential names, whatever the value
        ("/v1/chat/completions?apikey=abc&x=1", (), "/v1/chat/completions?apikey=[REDACTED]&x=1"),
        # a name of key-auth's (the call's secret names), whatever the value
        ("/v1/chat/completions?client_token=abc", ("client_token",), "?client_token=[REDACTED]"),
        # a consumer's key, under any name
        (f"/v1/chat/completions?q={KEY}", (), "/v1/chat/completions?q=[REDACTED]"),
    ],
)
def test_the_query_is_shown_without_credentials(
    path: str, names: tuple[str, ...], shown: str
) -> None:
    _, flow, call = call_for(path)
    call.secret_names.update(names)
    assert logged_path(flow, call).endswith(shown)
    assert KEY not in logged_path(flow, call)


def test_a_whole_url_without_a_call() -> None:
    url = "http://backend.internal/upload?token=t0k3n&name=x"
    assert logged_url(url, None) == "http://backend.internal/upload?token=[REDACTED]&name=x"
    assert logged_url("http://a/b", None) == "http://a/b"


async def test_the_guards_block_is_logged_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, flow, call = call_for(f"/v1/chat/completions?client_token={KEY}")
    call.secret_names.add("client_token")  # what key-auth does with the key it found
    flow.request.content = b'{"messages": [{"role": "user", "content": "forbidden"}]}'
    with caplog.at_level(logging.DEBUG, logger="llmitm"):
        await prompt_guard.Policy(gw).request(flow)
        refuse_request(flow, call, "ai-prompt-template", ProviderError(400, "no"))
    assert flow.response is not None and flow.response.status_code == 400
    assert "POST /v1/chat/completions?client_token=[REDACTED] blocked" in caplog.text
    assert "ai-prompt-template: POST /v1/chat/completions?client_token=[REDACTED]" in (caplog.text)
    assert KEY not in caplog.text
