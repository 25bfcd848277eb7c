"""ai-request-transformer and ai-response-transformer: config, the extraction pattern,
the JSON instructions, the plugin's own LLM call (against a FakeUpstream) and the two
addons in mitmproxy's test harness (with the embedded mock LLM)."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tflow

from addons.ai_proxy_config import AIProxyConfig
from addons.config import ConfigError, load_text
from addons.policies import _llm_call, request_transformer, response_transformer
from addons.policies._llm_call import Transport, ask, complete, extract, json_value
from addons.policies.response_transformer import parse_instructions
from addons.state import Gateway
from providers.base import ProviderError, Usage
from tests.conftest import free_port
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion
from tests.policy_helpers import error_of, route_config, routed_request

SOURCE = "gateway.yaml"
KONG_PATTERN = r"{((.|\n)*)}"  # the pattern of Kong's own docs example


def _yaml(plugin: str, config: str) -> str:
    """A config with one `/t` route carrying `plugin` (`config`: YAML block lines)."""
    return route_config({plugin: "\n" + config}, route="t", path="/t")


MOCK_LLM = """
prompt: Rewrite the body.
llm:
  route_type: llm/v1/chat
  model: {provider: mock, name: mock-gpt}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, SOURCE)
    return e.value.problems


# ------------------------------------------------------------------------ config


@pytest.mark.parametrize("plugin", ["ai-request-transformer", "ai-response-transformer"])
def test_kong_defaults(plugin: str) -> None:
    cfg = load_text(_yaml(plugin, MOCK_LLM), SOURCE)
    conf = cfg.routes[0].plugin(plugin)
    assert conf.prompt == "Rewrite the body."
    assert conf.http_timeout == 60000
    assert conf.https_verify is True
    assert conf.transformation_extract_pattern is None
    assert conf.max_request_body_size == 10 * 1024 * 1024
    assert conf.http_proxy_host is None and conf.https_proxy_port is None
    assert conf.llm.model.provider == "mock"
    if plugin == "ai-response-transformer":
        assert conf.parse_llm_response_json_instructions is False


def test_kong_docs_example_loads() -> None:
    """Kong's documented ai-response-transformer example, as written."""
    text = _yaml(
        "ai-response-transformer",
        """
        prompt: |
          Add a new header named "new-header" with the value "header-value" to the response.
        transformation_extract_pattern: "{((.|\\\\n)*)}"
        parse_llm_response_json_instructions: true
        llm:
          route_type: llm/v1/chat
          auth: {header_name: Authorization, header_value: Bearer sk-x}
          model: {provider: openai, name: gpt-4}
        """,
    )
    conf = load_text(text, SOURCE).routes[0].plugin("ai-response-transformer")
    assert conf.transformation_extract_pattern == KONG_PATTERN
    assert conf.extract('Here:\n{"status": 201}\nDone.') == '{"status": 201}'


