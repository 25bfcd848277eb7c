"""Helpers shared by the policy plugins' tests (tests/unit and tests/e2e).

- `route_config`, `mock_chat_config`, `load_error`: the YAML of a gateway with one route
  running the given plugins, and the load error of a bad one;
- `gateway_for`, `client_request`, `routed_request`, `flow_with_call`, `error_of`: a
  policy addon driven by hand in mitmproxy's test harness;
- `module_gateway`, `openai_client`, `MessageTag`: a test module's running gateway, the
  official SDK as its client, and each test's call record.
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from mitmproxy.http import HTTPFlow
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from addons.calls import Call
from addons.config import ConfigError, GatewayConfig, load_text
from addons.router import Router
from addons.state import Gateway
from tests.conftest import Gateway as GatewayProcess
from tests.fakes.upstream import FakeUpstream

#: an ai-proxy config block answered by the embedded `mock` provider (no upstream)
MOCK_CHAT = "{route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}"


def _plugin_yaml(name: str, config: Any) -> str:
    """One entry of a `plugins:` list. `config` is YAML text: a flow `{...}` on one line,
    or block lines (text of several lines, or that starts with a newline); or an object,
    written as JSON; or None for no `config:` at all."""
    if config is None:
        return f"- name: {name}\n"
    if not isinstance(config, str):
        config = json.dumps(config)
    if "\n" in config.rstrip():
        block = textwrap.indent(textwrap.dedent(config).strip("\n"), "    ")
        return f"- name: {name}\n  config:\n{block}\n"
    return f"- name: {name}\n  config: {config}\n"


def route_config(
    plugins: Mapping[str, Any],
    *,
    service: str = "s",
    url: str | None = "http://127.0.0.1:9",
    route: str = "r",
    path: str = "/x",
    route_extra: str = "",
    more_routes: str = "",
    tail: str = "",
) -> str:
    """A gateway config whose service `service` (at `url`; None: no url, for ai-proxy
    routes) has route `route` at `path` running `plugins` (name: config, see
    `_plugin_yaml`), in this order.

    `route_extra` adds lines to the route (e.g. `methods: [POST]`), `more_routes` more
    routes of the service (YAML list items written from column 0), and `tail` top-level
    YAML after the services (`consumers:`, global `plugins:`...)."""
    entries = "".join(_plugin_yaml(name, conf) for name, conf in plugins.items())
    lines = ['_format_version: "3.0"', "services:", f"  - name: {service}"]
    if url is not None:
        lines.append(f"    url: {url}")
    lines += ["    routes:", f"      - name: {route}", f'        paths: ["{path}"]']
    if route_extra:
        lines.append(textwrap.indent(route_extra.strip(), " " * 8))
    lines.append("        plugins:")
    lines.append(textwrap.indent(entries, " " * 10).rstrip("\n"))
    if more_routes.strip():
        lines.append(textwrap.indent(textwrap.dedent(more_routes).strip("\n"), " " * 6))
    # a blank first line, as in the tests' own YAML: the line numbers of load errors
    return "\n" + "\n".join(lines) + "\n" + textwrap.dedent(tail).lstrip("\n")


def mock_chat_config(
    plugins: Mapping[str, Any] | None = None, *, more_routes: str = "", tail: str = ""
) -> str:
    """A gateway config whose route `chat` (service `llm`) at /v1/chat/completions runs
    ai-proxy with the `mock` provider, then `plugins` (see `route_config`)."""
    return route_config(
        {"ai-proxy": MOCK_CHAT, **(plugins or {})},
        service="llm",
        url=None,
        route="chat",
        path="/v1/chat/completions",
        more_routes=more_routes,
        tail=tail,
    )


def load_error(yaml_text: str, source: str = "test.yaml") -> str:
    """The message of the ConfigError that loading `yaml_text` must raise."""
    with pytest.raises(ConfigError) as e:
        load_text(yaml_text, source)
    return str(e.value)


# ------------------------------------------------------------ addons by hand


def gateway_for(yaml_text: str) -> Gateway:
    """The gateway state of a config (loaded as the gateway would load it)."""
    gw = Gateway()
    gw.config = load_text(yaml_text)
    return gw


def client_request(
    method: str = "GET",
    path: str = "/x",
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    host: str = "gw.test",
    peer: str | None = "127.0.0.1",
) -> HTTPFlow:
    """A client's request as the gateway (reverse-proxy mode) receives it, from `peer`
    (None: a client without an IP address): the Host header and `headers` only (a name
    given twice keeps both values), and `body` with its Content-Length (None: the body
    is not read yet)."""
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    f.client_conn.peername = (peer, 50000) if peer is not None else None
    f.request.method = method
    f.request.path = path
    f.request.headers.clear()
    f.request.headers["host"] = host
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        f.request.headers.add(name, value)
    if body is None:
        f.request.raw_content = None
    else:
        f.request.content = body
    return f


def routed_request(gw: Gateway, method: str = "GET", path: str = "/x", **kw: Any) -> HTTPFlow:
    """`client_request(method, path, **kw)` once the Router has matched it (the call
    is in `gw.calls`, or the Router answered it: 404...)."""
    f = client_request(method, path, **kw)
    Router(gw).requestheaders(f)
    return f


def dashed(**headers: str) -> dict[str, str]:
    """Header keyword arguments as header names: `x_client=` is `x-client`."""
    return {k.replace("_", "-"): v for k, v in headers.items()}


def flow_with_call(cfg: GatewayConfig, route: str, body: bytes) -> tuple[Gateway, HTTPFlow, Call]:
    """A fresh gateway, and a POST of `body` with the call the Router would make for the
    route named `route` of `cfg` (without matching it: any request reaches the route)."""
    matched = next(r for r in cfg.routes if r.name == route)
    gw = Gateway()
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.content = body
    call = Call(config=cfg, route=matched, match=None, started_at=0.0, plugins=matched.plugins)
    gw.calls.put(flow, call)
    return gw, flow, call


def error_of(flow: HTTPFlow) -> dict[str, Any]:
    """The `error` object of the flow's answer (OpenAI's error shape); there must be one."""
    assert flow.response is not None
    return json.loads(flow.response.content)["error"]


# ----------------------------------------------------------------------- e2e

#: an ai-proxy `model` on the FakeUpstream speaking OpenAI (`module_gateway` puts the
#: fake's URL in place of UPSTREAM)
FAKE_OPENAI_MODEL = '{provider: openai, name: gpt-4o-mini, options: {upstream_url: "UPSTREAM"}}'


@contextmanager
def module_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    config: str,
    upstream: FakeUpstream | None = None,
    **kw: Any,
) -> Iterator[GatewayProcess]:
    """A running gateway for a test module's fixture, stopped when the block ends:
    `config` with every UPSTREAM replaced by the fake upstream's URL; `kw` go to
    tests.conftest.Gateway (env=, quiet=...)."""
    if upstream is not None:
        config = config.replace("UPSTREAM", upstream.url)
    g = GatewayProcess(tmp_path_factory.mktemp("gw"), config, **kw)
    try:
        g.wait_ready()
        yield g
    finally:
        g.stop()


def openai_client(
    gw: GatewayProcess, prefix: str = "", api_key: str = "sk-test", **kw: Any
) -> openai.OpenAI:
    """The official SDK pointed at a running gateway's /v1 (under `/prefix` when
    given), without retries; `kw` go to openai.OpenAI (default_headers=...)."""
    base = f"{gw.url}/{prefix}/v1" if prefix else f"{gw.url}/v1"
    return openai.OpenAI(base_url=base, api_key=api_key, max_retries=0, **kw)


class MessageTag:
    """The X-Message-Id of the running test, which names its call record: a module
    keeps one, renewed by an autouse fixture (`new()`) before each test."""

    def __init__(self) -> None:
        self.id = ""

    def new(self) -> None:
        self.id = f"msg-{uuid.uuid4().hex}"

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The tag's header, and `extra` ones."""
        return {"X-Message-Id": self.id, **(extra or {})}

    def client(
        self, gw: GatewayProcess, prefix: str = "", api_key: str = "client-key", **kw: Any
    ) -> openai.OpenAI:
        """`openai_client` sending the tag with every request (and `default_headers`)."""
        headers = self.headers(kw.pop("default_headers", None))
        return openai_client(gw, prefix, api_key, default_headers=headers, **kw)

    def record(self, gw: GatewayProcess) -> dict[str, Any]:
        """The call record of the test's request (waits for it)."""
        return gw.record(message_id=self.id)


def clear_of_boundary(size: int, margin: float) -> None:
    """Wait, if need be, until a fixed window of `size` seconds has at least `margin`
    seconds left, so a test's requests all fall in one window."""
    while size - time.time() % size < margin:
        time.sleep(0.2)
