"""cors: origin matching (plain, `*`, regex), the headers of preflights and answers, the
addon and the Router's preflight match."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http
from mitmproxy.http import HTTPFlow

from addons.config import load_text
from addons.policies import cors
from addons.policies.cors import (
    Config,
    Origin,
    actual_headers,
    add_vary_origin,
    normalize_origin,
    preflight_headers,
)
from addons.state import Gateway
from tests.policy_helpers import dashed, gateway_for, load_error, route_config, routed_request

ALL_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"

# --------------------------------------------------------------- origins


@pytest.mark.parametrize(
    ("value", "domain", "host"),
    [
        ("https://app.example.com", "https://app.example.com", "app.example.com"),
        ("https://app.example.com:443", "https://app.example.com", "app.example.com"),
        ("http://app.example.com:80", "http://app.example.com", "app.example.com"),
        ("http://localhost:3000", "http://localhost:3000", "localhost"),
        ("https://App.Example.COM", "https://app.example.com", "app.example.com"),
        ("http://[::1]:8080", "http://[::1]:8080", "::1"),
        ("null", "null", "null"),
        ("http://bad:port", "http://bad:port", "http://bad:port"),
    ],
)
def test_normalize_origin(value: str, domain: str, host: str) -> None:
    assert normalize_origin(value) == Origin(domain, host)


def _allowed(origins: list[str] | None, origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin an actual request gets (None: removed)."""
    out = actual_headers(Config(origins=origins), origin)
    return None if out.clear_origin else out.set.get("access-control-allow-origin")


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        # no origins, or just `*`: every origin
        (None, "https://a.test", "*"),
        ([], "https://a.test", "*"),
        (["*"], None, "*"),
        # a single plain origin is sent as configured (Kong), whatever the request's
        (["https://app.example.com"], "https://other.test", "https://app.example.com"),
        (["https://app.example.com"], None, "https://app.example.com"),
        # several: the request's origin is echoed when one matches
        (["https://a.test", "https://b.test"], "https://b.test", "https://b.test"),
        (["https://a.test", "https://b.test"], "https://c.test", None),
        (["https://a.test", "https://b.test"], None, None),
        # default ports and case do not matter
        (["https://a.test", "https://b.test:443"], "https://b.test", "https://b.test"),
        (["https://a.test", "https://b.test"], "https://B.test:443", "https://B.test:443"),
        (["http://a.test:8080", "https://b.test"], "http://a.test:8081", None),
        # `*` among others
        (["https://a.test", "*"], "https://z.test", "*"),
        # a regex with a ':' matches the whole origin ...
        ([r"https://.*\.example\.org"], "https://team.example.org", "https://team.example.org"),
        ([r"https://.*\.example\.org"], "http://team.example.org", None),
        ([r"https://.*\.example\.org"], "https://team.example.org.evil.test", None),
        ([r"https://.*\.example\.org"], "https://example.org", None),
        ([r"^https://(a|b)\.test$"], "https://b.test", "https://b.test"),
        ([r"https://(a|b)\.test"], "https://ab.test", None),
        # ... one without ':' only its host (any scheme and port)
        ([r".*\.example\.org"], "http://x.example.org:8443", "http://x.example.org:8443"),
        ([r".*\.example\.org"], "https://example.org", None),
        ([r"(localhost|127\.0\.0\.1)"], "http://127.0.0.1:5173", "http://127.0.0.1:5173"),
        # an alternation is anchored as a whole (Kong's appended `$` binds to its last
        # branch only, so Kong lets a.test.evil in)
        ([r"a\.test|b\.test"], "https://a.test.evil", None),
        ([r"a\.test|b\.test"], "https://b.test.evil", None),
    ],
)
def test_allowed_origin(origins: list[str] | None, origin: str | None, allowed: str | None) -> None:
    assert _allowed(origins, origin) == allowed


def test_vary_origin_unless_every_origin_is_allowed() -> None:
    assert not actual_headers(Config(origins=["*"]), "https://a.test").vary_origin
    assert actual_headers(Config(origins=["https://a.test"]), "https://a.test").vary_origin
    assert actual_headers(Config(origins=["https://a.test", "x"]), "https://zz").vary_origin


# --------------------------------------------------------------- headers


def test_credentials_with_every_origin_echo_the_origin() -> None:
    out = actual_headers(Config(credentials=True), "https://a.test")
    assert out.set == {
        "access-control-allow-origin": "https://a.test",
        "access-control-allow-credentials": "true",
    }
    assert out.vary_origin
    # no Origin: `*` stays, and no credentials
    out = actual_headers(Config(credentials=True), None)
    assert out.set == {"access-control-allow-origin": "*"}