def test_a_bad_pattern_is_a_load_error_naming_it() -> None:
    text = _yaml(
        "ai-request-transformer", MOCK_LLM + 'transformation_extract_pattern: "(unclosed"\n'
    )
    (problem,) = _problems(text)
    assert problem.startswith(f"{SOURCE}:")
    assert "config.transformation_extract_pattern" in problem
    assert "'(unclosed'" in problem and "not a valid regular expression" in problem


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "prompt: x\nllm: {route_type: llm/v1/completions, model: {provider: mock, name: m}}",
            "llm.route_type must be 'llm/v1/chat' for AI transformer plugins",
        ),
        (
            "prompt: x\nllm: {route_type: llm/v1/chat, model: {provider: mock}}",
            "llm.model.name is required",
        ),
        (
            "prompt: x\nllm:\n  route_type: llm/v1/chat\n"
            '  model: {provider: mock, name: "$(headers.x-model)"}',
            "llm.model cannot use $(...) templates",
        ),
        (
            "prompt: x\nhttp_proxy_host: proxy.internal\n"
            "llm: {route_type: llm/v1/chat, model: {provider: mock, name: m}}",
            "http_proxy_host and http_proxy_port must be set together",
        ),
        (
            "prompt: x\nhttps_proxy_port: 3128\n"
            "llm: {route_type: llm/v1/chat, model: {provider: mock, name: m}}",
            "https_proxy_host and https_proxy_port must be set together",
        ),
        (
            "prompt: x\nllm: {route_type: llm/v1/chat, model: {provider: nope, name: m}}",
            "unknown provider 'nope'",
        ),
        (
            "prompt: x\nllm:\n  route_type: llm/v1/chat\n  response_streaming: always\n"
            "  model: {provider: mock, name: m}",
            "llm.response_streaming does not apply to a plugin's own LLM call",
        ),
        ("llm: {route_type: llm/v1/chat, model: {provider: mock, name: m}}", "config.prompt"),
        ('prompt: ""\nllm: {route_type: llm/v1/chat, model: {provider: mock, name: m}}', "prompt"),
        ("prompt: x", "config.llm"),
        (
            "prompt: x\nhttp_timeout: 0\nllm: {route_type: llm/v1/chat, model: {provider: mock, name: m}}",
            "config.http_timeout",
        ),
        (
            "prompt: x\nprompts: y\nllm: {route_type: llm/v1/chat, model: {provider: mock, name: m}}",
            "prompts",
        ),
    ],
)
def test_bad_configs_are_clear_load_errors(config: str, expected: str) -> None:
    for plugin in ("ai-request-transformer", "ai-response-transformer"):
        problems = _problems(_yaml(plugin, config))
        assert any(expected in p for p in problems), problems


def test_parse_instructions_field_only_on_the_response_transformer() -> None:
    text = _yaml(
        "ai-request-transformer", MOCK_LLM + "parse_llm_response_json_instructions: true\n"
    )
    assert any("parse_llm_response_json_instructions" in p for p in _problems(text))


@pytest.mark.parametrize("plugin", ["ai-request-transformer", "ai-response-transformer"])
def test_not_configurable_for_a_consumer(plugin: str) -> None:
    """Kong's schemas say no_consumer."""
    body = textwrap.indent(textwrap.dedent(MOCK_LLM).strip("\n"), "      ")
    text = (
        '_format_version: "3.0"\n'
        "consumers:\n"
        "  - username: alice\n"
        "    plugins:\n"
        f"      - name: {plugin}\n"
        "        config:\n" + textwrap.indent(body, "    ") + "\n"
    )
    assert any("cannot be configured for a consumer" in p for p in _problems(text))


@pytest.mark.parametrize("plugin", ["ai-request-transformer", "ai-response-transformer"])
def test_the_docs_example_loads(plugin: str) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "policies" / f"{plugin}.md"
    example = re.search(r"```yaml\n(.*?)```", doc.read_text(), re.S)
    assert example is not None
    cfg = load_text(example.group(1), doc.name)
    assert cfg.routes[0].plugin(plugin).llm.model.provider == "mock"


def test_priorities_are_kongs() -> None:
    assert request_transformer.PRIORITY == 777  # before the prompt plugins (773..771)
    assert response_transformer.PRIORITY == 768  # after ai-proxy (770)


# ---------------------------------------------------------------- the pattern


@pytest.mark.parametrize(
    ("pattern", "answer", "expected"),
    [
        (None, "  the whole answer\n", "  the whole answer\n"),
        # Kong: the first match, the whole of it (not a capture group)
        (KONG_PATTERN, 'Sure! Here it is:\n{"a": {"b": 1}}\nAnything else?', '{"a": {"b": 1}}'),
        (r"\d+", "abc 12 and 345", "12"),
        # case-insensitive, as Kong's "ijom" flags
        (r"answer: \w+", "ANSWER: yes", "ANSWER: yes"),
        # multi-line: ^ and $ match at line boundaries
        (r"^body=.*$", "preamble\nbody=42\npostamble", "body=42"),
        # llmitm: a group named `body` is the new body
        (r"<out>(?<body>.*?)</out>", "x <out>new</out> y", "new"),
        (r"<out>(?P<body>.*?)</out>", "<out>py-style</out>", "py-style"),
        (r"\{.*\}", "no braces here", None),
    ],
)
def test_extract(pattern: str | None, answer: str, expected: str | None) -> None:
    compiled = _llm_call.compile_pattern(pattern) if pattern is not None else None
    assert extract(compiled, answer) == expected


