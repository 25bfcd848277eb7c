"""A `preserve` route and observe mode share the observation code: the same Responses
API call (OpenAI's `/v1/responses`, whole and streamed) is recorded the same way.

One gateway process serves both: its reverse listener has a `preserve` route for
`/v1/responses` (to a local fake of OpenAI), its regular listener observes the same call
made through it as an HTTPS proxy to api.openai.com (the same fake's answers, over TLS).
The official `openai` SDK makes both calls; the records must agree on the usage
(cached and reasoning tokens included), the answer's model, the finish reason and, for
streams, the presence of a time to first token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, free_port
from tests.e2e.test_observe import Proxy, _wait_port
from tests.fakes.tls import TLSFakeUpstream, redirect_script
from tests.fakes.upstream import FakeUpstream, Received, Reply

KEY = "sk-test-preserve-0123456789"

FINAL: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
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


def responses_api(req: Received) -> Reply:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    if not json.loads(req.body).get("stream"):
        return Reply.json(FINAL)
    created = {**FINAL, "status": "in_progress", "output": [], "usage": None}
    return Reply.sse(
        [
            ev("response.created", {"response": created}),
            0.1,
            ev("response.function_call_arguments.delta", {"item_id": "fc", "delta": '{"city"'}),
            ev("response.function_call_arguments.delta", {"item_id": "fc", "delta": ':"Paris"}'}),
            ev("response.completed", {"response": FINAL}),
        ]
    )


CONFIG = """
_format_version: "3.0"
services:
  - name: openai
    url: http://127.0.0.1:9
    routes:
      - name: responses
        paths: ["/v1/responses"]
        hosts: ["127.0.0.1"]  # the reverse listener only: not the proxied api.openai.com
        strip_path: false
        plugins:
          - name: ai-proxy
            config:
              route_type: preserve
              model: {provider: openai, options: {upstream_url: "UPSTREAM"}}
              logging: {log_payloads: true}
plugins:
  - name: file-log
    config: {path: "{records}"}
"""


class Both:
    def __init__(self, gw: Gateway, proxy: Proxy) -> None:
        self.gw = gw
        self.proxy = proxy

    def preserved(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=KEY, base_url=f"{self.gw.url}/v1", max_retries=0)

    def observed(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=KEY, http_client=self.proxy.http(), max_retries=0)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    tmp = tmp_path_factory.mktemp("observe-preserve")
    plain = FakeUpstream().start()
    tls = TLSFakeUpstream(["api.openai.com"]).start()
    plain.reply(responses_api)
    tls.reply(responses_api)
    script = redirect_script({"api.openai.com": ("127.0.0.1", tls.port)}, tmp)
    port = free_port()
    gw = Gateway(
        tmp,
        CONFIG.replace("UPSTREAM", plain.url),
        extra=["--mode", f"regular@127.0.0.1:{port}", "-s", str(script)]
        + ["--set", "ssl_insecure=true"],
    )
    try:
        gw.wait_ready()
        _wait_port(port, gw)
        yield Both(gw, Proxy(gw, port))
    finally:
        gw.stop()
        plain.stop()
        tls.stop()


def observation(rec: dict[str, Any]) -> dict[str, Any]:
    """What both must record alike."""
    assert rec["status"] == "ok", rec.get("error")
    ai = rec["ai"]["proxy"]
    usage = ai["usage"]
    return {
        "provider": ai["meta"]["provider_name"],
        "request_model": ai["meta"]["request_model"],
        "response_model": ai["meta"]["response_model"],
        "finish_reason": ai["meta"]["finish_reason"],
        "mode": ai["meta"]["request_mode"],
        "usage": {
            k: usage[k]
            for k in (
                "prompt_tokens",
                "completion_tokens",
                "cache_read_tokens",
                "reasoning_tokens",
                "source",
            )
        },
        "has_ttft": usage["time_to_first_token"] is not None,
    }


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_preserve_route_and_observe_mode_record_a_responses_call_alike(
    both: Both, stream: bool
) -> None:
    records = {}
    for name, client in (("preserve", both.preserved()), ("observe", both.observed())):
        session = f"{name}-{stream}"
        answer = client.responses.create(
            model="gpt-4.1",
            input="Weather in Paris?",
            stream=stream,
            extra_headers={"x-session-id": session},
        )
        if stream:
            kinds = [e.type for e in answer]  # type: ignore[union-attr]
            assert kinds[-1] == "response.completed"
        records[name] = both.gw.record(session_id=session)
    assert records["preserve"]["route"] == {"name": "responses"}
    assert records["observe"]["route"] == {"name": "observed"}
    expected = {
        "provider": "openai",
        "request_model": "gpt-4.1",
        "response_model": "gpt-4.1-2025-04-14",
        "finish_reason": "tool_calls",
        "mode": "stream" if stream else "oneshot",
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 4,
            "cache_read_tokens": 10,
            "reasoning_tokens": 1,
            "source": "reported",
        },
        "has_ttft": stream,
    }
    assert observation(records["observe"]) == expected
    assert observation(records["preserve"]) == expected
