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
