"""The `llmitm_config` option: load the config file, and reload it when it changes.

A bad file at startup is logged as an error, which makes mitmdump exit with status 1
(its startup error check). A bad edit while running is logged and the last good config
keeps serving; flows in flight finish on the config they started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

from mitmproxy import ctx, exceptions
from mitmproxy.utils.asyncio_utils import create_task

from addons.config import ConfigError, load_file
from addons.state import Gateway

log = logging.getLogger("llmitm")

POLL_SECONDS = 1.0


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


#: the gateway's list options (`Sequence[str]`): `--set NAME=a --set NAME=b` gives both
#: values, as for mitmproxy's own list options. (They are checked here, when the
#: gateway's first addon loads, before the addons that declare them have: a unit test
#: keeps this set in step with the options the chain declares.)
LIST_OPTIONS = frozenset({"llmitm_observe_hosts", "llmitm_observe_prices"})


def _takes_a_list(name: str) -> bool:
    if name in LIST_OPTIONS:
        return True
    try:
        option = ctx.options._options.get(name)
    except AttributeError:
        return False
    return option is not None and option.typespec == Sequence[str]


def _refuse_repeated_options() -> None:
    """mitmproxy cannot apply a script's single-value option given twice (`--set
    llmitm_config=a --set llmitm_config=b`): it then drops every option of the script,
    and the gateway would run with no config and say nothing. Say it, as a startup
    error (exit 1). List options are meant to be repeated."""
    for name, value in ctx.options.deferred.items():
        values = getattr(value, "val", None)
        if (
            name.startswith("llmitm_")
            and isinstance(values, list)
            and len(values) > 1
            and not _takes_a_list(name)
        ):
            log.error(
                "llmitm: --set %s is given %d times (%s): give it once",
                name,
                len(values),
                ", ".join(values),
            )


def refuse_unparsable_options() -> None:
    """A value mitmproxy cannot parse for a script's option (`--set
    llmitm_shutdown_grace=soon`, `--set llmitm_observe=maybe`) makes it drop every option
    of the script as silently as a repeated one. Say which, as a startup error (exit 1).
    Called once the whole chain has declared its options (the chain's last part loads);
    repeated values are `_refuse_repeated_options`'s."""
    for name, value in ctx.options.deferred.items():
        values = getattr(value, "val", None)
        option = ctx.options._options.get(name)
        if not name.startswith("llmitm_") or option is None or not isinstance(values, list):
            continue
        if len(values) > 1 and option.typespec != Sequence[str]:
            continue
        try:
            ctx.options._parse_setval(option, values)
        except exceptions.OptionsError as e:
            log.error("llmitm: --set %s=%s: %s", name, values[-1], e)


class ConfigWatch:
    name = "llmitm-config"

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.path = ""
        self._stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def load(self, loader) -> None:
        loader.add_option(
            "llmitm_config", str, "", "Path of the llmitm gateway config file (YAML)."
        )
        loader.add_option(
            "llmitm_config_reload", bool, True, "Reload the config file when it changes."
        )
        loader.add_option(
            "llmitm_spool_dir",
            str,
            "~/.llmitm/spool",
            "Where exporters keep the records a sink could not take yet (replayed later).",
        )
        loader.add_option(
            "llmitm_status_listen",
            str,
            "127.0.0.1:8100",
            "Status listener (/metrics, /status, /health): host:port, or off.",
        )
        loader.add_option(
            "llmitm_store",
            str,
            "~/.llmitm/llmitm.db",
            "The embedded SQLite store every call record is written to (empty: none).",
        )
        loader.add_option(
            "llmitm_shutdown_grace",
            int,
            10,
            "Seconds the calls in flight get to finish when the gateway stops (no new "
            "connection is taken meanwhile); those still running then are recorded as "
            "cut off by the shutdown.",
        )
        _refuse_repeated_options()

    def configure(self, updated: set[str]) -> None:
        if "llmitm_status_listen" in updated and self._running:
            create_task(self._listen(), name="llmitm status listener", keep_ref=True)
        if "llmitm_spool_dir" in updated or "llmitm_store" in updated:
            self.gw.exporters.set_paths(
                spool_dir=os.path.expanduser(ctx.options.llmitm_spool_dir),
                store=os.path.expanduser(ctx.options.llmitm_store),
            )
        if "keep_host_header" in ctx.options and not ctx.options.keep_host_header:
            # Routes match on the client's Host; reverse mode would otherwise replace it
            # with the placeholder target, which ai-proxy routes never contact.
            ctx.options.keep_host_header = True
        if "llmitm_config" not in updated:
            return
        path = ctx.options.llmitm_config
        self.path = path
        if not path:
            log.warning("llmitm: no config (set --set llmitm_config=FILE); no routes are served")
            return
        if self._running:
            # Changed from mitmweb's options while running: load off the event loop.
            create_task(self._reload(force=True), name="llmitm config reload", keep_ref=True)
            return
        try:
            config = load_file(path)
        except ConfigError as e:
            if self.gw.config is None:
                log.error("llmitm: %s", e)
                return
            raise exceptions.OptionsError(str(e)) from None
        self._stamp = _stamp(path)
        self.gw.apply(config)
        log.info("llmitm: loaded %s (%d routes)", path, len(config.routes))

    def running(self) -> None:
        self._running = True
        create_task(self._listen(), name="llmitm status listener", keep_ref=True)
        if ctx.options.llmitm_config_reload and self._task is None:
            self._task = create_task(self._watch(), name="llmitm config watch", keep_ref=True)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _listen(self) -> None:
        from exporters.metrics import parse_listen

        await self.gw.metrics.stop()
        address = parse_listen(ctx.options.llmitm_status_listen)
        if address is None:
            return
        try:
            await self.gw.metrics.start(*address)
        except OSError as e:  # another gateway has the port, say: serve calls anyway
            log.warning("llmitm: no status listener on %s:%d: %s", *address, e)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if self.path and _stamp(self.path) != self._stamp:
                await self._reload()

    async def _reload(self, force: bool = False) -> None:
        path = self.path
        stamp = _stamp(path)
        if not force and stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            config = await asyncio.to_thread(load_file, path)
        except ConfigError as e:
            log.error("llmitm: keeping the last good config: %s", e)
            return
        self.gw.apply(config)
        log.info("llmitm: reloaded %s (%d routes)", path, len(config.routes))
