"""providers/bedrock.py: Converse requests, URLs, SigV4 signing, answers, errors, the
ConverseStream translator and native passthrough.

Every request body built here is also run through the fake Bedrock's validator
(tests/fakes/bedrock.py), which rejects what Bedrock rejects; streams are built with the
event-stream encoder and fed at every split point and byte by byte.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import struct
import sys
import time
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.auth
import pytest
import yarl
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from providers import get as get_provider
from providers.base import AWSCredentials, CallSpec, ProviderError, RouteType, Usage
from providers.bedrock import PROVIDER, BedrockStream, encode_model_id, usage_from_bedrock
from providers.eventstream import encode_event, encode_exception, encode_message
from providers.options import AuthConfig, ModelConfig
from tests.fakes import bedrock as fake
from tests.fakes.upstream import Received
from tests.unit.conftest import byte_by_byte, every_split, fixture, fixture_json, fixtures, spec

CHAT, PRESERVE = RouteType.CHAT, RouteType.PRESERVE
REGION = {"bedrock": {"aws_region": "eu-west-3"}}
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-png-bytes").decode()
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _no_region_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)


def bspec(body: dict[str, Any] | None = None, model: str = CLAUDE, **kw: Any) -> CallSpec:
    options = {**REGION, **kw.pop("options", {})}
    return spec(
        CHAT, body if body is not None else {"messages": USER}, model=model, **kw, **options
    )


def sent(body: dict[str, Any], model: str = CLAUDE, **kw: Any) -> dict[str, Any]:
    """The Converse body sent upstream; it must pass the fake Bedrock's validation."""
    out = json.loads(PROVIDER.build_request(bspec(body, model, **kw)).body)
    fake.validate(out)
    return out


def bad(body: dict[str, Any], model: str = CLAUDE) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        PROVIDER.build_request(bspec(body, model))
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


# ------------------------------------------------------------------ the provider


def test_registered_with_its_wire_facts() -> None:
    p = get_provider("bedrock")
    assert p is PROVIDER
    assert p.default_base_url == "https://bedrock-runtime.{region}.amazonaws.com"
    assert p.route_types == frozenset({CHAT, RouteType.EMBEDDINGS, PRESERVE})
    assert p.auth_headers == (
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
    )
    assert p.native_format == "bedrock"
    assert p.credential_kind(AuthConfig(), bspec().options) == "aws"


@pytest.mark.parametrize(
    "options, env, errors",
    [
        ({"bedrock": {"aws_region": "us-west-2"}}, {}, []),
        ({}, {"AWS_REGION": "us-west-2"}, []),
        ({}, {"AWS_DEFAULT_REGION": "ap-south-1"}, []),
        ({"bedrock": {"aws_region": "$(headers.x-region)"}}, {}, []),  # known per request
        ({}, {}, ["model.options.bedrock.aws_region"]),
        ({"bedrock": {}}, {}, ["model.options.bedrock.aws_region"]),
    ],
)
def test_config_errors_name_the_missing_region(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], env: dict[str, str], errors: list[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    model = ModelConfig(provider="bedrock", name=CLAUDE, options=options)
    found = PROVIDER.config_errors(model, CHAT)
    assert len(found) == len(errors)
    for want, got in zip(errors, found, strict=True):
        assert want in got


def test_config_errors_without_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "botocore" else real(name, *a)
    )
    model = ModelConfig(provider="bedrock", name=CLAUDE, options=REGION)
    assert PROVIDER.config_errors(model, CHAT) == [
        "provider bedrock needs botocore: pip install 'llmitm[bedrock]'"
    ]


def test_route_type_and_model_config_errors() -> None:
    model = ModelConfig(provider="bedrock", name=CLAUDE, options=REGION)
    assert "cannot serve route_type" in PROVIDER.config_errors(model, RouteType.COMPLETIONS)[0]
    # embeddings need an embedding model
    assert "titan-embed" in PROVIDER.config_errors(model, RouteType.EMBEDDINGS)[0]
    for name in ("amazon.titan-embed-text-v2:0", "cohere.embed-english-v3", None):
        ok = ModelConfig(provider="bedrock", name=name, options=REGION)
        assert PROVIDER.config_errors(ok, RouteType.EMBEDDINGS) == []


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "model, options, env, stream, expected",
    [
        (
            CLAUDE,
            REGION,
            {},
            False,
            f"https://bedrock-runtime.eu-west-3.amazonaws.com/model/{CLAUDE}/converse",
        ),
        (
            CLAUDE,
            REGION,
            {},
            True,
            f"https://bedrock-runtime.eu-west-3.amazonaws.com/model/{CLAUDE}/converse-stream",
        ),
        # the region from the environment, AWS_REGION before AWS_DEFAULT_REGION
        (
            "amazon.nova-pro-v1:0",
            {},
            {"AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "us-west-1"},
            False,
            "https://bedrock-runtime.us-east-2.amazonaws.com/model/amazon.nova-pro-v1:0/converse",
        ),
        (
            "amazon.nova-pro-v1:0",
            {},
            {"AWS_DEFAULT_REGION": "us-west-1"},
            False,
            "https://bedrock-runtime.us-west-1.amazonaws.com/model/amazon.nova-pro-v1:0/converse",
        ),
        # the option wins over the environment
        (
            "m",
            REGION,
            {"AWS_REGION": "us-east-2"},
            False,
            "https://bedrock-runtime.eu-west-3.amazonaws.com/model/m/converse",
        ),
        # an ARN is one path segment: its "/" encoded, its ":" literal
        (
            PROFILE_ARN,
            REGION,
            {},
            True,
            "https://bedrock-runtime.eu-west-3.amazonaws.com/model/arn:aws:bedrock:us-east-1:"
            "123456789012:application-inference-profile%2Fa1b2c3d4e5f6/converse-stream",
        ),
        (
            "arn:aws:bedrock:eu-west-3:123:inference-profile/eu.anthropic.claude-3-haiku:0",
            REGION,
            {},
            False,
            "https://bedrock-runtime.eu-west-3.amazonaws.com/model/arn:aws:bedrock:eu-west-3:123:"
            "inference-profile%2Feu.anthropic.claude-3-haiku:0/converse",
        ),
        # a bare origin keeps the standard path and operation
        (
            CLAUDE,
            {**REGION, "upstream_url": "http://127.0.0.1:8123"},
            {},
            True,
            f"http://127.0.0.1:8123/model/{CLAUDE}/converse-stream",
        ),
        (
            "m",
            {**REGION, "upstream_url": "http://127.0.0.1:8123/"},
            {},
            False,
            "http://127.0.0.1:8123/model/m/converse",
        ),
        # a URL with a path is used as written...
        (
            "m",
            {**REGION, "upstream_url": "https://vpce.example/model/other/converse"},
            {},
            False,
            "https://vpce.example/model/other/converse",
        ),
        # ...but a stream goes to the stream operation
        (
            "m",
            {**REGION, "upstream_url": "https://vpce.example/model/other/converse"},
            {},
            True,
            "https://vpce.example/model/other/converse-stream",
        ),
        (
            "m",
            {**REGION, "upstream_url": "https://proxy.example/bedrock/custom"},
            {},
            True,
            "https://proxy.example/bedrock/custom",
        ),
    ],
)
def test_urls(
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    options: dict[str, Any],
    env: dict[str, str],
    stream: bool,
    expected: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = spec(CHAT, {"messages": USER, "stream": stream}, model=model, stream=stream, **options)
    req = PROVIDER.build_request(s)
    assert req.url == expected
    assert req.method == "POST" and req.stream is stream
    assert req.headers["accept"] == (
        "application/vnd.amazon.eventstream" if stream else "application/json"
    )


@pytest.mark.parametrize(
    "model",
    [CLAUDE, PROFILE_ARN, "arn:aws:bedrock:us-east-1:1:provisioned-model/abc+def=ghi", "a b@c!d"],
)
def test_model_id_survives_http_clients_unchanged(model: str) -> None:
    """What is signed is what is sent: the HTTP clients keep the encoded path as it is."""
    path = f"/model/{encode_model_id(model)}/converse"
    assert yarl.URL(f"http://h{path}").raw_path == path  # aiohttp's URL type
    assert urlsplit(f"http://h{path}").path == path
    assert path.count("/") == 3  # one segment, whatever the id holds
    from urllib.parse import unquote

    assert unquote(path.split("/")[2]) == model


def test_no_region_is_a_clear_error_at_call_time() -> None:
    with pytest.raises(ProviderError) as info:
        PROVIDER.build_request(spec(CHAT, {"messages": USER}, model=CLAUDE))
    assert info.value.status == 500
    assert "model.options.bedrock.aws_region" in info.value.message


# ------------------------------------------------------------------ request bodies


def test_kongs_expected_request() -> None:
    body = fixture_json("unit/requests/llm-v1-chat.json")
    out = sent({**body, "max_tokens": 8192, "temperature": 0.8, "top_p": 0.6})
    expected = fixture_json("unit/expected-requests/bedrock/llm-v1-chat.json")
    # Kong also sends Anthropic's InvokeModel field `anthropic_version`, which the
    # Converse API does not take (it rejects unknown fields): we do not.
    del expected["anthropic_version"]
    assert out == expected


def test_only_converse_fields_are_sent() -> None:
    body = {
        "model": CLAUDE,
        "messages": USER,
        "stream": False,
        "stream_options": {"include_usage": True},
        "user": "u-1",
        "seed": 7,
        "n": 1,
        "logprobs": True,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
        "response_format": {"type": "text"},
        "parallel_tool_calls": True,
        "store": False,
        "service_tier": "auto",
    }
    out = sent(body)
    assert set(out) == {"messages"}
    assert body["model"] == CLAUDE  # the client's body is not mutated


def test_system_and_developer_messages_anywhere_become_system() -> None:
    out = sent(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "a"},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": [{"type": "text", "text": "b"}, "c"]},
            ]
        }
    )
    assert out["system"] == [{"text": "Be brief."}, {"text": "Use French."}]
    # the two user messages are merged into one turn
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}
    ]


