"""exporters/record.py: the call record in Kong's log shape."""

from __future__ import annotations

import json

import pytest

from exporters.record import AIInfo, CallRecord
from providers.base import Usage


def ai(**kw) -> AIInfo:
    base = {
        "provider": "openai",
        "route_type": "llm/v1/chat",
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "stream": False,
    }
    return AIInfo(**{**base, **kw})


def record(ai_info: AIInfo | None = None, **kw) -> CallRecord:
    base = {
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "started_at": 1_700_000_000.1234,
        "ended_at": 1_700_000_001.5,
        "status": "ok",
        "client_ip": "127.0.0.1",
        "route": "chat",
        "service": "llm",
        "request": {"method": "POST", "uri": "/v1/chat/completions", "size": 120, "headers": {}},
        "response": {"status": 200, "size": 456},
        "latencies": {
            "request": 1376.6,
            "proxy": 1300.0,
            "gateway": 76.6,
            "llm": 1300.0,
            "time_to_first_token": 250.0,
        },
        "ai": ai_info,
    }
    return CallRecord(**{**base, **kw})


def test_kong_shape_of_a_full_record() -> None:
    info = ai(
        stream=True,
        upstream_url="https://api.openai.com/v1/chat/completions",
        usage=Usage(130, 139, cache_read_tokens=100, reasoning_tokens=7),
        cost=0.00171,
        finish_reason="stop",
        time_to_first_token_ms=250.0,
        llm_latency_ms=1390.0,
        request_params={"temperature": 0.2, "max_tokens": 256},
        response_id="chatcmpl-123",
        request_payload={"messages": [{"role": "user", "content": "hi"}]},
        response_payload={"choices": []},
    )
    out = record(
        info,
        consumer="alice",
        consumer_entity={"id": "c-1", "username": "alice", "custom_id": "team-a"},
        context={"user_id": "u1"},
    ).to_dict()
    assert out["started_at"] == 1_700_000_000_123  # milliseconds, like Kong
    assert out["ended_at"] == 1_700_000_001_500
    assert out["route"] == {"name": "chat"}
    assert out["service"] == {"name": "llm"}
    assert out["consumer"] == {"id": "c-1", "username": "alice", "custom_id": "team-a"}
    assert out["latencies"] == {
        "request": 1376.6,
        "proxy": 1300.0,
        "gateway": 76.6,
        "llm": 1300.0,
        "time_to_first_token": 250.0,
    }
    assert out["context"] == {"user_id": "u1"}
    proxy = out["ai"]["proxy"]
    assert proxy["meta"] == {
        "provider_name": "openai",
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "route_type": "llm/v1/chat",
        "request_mode": "stream",
        "llm_latency": 1390.0,
        "upstream_url": "https://api.openai.com/v1/chat/completions",
        "finish_reason": "stop",
        "response_id": "chatcmpl-123",
        "request_parameters": {"temperature": 0.2, "max_tokens": 256},
    }
    assert proxy["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 139,
        "total_tokens": 269,
        "cache_read_tokens": 100,
        "cache_write_tokens": 0,
        "reasoning_tokens": 7,
        "cost": 0.00171,
        "time_to_first_token": 250.0,
        "time_per_token": 10.0,  # 1390 ms / 139 tokens
        "source": "reported",
    }
    assert proxy["payload"] == {
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "response": {"choices": []},
    }
    json.dumps(out)  # what file-log writes must be JSON


def test_a_consumer_given_by_name_only_shows_as_its_username() -> None:
    assert record(consumer="alice").to_dict()["consumer"] == {"username": "alice"}


def test_oneshot_mode() -> None:
    assert ai().to_dict()["meta"]["request_mode"] == "oneshot"


def test_usage_is_omitted_when_log_statistics_is_false() -> None:
    out = ai(usage=Usage(1, 2), cost=0.1, log_statistics=False).to_dict()
    assert "usage" not in out
    assert out["meta"]["provider_name"] == "openai"


@pytest.mark.parametrize(
    "usage, source",
    [
        (Usage(10, 5), "reported"),
        (Usage(10, 5, estimated=True), "estimated"),
        (None, "none"),
    ],
)
def test_usage_source(usage: Usage | None, source: str) -> None:
    out = ai(usage=usage).to_dict()["usage"]
    assert out["source"] == source
    if usage is None:
        # no usage is reported as "none", with zero counts and nothing derived from them
        assert (out["prompt_tokens"], out["completion_tokens"], out["total_tokens"]) == (0, 0, 0)
        assert out["time_per_token"] is None
    else:
        assert out["total_tokens"] == 15


@pytest.mark.parametrize(
    "request_payload, response_payload, payload",
    [
        (None, None, None),
        ({"prompt": "p"}, None, {"request": {"prompt": "p"}, "response": None}),
        (None, "raw text answer", {"request": None, "response": "raw text answer"}),
    ],
)
def test_payload_only_when_set(request_payload, response_payload, payload) -> None:
    out = ai(request_payload=request_payload, response_payload=response_payload).to_dict()
    assert out.get("payload") == payload
    assert ("payload" in out) is (payload is not None)


@pytest.mark.parametrize(
    "usage, latency, expected",
    [
        (Usage(1, 4), 100.0, 25.0),
        (Usage(1, 3), 100.0, 33.333),
        (Usage(1, 0), 100.0, None),  # no completion tokens: no rate
        (Usage(1, 4), None, None),
    ],
)
def test_time_per_token(usage: Usage, latency: float | None, expected: float | None) -> None:
    assert ai(usage=usage, llm_latency_ms=latency).time_per_token_ms == expected


def test_record_without_ai_info_route_or_consumer() -> None:
    out = record(
        None, route=None, service=None, status="error", error={"message": "no route", "status": 404}
    ).to_dict()
    assert out["ai"] is None
    assert out["route"] is None and out["service"] is None and out["consumer"] is None
    assert out["status"] == "error" and out["error"] == {"message": "no route", "status": 404}
    json.dumps(out)
