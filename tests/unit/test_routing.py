"""addons/routing.py: Kong's route matching and priorities, on routes loaded from YAML."""

from __future__ import annotations

import textwrap

import pytest

from addons.routing import Match, RouteTable
from tests.unit.conftest import CIHeaders, load


def table(routes_yaml: str) -> RouteTable:
    """A route table from route entries of one service (which has a url to proxy to)."""
    body = textwrap.indent(textwrap.dedent(routes_yaml).strip("\n"), " " * 6)
    cfg = load(f"services:\n  - name: svc\n    url: http://upstream.local\n    routes:\n{body}\n")
    return cfg.table


def match(
    t: RouteTable,
    path: str,
    *,
    method: str = "POST",
    host: str = "gw.local",
    headers: dict | None = None,
) -> Match | None:
    return t.match(method, host, path, CIHeaders(headers))


def name(t: RouteTable, path: str, **kw) -> str | None:
    m = match(t, path, **kw)
    return m.route.name if m else None


# ------------------------------------------------------------------------ priorities


def test_more_matching_fields_win_over_file_order() -> None:
    t = table("""
        - name: any-method
          paths: [/v1]
        - name: post-only
          paths: [/v1]
          methods: [POST]
        - name: post-and-header
          paths: [/v1]
          methods: [POST]
          headers: {x-tenant: [acme]}
    """)
    assert name(t, "/v1/chat", method="POST", headers={"x-tenant": "acme"}) == "post-and-header"
    assert name(t, "/v1/chat", method="POST") == "post-only"
    assert name(t, "/v1/chat", method="GET") == "any-method"


def test_more_fields_win_even_over_a_longer_prefix_or_a_regex() -> None:
    t = table("""
        - name: long-prefix
          paths: [/v1/chat/completions]
        - name: regex
          paths: ["~/v1/chat/completions$"]
        - name: short-with-host
          paths: [/v1]
          hosts: [api.example.com]
    """)
    assert name(t, "/v1/chat/completions", host="api.example.com") == "short-with-host"
    assert name(t, "/v1/chat/completions", host="other.example.com") == "regex"


def test_plain_hosts_win_over_wildcard_hosts() -> None:
    t = table("""
        - name: wildcard
          hosts: ["*.example.com"]
          paths: [/]
        - name: plain
          hosts: [api.example.com]
          paths: [/]
    """)
    assert name(t, "/v1", host="api.example.com") == "plain"
    assert name(t, "/v1", host="eu.example.com") == "wildcard"


def test_more_headers_win() -> None:
    t = table("""
        - name: one-header
          paths: [/v1]
          headers: {x-team: [ml]}
        - name: two-headers
          paths: [/v1]
          headers: {x-team: [ml], x-env: [prod]}
    """)
    assert name(t, "/v1/x", headers={"x-team": "ml", "x-env": "prod"}) == "two-headers"
    assert name(t, "/v1/x", headers={"x-team": "ml", "x-env": "dev"}) == "one-header"
    assert name(t, "/v1/x", headers={"x-env": "prod"}) is None


def test_regex_paths_win_over_prefix_paths() -> None:
    t = table("""
        - name: prefix
          paths: [/v1/chat/completions]
        - name: regex
          paths: ["~/v1/"]
    """)
    assert name(t, "/v1/chat/completions") == "regex"


def test_regex_priority_orders_regex_paths() -> None:
    t = table("""
        - name: low
          paths: ["~/v1/.*"]
          regex_priority: -5
        - name: default
          paths: ["~/v1/chat"]
        - name: high
          paths: ["~/v1/chat/completions$"]
          regex_priority: 10
    """)
    assert name(t, "/v1/chat/completions") == "high"
    assert name(t, "/v1/chat/other") == "default"
    assert name(t, "/v1/embeddings") == "low"


def test_regex_priority_does_not_apply_to_prefix_paths() -> None:
    t = table("""
        - name: prefix
          paths: [/v1/chat]
          regex_priority: 100
        - name: regex
          paths: ["~/v1"]
    """)
    assert name(t, "/v1/chat") == "regex"


def test_longest_prefix_wins() -> None:
    t = table("""
        - name: root
          paths: [/]
        - name: v1
          paths: [/v1]
        - name: chat
          paths: [/v1/chat]
    """)
    assert name(t, "/v1/chat/completions") == "chat"
    assert name(t, "/v1/models") == "v1"
    assert name(t, "/health") == "root"


def test_one_route_with_several_paths_ranks_each_path() -> None:
    t = table("""
        - name: many
          paths: [/a, /v1/chat/completions]
        - name: mid
          paths: [/v1/chat]
    """)
    assert name(t, "/v1/chat/completions") == "many"
    assert name(t, "/v1/chat/x") == "mid"
    assert name(t, "/a/b") == "many"


def test_file_order_breaks_ties() -> None:
    t = table("""
        - name: first
          paths: [/v1]
        - name: second
          paths: [/v1]
        - name: third
          paths: ["~/v2"]
        - name: fourth
          paths: ["~/v2"]
    """)
    assert name(t, "/v1/x") == "first"
    assert name(t, "/v2/x") == "third"


