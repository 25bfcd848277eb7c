"""providers/openai.py: request building, answers, errors and the stream translator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from addons import llm_request
from providers import sse
from providers.base import CallSpec, ProviderError, RouteType
from providers.openai import PROVIDER, OpenAIStream, usage_from_openai
from providers.options import ModelConfig
from tests.unit.conftest import byte_by_byte, every_split, fixture, fixture_json, spec

CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE = (
    RouteType.CHAT,
    RouteType.COMPLETIONS,
    RouteType.EMBEDDINGS,
    RouteType.PRESERVE,
)


def sent(s: CallSpec) -> dict[str, Any]:
    """The JSON body build_request sends upstream."""
    return json.loads(PROVIDER.build_request(s).body)


# ------------------------------------------------------------------ build_request: URLs


@pytest.mark.parametrize(
    "route_type, upstream_url, expected",
    [
        (CHAT, None, "https://api.openai.com/v1/chat/completions"),
        (COMPLETIONS, None, "https://api.openai.com/v1/completions"),
        (EMBEDDINGS, None, "https://api.openai.com/v1/embeddings"),
        # a bare origin keeps the provider's path
        (CHAT, "http://127.0.0.1:11434", "http://127.0.0.1:11434/v1/chat/completions"),
        (CHAT, "http://127.0.0.1:11434/", "http://127.0.0.1:11434/v1/chat/completions"),
        (EMBEDDINGS, "https://llm.internal", "https://llm.internal/v1/embeddings"),
        # a URL with a path is used as written
        (
            CHAT,
            "https://gw.example/openai/v1/chat/completions",
            "https://gw.example/openai/v1/chat/completions",
        ),
        (COMPLETIONS, "https://gw.example/custom", "https://gw.example/custom"),
        (CHAT, "https://gw.example/x?api-version=2", "https://gw.example/x?api-version=2"),
    ],
)
def test_upstream_url_rules(route_type: RouteType, upstream_url: str | None, expected: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "input": "hi"}
    req = PROVIDER.build_request(spec(route_type, body, upstream_url=upstream_url))
    assert req.url == expected
    assert req.method == "POST"


@pytest.mark.parametrize(
    "upstream_url, upstream_path, path, query, expected",
    [
        (None, None, "/v1/models", "", "https://api.openai.com/v1/models"),
        (
            None,
            None,
            "/v1/files",
            "limit=2&after=f",
            "https://api.openai.com/v1/files?limit=2&after=f",
        ),
        ("http://127.0.0.1:9000", None, "/v1/responses", "", "http://127.0.0.1:9000/v1/responses"),
        ("http://127.0.0.1:9000/", "/fixed", "/ignored", "a=1", "http://127.0.0.1:9000/fixed?a=1"),
    ],
)
def test_preserve_forwards_the_clients_request_untouched(
    upstream_url: str | None, upstream_path: str | None, path: str, query: str, expected: str
) -> None:
    raw = b'{"model": "whatever", "top_k": 3, "stream": false, "odd": [1,2]}'
    s = CallSpec(
        route_type=PRESERVE,
        body=json.loads(raw),
        model=None,
        options=spec(upstream_url=upstream_url, upstream_path=upstream_path).options,
        stream=False,
        path=path,
        query=query,
        method="PUT",
        raw_body=raw,
    )
    req = PROVIDER.build_request(s)
    assert req.url == expected
    assert req.method == "PUT"
    assert req.body == raw  # byte for byte: preserve means untouched


# --------------------------------------------------------------- build_request: bodies


MESSAGES = [{"role": "user", "content": "hi"}]


def test_model_is_set_from_the_gateways_rule() -> None:
    assert (
        sent(spec(CHAT, {"messages": MESSAGES, "model": "gpt-4"}, model="gpt-4o"))["model"]
        == "gpt-4o"
    )
    assert sent(spec(CHAT, {"messages": MESSAGES}, model="gpt-4o"))["model"] == "gpt-4o"
    # no gateway model (e.g. preserve-like use): the client's stays
    assert sent(spec(CHAT, {"messages": MESSAGES, "model": "mine"}, model=None))["model"] == "mine"


def test_stream_injects_include_usage_and_keeps_the_clients_other_stream_options() -> None:
    body = {
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": False},
    }
    s = spec(CHAT, body, stream=True)
    req = PROVIDER.build_request(s)
    out = json.loads(req.body)
    assert out["stream"] is True
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert req.stream is True
    assert req.headers["accept"] == "text/event-stream"
    # the client's body is not mutated (it is kept for the call record)
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": False}


@pytest.mark.parametrize("route_type", [CHAT, COMPLETIONS])
def test_stream_without_client_stream_options_asks_for_usage(route_type: RouteType) -> None:
    body = {"messages": MESSAGES, "prompt": "hi", "stream": True}
    out = sent(spec(route_type, body, stream=True))
    assert out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "client",
    [
        {"stream": False},
        {"stream": False, "stream_options": {"include_usage": True}},
        {"stream_options": {"include_usage": True}},
        {},
    ],
)
def test_non_stream_sends_no_stream_fields(client: dict[str, Any]) -> None:
    req = PROVIDER.build_request(spec(CHAT, {"messages": MESSAGES, **client}))
    out = json.loads(req.body)
    assert "stream" not in out and "stream_options" not in out
    assert req.stream is False
    assert req.headers["accept"] == "application/json"
    assert req.headers["content-type"] == "application/json"


def test_top_k_is_not_sent_to_openai_but_other_fields_pass() -> None:
    body = {
        "messages": MESSAGES,
        "top_k": 5,
        "top_p": 0.9,
        "user": "u1",
        "tools": [{"type": "function"}],
    }
    out = sent(spec(CHAT, body))
    assert "top_k" not in out
    assert out["top_p"] == 0.9 and out["user"] == "u1" and out["tools"] == [{"type": "function"}]


def _kong_like(request_fixture: str, model: str) -> dict[str, Any]:
    """Build the upstream body the way the gateway does, from Kong's client request."""
    body = fixture_json(request_fixture)
    route_type = CHAT if "chat" in request_fixture else COMPLETIONS
    model_cfg = ModelConfig(
        provider="openai", name=model, options={"max_tokens": 512, "temperature": 0.5}
    )
    llm_request.validate(route_type, body)
    resolved = llm_request.resolve_model(route_type, model_cfg.name, body)
    upstream = llm_request.apply_options(
        route_type, llm_request.strip_gateway_fields(body), model_cfg
    )
    s = CallSpec(route_type, upstream, resolved, model_cfg.options, stream=False)
    req = PROVIDER.build_request(s)
    assert (
        req.url
        == f"https://api.openai.com/v1/{'chat/completions' if route_type is CHAT else 'completions'}"
    )
    return json.loads(req.body)


