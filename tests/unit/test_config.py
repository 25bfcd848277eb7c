"""addons/config: loading, validating and compiling the config file.

Every error names the file, the line of the offending node and its dotted path; all
problems of a file are reported at once; vault values never appear in a message.
"""

from __future__ import annotations

import re
import textwrap

import pytest

import providers
from addons.config import ConfigError, GatewayConfig, load_file, load_text
from addons.config.plugins import AIProxyConfig, FileLogConfig
from tests.unit.conftest import route_named

SOURCE = "gateway.yaml"


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the nth line containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not in the test YAML"
    return hits[nth - 1]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, SOURCE)
    assert e.value.source == SOURCE
    for p in e.value.problems:
        assert p in str(e.value)
    return e.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    assert str(found[0]).startswith(f"{SOURCE}:")
    return found[0]


def assert_at(problem: str, line: int, path: str, *fragments: str) -> None:
    assert problem.startswith(f"{SOURCE}:{line}: {path}: "), problem
    for f in fragments:
        assert f in problem, (f, problem)


CHAT_ROUTE = """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:32000
    routes:
      - name: chat
        paths: ["~/chat$"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "Bearer sk-x"}
              model:
                provider: openai
                name: gpt-4o
                options: {max_tokens: 512, temperature: 0.5, input_cost: 2.5, output_cost: 10}
              logging: {log_statistics: true, log_payloads: true}
"""


# ----------------------------------------------------------------------- valid files


def test_a_valid_config_compiles() -> None:
    cfg = load_text(doc(CHAT_ROUTE), SOURCE)
    assert isinstance(cfg, GatewayConfig)
    assert cfg.source == SOURCE
    route = route_named(cfg, "chat")
    assert route.paths == ["~/chat$"] and route.strip_path is True
    assert route.service is not None and route.service.name == "llm"
    assert route.service.url == "http://127.0.0.1:32000"
    conf = route.plugin("ai-proxy")
    assert isinstance(conf, AIProxyConfig)
    assert conf.route_type == "llm/v1/chat"
    assert (conf.model.provider, conf.model.name) == ("openai", "gpt-4o")
    assert (conf.model.options.max_tokens, conf.model.options.temperature) == (512, 0.5)
    assert conf.auth.header_value == "Bearer sk-x"
    assert conf.logging.log_payloads is True
    assert cfg.table.match("POST", "h", "/chat", {}).route is route
    assert route.plugin("file-log") is None


def test_the_designs_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.setenv("OPIK_API_KEY", "opik-x")
    text = doc("""
        _format_version: "3.0"
        services:
          - name: llm
            url: http://localhost:32000        # unused by ai-proxy, as in Kong
            routes:
              - name: chat
                paths: ["~/chat$"]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      auth: {header_name: x-api-key, header_value: "{vault://env/ANTHROPIC_API_KEY}"}
                      model:
                        provider: openai
                        name: claude-sonnet-4-5
                        options: {anthropic_version: "2023-06-01", max_tokens: 1024}
                      logging: {log_statistics: true, log_payloads: true}
    """)
    cfg = load_text(text, SOURCE)
    assert route_named(cfg, "chat").plugin("ai-proxy").auth.header_value == "sk-ant-x"


def test_service_defaults_and_host_port_url() -> None:
    cfg = load_text(
        doc("""
        services:
          - name: built
            host: upstream.internal
            port: 8443
            protocol: https
            path: /base
            read_timeout: 1500
            routes: [{name: r, paths: [/r]}]
    """),
        SOURCE,
    )
    svc = route_named(cfg, "r").service
    assert svc.url == "https://upstream.internal:8443/base"
    assert svc.read_timeout == 1.5 and svc.connect_timeout == 60.0 and svc.retries == 5