# ------------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    "path, matched",
    [
        ("/v1", True),
        ("/v1/chat", True),
        ("/v1chat", True),  # a plain string prefix, like Kong
        ("/v1?x=/v2", True),
        ("/v", False),
        ("/V1", False),
        ("/api/v1", False),
    ],
)
def test_prefix_semantics(path: str, matched: bool) -> None:
    t = table("""
        - name: r
          paths: [/v1]
    """)
    assert (name(t, path) == "r") is matched


def test_a_trailing_slash_prefix_does_not_match_the_bare_path() -> None:
    t = table("""
        - name: r
          paths: [/v1/]
    """)
    assert name(t, "/v1") is None
    assert name(t, "/v1/x") == "r"


@pytest.mark.parametrize(
    "path, matched",
    [
        ("/chat", True),
        ("/chat/completions", False),  # the regex ends with $
        ("/v1/chat", False),  # anchored at the start of the path
        ("/chat?stream=1", True),  # the query is not part of the path
    ],
)
def test_regex_is_anchored_at_the_start(path: str, matched: bool) -> None:
    t = table("""
        - name: r
          paths: ["~/chat$"]
    """)
    assert (name(t, path) == "r") is matched


def test_regex_without_end_anchor_matches_a_leading_part() -> None:
    t = table("""
        - name: r
          paths: ["~/v[0-9]+/"]
    """)
    assert name(t, "/v12/anything/else") == "r"
    assert name(t, "/api/v1/") is None


@pytest.mark.parametrize(
    "regex",
    [
        "~/(?<provider>[^/]+)/(?<model>[^/]+)/chat$",  # Kong's (PCRE) syntax
        "~/(?P<provider>[^/]+)/(?P<model>[^/]+)/chat$",  # Python's
    ],
)
def test_named_captures(regex: str) -> None:
    t = table(f"""
        - name: r
          paths: ["{regex}"]
          strip_path: false
    """)
    m = match(t, "/openai/gpt-4o/chat")
    assert m is not None
    assert m.captures == {"provider": "openai", "model": "gpt-4o"}
    assert match(t, "/openai/gpt-4o/extra/chat") is None


def test_unmatched_optional_capture_is_absent() -> None:
    t = table("""
        - name: r
          paths: ["~/models/(?<model>[^/]+)(/(?<version>v[0-9]+))?$"]
    """)
    assert match(t, "/models/m1/v2").captures == {"model": "m1", "version": "v2"}
    assert match(t, "/models/m1").captures == {"model": "m1"}


def test_lookbehind_is_not_mistaken_for_a_named_group() -> None:
    t = table("""
        - name: r
          paths: ["~/v1/(?<!x)chat$"]
    """)
    assert name(t, "/v1/chat") == "r"


@pytest.mark.parametrize(
    "paths, strip, request_path, upstream_path",
    [
        ("[/openai]", "true", "/openai/v1/chat/completions", "/v1/chat/completions"),
        ("[/openai]", "true", "/openai", "/"),
        ("[/openai/]", "true", "/openai/v1/models", "/v1/models"),
        ("[/openai]", "true", "/openai/v1?api-version=2", "/v1"),
        ("[/openai]", "false", "/openai/v1/chat/completions", "/openai/v1/chat/completions"),
        ("[/openai]", "false", "/openai/v1?x=1", "/openai/v1"),
        ('["~/(?<model>[^/]+)/v1"]', "true", "/gpt-4o/v1/chat/completions", "/chat/completions"),
        ('["~/(?<model>[^/]+)/v1"]', "true", "/gpt-4o/v1", "/"),
        (
            '["~/(?<model>[^/]+)/v1"]',
            "false",
            "/gpt-4o/v1/chat/completions",
            "/gpt-4o/v1/chat/completions",
        ),
    ],
)
def test_strip_path(paths: str, strip: str, request_path: str, upstream_path: str) -> None:
    t = table(f"""
        - name: r
          paths: {paths}
          strip_path: {strip}
    """)
    m = match(t, request_path)
    assert m is not None
    assert m.upstream_path == upstream_path


def test_strip_path_is_kongs_default() -> None:
    t = table("""
        - name: r
          paths: [/llm]
    """)
    assert match(t, "/llm/v1/chat/completions").upstream_path == "/v1/chat/completions"


def test_route_without_paths_keeps_the_request_path() -> None:
    t = table("""
        - name: by-host
          hosts: [llm.example.com]
    """)
    m = match(t, "/v1/chat/completions?x=1", host="llm.example.com")
    assert m is not None and m.upstream_path == "/v1/chat/completions"


# ------------------------------------------------------------------ hosts and methods


@pytest.mark.parametrize(
    "host, matched",
    [
        ("api.example.com", True),
        ("API.Example.COM", True),
        ("api.example.com:8443", True),  # a pattern without port matches any port
        ("api.example.com.evil", False),
        ("example.com", False),
    ],
)
def test_exact_host(host: str, matched: bool) -> None:
    t = table("""
        - name: r
          hosts: [api.example.com]
          paths: [/]
    """)
    assert (name(t, "/", host=host) == "r") is matched