@pytest.mark.parametrize(
    "request_fixture, expected_fixture, model",
    [
        (
            "unit/requests/llm-v1-chat.json",
            "unit/expected-requests/openai/llm-v1-chat.json",
            "gpt-4",
        ),
        (
            "unit/requests/llm-v1-completions.json",
            "unit/expected-requests/openai/llm-v1-completions.json",
            "gpt-3.5-turbo-instruct",
        ),
    ],
)
def test_upstream_body_matches_kongs_expected_request(
    request_fixture: str, expected_fixture: str, model: str
) -> None:
    ours = _kong_like(request_fixture, model)
    kong = fixture_json(expected_fixture)
    # Deliberate difference: Kong sends "stream": false explicitly; we omit stream and
    # stream_options on one-shot calls (some OpenAI-compatible servers reject
    # stream_options without stream, and false is OpenAI's default).
    assert kong.pop("stream") is False
    assert "stream" not in ours
    assert ours == kong


# ------------------------------------------------------------------- parse_response


REAL_RESPONSES = [
    ("unit/real-responses/openai/llm-v1-chat.json", CHAT),
    ("unit/real-responses/openai/llm-v1-completions.json", COMPLETIONS),
    ("openai/llm-v1-chat/responses/good.json", CHAT),
    ("openai/llm-v1-completions/responses/good.json", COMPLETIONS),
    ("openai/llm-v1-embeddings/responses/good.json", EMBEDDINGS),
]


