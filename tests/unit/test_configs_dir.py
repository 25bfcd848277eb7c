"""Every example config in configs/ loads (new files are picked up automatically)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from addons.config import load_file
from tests.unit.conftest import CONFIGS

EXAMPLES = sorted([*CONFIGS.glob("*.yaml"), *CONFIGS.glob("*.yml")])


def test_there_are_example_configs() -> None:
    assert EXAMPLES, f"no example config in {CONFIGS}"


@pytest.fixture(autouse=True)
def _vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # example configs reference provider keys through {vault://env/...}; give every
    # referenced variable a placeholder so the examples load without real keys
    for path in EXAMPLES:
        for name in re.findall(r"\{vault://env/([A-Za-z0-9_-]+)", path.read_text()):
            monkeypatch.setenv(name.upper().replace("-", "_"), f"placeholder-{name.lower()}")
    # Vertex routes with a service account read it from GCP_SERVICE_ACCOUNT
    monkeypatch.setenv(
        "GCP_SERVICE_ACCOUNT",
        '{"type": "service_account", "client_email": "gw@example.iam.gserviceaccount.com", '
        '"private_key": "placeholder", "token_uri": "https://oauth2.googleapis.com/token"}',
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    cfg = load_file(path)
    assert cfg.routes, f"{path.name} defines no route"
    for route in cfg.routes:
        # every route either translates LLM calls or proxies to a service
        assert route.plugin("ai-proxy") is not None or (route.service and route.service.url)


# A client request each example's native (llm_format) route is documented to serve, and
# the upstream URL it must reach: the route must match the path, and the provider must
# find the model and the operation in what the route passes on.
NATIVE_CALLS = {
    ("anthropic.yaml", "claude-native"): (
        "/anthropic/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []},
        "https://api.anthropic.com/v1/messages",
    ),
    ("gemini.yaml", "gemini-native"): (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        "https://generativelanguage.googleapis.com"
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    ),
    ("vertex.yaml", "vertex-native"): (
        "/v1/projects/my-project/locations/us-central1/publishers/google/models/"
        "gemini-2.5-pro:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations/"
        "us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
    ),
    ("bedrock.yaml", "bedrock-native"): (
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse-stream",
        {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        "https://bedrock-runtime.us-east-1.amazonaws.com"
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse-stream",
    ),
}


def _native_routes() -> list[tuple[str, str]]:
    found = []
    for path in EXAMPLES:
        text = path.read_text()
        if "llm_format" not in text:
            continue
        for match in re.finditer(
            r"- name: (\S+)\n(?:(?!\n      - name:).)*?llm_format", text, re.S
        ):
            found.append((path.name, match.group(1)))
    return found


def test_every_native_example_route_has_a_documented_call() -> None:
    assert sorted(_native_routes()) == sorted(NATIVE_CALLS)


@pytest.mark.parametrize(("config", "route"), sorted(NATIVE_CALLS), ids=lambda v: str(v))
def test_native_example_route_reaches_the_provider(config: str, route: str) -> None:
    import json

    from mitmproxy.http import Headers

    import providers
    from providers.base import CallSpec, RouteType

    client_path, body, upstream = NATIVE_CALLS[(config, route)]
    cfg = load_file(CONFIGS / config)
    match = cfg.table.match("POST", "127.0.0.1:8000", client_path, Headers())
    assert match is not None and match.route.name == route
    conf = match.route.plugin("ai-proxy")
    provider = providers.get(conf.model.provider)
    raw = json.dumps(body).encode()
    spec = CallSpec(
        route_type=RouteType.CHAT,
        body=body,
        model=None,
        options=conf.model.options,
        stream=False,
        path=match.upstream_path,
        query=client_path.partition("?")[2],
        raw_body=raw,
        llm_format=conf.llm_format,
    )
    spec.model = provider.native_model(spec)
    up = provider.build_native_request(spec)
    assert up.url == upstream
    assert up.body == raw
