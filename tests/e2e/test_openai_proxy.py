"""The gateway end to end for OpenAI-format traffic.

A real `mitmdump -s addons/gateway.py` in reverse mode, a fake OpenAI upstream that
speaks the wire format (JSON, SSE cut at arbitrary points, error statuses, dead and
slow servers), the official `openai` SDK as the client, and raw HTTP for bad input.
Each test checks what the client receives, what the upstream received, and the call
record file-log wrote.
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
    chunk,
    rechunk,
    sse,
)

SECRET = "sk-test-provider-secret-1234567890"

CONFIG = """
_format_version: "3.0"
services:
  - name: openai-fake
    url: http://127.0.0.1:9
    read_timeout: 1500
    routes:
      - name: chat
        paths: ["/openai/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TEST_KEY}"}
              model:
                provider: openai
                name: gpt-4o-mini
                options: {upstream_url: "UPSTREAM", input_cost: 0.15, output_cost: 0.6, max_tokens: 256}
              logging: {log_statistics: true, log_payloads: true}
      - name: any-model
        paths: ["/any/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: openai, options: {upstream_url: "UPSTREAM"}}
      - name: completions
        paths: ["/openai/v1/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/completions
              model: {provider: openai, name: gpt-3.5-turbo-instruct, options: {upstream_url: "UPSTREAM"}}
      - name: embeddings
        paths: ["/openai/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              model: {provider: openai, name: text-embedding-3-small, options: {upstream_url: "UPSTREAM"}}
      - name: no-stream
        paths: ["/nostream/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              response_streaming: deny
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "UPSTREAM"}}
      - name: always-stream
        paths: ["/always/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              response_streaming: always
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "UPSTREAM"}}
      - name: small
        paths: ["/small/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              max_request_body_size: 1024
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "UPSTREAM"}}
      - name: templated
        paths: ["~/models/(?<model>[a-z0-9.-]+)/v1/chat/completions$"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: openai, name: "$(uri_captures.model)", options: {upstream_url: "UPSTREAM"}}
      - name: dead
        paths: ["/dead/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: openai, name: gpt-4o-mini, options: {upstream_url: "DEAD"}}
      - name: raw
        paths: ["/raw"]
        plugins:
          - name: ai-proxy
            config:
              route_type: preserve
              auth: {param_name: key, param_value: "{vault://env/LLMITM_TEST_KEY}", param_location: query}
              model: {provider: openai, options: {upstream_url: "UPSTREAM"}}
              logging: {log_payloads: true}
  - name: plain-backend
    url: UPSTREAM/base
    routes:
      - name: plain
        paths: ["/plain"]
plugins:
  - name: file-log
    config: {path: "{records}"}
"""


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    dead = free_port()  # nothing listens here
    config = CONFIG.replace("UPSTREAM", upstream.url).replace("DEAD", f"http://127.0.0.1:{dead}")
    # Not quiet: the leak check below covers mitmdump's default log lines too.
    g = Gateway(tmp_path_factory.mktemp("gw"), config, quiet=False, env={"LLMITM_TEST_KEY": SECRET})
    g.wait_ready()
    yield g
    g.stop()
    # Nothing any test did may leak the provider key into a record or the log.
    assert SECRET not in g.records_path.read_text()
    assert SECRET not in g.log()


# Each test tags its requests with a unique X-Message-Id, to find its own record among
# those of other tests still being written.
TAG: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG["id"] = f"msg-{uuid.uuid4().hex}"


def tagged(headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Message-Id": TAG["id"], **(headers or {})}


def my_record(gw: Gateway) -> dict[str, Any]:
    """The record of this test's (last) request."""
    return gw.record(message_id=TAG["id"])


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/openai/v1",
        api_key="client-key",
        max_retries=0,
        default_headers=tagged(),
    )


# -------------------------------------------------------------------- success


