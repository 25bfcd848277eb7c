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
    # "global", "service:<name>", "route:<name>", "consumer:<name>",
    # "consumer:<name>+service:<name>" or "consumer:<name>+route:<name>"
    scope: str
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


@dataclass(eq=False, slots=True)
class Consumer:
    """A consumer of the config (Kong's), with the plugins configured for it.

    `plugins` apply to every route; `service_plugins` and `route_plugins` (by service
    or route name) only there. Kong's precedence, most specific first: consumer and
    route, consumer and service, consumer, route, service, global."""

    username: str | None
    custom_id: str | None
    id: str | None = None
    tags: list[str] = field(default_factory=list)
    plugins: dict[str, Plugin] = field(default_factory=dict, repr=False)
    service_plugins: dict[str, dict[str, Plugin]] = field(default_factory=dict, repr=False)
    route_plugins: dict[str, dict[str, Plugin]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """What records and metrics call it: the username, else the custom_id."""
        return self.username or self.custom_id or ""


@dataclass(eq=False, slots=True)
class Credential:
    """A key-auth key and whose it is (the key itself is a secret: never log it)."""

    key: str = field(repr=False)
    consumer: Consumer
    id: str | None = None


@dataclass(eq=False)
class GatewayConfig:
    source: str
    routes: list[Route]
    global_plugins: dict[str, Plugin]
    table: Any  # addons.routing.RouteTable over `routes`
    # Values resolved from {vault://...} references: never logged or recorded.
    secrets: frozenset[str] = frozenset()
    consumers: list[Consumer] = field(default_factory=list)
    # key-auth keys -> credential
    credentials: dict[str, Credential] = field(default_factory=dict, repr=False)
    _effective: dict[tuple[int, int], dict[str, Plugin]] = field(default_factory=dict, repr=False)

    def consumer(self, name: str) -> Consumer | None:
        """A consumer by username or custom_id (Kong's `anonymous` takes either)."""
        for c in self.consumers:
            if name in (c.username, c.custom_id, c.id):
                return c
        return None

    def plugins_for(self, route: Route | None, consumer: Consumer | None) -> dict[str, Plugin]:
        """The plugins that run for a request on `route` by `consumer`."""
        base = route.plugins if route is not None else self.global_plugins
        if consumer is None:
            return base
        cache_key = (id(route), id(consumer))
        found = self._effective.get(cache_key)
        if found is None:
            found = dict(base)
            found.update(consumer.plugins)
            if route is not None:
                if route.service is not None:
                    found.update(consumer.service_plugins.get(route.service.name, {}))
                found.update(consumer.route_plugins.get(route.name, {}))
            self._effective[cache_key] = found
        return found

    def all_plugins(self) -> list[Plugin]:
        """Every distinct plugin instance, once."""
        seen: dict[int, Plugin] = {}
        for p in self.global_plugins.values():
            seen[id(p)] = p
        for r in self.routes:
            for p in r.plugins.values():
                seen[id(p)] = p
        for c in self.consumers:
            for group in (c.plugins, *c.service_plugins.values(), *c.route_plugins.values()):
                for p in group.values():
                    seen[id(p)] = p
        return list(seen.values())
