"""addons/policies/base.py set_headers: several headers in one rebuild of the fields."""

from __future__ import annotations

from mitmproxy import http

from addons.policies.base import set_headers


def test_set_headers_replaces_case_insensitively_and_keeps_the_rest() -> None:
    headers = http.Headers(
        [(b"Content-Type", b"application/json"), (b"x-ratelimit-limit-minute", b"1")]
    )
    set_headers(headers, {"X-RateLimit-Limit-Minute": "60", "RateLimit-Remaining": "59"})
    assert headers["content-type"] == "application/json"
    assert headers.get_all("x-ratelimit-limit-minute") == ["60"]  # replaced, not added
    assert headers["ratelimit-remaining"] == "59"
    assert len(headers.fields) == 3


def test_set_headers_with_nothing_changes_nothing() -> None:
    headers = http.Headers([(b"a", b"1")])
    before = headers.fields
    set_headers(headers, {})
    assert headers.fields is before
