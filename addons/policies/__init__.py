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

mitmproxy sees one addon, `PolicyChain`, not one per policy: it calls every event on
every addon of its chain (a coroutine, two generators and a context manager each time),
which for a dozen policies cost 0.54 M instructions per call, configured or not
(README, Architecture).
The chain calls a policy's hook only when the policy's plugin runs for the call, in
Kong's order, and fails closed: a policy that raises during the request refuses the
request (500) instead of letting it through unchecked.

Late hooks: after every policy's `request` (`responseheaders`, `response`, ...) hook, the
chain calls the `request_late` (`responseheaders_late`, ...) hooks, in REVERSE order:
the policy that acted first on the way in acts last. What must see the request as the
other plugins left it (a token limit re-estimating the prompt the template and
decorator wrote, just before ai-proxy sends it), or must be the last to touch the
answer (the ai-sanitizer restoring the originals once every other plugin, the
ai-response-transformer's LLM included, has seen only placeholders), goes there.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

log = logging.getLogger("llmitm")

#: the per-flow hooks a policy may have, dispatched by PolicyChain
FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
#: the suffix of a hook's late variant (`request_late`): run after every policy's
#: `request`, in reverse order
LATE = "_late"
#: of those, the ones before the upstream: a failing policy there refuses the request
_REQUEST_HOOKS = frozenset({"requestheaders", "request"})
#: lifecycle hooks, passed to every policy that has them
LIFECYCLE_HOOKS = ("running", "done")


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


def addons(gateway: Any) -> list[object]:
    """The addons mitmproxy runs for the policies: one chain of all of them."""
    return [PolicyChain(gateway, [m.Policy(gateway) for m in modules()])]


Handler = tuple[str, Callable[[Any], Any]]


class PolicyChain:
    """Runs the policies' hooks for each flow, in order, skipping the policies whose
    plugin does not run for the flow's call."""

    name = "llmitm-policies"

    def __init__(self, gateway: Any, policies: list[Any]) -> None:
        self.gw = gateway
        self.policies = policies
        # each hook's handlers: the policies' own in order, then their late ones reversed
        self._hooks: dict[str, list[Handler]] = {
            hook: [(p.plugin, getattr(p, hook)) for p in policies if hasattr(p, hook)]
            + [
                (p.plugin, getattr(p, hook + LATE))
                for p in reversed(policies)
                if hasattr(p, hook + LATE)
            ]
            for hook in FLOW_HOOKS
        }

    def running(self) -> None:
        self._lifecycle("running")

    def done(self) -> None:
        self._lifecycle("done")

    def _lifecycle(self, hook: str) -> None:
        for p in self.policies:
            method = getattr(p, hook, None)
            if method is not None:
                method()

    def requestheaders(self, flow: Any) -> Awaitable[None] | None:
        return self._dispatch("requestheaders", flow)

    def request(self, flow: Any) -> Awaitable[None] | None:
        return self._dispatch("request", flow)

    def responseheaders(self, flow: Any) -> Awaitable[None] | None:
        return self._dispatch("responseheaders", flow)

    def response(self, flow: Any) -> Awaitable[None] | None:
        return self._dispatch("response", flow)

    def error(self, flow: Any) -> Awaitable[None] | None:
        return self._dispatch("error", flow)

    def _dispatch(self, hook: str, flow: Any) -> Awaitable[None] | None:
        """Synchronous while the policies are (most calls, most hooks); from the first
        one that returns an awaitable on, the rest run in a coroutine mitmproxy awaits."""
        call = self.gw.calls.get(flow)
        if call is None:
            return None
        handlers = self._hooks[hook]
        for i, (plugin, method) in enumerate(handlers):
            if plugin not in call.plugins:  # read each time: key-auth changes them
                continue
            try:
                result = method(flow)
            except Exception:  # noqa: BLE001 (logged by _failed, which fails closed)
                self._failed(hook, plugin, flow, call)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._continue(hook, flow, call, result, plugin, i + 1)
        return None

    async def _continue(
        self, hook: str, flow: Any, call: Any, pending: Awaitable[Any], plugin: str, start: int
    ) -> None:
        try:
            await pending
        except Exception:  # noqa: BLE001 (logged by _failed, which fails closed)
            self._failed(hook, plugin, flow, call)
        for name, method in self._hooks[hook][start:]:
            if name not in call.plugins:
                continue
            try:
                result = method(flow)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 (logged by _failed, which fails closed)
                self._failed(hook, name, flow, call)

    @staticmethod
    def _failed(hook: str, plugin: str, flow: Any, call: Any) -> None:
        log.exception("llmitm: plugin %s failed in %s", plugin, hook)
        if hook in _REQUEST_HOOKS and flow.response is None:
            from addons.policies.base import reply_error
            from providers.base import ProviderError

            err = ProviderError(
                500, f"internal gateway error in plugin {plugin}", "api_error", "plugin_error"
            )
            reply_error(flow, call, err)
