"""providers/base.py: usage and cost, URL joining, generic upstream errors."""

from __future__ import annotations

import json

import pytest

from providers.base import ProviderError, Usage, generic_error, join_url
from providers.options import ModelOptions


@pytest.mark.parametrize(
    "usage, prices, cost",
    [
        # 1M prompt tokens at $2.50 and 1M completion tokens at $10 per 1M
        (Usage(1_000_000, 1_000_000), {"input_cost": 2.5, "output_cost": 10}, 12.5),
        (Usage(1000, 500), {"input_cost": 3, "output_cost": 15}, 0.0105),
        # cached prompt tokens at their own price (they are part of prompt_tokens)
        (
            Usage(10_000, 0, cache_read_tokens=8_000),
            {"input_cost": 2, "output_cost": 8, "cache_read_cost": 0.5},
            0.008,
        ),
        # cache writes at their own price
        (
            Usage(10_000, 1_000, cache_read_tokens=2_000, cache_write_tokens=5_000),
            {"input_cost": 3, "output_cost": 15, "cache_read_cost": 0.3, "cache_write_cost": 3.75},
            (3_000 * 3 + 2_000 * 0.3 + 5_000 * 3.75 + 1_000 * 15) / 1e6,
        ),
        # cached tokens default to the input price when no cache price is set
        (Usage(10_000, 0, cache_read_tokens=8_000), {"input_cost": 2, "output_cost": 8}, 0.02),
        # a free cache read is free, not "unset"
        (Usage(10_000, 0, cache_read_tokens=10_000), {"input_cost": 2, "cache_read_cost": 0}, 0.0),
        # only one side priced: the other costs nothing
        (Usage(1_000_000, 1_000_000), {"output_cost": 4}, 4.0),
        (Usage(1_000_000, 1_000_000), {"input_cost": 1}, 1.0),
    ],
)
def test_cost_from_per_million_prices(usage: Usage, prices: dict, cost: float) -> None:
    assert usage.cost(ModelOptions(**prices)) == pytest.approx(cost, abs=1e-9)


def test_cost_is_none_when_unpriced() -> None:
    assert Usage(100, 100).cost(ModelOptions()) is None
    # cache prices alone do not make a price
    assert Usage(100, 100, cache_read_tokens=50).cost(ModelOptions(cache_read_cost=1)) is None


def test_cost_of_zero_tokens_is_zero_not_none() -> None:
    assert Usage().cost(ModelOptions(input_cost=1, output_cost=1)) == 0.0


def test_total_and_openai_shape() -> None:
    u = Usage(120, 30, cache_read_tokens=100, reasoning_tokens=20)
    assert u.total_tokens == 150
    assert u.to_openai() == {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    assert Usage(1, 2).to_openai() == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }


@pytest.mark.parametrize(
    "upstream_url, expected",
    [
        (None, "https://api.example.com/v1/chat/completions"),
        ("", "https://api.example.com/v1/chat/completions"),
        ("http://localhost:8080", "http://localhost:8080/v1/chat/completions"),
        ("http://localhost:8080/", "http://localhost:8080/v1/chat/completions"),
        ("https://h.example?key=1", "https://h.example/v1/chat/completions?key=1"),
        (
            "https://h.example/openai/deployments/d/chat/completions?api-version=1",
            "https://h.example/openai/deployments/d/chat/completions?api-version=1",
        ),
        ("https://h.example/v2", "https://h.example/v2"),
    ],
)
def test_join_url(upstream_url: str | None, expected: str) -> None:
    assert join_url(upstream_url, "https://api.example.com/", "/v1/chat/completions") == expected


@pytest.mark.parametrize(
    "status, body, message, type_",
    [
        (
            400,
            b'{"error": {"message": "bad input", "type": "x"}}',
            "bad input",
            "invalid_request_error",
        ),
        (401, b'{"error": "invalid key"}', "invalid key", "authentication_error"),
        (403, b'{"message": "forbidden here"}', "forbidden here", "permission_error"),
        (422, b'{"detail": "field required"}', "field required", "invalid_request_error"),
        (429, b"slow down", "slow down", "rate_limit_error"),
        (
            500,
            b"<html><body>boom</body></html>",
            "acme upstream returned an HTML error page (HTTP 500)",
            "api_error",
        ),
        (
            502,
            b"  <!DOCTYPE html>\n<html/>",
            "acme upstream returned an HTML error page (HTTP 502)",
            "api_error",
        ),
        (503, b"", "acme upstream returned HTTP 503 with an empty body", "api_error"),
        (504, b"   \n", "acme upstream returned HTTP 504 with an empty body", "api_error"),
        (418, b"\xff\xfe teapot", "\ufffd\ufffd teapot", "invalid_request_error"),
    ],
)
def test_generic_error(status: int, body: bytes, message: str, type_: str) -> None:
    err = generic_error("acme", status, {}, body)
    assert (err.status, err.message, err.type) == (status, message, type_)
    assert json.loads(err.body()) == {
        "error": {"message": message, "type": type_, "param": None, "code": None}
    }


def test_generic_error_keeps_an_error_object_without_message_readable() -> None:
    err = generic_error("acme", 400, {}, b'{"error": {"code": "E42"}}')
    assert "E42" in err.message


def test_generic_error_truncates_long_text() -> None:
    err = generic_error("acme", 500, {}, b"x" * 5000)
    assert err.message == "x" * 500


def test_provider_error_shape() -> None:
    e = ProviderError(400, "bad", "invalid_request_error", "c", "model")
    assert e.to_openai() == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": "c"}
    }
    assert str(e) == "bad"