def test_nested_and_top_level_routes_and_plugins_by_name() -> None:
    text = doc("""
        _format_version: "3.0"
        services:
          - name: llm
            url: http://llm.local
            plugins:
              - name: file-log
                config: {path: /tmp/service.jsonl}
            routes:
              - name: nested
                paths: [/nested]
              - name: nested-own
                paths: [/own]
                plugins:
                  - name: file-log
                    config: {path: /tmp/route.jsonl}
          - name: other
            url: http://other.local
        routes:
          - name: top
            paths: [/top]
            service: other
          - name: top-by-ref
            paths: [/ref]
            service: {name: llm}
          - name: bare
            paths: [/bare]
            plugins:
              - name: ai-proxy
                config:
                  route_type: llm/v1/embeddings
                  model: {provider: mock, name: e}
        plugins:
          - name: file-log
            config: {path: /tmp/global.jsonl}
          - name: file-log
            route: top
            config: {path: /tmp/top-route.jsonl}
          - name: ai-proxy
            service: other
            config:
              route_type: llm/v1/chat
              model: {provider: mock, name: m}
    """)
    cfg = load_text(text, SOURCE)
    paths = {r.name: r.plugin("file-log").path for r in cfg.routes}
    # route > service > global
    assert paths == {
        "nested": "/tmp/service.jsonl",
        "nested-own": "/tmp/route.jsonl",
        "top": "/tmp/top-route.jsonl",
        "top-by-ref": "/tmp/service.jsonl",
        "bare": "/tmp/global.jsonl",
    }
    assert route_named(cfg, "top").service.name == "other"
    assert route_named(cfg, "top-by-ref").service.name == "llm"
    assert route_named(cfg, "bare").service is None
    # a top-level plugin naming a service applies to that service's routes only
    assert route_named(cfg, "top").plugin("ai-proxy").model.name == "m"
    assert route_named(cfg, "nested").plugin("ai-proxy") is None
    assert route_named(cfg, "bare").plugin("ai-proxy").model.name == "e"
    assert set(cfg.global_plugins) == {"file-log"}
    scopes = {p.scope for p in cfg.all_plugins()}
    assert scopes == {
        "global",
        "service:llm",
        "route:nested-own",
        "route:top",
        "service:other",
        "route:bare",
    }
    assert cfg.table.match("GET", "h", "/top/x", {}).route.name == "top"


def test_ai_proxy_precedence_route_over_service_over_global() -> None:
    def proxy(model: str) -> str:
        return textwrap.indent(
            doc(f"""
                - name: ai-proxy
                  config:
                    route_type: llm/v1/chat
                    model: {{provider: mock, name: {model}}}
            """),
            "      ",
        )

    text = (
        "services:\n  - name: s\n    plugins:\n"
        + proxy("service-model")
        + "    routes:\n      - name: plain\n        paths: [/a]\n"
        + "      - name: own\n        paths: [/b]\n        plugins:\n"
        + textwrap.indent(proxy("route-model"), "    ")
        + "routes:\n  - name: lonely\n    paths: [/c]\nplugins:\n"
        + textwrap.indent(proxy("global-model"), "")
    )
    cfg = load_text(text, SOURCE)
    models = {r.name: r.plugin("ai-proxy").model.name for r in cfg.routes}
    assert models == {"plain": "service-model", "own": "route-model", "lonely": "global-model"}


def test_disabled_plugins_do_not_run() -> None:
    cfg = load_text(
        doc("""
        services:
          - name: s
            url: http://x.local
            routes: [{name: r, paths: [/r]}]
        plugins:
          - name: file-log
            enabled: false
            config: {path: /tmp/x}
    """),
        SOURCE,
    )
    assert route_named(cfg, "r").plugin("file-log") is None


def test_format_version_as_a_number_is_accepted() -> None:
    cfg = load_text("_format_version: 3.0\nroutes: []\n", SOURCE)
    assert cfg.routes == []


# --------------------------------------------------------------------------- errors


def test_unknown_top_level_key_suggests_the_close_name() -> None:
    text = doc("""
        _format_version: "3.0"
        servics: []
    """)
    assert_at(
        one_problem(text), 2, "servics", "unknown field 'servics'", "did you mean 'services'?"
    )