def test_a_pathological_pattern_gives_up_instead_of_stalling_the_gateway() -> None:
    compiled = _llm_call.compile_pattern(r"^(a+)+$")
    assert extract(compiled, "a" * 40 + "!") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ("Here you go:\n```\n[1, 2]\n```\nbye", [1, 2]),
        ("42", 42),
    ],
)
def test_json_value(text: str, expected: Any) -> None:
    assert json_value(text) == expected


@pytest.mark.parametrize("text", ["not json", "```json\nnot json either\n```", ""])
def test_json_value_rejects_what_is_not_json(text: str) -> None:
    with pytest.raises(ValueError):
        json_value(text)


# --------------------------------------------------------- the JSON instructions


def test_instructions_status_headers_and_string_body() -> None:
    got = parse_instructions('{"status": 201, "headers": {"x-a": "b", "x-n": 3}, "body": "hi"}')
    assert (got.status, got.headers, got.body, got.json_body) == (
        201,
        {"x-a": "b", "x-n": "3"},
        b"hi",
        False,
    )


def test_instructions_kong_defaults() -> None:
    """Kong: status 200 when absent; no `body` field: the whole object is the body."""
    got = parse_instructions('{"answer": 42}')
    assert got.status == 200 and got.headers == {}
    assert json.loads(got.body) == {"answer": 42} and got.json_body


def test_instructions_json_body_is_encoded() -> None:
    got = parse_instructions('```json\n{"status": "202", "body": {"ok": true}}\n```')
    assert got.status == 202 and json.loads(got.body) == {"ok": True} and got.json_body


def test_instructions_cannot_set_framing_headers() -> None:
    got = parse_instructions(
        '{"headers": {"Content-Length": "1", "transfer-encoding": "chunked", "x-k": "v"}, "body": ""}'
    )
    assert got.headers == {"x-k": "v"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("no json here", "is not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"status": 99}', "'status' must be an HTTP status code"),
        ('{"status": "ok"}', "'status' must be an HTTP status code"),
        ('{"status": true}', "'status' must be an HTTP status code"),
        ('{"headers": ["x"]}', "'headers' must be an object"),
        ('{"headers": {"x-a": {"nested": 1}}}', "header 'x-a' must have a one-line string value"),
        ('{"headers": {"x-a": "v\\r\\nx-injected: 1"}}', "one-line"),
        ('{"headers": {"bad name": "v"}}', "'bad name' is not a header name"),
    ],
)
def test_bad_instructions_are_a_502_naming_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ProviderError) as e:
        parse_instructions(text)
    assert e.value.status == 502 and e.value.code == "transformation_failed"
    assert "failed to parse JSON response instructions" in e.value.message
    assert fragment in e.value.message


# ------------------------------------------------------- the plugin's LLM call


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    yield gw
    await gw.upstream.stop()


def _llm(upstream_url: str, **extra: Any) -> AIProxyConfig:
    block: dict[str, Any] = {
        "route_type": "llm/v1/chat",
        "auth": {"header_name": "Authorization", "header_value": "Bearer sk-llm"},
        "model": {
            "provider": "openai",
            "name": "gpt-4o-mini",
            "options": {
                "upstream_url": upstream_url,
                "max_tokens": 64,
                "temperature": 0.0,
                "input_cost": 1.0,
                "output_cost": 2.0,
            },
        },
    }
    block.update(extra)
    return AIProxyConfig.model_validate(block)


