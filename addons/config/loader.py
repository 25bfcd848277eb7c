"""Read, validate and compile a config file.

Every problem is reported with the file, the line, the path in the document and what
was expected, all at once, so a user fixes a file in one pass. Secrets are referenced
as `{vault://env/NAME}` (Kong's syntax) and resolved here; their values never appear in
an error message.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from addons.config.model import Consumer, Credential, GatewayConfig, Plugin, Route, Service
from addons.config.plugins import CONSUMER_PLUGINS
from addons.config.schema import ConfigFile, RouteFile, ServiceFile
from addons.routing import RouteTable

_VAULT = re.compile(r"\{vault://([A-Za-z0-9_-]+)/([^}]+)\}")


class ConfigError(Exception):
    """A config that cannot be loaded; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"invalid config {self.problems[0]}"
        lines = "\n  ".join(self.problems)
        return f"invalid config {self.source} ({len(self.problems)} problems):\n  {lines}"


# ---------------------------------------------------------------------------- YAML


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The document and a map from each path in it to its line (1-based)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(source, [f"{source}: the file is empty"])
        lines: dict[tuple[Any, ...], int] = {}
        dupes: list[str] = []
        _index(node, (), lines, dupes, source)
        if dupes:
            raise ConfigError(source, dupes)
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, [f"{where}: not valid YAML: {problem}"]) from None
    finally:
        loader.dispose()
    return data, lines


def _index(node: Any, path: tuple[Any, ...], lines: dict, dupes: list[str], source: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dupes.append(
                    f"{source}:{key_node.start_mark.line + 1}: {_fmt(path + (key,))}: "
                    f"duplicate key {key!r}"
                )
            seen.add(key)
            _index(value_node, path + (key,), lines, dupes, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), lines, dupes, source)