@pytest.mark.parametrize("rel, route_type", REAL_RESPONSES, ids=[r for r, _ in REAL_RESPONSES])
def test_parse_response_on_real_answers(rel: str, route_type: RouteType) -> None:
    raw = fixture(rel).read_bytes()
    data = json.loads(raw)
    reply = PROVIDER.parse_response(
        spec(route_type), 200, {"content-type": "application/json"}, raw
    )
    assert reply.body == raw  # an OpenAI answer reaches the client byte for byte
    assert reply.data == data
    assert reply.model == data["model"]
    u = data["usage"]
    assert reply.usage is not None and not reply.usage.estimated
    assert reply.usage.prompt_tokens == u["prompt_tokens"]
    assert reply.usage.completion_tokens == u.get("completion_tokens", 0)
    assert reply.usage.total_tokens == u["total_tokens"]


@pytest.mark.parametrize(
    "route_type, body, missing",
    [
        (
            CHAT,
            fixture("openai/llm-v1-chat/responses/bad_upstream_response.json").read_bytes(),
            "choices",
        ),
        (COMPLETIONS, b'{"id": "cmpl-1", "usage": {"prompt_tokens": 1}}', "choices"),
        (EMBEDDINGS, b'{"object": "list", "model": "m"}', "data"),
    ],
)
def test_a_200_without_the_answer_is_a_502_naming_what_is_missing(
    route_type: RouteType, body: bytes, missing: str
) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.parse_response(spec(route_type), 200, {}, body)
    assert e.value.status == 502
    assert f"'{missing}'" in e.value.message
    assert e.value.to_openai()["error"]["message"] == e.value.message


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"", b"[1, 2]", b'"text"', b"{truncated"])
def test_a_200_that_is_not_a_json_object_is_a_502(body: bytes) -> None:
    with pytest.raises(ProviderError) as e:
        PROVIDER.parse_response(spec(CHAT), 200, {}, body)
    assert e.value.status == 502
    assert "JSON" in e.value.message


def test_preserve_answers_pass_through_even_when_not_json() -> None:
    s = spec(PRESERVE, model=None)
    reply = PROVIDER.parse_response(s, 200, {}, b"plain text")
    assert reply.body == b"plain text" and reply.usage is None
    raw = fixture("openai/llm-v1-chat/responses/good.json").read_bytes()
    reply = PROVIDER.parse_response(s, 200, {}, raw)
    assert reply.body == raw and reply.usage is not None and reply.usage.prompt_tokens == 25


@pytest.mark.parametrize(
    "usage, expected",
    [
        (
            {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 192},
            },
            (2006, 300, 1920, 192),
        ),
        ({"prompt_tokens": 4, "total_tokens": 4}, (4, 0, 0, 0)),
        ({"total_tokens": 9}, (9, 0, 0, 0)),  # only a total: counted as input
        ({"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": None}, (3, 1, 0, 0)),
        ({"prompt_tokens": "3", "completion_tokens": True}, (0, 0, 0, 0)),
    ],
)
def test_usage_from_openai(usage: dict[str, Any], expected: tuple[int, ...]) -> None:
    u = usage_from_openai(usage)
    assert u is not None
    assert (
        u.prompt_tokens,
        u.completion_tokens,
        u.cache_read_tokens,
        u.reasoning_tokens,
    ) == expected


def test_answer_without_usage_has_no_usage() -> None:
    reply = PROVIDER.parse_response(spec(CHAT), 200, {}, b'{"choices": [], "model": "m"}')
    assert reply.usage is None


# ----------------------------------------------------------------------- parse_error


