"""The gateway's addons, seen by mitmproxy as one.

mitmproxy calls every event on every addon of its chain, children of a script
included: for each addon it walks the tree, looks the hook up and, where there is one,
rebuilds the event's arguments. A dozen addons of ours cost that a dozen times for
each of a flow's events, most of them for hooks the addon does not have. `Chain` is
the one addon mitmproxy sees: it looks each hook up once, at start, in every part,
and calls only the parts that have it, in the chain's order, with the arguments
mitmproxy gave it.

The semantics stay mitmproxy's: parts run in order; a part's hook may be sync or
async, and the parts after an async one run once it is done; an exception in one part
is logged as mitmproxy logs an addon error and the next part still runs, while
AddonHalt (stop the event) and OptionsError (a bad option) propagate as they would
from an addon of their own.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mitmproxy import exceptions

log = logging.getLogger("mitmproxy.addonmanager")

Handler = Callable[..., Any]

#: The mitmproxy events the gateway's parts may implement.
HOOKS = (
    "load",
    "configure",
    "running",
    "done",
    "requestheaders",
    "request",
    "responseheaders",
    "response",
    "error",
    "client_connected",
    "client_disconnected",
    "server_connect",
    "server_connected",
    "server_disconnected",
    "update",
)


class Chain:
    name = "llmitm"

    def __init__(self, parts: Sequence[object]) -> None:
        self.parts = list(parts)
        for hook in HOOKS:
            handlers = [h for p in self.parts if callable(h := getattr(p, hook, None))]
            if handlers:
                setattr(self, hook, _dispatcher(hook, handlers))


def _dispatcher(hook: str, handlers: list[Handler]) -> Callable[..., Awaitable[None] | None]:
    if len(handlers) == 1:
        only = handlers[0]

        def single(*args: Any) -> Awaitable[None] | None:
            try:
                result = only(*args)
            except (exceptions.AddonHalt, exceptions.OptionsError):
                raise
            except Exception as e:
                log.exception("Addon error: %s", e)
                return None
            if result is not None and inspect.isawaitable(result):
                return _guarded(result)
            return None

        single.__name__ = hook
        return single

    def run(*args: Any) -> Awaitable[None] | None:
        for i, handler in enumerate(handlers):
            try:
                result = handler(*args)
            except (exceptions.AddonHalt, exceptions.OptionsError):
                raise
            except Exception as e:
                log.exception("Addon error: %s", e)
                continue
            if result is not None and inspect.isawaitable(result):
                return _finish(result, handlers[i + 1 :], args)
        return None

    run.__name__ = hook
    return run


async def _guarded(pending: Awaitable[Any]) -> None:
    try:
        await pending
    except (exceptions.AddonHalt, exceptions.OptionsError):
        raise
    except Exception as e:
        log.exception("Addon error: %s", e)


async def _finish(pending: Awaitable[Any], rest: list[Handler], args: tuple[Any, ...]) -> None:
    """Await a part's pending hook, then run the parts after it, awaiting as needed."""
    await _guarded(pending)
    for handler in rest:
        try:
            result = handler(*args)
            if result is not None and inspect.isawaitable(result):
                await result
        except (exceptions.AddonHalt, exceptions.OptionsError):
            raise
        except Exception as e:
            log.exception("Addon error: %s", e)
