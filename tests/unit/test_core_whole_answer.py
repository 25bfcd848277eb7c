"""A whole answer to a streamed request (an upstream that ignored `stream`): when the
gateway treats an answer as whole, and the OpenAI stream it sends the client instead
(addons/ai_proxy.py), read back through OpenAI's own stream translator."""

from __future__ import annotations

import json
from typing import Any

import pytest

import providers
from addons.ai_proxy import _is_stream, whole_answer_as_sse
from providers import sse
from providers.base import CallSpec, Reply, RouteType, Usage
from providers.options import ModelOptions


@pytest.mark.parametrize(
    "provider, content_type, stream",
    [
        ("openai", "text/event-stream; charset=utf-8", True),
        ("openai", "application/json", False),
        ("openai", "Application/JSON; charset=utf-8", False),
        ("ollama", "application/x-ndjson", True),
        ("bedrock", "application/vnd.amazon.eventstream", True),
        ("openai", "", True),  # untyped: relayed as before, the translator judges it
        ("openai", "text/plain", True),
    ],
)
def test_which_answers_are_streams(provider: str, content_type: str, stream: bool) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert _is_stream(providers.get(provider), headers) is stream


def test_a_provider_whose_stream_is_json_keeps_json_answers_as_streams() -> None:
    class JsonStreams(providers.get("openai").__class__):
        stream_content_types = ("text/event-stream", "application/json")

    assert _is_stream(JsonStreams(), {"content-type": "application/json"}) is True


def _events(chunks: list[bytes]) -> list[Any]:
    out = []
    for raw in chunks:
        for ev in sse.SSEDecoder().feed(raw):
            out.append(ev.data if ev.data == "[DONE]" else json.loads(ev.data))
    return out


def _replay(route_type: RouteType, events: list[bytes], wants_usage: bool) -> Any:
    spec = CallSpec(route_type, {}, "m", ModelOptions(), True, client_wants_usage=wants_usage)
    translator = providers.get("openai").stream_translator(spec)
    sent = [b for e in events for b in translator.feed(e)] + translator.finish()
    return translator, sent


CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 5,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[]"}},
                ],
            },
            "finish_reason": "tool_calls",
        },
        {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": None},
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}


def test_a_whole_chat_answer_as_a_stream() -> None:
    reply = Reply(b"", CHAT, Usage(3, 4), CHAT["model"])
    events = whole_answer_as_sse(RouteType.CHAT, reply)
    parsed = _events(events)
    assert parsed[-1] == "[DONE]"
    first, finish, usage = parsed[:3]
    for obj in (first, finish, usage):
        assert obj["object"] == "chat.completion.chunk"
        assert (obj["id"], obj["created"], obj["model"]) == ("chatcmpl-1", 5, CHAT["model"])
    assert first["choices"][0]["delta"]["tool_calls"][1] == {
        "index": 1,
        "id": "c2",
        "type": "function",
        "function": {"name": "g", "arguments": "[]"},
    }
    assert "content" not in first["choices"][0]["delta"]  # null content is left out
    assert first["choices"][1]["delta"] == {"role": "assistant", "content": "second"}
    assert [c["finish_reason"] for c in finish["choices"]] == ["tool_calls", "stop"]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7

    # read back as the stream owner reads it: the same answer, the usage kept or not
    translator, sent = _replay(RouteType.CHAT, events, wants_usage=False)
    assembled = translator.assembled()
    assert assembled["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"
    assert assembled["choices"][1]["message"]["content"] == "second"
    assert translator.usage == Usage(3, 4) and translator.started
    assert not any(b'"usage"' in chunk for chunk in sent)  # the client did not ask
    _, sent = _replay(RouteType.CHAT, events, wants_usage=True)
    assert any(b'"usage"' in chunk for chunk in sent)
    assert sent[-1] == sse.DONE


def test_a_whole_completion_as_a_stream() -> None:
    data = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": " world", "finish_reason": "length", "logprobs": None}],
    }
    events = whole_answer_as_sse(RouteType.COMPLETIONS, Reply(b"", data, None, "m"))
    first, finish, done = _events(events)
    assert first["object"] == "text_completion" and first["choices"][0]["text"] == " world"
    assert finish["choices"][0] == {
        "index": 0,
        "text": "",
        "logprobs": None,
        "finish_reason": "length",
    }
    assert done == "[DONE]"  # no usage reported: no usage chunk
    translator, _ = _replay(RouteType.COMPLETIONS, events, wants_usage=False)
    assert translator.assembled()["choices"][0]["text"] == " world"