def _fmt(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _line(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int | None:
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


# --------------------------------------------------------------------------- vault


def _vault_value(backend: str, ref: str) -> str | None:
    if backend != "env":
        raise LookupError(f"vault backend {backend!r} is not supported (use vault://env/NAME)")
    name, _, key = ref.partition("/")
    value = os.environ.get(name)
    if value is None:
        value = os.environ.get(name.upper().replace("-", "_"))
    if value is None or not key:
        return value
    try:
        return str(json.loads(value)[key])
    except (ValueError, KeyError, TypeError):
        raise LookupError(f"env var {name} holds no JSON object with key {key!r}") from None


def _resolve_vault(
    data: Any, path: tuple[Any, ...], secrets: set[str], problems: list[tuple[tuple, str]]
) -> Any:
    if isinstance(data, dict):
        return {k: _resolve_vault(v, path + (k,), secrets, problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_resolve_vault(v, path + (i,), secrets, problems) for i, v in enumerate(data)]
    if isinstance(data, str) and "{vault://" in data:

        def sub(m: re.Match[str]) -> str:
            try:
                value = _vault_value(m.group(1), m.group(2))
            except LookupError as e:
                problems.append((path, f"{m.group(0)}: {e}"))
                return ""
            if value is None:
                problems.append((path, f"{m.group(0)}: environment variable is not set"))
                return ""
            if value:
                secrets.add(value)
            return value

        resolved = _VAULT.sub(sub, data)
        if resolved != data and resolved:
            secrets.add(resolved)
        return resolved
    return data


# ---------------------------------------------------------------------- validation


def _clean_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The error location as a path in the document (pydantic adds union tags)."""
    out: list[Any] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and not isinstance(part, int) and part not in node:
            # a missing field, or a tag pydantic puts in the location of a union member
            if not _is_union_tag(node, part):
                out.append(part)
                node = None
        else:
            node = None
    return tuple(out)


def _is_union_tag(node: dict[str, Any], part: Any) -> bool:
    return node.get("name") == part or (isinstance(part, str) and part.startswith("function-"))


def _model_at(path: tuple[Any, ...], data: Any) -> type[BaseModel] | None:
    """The config model describing the mapping at `path`, to suggest field names."""
    from addons.config.plugins import PLUGIN_CONFIGS

    model: type[BaseModel] | None = ConfigFile
    node = data
    for part in path:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if part == "config" and isinstance(node, dict) and node.get("name") in PLUGIN_CONFIGS:
            model, node = PLUGIN_CONFIGS[node["name"]], node.get("config")
            continue
        if model is None:
            return None
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        model = _model_in(field.annotation)
        node = node.get(part) if isinstance(node, dict) else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The first config model inside a field's type (through list, Optional, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _message(err: dict[str, Any], data: Any, path: tuple[Any, ...], secrets: set[str]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        field = path[-1] if path else "?"
        model = _model_at(path[:-1], data)
        hint = ""
        if model is not None:
            names = [f.alias or n for n, f in model.model_fields.items()]
            close = difflib.get_close_matches(str(field), names, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)"
                if close
                else f" (expected one of: {', '.join(names)})"
            )
        return f"unknown field {field!r}{hint}"
    if kind == "union_tag_invalid":
        return f"unknown plugin {ctx.get('tag')!r} (expected one of: {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return "a plugin needs a 'name'"
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind in ("literal_error", "enum"):
        msg = f"expected {ctx.get('expected')}, got {_shown(err.get('input'), secrets)}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        msg = f"{msg[0].lower()}{msg[1:]}, got {_shown(err.get('input'), secrets)}"
    return msg


def _redact(message: str, secrets: set[str]) -> str:
    """`message` without any resolved vault value (validators may quote their input)."""
    for secret in sorted(secrets, key=len, reverse=True):
        for form in (secret, repr(secret)[1:-1]):
            if form:
                message = message.replace(form, "<vault value>")
    return message


def _shown(value: Any, secrets: set[str]) -> str:
    if isinstance(value, str) and (value in secrets or any(s in value for s in secrets if s)):
        return "a value from a vault reference"
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return repr(value)


# ------------------------------------------------------------------------- compile


def _service(svc: ServiceFile, index: int) -> Service:
    url = svc.url
    if url is None and svc.host:
        protocol = svc.protocol or "http"
        port = f":{svc.port}" if svc.port else ""
        url = f"{protocol}://{svc.host}{port}{svc.path or ''}"
    return Service(
        name=svc.name or f"service-{index}",
        url=url,
        connect_timeout=svc.connect_timeout / 1000,
        read_timeout=svc.read_timeout / 1000,
        write_timeout=svc.write_timeout / 1000,
        retries=svc.retries,
    )


class _Compiler:
    def __init__(self, source: str, doc: ConfigFile, lines: dict) -> None:
        self.source = source
        self.doc = doc
        self.lines = lines
        self.problems: list[str] = []
        self.services: dict[str, Any] = {}

    def problem(self, path: tuple[Any, ...], msg: str) -> None:
        line = _line(self.lines, path)
        where = f"{self.source}:{line}" if line else self.source
        self.problems.append(f"{where}: {_fmt(path)}: {msg}")

    def plugins(self, entries: list[Any], path: tuple[Any, ...], scope: str) -> dict[str, Plugin]:
        out: dict[str, Plugin] = {}
        for i, entry in enumerate(entries):
            if scope != "global" and (entry.route or entry.service or entry.consumer):
                self.problem(
                    path + (i,), "only top-level plugins name a route, service or consumer"
                )
            if scope.startswith("consumer:"):
                self.consumer_scoped(entry, path + (i,))
            if entry.name in out:
                self.problem(path + (i,), f"plugin {entry.name!r} is configured twice here")
            if entry.enabled:
                out[entry.name] = Plugin(entry.name, entry.config, scope)
        return out

    def consumer_scoped(self, entry: Any, path: tuple[Any, ...]) -> None:
        if entry.name not in CONSUMER_PLUGINS:
            allowed = ", ".join(sorted(CONSUMER_PLUGINS))
            self.problem(
                path + ("name",),
                f"plugin {entry.name!r} cannot be configured for a consumer (these can: {allowed})",
            )

    def consumers(
        self, routes: list[Route], services: dict[str, Any]
    ) -> tuple[list[Consumer], dict[str, Credential]]:
        """The consumers, their plugins (nested, and top-level ones naming them) and
        the key-auth keys."""
        out: list[Consumer] = []
        by_name: dict[str, Consumer] = {}
        credentials: dict[str, Credential] = {}
        for ci, c in enumerate(self.doc.consumers):
            path = ("consumers", ci)
            consumer = Consumer(username=c.username, custom_id=c.custom_id, id=c.id, tags=c.tags)
            for field_name in ("username", "custom_id", "id"):
                value = getattr(c, field_name)
                if value is None:
                    continue
                if by_name.get(value, consumer) is not consumer:
                    self.problem(path + (field_name,), f"consumer {value!r} is configured twice")
                by_name[value] = consumer
            consumer.plugins = self.plugins(
                c.plugins, path + ("plugins",), f"consumer:{consumer.name}"
            )
            for ki, cred in enumerate(c.keyauth_credentials):
                if cred.key in credentials:
                    self.problem(
                        path + ("keyauth_credentials", ki, "key"),
                        "this key is already another credential's (keys must be unique)",
                    )
                    continue
                credentials[cred.key] = Credential(cred.key, consumer, cred.id)
            out.append(consumer)
        route_names = {r.name for r in routes}
        for pi, entry in enumerate(self.doc.plugins):
            if not entry.consumer:
                continue
            path = ("plugins", pi)
            consumer = by_name.get(entry.consumer)
            if consumer is None:
                self.problem(path + ("consumer",), f"no consumer named {entry.consumer!r}")
                continue
            self.consumer_scoped(entry, path)
            if entry.route:
                if entry.route not in route_names:
                    self.problem(path + ("route",), f"no route named {entry.route!r}")
                target = consumer.route_plugins.setdefault(entry.route, {})
                scope = f"consumer:{consumer.name}+route:{entry.route}"
            elif entry.service:
                if entry.service not in services:
                    self.problem(path + ("service",), f"no service named {entry.service!r}")
                target = consumer.service_plugins.setdefault(entry.service, {})
                scope = f"consumer:{consumer.name}+service:{entry.service}"
            else:
                target = consumer.plugins
                scope = f"consumer:{consumer.name}"
            if entry.name in target:
                self.problem(path, f"plugin {entry.name!r} is configured twice for {scope}")
            if entry.enabled:
                target[entry.name] = Plugin(entry.name, entry.config, scope)
        return out, credentials

    def check_anonymous(self, consumers: list[Consumer]) -> None:
        """An auth plugin's `anonymous` must name a configured consumer (Kong finds out
        at request time, with a 500)."""
        names = {n for c in consumers for n in (c.username, c.custom_id, c.id) if n}
        doc = self.doc
        entries: list[tuple[tuple[Any, ...], Any]] = [
            (("plugins", i), e) for i, e in enumerate(doc.plugins)
        ]
        for si, svc in enumerate(doc.services):
            entries += [(("services", si, "plugins", i), e) for i, e in enumerate(svc.plugins)]
            for ri, r in enumerate(svc.routes):
                base = ("services", si, "routes", ri, "plugins")
                entries += [(base + (i,), e) for i, e in enumerate(r.plugins)]
        for ri, r in enumerate(doc.routes):
            entries += [(("routes", ri, "plugins", i), e) for i, e in enumerate(r.plugins)]
        for ci, c in enumerate(doc.consumers):
            entries += [(("consumers", ci, "plugins", i), e) for i, e in enumerate(c.plugins)]
        for path, entry in entries:
            anonymous = getattr(entry.config, "anonymous", None)
            if isinstance(anonymous, str) and anonymous and anonymous not in names:
                self.problem(
                    path + ("config", "anonymous"),
                    f"anonymous consumer {anonymous!r} is not configured",
                )

    def compile(self) -> tuple[list[Route], dict[str, Plugin]]:
        doc = self.doc
        services: dict[str, tuple[Service, dict[str, Plugin]]] = {}
        pending: list[tuple[RouteFile, tuple[Any, ...], str | None]] = []
        for si, svc_file in enumerate(doc.services):
            svc = _service(svc_file, si)
            if svc.name in services:
                self.problem(("services", si, "name"), f"service name {svc.name!r} is used twice")
            plugins = self.plugins(
                svc_file.plugins, ("services", si, "plugins"), f"service:{svc.name}"
            )
            services[svc.name] = (svc, plugins)
            for ri, r in enumerate(svc_file.routes):
                if r.service is not None:
                    self.problem(
                        ("services", si, "routes", ri, "service"),
                        "nested routes take their service from the enclosing one",
                    )
                pending.append((r, ("services", si, "routes", ri), svc.name))
        for ri, r in enumerate(doc.routes):
            ref = r.service["name"] if isinstance(r.service, dict) else r.service
            if isinstance(r.service, dict) and "name" not in r.service:
                self.problem(("routes", ri, "service"), "a service reference needs a 'name'")
            pending.append((r, ("routes", ri), ref))

        global_plugins: dict[str, Plugin] = {}
        attached: dict[str, dict[str, Plugin]] = {}  # "service:x"/"route:y" -> plugins
        for pi, entry in enumerate(doc.plugins):
            path = ("plugins", pi)
            if entry.consumer:
                continue  # see consumers()
            if entry.route and entry.service:
                self.problem(path, "a plugin attaches to a route or a service, not both")
            scope = (
                f"route:{entry.route}"
                if entry.route
                else f"service:{entry.service}"
                if entry.service
                else "global"
            )
            if scope == "global":
                target = global_plugins
            else:
                target = attached.setdefault(scope, {})
                if entry.service and entry.service not in services:
                    self.problem(path + ("service",), f"no service named {entry.service!r}")
            if entry.name in target:
                self.problem(path, f"plugin {entry.name!r} is configured twice for {scope}")
            if entry.enabled:
                target[entry.name] = Plugin(entry.name, entry.config, scope)

        routes: list[Route] = []
        names: set[str] = set()
        for r, path, svc_name in pending:
            svc_plugins: dict[str, Plugin] = {}
            svc: Service | None = None
            if svc_name is not None:
                if svc_name not in services:
                    self.problem(path + ("service",), f"no service named {svc_name!r}")
                else:
                    svc, svc_plugins = services[svc_name]
                    svc_plugins = {**svc_plugins, **attached.get(f"service:{svc_name}", {})}
            name = r.name or f"{svc_name or 'route'}-{len(routes)}"
            if name in names:
                self.problem(path + ("name",), f"route name {name!r} is used twice")
            names.add(name)
            own = self.plugins(r.plugins, path + ("plugins",), f"route:{name}")
            own = {**attached.get(f"route:{name}", {}), **own}
            effective = {**global_plugins, **svc_plugins, **own}
            route = Route(
                name=name,
                service=svc,
                paths=r.paths,
                hosts=r.hosts,
                methods=r.methods,
                headers=r.headers,
                strip_path=r.strip_path,
                preserve_host=r.preserve_host,
                regex_priority=r.regex_priority,
                plugins=effective,
            )
            if "ai-proxy" not in effective and (svc is None or not svc.url):
                self.problem(
                    path, "this route has no ai-proxy plugin and no service url to proxy to"
                )
            routes.append(route)
        self.services = services
        for scope in attached:
            kind, _, target_name = scope.partition(":")
            if kind == "route" and target_name not in names:
                idx = next(i for i, e in enumerate(doc.plugins) if e.route == target_name)
                self.problem(("plugins", idx, "route"), f"no route named {target_name!r}")
        return routes, global_plugins


# ---------------------------------------------------------------------------- API


def load_text(text: str, source: str = "<config>") -> GatewayConfig:
    """Parse, validate and compile a config; raises ConfigError listing every problem."""
    data, lines = _parse_yaml(text, source)
    if data is None:  # an empty document (`---`, `null`)
        raise ConfigError(source, [f"{source}: the file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{source}:1: the top level must be a mapping"])
    secrets: set[str] = set()
    vault_problems: list[tuple[tuple, str]] = []
    data = _resolve_vault(data, (), secrets, vault_problems)
    problems = [f"{source}:{_line(lines, p) or 1}: {_fmt(p)}: {m}" for p, m in vault_problems]
    if problems:
        raise ConfigError(source, problems)
    try:
        doc = ConfigFile.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            path = _clean_loc(data, tuple(err["loc"]))
            line = _line(lines, path)
            where = f"{source}:{line}" if line else source
            msg = _redact(_message(err, data, path, secrets), secrets)
            problems.append(f"{where}: {_fmt(path)}: {msg}")
        raise ConfigError(source, problems) from None
    compiler = _Compiler(source, doc, lines)
    routes, global_plugins = compiler.compile()
    consumers, credentials = compiler.consumers(routes, compiler.services)
    compiler.check_anonymous(consumers)
    if compiler.problems:
        raise ConfigError(source, [_redact(p, secrets) for p in compiler.problems])
    return GatewayConfig(
        source=source,
        routes=routes,
        global_plugins=global_plugins,
        table=RouteTable(routes),
        # consumers' keys are secrets too: redacted wherever they show up
        secrets=frozenset(secrets | set(credentials)),
        consumers=consumers,
        credentials=credentials,
    )


def load_file(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load a config file (blocking: call it off the event loop once running)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"{path}: cannot read the file: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        problem = f"{path}: cannot read the file: not UTF-8 ({e.reason})"
        raise ConfigError(str(path), [problem]) from None
    return load_text(text, str(path))