@pytest.mark.parametrize(
    "rel, status, message, type_, code",
    [
        (
            "openai/llm-v1-chat/responses/bad_request.json",
            400,
            "'messages' is a required property",
            "invalid_request_error",
            None,
        ),
        (
            "openai/llm-v1-completions/responses/bad_request.json",
            400,
            "you must provide a 'prompt' parameter",
            "invalid_request_error",
            None,
        ),
        (
            "openai/llm-v1-chat/responses/unauthorized.json",
            401,
            (
                "Incorrect API key provided: wro****ey. You can find your API key at "
                "https://platform.openai.com/account/api-keys. This is a mocked response."
            ),
            "invalid_request_error",
            "invalid_api_key",
        ),
    ],
)
def test_parse_error_keeps_status_and_upstream_message(
    rel: str, status: int, message: str, type_: str, code: str | None
) -> None:
    err = PROVIDER.parse_error(
        status, {"content-type": "application/json"}, fixture(rel).read_bytes()
    )
    assert err.status == status
    assert err.to_openai() == {
        "error": {"message": message, "type": type_, "param": None, "code": code}
    }


def test_parse_error_on_an_html_page_gives_a_readable_message() -> None:
    html = fixture("openai/llm-v1-chat/responses/internal_server_error.html").read_bytes()
    err = PROVIDER.parse_error(500, {"content-type": "text/html"}, html)
    assert err.status == 500
    assert err.type == "api_error"
    assert "<" not in err.message and "html>" not in err.message.lower()
    assert "500" in err.message and "openai" in err.message
    json.loads(err.body())  # the client gets JSON in OpenAI's shape


@pytest.mark.parametrize(
    "status, body, message",
    [
        (429, b"Too Many Requests", "Too Many Requests"),
        (503, b"", "openai upstream returned HTTP 503 with an empty body"),
        (400, b'{"error": "bad model"}', "bad model"),
        (404, b'{"message": "no such route"}', "no such route"),
    ],
)
def test_parse_error_on_other_shapes(status: int, body: bytes, message: str) -> None:
    err = PROVIDER.parse_error(status, {}, body)
    assert (err.status, err.message) == (status, message)


# ------------------------------------------------------------------- stream translator


RECORDED_CHAT = fixture("unit/streaming-chunk-formats/text-event-stream/input.bin").read_bytes()


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, index: int = 0, **extra: Any
) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1720000000,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
        ],
    }
    obj.update(extra)
    return sse.encode(obj)


def usage_chunk(prompt: int = 17, completion: int = 5, cached: int = 0) -> bytes:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return sse.encode(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1720000000,
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": usage,
        }
    )


TEXT_STREAM = [
    chunk({"role": "assistant", "content": "", "refusal": None}),
    chunk({"content": "Hello"}),
    chunk({"content": ", wor"}),
    chunk({"content": "ld\u2028!"}),
    chunk({}, "stop"),
]


def tool(
    index: int, *, id: str | None = None, name: str | None = None, args: str = ""
) -> dict[str, Any]:
    tc: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if id:
        tc["id"] = id
        tc["type"] = "function"
        tc["function"]["name"] = name
    return tc


def tool_chunk(*calls: dict[str, Any], role: bool = False) -> bytes:
    delta: dict[str, Any] = {"tool_calls": list(calls)}
    if role:
        delta = {"role": "assistant", "content": None, **delta}
    return chunk(delta)


# Two parallel calls as OpenAI streams them: id and name in each call's first delta,
# arguments in fragments, the two calls' fragments interleaved.
TOOL_STREAM = [
    tool_chunk(tool(0, id="call_weather", name="get_weather"), role=True),
    tool_chunk(tool(0, args='{"lo')),
    tool_chunk(tool(1, id="call_time", name="get_time")),
    tool_chunk(tool(0, args='cation": "Pa')),
    tool_chunk(tool(1, args='{"tz": ')),
    tool_chunk(tool(0, args='ris"}')),
    tool_chunk(tool(1, args='"Europe/Paris"}')),
    chunk({}, "tool_calls"),
]

EXPECTED_CALLS = [
    {
        "id": "call_weather",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
    },
    {
        "id": "call_time",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
    },
]