@pytest.mark.parametrize(
    "pattern, host, matched",
    [
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "api.example.com:8080", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "apiexample.com", False),
        ("*.example.com", "api.example.com.evil", False),
        ("api.example.*", "api.example.org", True),
        ("api.example.*", "api.example.org:443", True),
        ("api.example.*", "www.example.org", False),
    ],
)
def test_wildcard_hosts(pattern: str, host: str, matched: bool) -> None:
    t = table(f"""
        - name: r
          hosts: ["{pattern}"]
          paths: [/]
    """)
    assert (name(t, "/", host=host) == "r") is matched


@pytest.mark.parametrize(
    "pattern, host, matched",
    [
        ("api.example.com:8443", "api.example.com:8443", True),
        ("api.example.com:8443", "api.example.com:9000", False),
        ("api.example.com:8443", "api.example.com", False),
        ("*.example.com:8443", "eu.example.com:8443", True),
        ("*.example.com:8443", "eu.example.com:80", False),
    ],
)
def test_hosts_with_port(pattern: str, host: str, matched: bool) -> None:
    t = table(f"""
        - name: r
          hosts: ["{pattern}"]
          paths: [/]
    """)
    assert (name(t, "/", host=host) == "r") is matched


def test_any_of_several_hosts() -> None:
    t = table("""
        - name: r
          hosts: [a.example.com, "*.internal"]
    """)
    assert name(t, "/", host="a.example.com") == "r"
    assert name(t, "/", host="llm.internal") == "r"
    assert name(t, "/", host="b.example.com") is None


@pytest.mark.parametrize(
    "method, matched", [("POST", True), ("post", True), ("PUT", True), ("GET", False)]
)
def test_methods(method: str, matched: bool) -> None:
    t = table("""
        - name: r
          paths: [/v1]
          methods: [post, PUT]
    """)
    assert (name(t, "/v1/x", method=method) == "r") is matched


# ------------------------------------------------------------------------ headers


@pytest.mark.parametrize(
    "headers, matched",
    [
        ({"X-Version": "v1"}, True),
        ({"x-version": "V1"}, True),  # values compare case-insensitively, as in Kong
        ({"x-version": "v2"}, True),  # any of the listed values
        ({"x-version": "v3"}, False),
        ({"x-version": "v1", "x-other": "y"}, True),
        ({}, False),
    ],
)
def test_header_values(headers: dict, matched: bool) -> None:
    t = table("""
        - name: r
          paths: [/]
          headers: {x-version: [v1, v2]}
    """)
    assert (name(t, "/", headers=headers) == "r") is matched


@pytest.mark.parametrize(
    "value, matched",
    [
        ("Mozilla/5.0 Chrome/126.0", True),
        ("chrome/99", True),  # case-insensitive
        ("curl/8.5", True),  # one of several values
        ("Wget/1.21", False),
    ],
)
def test_header_regex_values(value: str, matched: bool) -> None:
    t = table("""
        - name: r
          paths: [/]
          headers:
            user-agent: ["~*chrome/[0-9]+", "curl/8.5"]
    """)
    assert (name(t, "/", headers={"User-Agent": value}) == "r") is matched


def test_every_configured_header_must_match() -> None:
    t = table("""
        - name: r
          paths: [/]
          headers: {x-a: ["1"], x-b: ["~*^ok$"]}
    """)
    assert name(t, "/", headers={"x-a": "1", "x-b": "OK"}) == "r"
    assert name(t, "/", headers={"x-a": "1", "x-b": "not ok"}) is None
    assert name(t, "/", headers={"x-b": "ok"}) is None


# ------------------------------------------------------------------------ no match


def test_no_match_is_none() -> None:
    t = table("""
        - name: chat
          paths: ["~/v1/chat/completions$"]
          methods: [POST]
        - name: models
          paths: [/v1/models]
          hosts: [api.example.com]
    """)
    assert match(t, "/v1/embeddings") is None
    assert match(t, "/v1/chat/completions", method="GET") is None
    assert match(t, "/v1/models", host="other.example.com") is None
    assert name(t, "/v1/models", host="api.example.com", method="GET") == "models"
    assert len(t) == 2


def test_routes_across_services_and_top_level_routes_share_one_table() -> None:
    cfg = load("""
services:
  - name: a
    url: http://a.local
    routes:
      - {name: a-route, paths: [/a]}
  - name: b
    url: http://b.local
routes:
  - {name: b-route, paths: [/a/b], service: b}
""")
    m = cfg.table.match("GET", "x", "/a/b/c", CIHeaders())
    assert m.route.name == "b-route" and m.route.service.name == "b"
    m = cfg.table.match("GET", "x", "/a/c", CIHeaders())
    assert m.route.name == "a-route" and m.route.service.url == "http://a.local"