def test_credentials_with_listed_origins() -> None:
    out = actual_headers(Config(origins=["https://a.test"], credentials=True), "https://a.test")
    assert out.set["access-control-allow-credentials"] == "true"
    assert out.set["access-control-allow-origin"] == "https://a.test"


def test_exposed_headers_on_answers_only() -> None:
    conf = Config(exposed_headers=["x-request-id", "x-llm-model"])
    assert actual_headers(conf, "https://a.test").set["access-control-expose-headers"] == (
        "x-request-id,x-llm-model"
    )
    assert (
        "access-control-expose-headers"
        not in preflight_headers(conf, "https://a.test", None, False).set
    )


@pytest.mark.parametrize(
    ("conf", "request_headers", "private", "expected"),
    [
        (
            {},
            None,
            False,
            {"access-control-allow-origin": "*", "access-control-allow-methods": ALL_METHODS},
        ),
        (
            {},
            "content-type, authorization",
            False,
            {
                "access-control-allow-origin": "*",
                "access-control-allow-headers": "content-type, authorization",
                "access-control-allow-methods": ALL_METHODS,
            },
        ),
        (
            {"headers": ["content-type", "x-api-key"], "methods": ["POST", "GET"], "max_age": 3600},
            "x-other",
            False,
            {
                "access-control-allow-origin": "*",
                "access-control-allow-headers": "content-type,x-api-key",
                "access-control-allow-methods": "POST,GET",
                "access-control-max-age": "3600",
            },
        ),
        (
            {"max_age": 1.5, "private_network": True},
            None,
            True,
            {
                "access-control-allow-origin": "*",
                "access-control-allow-methods": ALL_METHODS,
                "access-control-max-age": "1.5",
                "access-control-allow-private-network": "true",
            },
        ),
        (  # asked for, not configured: not granted
            {},
            None,
            True,
            {"access-control-allow-origin": "*", "access-control-allow-methods": ALL_METHODS},
        ),
    ],
)
def test_preflight_headers(
    conf: dict, request_headers: str | None, private: bool, expected: dict[str, str]
) -> None:
    out = preflight_headers(Config(**conf), "https://a.test", request_headers, private)
    assert out.set == expected


def _headers(**kw: str) -> http.Headers:
    return http.Headers(**kw)


@pytest.mark.parametrize(
    ("vary", "after"),
    [
        (None, "Origin"),
        ("Accept-Encoding", "Accept-Encoding, Origin"),
        ("origin", "origin"),
        ("Accept, Origin", "Accept, Origin"),
        ("*", "*"),
    ],
)
def test_vary_is_extended_not_replaced(vary: str | None, after: str) -> None:
    h = _headers(**({"vary": vary} if vary else {}))
    add_vary_origin(h)
    assert h["vary"] == after


def test_apply_removes_the_upstreams_origin_when_not_allowed() -> None:
    h = _headers(access_control_allow_origin="https://upstream.test")
    actual_headers(Config(origins=["https://a.test", "https://b.test"]), "https://c.test").apply(h)
    assert "access-control-allow-origin" not in h
    assert h["vary"] == "Origin"


# ---------------------------------------------------------------- config


def _config(block: str, methods: str = "") -> str:
    return route_config(
        {"cors": block},
        route_extra=methods,
        more_routes="""
- name: plain
  paths: [/plain]
  methods: [POST]
""",
    )


@pytest.mark.parametrize(
    ("block", "says"),
    [
        (
            '{origins: ["https://ok.test", "https://(unclosed"]}',
            "config.origins[1]: 'https://(unclosed' is not a valid regex",
        ),
        ('{origins: ["*+"]}', "config.origins[0]"),
        ("{methods: [GET, FETCH]}", "config.methods[1]"),
        ("{max_age: -1}", "config.max_age"),
        ("{origin: ['*']}", "unknown field 'origin'"),
    ],
)
def test_bad_configs_are_load_errors(block: str, says: str) -> None:
    assert says in load_error(_config(block))


def test_kong_defaults() -> None:
    conf = load_text(_config("{}")).routes[0].plugin("cors")
    assert conf.origins is None and conf.headers is None and conf.exposed_headers is None
    assert conf.methods == ALL_METHODS.split(",")
    assert (conf.credentials, conf.private_network, conf.preflight_continue) == (
        False,
        False,
        False,
    )
    assert conf.allow_origin_absent is True and conf.max_age is None
    assert cors.PRIORITY == 2000 and not cors.CONSUMER_SCOPE


# ----------------------------------------------------------------- addon


def _gw(block: str, methods: str = "") -> Gateway:
    return gateway_for(_config(block, methods))


def _flow(gw: Gateway, method: str, path: str = "/x", **headers: str) -> HTTPFlow:
    return routed_request(gw, method, path, headers=dashed(**headers))


