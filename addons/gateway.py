"""llmitm: an LLM gateway as a suite of mitmproxy addons.

    mitmdump -s addons/gateway.py --set llmitm_config=configs/quickstart.yaml \\
        --mode reverse:http://127.0.0.1:9@127.0.0.1:8000 --set connection_strategy=lazy

The chain, in the order its parts run for each flow (mitmproxy sees one addon,
`addons.dispatch.Chain`, which calls each part that has the hook):

    ConfigWatch   loads llmitm_config and reloads it on change
    Router        matches the route (Kong semantics); 404 when none in reverse mode
    PolicyChain   addons/policies/, in Kong's plugin order: cors, key-auth,
                  ip-restriction, request-size-limiting, rate-limiting,
                  ai-rate-limiting-advanced, the prompt plugins, ... (one addon
                  that runs only the policies configured for the call)
    AIProxy       ai-proxy routes: translate, call the provider, stream back
    ServiceProxy  other routes: proxy to the service url
    Observe       calls to known LLM API hosts that no route handles (forward mode),
                  recorded as route `observed`, and the LLM calls of routes without
                  ai-proxy, under the route's name; the traffic unchanged
    Recorder      one call record per call, to the route's log plugins
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path

from mitmproxy import ctx
from mitmproxy.utils.asyncio_utils import create_task

try:
    import addons.state
except ImportError:  # run from a checkout without installing: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons import policies
from addons.ai_proxy import AIProxy
from addons.config_watch import ConfigWatch, refuse_unparsable_options
from addons.contentview import ContentviewAddon
from addons.dispatch import Chain
from addons.observe import Observe
from addons.policies._counters import close_all as close_counters
from addons.recorder import Recorder, record_unfinished
from addons.router import Router, ServiceProxy
from addons.state import Gateway
from addons.webview import WebView
from exporters import _threads as export_threads


def chain(gateway: Gateway) -> list[object]:
    return [
        ConfigWatch(gateway),
        Router(gateway),
        *policies.addons(gateway),
        AIProxy(gateway),
        ServiceProxy(gateway),
        Observe(gateway),
        Recorder(gateway),
        WebView(gateway),
        ContentviewAddon(),
        Lifecycle(gateway),
    ]


class Lifecycle:
    """Starts the shared upstream client and, at shutdown, drains the exporters."""

    name = "llmitm-lifecycle"

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def load(self, loader) -> None:
        # the chain's last part: every llmitm_ option is declared by now
        refuse_unparsable_options()

    def running(self) -> None:
        create_task(self.gw.upstream.start(), name="llmitm upstream start", keep_ref=True)
        # What mitmproxy and the gateway imported (pydantic's validators, aiohttp, the
        # providers, the price tables) lives as long as the process: some 150,000
        # objects, twice bare mitmproxy's, which every full collection walked again
        # (50 ms each, every few seconds under load: 1-2 % of the CPU). Frozen once,
        # at start, before any traffic, they are left out of every collection.
        gc.collect()
        gc.freeze()

    def done(self):
        # At process shutdown mitmproxy awaits what `done` returns; when only this
        # script is unloaded (a reload), it cannot, so the flush runs as a task.
        try:
            shutting_down = ctx.master.should_exit.is_set()
            asyncio.get_running_loop()
        except (AttributeError, RuntimeError):
            return None
        if shutting_down:
            return self.close(exiting=True)
        create_task(self.close(exiting=False), name="llmitm close", keep_ref=True)
        return None

    async def close(self, exiting: bool) -> None:
        """At process exit, first the drain (`_drain`); then every step, whatever the
        one before did: a sink that fails to close must not keep the upstream client or
        the counters' connections open."""
        gw = self.gw
        if exiting:
            try:
                await self._drain()
            except Exception:
                logging.getLogger(__name__).exception("llmitm: could not drain the calls")
        steps = (
            ("status listener", gw.metrics.stop),
            ("exporters", gw.exporters.aclose),
            ("upstream client", gw.upstream.stop),
            ("limit counters", lambda: close_counters(gw)),
        )
        for what, step in steps:
            try:
                await step()
            except Exception:
                logging.getLogger(__name__).exception("llmitm: could not close the %s", what)
        try:
            gw.credentials.close()
        except Exception:
            logging.getLogger(__name__).exception("llmitm: could not close the credentials")
        if exiting:  # a reload keeps the pool for the new script's exporters
            export_threads.shutdown()

    async def _drain(self) -> None:
        """Stop taking connections, give the calls in flight `llmitm_shutdown_grace`
        seconds to finish (a stream to its end), then record those still running as cut
        off: a shutdown loses no record, not even of a call it interrupts."""
        gw = self.gw
        log = logging.getLogger(__name__)
        gw.metrics.draining = True
        master = getattr(ctx, "master", None)
        if master is not None and (proxyserver := master.addons.get("proxyserver")):
            await proxyserver.servers.update([])  # listeners close; connections stay
        if not len(gw.calls):
            return
        grace = max(0, ctx.options.llmitm_shutdown_grace)
        log.info(
            "llmitm: shutting down: %d call(s) in flight get up to %d s to finish "
            "(llmitm_shutdown_grace)",
            len(gw.calls),
            grace,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while len(gw.calls) and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        cut = record_unfinished(gw)
        if cut:
            log.warning(
                "llmitm: %d call(s) still in flight after %d s were cut off by the shutdown "
                "(recorded with error code gateway_shutdown)",
                cut,
                grace,
            )
        # the last answers' bytes: written by their connections' tasks, which asyncio
        # cancels once the hooks of `done` are over
        await asyncio.sleep(DRAIN_POLL)


#: seconds between two looks at the calls in flight while draining
DRAIN_POLL = 0.05


# httpx logs every request at INFO and httpcore each step at DEBUG; mitmproxy hands
# every log record to every addon, so at ~10 records per call this was the gateway's
# largest per-request cost. The gateway's own log lines say what matters.
for _name in ("httpx", "httpcore", "hpack", "aiohttp"):
    logging.getLogger(_name).setLevel(logging.WARNING)

gateway = Gateway()
# one addon for mitmproxy, dispatching to the parts above (addons/dispatch.py)
addons = [Chain(chain(gateway))]
