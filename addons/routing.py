"""Route matching with Kong's semantics (pure: the addon is `addons.router`).

Paths are prefixes unless they start with `~` (a regex anchored at the start of the
path; named groups become `$(uri_captures.NAME)`). When several routes match, Kong's
priority decides: more matching fields first, then plain hosts over wildcards, then
more headers, then regex paths (by `regex_priority`) over prefixes, then the longest
prefix, then the order of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a runtime import would be circular: addons.config imports this module
    from addons.config.model import Route

# Kong (PCRE) writes named groups `(?<name>...)`; Python's re wants `(?P<name>...)`.
_KONG_GROUP = re.compile(r"\(\?<(?=[A-Za-z_])")


def path_regex(path: str) -> re.Pattern[str]:
    """The compiled regex of a `~` path (Kong's syntax, named groups included)."""
    return re.compile(_KONG_GROUP.sub("(?P<", path[1:]))


@dataclass(slots=True)
class Match:
    route: Route
    captures: dict[str, str]
    # The path the upstream gets when the route strips its matched prefix (no query).
    upstream_path: str


@dataclass(slots=True)
class _Entry:
    route: Route
    prefix: str | None
    regex: re.Pattern[str] | None
    order: tuple[Any, ...]


def _host_pattern(host: str) -> tuple[str, re.Pattern[str] | None, bool]:
    """(exact host, wildcard regex, whether the pattern names a port)."""
    host = host.lower()
    has_port = bool(re.search(r":\d+$", host))
    if "*" in host:
        rx = re.escape(host).replace(r"\*", r".+")
        return host, re.compile(rx + ("" if has_port else r"(?::\d+)?") + "$"), has_port
    return host, None, has_port


class RouteTable:
    """All routes of a config, ordered by Kong's priority."""

    def __init__(self, routes: list[Route]) -> None:
        entries: list[tuple[tuple[Any, ...], int, _Entry]] = []
        self._hosts: dict[int, list[tuple[str, re.Pattern[str] | None, bool]]] = {}
        for index, route in enumerate(routes):
            weight = sum(bool(x) for x in (route.methods, route.hosts, route.headers, route.paths))
            plain_hosts = bool(route.hosts) and all("*" not in h for h in route.hosts)
            self._hosts[id(route)] = [_host_pattern(h) for h in route.hosts]
            for path in route.paths or [None]:
                if path is None:
                    order = (weight, plain_hosts, len(route.headers), False, 0, 0)
                    entry = _Entry(route, None, None, order)
                elif path.startswith("~"):
                    order = (weight, plain_hosts, len(route.headers), True, route.regex_priority, 0)
                    entry = _Entry(route, None, path_regex(path), order)
                else:
                    order = (weight, plain_hosts, len(route.headers), False, 0, len(path))
                    entry = _Entry(route, path, None, order)
                entries.append((order, index, entry))
        # Highest priority first; the file's order breaks ties.
        entries.sort(key=lambda e: (tuple(-int(x) for x in e[0]), e[1]))
        self._entries = [e for _, _, e in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, method: str, host: str, path: str, headers: Any) -> Match | None:
        """The best route for a request, or None. `headers` is a case-insensitive mapping."""
        path = path.split("?", 1)[0] or "/"
        host = host.lower()
        for e in self._entries:
            route = e.route
            if route.methods and method.upper() not in route.methods:
                continue
            if route.hosts and not self._host_ok(route, host):
                continue
            if route.headers and not _headers_ok(route.headers, headers):
                continue
            if e.prefix is not None:
                if not path.startswith(e.prefix):
                    continue
                rest = path[len(e.prefix) :] if route.strip_path else path
                return Match(route, {}, rest if rest.startswith("/") else "/" + rest)
            if e.regex is not None:
                m = e.regex.match(path)
                if not m:
                    continue
                rest = path[m.end() :] if route.strip_path else path
                captures = {k: v for k, v in m.groupdict().items() if v is not None}
                return Match(route, captures, rest if rest.startswith("/") else "/" + rest)
            return Match(route, {}, path)
        return None

    def _host_ok(self, route: Route, host: str) -> bool:
        bare = host.rsplit(":", 1)[0] if re.search(r":\d+$", host) else host
        for exact, rx, has_port in self._hosts[id(route)]:
            candidate = host if has_port else bare
            if rx is not None:
                if rx.match(candidate if has_port else bare):
                    return True
            elif candidate == exact:
                return True
        return False


def _headers_ok(wanted: dict[str, list[str]], headers: Any) -> bool:
    for name, values in wanted.items():
        got = headers.get(name)
        if got is None:
            return False
        got_l = got.lower()
        for v in values:
            if v.startswith("~*"):
                if re.search(v[2:], got, re.IGNORECASE):  # unanchored, as in Kong
                    break
            elif v.lower() == got_l:
                break
        else:
            return False
    return True