def test_preflight_is_answered_with_200() -> None:
    gw = _gw('{origins: ["https://a.test"], credentials: true, max_age: 60}')
    f = _flow(gw, "OPTIONS", origin="https://a.test", access_control_request_method="POST")
    policy = cors.Policy(gw)
    policy.requestheaders(f)
    assert f.response is not None and f.response.status_code == 200
    assert f.response.content == b""
    h = f.response.headers
    assert h["access-control-allow-origin"] == "https://a.test"
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-max-age"] == "60"
    assert h["vary"] == "Origin"
    # its own headers are not added twice on the way out
    policy.responseheaders(f)
    policy.response(f)
    assert h.get_all("access-control-allow-origin") == ["https://a.test"]


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://a.test"},  # no Access-Control-Request-Method: not a preflight
        {"access_control_request_method": "POST"},  # no Origin
        {"origin": "", "access_control_request_method": "POST"},
    ],
)
def test_other_options_requests_are_not_preflights(headers: dict[str, str]) -> None:
    gw = _gw("{}")
    f = _flow(gw, "OPTIONS", **headers)
    cors.Policy(gw).requestheaders(f)
    assert f.response is None


def test_preflight_continue_passes_it_on_untouched() -> None:
    gw = _gw("{preflight_continue: true}")
    f = _flow(gw, "OPTIONS", origin="https://a.test", access_control_request_method="POST")
    policy = cors.Policy(gw)
    policy.requestheaders(f)
    assert f.response is None
    f.response = http.Response.make(204, b"", {"allow": "POST"})  # the upstream's
    policy.responseheaders(f)
    assert "access-control-allow-origin" not in f.response.headers


def test_answers_get_the_headers_even_after_the_request_was_rewritten() -> None:
    gw = _gw('{origins: ["https://a.test", "https://b.test"], exposed_headers: [x-id]}')
    f = _flow(gw, "POST", origin="https://b.test")
    policy = cors.Policy(gw)
    policy.requestheaders(f)
    f.request.headers = http.Headers(host="127.0.0.1:1234")  # ai-proxy's relay does this
    f.response = http.Response.make(200, b"data: {}\n\n", {"content-type": "text/event-stream"})
    policy.responseheaders(f)
    h = f.response.headers
    assert h["access-control-allow-origin"] == "https://b.test"
    assert h["access-control-expose-headers"] == "x-id"
    assert h["vary"] == "Origin"


def test_gateway_made_answers_get_the_headers() -> None:
    gw = _gw("{}")
    f = _flow(gw, "POST", origin="https://a.test")
    policy = cors.Policy(gw)
    policy.requestheaders(f)
    f.response = http.Response.make(401, b'{"error": {}}')  # e.g. key-auth's
    policy.response(f)
    assert f.response.headers["access-control-allow-origin"] == "*"


def test_allow_origin_absent_false_skips_requests_without_origin() -> None:
    gw = _gw("{allow_origin_absent: false}")
    f = _flow(gw, "POST")
    policy = cors.Policy(gw)
    policy.requestheaders(f)
    f.response = http.Response.make(200, b"{}")
    policy.responseheaders(f)
    assert "access-control-allow-origin" not in f.response.headers

    gw = _gw("{}")  # the default: they get them
    f = _flow(gw, "POST")
    policy = cors.Policy(gw)
    policy.requestheaders(f)
    f.response = http.Response.make(200, b"{}")
    policy.responseheaders(f)
    assert f.response.headers["access-control-allow-origin"] == "*"


# ------------------------------------------------ the Router and preflights


def test_preflight_matches_a_route_whose_methods_leave_out_options() -> None:
    gw = _gw("{}", methods="methods: [POST]")
    f = _flow(gw, "OPTIONS", origin="https://a.test", access_control_request_method="post")
    assert f.response is None and f.metadata["llmitm.route"] == "r"
    cors.Policy(gw).requestheaders(f)
    assert f.response.status_code == 200


def test_preflight_to_a_route_without_cors_is_still_a_404() -> None:
    gw = _gw("{}")
    f = _flow(
        gw, "OPTIONS", "/plain", origin="https://a.test", access_control_request_method="POST"
    )
    assert f.response is not None and f.response.status_code == 404
    assert json.loads(f.response.content)["error"]["code"] == "route_not_found"


def test_plain_options_to_a_post_route_is_a_404() -> None:
    gw = _gw("{}", methods="methods: [POST]")
    f = _flow(gw, "OPTIONS", origin="https://a.test")
    assert f.response is not None and f.response.status_code == 404


def test_a_costly_origin_regex_gives_up_instead_of_holding_the_gateway() -> None:
    origins = [r"https://a\.test", r"(x+x+)+y"]  # catastrophic backtracking on x...x
    assert _allowed(origins, "http://" + "x" * 5000) is None
