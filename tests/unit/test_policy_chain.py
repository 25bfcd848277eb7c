"""addons/policies PolicyChain: the policies' hooks run in order, only for the plugins of
the call (which key-auth may change midway), sync and async alike, and a policy that
raises before the upstream refuses the request instead of letting it through."""

from __future__ import annotations

import asyncio
import inspect
import json
from types import SimpleNamespace
from typing import Any

from mitmproxy.test import tflow

from addons import policies
from addons.calls import Calls
from addons.policies import PolicyChain


class Recorder:
    """A policy that notes when its hooks run."""

    def __init__(self, plugin: str, seen: list[str], *, is_async: bool = False) -> None:
        self.plugin = plugin
        self.seen = seen
        self.is_async = is_async

    def request(self, flow: Any) -> Any:
        if self.is_async:

            async def later() -> None:
                await asyncio.sleep(0)
                self.seen.append(self.plugin)

            return later()
        self.seen.append(self.plugin)
        return None


class Identify(Recorder):
    """Like key-auth: adds a plugin to the call while the chain runs."""

    def request(self, flow: Any) -> None:
        super().request(flow)
        flow.call.plugins = {**flow.call.plugins, "consumer-only": object()}


class Broken(Recorder):
    def request(self, flow: Any) -> None:
        raise RuntimeError("a bug")


def chain_for(*items: Any, plugins: tuple[str, ...]) -> tuple[PolicyChain, Any]:
    calls = Calls()
    gw = SimpleNamespace(calls=calls)
    flow = tflow.tflow()
    call = SimpleNamespace(plugins=dict.fromkeys(plugins, object()), error=None)
    call.fail = lambda err, source: setattr(call, "error", (err, source))
    calls.put(flow, call)  # type: ignore[arg-type]
    flow.call = call
    return PolicyChain(gw, list(items)), flow


async def run(chain: PolicyChain, flow: Any) -> None:
    result = chain.request(flow)
    if result is not None and inspect.isawaitable(result):
        await result


async def test_only_the_calls_plugins_run_in_order_sync_and_async() -> None:
    seen: list[str] = []
    chain, flow = chain_for(
        Recorder("a", seen),
        Recorder("not-configured", seen),
        Recorder("b", seen, is_async=True),
        Recorder("c", seen),
        plugins=("a", "b", "c"),
    )
    pending = chain.request(flow)
    assert pending is not None  # b is async: the rest waits for it
    assert seen == ["a"]
    await pending
    assert seen == ["a", "b", "c"]


async def test_all_sync_needs_no_coroutine() -> None:
    seen: list[str] = []
    chain, flow = chain_for(Recorder("a", seen), plugins=("a",))
    assert chain.request(flow) is None
    assert seen == ["a"]


async def test_a_plugin_the_consumer_brings_runs_after_key_auth() -> None:
    seen: list[str] = []
    chain, flow = chain_for(
        Identify("key-auth", seen), Recorder("consumer-only", seen), plugins=("key-auth",)
    )
    await run(chain, flow)
    assert seen == ["key-auth", "consumer-only"]


async def test_a_failing_policy_refuses_the_request() -> None:
    seen: list[str] = []
    chain, flow = chain_for(
        Broken("guard", seen), Recorder("after", seen), plugins=("guard", "after")
    )
    await run(chain, flow)
    assert flow.response is not None and flow.response.status_code == 500
    body = json.loads(flow.response.content)
    assert body["error"]["code"] == "plugin_error" and "guard" in body["error"]["message"]
    assert flow.call.error is not None and flow.call.error[1] == "gateway"


async def test_no_call_no_work() -> None:
    seen: list[str] = []
    chain = PolicyChain(SimpleNamespace(calls=Calls()), [Recorder("a", seen)])
    assert chain.request(tflow.tflow()) is None and seen == []


def test_the_real_chain_is_one_addon_in_kongs_order() -> None:
    gw = SimpleNamespace(calls=Calls())
    [chain] = policies.addons(gw)
    names = [p.plugin for p in chain.policies]
    assert names[:2] == ["cors", "key-auth"]
    order = ["key-auth", "rate-limiting", "ai-prompt-template", "ai-prompt-decorator"]
    assert [n for n in names if n in order] == order
    assert names.index("ai-prompt-guard") < names.index("ai-sanitizer")