async def test_ask_sends_an_openai_chat_through_the_provider_adapter(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(Reply.json(chat_completion("REWRITTEN", prompt_tokens=100, completion_tokens=10)))
    answer = await ask(gateway, _llm(fake.url), "Be terse.", '{"q": 1}')
    assert answer.text == "REWRITTEN"
    assert answer.provider == "openai" and answer.model == "gpt-4o-mini"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (100, 10)
    assert answer.cost == pytest.approx((100 * 1.0 + 10 * 2.0) / 1_000_000)
    assert answer.stats()["total_tokens"] == 110

    sent = fake.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-llm"
    body = sent.json()
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": '{"q": 1}'},
    ]
    assert body["max_tokens"] == 64 and body["temperature"] == 0.0
    assert "stream" not in body  # a whole answer


async def test_complete_returns_the_text(gateway: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("only the text")))
    assert await complete(gateway, _llm(fake.url), "s", "u") == "only the text"


async def test_query_param_auth(gateway: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("ok")))
    llm = _llm(fake.url, auth={"param_name": "key", "param_value": "k1", "param_location": "query"})
    await ask(gateway, llm, "s", "u")
    assert fake.last().path == "/v1/chat/completions?key=k1"
    assert "authorization" not in fake.last().headers


async def test_body_param_auth(gateway: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.json(chat_completion("ok")))
    llm = _llm(
        fake.url, auth={"param_name": "api_key", "param_value": "k2", "param_location": "body"}
    )
    await ask(gateway, llm, "s", "u")
    assert fake.last().json()["api_key"] == "k2"


async def test_an_answer_without_usage_is_estimated_not_zero(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    data = chat_completion("four words right here")
    del data["usage"]
    fake.reply(Reply.json(data))
    answer = await ask(gateway, _llm(fake.url), "system prompt", "user text")
    assert answer.usage.estimated and answer.usage.prompt_tokens > 0
    assert answer.usage.completion_tokens > 0
    assert answer.stats()["usage_estimated"] is True


async def test_the_mock_provider_echoes(gateway: Gateway) -> None:
    llm = AIProxyConfig.model_validate(
        {"route_type": "llm/v1/chat", "model": {"provider": "mock", "name": "mock-gpt"}}
    )
    assert await complete(gateway, llm, "instructions", "echo me") == "echo me"


@pytest.mark.parametrize(
    ("reply", "status", "fragment"),
    [
        (
            Reply.json(
                {"error": {"message": "the model is overloaded", "type": "server_error"}}, 503
            ),
            502,
            "answered 503: the model is overloaded",
        ),
        (
            Reply.json(
                {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}, 401
            ),
            502,
            "answered 401: Incorrect API key",
        ),
        (Reply(200, {"content-type": "text/html"}, b"<html>oops</html>"), 502, "unreadable answer"),
        (Reply.json(chat_completion("")), 502, "answered no text"),
        (Reply.json({"choices": []}), 502, "answered no text"),
    ],
)
async def test_llm_failures_are_provider_errors(
    gateway: Gateway, fake: FakeUpstream, reply: Reply, status: int, fragment: str
) -> None:
    fake.reply(reply)
    with pytest.raises(ProviderError) as e:
        await ask(gateway, _llm(fake.url), "s", "u")
    assert e.value.status == status
    assert fragment in e.value.message
    assert "openai/gpt-4o-mini" in e.value.message
    assert e.value.code == "transformer_llm_error"


async def test_a_slow_llm_times_out_with_http_timeout(gateway: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply(hang=True))
    with pytest.raises(ProviderError) as e:
        await ask(gateway, _llm(fake.url), "s", "u", Transport(timeout=0.3))
    assert e.value.status == 504 and e.value.code == "upstream_timeout"
    assert e.value.message.startswith("the transformer's LLM (openai/gpt-4o-mini): ")
    assert e.value.message.endswith("(http_timeout)")


async def test_an_unreachable_llm_is_a_502(gateway: Gateway) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProviderError) as e:
        await ask(gateway, _llm(dead), "s", "u")
    assert e.value.status == 502 and e.value.code == "upstream_unreachable"


async def test_http_proxy_is_used_for_http_llm_urls(gateway: Gateway, fake: FakeUpstream) -> None:
    """The fake plays the forward proxy: it gets the absolute-form request."""
    fake.reply(Reply.json(chat_completion("via proxy")))
    target = "http://llm.internal.example:8080"
    transport = Transport(http_proxy=fake.url, https_proxy="http://127.0.0.1:1")
    answer = await ask(gateway, _llm(target), "s", "u", transport)
    assert answer.text == "via proxy"
    assert fake.last().path == f"{target}/v1/chat/completions"
    assert fake.last().headers["authorization"] == "Bearer sk-llm"