@pytest.mark.parametrize(
    "bad_line, path, fragments",
    [
        (
            "              model: {provider: openai, naem: gpt-4}",
            "services[0].routes[0].plugins[0].config.model.naem",
            ["unknown field 'naem'", "did you mean 'name'?"],
        ),
        (
            "              model: {provider: openai, name: x, options: {max_tokns: 5}}",
            "services[0].routes[0].plugins[0].config.model.options.max_tokns",
            ["did you mean 'max_tokens'?"],
        ),
        (
            "              model: {provider: openai, name: x}\n              logging: {log_payload: true}",
            "services[0].routes[0].plugins[0].config.logging.log_payload",
            ["did you mean 'log_payloads'?"],
        ),
        (
            "              model: {provider: openai, name: x}\n              zzzzzz: 1",
            "services[0].routes[0].plugins[0].config.zzzzzz",
            ["unknown field 'zzzzzz'", "expected one of:", "route_type", "model", "logging"],
        ),
    ],
)
def test_unknown_field_in_a_plugin_config_is_named(
    bad_line: str, path: str, fragments: list[str]
) -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
    """)
    text += bad_line + "\n"
    bad_key = path.rsplit(".", 1)[1]
    problem = one_problem(text)
    assert_at(problem, line_of(text, bad_key + ":"), path, *fragments)


def test_misspelled_required_field_reports_both_the_typo_and_the_missing_field() -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_typ: llm/v1/chat
                      model: {provider: openai, name: x}
    """)
    found = sorted(problems(text))
    base = "services[0].routes[0].plugins[0].config"
    line = line_of(text, "route_typ")
    assert len(found) == 2
    assert_at(
        found[0],
        line,
        f"{base}.route_typ",
        "unknown field 'route_typ'",
        "did you mean 'route_type'?",
    )
    assert_at(found[1], line, f"{base}.route_type", "required field is missing")


def test_unknown_plugin_lists_the_known_ones() -> None:
    text = doc("""
        services:
          - name: s
            url: http://x.local
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxi
                    config: {}
    """)
    problem = one_problem(text)
    assert_at(
        problem,
        line_of(text, "ai-proxi"),
        "services[0].routes[0].plugins[0]",
        "unknown plugin 'ai-proxi'",
        "'ai-proxy'",
        "'file-log'",
    )


def test_unknown_provider_lists_the_known_ones() -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      model:
                        provider: opena
                        name: x
    """)
    problem = one_problem(text)
    assert_at(
        problem,
        line_of(text, "provider: opena"),
        "services[0].routes[0].plugins[0].config.model",
        "unknown provider 'opena'",
        "openai",
        "mock",
    )


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (
            "route_type",
            "llm/v1/chatt",
            [
                "'llm/v1/chat'",
                "'llm/v1/completions'",
                "'llm/v1/embeddings'",
                "'preserve'",
                "got 'llm/v1/chatt'",
            ],
        ),
        ("response_streaming", "maybe", ["'allow'", "'deny'", "'always'", "got 'maybe'"]),
    ],
)
def test_wrong_enum_value(field: str, value: str, expected: list[str]) -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      model: {provider: openai, name: x}
    """)
    if field == "route_type":
        text = text.replace("route_type: llm/v1/chat", f"route_type: {value}")
    else:
        text += f"              {field}: {value}\n"
    assert_at(
        one_problem(text),
        line_of(text, f"{field}:"),
        f"services[0].routes[0].plugins[0].config.{field}",
        *expected,
    )


@pytest.mark.parametrize(
    "snippet, needle, path, fragments",
    [
        (
            "        strip_path: sometimes",
            "strip_path",
            "services[0].routes[0].strip_path",
            ["valid boolean", "got 'sometimes'"],
        ),
        (
            "        regex_priority: high",
            "regex_priority",
            "services[0].routes[0].regex_priority",
            ["valid integer", "got 'high'"],
        ),
        (
            "        hosts: api.example.com",
            "hosts:",
            "services[0].routes[0].hosts",
            ["valid list", "got 'api.example.com'"],
        ),
        (
            "        methods: [POST, FETCH]",
            "methods",
            "services[0].routes[0].methods",
            ["unknown HTTP method 'FETCH'"],
        ),
        (
            "        plugins:\n          - name: file-log\n            config: just-a-string",
            "config:",
            "services[0].routes[0].plugins[0].config",
            ["valid dictionary", "got 'just-a-string'"],
        ),
        (
            "        plugins:\n          - name: file-log\n            config: {path: [a, b]}",
            "config:",
            "services[0].routes[0].plugins[0].config.path",
            ["valid string", "got list"],
        ),
    ],
)
def test_wrong_type(snippet: str, needle: str, path: str, fragments: list[str]) -> None:
    text = (
        doc("""
        services:
          - name: s
            url: http://x.local
            routes:
              - name: r
                paths: [/x]
    """)
        + snippet
        + "\n"
    )
    assert_at(one_problem(text), line_of(text, needle), path, *fragments)


