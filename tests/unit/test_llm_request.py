"""addons/llm_request.py: validating and rewriting the client's request body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from addons.llm_request import (
    MAX_DEPTH,
    apply_options,
    depth_exceeds,
    has_templates,
    parse_json,
    render_model,
    resolve_model,
    strip_gateway_fields,
    validate,
)
from providers.base import ProviderError, RouteType
from providers.options import ModelConfig
from tests.unit.conftest import CIHeaders

CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE = (
    RouteType.CHAT,
    RouteType.COMPLETIONS,
    RouteType.EMBEDDINGS,
    RouteType.PRESERVE,
)
MSGS = [{"role": "user", "content": "hi"}]


def bad(fn, *args) -> ProviderError:
    with pytest.raises(ProviderError) as e:
        fn(*args)
    assert e.value.status == 400
    assert e.value.type == "invalid_request_error"
    return e.value


# ------------------------------------------------------------------------ parse_json


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"x"', b"null", b"\xff"])
def test_parse_json_rejects_what_is_not_an_object(raw: bytes) -> None:
    assert bad(parse_json, raw).code == "invalid_json"


def test_parse_json_accepts_an_object() -> None:
    assert parse_json(b'{"model": "m"}') == {"model": "m"}


def _nested(levels: int) -> bytes:
    """A body whose `metadata` nests arrays so that the whole body is `levels` deep."""
    inner = levels - 1
    return b'{"metadata":' + b"[" * inner + b"]" * inner + b"}"


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # deeper than the parser's stack: a RecursionError, not a 500
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        _nested(MAX_DEPTH + 1),  # parses, but would trouble the encoders after us
    ],
    ids=["unclosed", "parser-deep", "limit+1"],
)
def test_parse_json_refuses_bodies_nested_too_deeply(raw: bytes) -> None:
    err = bad(parse_json, raw)
    assert err.code == "invalid_json" and "nested too deeply" in err.message


def test_parse_json_accepts_nesting_up_to_the_limit_and_many_shallow_objects() -> None:
    assert parse_json(_nested(MAX_DEPTH))["metadata"]
    wide = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}] * 500}
    raw = json.dumps(wide).encode()
    assert raw.count(b"{") > MAX_DEPTH  # the walk runs, and finds it shallow
    assert parse_json(raw) == wide


@pytest.mark.parametrize(
    "value, limit, deeper",
    [
        ({}, 1, False),
        ({"a": {}}, 1, True),
        ([[[]]], 3, False),
        ([[[]]], 2, True),
        ({"a": 1}, 1, False),
    ],
)
def test_depth_exceeds(value: Any, limit: int, deeper: bool) -> None:
    assert depth_exceeds(value, limit) is deeper


# -------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    "route_type, body, field",
    [
        (CHAT, {"model": 4, "messages": MSGS}, "model"),
        (CHAT, {"model": ["gpt-4"], "messages": MSGS}, "model"),
        (CHAT, {"stream": "true", "messages": MSGS}, "stream"),
        (CHAT, {"stream": 1, "messages": MSGS}, "stream"),
        (CHAT, {"stream": True, "stream_options": "usage", "messages": MSGS}, "stream_options"),
        (CHAT, {}, "messages"),
        (CHAT, {"messages": []}, "messages"),
        (CHAT, {"messages": "hi"}, "messages"),
        (CHAT, {"messages": {"role": "user"}}, "messages"),
        (CHAT, {"messages": ["hi"]}, "messages"),
        (CHAT, {"messages": [{"content": "no role"}]}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": 42}]}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages"),
        (CHAT, {"messages": MSGS, "temperature": "0.5"}, "temperature"),
        (CHAT, {"messages": MSGS, "temperature": True}, "temperature"),
        (CHAT, {"messages": MSGS, "top_p": "1"}, "top_p"),
        (CHAT, {"messages": MSGS, "presence_penalty": [0]}, "presence_penalty"),
        (CHAT, {"messages": MSGS, "max_tokens": 512.5}, "max_tokens"),
        (CHAT, {"messages": MSGS, "max_tokens": 512.0}, "max_tokens"),
        (CHAT, {"messages": MSGS, "max_tokens": "512"}, "max_tokens"),
        (CHAT, {"messages": MSGS, "max_completion_tokens": False}, "max_completion_tokens"),
        (CHAT, {"messages": MSGS, "n": 1.5}, "n"),
        (CHAT, {"messages": MSGS, "seed": "7"}, "seed"),
        (COMPLETIONS, {}, "prompt"),
        (COMPLETIONS, {"prompt": ""}, "prompt"),
        (COMPLETIONS, {"prompt": []}, "prompt"),
        (COMPLETIONS, {"prompt": 42}, "prompt"),
        (COMPLETIONS, {"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
        (EMBEDDINGS, {}, "input"),
        (EMBEDDINGS, {"input": ""}, "input"),
        (EMBEDDINGS, {"input": []}, "input"),
        (EMBEDDINGS, {"input": {"text": "x"}}, "input"),
    ],
)
def test_validate_rejects_wrong_types_naming_the_field(
    route_type: RouteType, body: dict, field: str
) -> None:
    err = bad(validate, route_type, body)
    assert err.param == field
    assert f"'{field}" in err.message  # e.g. "'temperature' must be a number" or "'messages[0]..."


def test_validate_names_the_message_index() -> None:
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": 3}]}
    assert "messages[1].content" in bad(validate, CHAT, body).message
    assert "messages[1]" in bad(validate, CHAT, {"messages": [MSGS[0], "x"]}).message


@pytest.mark.parametrize(
    "route_type, body",
    [
        (CHAT, {"model": "gpt-4", "messages": MSGS}),
        (CHAT, {"messages": MSGS, "model": None, "stream": None}),
        (CHAT, {"messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        (CHAT, {"messages": [{"role": "assistant", "content": None, "tool_calls": []}]}),
        (
            CHAT,
            {"messages": MSGS, "temperature": 0, "top_p": 1, "max_tokens": 512, "n": 1, "seed": 3},
        ),
        (
            CHAT,
            {
                "messages": MSGS,
                "temperature": 0.7,
                "frequency_penalty": -1.5,
                "max_completion_tokens": 9,
            },
        ),
        (COMPLETIONS, {"prompt": "Say this"}),
        (COMPLETIONS, {"prompt": ["a", "b"], "max_tokens": 5}),
        (EMBEDDINGS, {"input": "text"}),
        (EMBEDDINGS, {"input": ["a", "b"], "dimensions": 8}),
        (EMBEDDINGS, {"input": [1, 2, 3]}),
        (PRESERVE, {"anything": "goes"}),
    ],
)
def test_validate_accepts_valid_bodies(route_type: RouteType, body: dict) -> None:
    validate(route_type, body)


# ----------------------------------------------------------------------- resolve_model


@pytest.mark.parametrize(
    "route_type, configured, body, expected",
    [
        (CHAT, "gpt-4", {}, "gpt-4"),
        (CHAT, "gpt-4", {"model": "gpt-4"}, "gpt-4"),
        (CHAT, "gpt-4", {"model": ""}, "gpt-4"),
        (CHAT, "gpt-4", {"model": None}, "gpt-4"),
        (CHAT, None, {"model": "gpt-4o-mini"}, "gpt-4o-mini"),
        (
            EMBEDDINGS,
            "text-embedding-3-small",
            {"model": "text-embedding-3-small"},
            "text-embedding-3-small",
        ),
        (PRESERVE, None, {}, None),
    ],
)
def test_resolve_model(
    route_type: RouteType, configured: str | None, body: dict, expected: str | None
) -> None:
    assert resolve_model(route_type, configured, body) == expected


def test_a_different_client_model_is_refused_like_kong() -> None:
    err = bad(resolve_model, CHAT, "gpt-4", {"model": "gpt-4o"})
    assert err.message == "cannot use own model - must be: gpt-4"
    assert err.param == "model"


@pytest.mark.parametrize("route_type", [CHAT, COMPLETIONS, EMBEDDINGS])
@pytest.mark.parametrize("body", [{}, {"model": ""}, {"model": None}])
def test_no_model_anywhere_is_a_400(route_type: RouteType, body: dict) -> None:
    err = bad(resolve_model, route_type, None, body)
    assert "model" in err.message and err.param == "model"


# ------------------------------------------------------------------------ render_model


def model(**kw: Any) -> ModelConfig:
    return ModelConfig.model_validate({"provider": "openai", **kw})


LOOKUP = {
    "headers": CIHeaders({"X-Model": "gpt-4o", "X-Region": "eu"}),
    "uri_captures": {"deployment": "prod-1", "model": "gpt-4o-mini"},
    "query_params": {"api-version": "2024-06-01", "tier": "fast"},
}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("$(headers.x-model)", "gpt-4o"),
        ("$(headers.X-MODEL)", "gpt-4o"),  # header names are case-insensitive
        ("$(uri_captures.model)", "gpt-4o-mini"),
        ("$(query_params.tier)", "fast"),
        ("$(uri_captures.deployment)-$(headers.x-region)/$(query_params.tier)", "prod-1-eu/fast"),
        ("fixed-name", "fixed-name"),
    ],
)
def test_render_model_fills_templates(name: str, expected: str) -> None:
    m = model(name=name)
    assert has_templates(m) == ("$(" in name)
    assert render_model(m, LOOKUP).name == expected


def test_render_model_fills_nested_options_and_keeps_the_rest() -> None:
    m = model(
        name="$(headers.x-model)",
        options={
            "upstream_url": "https://$(uri_captures.deployment).example.com/v1?api-version=$(query_params.api-version)",
            "max_tokens": 256,
            "temperature": 0.2,
        },
    )
    out = render_model(m, LOOKUP)
    assert out.name == "gpt-4o"
    assert out.options.upstream_url == "https://prod-1.example.com/v1?api-version=2024-06-01"
    assert (out.options.max_tokens, out.options.temperature) == (256, 0.2)
    assert out.provider == "openai"
    assert m.name == "$(headers.x-model)"  # the route's config is not changed


@pytest.mark.parametrize(
    "name, missing",
    [
        ("$(headers.x-absent)", "headers key x-absent"),
        ("$(uri_captures.absent)", "uri_captures key absent"),
        ("$(query_params.absent)", "query_params key absent"),
        ("a-$(headers.x-model)-$(query_params.nope)", "query_params key nope"),
    ],
)
def test_render_model_missing_key_is_a_400_naming_it(name: str, missing: str) -> None:
    err = bad(render_model, model(name=name), LOOKUP)
    assert missing in err.message


def test_render_model_empty_value_counts_as_missing() -> None:
    err = bad(
        render_model,
        model(name="$(headers.x-empty)"),
        {**LOOKUP, "headers": CIHeaders({"x-empty": ""})},
    )
    assert "x-empty" in err.message


def test_render_model_unknown_source_is_a_400() -> None:
    assert "cookies" in bad(render_model, model(name="$(cookies.x)"), LOOKUP).message


def test_render_model_a_client_value_that_makes_the_config_invalid_is_a_400_not_a_crash() -> None:
    # the upstream_url comes from a client header here: a bad value is the client's error
    m = model(name="gpt-4", options={"upstream_url": "$(headers.x-upstream)"})
    err = bad(render_model, m, {**LOOKUP, "headers": CIHeaders({"x-upstream": "not-a-url"})})
    assert "upstream_url" in err.message


def test_render_model_does_not_expand_templates_inside_values() -> None:
    lookup = {**LOOKUP, "headers": CIHeaders({"x-model": "$(query_params.tier)"})}
    assert render_model(model(name="$(headers.x-model)"), lookup).name == "$(query_params.tier)"


# ------------------------------------------------------------------------ apply_options


def test_options_override_the_clients_values() -> None:
    m = model(
        name="gpt-4", options={"max_tokens": 512, "temperature": 0.5, "top_p": 0.9, "top_k": 40}
    )
    body = {"messages": MSGS, "max_tokens": 4000, "temperature": 1.5, "top_p": 0.1, "user": "u"}
    out = apply_options(CHAT, body, m)
    assert out == {
        "messages": MSGS,
        "max_tokens": 512,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "user": "u",
    }
    assert body["max_tokens"] == 4000  # the client's body is kept as sent (for the record)


def test_unset_options_keep_the_clients_values() -> None:
    body = {"messages": MSGS, "max_tokens": 4000, "temperature": 1.5}
    assert apply_options(CHAT, body, model(name="gpt-4")) == body
    assert apply_options(CHAT, body, model(name="gpt-4", options={"temperature": 0})) == {
        **body,
        "temperature": 0,
    }


def test_max_completion_tokens_is_kept_when_the_client_used_it() -> None:
    m = model(name="o3", options={"max_tokens": 1024})
    out = apply_options(CHAT, {"messages": MSGS, "max_completion_tokens": 99999}, m)
    assert out["max_completion_tokens"] == 1024
    assert "max_tokens" not in out


def test_completions_get_options_too_but_embeddings_and_preserve_do_not() -> None:
    m = model(name="x", options={"max_tokens": 64, "temperature": 0.1})
    assert apply_options(COMPLETIONS, {"prompt": "p"}, m) == {
        "prompt": "p",
        "max_tokens": 64,
        "temperature": 0.1,
    }
    for rt in (EMBEDDINGS, PRESERVE):
        assert apply_options(rt, {"input": "i"}, m) == {"input": "i"}


# ---------------------------------------------------------------- strip_gateway_fields


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"messages": MSGS, "metadata": {"user_id": "u1", "session_id": "s"}}, {"messages": MSGS}),
        (
            {"messages": MSGS, "metadata": {"n": 1}, "store": True},
            {"messages": MSGS, "store": True},
        ),
        ({"messages": MSGS, "metadata": "x"}, {"messages": MSGS}),
        (
            {"messages": MSGS, "store": True, "metadata": {"a": "b"}},
            {"messages": MSGS, "store": True, "metadata": {"a": "b"}},
        ),
        ({"messages": MSGS}, {"messages": MSGS}),
    ],
)
def test_strip_gateway_fields(body: dict, expected: dict) -> None:
    original = dict(body)
    assert strip_gateway_fields(body) == expected
    assert body == original