def test_consecutive_same_role_turns_are_merged_and_empty_ones_dropped() -> None:
    out = sent(
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "user", "content": ""},
                {"role": "user", "content": "two"},
                {"role": "assistant", "content": "x"},
                {"role": "assistant", "content": "\n\n"},
                {"role": "assistant", "content": None},
                {"role": "assistant", "content": [{"type": "text", "text": "y"}]},
                {"role": "user", "content": "three"},
            ]
        }
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
        {"role": "assistant", "content": [{"text": "x"}, {"text": "y"}]},
        {"role": "user", "content": [{"text": "three"}]},
    ]


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "time"}}  # no description, no parameters


@pytest.mark.parametrize(
    "tool_choice, expected",
    [
        (None, None),
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "time"}}, {"tool": {"name": "time"}}),
    ],
)
def test_tools_and_tool_choice(tool_choice: Any, expected: Any) -> None:
    body: dict[str, Any] = {"messages": USER, "tools": [WEATHER, TIME]}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    config = sent(body)["toolConfig"]
    assert config["tools"] == [
        {
            "toolSpec": {
                "name": "weather",
                "description": "Current weather",
                "inputSchema": {"json": WEATHER["function"]["parameters"]},
            }
        },
        {
            "toolSpec": {
                "name": "time",
                "inputSchema": {"json": {"type": "object", "properties": {}}},
            }
        },
    ]
    assert config.get("toolChoice") == expected


def _tool_history() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "weather and time in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "tooluse_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "tooluse_b",
                    "type": "function",
                    "function": {"name": "time", "arguments": ""},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "tooluse_a", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "tooluse_b", "content": "14:05"},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ]


def test_tool_calls_and_results_round_trip_into_one_user_turn() -> None:
    out = sent({"messages": _tool_history(), "tools": [WEATHER, TIME]})
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "toolUse": {
                        "toolUseId": "tooluse_a",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    }
                },
                {"toolUse": {"toolUseId": "tooluse_b", "name": "time", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "tooluse_a", "content": [{"json": {"temp_c": 21}}]}},
                {"toolResult": {"toolUseId": "tooluse_b", "content": [{"text": "14:05"}]}},
                {"text": "Thanks, and tomorrow?"},
            ],
        },
    ]


def test_tool_result_parts_and_status() -> None:
    history = _tool_history()[:3]
    history[2] = {
        "role": "tool",
        "tool_call_id": "tooluse_a",
        "status": "error",
        "content": [
            {"type": "text", "text": "city not found"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
    }
    history[1]["tool_calls"] = history[1]["tool_calls"][:1]
    result = sent({"messages": history, "tools": [WEATHER]})["messages"][2]["content"][0]
    assert result == {
        "toolResult": {
            "toolUseId": "tooluse_a",
            "status": "error",
            "content": [
                {"text": "city not found"},
                {"image": {"format": "png", "source": {"bytes": PNG}}},
            ],
        }
    }


def test_tool_choice_none() -> None:
    # without tool blocks in the conversation: no toolConfig at all
    assert "toolConfig" not in sent({"messages": USER, "tools": [WEATHER], "tool_choice": "none"})
    # with them, Bedrock needs a toolConfig: the tools go without a toolChoice
    out = sent({"messages": _tool_history(), "tools": [WEATHER, TIME], "tool_choice": "none"})
    assert [t["toolSpec"]["name"] for t in out["toolConfig"]["tools"]] == ["weather", "time"]
    assert "toolChoice" not in out["toolConfig"]


def test_tool_history_without_tools_declares_the_tools_it_uses() -> None:
    out = sent({"messages": _tool_history()})
    assert [t["toolSpec"]["name"] for t in out["toolConfig"]["tools"]] == ["weather", "time"]


@pytest.mark.parametrize(
    "arguments, words",
    [("{not json", "tooluse_a"), ("[1, 2]", "'weather'"), ('"text"', "JSON object")],
)
def test_unparseable_tool_arguments_are_a_400_naming_the_call(arguments: str, words: str) -> None:
    history = _tool_history()[:2]
    history[1]["tool_calls"][0]["function"]["arguments"] = arguments
    err = bad({"messages": history})
    assert words in err.message and "messages[1].tool_calls[0]" in err.message


@pytest.mark.parametrize(
    "message, words",
    [
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "function", "name": "f", "content": "x"}, "role 'function'"),
        ({"role": "user", "content": [{"type": "input_audio"}]}, "'input_audio'"),
        ({"role": "system", "content": [{"type": "image_url"}]}, "only hold text"),
        (
            {"role": "assistant", "content": "x", "tool_calls": [{"function": {"name": "f"}}]},
            "needs an 'id'",
        ),
        ({"role": "assistant", "content": "x", "thinking_blocks": [{"type": "x"}]}, "thinking"),
    ],
)
def test_messages_bedrock_cannot_take_are_400(message: dict[str, Any], words: str) -> None:
    err = bad({"messages": [{"role": "user", "content": "q"}, message]})
    assert words in err.message


def test_other_400s() -> None:
    assert "'n'" in bad({"messages": USER, "n": 2}).message
    assert "no user or assistant" in bad({"messages": [{"role": "system", "content": "s"}]}).message
    assert (
        "tool_choice" in bad({"messages": USER, "tools": [WEATHER], "tool_choice": "any"}).message
    )
    assert "function tools" in bad({"messages": USER, "tools": [{"type": "web_search"}]}).message


@pytest.mark.parametrize(
    "url, expected",
    [
        (f"data:image/png;base64,{PNG}", {"format": "png", "source": {"bytes": PNG}}),
        (f"data:image/jpeg;base64,{PNG}", {"format": "jpeg", "source": {"bytes": PNG}}),
        (f"data:image/jpg;base64,{PNG}", {"format": "jpeg", "source": {"bytes": PNG}}),
        (f"data:image/gif;base64,{PNG}", {"format": "gif", "source": {"bytes": PNG}}),
        (f"data:image/webp;base64,{PNG}", {"format": "webp", "source": {"bytes": PNG}}),
        (
            "s3://my-bucket/cats/tabby.JPG",
            {"format": "jpeg", "source": {"s3Location": {"uri": "s3://my-bucket/cats/tabby.JPG"}}},
        ),
    ],
)
def test_images(url: str, expected: dict[str, Any]) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
    ]
    out = sent({"messages": [{"role": "user", "content": content}]})
    assert out["messages"][0]["content"] == [{"text": "What is this?"}, {"image": expected}]