def translate(
    chunks: list[bytes], *, wants_usage: bool = False, route_type: RouteType = CHAT
) -> tuple[bytes, OpenAIStream]:
    t = PROVIDER.stream_translator(spec(route_type, stream=True, wants_usage=wants_usage))
    out: list[bytes] = []
    for c in chunks:
        got = t.feed(c)
        assert all(isinstance(b, bytes) and b for b in got)  # never b"": it ends HTTP/1.1 chunked
        out += got
    out += t.finish()
    return b"".join(out), t


STREAMS = {
    "kong-recorded": RECORDED_CHAT,
    "text-with-usage": b"".join(TEXT_STREAM) + usage_chunk() + sse.DONE,
    "tools-with-usage": b"".join(TOOL_STREAM) + usage_chunk(40, 30) + sse.DONE,
}


@pytest.mark.parametrize("wants_usage", [False, True], ids=["no-usage", "usage"])
@pytest.mark.parametrize("raw", STREAMS.values(), ids=STREAMS.keys())
def test_every_split_gives_the_same_bytes_and_answer(raw: bytes, wants_usage: bool) -> None:
    whole, t = translate([raw], wants_usage=wants_usage)
    answer = t.assembled()
    for chunks in every_split(raw):
        out, t2 = translate(chunks, wants_usage=wants_usage)
        assert out == whole, f"split at byte {len(chunks[0])}"
        assert t2.assembled() == answer
        assert t2.usage == t.usage
    out, t3 = translate(byte_by_byte(raw), wants_usage=wants_usage)
    assert out == whole and t3.assembled() == answer


def test_recorded_kong_stream_passes_through_and_assembles() -> None:
    out, t = translate([RECORDED_CHAT])
    # every event is forwarded as it came; [DONE] is re-emitted once, last
    assert out == RECORDED_CHAT[: RECORDED_CHAT.rindex(b"data: [DONE]")] + sse.DONE
    answer = t.assembled()
    assert answer["id"] == "chatcmpl-9hQFArK1oMZcRwaIa86RGwrjVNmeY"
    assert answer["model"] == "gpt-4-0613"
    assert answer["object"] == "chat.completion"
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "2"}, "finish_reason": "stop"}
    ]
    assert t.usage is None and "usage" not in answer  # this upstream reported none
    assert t.error is None and t.started


def test_recorded_kong_completions_frame() -> None:
    raw = fixture("unit/real-stream-frames/openai/llm-v1-completions.txt").read_bytes()
    for chunks in [[raw], *every_split(raw)]:
        out, t = translate(chunks, route_type=COMPLETIONS)
        assert out.endswith(sse.DONE) and out.count(b"[DONE]") == 1
        answer = t.assembled()
        assert answer["object"] == "text_completion"
        assert answer["choices"][0]["text"] == "the answer"
        assert t.started


def test_recorded_kong_chat_frame() -> None:
    raw = fixture("unit/real-stream-frames/openai/llm-v1-chat.txt").read_bytes()
    out, t = translate([raw])
    assert json.loads(out.split(b"\n\n")[0].removeprefix(b"data: "))["choices"][0]["delta"] == {
        "content": "the answer"
    }
    assert t.assembled()["choices"][0]["message"]["content"] == "the answer"


def test_usage_chunk_is_dropped_when_the_client_did_not_ask_and_usage_still_captured() -> None:
    raw = b"".join(TEXT_STREAM) + usage_chunk(17, 5, cached=10) + sse.DONE
    out, t = translate([raw], wants_usage=False)
    assert out == b"".join(TEXT_STREAM) + sse.DONE
    assert b'"usage"' not in out
    assert t.usage is not None
    assert (t.usage.prompt_tokens, t.usage.completion_tokens, t.usage.cache_read_tokens) == (
        17,
        5,
        10,
    )
    assert t.assembled()["usage"] == {
        "prompt_tokens": 17,
        "completion_tokens": 5,
        "total_tokens": 22,
        "prompt_tokens_details": {"cached_tokens": 10},
    }


def test_usage_chunk_is_kept_when_the_client_asked() -> None:
    raw = b"".join(TEXT_STREAM) + usage_chunk() + sse.DONE
    out, t = translate([raw], wants_usage=True)
    assert out == raw
    assert t.usage is not None and t.usage.total_tokens == 22