def test_chat_answer_usage_and_record(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    fake.reply(Reply.json(chat_completion("2", prompt_tokens=20, completion_tokens=5)))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        extra_headers={"X-User-Id": "u-1", "X-Session-Id": "s-1"},
        temperature=0.9,
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "2"
    assert answer.usage.total_tokens == 25
    assert raw.headers["x-llm-model"] == "openai/gpt-4o-mini"
    assert int(raw.headers["x-llmitm-upstream-latency"]) >= 0
    assert int(raw.headers["x-llmitm-proxy-latency"]) >= 0

    sent = fake.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"  # route auth replaces the client's
    body = sent.json()
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 256
    assert "stream_options" not in body

    rec = my_record(gw)
    assert rec["status"] == "ok" and rec["route"] == {"name": "chat"}
    meta, usage = rec["ai"]["proxy"]["meta"], rec["ai"]["proxy"]["usage"]
    assert meta["provider_name"] == "openai" and meta["request_mode"] == "oneshot"
    assert meta["request_model"] == "gpt-4o-mini" and meta["response_model"] == "gpt-4o-mini"
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        20,
        5,
        25,
    )
    assert usage["source"] == "reported"
    assert usage["cost"] == pytest.approx((20 * 0.15 + 5 * 0.6) / 1e6)
    assert rec["ai"]["proxy"]["payload"]["request"]["messages"][1]["content"] == "1+1?"
    assert rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"] == "2"
    assert rec["context"]["user_id"] == "u-1" and rec["context"]["session_id"] == "s-1"
    assert rec["request"]["headers"]["authorization"] == "[REDACTED]"
    assert rec["latencies"]["request"] >= rec["latencies"]["proxy"] >= 0


def test_streamed_chat_arrives_chunk_by_chunk(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    words = ["The ", "answer ", "is ", "2."]
    # Events cut at 7-byte boundaries, with a pause before each word: the first token
    # must reach the client long before the stream ends.
    fake.reply(Reply.sse(rechunk(chat_stream(words, usage=(12, 4), pause=0.15), 7)))
    t0 = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "1+1?"}], stream=True
    )
    got, first_at = [], None
    for c in stream:
        assert c.usage is None  # the client did not ask for usage: no usage chunk
        if c.choices and c.choices[0].delta.content:
            first_at = first_at or time.monotonic() - t0
            got.append(c.choices[0].delta.content)
    total = time.monotonic() - t0
    assert "".join(got) == "The answer is 2."
    assert first_at is not None and first_at < total - 0.3  # streamed, not buffered

    sent = fake.last().json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    rec = my_record(gw)
    usage = rec["ai"]["proxy"]["usage"]
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["source"]) == (
        12,
        4,
        "reported",
    )
    assert 100 < usage["time_to_first_token"] < rec["latencies"]["request"] - 300
    assert (
        rec["ai"]["proxy"]["payload"]["response"]["choices"][0]["message"]["content"]
        == "The answer is 2."
    )


def test_stream_usage_chunk_kept_when_client_asks(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    fake.reply(Reply.sse(chat_stream(["ok"], usage=(7, 1))))
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7


def test_stream_ends_with_done_once(gw: Gateway, fake: FakeUpstream) -> None:
    # An OpenAI-compatible upstream that forgets [DONE]: the client still gets it, once.
    events = [e for e in chat_stream(["a", "b"]) if e != b"data: [DONE]\n\n"]
    fake.reply(Reply.sse(events))
    body = _post(
        gw,
        "/openai/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "stream": True},
    ).text
    assert body.endswith("data: [DONE]\n\n") and body.count("[DONE]") == 1


def test_streamed_parallel_tool_calls(fake: FakeUpstream, client: openai.OpenAI) -> None:
    def tc(index: int, **kw: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **kw}]}

    events = [
        sse(chunk({"role": "assistant", "content": None})),
        sse(
            chunk(
                tc(0, id="call_a", type="function", function={"name": "weather", "arguments": ""})
            )
        ),
        sse(chunk(tc(0, function={"arguments": '{"city":'}))),
        sse(chunk(tc(1, id="call_b", type="function", function={"name": "time", "arguments": ""}))),
        sse(chunk(tc(0, function={"arguments": '"Paris"}'}))),
        sse(chunk(tc(1, function={"arguments": '{"tz":"CET"}'}))),
        sse(chunk({}, "tool_calls")),
        b"data: [DONE]\n\n",
    ]
    fake.reply(Reply.sse(rechunk(events, 11)))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "weather and time in Paris"}],
        tools=[
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}},
        ],
        stream=True,
    ):
        for d in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
            entry["id"] += d.id or ""
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["args"] += (d.function.arguments or "") if d.function else ""
        finish = c.choices[0].finish_reason or finish
    assert calls == {
        0: {"id": "call_a", "name": "weather", "args": '{"city":"Paris"}'},
        1: {"id": "call_b", "name": "time", "args": '{"tz":"CET"}'},
    }
    assert finish == "tool_calls"