@pytest.mark.parametrize(
    "url, words",
    [
        ("https://example.com/cat.png", "Bedrock needs inline images"),
        ("http://example.com/cat.png", "Bedrock needs inline images"),
        ("data:image/bmp;base64," + PNG, "not image/bmp"),
        ("data:image/png;base64,@@not base64@@", "valid base64"),
        ("data:image/png," + PNG, "base64 data URI"),
        ("s3://bucket/file.tiff", "s3://"),
        ("ftp://x/y.png", "data URI"),
    ],
)
def test_images_bedrock_cannot_take_are_400(url: str, words: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    err = bad({"messages": [{"role": "user", "content": content}]})
    assert words in err.message and "messages[0].content[0].image_url" in err.message


def test_file_parts_become_documents() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 fake").decode()
    content = [
        {
            "type": "file",
            "file": {
                "file_data": f"data:application/pdf;base64,{pdf}",
                "filename": "Q3 report_v2.final.pdf",
            },
        },
        {"type": "text", "text": "Summarise."},
    ]
    out = sent({"messages": [{"role": "user", "content": content}]})
    assert out["messages"][0]["content"][0] == {
        "document": {"format": "pdf", "name": "Q3 report-v2-final", "source": {"bytes": pdf}}
    }
    assert (
        "file ids"
        in bad(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
                ]
            }
        ).message
    )


def test_cache_control_becomes_cache_points() -> None:
    out = sent(
        {
            "messages": [
                {
                    "role": "system",
                    "content": [
                        {
                            "type": "text",
                            "text": "long rules",
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "big doc", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "question"},
                    ],
                },
            ]
        }
    )
    assert out["system"] == [{"text": "long rules"}, {"cachePoint": {"type": "default"}}]
    assert out["messages"][0]["content"] == [
        {"text": "big doc"},
        {"cachePoint": {"type": "default"}},
        {"text": "question"},
    ]


@pytest.mark.parametrize(
    "client, expected",
    [
        ({"max_tokens": 300}, {"maxTokens": 300}),
        ({"max_tokens": 300, "max_completion_tokens": 200}, {"maxTokens": 200}),
        ({"temperature": 0, "top_p": 0.5}, {"temperature": 0, "topP": 0.5}),
        ({"stop": "END"}, {"stopSequences": ["END"]}),
        ({"stop": ["a", "", "b"]}, {"stopSequences": ["a", "b"]}),
        ({}, None),
    ],
)
def test_inference_config(client: dict[str, Any], expected: Any) -> None:
    assert sent({"messages": USER, **client}).get("inferenceConfig") == expected


@pytest.mark.parametrize(
    "model, expected",
    [
        (CLAUDE, {"top_k": 40}),
        ("mistral.mistral-large-2407-v1:0", {"top_k": 40}),
        ("us.amazon.nova-pro-v1:0", {"inferenceConfig": {"topK": 40}}),
    ],
)
def test_top_k_is_model_specific(model: str, expected: dict[str, Any]) -> None:
    out = sent({"messages": USER, "top_k": 40}, model=model)
    assert out["additionalModelRequestFields"] == expected
    assert "top_k" not in out.get("inferenceConfig", {})


def test_converse_fields_pass_through_and_merge() -> None:
    guardrail = {"guardrailIdentifier": "gr-1", "guardrailVersion": "2", "trace": "enabled"}
    out = sent(
        {
            "messages": USER,
            "top_k": 5,
            "guardrailConfig": guardrail,
            "additionalModelRequestFields": {"anthropic_beta": ["x"], "top_k": 9},
            "additionalModelResponseFieldPaths": ["/stop_sequence"],
            "performanceConfig": {"latency": "optimized"},
            "requestMetadata": {"team": "search"},
        }
    )
    assert out["guardrailConfig"] == guardrail
    # the client's own field wins over the translated top_k
    assert out["additionalModelRequestFields"] == {"anthropic_beta": ["x"], "top_k": 9}
    assert out["additionalModelResponseFieldPaths"] == ["/stop_sequence"]
    assert out["performanceConfig"] == {"latency": "optimized"}
    assert out["requestMetadata"] == {"team": "search"}


@pytest.mark.parametrize(
    "effort, budget", [("low", 1024), ("medium", 4096), ("high", 16384), ("xhigh", 32768)]
)
def test_reasoning_effort_turns_on_thinking_for_anthropic_models(effort: str, budget: int) -> None:
    out = sent(
        {
            "messages": USER,
            "reasoning_effort": effort,
            "max_tokens": 2000,
            "temperature": 0.2,
            "top_k": 5,
        }
    )
    assert out["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": budget}
    }
    # maxTokens above the budget; sampling changes Anthropic rejects with thinking not sent
    assert out["inferenceConfig"]["maxTokens"] == (2000 if budget < 2000 else budget + 4096)
    assert "temperature" not in out["inferenceConfig"]


def test_reasoning_effort_off_or_not_anthropic() -> None:
    for effort in ("none", "minimal"):
        assert "additionalModelRequestFields" not in sent(
            {"messages": USER, "reasoning_effort": effort}
        )
    out = sent(
        {"messages": USER, "reasoning_effort": "high"}, model="meta.llama3-70b-instruct-v1:0"
    )
    assert "additionalModelRequestFields" not in out
    assert "reasoning_effort" in bad({"messages": USER, "reasoning_effort": "max"}).message


def test_a_thinking_object_is_sent_as_written() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    out = sent({"messages": USER, "thinking": thinking, "max_tokens": 8000, "top_p": 0.99})
    assert out["additionalModelRequestFields"]["thinking"] == thinking
    assert out["inferenceConfig"] == {"maxTokens": 8000, "topP": 0.99}


def test_thinking_blocks_go_back_first_with_their_signatures() -> None:
    history = _tool_history()[:3]
    history[1] = {
        **history[1],
        "content": "Let me check.",
        "reasoning_content": "The user wants weather.",
        "thinking_blocks": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-abc=="},
            {"type": "redacted_thinking", "data": base64.b64encode(b"opaque").decode()},
        ],
        "tool_calls": history[1]["tool_calls"][:1],
    }
    out = sent({"messages": history, "tools": [WEATHER], "reasoning_effort": "low"})
    assert out["messages"][1]["content"] == [
        {
            "reasoningContent": {
                "reasoningText": {"text": "The user wants weather.", "signature": "sig-abc=="}
            }
        },
        {"reasoningContent": {"redactedContent": base64.b64encode(b"opaque").decode()}},
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "tooluse_a", "name": "weather", "input": {"city": "Paris"}}},
    ]


def test_reasoning_content_alone_is_not_sent_back() -> None:
    out = sent(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "hidden thoughts"},
                {"role": "user", "content": "q2"},
            ]
        }
    )
    assert out["messages"][1]["content"] == [{"text": "a"}]


# ------------------------------------------------------------------ SigV4

FROZEN = datetime.datetime(2024, 5, 17, 9, 30, 12)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> datetime.datetime:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: FROZEN)
    return FROZEN


