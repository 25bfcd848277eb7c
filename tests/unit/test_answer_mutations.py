"""A 200 answer the gateway cannot read is a clean 502, never a crash (a 500 with a
traceback). Real answers of Anthropic, Gemini and Bedrock, each field in turn replaced by
every other JSON type or removed, go through the translator: it returns an answer or
raises ProviderError, nothing else."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

import providers
from providers.base import ProviderError, RouteType
from tests.unit.conftest import fixture_json, spec

ANSWERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "anthropic": (
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "thinking", "thinking": "Add.", "signature": "Sig=="},
                {"type": "text", "text": "2"},
                {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"a": 1}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_input_tokens": 3,
                "cache_creation_input_tokens": 2,
            },
        },
        {"anthropic_version": "2023-06-01"},
    ),
    "gemini": (
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "Add.", "thought": True},
                            {"text": "2"},
                            {"functionCall": {"name": "calc", "args": {"a": 1}}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "modelVersion": fixture_json("gemini/llm-v1-chat/responses/good.json")["modelVersion"],
            "usageMetadata": {
                "promptTokenCount": 4,
                "candidatesTokenCount": 6,
                "cachedContentTokenCount": 1,
                "thoughtsTokenCount": 2,
            },
        },
        {},
    ),
    "bedrock": (
        {
            "output": {
                "message": {
                    "role": "assistant",
                    "content": [
                        {"reasoningContent": {"reasoningText": {"text": "Hm.", "signature": "S"}}},
                        {"text": "2"},
                        {"toolUse": {"toolUseId": "t1", "name": "calc", "input": {"a": 1}}},
                    ],
                }
            },
            "stopReason": "tool_use",
            "usage": {"inputTokens": 4, "outputTokens": 6, "cacheReadInputTokens": 1},
            "metrics": {"latencyMs": 100},
        },
        {"bedrock": {"aws_region": "us-east-1"}},
    ),
}

OTHERS: list[Any] = [None, True, 7, -1.5, "x", [], {}, [{}], {"x": {}}]


def mutations(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(where, the document with one value there replaced or removed), for every value."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in list(items):
        where = ".".join(map(str, (*path, key)))
        for other in OTHERS:
            if other != value:
                yield where, _replaced(doc, key, other)
        if isinstance(doc, dict):
            removed = copy.deepcopy(doc)
            del removed[key]
            yield f"{where} removed", removed
        if isinstance(value, dict | list):
            for inner, changed in mutations(value, (*path, key)):
                yield inner, _replaced(doc, key, changed)


def _replaced(doc: Any, key: Any, value: Any) -> Any:
    out = copy.copy(doc)
    out[key] = value
    return out


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_mutated_answers_are_read_or_refused_cleanly(name: str) -> None:
    provider = providers.get(name)
    answer, options = ANSWERS[name]
    call = spec(RouteType.CHAT, {"messages": [{"role": "user", "content": "1+1?"}]}, **options)
    # the unmutated answer is read (else the mutations would prove nothing)
    reply = provider.parse_response(call, 200, {}, json.dumps(answer).encode())
    assert reply.data["choices"][0]["message"]["content"] == "2"
    crashes = []
    count = 0
    for where, doc in mutations(answer):
        count += 1
        try:
            provider.parse_response(call, 200, {}, json.dumps(doc).encode())
        except ProviderError:
            pass
        except Exception as exc:
            crashes.append(f"{where}: {type(exc).__name__}: {exc}")
    assert count > 100
    assert not crashes, "\n".join(crashes[:20])
