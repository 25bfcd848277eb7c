"""Hands finished call records to the exporters: the route's log plugins, and the
embedded store.

Each log plugin instance owns one delivery: file-log a `Delivery` (queue, writer
thread), the HTTP sinks (opik-log, ai-tracing, opentelemetry, http-log) an
`HttpDelivery` (queue, batches, retries, disk spool). Every record also goes to the
embedded SQLite store (`llmitm_store`), which the traces CLI reads. On a config reload
an instance whose config did not change keeps its queue; removed ones are drained and
closed in the background. An HTTP sink's spool belongs to the plugin and its scope
(`opik-log@route:chat`), not to one config of it: when a reload changes the plugin's
config, the new instance takes over what the old one spooled once that one has closed.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path
from typing import Any

from addons.config.model import GatewayConfig, Plugin, Route
from addons.config.plugins import LOG_PLUGINS
from exporters.delivery import Delivery
from exporters.file import FileSink
from exporters.http_delivery import PARALLEL_SENDERS, HttpDelivery
from exporters.record import CallRecord

log = logging.getLogger(__name__)

#: HTTP sink plugins: plugin name -> module whose `from_config(config, key)` makes it
HTTP_SINKS = {
    "opik-log": "exporters.opik",
    "ai-tracing": "exporters.langfuse",
    "opentelemetry": "exporters.otlp",
    "http-log": "exporters.http_log",
}


def spool_name(plugin: Plugin) -> str:
    """The spool of a plugin instance: the same across edits of its config."""
    return f"{plugin.name}@{plugin.scope}"


def make_delivery(
    plugin: Plugin, spool_dir: Path, after: asyncio.Future[object] | None = None
) -> Delivery | HttpDelivery:
    if plugin.name == "file-log":
        # records wait up to 0.25 s to be written together: one hand-off to the writer
        # thread per batch (see exporters/file.py)
        return Delivery(FileSink(plugin.config.path, plugin.config.reopen), linger=0.25)
    module = HTTP_SINKS.get(plugin.name)
    if module is None:
        raise ValueError(f"no exporter for plugin {plugin.name!r}")
    sink = importlib.import_module(module).from_config(plugin.config, plugin.key)
    options = _queue_options(plugin.config)
    if getattr(sink, "linger", None) is not None:  # a sink's own flush delay (OTLP's)
        options["linger"] = sink.linger
    if sink.max_batch == 1:  # no batch to fill: each record goes at once
        options["linger"] = 0.0
    return HttpDelivery(sink, spool_dir, spool_name=spool_name(plugin), after=after, **options)


def _queue_options(config: Any) -> dict[str, Any]:
    """Kong's `queue` block (http-log, opentelemetry), where a plugin has one: every
    field but `max_batch_size`, which the sink reads itself."""
    queue = getattr(config, "queue", None)
    if queue is None:
        return {}
    out: dict[str, Any] = {}
    for ours, theirs in (
        ("capacity", "max_entries"),
        ("linger", "max_coalescing_delay"),
        ("initial_retry_delay", "initial_retry_delay"),
        ("max_retry_delay", "max_retry_delay"),
        ("max_bytes", "max_bytes"),
        ("max_retry_time", "max_retry_time"),
    ):
        value = getattr(queue, theirs, None)
        if value is not None:
            out[ours] = value
    if getattr(queue, "concurrency_limit", 1) == -1:
        out["senders"] = PARALLEL_SENDERS
    return out


class Exporters:
    def __init__(self) -> None:
        self.deliveries: dict[str, Delivery | HttpDelivery] = {}
        self.store: Delivery | None = None
        self.spool_dir = Path("~/.llmitm/spool").expanduser()
        self.store_path = ""
        self._closing: set[asyncio.Task[None]] = set()
        # deliveries still draining, by spool: a successor waits for its predecessor
        self._draining: dict[str, asyncio.Task[None]] = {}

    def set_paths(self, spool_dir: str, store: str) -> None:
        """Where the spool and the embedded store live (mitmproxy options)."""
        self.spool_dir = Path(spool_dir)
        if store != self.store_path:
            if self.store is not None:
                self._close_later(self.store)
                self.store = None
            self.store_path = store

    def _start_store(self) -> None:
        if self.store is not None or not self.store_path:
            return
        from exporters.sqlite import SqliteSink

        self.store = Delivery(SqliteSink(self.store_path), linger=0.25)
        self.store.start()

    def reconcile(self, config: GatewayConfig) -> None:
        """Start sinks the config adds, drain and stop those it removes."""
        wanted = {p.key: p for p in config.all_plugins() if p.name in LOG_PLUGINS}
        for key in list(self.deliveries):
            if key not in wanted:
                self._close_later(self.deliveries.pop(key))
        for key, plugin in wanted.items():
            if key not in self.deliveries:
                after = self._draining.get(spool_name(plugin))
                delivery = make_delivery(plugin, self.spool_dir, after)
                delivery.start()
                self.deliveries[key] = delivery
        self._start_store()

    def export(self, record: CallRecord, route: Route | None, config: GatewayConfig) -> None:
        plugins = route.plugins if route is not None else config.global_plugins
        for plugin in plugins.values():
            if plugin.name in LOG_PLUGINS:
                delivery = self.deliveries.get(plugin.key)
                if delivery is not None:
                    delivery.submit(record)
        if self.store is not None:
            self.store.submit(record)

    def stats(self) -> dict[str, Any]:
        """Each exporter's counters, by sink name (for /status and /metrics)."""
        out: dict[str, Any] = {}
        for delivery in [*self.deliveries.values(), *([self.store] if self.store else [])]:
            s = delivery.stats
            out[delivery.sink.name] = {
                "sent": s.sent,
                "retried": getattr(s, "retried", 0),
                "spooled": getattr(s, "spooled", 0),
                "dropped": s.dropped,
                "failed": getattr(s, "failed", 0),
                "refused": getattr(s, "refused_requests", 0),
                "misconfigured": int(getattr(s, "misconfigured", False)),
                "depth": delivery.depth,
            }
        return out

    def _close_later(self, delivery: Delivery | HttpDelivery) -> None:
        task = asyncio.get_running_loop().create_task(delivery.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if isinstance(delivery, HttpDelivery):
            name = delivery.spool_name
            self._draining[name] = task
            task.add_done_callback(
                lambda t: self._draining.pop(name, None) if self._draining.get(name) is t else None
            )

    async def aclose(self, timeout: float = 10.0) -> None:
        """Flush and close every exporter (in parallel, each within `timeout`). Never
        raises: one exporter's failure must not keep the others from closing."""
        deliveries = list(self.deliveries.values())
        if self.store is not None:
            deliveries.append(self.store)
            self.store = None
        self.deliveries.clear()
        results = await asyncio.gather(
            *(d.aclose(timeout) for d in deliveries), *self._closing, return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("llmitm: an exporter failed to close", exc_info=result)