def reference_sigv4(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    key: str,
    secret: str,
    region: str,
    amz_date: str,
) -> str:
    """SigV4 written out from AWS's specification, independently of botocore."""
    parts = urlsplit(url)
    default_port = {"http": ":80", "https": ":443"}[parts.scheme]
    host = parts.netloc.removesuffix(default_port)
    all_headers = {**{k.lower(): v for k, v in headers.items()}, "host": host}
    names = sorted(all_headers)
    canonical = "\n".join(
        [
            method,
            quote(parts.path, safe="/~"),  # the path as sent, encoded once more (non-S3)
            "&".join(sorted(parts.query.split("&"))) if parts.query else "",
            "".join(f"{n}:{' '.join(all_headers[n].split())}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{amz_date[:8]}/{region}/bedrock/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, "bedrock", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"


@pytest.mark.parametrize("token", [None, "session/token+value=="])
@pytest.mark.parametrize(
    "model, upstream_url",
    [(CLAUDE, None), (PROFILE_ARN, None), (CLAUDE, "http://127.0.0.1:8123")],
)
def test_sigv4_signature_matches_the_specification(
    frozen_clock: datetime.datetime, token: str | None, model: str, upstream_url: str | None
) -> None:
    s = bspec(
        {"messages": USER}, model, options={"upstream_url": upstream_url} if upstream_url else {}
    )
    up = PROVIDER.build_request(s)
    up.headers.update({"authorization": "Bearer client-key", "x-stainless-lang": "python"})
    PROVIDER.sign(
        up, s, AWSCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    )

    auth = up.headers["authorization"]
    assert re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240517/eu-west-3/bedrock/aws4_request, "
        r"SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}",
        auth,
    )
    assert up.headers["x-amz-date"] == "20240517T093012Z"
    assert up.headers["x-amz-content-sha256"] == hashlib.sha256(up.body).hexdigest()
    assert up.headers.get("x-amz-security-token") == token
    signed = {
        k: v
        for k, v in up.headers.items()
        if k in ("content-type", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token")
    }
    expected = reference_sigv4(
        "POST",
        up.url,
        signed,
        up.body,
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "eu-west-3",
        "20240517T093012Z",
    )
    assert auth == expected
    assert (
        "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date"
        + (";x-amz-security-token" if token else "")
        in auth
    )
    assert up.headers["x-stainless-lang"] == "python"  # other headers are kept, unsigned


def _as_received(up: Any) -> Received:
    parts = urlsplit(up.url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return Received(up.method, path, {**up.headers, "host": parts.netloc}, up.body)


@pytest.mark.parametrize("model", [CLAUDE, PROFILE_ARN])
def test_the_fake_bedrock_accepts_what_sign_produces(model: str) -> None:
    s = bspec(
        {"messages": USER},
        model,
        options={"upstream_url": "http://127.0.0.1:8123", "bedrock": {"aws_region": fake.REGION}},
    )
    up = PROVIDER.build_request(s)
    PROVIDER.sign(
        up, s, AWSCredentials(fake.SESSION_ACCESS_KEY, fake.SESSION_SECRET_KEY, fake.SESSION_TOKEN)
    )
    handler = fake.FakeBedrock()
    reply = handler(_as_received(up))
    assert reply.status == 200, reply.body
    assert handler.last().model == model and handler.last().op == "converse"
    # a byte changed after signing is caught
    up.body = up.body.replace(b"hi", b"ho")
    up.headers["x-amz-content-sha256"] = hashlib.sha256(up.body).hexdigest()
    reply = handler(_as_received(up))
    assert reply.status == 403 and json.loads(reply.body)["message"] == fake.SIGNATURE_MISMATCH
    assert reply.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")


def test_stale_client_aws_headers_are_replaced(frozen_clock: datetime.datetime) -> None:
    s = bspec()
    up = PROVIDER.build_request(s)
    up.headers.update(
        {
            "Authorization": "AWS4-HMAC-SHA256 Credential=CLIENT/...",
            "X-Amz-Date": "20000101T000000Z",
            "x-amz-security-token": "client-token",
            "x-amz-content-sha256": "0" * 64,
        }
    )
    PROVIDER.sign(up, s, AWSCredentials("AKID", "secret"))
    assert "Credential=AKID/" in up.headers["authorization"]
    assert up.headers["x-amz-date"] == "20240517T093012Z"
    assert "x-amz-security-token" not in up.headers
    assert all(k == k.lower() for k in up.headers)


def test_signing_needs_aws_credentials_and_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    s = bspec()
    with pytest.raises(ProviderError, match="AWS credentials"):
        PROVIDER.sign(PROVIDER.build_request(s), s, "a-token")
    monkeypatch.setitem(sys.modules, "botocore.auth", None)
    with pytest.raises(ProviderError, match=r"pip install 'llmitm\[bedrock\]'"):
        PROVIDER.sign(PROVIDER.build_request(s), s, AWSCredentials("a", "b"))


# ------------------------------------------------------------------ answers


def answer(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> bytes:
    u = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15, **usage}
    return json.dumps(
        {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": u,
            "metrics": {"latencyMs": 321},
        }
    ).encode()


def parse(body: bytes, model: str = CLAUDE) -> tuple[dict[str, Any], Any]:
    reply = PROVIDER.parse_response(bspec(model=model), 200, {}, body)
    data = json.loads(reply.body)
    assert data == reply.data
    ChatCompletion.model_validate(data)  # the OpenAI SDK can read it
    assert reply.model == model and data["model"] == model
    return data, reply.usage


def test_kongs_bedrock_response() -> None:
    data, _ = parse(fixture("unit/real-responses/bedrock/llm-v1-chat.json").read_bytes())
    expected = fixture_json("unit/expected-responses/bedrock/llm-v1-chat.json")
    assert data["choices"][0]["message"] == expected["choices"][0]["message"]
    assert data["usage"] == expected["usage"]
    assert data["object"] == expected["object"]
    # Kong passes Bedrock's stopReason through unmapped ("end_turn"), and names the
    # model "bedrock": we map it, and name the model that answered
    assert expected["choices"][0]["finish_reason"] == "end_turn"
    assert data["choices"][0]["finish_reason"] == "stop"


def test_text_answer() -> None:
    before = int(time.time())
    data, usage = parse(answer([{"text": "Hello "}, {"text": "world"}]))
    assert data["id"].startswith("chatcmpl-") and len(data["id"]) > 15
    assert before <= data["created"] <= int(time.time())
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert usage == Usage(10, 5)


def test_parallel_tool_use() -> None:
    data, _ = parse(
        answer(
            [
                {"text": "Checking both."},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_1",
                        "name": "weather",
                        "input": {"city": "Paris", "units": "c"},
                    }
                },
                {"toolUse": {"toolUseId": "tooluse_2", "name": "time", "input": {}}},
            ],
            "tool_use",
        )
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking both."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "tooluse_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris","units":"c"}'},
        },
        {"id": "tooluse_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]


def test_reasoning_with_signature_and_redacted() -> None:
    redacted = base64.b64encode(b"secret").decode()
    data, _ = parse(
        answer(
            [
                {
                    "reasoningContent": {
                        "reasoningText": {"text": "2+2 is 4.", "signature": "SIG=="}
                    }
                },
                {"reasoningContent": {"redactedContent": redacted}},
                {"reasoningContent": {"reasoningText": {"text": " No signature."}}},
                {"text": "4"},
            ]
        )
    )
    message = data["choices"][0]["message"]
    assert message["content"] == "4"
    assert message["reasoning_content"] == "2+2 is 4. No signature."
    assert message["thinking_blocks"] == [
        {"type": "thinking", "thinking": "2+2 is 4.", "signature": "SIG=="},
        {"type": "redacted_thinking", "data": redacted},
    ]


@pytest.mark.parametrize(
    "stop, finish",
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "stop"),
        ("malformed_tool_use", "stop"),
        ("something_new", "stop"),
    ],
)
def test_every_stop_reason(stop: str, finish: str) -> None:
    data, _ = parse(answer([{"text": "x"}], stop))
    assert data["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    "usage, expected",
    [
        ({"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}, Usage(10, 5)),
        # inputTokens excludes the cache: prompt_tokens adds reads and writes back
        (
            {
                "inputTokens": 12,
                "outputTokens": 5,
                "totalTokens": 1517,
                "cacheReadInputTokens": 1500,
            },
            Usage(1512, 5, cache_read_tokens=1500),
        ),
        (
            {
                "inputTokens": 3,
                "outputTokens": 9,
                "totalTokens": 2112,
                "cacheReadInputTokens": 100,
                "cacheWriteInputTokens": 2000,
            },
            Usage(2103, 9, cache_read_tokens=100, cache_write_tokens=2000),
        ),
        # a model whose inputTokens already includes the cache (total = input + output)
        (
            {
                "inputTokens": 1512,
                "outputTokens": 5,
                "totalTokens": 1517,
                "cacheReadInputTokens": 1500,
            },
            Usage(1512, 5, cache_read_tokens=1500),
        ),
        ({"outputTokens": 4}, Usage(0, 4)),
        ({}, None),
        ("nonsense", None),
    ],
)
def test_usage(usage: Any, expected: Usage | None) -> None:
    assert usage_from_bedrock(usage) == expected


def test_usage_with_cache_reaches_the_client() -> None:
    data, usage = parse(
        answer([{"text": "x"}], inputTokens=12, totalTokens=1517, cacheReadInputTokens=1500)
    )
    assert data["usage"] == {
        "prompt_tokens": 1512,
        "completion_tokens": 5,
        "total_tokens": 1517,
        "prompt_tokens_details": {"cached_tokens": 1500},
    }
    assert usage.cost(
        bspec(options={"input_cost": 3.0, "cache_read_cost": 0.3}).options
    ) == pytest.approx((12 * 3.0 + 1500 * 0.3) / 1e6)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"<html>oops</html>", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b'{"usage": {}}', "output.message.content"),
        (b'{"output": {"message": {"role": "assistant"}}}', "output.message.content"),
    ],
)
def test_untranslatable_200_is_a_502(body: bytes, words: str) -> None:
    with pytest.raises(ProviderError) as info:
        PROVIDER.parse_response(bspec(), 200, {}, body)
    assert info.value.status == 502 and words in info.value.message
    assert info.value.message.startswith("bedrock: ")