def test_image_parts_pass_through(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.reply(Reply.json(chat_completion("A cat.")))
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    out = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": parts}]
    )
    assert out.choices[0].message.content == "A cat."
    assert fake.last().json()["messages"][0]["content"] == parts


def test_completions(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.reply(
        Reply.json(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "gpt-3.5-turbo-instruct",
                "choices": [
                    {"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
    )
    out = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hello")
    assert out.choices[0].text == " world"
    assert fake.last().path == "/v1/completions"


def test_streamed_completions(fake: FakeUpstream, client: openai.OpenAI) -> None:
    def c(text: str, finish: str | None = None) -> bytes:
        return sse(
            {
                "id": "c",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            }
        )

    fake.reply(Reply.sse([c("a"), c("b"), c("", "stop"), b"data: [DONE]\n\n"]))
    text = "".join(
        x.choices[0].text
        for x in client.completions.create(model="gpt-3.5-turbo-instruct", prompt="p", stream=True)
        if x.choices
    )
    assert text == "ab"


def test_embeddings(gw: Gateway, fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.reply(
        Reply.json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    )
    out = client.embeddings.create(
        model="text-embedding-3-small", input="hello world", encoding_format="float"
    )
    assert out.data[0].embedding == [0.1, -0.2, 0.3]
    assert fake.last().path == "/v1/embeddings"
    usage = my_record(gw)["ai"]["proxy"]["usage"]
    assert usage["prompt_tokens"] == 2 and usage["completion_tokens"] == 0


def test_a_large_embeddings_answer_comes_back_whole(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    """Over 1 MB, the gateway reads the answer in a worker thread: it must arrive the
    same, with its usage recorded."""
    vectors = [[round((i * 3072 + j) / 1e6, 6) for j in range(3072)] for i in range(48)]
    fake.reply(
        Reply.json(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(vectors)
                ],
                "model": "text-embedding-3-large",
                "usage": {"prompt_tokens": 96, "total_tokens": 96},
            }
        )
    )
    assert len(fake_body := json.dumps(vectors)) > 1 << 20, len(fake_body)
    out = client.embeddings.create(
        model="text-embedding-3-small", input=["x"] * 48, encoding_format="float"
    )
    assert [d.embedding for d in out.data] == vectors
    assert my_record(gw)["ai"]["proxy"]["usage"]["prompt_tokens"] == 96


def test_an_upstream_answer_nested_too_deeply_is_a_502(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    fake.reply(Reply(200, {"content-type": "application/json"}, b"[" * 100_000))
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 502
    rec = my_record(gw)
    assert rec["error"]["source"] == "upstream" and rec["response"]["status"] == 502


def test_client_model_used_when_route_has_none(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion(model="gpt-4.1")))
    c = openai.OpenAI(
        base_url=f"{gw.url}/any/v1",
        api_key="sk-client-own",
        max_retries=0,
        default_headers=tagged(),
    )
    c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    sent = fake.last()
    assert sent.json()["model"] == "gpt-4.1"
    assert (
        sent.headers["authorization"] == "Bearer sk-client-own"
    )  # no route auth: the client's goes through


def test_model_from_uri_capture(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion(model="gpt-4.1-mini")))
    c = openai.OpenAI(base_url=f"{gw.url}/models/gpt-4.1-mini/v1", api_key="k", max_retries=0)
    c.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "x"}])
    assert fake.last().json()["model"] == "gpt-4.1-mini"


