"""exporters/http_log.py: Kong's http-log, the call record as JSON to an endpoint.

Every body is checked by the fake log server's rules (tests/fakes/http_log.py): the
call record's shape with unknown fields refused, one object per request with
`max_batch_size: 1`, an array otherwise (Kong's behaviour).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from exporters import http_log
from exporters.http_log import HttpLogConfig, HttpLogSink, QueueConfig, from_config
from exporters.record import AIInfo, CallRecord
from exporters.sink import Item, Verdict
from providers.base import Usage
from tests.fakes.http_log import FakeLogServer, record_problems
from tests.fakes.upstream import FakeUpstream, Reply

LOG_TOKEN = "log-intake-token-0123456789"


def config(**kw: Any) -> HttpLogConfig:
    base: dict[str, Any] = {
        "http_endpoint": "http://127.0.0.1:9999/logs",
        "headers": {"X-Log-Token": LOG_TOKEN},
    }
    return HttpLogConfig(**{**base, **kw})


def sink(**kw: Any) -> HttpLogSink:
    return from_config(config(**kw), "http-log@global#0123")


def ai(**kw: Any) -> AIInfo:
    base: dict[str, Any] = {
        "provider": "openai",
        "route_type": "llm/v1/chat",
        "request_model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "stream": False,
        "upstream_url": "https://api.openai.com/v1/chat/completions",
        "usage": Usage(10, 5),
        "finish_reason": "stop",
        "llm_latency_ms": 900.0,
    }
    return AIInfo(**{**base, **kw})


def record(ai_info: AIInfo | None = None, **kw: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "started_at": 1_795_435_812.8624,
        "ended_at": 1_795_435_813.9,
        "status": "ok",
        "client_ip": "127.0.0.1",
        "route": "chat",
        "service": "llm",
        "request": {
            "method": "POST",
            "uri": "/v1/chat/completions",
            "size": 120,
            "headers": {"authorization": "[REDACTED]", "content-type": "application/json"},
        },
        "response": {"status": 200, "size": 456},
        "latencies": {"request": 1037.6, "proxy": 900.0, "gateway": 137.6},
        "upstream": {"url": "https://api.openai.com/v1/chat/completions", "status": 200},
        "ai": ai() if ai_info is None else ai_info,
    }
    return CallRecord(**{**base, **kw})


CASES: dict[str, CallRecord] = {
    "chat ok": record(),
    "streamed with time to first token": record(
        ai(stream=True, time_to_first_token_ms=250.0),
        latencies={
            "request": 1037.6,
            "proxy": 900.0,
            "gateway": 137.6,
            "time_to_first_token": 250.0,
        },
    ),
    "failed upstream": record(
        ai(usage=None, finish_reason=None),
        status="error",
        response={"status": 500, "size": 90},
        upstream={"url": "https://api.openai.com/v1/chat/completions", "status": 500},
        error={
            "status": 500,
            "type": "server_error",
            "code": None,
            "message": "upstream failed",
            "source": "upstream",
        },
    ),
    "client aborted": record(
        ai(stream=True, usage=Usage(9, 2, estimated=True)),
        status="client_aborted",
        response={"status": 200, "size": None},
        error={
            "status": None,
            "type": "connection_error",
            "code": None,
            "message": "client disconnected",
            "source": "client",
        },
    ),
    "embeddings": record(
        ai(
            route_type="llm/v1/embeddings",
            request_model="text-embedding-3-small",
            response_model="text-embedding-3-small",
            usage=Usage(8, 0),
            finish_reason=None,
        ),
        route="embeddings",
    ),
    "no usage": record(ai(usage=None)),
    "estimated usage": record(ai(usage=Usage(12, 4, estimated=True))),
    "statistics off": record(ai(log_statistics=False)),
    "with payloads": record(
        ai(
            request_payload={
                "messages": [{"role": "user", "content": "hi"}],
                "n": 12345678901234567890123,
            },
            response_payload={"choices": [{"message": {"content": "yo"}}]},
        )
    ),
    "context headers and body metadata": record(
        context={
            "user_id": "u1",
            "session_id": "s1",
            "chat_id": "c1",
            "message_id": "m1",
            "organization_id": "o1",
            "project_id": "p1",
            "metadata": {"team": "blue"},
        },
        consumer="alice",
    ),
    "cache and reasoning tokens and cost": record(
        ai(
            usage=Usage(130, 139, cache_read_tokens=100, cache_write_tokens=20, reasoning_tokens=7),
            cost=0.0017,
        )
    ),
    "no route": record(
        None,
        ai=None,
        route=None,
        service=None,
        upstream=None,
        status="error",
        response={"status": 404, "size": 60},
        error={
            "status": 404,
            "type": "not_found",
            "code": None,
            "message": "no route",
            "source": "gateway",
        },
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_kind_of_record_is_one_item_the_log_server_accepts(name: str) -> None:
    rec = CASES[name]
    items = sink().items(rec)
    assert [i.channel for i in items] == ["log"]
    data = items[0].data
    assert record_problems(json.loads(json.dumps(data))) == []
    # exactly the record, Kong's log shape (what file-log writes)
    assert data == rec.to_dict()
    body = json.loads(sink().request("log", items).body)
    assert body == json.loads(json.dumps(rec.to_dict()))


def test_integers_beyond_64_bits_are_written_exactly() -> None:
    items = sink().items(CASES["with payloads"])
    body = json.loads(sink().request("log", items).body)
    assert body["ai"]["proxy"]["payload"]["request"]["n"] == 12345678901234567890123


@pytest.mark.parametrize(
    "max_batch_size, count, shape",
    [
        (1, 1, "object"),  # Kong: with max_batch_size 1 the body is the entry itself
        (10, 1, "array"),  # with a larger queue, always an array (even of one)
        (10, 3, "array"),
        (1000, 1000, "array"),
    ],
)
def test_body_shape_follows_kongs_queue(max_batch_size: int, count: int, shape: str) -> None:
    s = sink(queue={"max_batch_size": max_batch_size})
    assert s.max_batch == max_batch_size
    recs = [record(id=f"01890a5d-ac96-774b-bcce-{i:012d}") for i in range(count)]
    items = [i for r in recs for i in s.items(r)]
    body = json.loads(s.request("log", items).body)
    if shape == "object":
        assert body == json.loads(json.dumps(recs[0].to_dict()))
    else:
        assert isinstance(body, list) and [b["id"] for b in body] == [r.id for r in recs]


def test_a_batch_over_the_byte_cap_carries_what_fits() -> None:
    s = sink(queue={"max_batch_size": 100})
    big = {"messages": [{"role": "user", "content": "w" * 500_000}]}
    recs = [
        record(ai(request_payload=big), id=f"01890a5d-ac96-774b-bcce-{i:012d}") for i in range(20)
    ]
    items = [i for r in recs for i in s.items(r)]  # 20 records of about 0.5 MB
    prepared = s.request("log", items)
    assert len(prepared.body) <= http_log.MAX_REQUEST_BYTES
    body = json.loads(prepared.body)
    assert prepared.count == len(body) and 1 <= len(body) < 20
    assert [b["id"] for b in body] == [r.id for r in recs[: len(body)]]


@pytest.mark.parametrize(
    "settings, method, content_type",
    [
        ({}, "POST", "application/json"),
        ({"method": "PUT"}, "PUT", "application/json"),
        (
            {"method": "PATCH", "content_type": "application/json; charset=utf-8"},
            "PATCH",
            "application/json; charset=utf-8",
        ),
    ],
)
def test_request(settings: dict[str, Any], method: str, content_type: str) -> None:
    s = sink(**settings)
    items = s.items(record())
    prepared = s.request("log", items)
    assert prepared.method == method
    assert prepared.url == "http://127.0.0.1:9999/logs"
    assert prepared.headers == {"X-Log-Token": LOG_TOKEN, "Content-Type": content_type}
    # the configured header (a secret) is only in the request headers
    assert LOG_TOKEN.encode() not in prepared.body
    assert LOG_TOKEN not in json.dumps([i.data for i in items])


@pytest.mark.parametrize(
    "endpoint, url, userinfo",
    [
        ("https://user:pa%3Ass@logs.test/in?x=1", "https://logs.test/in?x=1", "user:pa:ss"),
        ("http://u@127.0.0.1:8080", "http://127.0.0.1:8080/", "u:"),
        ("http://a:b@[::1]:9000/p", "http://[::1]:9000/p", "a:b"),
        ("http://logs.test", "http://logs.test/", None),
    ],
)
def test_user_info_becomes_basic_auth(endpoint: str, url: str, userinfo: str | None) -> None:
    s = from_config(HttpLogConfig(http_endpoint=endpoint), "k")
    prepared = s.request("log", s.items(record()))
    assert prepared.url == url
    if userinfo is None:
        assert "Authorization" not in prepared.headers
    else:
        expected = base64.b64encode(userinfo.encode()).decode()
        assert prepared.headers["Authorization"] == f"Basic {expected}"


ITEMS = [Item("log", {"n": i}) for i in range(2)]


@pytest.mark.parametrize(
    "status, headers, expected",
    [
        (200, {}, Verdict()),
        (204, {}, Verdict()),
        (429, {"retry-after": "7"}, Verdict(retry=ITEMS, retry_after=7.0, reason="HTTP 429")),
        (500, {}, Verdict(retry=ITEMS, reason="HTTP 500")),
        (503, {}, Verdict(retry=ITEMS, reason="HTTP 503")),
        (408, {}, Verdict(retry=ITEMS, reason="HTTP 408")),
        (400, {}, Verdict(dropped=ITEMS, reason="HTTP 400: bad")),
        (422, {}, Verdict(dropped=ITEMS, reason="HTTP 422: bad")),
        # the endpoint refuses the settings: kept for a fixed config
        (401, {}, Verdict(retry=ITEMS, hold=True, reason="HTTP 401: bad (check headers)")),
        (
            404,
            {},
            Verdict(
                retry=ITEMS, hold=True, reason="HTTP 404: bad (check http_endpoint and method)"
            ),
        ),
        (
            405,
            {},
            Verdict(
                retry=ITEMS, hold=True, reason="HTTP 405: bad (check http_endpoint and method)"
            ),
        ),
        (
            302,
            {"location": "/login"},
            Verdict(
                retry=ITEMS,
                hold=True,
                reason="HTTP 302: redirected to /login (check http_endpoint and method)",
            ),
        ),
        # too large: split by the delivery
        (413, {}, Verdict(retry=ITEMS, too_large=True, reason="HTTP 413: bad")),
    ],
)
def test_verdict(status: int, headers: dict[str, str], expected: Verdict) -> None:
    assert sink().verdict(ITEMS, status, headers, b"bad") == expected


# ------------------------------------------------------------------ the config


def test_config_defaults_are_kongs() -> None:
    c = HttpLogConfig(http_endpoint="http://logs.test/in")
    assert (c.method, c.content_type, c.timeout, c.keepalive) == (
        "POST",
        "application/json",
        10_000,
        60_000,
    )
    assert c.headers is None and c.custom_fields_by_lua is None
    assert c.queue == QueueConfig()
    q = c.queue
    assert (q.max_batch_size, q.max_coalescing_delay, q.max_entries, q.max_bytes) == (
        1,
        1,
        10_000,
        None,
    )
    # Kong's max_retry_time is 60: llmitm keeps failing entries (in the spool) by default
    assert (q.max_retry_time, q.initial_retry_delay, q.max_retry_delay, q.concurrency_limit) == (
        None,
        0.01,
        60,
        1,
    )
    s = HttpLogSink(c, "k")
    assert (s.max_batch, s.timeout, s.keepalive) == (1, 10.0, 60.0)
    assert s.queue is c.queue
    assert s.name == "http-log:k"


def test_queue_settings_are_exposed() -> None:
    s = sink(
        timeout=2500,
        queue={
            "max_batch_size": 50,
            "max_coalescing_delay": 0.2,
            "max_entries": 500,
            "max_bytes": 1_000_000,
            "max_retry_time": -1,
            "initial_retry_delay": 0.5,
            "max_retry_delay": 4,
            "concurrency_limit": -1,
        },
    )
    assert s.timeout == 2.5 and s.max_batch == 50
    assert s.queue.max_retry_time == -1 and s.queue.max_bytes == 1_000_000


def test_empty_custom_fields_by_lua_is_accepted() -> None:
    assert config(custom_fields_by_lua={}).custom_fields_by_lua == {}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"custom_fields_by_lua": {"x": "return 1"}}, "not supported: llmitm runs no Lua"),
        ({"http_endpoint": "logs.test/in"}, "http:// or https://"),
        ({"http_endpoint": "http://logs.test:99999/in"}, "invalid port"),
        ({"method": "GET"}, "method"),
        ({"content_type": "text/plain"}, "content_type"),
        ({"headers": {"Host": "x"}}, "cannot contain 'Host'"),
        ({"headers": {"coNTEnt-Length": "1"}}, "cannot contain 'coNTEnt-Length'"),
        ({"headers": {"Content-Type": "x"}}, "cannot contain 'Content-Type'"),
        ({"headers": {"X-My-Header": ""}}, "must not be empty"),
        ({"headers": {"bad name": "x"}}, "not a valid header name"),
        (
            {"http_endpoint": "http://hi:there@logs.test/p", "headers": {"AuthoRIZATion": "x"}},
            "both an 'Authorization' header and user info",
        ),
        ({"timeout": 0}, "timeout"),
        ({"queue": {"max_batch_size": 0}}, "max_batch_size"),
        ({"queue": {"concurrency_limit": 5}}, "concurrency_limit"),
        ({"queue": {"max_coalescing_delay": 4000}}, "max_coalescing_delay"),
        ({"queue": {"max_retry_time": -3}}, "-1"),
        ({"queue_size": 5}, "queue_size"),  # gone from Kong: use queue.max_batch_size
        ({"http_endpiont": "http://x.test"}, "http_endpiont"),
    ],
)
def test_config_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        config(**settings)
    assert message in str(e.value)


# --------------------------------------------------- on the wire, with the fake


@pytest.fixture(scope="module")
def log_server() -> Any:
    server = FakeUpstream().start()
    yield server
    server.stop()


def send(s: HttpLogSink, items: list[Item]) -> Verdict:
    prepared = s.request("log", items)
    with httpx.Client(timeout=5) as client:
        r = client.request(
            prepared.method, prepared.url, headers=prepared.headers, content=prepared.body
        )
    return s.verdict(items, r.status_code, dict(r.headers), r.content)


@pytest.mark.parametrize("max_batch_size, shape", [(1, "object"), (100, "array")])
def test_every_record_kind_is_accepted_by_the_log_server(
    log_server: FakeUpstream, max_batch_size: int, shape: Any
) -> None:
    log_server.reset()
    fake = FakeLogServer("/logs", shape=shape, method="PUT")
    log_server.reply(fake)
    s = sink(
        http_endpoint=f"{log_server.url}/logs",
        method="PUT",
        queue={"max_batch_size": max_batch_size},
    )
    items = [i for rec in CASES.values() for i in s.items(rec)]
    batches = [[i] for i in items] if max_batch_size == 1 else [items]
    for batch in batches:
        assert send(s, batch) == Verdict()
    assert fake.errors == []
    assert [r["id"] for r in fake.records] == [r.id for r in CASES.values()]
    # the token only in its header, nowhere else
    for req in fake.received:
        assert req.headers["x-log-token"] == LOG_TOKEN
        assert all(LOG_TOKEN not in v for k, v in req.headers.items() if k != "x-log-token")
        assert LOG_TOKEN.encode() not in req.body


def test_log_server_faults_and_basic_auth(log_server: FakeUpstream) -> None:
    log_server.reset()
    token = "Basic " + base64.b64encode(b"gw:pw").decode()
    fake = FakeLogServer("/in", token=token, shape="object")
    log_server.reply(fake)
    s = from_config(
        HttpLogConfig(http_endpoint=f"http://gw:pw@127.0.0.1:{log_server.port}/in"), "k"
    )
    items = s.items(record())
    fake.fail(Reply.json({"error": "busy"}, 503, {"retry-after": "2"}), Reply.json({}, 400))
    assert send(s, items) == Verdict(retry=items, retry_after=2.0, reason="HTTP 503")
    assert send(s, items).dropped == items
    assert send(s, items) == Verdict()
    assert fake.errors == [] and len(fake.records) == 1
    # without the credentials the server refuses (the fake checks them): the records
    # are kept for a fixed config
    bare = from_config(HttpLogConfig(http_endpoint=f"{log_server.url}/in"), "k")
    refused = send(bare, items)
    assert refused.hold and refused.retry == items and refused.dropped == []


def test_log_server_rejects_what_is_not_a_record(log_server: FakeUpstream) -> None:
    log_server.reset()
    fake = FakeLogServer("/logs")
    log_server.reply(fake)
    s = sink(http_endpoint=f"{log_server.url}/logs")
    item = s.items(record())[0]
    item.data["surprise"] = 1
    assert send(s, [item]).dropped == [item]
    assert any("surprise" in e for e in fake.errors)