# ------------------------------------------------------------------ errors


CORAL = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


@pytest.mark.parametrize(
    "status, headers, body, message, err_type, code",
    [
        (
            400,
            {"x-amzn-errortype": "ValidationException" + CORAL},
            {"message": "Malformed input request"},
            "Malformed input request",
            "invalid_request_error",
            "ValidationException",
        ),
        (
            403,
            {"X-Amzn-ErrorType": "AccessDeniedException" + CORAL},
            {"Message": "You don't have access to the model"},
            "You don't have access to the model",
            "permission_error",
            "AccessDeniedException",
        ),
        (
            403,
            {"x-amzn-errortype": "UnrecognizedClientException"},
            {"message": "The security token included in the request is invalid."},
            "The security token included in the request is invalid.",
            "authentication_error",
            "UnrecognizedClientException",
        ),
        (
            429,
            {"x-amzn-errortype": "ThrottlingException" + CORAL},
            {"message": "Too many requests, please wait before trying again."},
            "Too many requests, please wait before trying again.",
            "rate_limit_error",
            "ThrottlingException",
        ),
        (
            408,
            {"x-amzn-errortype": "ModelTimeoutException" + CORAL},
            {"message": "Model has timed out"},
            "Model has timed out",
            "timeout_error",
            "ModelTimeoutException",
        ),
        (
            503,
            {"x-amzn-errortype": "ServiceUnavailableException" + CORAL},
            {"message": "Service unavailable"},
            "Service unavailable",
            "api_error",
            "ServiceUnavailableException",
        ),
        (
            404,
            {},
            {"__type": "com.amazon.coral.service#ResourceNotFoundException", "message": "no model"},
            "no model",
            "not_found_error",
            "ResourceNotFoundException",
        ),
        (
            418,
            {"x-amzn-errortype": "BrandNewException" + CORAL},
            {"message": "new"},
            "new",
            "invalid_request_error",
            "BrandNewException",
        ),
        (
            502,
            {"content-type": "text/html"},
            b"<html><body>Bad Gateway</body></html>",
            "HTML error page",
            "api_error",
            None,
        ),
        (500, {}, b"", "empty body", "api_error", None),
    ],
)
def test_errors(
    status: int, headers: dict[str, str], body: Any, message: str, err_type: str, code: str | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    err = PROVIDER.parse_error(status, headers, raw)
    assert err.status == status
    assert message in err.message
    assert (err.type, err.code) == (err_type, code)


# ------------------------------------------------------------------ streams


def events(*items: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(encode_event(kind, payload) for kind, payload in items)


def text_stream(words: list[str] = ["Hel", "lo ", "world"], **usage: int) -> bytes:  # noqa: B006
    u = {"inputTokens": 9, "outputTokens": 3, "totalTokens": 12, **usage}
    return events(
        ("messageStart", {"role": "assistant"}),
        *[("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in words],
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
        ("metadata", {"usage": u, "metrics": {"latencyMs": 99}}),
    )


def tools_stream() -> bytes:
    """Text, then two tool calls whose argument fragments interleave (block 1 and 2)."""
    return events(
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        (
            "contentBlockStart",
            {
                "contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_w", "name": "weather"}},
            },
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}},
        ),
        (
            "contentBlockStart",
            {
                "contentBlockIndex": 2,
                "start": {"toolUse": {"toolUseId": "tooluse_t", "name": "time"}},
            },
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": ' "Paris"}'}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"tz": "CET"}'}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 50, "outputTokens": 20, "totalTokens": 70}}),
    )


def reasoning_stream() -> bytes:
    return events(
        ("messageStart", {"role": "assistant"}),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Two plus "}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "two."}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "EqQB"}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "Sig=="}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "4"}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "end_turn"}),
        (
            "metadata",
            {
                "usage": {
                    "inputTokens": 4,
                    "outputTokens": 30,
                    "totalTokens": 1034,
                    "cacheReadInputTokens": 1000,
                    "cacheWriteInputTokens": 0,
                }
            },
        ),
    )


def exception_stream() -> bytes:
    return events(
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Part"}}),
    ) + encode_exception("throttlingException", "Too many tokens, please wait before trying again.")


def run(
    raw_chunks: list[bytes], wants_usage: bool = False, model: str = CLAUDE
) -> tuple[list[Any], BedrockStream]:
    """Feed the chunks, then finish; the SSE events (JSON objects or "[DONE]")."""
    t = PROVIDER.stream_translator(
        bspec({"messages": USER, "stream": True}, model, stream=True, wants_usage=wants_usage)
    )
    out = b""
    for c in raw_chunks:
        out += b"".join(t.feed(c))
    out += b"".join(t.finish())
    return parse_sse(out), t


def parse_sse(out: bytes) -> list[Any]:
    text = out.decode()
    assert text.endswith("\n\n")
    got = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        got.append(data if data == "[DONE]" else json.loads(data))
    return got


def normalized(got: list[Any]) -> list[Any]:
    """The events without the per-stream random id and timestamp (checked elsewhere)."""
    return [
        {k: v for k, v in e.items() if k not in ("id", "created")} if isinstance(e, dict) else e
        for e in got
    ]


def deltas(got: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in got if isinstance(e, dict) and e.get("choices")]


STREAMS = {
    "text": text_stream,
    "tools": tools_stream,
    "reasoning": reasoning_stream,
    "exception": exception_stream,
    "kong-aws": lambda: fixture("unit/streaming-chunk-formats/aws/input.bin").read_bytes(),
    "kong-chunks": lambda: b"".join(
        base64.b64decode(p.read_text()) for p in fixtures("bedrock/chunks/chunk-*.txt")
    ),
}


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("wants_usage", [False, True])
def test_every_split_gives_the_same_output(name: str, wants_usage: bool) -> None:
    raw = STREAMS[name]()
    reference, t = run([raw], wants_usage)
    assert reference[-1] == "[DONE]" and reference.count("[DONE]") == 1
    ids = {
        (e["id"], e["created"], e["model"]) for e in reference if isinstance(e, dict) and "id" in e
    }
    assert len(ids) == 1 and next(iter(ids))[2] == CLAUDE  # one id, created and model per stream
    for e in reference:
        if isinstance(e, dict) and "choices" in e:
            ChatCompletionChunk.model_validate(e)  # the OpenAI SDK can read every chunk
    expected = normalized(reference)
    assembled = t.assembled()
    for chunks in [*every_split(raw), byte_by_byte(raw)]:
        got, t2 = run(chunks, wants_usage)
        assert normalized(got) == expected
        assert {k: v for k, v in t2.assembled().items() if k not in ("id", "created")} == {
            k: v for k, v in assembled.items() if k not in ("id", "created")
        }


def test_text_stream() -> None:
    got, t = run([text_stream()], wants_usage=True)
    assert deltas(got)[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas(got)) == "Hello world"
    finish = [
        e["choices"][0]["finish_reason"] for e in got if isinstance(e, dict) and e.get("choices")
    ]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    usage_chunk = got[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
    }
    assert t.usage == Usage(9, 3) and t.error is None and t.started
    assert t.assembled()["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world"},
            "finish_reason": "stop",
        }
    ]
    assert t.assembled()["usage"]["total_tokens"] == 12
    ChatCompletion.model_validate(t.assembled())