def test_transport_from_config() -> None:
    text = _yaml(
        "ai-request-transformer",
        MOCK_LLM
        + "http_timeout: 1500\nhttps_verify: false\n"
        + "http_proxy_host: proxy.internal\nhttp_proxy_port: 3128\n"
        + "https_proxy_host: '::1'\nhttps_proxy_port: 3129\n",
    )
    conf = load_text(text, SOURCE).routes[0].plugin("ai-request-transformer")
    t = conf.transport()
    assert t == Transport(1.5, False, "http://proxy.internal:3128", "http://[::1]:3129")
    assert t.proxy_for("https://api.openai.com/v1") == "http://[::1]:3129"
    assert t.proxy_for("http://10.0.0.1/v1") == "http://proxy.internal:3128"
    assert t.proxy_for("mock://llmitm") is None


async def test_https_verify_false_sends_over_the_shared_session(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    fake.reply(Reply.json(chat_completion("unverified")))
    answer = await ask(gateway, _llm(fake.url), "s", "u", Transport(verify=False))
    assert answer.text == "unverified"


# ------------------------------------------------------------- the addons


GATEWAY_CONFIG = """
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: chat
        paths: ["/chat"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: mock, name: mock-gpt}
          - name: ai-request-transformer
            config:
              prompt: Make it polite.
              llm:
                route_type: llm/v1/chat
                model:
                  provider: mock
                  name: rewriter
                  options: {mock_response: "REQ_ANSWER"}
          - name: ai-response-transformer
            config:
              prompt: Make it polite.
              parse_llm_response_json_instructions: INSTRUCTIONS
              llm:
                route_type: llm/v1/chat
                model:
                  provider: mock
                  name: rewriter
                  options: {mock_response: "RESP_ANSWER"}
      - name: small
        paths: ["/small"]
        plugins:
          - name: ai-request-transformer
            config:
              prompt: x
              max_request_body_size: 16
              llm: {route_type: llm/v1/chat, model: {provider: mock, name: m}}
  - name: web
    url: http://backend.internal:8080
    routes:
      - name: plain
        paths: ["/plain"]
        plugins:
          - name: ai-request-transformer
            config:
              prompt: Rewrite.
              transformation_extract_pattern: "<new>(?<body>.*)</new>"
              llm:
                route_type: llm/v1/chat
                model: {provider: mock, name: rewriter, options: {mock_response: "REQ_ANSWER"}}
          - name: ai-response-transformer
            config:
              prompt: Rewrite.
              llm:
                route_type: llm/v1/chat
                model: {provider: mock, name: rewriter, options: {mock_response: "RESP_ANSWER"}}
      - name: strict
        paths: ["/strict"]
        plugins:
          - name: ai-response-transformer
            config:
              prompt: Answer in JSON.
              transformation_extract_pattern: '^\\{.*\\}$'
              llm:
                route_type: llm/v1/chat
                model: {provider: mock, name: rewriter, options: {mock_response: "RESP_ANSWER"}}
"""


def _gateway(
    req_answer: str = "{}", resp_answer: str = "{}", instructions: bool = False
) -> Gateway:
    gw = Gateway()
    text = (
        GATEWAY_CONFIG.replace('"REQ_ANSWER"', json.dumps(req_answer))
        .replace('"RESP_ANSWER"', json.dumps(resp_answer))
        .replace("INSTRUCTIONS", "true" if instructions else "false")
    )
    gw.config = load_text(text, SOURCE)
    return gw


def _flow(gw: Gateway, path: str, body: bytes = b"", method: str = "POST") -> Any:
    headers = {"content-type": "application/json"}
    return routed_request(gw, method, path, headers=headers, body=body, host="gw.example")


async def test_request_body_replaced_for_ai_proxy() -> None:
    new = {"messages": [{"role": "user", "content": "Would you kindly say hi?"}]}
    gw = _gateway(req_answer=json.dumps(new))
    f = _flow(gw, "/chat", b'{"messages": [{"role": "user", "content": "say hi"}]}')
    await request_transformer.Policy(gw).request(f)
    assert f.response is None
    call = gw.calls.get(f)
    assert call.body == new  # what the prompt plugins and ai-proxy read now
    assert json.loads(f.request.content) == new
    stats = call.context["ai_request_transformer"]
    assert stats["provider"] == "mock" and stats["model"] == "rewriter"
    assert stats["total_tokens"] > 0


async def test_request_answer_that_is_not_json_is_a_400_on_an_ai_proxy_route() -> None:
    gw = _gateway(req_answer="Sure! I made it polite.")
    f = _flow(gw, "/chat", b'{"messages": [{"role": "user", "content": "hi"}]}')
    await request_transformer.Policy(gw).request(f)
    assert f.response.status_code == 400
    err = error_of(f)
    assert err["code"] == "transformation_failed"
    assert err["message"].startswith("ai-request-transformer: the transformed body is not JSON")
    call = gw.calls.get(f)
    assert call.error is not None and call.error_source == "gateway"


async def test_request_answer_fenced_in_markdown_is_read_inside_the_fence() -> None:
    new = {"messages": [{"role": "user", "content": "fenced"}]}
    gw = _gateway(req_answer=f"```json\n{json.dumps(new)}\n```")
    f = _flow(gw, "/chat", b'{"messages": [{"role": "user", "content": "hi"}]}')
    await request_transformer.Policy(gw).request(f)
    assert f.response is None and gw.calls.get(f).body == new


async def test_request_json_array_is_refused_on_an_ai_proxy_route() -> None:
    gw = _gateway(req_answer="[1, 2]")
    f = _flow(gw, "/chat", b"{}")
    await request_transformer.Policy(gw).request(f)
    assert f.response.status_code == 400
    assert "a JSON array" in error_of(f)["message"]


async def test_plain_route_gets_the_extracted_bytes() -> None:
    gw = _gateway(req_answer="Here: <new>name=Bob&polite=yes</new> done")
    f = _flow(gw, "/plain/form", b"name=bob")
    await request_transformer.Policy(gw).request(f)
    assert f.response is None
    assert f.request.content == b"name=Bob&polite=yes"
    assert gw.calls.get(f).body is None  # later plugins parse the new bytes themselves


async def test_pattern_mismatch_is_kongs_400() -> None:
    gw = _gateway(req_answer="I refuse to rewrite this.")
    f = _flow(gw, "/plain/form", b"x")
    await request_transformer.Policy(gw).request(f)
    assert f.response.status_code == 400
    err = error_of(f)
    assert err["code"] == "transformation_failed"
    assert "did not match transformation_extract_pattern" in err["message"]
    # the LLM was called: its usage is in the record all the same
    assert "ai_request_transformer" in gw.calls.get(f).context


async def test_request_too_large_by_content_length_is_a_413_before_the_body() -> None:
    gw = _gateway()
    f = _flow(gw, "/small", b"x" * 17)
    request_transformer.Policy(gw).requestheaders(f)
    assert f.response.status_code == 413
    assert error_of(f)["code"] == "request_too_large"


async def test_request_too_large_without_content_length_is_a_413() -> None:
    gw = _gateway()
    f = _flow(gw, "/small", b"x" * 17)
    del f.request.headers["content-length"]
    await request_transformer.Policy(gw).request(f)
    assert f.response.status_code == 413


async def test_request_plugin_not_configured_leaves_the_flow_alone() -> None:
    gw = _gateway()
    f = _flow(gw, "/nowhere", b"{}")  # no route: a 404 already
    await request_transformer.Policy(gw).request(f)
    assert f.response.status_code == 404


def _answered(gw: Gateway, path: str, status: int = 200, body: bytes = b"") -> Any:
    """A flow whose response came from the service (mitmproxy connected to it)."""
    f = _flow(gw, path, b"{}")
    f.response = tflow.tresp(status_code=status, content=body)
    f.response.headers["content-type"] = "application/json"
    assert f.server_conn.timestamp_start is not None
    return f


async def test_response_body_rewritten_with_upstream_status_and_headers() -> None:
    gw = _gateway(resp_answer="polite answer")
    f = _answered(gw, "/plain/x", 201, b'{"answer": "rude"}')
    f.response.headers["x-upstream"] = "kept"
    await response_transformer.Policy(gw).response(f)
    assert f.response.status_code == 201
    assert f.response.content == b"polite answer"
    assert f.response.headers["x-upstream"] == "kept"
    assert f.response.headers["content-length"] == str(len(b"polite answer"))
    assert gw.calls.get(f).context["ai_response_transformer"]["total_tokens"] > 0


async def test_response_of_a_gzip_upstream_is_rewritten_in_clear() -> None:
    gw = _gateway(resp_answer="plain text now")
    f = _answered(gw, "/plain/x")
    f.response.headers["content-encoding"] = "gzip"
    f.response.content = b'{"answer": "compressed"}'  # mitmproxy encodes it
    assert f.response.raw_content != f.response.content
    await response_transformer.Policy(gw).response(f)
    assert "content-encoding" not in f.response.headers
    assert f.response.raw_content == b"plain text now"


async def test_response_json_instructions_applied() -> None:
    todo = {"status": 451, "headers": {"x-compliance": "blocked"}, "body": {"error": "no"}}
    gw = _gateway(resp_answer=json.dumps(todo), instructions=True)
    f = _flow(gw, "/chat", b'{"messages": [{"role": "user", "content": "hi"}]}')
    # ai-proxy answered (the gateway did the upstream I/O)
    call = gw.calls.get(f)
    call.provider, call.upstream_status = object(), 200
    f.response = tflow.tresp(status_code=200, content=b'{"choices": []}')
    await response_transformer.Policy(gw).response(f)
    assert f.response.status_code == 451
    assert f.response.reason == "Unavailable For Legal Reasons"
    assert f.response.headers["x-compliance"] == "blocked"
    assert f.response.headers["content-type"] == "application/json"
    assert json.loads(f.response.content) == {"error": "no"}


async def test_response_made_by_the_gateway_is_not_transformed() -> None:
    gw = _gateway(resp_answer="SHOULD NOT APPEAR")
    f = _flow(gw, "/plain/x", b"{}")
    f.response = tflow.tresp(status_code=204, content=b"")
    f.server_conn.timestamp_start = None  # an addon answered: no server connection
    await response_transformer.Policy(gw).response(f)
    assert f.response.status_code == 204 and f.response.content == b""


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 101)])
async def test_bodiless_answers_are_not_transformed(method: str, status: int) -> None:
    gw = _gateway(resp_answer="SHOULD NOT APPEAR")
    f = _answered(gw, "/plain/x", status, b"")
    f.request.method = method
    await response_transformer.Policy(gw).response(f)
    assert f.response.status_code == status and f.response.content == b""


