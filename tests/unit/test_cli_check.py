"""`llmitm check CONFIG`: validates a config and lists its routes and consumers."""

from __future__ import annotations

from pathlib import Path

import pytest

from addons import cli
from tests.unit.conftest import CONFIGS


def test_check_lists_routes_and_consumers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALICE_API_KEY", "sk-alice-check-1")
    monkeypatch.setenv("BOB_API_KEY", "sk-bob-check-2")
    assert cli.main(["check", str(CONFIGS / "policies.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK, 1 route(s)" in out
    assert "chat: /v1/chat/completions [key-auth, rate-limiting," in out
    assert "consumer alice: 1 key(s)\n" in out
    assert "consumer bob: 1 key(s) [rate-limiting]" in out
    assert "sk-alice" not in out and "sk-bob" not in out


def test_check_fails_with_the_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("consumers:\n  - tags: [x]\n")
    assert cli.main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "consumers[0]" in err and "username or a custom_id" in err
