"""Hands finished call records to the log plugins of their route (file-log, ...).

Each log plugin instance owns one `Delivery` (queue + worker task). On a config reload
an instance whose config did not change keeps its queue; removed ones are drained and
closed in the background.
"""

from __future__ import annotations

import asyncio
import logging

from addons.config.model import GatewayConfig, Plugin, Route
from addons.config.plugins import LOG_PLUGINS
from exporters.delivery import Delivery, Sink
from exporters.file import FileSink
from exporters.record import CallRecord

log = logging.getLogger(__name__)


def make_sink(plugin: Plugin) -> Sink:
    if plugin.name == "file-log":
        return FileSink(plugin.config.path, plugin.config.reopen)
    raise ValueError(f"no sink for plugin {plugin.name!r}")


class Exporters:
    def __init__(self) -> None:
        self.deliveries: dict[str, Delivery] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def reconcile(self, config: GatewayConfig) -> None:
        """Start sinks the config adds, drain and stop those it removes."""
        wanted = {p.key: p for p in config.all_plugins() if p.name in LOG_PLUGINS}
        for key in list(self.deliveries):
            if key not in wanted:
                self._close_later(self.deliveries.pop(key))
        for key, plugin in wanted.items():
            if key not in self.deliveries:
                # records wait up to 0.25 s to be written together: one hand-off to the
                # writer thread per batch (see exporters/file.py)
                delivery = Delivery(make_sink(plugin), linger=0.25)
                delivery.start()
                self.deliveries[key] = delivery

    def export(self, record: CallRecord, route: Route | None, config: GatewayConfig) -> None:
        plugins = route.plugins if route is not None else config.global_plugins
        for plugin in plugins.values():
            if plugin.name in LOG_PLUGINS:
                delivery = self.deliveries.get(plugin.key)
                if delivery is not None:
                    delivery.submit(record)

    def _close_later(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(delivery.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self, timeout: float = 10.0) -> None:
        deliveries = list(self.deliveries.values())
        self.deliveries.clear()
        await asyncio.gather(*(d.aclose(timeout) for d in deliveries), *self._closing)