def test_wrong_type_deep_in_model_options() -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      model:
                        provider: openai
                        name: x
                        options:
                          max_tokens: lots
                          temperature: 9
    """)
    found = problems(text)
    assert len(found) == 2
    base = "services[0].routes[0].plugins[0].config.model.options"
    assert_at(
        found[0], line_of(text, "max_tokens"), f"{base}.max_tokens", "valid integer", "got 'lots'"
    )
    assert_at(
        found[1], line_of(text, "temperature"), f"{base}.temperature", "less than or equal to 5"
    )


def test_missing_required_model() -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
    """)
    # the line is the one of the mapping that lacks the field
    assert_at(
        one_problem(text),
        line_of(text, "route_type"),
        "services[0].routes[0].plugins[0].config.model",
        "required field is missing",
    )


def test_missing_provider_inside_model() -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      model:
                        name: gpt-4
    """)
    assert_at(
        one_problem(text),
        line_of(text, "name: gpt-4"),
        "services[0].routes[0].plugins[0].config.model.provider",
        "required field is missing",
    )


@pytest.mark.parametrize(
    "path_value, fragments",
    [
        ('"~/(?<model>[^/]+/chat"', ["invalid regex path", "missing )"]),
        ('"~/v1/[a-"', ["invalid regex path"]),
        ("v1/chat", ["path 'v1/chat' must start with '/'"]),
        ('"*/chat"', ["must start with '/' (or '~' for a regex)"]),
    ],
)
def test_bad_paths_point_at_the_path(path_value: str, fragments: list[str]) -> None:
    text = doc("""
        services:
          - name: s
            url: http://x.local
            routes:
              - name: r
                paths:
                  - /fine
                  - PATH
    """).replace("PATH", path_value)
    assert_at(
        one_problem(text), line_of(text, path_value), "services[0].routes[0].paths[1]", *fragments
    )


def test_duplicate_yaml_key() -> None:
    text = doc("""
        services:
          - name: s
            url: http://x.local
            routes:
              - name: r
                paths: [/a]
                paths: [/b]
    """)
    assert_at(
        one_problem(text),
        line_of(text, "paths", 2),
        "services[0].routes[0].paths",
        "duplicate key 'paths'",
    )


def test_duplicate_route_names() -> None:
    text = doc("""
        services:
          - name: s
            url: http://x.local
            routes:
              - name: chat
                paths: [/a]
        routes:
          - name: chat
            paths: [/b]
            service: s
    """)
    assert_at(
        one_problem(text),
        line_of(text, "name: chat", 2),
        "routes[0].name",
        "route name 'chat' is used twice",
    )


def test_duplicate_service_names() -> None:
    text = doc("""
        services:
          - name: s
            url: http://x.local
          - name: s
            url: http://y.local
    """)
    assert_at(
        one_problem(text),
        line_of(text, "name: s", 2),
        "services[1].name",
        "service name 's' is used twice",
    )


@pytest.mark.parametrize(
    "attach, needle, path, message",
    [
        ("route: nope", "route: nope", "plugins[0].route", "no route named 'nope'"),
        ("service: nosvc", "service: nosvc", "plugins[0].service", "no service named 'nosvc'"),
    ],
)
def test_top_level_plugin_naming_a_missing_route_or_service(
    attach: str, needle: str, path: str, message: str
) -> None:
    text = doc("""
        services:
          - name: s
            url: http://x.local
            routes: [{name: r, paths: [/a]}]
        plugins:
          - name: file-log
            ATTACH
            config: {path: /tmp/x.jsonl}
    """).replace("ATTACH", attach)
    assert_at(one_problem(text), line_of(text, needle), path, message)


def test_top_level_route_naming_a_missing_service() -> None:
    text = doc("""
        routes:
          - name: r
            paths: [/a]
            service: ghost
    """)
    found = problems(text)
    assert_at(found[0], line_of(text, "ghost"), "routes[0].service", "no service named 'ghost'")


def test_route_with_no_ai_proxy_and_no_service_url() -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/a]
    """)
    assert_at(
        one_problem(text),
        line_of(text, "name: r"),
        "services[0].routes[0]",
        "no ai-proxy plugin and no service url",
    )


