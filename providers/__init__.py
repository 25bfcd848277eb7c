"""Provider adapters: one module per upstream API format.

A module in this package that defines `PROVIDER` (a `providers.base.Provider`) is a
provider; adding one is adding a file. Nothing here imports mitmproxy or does I/O.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from providers.base import Provider


@cache
def registry() -> dict[str, Provider]:
    """Every provider by its config name."""
    found: dict[str, Provider] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        provider = getattr(module, "PROVIDER", None)
        if isinstance(provider, Provider):
            found[provider.name] = provider
        for extra in getattr(module, "PROVIDERS", ()):
            found[extra.name] = extra
    return dict(sorted(found.items()))


def get(name: str) -> Provider:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(registry())
        raise KeyError(f"unknown provider {name!r} (known: {known})") from None
