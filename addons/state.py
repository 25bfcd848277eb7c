"""What the gateway's addons share: the current config, live calls, the upstream client
and the exporters. `addons/gateway.py` creates one and hands it to every addon."""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from typing import Any

import providers
from addons.calls import Calls
from addons.config.model import GatewayConfig
from addons.credentials import Credentials
from addons.exporting import Exporters
from addons.policies._counters import retire_unused
from addons.upstream import Upstream
from exporters.metrics import Metrics


class Gateway:
    def __init__(self) -> None:
        self.config: GatewayConfig | None = None
        self.calls = Calls()
        self.upstream = Upstream()
        self.credentials = Credentials()
        self.exporters = Exporters()
        self.metrics = Metrics(stats_source=self.exporters.stats)
        # the limit plugins' counters, by store (addons/policies/_counters.py counters()),
        # and those a reload retired, until they are closed
        self.counters: dict[Any, Any] = {}
        self.counters_closing: dict[Any, Any] = {}

    def apply(self, config: GatewayConfig) -> None:
        """Swap in a new config; calls in flight keep the one they started with."""
        self.exporters.reconcile(config)
        models = [
            p.config.model.name
            for p in config.all_plugins()
            if p.name == "ai-proxy" and p.config.model.name
        ]
        self.metrics.set_config(routes=len(config.routes), models=models, source=config.source)
        self.config = config
        retire_unused(self, config)  # the Redis pools of limits the new config dropped
        warm_imports(config)


def warm_imports(config: GatewayConfig) -> None:
    """Import the SDK modules the config's providers need (botocore's signer, say:
    a third of a second) in a thread now, not on the event loop at their first call."""
    modules = {
        module
        for p in config.all_plugins()
        if p.name == "ai-proxy"
        for module in providers.get(p.config.model.provider).warm_imports
        if module not in sys.modules
    }
    if modules:
        threading.Thread(target=_import_all, args=(sorted(modules),), daemon=True).start()


def _import_all(modules: list[str]) -> None:
    for module in modules:
        with contextlib.suppress(ImportError):  # the call then says which extra to install
            importlib.import_module(module)
