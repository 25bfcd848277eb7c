"""The call record and the gateway's own answers, end to end: what a real gateway
writes for keys the client sends, for its own errors, for a stream answered by a whole
JSON body, for a client that leaves before the upstream answers, for consumers and for
configured secrets inside payloads; and the X-LLM-Model and latency headers.

A real `mitmdump -s addons/gateway.py`, the fake upstream of tests/fakes, the official
`openai` SDK and raw HTTP where the SDK cannot express the request. Each test finds
its own record by a unique X-Message-Id.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, free_port
from tests.fakes.upstream import (
    FakeUpstream,
    Reply,
    chat_completion,
    chat_stream,
)

PROVIDER_KEY = "sk-core-provider-secret-0123456789"
CLIENT_KEY = "sk-client-own-key-abcdef123456"
ALICE_KEY = "alice-consumer-key-7f3a9c2e51"
TEAM_KEY = "team-b-consumer-key-0d4e8b16"

LLM = "{provider: openai, name: gpt-4o-mini, options: {upstream_url: UPSTREAM}}"
VAULT = '"{vault://env/CORE_PROVIDER_KEY}"'


def ai_route(name: str, options: str = "", model: str = LLM, kind: str = "chat") -> str:
    """One route with ai-proxy (payloads logged) and the extra `options` of its config."""
    path, route_type = {
        "chat": ("chat/completions", "llm/v1/chat"),
        "completions": ("completions", "llm/v1/completions"),
    }[kind]
    return f"""
      - name: {name}
        paths: ["/{name}/v1/{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: {route_type}
              model: {model}
              logging: {{log_payloads: true}}
              {options}"""


ROUTES = [
    ai_route(
        "chat",
        model="{provider: openai, name: gpt-4o-mini, "
        "options: {upstream_url: UPSTREAM, input_cost: 1.0, output_cost: 2.0}}",
    ),
    ai_route(
        "hdr",
        f"auth: {{header_name: X-Custom-Auth, header_value: {VAULT}, allow_override: true}}",
    ),
    ai_route("hdr-fixed", f"auth: {{header_name: X-Custom-Auth, header_value: {VAULT}}}"),
    ai_route(
        "body",
        f"auth: {{param_name: api_key, param_value: {VAULT}, param_location: body, "
        "allow_override: true}",
    ),
    ai_route(
        "body-fixed",
        f"auth: {{param_name: api_key, param_value: {VAULT}, param_location: body}}",
    ),
    ai_route(
        "query",
        f"auth: {{param_name: subscription-key, param_value: {VAULT}, param_location: query, "
        "allow_override: true}",
    ),
    ai_route(
        "query-fixed",
        f"auth: {{param_name: subscription-key, param_value: {VAULT}, param_location: query}}",
    ),
    ai_route("nameless", "model_name_header: false"),
    ai_route("small", "max_request_body_size: 1024"),
    ai_route("nostream", "response_streaming: deny"),
    ai_route(
        "completions",
        model="{provider: openai, name: gpt-3.5-turbo-instruct, options: {upstream_url: UPSTREAM}}",
        kind="completions",
    ),
    ai_route("dead", model="{provider: openai, name: gpt-4o-mini, options: {upstream_url: DEAD}}"),
    f"""
      - name: keyed
        paths: ["/keyed/v1/chat/completions"]
        plugins:
          - name: key-auth
            config: {{key_names: [apikey]}}
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {LLM}
              logging: {{log_payloads: true}}""",
]

CONFIG = f"""
_format_version: "3.0"
consumers:
  - id: 8d7c2a1e-0000-4000-8000-00000000a11c
    username: alice
    custom_id: team-a
    keyauth_credentials: [{{key: "{{vault://env/CORE_ALICE_KEY}}"}}]
  - custom_id: team-b
    keyauth_credentials: [{{key: {TEAM_KEY}}}]
services:
  - name: fake
    url: http://127.0.0.1:9
    read_timeout: 1500
    routes:{"".join(ROUTES)}
  - name: patient
    url: http://127.0.0.1:9
    read_timeout: 60000
    routes:{ai_route("slow")}
plugins:
  - name: file-log
    config: {{path: "{{records}}"}}
"""


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = CONFIG.replace("UPSTREAM", upstream.url).replace("DEAD", dead)
    g = Gateway(
        tmp_path_factory.mktemp("core"),
        config,
        env={"CORE_PROVIDER_KEY": PROVIDER_KEY, "CORE_ALICE_KEY": ALICE_KEY},
    )
    g.wait_ready()
    yield g
    g.stop()
    # no test may leak the provider's key, nor a consumer's, into a record
    text = g.records_path.read_text()
    for secret in (PROVIDER_KEY, ALICE_KEY, TEAM_KEY, CLIENT_KEY):
        assert secret not in text


TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def tagged(headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Message-Id": TAG["id"], **(headers or {})}


def my_record(gw: Gateway, timeout: float = 5.0) -> dict[str, Any]:
    return gw.record(timeout=timeout, message_id=TAG["id"])


def sdk(gw: Gateway, route: str, **kw: Any) -> openai.OpenAI:
    headers = tagged(kw.pop("default_headers", None))
    return openai.OpenAI(
        base_url=f"{gw.url}/{route}/v1",
        api_key="client-sdk-key",
        max_retries=0,
        default_headers=headers,
        **kw,
    )


def post(
    gw: Gateway, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{gw.url}{path}", content=content, timeout=10, headers=tagged(headers))


HI = [{"role": "user", "content": "hi"}]


# ------------------------------------------------------- a client's own key (finding 1)


@pytest.mark.parametrize("override", [True, False], ids=["allow_override", "fixed"])
@pytest.mark.parametrize("where", ["hdr", "body", "query"])
def test_a_key_the_client_sends_under_the_routes_auth_is_never_recorded(
    gw: Gateway, fake: FakeUpstream, where: str, override: bool
) -> None:
    fake.reply(Reply.json(chat_completion("ok")))
    route = where if override else f"{where}-fixed"
    kw: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if where == "hdr":
        kw["default_headers"] = {"X-Custom-Auth": CLIENT_KEY}
    elif where == "query":
        kw["default_query"] = {"subscription-key": CLIENT_KEY}
    else:
        extra["extra_body"] = {"api_key": CLIENT_KEY}
    answer = sdk(gw, route, **kw).chat.completions.create(model="gpt-4o-mini", messages=HI, **extra)
    assert answer.choices[0].message.content == "ok"

    # allow_override: the client's key wins upstream; otherwise the route's
    sent = fake.last()
    expected = CLIENT_KEY if override else PROVIDER_KEY
    if where == "hdr":
        assert sent.headers["x-custom-auth"] == expected
    elif where == "query":
        assert f"subscription-key={expected}" in sent.path
    else:
        assert sent.json()["api_key"] == expected

    rec = my_record(gw)
    text = json.dumps(rec)
    assert CLIENT_KEY not in text and PROVIDER_KEY not in text
    assert "[REDACTED]" in text
    if where == "query" and override:  # the upstream URL held the client's key
        assert "subscription-key=%5BREDACTED%5D" in rec["upstream"]["url"] or (
            "subscription-key=[REDACTED]" in rec["upstream"]["url"]
        )
    if where == "body":
        assert rec["ai"]["proxy"]["payload"]["request"]["api_key"] == "[REDACTED]"


# ------------------------------------------ X-LLM-Model and latency headers (finding 8)


def test_x_llm_model_is_the_model_the_call_was_sent_with_whole_or_streamed(
    gw: Gateway, fake: FakeUpstream
) -> None:
    dated = "gpt-4o-mini-2024-07-18"  # what OpenAI answers with
    fake.reply(Reply.json(chat_completion("x", model=dated)))
    raw = sdk(gw, "chat").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI
    )
    assert raw.headers["x-llm-model"] == "openai/gpt-4o-mini"
    assert raw.parse().model == dated  # the answering model is in the body

    fake.reply(Reply.sse(chat_stream(["x"], model=dated)))
    with httpx.stream(
        "POST",
        f"{gw.url}/chat/v1/chat/completions",
        json={"messages": HI, "stream": True},
        headers=tagged(),
        timeout=10,
    ) as r:
        r.read()
    assert r.headers["x-llm-model"] == "openai/gpt-4o-mini"


def test_model_name_header_false_sends_no_model_header(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("x")))
    raw = sdk(gw, "nameless").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI
    )
    assert "x-llm-model" not in raw.headers
    assert "x-llmitm-proxy-latency" in raw.headers


# ------------------------------------------- records of the gateway's own errors (4, 8)


def _assert_gateway_error_headers(r: httpx.Response, model: str | None = "openai/gpt-4o-mini"):
    assert r.headers["content-type"] == "application/json"
    if model:
        assert r.headers["x-llm-model"] == model
        assert int(r.headers["x-llmitm-proxy-latency"]) >= 0
        assert int(r.headers["x-llmitm-upstream-latency"]) >= 0


def test_bad_json_record_names_provider_and_model(gw: Gateway, fake: FakeUpstream) -> None:
    r = post(gw, "/chat/v1/chat/completions", b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    _assert_gateway_error_headers(r)
    rec = my_record(gw)
    assert rec["status"] == "error"
    assert rec["error"]["code"] == "invalid_json" and rec["error"]["source"] == "gateway"
    meta = rec["ai"]["proxy"]["meta"]
    assert meta["provider_name"] == "openai" and meta["request_model"] == "gpt-4o-mini"
    assert rec["latencies"]["proxy"] is None and rec["latencies"]["llm"] is None
    assert rec["upstream"] is None
    assert fake.received == []


def test_wrong_model_error_carries_the_model_header(gw: Gateway) -> None:
    r = post(gw, "/chat/v1/chat/completions", {"model": "gpt-4o", "messages": HI})
    assert r.status_code == 400
    _assert_gateway_error_headers(r)


def test_unknown_route_record_has_its_error(gw: Gateway) -> None:
    r = post(gw, "/nowhere/v1/chat/completions", {"messages": HI})
    assert r.status_code == 404
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["route"] is None and rec["ai"] is None
    assert rec["error"]["code"] == "route_not_found" and rec["error"]["source"] == "gateway"
    assert rec["error"]["status"] == 404
    assert rec["latencies"]["proxy"] is None and rec["latencies"]["request"] >= 0


def test_oversized_body_record(gw: Gateway, fake: FakeUpstream) -> None:
    r = post(
        gw, "/small/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 5000}]}
    )
    assert r.status_code == 413
    _assert_gateway_error_headers(r)
    rec = my_record(gw)
    assert rec["error"]["code"] == "request_too_large" and rec["error"]["source"] == "gateway"
    assert rec["ai"]["proxy"]["meta"]["provider_name"] == "openai"
    assert rec["latencies"]["proxy"] is None
    assert fake.received == []


def test_streaming_denied_record(gw: Gateway) -> None:
    r = post(gw, "/nostream/v1/chat/completions", {"messages": HI, "stream": True})
    assert r.status_code == 400
    _assert_gateway_error_headers(r)
    rec = my_record(gw)
    assert rec["error"]["status"] == 400 and rec["error"]["source"] == "gateway"
    assert rec["error"]["message"] == "response streaming is not enabled for this LLM"
    meta = rec["ai"]["proxy"]["meta"]
    assert meta["provider_name"] == "openai" and meta["request_mode"] == "stream"
    assert rec["latencies"]["proxy"] is None


def test_upstream_timeout_record(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply(hang=True))
    r = post(gw, "/chat/v1/chat/completions", {"messages": HI})
    assert r.status_code == 504
    _assert_gateway_error_headers(r)
    rec = my_record(gw)
    assert rec["error"]["code"] == "upstream_timeout" and rec["error"]["source"] == "upstream"
    assert rec["ai"]["proxy"]["meta"]["provider_name"] == "openai"
    assert rec["latencies"]["proxy"] is not None  # the upstream was waited for


def test_unreachable_upstream_error_carries_the_headers(gw: Gateway) -> None:
    r = post(gw, "/dead/v1/chat/completions", {"messages": HI})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    _assert_gateway_error_headers(r)
    rec = my_record(gw)
    assert rec["error"]["source"] == "upstream"


# ------------------------------------------- a stream answered by a whole JSON (finding 3)


def test_a_stream_answered_with_whole_json_still_reaches_the_client(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(
        Reply.json(chat_completion("the whole answer", prompt_tokens=9, completion_tokens=4))
    )
    chunks = list(
        sdk(gw, "chat").chat.completions.create(
            model="gpt-4o-mini",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the whole answer"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

    rec = my_record(gw)
    proxy = rec["ai"]["proxy"]
    assert rec["status"] == "ok" and proxy["meta"]["request_mode"] == "stream"
    assert (proxy["usage"]["prompt_tokens"], proxy["usage"]["completion_tokens"]) == (9, 4)
    assert proxy["usage"]["source"] == "reported"
    assert proxy["payload"]["response"]["choices"][0]["message"]["content"] == "the whole answer"
    assert proxy["meta"]["finish_reason"] == "stop"


def test_whole_json_for_a_stream_is_valid_sse_without_usage_unless_asked(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(Reply.json(chat_completion("hello")))
    r = post(gw, "/chat/v1/chat/completions", {"messages": HI, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]" and r.text.count("[DONE]") == 1
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    assert all("usage" not in o for o in objs)  # not asked for
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": "hello"}
    assert my_record(gw)["response"]["size"] == len(r.content)


def test_whole_json_tool_calls_for_a_stream(gw: Gateway, fake: FakeUpstream) -> None:
    answer = chat_completion("")
    answer["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    answer["choices"][0]["finish_reason"] = "tool_calls"
    fake.reply(Reply.json(answer))
    stream = sdk(gw, "chat").chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    calls, finish = [], None
    for c in stream:
        calls += c.choices[0].delta.tool_calls or []
        finish = c.choices[0].finish_reason or finish
    assert [(t.index, t.id, t.function.name, t.function.arguments) for t in calls] == [
        (0, "call_1", "weather", '{"city":"Paris"}')
    ]
    assert finish == "tool_calls"


def test_whole_json_for_a_streamed_completion(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(
        Reply.json(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "gpt-3.5-turbo-instruct",
                "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
    )
    parts = list(
        sdk(gw, "completions").completions.create(
            model="gpt-3.5-turbo-instruct", prompt="hello", stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) == " world"
    assert parts[-1].choices[0].finish_reason == "length"


def test_unreadable_whole_json_for_a_stream_is_a_clear_502(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply(200, {"content-type": "application/json"}, b"not json"))
    r = post(gw, "/chat/v1/chat/completions", {"messages": HI, "stream": True})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "bad_upstream_response"
    assert "streamed request" in err["message"] and "not a JSON object" in err["message"]
    rec = my_record(gw)
    assert rec["error"]["source"] == "upstream" and rec["error"]["status"] == 502


# --------------------------------------------------- deeply nested bodies (finding 5)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"messages":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"messages":[{"role":"user","content":"x"}],"metadata":'
        + b"[" * 3000
        + b"]" * 3000
        + b"}",
        # deep enough to trouble the encoders after the parser, not the parser
        b'{"messages":[{"role":"user","content":"x"}],"metadata":{"a":'
        + b"[" * 300
        + b"]" * 300
        + b"}}",
    ],
    ids=["top-level", "messages", "metadata", "300-levels"],
)
def test_deeply_nested_json_is_a_400(gw: Gateway, fake: FakeUpstream, body: bytes) -> None:
    r = post(gw, "/chat/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_json" and "nested too deeply" in err["message"]
    rec = my_record(gw)
    assert rec["error"]["code"] == "invalid_json" and rec["error"]["source"] == "gateway"
    assert fake.received == []


def test_reasonably_nested_metadata_is_fine(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("ok")))
    nested: Any = "leaf"
    for _ in range(40):
        nested = {"n": nested}
    r = post(gw, "/chat/v1/chat/completions", {"messages": HI, "metadata": nested})
    assert r.status_code == 200, r.text
    assert my_record(gw)["context"]["metadata"]["n"]["n"]["n"]


def test_records_orjson_would_refuse_are_written_and_do_not_sink_others(
    gw: Gateway, fake: FakeUpstream
) -> None:
    """A lone surrogate in a body, a non-UTF-8 path, a huge integer: each record is
    written (cleaned), and so are the records written in the same batch."""
    fake.reply(Reply.json(chat_completion("ok")))
    surrogate = (
        b'{"messages":[{"role":"user","content":"bad \\ud800 here"}],"seed":1' + b"0" * 30 + b"}"
    )
    assert post(gw, "/chat/v1/chat/completions", surrogate).status_code == 200
    rec = my_record(gw)
    assert rec["ai"]["proxy"]["payload"]["request"]["messages"][0]["content"] == "bad ? here"
    assert rec["ai"]["proxy"]["meta"]["request_parameters"]["seed"] == "1" + "0" * 30

    TAG["id"] += "-path"
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(
            b"GET /nowhere/\xff\xfe HTTP/1.1\r\nhost: x\r\nx-message-id: %b\r\n\r\n"
            % TAG["id"].encode()
        )
        assert s.recv(100).startswith(b"HTTP/1.1 404")
    assert my_record(gw)["request"]["uri"].startswith("/nowhere/")

    TAG["id"] += "-after"
    assert post(gw, "/chat/v1/chat/completions", {"messages": HI}).status_code == 200
    assert my_record(gw)["status"] == "ok"


# ----------------------------------- a client that leaves before the answer (finding 6)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_before_the_answer_cancels_the_upstream_call(
    gw: Gateway, fake: FakeUpstream, stream: bool
) -> None:
    """The route's read_timeout is 60 s: the record comes long before it, and the
    upstream sees its connection closed."""
    fake.reply(Reply(hang=True))
    body = json.dumps({"messages": HI, "stream": stream}).encode()
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(
            b"POST /slow/v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\nx-message-id: %b\r\ncontent-length: %d\r\n\r\n%b"
            % (TAG["id"].encode(), len(body), body)
        )
        deadline = time.time() + 5
        while not fake.received and time.time() < deadline:
            time.sleep(0.02)
        assert fake.received, "the request never reached the upstream"
    rec = my_record(gw)  # waits at most 5 s
    assert rec["status"] == "client_aborted"
    assert rec["error"]["source"] == "client" and rec["error"]["code"] == "client_disconnected"
    assert rec["response"]["status"] is None
    deadline = time.time() + 5
    while fake.disconnects == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert fake.disconnects == 1


# ----------------------------------------------- fields of a real record (finding 7)


def test_sizes_client_ip_start_and_llm_timings_of_a_real_record(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(Reply.json(chat_completion("four", prompt_tokens=10, completion_tokens=4)))
    body = json.dumps({"messages": [{"role": "user", "content": "size me"}]}).encode()
    t0 = time.time()
    r = post(gw, "/chat/v1/chat/completions", body)
    t1 = time.time()
    assert r.status_code == 200
    rec = my_record(gw)
    assert rec["request"]["size"] == len(body)
    assert rec["response"]["size"] == len(r.content)
    assert rec["client_ip"] == "127.0.0.1"
    assert int(t0 * 1000) - 1 <= rec["started_at"] <= rec["ended_at"] <= int(t1 * 1000) + 1
    meta, usage = rec["ai"]["proxy"]["meta"], rec["ai"]["proxy"]["usage"]
    llm = meta["llm_latency"]
    assert llm is not None and llm == rec["latencies"]["llm"] == rec["latencies"]["proxy"]
    assert 0 <= llm <= rec["latencies"]["request"]
    assert usage["time_per_token"] == round(llm / 4, 3)
    assert usage["cost"] == pytest.approx((10 * 1.0 + 4 * 2.0) / 1e6)


def test_response_size_of_a_real_streamed_record(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.sse(chat_stream(["a ", "b ", "c"])))
    r = post(gw, "/chat/v1/chat/completions", {"messages": HI, "stream": True})
    rec = my_record(gw)
    assert rec["response"]["size"] == len(r.content) > 0
    assert rec["ai"]["proxy"]["usage"]["time_to_first_token"] is not None


# ----------------------------------------------------------------- consumers (9, 10)


def test_record_consumer_in_kongs_shape(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("ok")))
    post(gw, "/keyed/v1/chat/completions", {"messages": HI}, {"apikey": ALICE_KEY})
    assert my_record(gw)["consumer"] == {
        "id": "8d7c2a1e-0000-4000-8000-00000000a11c",
        "username": "alice",
        "custom_id": "team-a",
    }
    TAG["id"] += "-b"
    post(gw, "/keyed/v1/chat/completions", {"messages": HI}, {"apikey": TEAM_KEY})
    assert my_record(gw)["consumer"] == {"custom_id": "team-b"}  # no username made up


def test_configured_secrets_inside_payloads_and_context_are_redacted(
    gw: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(Reply.json(chat_completion(f"your key {ALICE_KEY} is noted")))
    body = {
        "messages": [
            {"role": "user", "content": f"my key is {ALICE_KEY}, bob's is {TEAM_KEY}"},
            {"role": "user", "content": f"and the provider's: {PROVIDER_KEY}."},
        ],
        "metadata": {"user_id": "u-1", "note": f"key={ALICE_KEY}"},
    }
    r = post(gw, "/keyed/v1/chat/completions", body, {"apikey": ALICE_KEY})
    assert r.status_code == 200
    rec = my_record(gw)
    text = json.dumps(rec)
    for secret in (ALICE_KEY, TEAM_KEY, PROVIDER_KEY):
        assert secret not in text
    payload = rec["ai"]["proxy"]["payload"]
    assert payload["request"]["messages"][0]["content"] == (
        "my key is [REDACTED], bob's is [REDACTED]"
    )
    assert payload["request"]["messages"][1]["content"] == "and the provider's: [REDACTED]."
    assert payload["response"]["choices"][0]["message"]["content"] == "your key [REDACTED] is noted"
    assert rec["context"]["metadata"]["note"] == "key=[REDACTED]"
    assert rec["context"]["user_id"] == "u-1"


# ------------------------------------------- usage of a stream that broke off (finding 11)


def test_a_stream_that_breaks_off_records_estimated_usage_and_cost(
    gw: Gateway, fake: FakeUpstream
) -> None:
    words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon"]
    fake.reply(Reply.sse(chat_stream(words), cut_after=4))  # role chunk and three words
    r = post(gw, "/chat/v1/chat/completions", {"messages": HI, "stream": True})
    assert '"upstream_disconnected"' in r.text
    rec = my_record(gw)
    usage = rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"
    assert usage["source"] == "estimated"
    assert usage["completion_tokens"] == 5  # "alpha beta gamma ": 17 characters
    assert usage["prompt_tokens"] > 0
    assert usage["cost"] == pytest.approx(
        (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    )
