"""Shared helpers for the unit tests of the pure code (providers, config, routing, records).

Kong's ai-proxy fixtures live next to the repository, in ../shared/fixtures/kong-ai-proxy.
They are always present: a missing file is a broken checkout, so `fixture()` fails
loudly instead of skipping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from addons.config import GatewayConfig, load_text
from addons.config.model import Route
from providers.base import CallSpec, RouteType
from providers.options import ModelOptions

REPO = Path(__file__).resolve().parents[2]
KONG = REPO.parent / "shared" / "fixtures" / "kong-ai-proxy"
CONFIGS = REPO / "configs"


def fixture(rel: str) -> Path:
    """A Kong fixture file by its path under fixtures/kong-ai-proxy/ (must exist)."""
    path = KONG / rel
    if not path.is_file():
        raise FileNotFoundError(
            f"Kong fixture missing: {path} (expected ../shared/fixtures next to the repo)"
        )
    return path


def fixtures(pattern: str) -> list[Path]:
    """Kong fixture files matching a glob under fixtures/kong-ai-proxy/ (at least one)."""
    found = sorted(KONG.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no Kong fixture matches {KONG / pattern}")
    return found


def fixture_json(rel: str) -> Any:
    return json.loads(fixture(rel).read_bytes())


def every_split(data: bytes):
    """Every way to cut `data` into two chunks (the empty cut included)."""
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def spec(
    route_type: RouteType = RouteType.CHAT,
    body: dict[str, Any] | None = None,
    *,
    model: str | None = "gpt-4",
    stream: bool = False,
    wants_usage: bool = False,
    **options: Any,
) -> CallSpec:
    """A CallSpec as the gateway builds it, with `options` as the route's model.options."""
    return CallSpec(
        route_type=route_type,
        body=body if body is not None else {},
        model=model,
        options=ModelOptions(**options),
        stream=stream,
        client_wants_usage=wants_usage,
    )


class CIHeaders(dict):
    """A case-insensitive header mapping, like mitmproxy's Headers."""

    def __init__(self, items: dict[str, str] | None = None) -> None:
        super().__init__({k.lower(): v for k, v in (items or {}).items()})

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


def load(yaml_text: str, source: str = "test.yaml") -> GatewayConfig:
    return load_text(yaml_text, source)


def route_named(cfg: GatewayConfig, name: str) -> Route:
    return next(r for r in cfg.routes if r.name == name)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """An API key in the environment, for vault references."""
    value = "sk-unit-secret-9f8e7d6c5b4a"
    monkeypatch.setenv("LLMITM_TEST_KEY", value)
    return value
