"""addons/dispatch.py: the gateway's addons behind one mitmproxy addon, with
mitmproxy's own semantics for order, async hooks and errors."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.proxy import layers  # noqa: F401  (registers the flow events in all_hooks)
from mitmproxy.test import taddons, tflow

from addons.dispatch import HOOKS, Chain


class Part:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    def request(self, flow: object) -> None:
        self.seen.append(self.name)


class AsyncPart(Part):
    async def request(self, flow: object) -> None:
        await asyncio.sleep(0)
        self.seen.append(self.name)


class Failing(Part):
    def request(self, flow: object) -> None:
        self.seen.append(self.name)
        raise ValueError("broken part")


async def _call(chain: Chain, hook: str, *args: object) -> None:
    result = getattr(chain, hook)(*args)
    if result is not None:
        await result


async def test_parts_run_in_order_sync_and_async_mixed() -> None:
    seen: list[str] = []
    chain = Chain([Part("a", seen), AsyncPart("b", seen), Part("c", seen), AsyncPart("d", seen)])
    await _call(chain, "request", tflow.tflow())
    assert seen == ["a", "b", "c", "d"]


async def test_all_sync_parts_need_no_coroutine() -> None:
    seen: list[str] = []
    chain = Chain([Part("a", seen), Part("b", seen)])
    assert chain.request(tflow.tflow()) is None
    assert seen == ["a", "b"]


async def test_a_failing_part_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    chain = Chain([Failing("a", seen), Part("b", seen), AsyncPart("c", seen), Failing("d", seen)])
    with caplog.at_level(logging.ERROR):
        await _call(chain, "request", tflow.tflow())
    assert seen == ["a", "b", "c", "d"]
    assert [r.getMessage() for r in caplog.records] == ["Addon error: broken part"] * 2


async def test_addon_halt_stops_the_event() -> None:
    seen: list[str] = []

    class Halting(Part):
        def request(self, flow: object) -> None:
            raise exceptions.AddonHalt

    chain = Chain([Part("a", seen), Halting("h", seen), Part("b", seen)])
    with pytest.raises(exceptions.AddonHalt):
        await _call(chain, "request", tflow.tflow())
    assert seen == ["a"]


def test_a_hook_no_part_has_is_not_an_attribute() -> None:
    """mitmproxy then skips the addon for that event altogether."""
    chain = Chain([Part("a", [])])
    assert not hasattr(chain, "response") and not hasattr(chain, "error")


def test_every_event_a_gateway_part_implements_is_dispatched() -> None:
    from addons import gateway

    (chain,) = gateway.addons
    assert isinstance(chain, Chain) and len(chain.parts) >= 8
    implemented = {name for part in chain.parts for name in dir(part) if name in hooks.all_hooks}
    assert implemented <= set(HOOKS), implemented - set(HOOKS)
    for name in implemented:
        assert hasattr(chain, name)


async def test_options_of_the_parts_are_registered_and_configured_through_the_chain() -> None:
    from addons.config_watch import ConfigWatch
    from addons.state import Gateway
    from tests.unit.conftest import CONFIGS

    gw = Gateway()
    chain = Chain([ConfigWatch(gw)])
    with taddons.context(chain) as tctx:
        assert "llmitm_config" in tctx.options
        tctx.configure(chain, llmitm_config=str(CONFIGS / "quickstart.yaml"))
        assert gw.config is not None and gw.config.routes
