"""The compiled config the gateway runs on: routes with their effective plugins.

Built once per load by `addons.config.loader`, then read-only: a reload builds a new
`GatewayConfig` and swaps it in, while flows in flight keep the one they started with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False, slots=True, repr=False)
class Plugin:
    """One configured plugin instance."""

    name: str
    config: Any  # the validated config model of this plugin
    scope: str  # "global", "service:<name>" or "route:<name>"
    # Identity across reloads: same plugin, scope and config means the same instance
    # (an exporter keeps its queue when an unrelated part of the file changes).
    key: str = field(init=False)

    def __post_init__(self) -> None:
        # a digest: the config may hold resolved secrets, the key must not
        digest = hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:16]
        self.key = f"{self.name}@{self.scope}#{digest}"

    def __repr__(self) -> str:  # never print the config: it may hold secrets
        return f"Plugin({self.name!r}, {self.scope!r})"


@dataclass(eq=False, slots=True)
class Service:
    name: str
    url: str | None  # where routes without ai-proxy are proxied to
    connect_timeout: float  # seconds
    read_timeout: float
    write_timeout: float
    retries: int


@dataclass(eq=False, slots=True)
class Route:
    name: str
    service: Service | None
    paths: list[str]
    hosts: list[str]
    methods: list[str]
    headers: dict[str, list[str]]
    strip_path: bool
    preserve_host: bool
    regex_priority: int
    # Effective plugins by name: route-level over service-level over global.
    plugins: dict[str, Plugin] = field(default_factory=dict, repr=False)

    def plugin(self, name: str) -> Any | None:
        """The config of plugin `name` on this route, if it runs here."""
        p = self.plugins.get(name)
        return p.config if p else None


@dataclass(eq=False)
class GatewayConfig:
    source: str
    routes: list[Route]
    global_plugins: dict[str, Plugin]
    table: Any  # addons.routing.RouteTable over `routes`
    # Values resolved from {vault://...} references: never logged or recorded.
    secrets: frozenset[str] = frozenset()

    def all_plugins(self) -> list[Plugin]:
        """Every distinct plugin instance, once."""
        seen: dict[int, Plugin] = {}
        for p in self.global_plugins.values():
            seen[id(p)] = p
        for r in self.routes:
            for p in r.plugins.values():
                seen[id(p)] = p
        return list(seen.values())
