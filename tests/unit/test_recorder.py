"""addons/recorder.py: the record of a call, built from its flow and Call, in mitmproxy's
test harness (no network): redaction of secrets and of the route's auth names, the
records of the gateway's own errors, the consumer, estimated usage of broken streams."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

import providers
from addons.ai_proxy import AIProxy
from addons.calls import Call
from addons.config import load_text
from addons.recorder import MIN_SECRET_LENGTH, REDACTED, SecretScrubber, build_record
from addons.router import Router
from addons.state import Gateway
from providers import sse
from providers.base import CallSpec, ProviderError, RouteType
from providers.options import ModelOptions

ALICE_KEY = "alice-key-0123456789"
VAULT_VALUE = "vault-value-abcdefgh"

CONFIG = f"""
consumers:
  - {{id: c-1, username: alice, custom_id: team-a, keyauth_credentials: [{{key: {ALICE_KEY}}}]}}
  - {{custom_id: team-b}}
services:
  - name: llm
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              max_request_body_size: 100
              auth: {{header_name: X-Custom-Auth, header_value: "{{vault://env/RECORDER_TEST_VAULT}}",
                      allow_override: true}}
              model: {{provider: mock, name: m, options: {{input_cost: 1.0, output_cost: 1.0}}}}
              logging: {{log_payloads: true}}
      - name: query
        paths: ["/q/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {{param_name: subscription-key, param_value: plain-configured-value,
                      param_location: query}}
              model: {{provider: mock, name: m}}