def test_no_usage_chunk_unless_the_client_asked() -> None:
    got, t = run([text_stream()], wants_usage=False)
    assert not any(isinstance(e, dict) and "usage" in e for e in got)
    assert t.usage == Usage(9, 3)  # still known for the record


def test_parallel_tool_calls_are_indexed_by_call_not_by_block() -> None:
    got, t = run([tools_stream()])
    calls = [d["tool_calls"][0] for d in deltas(got) if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "tooluse_w",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert calls[2] == {
        "index": 1,
        "id": "tooluse_t",
        "type": "function",
        "function": {"name": "time", "arguments": ""},
    }
    args: dict[int, str] = {}
    for c in calls:
        args[c["index"]] = args.get(c["index"], "") + c["function"]["arguments"]
    assert {i: json.loads(a) for i, a in args.items()} == {0: {"city": "Paris"}, 1: {"tz": "CET"}}
    finish = [
        e["choices"][0]["finish_reason"] for e in got if isinstance(e, dict) and e.get("choices")
    ]
    assert finish[-1] == "tool_calls"
    message = t.assembled()["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert message["tool_calls"] == [
        {
            "id": "tooluse_w",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "tooluse_t",
            "type": "function",
            "function": {"name": "time", "arguments": '{"tz": "CET"}'},
        },
    ]


def test_kongs_streamed_tool_call() -> None:
    _, t = run([STREAMS["kong-chunks"]()])
    message = t.assembled()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "add"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"a": 2, "b": 12}
    assert t.assembled()["choices"][0]["finish_reason"] == "tool_calls"
    assert t.usage == Usage(478, 44)


def test_kongs_streamed_text() -> None:
    got, t = run([STREAMS["kong-aws"]()])
    text = "".join(d.get("content") or "" for d in deltas(got))
    assert text.startswith("Hello! Relativity is") and text.endswith("space, time, and matter.")
    assert t.usage == Usage(9, 97)


def test_reasoning_stream_with_signature() -> None:
    got, t = run([reasoning_stream()])
    ds = deltas(got)
    assert "".join(d.get("reasoning_content") or "" for d in ds) == "Two plus two."
    blocks = [d["thinking_blocks"] for d in ds if "thinking_blocks" in d]
    block = {"type": "thinking", "thinking": "Two plus two.", "signature": "EqQBSig=="}
    assert blocks == [[{"index": 0, **block}]]
    # the block arrives when it stops, before the answer's text
    order = [next(iter(d)) for d in ds[1:] if d]
    assert order.index("thinking_blocks") < order.index("content")
    message = t.assembled()["choices"][0]["message"]
    assert message["reasoning_content"] == "Two plus two." and message["content"] == "4"
    assert message["thinking_blocks"] == [block]
    assert t.usage == Usage(1004, 30, cache_read_tokens=1000)


def test_started_only_with_content() -> None:
    t = PROVIDER.stream_translator(bspec(stream=True))
    t.feed(encode_event("messageStart", {"role": "assistant"}))
    assert not t.started
    t.feed(encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}))
    assert t.started


def test_each_event_is_forwarded_as_soon_as_it_is_complete() -> None:
    t = PROVIDER.stream_translator(bspec(stream=True))
    raw = encode_event("messageStart", {"role": "assistant"})
    delta = encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}})
    assert len(t.feed(raw + delta[:-1])) == 1  # the role chunk; the delta is not complete
    assert b'"content":"x"' in b"".join(t.feed(delta[-1:]))


def test_an_exception_message_ends_the_stream_with_an_error() -> None:
    got, t = run([exception_stream() + text_stream()])  # later bytes are ignored
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
    assert got[-2] == {
        "error": {
            "message": "Too many tokens, please wait before trying again.",
            "type": "rate_limit_error",
            "param": None,
            "code": "ThrottlingException",
        }
    }
    assert "".join(d.get("content") or "" for d in deltas(got)) == "Part"
    assert t.error is not None and t.error.status == 429
    assert t.finish() == [] and t.feed(text_stream()) == []


@pytest.mark.parametrize(
    "kind, status, err_type",
    [
        ("validationException", 400, "invalid_request_error"),
        ("modelStreamErrorException", 424, "api_error"),
        ("internalServerException", 500, "api_error"),
        ("serviceUnavailableException", 503, "api_error"),
        ("someNewException", 502, "api_error"),
    ],
)
def test_stream_exception_types(kind: str, status: int, err_type: str) -> None:
    got, t = run(
        [encode_event("messageStart", {"role": "assistant"}) + encode_exception(kind, "boom")]
    )
    assert t.error is not None and (t.error.status, t.error.type) == (status, err_type)
    assert got[-2]["error"]["message"] == "boom"


def test_aws_error_frames() -> None:
    frame = encode_message(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "oops"}, b""
    )
    got, t = run([frame])
    assert t.error is not None and t.error.message == "oops" and got[-1] == "[DONE]"


def test_corrupt_crc_mid_stream_is_an_error_event_not_an_exception() -> None:
    good = text_stream()
    first = encode_event("messageStart", {"role": "assistant"})
    second = encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "ok"}})
    broken = bytearray(
        encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "no"}})
    )
    broken[-1] ^= 0xFF
    raw = first + second + bytes(broken) + good
    for chunks in [[raw], byte_by_byte(raw), *list(every_split(raw))[::7]]:
        got, t = run(chunks)
        assert "".join(d.get("content") or "" for d in deltas(got)) == "ok"
        assert "corrupt event stream" in got[-2]["error"]["message"]
        assert "CRC" in got[-2]["error"]["message"]
        assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
        assert t.error is not None and t.error.status == 502


@pytest.mark.parametrize(
    "cut, words",
    [
        (lambda raw: raw[: raw.index(b"messageStop") - 40], "messageStop"),
        (lambda raw: raw[:-5], "metadata"),  # in the middle of the last message
        (lambda raw: raw[: raw.index(b":event-type\x07\x00\x08metadata") - 12], "metadata"),
    ],
)
def test_a_cut_stream_is_an_error(cut: Any, words: str) -> None:
    got, t = run([cut(text_stream())])
    assert words in got[-2]["error"]["message"] and "truncated" in got[-2]["error"]["message"]
    assert got[-1] == "[DONE]" and t.error is not None


def test_finish_with_an_upstream_failure() -> None:
    t = PROVIDER.stream_translator(bspec(stream=True))
    t.feed(text_stream()[:200])
    err = ProviderError(502, "the upstream connection broke off")
    got = parse_sse(b"".join(t.finish(err)))
    assert got == [err.to_openai(), "[DONE]"] and t.error is err


# ------------------------------------------------------------------ native passthrough


def native_spec(path: str, model: str | None = None, query: str = "", **options: Any) -> CallSpec:
    raw = fixture("native/bedrock/request/with-functions-and-chatter.json").read_bytes()
    return CallSpec(
        route_type=CHAT,
        body=json.loads(raw),
        model=model,
        options=bspec(options={**options}).options,
        stream=False,
        path=path,
        query=query,
        raw_body=raw,
        llm_format="bedrock",
    )