def test_response_streaming_always(fake: FakeUpstream, gw: Gateway) -> None:
    fake.reply(Reply.sse(chat_stream(["forced"])))
    r = _post(gw, "/always/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert '"forced"' in r.text and fake.last().json()["stream"] is True


def test_preserve_route_passes_through(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json({"object": "list", "data": [{"id": "gpt-4o"}]}))
    r = httpx.get(f"{gw.url}/raw/v1/models?limit=1", headers=tagged())
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "gpt-4o"
    sent = fake.last()
    assert sent.method == "GET" and sent.path.startswith("/v1/models?")
    assert f"key={SECRET}" in sent.path and "limit=1" in sent.path  # auth as a query param
    rec = my_record(gw)
    assert SECRET not in json.dumps(rec)


def test_route_without_ai_proxy_is_proxied_to_its_service(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json({"ok": True}))
    r = httpx.post(f"{gw.url}/plain/things?x=1", json={"a": 1}, headers=tagged())
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert fake.last().path == "/base/things?x=1" and fake.last().json() == {"a": 1}
    rec = my_record(gw)
    assert rec["route"] == {"name": "plain"} and rec["ai"] is None and rec["status"] == "ok"
    # mitmproxy did the upstream I/O: timed as the proxy's part, and no LLM involved
    assert rec["latencies"]["proxy"] is not None and rec["latencies"]["llm"] is None


# --------------------------------------------------------------------- errors


def _post(
    gw: Gateway, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{gw.url}{path}", content=content, timeout=10, headers=tagged(headers))


def _assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    assert "type" in err and "code" in err
    if code:
        assert err["code"] == code
    return err


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "no role"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, "max_tokens"),
    ],
)
def test_bad_requests_are_400(
    gw: Gateway, fake: FakeUpstream, body: Any, param: str | None
) -> None:
    err = _assert_openai_error(_post(gw, "/openai/v1/chat/completions", body), 400)
    assert err["param"] == param
    assert fake.received == []  # nothing reached the provider


def test_wrong_model_is_400_whatever_the_content_type(gw: Gateway, fake: FakeUpstream) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    for ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
        r = _post(gw, "/openai/v1/chat/completions", body, headers={"content-type": ctype})
        err = _assert_openai_error(r, 400)
        assert err["message"] == "cannot use own model - must be: gpt-4o-mini"
    assert fake.received == []


def test_unknown_route_is_404(gw: Gateway) -> None:
    _assert_openai_error(_post(gw, "/nowhere", {}), 404, "route_not_found")


def test_oversized_body_is_413(gw: Gateway, fake: FakeUpstream) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    err = _assert_openai_error(
        _post(gw, "/small/v1/chat/completions", big), 413, "request_too_large"
    )
    assert "1024" in err["message"]
    assert fake.received == []