async def test_response_of_a_gateway_refusal_is_not_transformed() -> None:
    gw = _gateway(resp_answer="SHOULD NOT APPEAR")
    f = _answered(gw, "/plain/x", 401, b'{"error": {"message": "no key"}}')
    gw.calls.get(f).fail(ProviderError(401, "no key"), "gateway")
    await response_transformer.Policy(gw).response(f)
    assert b"no key" in f.response.content


async def test_response_ai_proxy_without_upstream_answer_is_not_transformed() -> None:
    gw = _gateway(resp_answer="SHOULD NOT APPEAR")
    f = _flow(gw, "/chat", b"{}")
    gw.calls.get(f).provider = object()  # ai-proxy ran, but no upstream answered
    f.response = tflow.tresp(status_code=502, content=b'{"error": {}}')
    await response_transformer.Policy(gw).response(f)
    assert f.response.content == b'{"error": {}}'


async def test_streamed_response_is_passed_through() -> None:
    gw = _gateway(resp_answer="SHOULD NOT APPEAR")
    f = _answered(gw, "/plain/x", 200, b"")
    f.response.stream = lambda chunk: chunk
    await response_transformer.Policy(gw).response(f)
    assert f.response.content == b""


async def test_response_pattern_mismatch_is_kongs_400() -> None:
    gw = _gateway(resp_answer="Sorry, no JSON today.")
    f = _answered(gw, "/strict/x", 200, b"{}")
    await response_transformer.Policy(gw).response(f)
    assert f.response.status_code == 400
    assert error_of(f)["message"].startswith("ai-response-transformer: the LLM's answer did not")


