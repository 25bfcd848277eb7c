"""The config file: a subset of Kong's declarative (decK) format.

`services` (each with nested `routes` and `plugins`), top-level `routes` and `plugins`
that name their service or route, and `_format_version`. Models here describe the
file; `addons.config.model` holds the compiled form the gateway runs on.
"""

from __future__ import annotations

import functools
import operator
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from addons.config.plugins import PLUGIN_CONFIGS
from addons.routing import path_regex
from providers.options import Strict

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


class PluginCommon(Strict):
    enabled: bool = True
    instance_name: str | None = None
    tags: list[str] = Field(default_factory=list)
    protocols: list[Literal["http", "https", "grpc", "grpcs"]] | None = None
    # Only for top-level plugins: the scope they attach to (by name).
    service: str | None = None
    route: str | None = None
    # Only for top-level plugins: the consumer they apply to (username or custom_id),
    # alone or with a route or service (Kong's consumer scopes).
    consumer: str | None = None


def _plugin_entry(name: str, config: type[Strict]) -> type[PluginCommon]:
    # As in Kong, `config` may be left out when every field has a default
    # (`- name: key-auth`); it is required when some field is.
    try:
        config()
        default: Any = Field(default_factory=config)
    except ValidationError:  # a required field, or a check the defaults do not pass
        default = ...
    return create_model(
        f"Plugin_{name.replace('-', '_')}",
        __base__=PluginCommon,
        name=(Literal[name], ...),  # type: ignore[valid-type]
        config=(config, default),
    )


_ENTRIES = tuple(_plugin_entry(n, c) for n, c in PLUGIN_CONFIGS.items())
# One model per plugin, told apart by `name` (so an unknown name is one clear error).
PluginEntry = Annotated[functools.reduce(operator.or_, _ENTRIES), Field(discriminator="name")]


def _check_path(path: str) -> str:
    if path.startswith("~"):
        try:
            path_regex(path)
        except re.error as e:
            raise ValueError(f"invalid regex path {path!r}: {e}") from None
    elif not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/' (or '~' for a regex)")
    return path


class RouteFile(Strict):
    name: str | None = None
    paths: list[Annotated[str, AfterValidator(_check_path)]] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    headers: dict[str, list[str]] = Field(default_factory=dict)
    strip_path: bool = True
    preserve_host: bool = False
    regex_priority: int = 0
    protocols: list[Literal["http", "https"]] = Field(default_factory=lambda: ["http", "https"])
    tags: list[str] = Field(default_factory=list)
    plugins: list[PluginEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    # Only for top-level routes: the service they belong to.
    service: str | dict[str, str] | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str]) -> list[str]:
        upper = [m.upper() for m in methods]
        for m in upper:
            if m not in HTTP_METHODS:
                raise ValueError(f"unknown HTTP method {m!r}")
        return upper

    @model_validator(mode="after")
    def _something_to_match(self) -> RouteFile:
        if not (self.paths or self.hosts or self.methods or self.headers):
            raise ValueError("a route needs at least one of paths, hosts, methods, headers")
        return self


class ServiceFile(Strict):
    name: str | None = None
    url: str | None = None
    protocol: Literal["http", "https"] | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    path: str | None = None
    connect_timeout: int = Field(60_000, gt=0, description="Upstream connect timeout (ms).")
    write_timeout: int = Field(60_000, gt=0, description="Upstream write timeout (ms).")
    read_timeout: int = Field(
        60_000, gt=0, description="Longest wait for upstream bytes (ms); exceeding it is a 504."
    )
    retries: int = Field(5, ge=0)
    enabled: bool = True
    tags: list[str] = Field(default_factory=list)
    routes: list[RouteFile] = Field(default_factory=list)
    plugins: list[PluginEntry] = Field(default_factory=list)  # type: ignore[valid-type]

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/]+", url):
            raise ValueError(f"url {url!r} must be an http:// or https:// URL")
        return url


class KeyAuthCredential(Strict):
    """A key-auth credential of a consumer (Kong's `keyauth_credentials`)."""

    key: str = Field(min_length=1, description="The key (use a {vault://env/NAME} reference).")
    id: str | None = None
    tags: list[str] = Field(default_factory=list)
    ttl: int | None = Field(None, ge=0, description="Accepted for Kong files; not enforced.")


class ConsumerFile(Strict):
    """A consumer: who a client is, once key-auth has recognised its key."""

    username: str | None = None
    custom_id: str | None = None
    id: str | None = None
    tags: list[str] = Field(default_factory=list)
    keyauth_credentials: list[KeyAuthCredential] = Field(default_factory=list)
    plugins: list[PluginEntry] = Field(default_factory=list)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _named(self) -> ConsumerFile:
        if not (self.username or self.custom_id):
            raise ValueError("a consumer needs a username or a custom_id")
        return self


class ConfigFile(Strict):
    """An llmitm config file (Kong declarative format subset)."""

    format_version: Literal["1.1", "2.1", "3.0"] = Field("3.0", alias="_format_version")
    transform: bool | None = Field(None, alias="_transform")
    services: list[ServiceFile] = Field(default_factory=list)
    routes: list[RouteFile] = Field(default_factory=list)
    plugins: list[PluginEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    consumers: list[ConsumerFile] = Field(default_factory=list)

    model_config = Strict.model_config | {"populate_by_name": True}

    @field_validator("format_version", mode="before")
    @classmethod
    def _version_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors (shipped in configs/)."""
    schema = ConfigFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llmitm config"
    return schema