def test_streaming_denied_is_400(gw: Gateway) -> None:
    r = _post(
        gw,
        "/nostream/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    err = _assert_openai_error(r, 400)
    assert err["message"] == "response streaming is not enabled for this LLM"


@pytest.mark.parametrize(
    "reply, status, message",
    [
        (
            Reply.json(
                {
                    "error": {
                        "message": "Invalid 'messages'",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": None,
                    }
                },
                400,
            ),
            400,
            "Invalid 'messages'",
        ),
        (
            Reply.json(
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                401,
            ),
            401,
            "Incorrect API key provided",
        ),
        (
            Reply.json(
                {
                    "error": {
                        "message": "Rate limit reached",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                },
                429,
                {"retry-after": "7"},
            ),
            429,
            "Rate limit reached",
        ),
        (
            Reply(
                500,
                {"content-type": "text/html"},
                b"<html><body><h1>500 Internal Server Error</h1></body></html>",
            ),
            500,
            "HTML error page",
        ),
    ],
)
def test_upstream_errors_keep_status_and_message(
    gw: Gateway, fake: FakeUpstream, reply: Reply, status: int, message: str
) -> None:
    fake.reply(reply)
    r = _post(gw, "/openai/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    err = _assert_openai_error(r, status)
    assert message in err["message"]
    if status == 429:
        assert r.headers["retry-after"] == "7"
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"
    assert rec["error"]["status"] == status


def test_upstream_error_on_stream_request_is_plain_json(
    gw: Gateway, fake: FakeUpstream, client: openai.OpenAI
) -> None:
    fake.reply(
        Reply.json(
            {
                "error": {
                    "message": "quota exceeded",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
            429,
        )
    )
    with pytest.raises(openai.RateLimitError) as e:
        list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert "quota exceeded" in str(e.value)


@pytest.mark.parametrize("stream", [False, True])
def test_dead_upstream_is_502(gw: Gateway, stream: bool) -> None:
    r = _post(
        gw,
        "/dead/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "stream": stream},
    )
    err = _assert_openai_error(r, 502, "upstream_unreachable")
    assert "127.0.0.1" in err["message"]
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("stream", [False, True])
def test_silent_upstream_is_504_after_read_timeout(
    gw: Gateway, fake: FakeUpstream, stream: bool
) -> None:
    fake.reply(Reply(hang=True))
    t0 = time.monotonic()
    r = _post(
        gw,
        "/openai/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "stream": stream},
    )
    waited = time.monotonic() - t0
    _assert_openai_error(r, 504, "upstream_timeout")
    assert 1.4 < waited < 5  # the service's read_timeout is 1500 ms


def test_upstream_cut_mid_stream_ends_with_an_error_event(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.sse(chat_stream(["one ", "two ", "three"]), cut_after=2))
    r = _post(
        gw,
        "/openai/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert '"one "' in r.text
    assert events[-1] == "data: [DONE]"
    err = json.loads(events[-2].removeprefix("data: "))["error"]
    assert err["code"] == "upstream_disconnected"
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "upstream"


def test_upstream_stalling_mid_stream_times_out(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(
        Reply.sse(
            [sse(chunk({"role": "assistant", "content": "partial"})), 3.0, b"data: [DONE]\n\n"]
        )
    )
    r = _post(
        gw,
        "/openai/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert '"partial"' in r.text
    assert '"upstream_timeout"' in r.text and r.text.endswith("data: [DONE]\n\n")


def test_client_abort_mid_stream_is_recorded(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.sse(chat_stream(["a "] * 50, pause=0.05)))
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        body = json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True}).encode()
        s.sendall(
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"x-message-id: %b\r\ncontent-length: %d\r\n\r\n%b"
            % (TAG["id"].encode(), len(body), body)
        )
        got = b""
        while b"data:" not in got:
            data = s.recv(65536)
            assert data, "the gateway closed the stream"
            got += data
    rec = my_record(gw)
    assert rec["status"] == "client_aborted"
    # the upstream connection is closed too: no tokens keep being generated for nobody
    deadline = time.time() + 3
    while fake.disconnects == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert fake.disconnects == 1


def test_context_headers_and_body_metadata(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion()))
    headers = {
        "X-User-Id": "user-12345",
        "X-Session-Id": "session-abc",
        "X-Chat-Id": "chat-789",
        "X-Message-Id": TAG["id"],
        "X-Organization-Id": "org-acme",
        "X-Project-Id": "project-xyz",
    }
    body = {
        "messages": [{"role": "user", "content": "Recommend a movie"}],
        "metadata": {"user_id": "ignored-header-wins", "features": {"web_search": True}},
    }
    _post(gw, "/openai/v1/chat/completions", body, headers=headers)
    ctx = my_record(gw)["context"]
    assert ctx["user_id"] == "user-12345" and ctx["project_id"] == "project-xyz"
    assert ctx["organization_id"] == "org-acme" and ctx["message_id"] == TAG["id"]
    assert ctx["metadata"]["features"] == {"web_search": True}
    assert "metadata" not in fake.last().json()  # tracing metadata is the gateway's, not OpenAI's