async def test_bad_instructions_are_a_502_for_the_client() -> None:
    gw = _gateway(resp_answer="not instructions", instructions=True)
    f = _flow(gw, "/chat", b"{}")
    call = gw.calls.get(f)
    call.provider, call.upstream_status = object(), 200
    f.response = tflow.tresp(status_code=200, content=b"{}")
    await response_transformer.Policy(gw).response(f)
    assert f.response.status_code == 502
    assert "failed to parse JSON response instructions" in error_of(f)["message"]
    assert call.error_source == "gateway"


# ------------------------------------------------- with the ai-sanitizer on the route

SANITIZED = """
_format_version: "3.0"
services:
  - name: llm
    routes:
      - name: chat
        paths: ["/chat"]
        plugins:
          - name: ai-proxy
            config: {route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}
          - name: ai-request-transformer
            config:
              prompt: Make it polite.
              llm: {route_type: llm/v1/chat, model: {provider: mock, name: rewriter}}
          - name: ai-sanitizer
            config: SANITIZER
"""


def _llm_echo(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[str]:
    """The transformer's LLM, replaced: it notes what it was sent and answers `answer`
    (a function of what it was sent)."""
    asked: list[str] = []

    async def ask(gw: Any, llm: Any, system: str, user: str, transport: Any = None) -> Any:
        asked.append(user)
        return _llm_call.LLMAnswer(answer(user), "mock", "rewriter", Usage(1, 1), None, 1)

    monkeypatch.setattr(request_transformer, "ask", ask)
    return asked


async def test_the_request_transformers_llm_gets_the_masked_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    email = "jane.roe@example.com"
    # the LLM keeps the placeholder it was given, and adds a polite word
    asked = _llm_echo(monkeypatch, lambda sent: sent.replace("write to", "kindly write to"))
    gw = Gateway()
    gw.config = load_text(SANITIZED.replace("SANITIZER", "{}"), SOURCE)
    body = {"messages": [{"role": "user", "content": f"write to {email}"}]}
    f = _flow(gw, "/chat", json.dumps(body).encode())
    await request_transformer.Policy(gw).request(f)
    assert f.response is None
    assert email not in asked[0] and "<EMAIL_1>" in asked[0]
    # the rest of the chain gets the originals back (the sanitizer masks them next)
    assert json.loads(f.request.content)["messages"][0]["content"] == f"kindly write to {email}"


async def test_a_body_the_sanitizer_cannot_scan_is_not_sent_to_the_llm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _llm_echo(monkeypatch, lambda sent: sent)
    slow = '{custom_patterns: [{name: slow, regex: "(?:x+x+)+y"}], regex_timeout_ms: 20}'
    gw = Gateway()
    gw.config = load_text(SANITIZED.replace("SANITIZER", slow), SOURCE)
    body = {"messages": [{"role": "user", "content": "x" * 5000}]}
    f = _flow(gw, "/chat", json.dumps(body).encode())
    await request_transformer.Policy(gw).request(f)
    assert f.response is not None and f.response.status_code == 500
    assert error_of(f)["code"] == "sanitizer_error"
    assert asked == []


def test_an_llm_answer_nested_too_deeply_is_not_json() -> None:
    """A transformer's LLM answering absurdly deep JSON is a bad answer (ValueError, the
    plugin's 'could not read' path), not a crash of the request hook."""
    from addons.policies._llm_call import json_value

    with pytest.raises(ValueError, match="nested too deeply"):
        json_value("[" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        json_value("```json\n" + "[" * 100_000 + "\n```")