@pytest.mark.parametrize(
    "path, model",
    [
        (f"/model/{CLAUDE}/converse", CLAUDE),
        (
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        (f"/bedrock/model/{encode_model_id(PROFILE_ARN)}/converse", PROFILE_ARN),
        ("/v1/chat/completions", None),
    ],
)
def test_native_model_comes_from_the_path(path: str, model: str | None) -> None:
    assert PROVIDER.native_model(native_spec(path)) == model


@pytest.mark.parametrize(
    "path, model, options, query, url, stream",
    [
        (
            "/model/anthropic.claude-v2/converse",
            None,
            {},
            "",
            "https://bedrock-runtime.eu-west-3.amazonaws.com/model/anthropic.claude-v2/converse",
            False,
        ),
        (
            "/model/anthropic.claude-v2/converse-stream",
            CLAUDE,
            {},
            "",
            f"https://bedrock-runtime.eu-west-3.amazonaws.com/model/{CLAUDE}/converse-stream",
            True,
        ),
        (
            "/model/x/converse",
            PROFILE_ARN,
            {"upstream_url": "http://127.0.0.1:8123/ignored/path"},
            "trace=1",
            f"http://127.0.0.1:8123/model/{encode_model_id(PROFILE_ARN)}/converse?trace=1",
            False,
        ),
    ],
)
def test_build_native_request(
    path: str, model: str | None, options: dict[str, Any], query: str, url: str, stream: bool
) -> None:
    s = native_spec(path, model, query, **options)
    up = PROVIDER.build_native_request(s)
    assert up.url == url and up.stream is stream and up.method == "POST"
    assert up.body == s.raw_body  # the client's body, byte for byte


def test_native_request_to_another_path_is_a_400() -> None:
    with pytest.raises(ProviderError) as info:
        PROVIDER.build_native_request(native_spec("/v1/chat/completions"))
    assert info.value.status == 400 and "/converse" in info.value.message


def test_native_answer_passes_unchanged_with_usage_and_model() -> None:
    body = answer([{"text": "ok"}], cacheWriteInputTokens=100, totalTokens=115)
    s = native_spec(f"/model/{CLAUDE}/converse")
    reply = PROVIDER.parse_native_response(s, 200, {}, body)
    assert reply.body == body
    assert reply.usage == Usage(110, 5, cache_write_tokens=100)
    assert reply.model == CLAUDE


def test_native_stream_observer_reads_usage_and_answer() -> None:
    s = native_spec(f"/model/{CLAUDE}/converse-stream")
    observer = PROVIDER.native_stream_observer(s)
    for c in byte_by_byte(tools_stream()):
        observer.feed(c)
    observer.finish()
    assert observer.usage == Usage(50, 20) and observer.error is None
    assembled = observer.assembled()
    assert assembled["model"] == CLAUDE
    assert [c["function"]["name"] for c in assembled["choices"][0]["message"]["tool_calls"]] == [
        "weather",
        "time",
    ]


def test_native_bodies_are_signed_like_any_other(frozen_clock: datetime.datetime) -> None:
    s = native_spec(f"/model/{CLAUDE}/converse")
    up = PROVIDER.build_native_request(s)
    PROVIDER.sign(up, s, AWSCredentials("AKID", "secret"))
    assert up.headers["x-amz-content-sha256"] == hashlib.sha256(s.raw_body).hexdigest()
    assert up.headers["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/eu-west-3/bedrock/"
    )


def test_a_tool_call_without_input_gets_empty_object_arguments() -> None:
    raw = events(
        ("messageStart", {"role": "assistant"}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t1", "name": "now"}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}}),
    )
    got, t = run([raw])
    args = "".join(
        d["tool_calls"][0]["function"]["arguments"] for d in deltas(got) if "tool_calls" in d
    )
    assert args == "{}"
    assert t.assembled()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


# ------------------------------------------------------------------ preserve


def preserve_spec(path: str, **kw: Any) -> CallSpec:
    return CallSpec(
        route_type=PRESERVE,
        body={},
        model=None,
        options=bspec().options,
        stream=kw.pop("stream", False),
        path=path,
        raw_body=b'{"prompt": "x"}',
        **kw,
    )


@pytest.mark.parametrize(
    "path, stream",
    [
        (f"/model/{CLAUDE}/invoke", False),
        (f"/model/{CLAUDE}/invoke-with-response-stream", True),
        (f"/model/{CLAUDE}/converse-stream", True),
    ],
)
def test_preserve_requests(path: str, stream: bool) -> None:
    up = PROVIDER.build_request(preserve_spec(path))
    assert up.url == f"https://bedrock-runtime.eu-west-3.amazonaws.com{path}"
    assert up.stream is stream and up.body == b'{"prompt": "x"}'


def test_preserved_invoke_model_usage_from_headers() -> None:
    headers = {
        "X-Amzn-Bedrock-Input-Token-Count": "12",
        "X-Amzn-Bedrock-Output-Token-Count": "34",
        "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": "100",
    }
    body = b'{"content": [{"type": "text", "text": "hi"}]}'
    reply = PROVIDER.parse_response(preserve_spec(f"/model/{CLAUDE}/invoke"), 200, headers, body)
    assert reply.body == body and reply.usage == Usage(112, 34, cache_read_tokens=100)


def invoke_chunk(obj: dict[str, Any]) -> bytes:
    return encode_event("chunk", {"bytes": base64.b64encode(json.dumps(obj).encode()).decode()})


def test_preserved_invoke_stream_is_observed_for_its_metrics() -> None:
    raw = invoke_chunk({"type": "content_block_delta", "delta": {"text": "hi"}}) + invoke_chunk(
        {
            "type": "message_stop",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 8, "outputTokenCount": 2},
        }
    )
    t = PROVIDER.stream_translator(preserve_spec(f"/model/{CLAUDE}/invoke-with-response-stream"))
    for c in byte_by_byte(raw):
        t.feed(c)
    t.finish()
    assert t.usage == Usage(8, 2) and t.error is None
    assert t.started  # the first delta is the first token (time to first token)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"type": "message_start", "message": {}}, {"type": "content_block_delta"}),
        ({"outputText": ""}, {"outputText": "Hello"}),  # Titan
        ({"generation": ""}, {"generation": "Hello"}),  # Llama
        ({"outputs": []}, {"outputs": [{"text": "Hello"}]}),  # Mistral
    ],
)
def test_invoke_stream_starts_at_the_first_output(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    t = PROVIDER.stream_translator(preserve_spec(f"/model/{CLAUDE}/invoke-with-response-stream"))
    t.feed(invoke_chunk(first))
    assert not t.started  # no output yet
    t.feed(invoke_chunk(second))
    assert t.started
    # without metrics an InvokeModel stream is not an error: it is only observed
    t = PROVIDER.stream_translator(preserve_spec(f"/model/{CLAUDE}/invoke-with-response-stream"))
    t.feed(invoke_chunk({"type": "content_block_delta"}))
    t.finish()
    assert t.error is None


METRICS = {"amazon-bedrock-invocationMetrics": {"inputTokenCount": 5, "outputTokenCount": 3}}


@pytest.mark.parametrize(
    ("chunks", "finish"),
    [
        (  # Titan Text
            [
                {"outputText": "Hello", "index": 0, "completionReason": None},
                {"outputText": " world", "index": 0, "completionReason": "FINISH", **METRICS},
            ],
            "stop",
        ),
        (  # Llama
            [
                {"generation": "Hello", "stop_reason": None},
                {"generation": " world", "stop_reason": None},
                {"generation": "", "stop_reason": "length", **METRICS},
            ],
            "length",
        ),
        (  # Anthropic's legacy text completions
            [
                {"completion": "Hello", "stop_reason": None},
                {"completion": " world", "stop_reason": "stop_sequence", **METRICS},
            ],
            "stop",
        ),
        (  # Cohere Command: the finish reason comes in a last chunk without text
            [
                {"is_finished": False, "event_type": "text-generation", "text": "Hello"},
                {"is_finished": False, "event_type": "text-generation", "text": " world"},
                {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE"},
            ],
            "stop",
        ),
        (  # Mistral
            [
                {"outputs": [{"text": "Hello", "stop_reason": None}]},
                {"outputs": [{"text": " world", "stop_reason": "length"}], **METRICS},
            ],
            "length",
        ),
        (  # OpenAI-shaped (AI21 Jamba, gpt-oss)
            [
                {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **METRICS},
            ],
            "stop",
        ),
    ],
    ids=["titan", "llama", "claude-text-completion", "cohere", "mistral", "openai-shaped"],
)
def test_invoke_stream_answer_is_assembled_for_the_record(
    chunks: list[dict[str, Any]], finish: str
) -> None:
    t = PROVIDER.stream_translator(preserve_spec(f"/model/{CLAUDE}/invoke-with-response-stream"))
    for c in byte_by_byte(b"".join(invoke_chunk(obj) for obj in chunks)):
        t.feed(c)
    t.finish()
    assert t.error is None
    answer = t.assembled()["choices"][0]
    assert answer["message"]["content"] == "Hello world"
    assert answer["finish_reason"] == finish


def test_claude_invoke_stream_keeps_text_thinking_and_tool_calls() -> None:
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": CLAUDE, "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "1+1"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "Let me"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": " check."},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": 1,'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ' "b": 1}'},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop", **METRICS},
    ]
    t = PROVIDER.stream_translator(preserve_spec(f"/model/{CLAUDE}/invoke-with-response-stream"))
    for obj in events:
        t.feed(invoke_chunk(obj))
    t.finish()
    answer = t.assembled()["choices"][0]
    assert answer["finish_reason"] == "tool_calls"
    message = answer["message"]
    assert message["content"] == "Let me check."
    assert message["reasoning_content"] == "1+1"
    assert message["thinking_blocks"] == [
        {"type": "thinking", "thinking": "1+1", "signature": "sig"}
    ]
    assert message["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'},
        }
    ]
    assert t.usage == Usage(5, 3)


