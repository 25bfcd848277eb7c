"""Loading the gateway's config file (Kong's declarative format subset)."""

from addons.config.loader import ConfigError, load_file, load_text
from addons.config.model import GatewayConfig, Plugin, Route, Service

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "Plugin",
    "Route",
    "Service",
    "load_file",
    "load_text",
]