def test_route_that_matches_nothing() -> None:
    text = doc("""
        services:
          - name: s
            url: http://x.local
            routes:
              - name: r
                strip_path: false
    """)
    assert_at(
        one_problem(text),
        line_of(text, "name: r"),
        "services[0].routes[0]",
        "at least one of paths, hosts, methods, headers",
    )


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("services:\n  - name: s\n   url: [\n", 3, "not valid YAML"),
        ("x: [1, 2\n", 2, "not valid YAML"),
        ("a: b\n\tc: d\n", 2, "not valid YAML"),
        ("services: &a [*a]\nroutes: *b\n", 2, "not valid YAML"),
    ],
)
def test_invalid_yaml_names_the_line(text: str, line: int, fragment: str) -> None:
    problem = one_problem(text)
    assert problem.startswith(f"{SOURCE}:{line}: "), problem
    assert fragment in problem


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n"])
def test_empty_file(text: str) -> None:
    assert one_problem(text) == f"{SOURCE}: the file is empty"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert one_problem(text) == f"{SOURCE}:1: the top level must be a mapping"


def test_unreadable_files(tmp_path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as e:
        load_file(missing)
    assert str(missing) in str(e.value) and "cannot read" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_file(tmp_path)  # a directory
    assert str(tmp_path) in str(e.value) and "cannot read" in str(e.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as e:
        load_file(binary)
    assert str(binary) in str(e.value)


def test_load_file_names_the_file_in_every_problem(tmp_path) -> None:
    path = tmp_path / "llmitm.yaml"
    path.write_text("_format_version: '3.0'\nservics: []\nroutse: []\n")
    with pytest.raises(ConfigError) as e:
        load_file(path)
    assert [p.split(": ", 1)[0] for p in e.value.problems] == [f"{path}:2", f"{path}:3"]
    cfg = load_file(_write(tmp_path / "ok.yaml", doc(CHAT_ROUTE)))
    assert cfg.source == str(tmp_path / "ok.yaml")


def _write(path, text: str):
    path.write_text(text)
    return path


def test_all_problems_of_a_file_are_reported_at_once() -> None:
    text = doc("""
        _format_version: "3.0"
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      model: {provider: openai, naem: gpt-4}
          - name: t
            url: http://t.local
            routes:
              - name: r2
                paths: [v1]
    """)
    with pytest.raises(ConfigError) as e:
        load_text(text, SOURCE)
    err = e.value
    assert len(err.problems) == 2
    assert str(err).startswith(f"invalid config {SOURCE} (2 problems):")
    assert_at(
        err.problems[0],
        line_of(text, "naem"),
        "services[0].routes[0].plugins[0].config.model.naem",
        "did you mean 'name'?",
    )
    assert_at(
        err.problems[1],
        line_of(text, "[v1]"),
        "services[1].routes[0].paths[0]",
        "must start with '/'",
    )


def test_compile_problems_are_reported_together_too() -> None:
    text = doc("""
        services:
          - name: s
            routes:
              - {name: a, paths: [/a]}
              - {name: a, paths: [/b]}
        plugins:
          - name: file-log
            route: ghost
            config: {path: /tmp/x}
    """)
    found = problems(text)
    assert len(found) == 4, found
    joined = "\n".join(found)
    assert "route name 'a' is used twice" in joined
    assert "no route named 'ghost'" in joined
    assert joined.count("no ai-proxy plugin and no service url") == 2


# ---------------------------------------------------------------------------- vault


def vault_config(header_value: str, extra_options: str = "") -> str:
    return doc(f"""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      auth: {{header_name: Authorization, header_value: "{header_value}"}}
                      model:
                        provider: openai
                        name: gpt-4o
                        options: {{max_tokens: 16{extra_options}}}
    """)


def header_value(cfg: GatewayConfig) -> str:
    return route_named(cfg, "r").plugin("ai-proxy").auth.header_value


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("{vault://env/LLMITM_TEST_KEY}", "{secret}"),
        ("{vault://env/llmitm-test-key}", "{secret}"),  # Kong: NAME upper-cased, - as _
        ("{vault://env/llmitm_test_key}", "{secret}"),
        ("Bearer {vault://env/LLMITM_TEST_KEY}", "Bearer {secret}"),
        ("{vault://env/LLMITM_TEST_KEY}:{vault://env/LLMITM_TEST_KEY}", "{secret}:{secret}"),
    ],
)
def test_vault_references_resolve_from_the_environment(
    secret_env: str, reference: str, expected: str
) -> None:
    cfg = load_text(vault_config(reference), SOURCE)
    value = expected.format(secret=secret_env)
    assert header_value(cfg) == value
    assert secret_env in cfg.secrets and value in cfg.secrets


