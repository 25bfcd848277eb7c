"""OpenAI's Responses API: the one reader (providers/openai_responses.py) that preserve
routes, observe mode and the contentview share, and the shared observation functions of
addons/observe.py that pick it (`stream_observer`, `read_passthrough` =
`parse_passthrough` + `passthrough_finish`: what `AIProxy` calls for preserve routes).

Bodies follow OpenAI's documented shapes: a `response` object, and the stream's typed
events (`response.created`, `response.output_text.delta`, ...,
`response.completed`), fed to the observer split at every byte boundary.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import providers
from addons.observe import (
    parse_passthrough,
    passthrough_finish,
    read_passthrough,
    stream_observer,
)
from providers import openai_responses
from providers.base import CallSpec, RouteType, Usage
from providers.openai import OpenAIStream
from providers.openai_responses import ResponsesStream, finish_reason, speaks, to_chat
from providers.options import ModelOptions

ANSWER: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1760000000,
    "model": "gpt-5-2025-08-07",
    "status": "completed",
    "output": [
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "User wants weather."}],
        },
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Checking."}],
        },
    ],
    "usage": {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 16},
        "output_tokens": 12,
        "output_tokens_details": {"reasoning_tokens": 8},
        "total_tokens": 52,
    },
}
USAGE = Usage(40, 12, cache_read_tokens=16, reasoning_tokens=8)


def event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def stream_of(final: dict[str, Any], last: str = "response.completed") -> bytes:
    created = {**final, "status": "in_progress", "output": [], "usage": None}
    return b"".join(
        [
            event("response.created", response=created),
            event("response.in_progress", response=created),
            event("response.reasoning_summary_text.delta", item_id="rs_1", delta="User "),
            event("response.function_call_arguments.delta", item_id="fc", delta='{"city"'),
            event("response.output_text.delta", item_id="m", delta="Check"),
            event("response.output_text.delta", item_id="m", delta="ing."),
            event(last, response=final),
        ]
    )


def preserve_spec(path: str = "/v1/responses", llm_format: str = "openai") -> CallSpec:
    return CallSpec(
        RouteType.PRESERVE,
        {"model": "gpt-5", "input": "Weather in Paris?"},
        "gpt-5",
        ModelOptions(),
        False,
        path=path,
        llm_format=llm_format,
    )


# ------------------------------------------------------------------ the reader


def test_a_whole_answer() -> None:
    body = json.dumps(ANSWER).encode()
    reply = openai_responses.parse(body)
    assert reply.body == body and reply.data == ANSWER
    assert reply.usage == USAGE and reply.model == "gpt-5-2025-08-07"
    assert finish_reason(reply.data) == "tool_calls"


@pytest.mark.parametrize(
    ("status", "details", "output", "expected"),
    [
        ("completed", None, [{"type": "message"}], "stop"),
        ("completed", None, [{"type": "function_call"}], "tool_calls"),
        ("incomplete", {"reason": "max_output_tokens"}, [], "length"),
        ("incomplete", {"reason": "content_filter"}, [], "content_filter"),
        ("incomplete", None, [], "incomplete"),
        ("failed", None, [], "failed"),
        ("cancelled", None, [], "cancelled"),
        (None, None, [], None),
    ],
)
def test_finish_reasons_in_chat_terms(
    status: str | None, details: Any, output: list[Any], expected: str | None
) -> None:
    response = {"status": status, "incomplete_details": details, "output": output}
    assert finish_reason(response) == expected


def test_bodies_that_are_not_answers() -> None:
    for body in (b"", b"not json", b"[1, 2]", b"null"):
        reply = openai_responses.parse(body)
        assert reply.data == {} and reply.usage is None and reply.model is None


def test_as_a_chat_completion() -> None:
    chat = to_chat(ANSWER)
    message = chat["choices"][0]["message"]
    assert chat["model"] == "gpt-5-2025-08-07" and chat["id"] == "resp_1"
    assert message["content"] == "Checking."
    assert message["reasoning_content"] == "User wants weather."
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert chat["choices"][0]["finish_reason"] == "tool_calls"
    assert chat["usage"] == USAGE.to_openai()
    refusal = {
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}],
    }
    assert to_chat(refusal)["choices"][0]["message"]["refusal"] == "No."


def test_a_stream_split_at_every_byte() -> None:
    body = stream_of(ANSWER)
    for cut in range(1, len(body)):
        s = ResponsesStream()
        assert s.feed(body[:cut]) == [] and s.feed(body[cut:]) == []
        s.finish()
        assert s.usage == USAGE, cut
        assert s.finish_reason == "tool_calls" and s.started and s.error is None
        assert s.response == ANSWER
        assembled = s.assembled()
        assert assembled["model"] == "gpt-5-2025-08-07"
        assert assembled["choices"][0]["finish_reason"] == "tool_calls"
        assert assembled["choices"][0]["message"]["content"] == "Checking."


def test_the_first_token_is_the_first_content_delta() -> None:
    s = ResponsesStream()
    created = {**ANSWER, "status": "in_progress", "output": [], "usage": None}
    s.feed(event("response.created", response=created))
    assert not s.started  # no content yet: the time to first token is not here
    s.feed(event("response.output_text.delta", delta="Hi"))
    assert s.started


def test_a_stream_cut_short_keeps_its_text_and_has_no_outcome() -> None:
    body = stream_of(ANSWER)
    s = ResponsesStream()
    s.feed(body[: body.index(b"event: response.completed")])
    s.finish()
    assembled = s.assembled()
    assert assembled["choices"][0]["message"]["content"] == "Checking."
    assert assembled["choices"][0]["finish_reason"] is None and s.usage is None


def test_failed_and_error_events() -> None:
    failed = {**ANSWER, "status": "failed", "error": {"code": "server_error", "message": "boom"}}
    s = ResponsesStream()
    s.feed(stream_of(failed, "response.failed"))
    assert s.error is not None and s.error.message == "boom"
    assert s.finish_reason == "failed"
    s = ResponsesStream()
    s.feed(event("error", code="rate_limit_exceeded", message="Slow down"))
    assert s.error is not None and s.error.message == "Slow down"


# --------------------------------------------- preserve routes and observe mode


@pytest.mark.parametrize(
    ("path", "llm_format", "expected"),
    [
        ("/v1/responses", "openai", True),
        ("/openai/v1/responses?api-version=preview", "openai", True),
        ("/v1/responses/", "openai", True),
        ("/v1/chat/completions", "openai", False),
        ("/v1/responses", "anthropic", False),  # a native format is its own
    ],
)
def test_which_calls_speak_it(path: str, llm_format: str, expected: bool) -> None:
    assert speaks(preserve_spec(path, llm_format)) is expected


@pytest.mark.parametrize("provider", ["openai", "azure", "openrouter"])
def test_preserve_routes_read_it_whole(provider: str) -> None:
    """What AIProxy reads of a whole answer on a preserve route (the bug: the chat
    reader counted total_tokens as the prompt and found no model nor finish reason)."""
    spec = preserve_spec()
    body = json.dumps(ANSWER).encode()
    p = providers.get(provider)
    reply, finish = read_passthrough(p, spec, 200, {}, body)
    assert reply.usage == USAGE and reply.model == "gpt-5-2025-08-07"
    assert reply.data == ANSWER and reply.body == body  # passed on untouched
    assert finish == "tool_calls"


def test_preserve_routes_watch_it_streamed() -> None:
    spec = preserve_spec()
    observer = stream_observer(providers.get("openai"), spec)
    assert isinstance(observer, ResponsesStream)
    observer.feed(stream_of(ANSWER))
    observer.finish()
    assert observer.usage == USAGE and observer.started
    # a chat completion path keeps OpenAI's chat observer
    chat = stream_observer(providers.get("openai"), preserve_spec("/v1/chat/completions"))
    assert isinstance(chat, OpenAIStream)


def test_passthrough_finish_of_other_answers() -> None:
    """The same finish reasons as a translated call: an OpenAI answer's own, a native
    answer's as its provider maps it, the native one when it has no mapping."""
    openai = providers.get("openai")
    chat = {"choices": [{"finish_reason": "length", "message": {}}]}
    body = json.dumps(chat).encode()
    spec = preserve_spec("/v1/chat/completions")
    reply = parse_passthrough(openai, spec, 200, {}, body)
    assert passthrough_finish(openai, spec, 200, {}, body, reply) == "length"
    anthropic = providers.get("anthropic")
    native = {
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    body = json.dumps(native).encode()
    for spec in (preserve_spec("/v1/messages"), preserve_spec("/v1/messages", "anthropic")):
        reply = parse_passthrough(anthropic, spec, 200, {}, body)
        assert passthrough_finish(anthropic, spec, 200, {}, body, reply) == "tool_calls"
