"""PolicyChain's late hooks (`request_late`, `response_late`, ...): they run after every
policy's own hook of the event, in reverse order, only for the call's plugins, and a
late request hook that fails refuses the request as any other does. The real chain uses
them: the ai-sanitizer restores the originals after the ai-response-transformer, and
the token limit tops its reservation up after the prompt plugins."""

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


class Noting:
    """A policy that notes its hooks (`late`: it has late ones too)."""

    def __init__(self, plugin: str, seen: list[str], late: bool = True) -> None:
        self.plugin = plugin
        self.seen = seen
        if late:
            self.request_late = lambda flow: self.seen.append(f"{plugin} late")
            self.response_late = self.request_late

    def request(self, flow: Any) -> None:
        self.seen.append(plugin_of(self))

    def response(self, flow: Any) -> Any:
        async def later() -> None:
            await asyncio.sleep(0)
            self.seen.append(plugin_of(self))

        return later()


def plugin_of(p: Noting) -> str:
    return p.plugin


class BrokenLate(Noting):
    def __init__(self, plugin: str, seen: list[str]) -> None:
        super().__init__(plugin, seen, late=False)

    def request_late(self, flow: Any) -> None:
        raise RuntimeError("a bug")


def chain_for(*items: Any, plugins: tuple[str, ...]) -> tuple[PolicyChain, Any]:
    calls = Calls()
    flow = tflow.tflow()
    call = SimpleNamespace(plugins=dict.fromkeys(plugins, object()), error=None)
    call.fail = lambda err, source: setattr(call, "error", (err, source))
    calls.put(flow, call)  # type: ignore[arg-type]
    flow.call = call
    return PolicyChain(SimpleNamespace(calls=calls), list(items)), flow


async def run(result: Any) -> None:
    if result is not None and inspect.isawaitable(result):
        await result


async def test_late_hooks_run_after_every_policy_in_reverse_order() -> None:
    seen: list[str] = []
    chain, flow = chain_for(
        Noting("a", seen),
        Noting("b", seen, late=False),
        Noting("off", seen),  # not configured for the call: none of its hooks run
        Noting("c", seen),
        plugins=("a", "b", "c"),
    )
    await run(chain.request(flow))
    assert seen == ["a", "b", "c", "c late", "a late"]
    seen.clear()
    await run(chain.response(flow))  # async hooks before them: the late ones still wait
    assert seen == ["a", "b", "c", "c late", "a late"]


async def test_a_failing_late_request_hook_refuses_the_request() -> None:
    seen: list[str] = []
    chain, flow = chain_for(
        BrokenLate("limit", seen), Noting("guard", seen), plugins=("limit", "guard")
    )
    await run(chain.request(flow))
    assert seen == ["limit", "guard", "guard late"]
    assert flow.response is not None and flow.response.status_code == 500
    assert "limit" in json.loads(flow.response.content)["error"]["message"]


def test_the_real_chain_orders_the_late_hooks() -> None:
    [chain] = policies.addons(SimpleNamespace(calls=Calls()))
    late_request = [p for p, m in chain._hooks["request"] if m.__name__ == "request_late"]
    assert late_request == ["ai-rate-limiting-advanced"]
    response = [(p, m.__name__) for p, m in chain._hooks["response"]]
    # the sanitizer restores the originals after the response transformer has run
    assert response.index(("ai-response-transformer", "response")) < response.index(
        ("ai-sanitizer", "response_late")
    )
    # and masks the answer's own findings before it
    assert response.index(("ai-sanitizer", "response")) < response.index(
        ("ai-response-transformer", "response")
    )
    headers = [(p, m.__name__) for p, m in chain._hooks["responseheaders"]]
    assert headers[-1] == ("ai-sanitizer", "responseheaders_late")  # its stream filter last