"""


@pytest.fixture
def gw(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    monkeypatch.setenv("RECORDER_TEST_VAULT", VAULT_VALUE)
    g = Gateway()
    g.config = load_text(CONFIG)
    return g


def routed(gw: Gateway, path: str, **headers: str) -> tuple[Any, Call]:
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    f.request.path = path
    f.request.headers["host"] = "gw.example"
    for k, v in headers.items():
        f.request.headers[k.replace("_", "-")] = v
    Router(gw).requestheaders(f)
    call = gw.calls.get(f)
    assert call is not None
    return f, call


# --------------------------------------------------------------- SecretScrubber


def test_scrubber_replaces_secrets_inside_nested_strings_and_keys() -> None:
    scrub = SecretScrubber([ALICE_KEY, VAULT_VALUE])
    value = {
        "messages": [{"role": "user", "content": f"key {ALICE_KEY} and {VAULT_VALUE}!"}],
        f"field-{ALICE_KEY}": [1, None, True, {"deep": [f"x{ALICE_KEY}y"]}],
    }
    assert scrub(value) == {
        "messages": [{"role": "user", "content": f"key {REDACTED} and {REDACTED}!"}],
        f"field-{REDACTED}": [1, None, True, {"deep": [f"x{REDACTED}y"]}],
    }
    assert scrub(f"a {ALICE_KEY}") == f"a {REDACTED}"


def test_scrubber_leaves_clean_values_untouched_and_uncopied() -> None:
    scrub = SecretScrubber([ALICE_KEY])
    value = {"messages": [{"role": "user", "content": "nothing secret"}]}
    assert scrub(value) is value


def test_scrubber_ignores_short_secrets_inside_texts() -> None:
    short = "x" * (MIN_SECRET_LENGTH - 1)
    scrub = SecretScrubber([short])
    assert scrub({"content": f"a {short} b"}) == {"content": f"a {short} b"}
    assert SecretScrubber([]).pattern is None


def test_scrubber_finds_secrets_that_json_escapes() -> None:
    odd = 'quote"and\\slash-secret'
    scrub = SecretScrubber([odd])
    assert scrub({"content": f"<{odd}>"}) == {"content": f"<{REDACTED}>"}


# ------------------------------------------------------- records of gateway errors


def test_404_record_has_its_error_and_no_proxy_latency(gw: Gateway) -> None:
    f, call = routed(gw, "/nowhere")
    assert f.response.status_code == 404
    out = build_record(call, f).to_dict()
    assert out["status"] == "error" and out["ai"] is None
    assert out["error"]["code"] == "route_not_found" and out["error"]["source"] == "gateway"
    assert out["latencies"]["proxy"] is None and out["latencies"]["llm"] is None


def test_413_record_names_provider_and_model_from_the_route(gw: Gateway) -> None:
    f, call = routed(gw, "/v1/chat/completions", content_length="5000")
    AIProxy(gw).requestheaders(f)
    assert f.response.status_code == 413
    assert f.response.headers["x-llm-model"] == "mock/m"  # the route is known
    out = build_record(call, f).to_dict()
    assert out["error"]["code"] == "request_too_large" and out["error"]["source"] == "gateway"
    meta = out["ai"]["proxy"]["meta"]
    assert (meta["provider_name"], meta["request_model"], meta["route_type"]) == (
        "mock",
        "m",
        "llm/v1/chat",
    )
    assert out["latencies"]["proxy"] is None and out["upstream"] is None
    assert out["ai"]["proxy"]["usage"]["source"] == "none"


# --------------------------------------------- the route's auth names (finding 1)


def test_the_routes_auth_header_and_param_are_redacted(gw: Gateway) -> None:
    f, call = routed(gw, "/v1/chat/completions", x_custom_auth="sk-client-own-key-1234")
    call.upstream_url = "http://up.example/v1?x=1"
    out = json.dumps(build_record(call, f).to_dict())
    assert "sk-client-own-key-1234" not in out
    assert '"x-custom-auth": "[REDACTED]"' in out

    f, call = routed(gw, "/q/v1/chat/completions?subscription-key=sk-client-own-key-1234&a=1")
    call.upstream_url = "http://up.example/v1?subscription-key=sk-client-own-key-1234"
    out = build_record(call, f).to_dict()
    assert out["request"]["uri"].endswith("subscription-key=[REDACTED]&a=1")
    assert out["upstream"]["url"].endswith("subscription-key=[REDACTED]")


# -------------------------------------------------------------- consumer (finding 9)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("alice", {"id": "c-1", "username": "alice", "custom_id": "team-a"}),
        ("team-b", {"custom_id": "team-b"}),
    ],
)
def test_consumer_in_kongs_shape(gw: Gateway, name: str, shape: dict[str, str]) -> None:
    f, call = routed(gw, "/v1/chat/completions")
    call.set_consumer(gw.config.consumer(name), None)
    record = build_record(call, f)
    assert record.to_dict()["consumer"] == shape
    assert record.consumer == name  # what the sinks label calls with


# ------------------------------------------- secrets in payloads, context (finding 10)


def test_configured_secrets_are_redacted_from_payloads_context_and_error(gw: Gateway) -> None:
    f, call = routed(gw, "/v1/chat/completions")
    body = {"messages": [{"role": "user", "content": f"mine: {ALICE_KEY}"}]}
    call.provider = providers.get("mock")
    call.spec = CallSpec(RouteType.CHAT, body, "m", ModelOptions(), False)
    call.log_payloads = True
    call.request_payload = body
    call.response_payload = {"choices": [{"message": {"content": f"echo {VAULT_VALUE}"}}]}
    call.context = {"user_id": "u", "metadata": {"note": f"k={ALICE_KEY}"}}
    call.fail(ProviderError(401, f"bad key {VAULT_VALUE}"), "upstream")
    out = build_record(call, f).to_dict()
    text = json.dumps(out)
    assert ALICE_KEY not in text and VAULT_VALUE not in text
    payload = out["ai"]["proxy"]["payload"]
    assert payload["request"]["messages"][0]["content"] == f"mine: {REDACTED}"
    assert payload["response"]["choices"][0]["message"]["content"] == f"echo {REDACTED}"
    assert out["context"] == {"user_id": "u", "metadata": {"note": f"k={REDACTED}"}}
    assert out["error"]["message"] == f"bad key {REDACTED}"
    assert body["messages"][0]["content"] == f"mine: {ALICE_KEY}"  # the call's own is intact


# ------------------------------------------- a stream that broke off (finding 11)


def _broken_stream(gw: Gateway, status: int) -> tuple[Any, Call]:
    f, call = routed(gw, "/v1/chat/completions")
    body = {"messages": [{"role": "user", "content": "count to twenty please"}]}
    provider = providers.get("mock")
    spec = CallSpec(RouteType.CHAT, body, "m", ModelOptions(input_cost=1.0, output_cost=1.0), True)
    call.provider, call.spec, call.stream = provider, spec, True
    call.translator = providers.get("openai").stream_translator(spec)
    chunk = {"choices": [{"index": 0, "delta": {"content": "one two three four "}}]}
    call.translator.feed(sse.encode(chunk))
    call.upstream_status = status
    call.fail(ProviderError(502, "broke off", code="upstream_disconnected"), "upstream")
    return f, call


def test_a_broken_stream_records_estimated_usage_and_cost(gw: Gateway) -> None:
    f, call = _broken_stream(gw, 200)
    usage = build_record(call, f).to_dict()["ai"]["proxy"]["usage"]
    assert usage["source"] == "estimated"
    assert usage["completion_tokens"] == 5  # 19 characters
    assert usage["prompt_tokens"] > 0
    assert usage["cost"] == pytest.approx(usage["total_tokens"] / 1e6)


def test_an_upstream_error_status_records_no_usage(gw: Gateway) -> None:
    f, call = _broken_stream(gw, 500)  # refused: nothing was generated
    usage = build_record(call, f).to_dict()["ai"]["proxy"]["usage"]
    assert usage["source"] == "none" and usage["cost"] is None


# ---------------------------------------------- records every sink can write (finding 5)


def test_a_record_orjson_refuses_is_cleaned_not_lost(gw: Gateway) -> None:
    import orjson

    from addons.recorder import TOO_DEEP, writable

    f, call = routed(gw, "/v1/chat/completions")
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    body = {"messages": [{"role": "user", "content": "bad \ud800 text"}], "seed": 10**30}
    call.provider = providers.get("mock")
    call.spec = CallSpec(RouteType.CHAT, body, "m", ModelOptions(), False)
    call.log_payloads = True
    call.request_payload = body
    call.response_payload = {"deep": deep}
    call.context = {"metadata": {"note": "\udcff"}}
    record = build_record(call, f)
    with pytest.raises(TypeError):
        orjson.dumps(record.to_dict(), default=str)
    out = json.loads(orjson.dumps(writable(record).to_dict(), default=str))
    payload = out["ai"]["proxy"]["payload"]
    assert payload["request"]["messages"][0]["content"] == "bad ? text"
    assert payload["request"]["seed"] == str(10**30)
    assert out["ai"]["proxy"]["meta"]["request_parameters"]["seed"] == str(10**30)
    assert TOO_DEEP in json.dumps(payload["response"])
    assert out["context"]["metadata"]["note"] == "?"


def test_a_writable_record_is_left_as_it_is(gw: Gateway) -> None:
    from addons.recorder import writable

    f, call = routed(gw, "/v1/chat/completions")
    call.context = {"metadata": {"a": [1, 2]}}
    record = build_record(call, f)
    context = record.context
    assert writable(record) is record and record.context is context


def test_a_bug_in_the_record_builder_still_yields_a_record(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from addons import recorder

    def broken(call: Call, flow: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(recorder, "build_record", broken)
    sent: list[Any] = []
    monkeypatch.setattr(gw.exporters, "export", lambda rec, route, config: sent.append(rec))
    f, call = routed(gw, "/q/v1/chat/completions?subscription-key=secret-in-the-query")
    recorder.export(gw, call, f)
    (rec,) = sent
    out = rec.to_dict()
    assert out["status"] == "error"
    assert out["route"] == {"name": "query"}
    assert out["request"] == {"method": f.request.method, "uri": "/q/v1/chat/completions"}
    assert out["error"]["code"] == "record_incomplete" and "KeyError" in out["error"]["message"]
    assert "secret-in-the-query" not in json.dumps(out)
    assert any("reduced one" in r.message for r in caplog.records)