def test_usage_on_a_chunk_with_choices_is_captured_and_the_chunk_kept() -> None:
    # some OpenAI-compatible servers put usage on the last content chunk
    last = chunk({}, "stop", usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    raw = TEXT_STREAM[0] + TEXT_STREAM[1] + last
    out, t = translate([raw], wants_usage=False)
    assert out == raw + sse.DONE
    assert t.usage is not None and t.usage.total_tokens == 5


@pytest.mark.parametrize(
    "raw",
    [
        b"".join(TEXT_STREAM) + sse.DONE,
        b"".join(TEXT_STREAM),  # upstream omitted [DONE]
        b"".join(TEXT_STREAM) + b"data: [DONE]",  # without the final blank line
        b"".join(TEXT_STREAM[:2]),  # cut short
        sse.DONE + b"".join(TEXT_STREAM),  # a stray early [DONE] does not end the client's stream
        b"",
    ],
)
def test_done_comes_last_exactly_once(raw: bytes) -> None:
    out, _ = translate([raw])
    assert out.endswith(sse.DONE)
    assert out.count(b"[DONE]") == 1


def test_parallel_tool_calls_assemble_in_index_order() -> None:
    raw = b"".join(TOOL_STREAM) + sse.DONE
    out, t = translate([raw])
    assert out == raw
    message = t.assembled()["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] is None
    assert message["message"]["tool_calls"] == EXPECTED_CALLS
    for call in message["message"]["tool_calls"]:
        json.loads(call["function"]["arguments"])


def test_tool_calls_are_ordered_by_index_not_by_arrival() -> None:
    raw = b"".join(
        [
            tool_chunk(tool(1, id="call_time", name="get_time"), role=True),
            tool_chunk(tool(0, id="call_weather", name="get_weather")),
            tool_chunk(tool(1, args='{"tz": "Europe/Paris"}')),
            tool_chunk(tool(0, args='{"location": ')),
            tool_chunk(tool(0, args='"Paris"}')),
            chunk({}, "tool_calls"),
        ]
    )
    _, t = translate([raw])
    assert t.assembled()["choices"][0]["message"]["tool_calls"] == EXPECTED_CALLS


def test_two_tool_calls_in_one_delta() -> None:
    raw = tool_chunk(
        tool(0, id="call_weather", name="get_weather", args='{"location": "Paris"}'),
        tool(1, id="call_time", name="get_time", args='{"tz": "Europe/Paris"}'),
        role=True,
    )
    _, t = translate([raw])
    assert t.assembled()["choices"][0]["message"]["tool_calls"] == EXPECTED_CALLS


def test_several_choices_assemble_separately() -> None:
    raw = (
        chunk({"role": "assistant", "content": "A"}, index=0)
        + chunk({"role": "assistant", "content": "B"}, index=1)
        + chunk({"content": "a"}, index=0)
        + chunk({"content": "b"}, "length", index=1)
        + chunk({}, "stop", index=0)
    )
    _, t = translate([raw])
    choices = t.assembled()["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "Aa", "stop"),
        (1, "Bb", "length"),
    ]


def test_reasoning_deltas_are_kept_apart_from_content() -> None:
    raw = (
        chunk({"role": "assistant", "reasoning_content": "think "})
        + chunk({"reasoning_content": "more"})
        + chunk({"content": "answer"})
        + chunk({}, "stop")
    )
    _, t = translate([raw])
    message = t.assembled()["choices"][0]["message"]
    assert message["reasoning_content"] == "think more"
    assert message["content"] == "answer"


def test_finish_with_an_error_appends_an_openai_error_event_before_done() -> None:
    t = PROVIDER.stream_translator(spec(CHAT, stream=True))
    out = t.feed(b"".join(TEXT_STREAM[:2]))
    tail = t.finish(ProviderError(504, "upstream read timeout", "timeout_error"))
    assert tail[-1] == sse.DONE
    assert json.loads(tail[-2].decode().removeprefix("data: ")) == {
        "error": {
            "message": "upstream read timeout",
            "type": "timeout_error",
            "param": None,
            "code": None,
        }
    }
    assert t.error is not None and t.error.status == 504
    assert b"".join(out) == b"".join(TEXT_STREAM[:2])


@pytest.mark.parametrize(
    "cut", [b'data: {"choices": [{"delta": {"content": "Hel', b"data: [DO", b"da"]
)
def test_an_upstream_cut_mid_event_sends_the_client_no_half_event(cut: bytes) -> None:
    t = PROVIDER.stream_translator(spec(CHAT, stream=True))
    out = t.feed(b"".join(TEXT_STREAM[:2]) + cut)
    out += t.finish(ProviderError(502, "upstream connection lost"))
    # what an SDK does: parse every event before [DONE] as JSON
    events = [e.data for e in sse.SSEDecoder().feed(b"".join(out))]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    parsed = [json.loads(d) for d in events[:-1]]
    assert parsed[-1]["error"]["message"] == "upstream connection lost"
    assert len(parsed) == 3


def test_a_complete_last_event_without_blank_line_is_kept_on_error() -> None:
    t = PROVIDER.stream_translator(spec(CHAT, stream=True))
    last = TEXT_STREAM[1].rstrip(b"\n")
    out = t.feed(TEXT_STREAM[0] + last)
    out += t.finish(ProviderError(502, "upstream connection lost"))
    assert t.assembled()["choices"][0]["message"]["content"] == "Hello"
    assert b"".join(out).count(b"Hello") == 1


@pytest.mark.parametrize(
    "event, message",
    [
        (
            b'data: {"error": {"message": "The server is overloaded", "type": "server_error"}}\n\n',
            "The server is overloaded",
        ),
        (
            b'event: error\ndata: {"error": {"message": "The server is overloaded"}}\n\n',
            "The server is overloaded",
        ),
        (
            b'event: error\ndata: {"message": "The server is overloaded"}\n\n',
            "The server is overloaded",
        ),
        (b"event: error\ndata: The server is overloaded\n\n", "The server is overloaded"),
    ],
    ids=[
        "data-error-object",
        "error-event-error-object",
        "error-event-message",
        "error-event-text",
    ],
)
def test_an_upstream_error_event_is_reported(event: bytes, message: str) -> None:
    raw = TEXT_STREAM[0] + TEXT_STREAM[1] + event
    out, t = translate([raw])
    assert t.error is not None
    assert message in t.error.message
    # the client still sees the upstream's error event, then the end of the stream
    assert event in out and out.endswith(sse.DONE)


def test_a_stream_without_errors_reports_none() -> None:
    _, t = translate([STREAMS["text-with-usage"]])
    assert t.error is None


def test_started_only_at_the_first_content_delta() -> None:
    t = PROVIDER.stream_translator(spec(CHAT, stream=True))
    assert not t.started
    t.feed(TEXT_STREAM[0])  # role-only, empty content
    assert not t.started
    t.feed(b": keep-alive\n\n")
    t.feed(usage_chunk())
    assert not t.started
    t.feed(TEXT_STREAM[1][:10])
    assert not t.started  # half an event is not content yet
    t.feed(TEXT_STREAM[1][10:])
    assert t.started


@pytest.mark.parametrize(
    "first",
    [
        tool_chunk(tool(0, id="call_1", name="f")),
        chunk({"reasoning_content": "hmm"}),
        chunk({"refusal": "I can't"}),
    ],
    ids=["tool-call", "reasoning", "refusal"],
)
def test_started_by_tool_calls_reasoning_and_refusals(first: bytes) -> None:
    t = PROVIDER.stream_translator(spec(CHAT, stream=True))
    t.feed(TEXT_STREAM[0])
    assert not t.started
    t.feed(first)
    assert t.started


def test_non_json_events_pass_through_untouched() -> None:
    raw = b"event: ping\ndata: not json\n\n" + TEXT_STREAM[1]
    out, t = translate([raw])
    assert out == raw + sse.DONE
    assert t.assembled()["choices"][0]["message"]["content"] == "Hello"