def test_vault_json_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMITM_TEST_JSON", '{"openai": "sk-from-json", "other": "x"}')
    cfg = load_text(vault_config("{vault://env/LLMITM_TEST_JSON/openai}"), SOURCE)
    assert header_value(cfg) == "sk-from-json"
    assert "sk-from-json" in cfg.secrets


def test_config_without_vault_has_no_secrets() -> None:
    assert load_text(doc(CHAT_ROUTE), SOURCE).secrets == frozenset()


def test_missing_variable_names_the_reference_not_the_other_values(
    secret_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMITM_MISSING_KEY", raising=False)
    text = vault_config("{vault://env/LLMITM_TEST_KEY}-{vault://env/LLMITM_MISSING_KEY}")
    problem = one_problem(text)
    assert_at(
        problem,
        line_of(text, "auth:"),
        "services[0].routes[0].plugins[0].config.auth.header_value",
        "{vault://env/LLMITM_MISSING_KEY}",
        "not set",
    )
    assert secret_env not in problem


@pytest.mark.parametrize(
    "reference, fragment",
    [
        ("{vault://aws/prod/openai}", "not supported"),
        ("{vault://env/LLMITM_TEST_KEY/field}", "no JSON object with key 'field'"),
    ],
)
def test_unusable_vault_references(secret_env: str, reference: str, fragment: str) -> None:
    problem = one_problem(vault_config(reference))
    assert reference in problem and fragment in problem
    assert secret_env not in problem


@pytest.mark.parametrize(
    "text",
    [
        # a validator that quotes its input (upstream_url must be a URL)
        lambda: vault_config("x", ', upstream_url: "{vault://env/LLMITM_TEST_KEY}"'),
        # a typed field holding a secret
        lambda: vault_config("x", ', max_tokens: "{vault://env/LLMITM_TEST_KEY}"').replace(
            "max_tokens: 16, ", ""
        ),
        # an enum
        lambda: vault_config("x").replace(
            "route_type: llm/v1/chat", 'route_type: "{vault://env/LLMITM_TEST_KEY}"'
        ),
        # the provider name
        lambda: vault_config("x").replace(
            "provider: openai", 'provider: "{vault://env/LLMITM_TEST_KEY}"'
        ),
        # a service url
        lambda: doc("""
            services:
              - name: s
                url: "prefix-{vault://env/LLMITM_TEST_KEY}"
        """),
        # a route path
        lambda: doc("""
            services:
              - name: s
                url: http://x.local
                routes: [{name: r, paths: ["{vault://env/LLMITM_TEST_KEY}"]}]
        """),
        # a compile-time problem naming a value that came from the vault
        lambda: doc("""
            services:
              - name: s
                url: http://x.local
                routes: [{name: r, paths: [/a]}]
            plugins:
              - name: file-log
                route: "{vault://env/LLMITM_TEST_KEY}"
                config: {path: /tmp/x}
        """),
    ],
    ids=["validator-message", "typed-field", "enum", "provider", "service-url", "path", "compile"],
)
def test_a_secret_never_appears_in_an_error(secret_env: str, text) -> None:
    source = text()
    with pytest.raises(ConfigError) as e:
        load_text(source, SOURCE)
    message = str(e.value)
    assert secret_env not in message
    assert secret_env[:-1] not in message and secret_env[1:] not in message
    # the problem is still reported where it is
    assert re.search(rf"{SOURCE}:\d+: \S+: ", message)


def test_plugin_repr_and_key_do_not_show_secrets(secret_env: str) -> None:
    cfg = load_text(vault_config("{vault://env/LLMITM_TEST_KEY}"), SOURCE)
    for plugin in cfg.all_plugins():
        assert secret_env not in repr(plugin)
        assert secret_env not in plugin.key
    assert secret_env not in repr(cfg.routes)


def test_file_log_config_defaults() -> None:
    cfg = load_text(
        doc("""
        services:
          - name: s
            url: http://x.local
            routes: [{name: r, paths: [/a]}]
        plugins:
          - name: file-log
            config: {path: logs/calls.jsonl}
    """),
        SOURCE,
    )
    conf = route_named(cfg, "r").plugin("file-log")
    assert isinstance(conf, FileLogConfig)
    assert conf.path == "logs/calls.jsonl" and conf.reopen is False


@pytest.mark.parametrize(
    "provider, llm_format, route_type, fragments",
    [
        (
            "openai",
            "anthropic",
            "llm/v1/chat",
            ["llm_format 'anthropic' needs provider 'anthropic'", "not 'openai'"],
        ),
        (
            "mock",
            "gemini",
            "llm/v1/chat",
            ["llm_format 'gemini' needs provider 'gemini'", "only takes llm_format 'openai'"],
        ),
        ("openai", "claude", "llm/v1/chat", ["llm_format", "'anthropic'", "'bedrock'"]),
    ],
)
def test_llm_format_must_be_the_providers_own(
    provider: str, llm_format: str, route_type: str, fragments: list[str]
) -> None:
    text = doc(f"""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: {route_type}
                      llm_format: {llm_format}
                      model:
                        provider: {provider}
                        name: m
    """)
    problem = one_problem(text)
    for fragment in fragments:
        assert fragment in problem


def test_llm_format_openai_is_the_default() -> None:
    cfg = load_text(
        doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config: {route_type: llm/v1/chat, model: {provider: openai, name: m}}
        """),
        SOURCE,
    )
    conf = route_named(cfg, "r").plugin("ai-proxy")
    assert conf.llm_format == "openai"


def test_a_vertex_service_account_configured_nowhere_is_a_load_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GCP_SERVICE_ACCOUNT", raising=False)
    text = doc("""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: llm/v1/chat
                      auth: {gcp_use_service_account: true}
                      model:
                        provider: gemini
                        name: gemini-2.5-pro
                        options:
                          gemini: {api_endpoint: e, project_id: p, location_id: l}
    """)
    problem = one_problem(text)
    assert "gcp_service_account_json" in problem and "GCP_SERVICE_ACCOUNT" in problem


@pytest.mark.parametrize(
    "provider, route_type",
    [
        (name, str(rt))
        for name, p in providers.registry().items()
        for rt in ("llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings")
        if rt not in {str(t) for t in p.route_types}
    ],
)
def test_a_route_type_the_provider_cannot_serve_is_a_load_error(
    provider: str, route_type: str
) -> None:
    text = doc(f"""
        services:
          - name: s
            routes:
              - name: r
                paths: [/x]
                plugins:
                  - name: ai-proxy
                    config:
                      route_type: {route_type}
                      model: {{provider: {provider}, name: m}}
    """)
    with pytest.raises(ConfigError) as e:
        load_text(text, SOURCE)
    message = str(e.value)
    assert f"provider {provider!r} cannot serve route_type {route_type!r}" in message
