"""The pure modules import on their own, in any order, without mitmproxy."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.conftest import REPO

PURE = [
    "providers",
    "providers.base",
    "providers.sse",
    "providers.options",
    "providers.openai",
    "providers.mock",
    "providers.anthropic",
    "providers.gemini",
    "providers.bedrock",
    "providers.eventstream",
    "providers.cohere",
    "providers.huggingface",
    "providers.azure",
    "providers.openai_compatible",
    "providers.ollama",
    "providers.llama2",
    "providers.mistral",
    "providers.openai_responses",
    "providers.prices",
    "addons.routing",
    "addons.llm_request",
    "addons.config",
    "addons.config.schema",
    "addons.config.loader",
    "exporters.record",
    "exporters.ids",
]

# Each module is imported first, into an interpreter that has none of the project's
# modules loaded (a circular import only shows when its module is imported first).
SCRIPT = """
import importlib, json, sys
out = {}
for name in %r:
    for k in [k for k in sys.modules if k.split(".")[0] in ("addons", "providers", "exporters", "mitmproxy")]:
        del sys.modules[k]
    try:
        importlib.import_module(name)
        if name.startswith("providers"):
            importlib.import_module("providers").registry()
        out[name] = "mitmproxy" if "mitmproxy" in sys.modules else "ok"
    except Exception as e:
        out[name] = repr(e)
print(json.dumps(out))
"""


def test_pure_modules_import_alone_and_without_mitmproxy() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT % (PURE,)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {name: "ok" for name in PURE}
