"""The gateway's policy plugins (key-auth, rate limits, prompt guard, ...): one module
each, one small mitmproxy addon each, run in Kong's plugin order.

A policy module is found by being here: every module of this package that defines
`NAME` is one. It defines

- `NAME`: the plugin's name in the config (Kong's: `key-auth`, `ai-prompt-guard`, ...);
- `PRIORITY`: Kong's priority of the plugin (higher runs first);
- `CONSUMER_SCOPE`: whether the plugin can be configured for a consumer;
- `Config`: the pydantic model of its `config` block (Kong's field names; a `Strict`
  model, so an unknown field is a load error);
- `Policy`: the addon, built with the gateway's shared state (`addons.state.Gateway`).

Adding a policy is adding a module (and its tests). A module here must not import
`addons.config` at import time: the config loader imports this package to learn the
plugins' config models.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType


@functools.cache
def modules() -> tuple[ModuleType, ...]:
    """The policy modules, in the order they run (Kong's priority, highest first)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME"):
            found.append(module)
    return tuple(sorted(found, key=lambda m: (-m.PRIORITY, m.NAME)))


def addons(gateway: object) -> list[object]:
    """One addon per policy, in running order."""
    return [m.Policy(gateway) for m in modules()]