# ------------------------------------------------------------------ embeddings

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-multilingual-v3"


def espec(body: dict[str, Any], model: str = TITAN, **options: Any) -> CallSpec:
    return spec(RouteType.EMBEDDINGS, body, model=model, **REGION, **options)


@pytest.mark.parametrize(
    "model, body, expected",
    [
        (TITAN, {"input": "hello"}, {"inputText": "hello"}),
        (TITAN, {"input": ["hello"], "dimensions": 256}, {"inputText": "hello", "dimensions": 256}),
        (
            COHERE,
            {"input": ["a", "b"]},
            {"texts": ["a", "b"], "input_type": "search_document"},
        ),
        (
            "cohere.embed-v4:0",
            {"input": "q", "input_type": "search_query", "dimensions": 512},
            {"texts": ["q"], "input_type": "search_query", "output_dimension": 512},
        ),
    ],
)
def test_embedding_requests(model: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    up = PROVIDER.build_request(espec({"model": model, "encoding_format": "float", **body}, model))
    assert up.url == f"https://bedrock-runtime.eu-west-3.amazonaws.com/model/{model}/invoke"
    assert json.loads(up.body) == expected and up.stream is False


@pytest.mark.parametrize(
    "model, body, words",
    [
        (TITAN, {"input": ["a", "b"]}, "one text per request"),
        (TITAN, {"input": [[1, 2, 3]]}, "array of strings"),
        (CLAUDE, {"input": "x"}, "titan-embed"),
    ],
)
def test_embedding_requests_bedrock_cannot_serve(
    model: str, body: dict[str, Any], words: str
) -> None:
    with pytest.raises(ProviderError) as info:
        PROVIDER.build_request(espec(body, model))
    assert info.value.status == 400 and words in info.value.message


@pytest.mark.parametrize(
    "model, answer_body, headers",
    [
        (TITAN, {"embedding": [0.5, -0.25, 1.0], "inputTextTokenCount": 3}, {}),
        (
            COHERE,
            {"embeddings": [[0.5, -0.25, 1.0]], "id": "x", "response_type": "embeddings_floats"},
            {"X-Amzn-Bedrock-Input-Token-Count": "3"},
        ),
        (
            COHERE,
            {"embeddings": {"float": [[0.5, -0.25, 1.0]]}, "response_type": "embeddings_by_type"},
            {"x-amzn-bedrock-input-token-count": "3"},
        ),
    ],
)
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embedding_answers(
    model: str, answer_body: dict[str, Any], headers: dict[str, str], encoding: str
) -> None:
    s = espec({"input": "abc", "encoding_format": encoding}, model)
    reply = PROVIDER.parse_response(s, 200, headers, json.dumps(answer_body).encode())
    data = json.loads(reply.body)
    item = data["data"][0]
    vector = item["embedding"]
    if encoding == "base64":
        raw = base64.b64decode(vector)
        vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert vector == [0.5, -0.25, 1.0]  # exact in float32 too
    assert (data["object"], item["object"], item["index"], data["model"]) == (
        "list",
        "embedding",
        0,
        model,
    )
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert reply.usage == Usage(3, 0)


def test_embedding_answer_without_vectors_is_a_502() -> None:
    with pytest.raises(ProviderError) as info:
        PROVIDER.parse_response(espec({"input": "x"}), 200, {}, b'{"message": "?"}')
    assert info.value.status == 502 and "embedding" in info.value.message


ODD_PAYLOADS: list[Any] = [
    [],
    "text",
    7,
    None,
    {"contentBlockIndex": "x", "delta": {"text": 5}},
    {"contentBlockIndex": 0, "delta": []},
    {"contentBlockIndex": 0, "delta": {"toolUse": []}},
    {"contentBlockIndex": 0, "delta": {"toolUse": {"input": 3}}},
    {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": [], "signature": 1}}},
    {"contentBlockIndex": 0, "start": {"toolUse": "x"}},
    {"contentBlockIndex": 0, "start": []},
    {"stopReason": ["end_turn"]},
    {"usage": [], "metrics": "x"},
    {"usage": {"inputTokens": "9", "outputTokens": None}},
]


@pytest.mark.parametrize(
    "kind",
    [
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
        "somethingNew",
    ],
)
def test_odd_events_never_raise(kind: str) -> None:
    """Whatever an event holds, the translator answers with chunks or an error event."""
    for payload in ODD_PAYLOADS:
        raw = encode_message(
            {":message-type": "event", ":event-type": kind, ":content-type": "application/json"},
            json.dumps(payload),
        )
        got, t = run([raw, text_stream()])
        assert got[-1] == "[DONE]"
        if not isinstance(payload, dict):
            assert t.error is not None and "not a JSON object" in t.error.message
    got, t = run([encode_message({":message-type": "event", ":event-type": kind}, b"\xff{")])
    assert t.error is not None and got[-1] == "[DONE]"


def test_the_openai_sdk_stream_helper_accumulates_several_thinking_blocks() -> None:
    """Two reasoning blocks (one redacted) in one stream: the openai SDK's
    `chat.completions.stream()` helper merges list deltas by `index` and must get both."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    raw = events(
        ("messageStart", {"role": "assistant"}),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hm."}}},
        ),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "Sig=="}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        (
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"reasoningContent": {"redactedContent": "UmVk"}}},
        ),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"text": "4"}}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        ("messageStop", {"stopReason": "end_turn"}),
        ("metadata", {"usage": {"inputTokens": 4, "outputTokens": 9, "totalTokens": 13}}),
    )
    got, _ = run([raw])
    state = ChatCompletionStreamState()
    for event in got[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    message = state.get_final_completion().choices[0].message
    blocks = [
        {k: v for k, v in b.items() if k != "index"} for b in message.model_extra["thinking_blocks"]
    ]
    assert blocks == [
        {"type": "thinking", "thinking": "Hm.", "signature": "Sig=="},
        {"type": "redacted_thinking", "data": "UmVk"},
    ]
    assert message.content == "4"
