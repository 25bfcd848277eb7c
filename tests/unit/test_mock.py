"""providers/mock.py: the embedded OpenAI-compatible model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers import mock, sse
from providers.base import RouteType
from providers.openai import PROVIDER as OPENAI
from tests.unit.conftest import spec

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"

CHAT_REQ = {
    "model": "mock-gpt",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "Why is  the sky\nblue?"}]},
    ],
}


def events_of(raw_events: list[bytes]) -> list[Any]:
    dec = sse.SSEDecoder()
    out: list[Any] = []
    for raw in raw_events:
        for ev in dec.feed(raw):
            out.append(ev.data if ev.data == "[DONE]" else json.loads(ev.data))
    assert dec.flush() == []
    return out


@pytest.mark.parametrize(
    "path, request_, text",
    [
        (CHAT_PATH, CHAT_REQ, "Why is  the sky\nblue?"),  # echoes the last user message
        (CHAT_PATH, {**CHAT_REQ, mock.SETTINGS_FIELD: {"response": "Fixed."}}, "Fixed."),
        (COMPLETIONS_PATH, {"model": "m", "prompt": "Say this"}, "Say this"),
        (
            COMPLETIONS_PATH,
            {"model": "m", "prompt": "x", mock.SETTINGS_FIELD: {"response": ""}},
            "",
        ),
    ],
)
def test_respond_answers_and_streams_the_same_text(
    path: str, request_: dict[str, Any], text: str
) -> None:
    whole = mock.respond(path, request_)
    chat = path == CHAT_PATH
    choice = whole["choices"][0]
    assert (choice["message"]["content"] if chat else choice["text"]) == text
    assert choice["finish_reason"] == "stop"
    assert whole["object"] == ("chat.completion" if chat else "text_completion")
    assert whole["model"] == request_["model"]
    u = whole["usage"]
    assert (
        u["prompt_tokens"] > 0 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    )

    events = events_of(mock.stream(path, {**request_, "stream": True}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for c in chunks:
        assert c["object"] == ("chat.completion.chunk" if chat else "text_completion")
        assert c["model"] == request_["model"]
        assert "usage" not in c  # the client did not ask for it
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    # the OpenAI translator assembles the same answer from the stream
    t = OPENAI.stream_translator(spec(mock.route_type_of(path), stream=True))
    for raw in mock.stream(path, {**request_, "stream": True}):
        t.feed(raw)
    t.finish()
    got = t.assembled()["choices"][0]
    assert (got["message"]["content"] or "" if chat else got["text"]) == text
    assert got["finish_reason"] == "stop"


def test_stream_is_word_by_word() -> None:
    req = {"model": "m", "messages": [{"role": "user", "content": "one two  three"}]}
    pieces = [
        c["choices"][0]["delta"].get("content")
        for c in events_of(mock.stream(CHAT_PATH, req))[1:-2]
    ]
    assert pieces == ["one ", "two  ", "three"]


@pytest.mark.parametrize("path", [CHAT_PATH, COMPLETIONS_PATH])
def test_usage_chunk_only_with_include_usage(path: str) -> None:
    req = {
        "model": "m",
        "prompt": "hello there",
        "messages": [{"role": "user", "content": "hello there"}],
    }
    plain = events_of(mock.stream(path, req))
    assert not any("usage" in e for e in plain[:-1])
    with_usage = events_of(mock.stream(path, {**req, "stream_options": {"include_usage": True}}))
    assert with_usage[-1] == "[DONE]"
    last = with_usage[-2]
    assert last["choices"] == []
    assert last["usage"] == mock.respond(path, req)["usage"]
    assert len(with_usage) == len(plain) + 1
    off = events_of(mock.stream(path, {**req, "stream_options": {"include_usage": False}}))
    assert len(off) == len(plain)


def test_embeddings_are_deterministic_sized_and_counted() -> None:
    req = {"model": "mock-embedding", "input": ["alpha", "beta"]}
    a = mock.respond(EMBEDDINGS_PATH, req)
    b = mock.respond(EMBEDDINGS_PATH, req)
    assert a == b
    assert a["object"] == "list" and a["model"] == "mock-embedding"
    assert [d["index"] for d in a["data"]] == [0, 1]
    vectors = [d["embedding"] for d in a["data"]]
    assert all(len(v) == 8 for v in vectors)  # the default size
    assert vectors[0] != vectors[1]
    assert all(-1.0 <= x <= 1.0 for v in vectors for x in v)
    single = mock.respond(EMBEDDINGS_PATH, {"model": "m", "input": "alpha"})
    assert single["data"][0]["embedding"] == vectors[0]  # the same text, the same vector
    assert a["usage"]["prompt_tokens"] > 0
    assert a["usage"]["total_tokens"] == a["usage"]["prompt_tokens"]


@pytest.mark.parametrize("dims", [1, 3, 32, 33, 256, 1536])
def test_embedding_dimensions_are_honoured(dims: int) -> None:
    out = mock.respond(EMBEDDINGS_PATH, {"model": "m", "input": "x", "dimensions": dims})
    assert len(out["data"][0]["embedding"]) == dims


def test_embeddings_answer_parses_as_an_openai_answer() -> None:
    body = json.dumps(
        mock.respond(EMBEDDINGS_PATH, {"model": "m", "input": "some text here"})
    ).encode()
    reply = mock.PROVIDER.parse_response(spec(RouteType.EMBEDDINGS), 200, {}, body)
    assert reply.usage is not None and reply.usage.prompt_tokens == 4


@pytest.mark.parametrize(
    "route_type, path",
    [
        (RouteType.CHAT, CHAT_PATH),
        (RouteType.COMPLETIONS, COMPLETIONS_PATH),
        (RouteType.EMBEDDINGS, EMBEDDINGS_PATH),
    ],
)
def test_build_request_targets_the_embedded_upstream(route_type: RouteType, path: str) -> None:
    req = mock.PROVIDER.build_request(
        spec(route_type, {"messages": [], "prompt": "p", "input": "i"})
    )
    assert req.url == "mock://llmitm" + path
    assert mock.route_type_of(req.url) is route_type


def test_build_request_carries_the_routes_mock_settings_to_the_upstream() -> None:
    s = spec(
        RouteType.CHAT,
        {"messages": [{"role": "user", "content": "hi"}]},
        mock_response="Configured.",
        mock_chunk_delay_ms=25,
    )
    body = json.loads(mock.PROVIDER.build_request(s).body)
    assert mock.respond(CHAT_PATH, body)["choices"][0]["message"]["content"] == "Configured."
    assert mock.chunk_delay(body) == 0.025
    plain = json.loads(mock.PROVIDER.build_request(spec(RouteType.CHAT, {"messages": []})).body)
    assert mock.SETTINGS_FIELD not in plain
    assert mock.chunk_delay(plain) == 0
