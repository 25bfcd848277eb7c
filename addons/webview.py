"""mitmweb for LLM traffic: a mark and a one-line comment per LLM call, and a cap on kept flows.

Every LLM flow (gateway calls and observed ones: both get a call record) is marked
with an emoji per outcome and gets a comment such as

    anthropic/claude-sonnet-4-5 · 1,204→311 tok · $0.0081 · TTFT 412 ms

(`~` before estimated token counts). mitmweb shows the comment in its `comment` column,
which is off by default: `web_columns` is a list option, so repeat `--set` once per
column (`--set web_columns=tls --set web_columns=icon ... --set web_columns=comment`), or
in mitmproxy's config.yaml: `web_columns: [tls, icon, path, method, status, size, time,
comment]`. A call still streaming is marked with an hourglass.

mitmweb keeps every flow until it is cleared; `--set llmitm_max_flows=N` removes the
oldest finished flows from the view beyond N, which drops mitmproxy's last reference to
them (mitmdump keeps no flows, so there the option does nothing).

Flows saved as they finish (`mitmdump -w FILE`, mitmproxy's `save_stream_file`) keep
their mark and comment: mitmproxy's writer saves a flow in its own `response` hook,
which runs after the gateway's, but the record (and so the comment) is built just after
the hooks, so that it adds nothing to the client's latency. While flows are being
saved, this addon's `response` and `error` hooks let that step run first (one turn of
the event loop, for LLM flows only).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions, hooks, http

if TYPE_CHECKING:
    from addons.state import Gateway
    from exporters.record import CallRecord

log = logging.getLogger("llmitm")

#: mitmweb renders these shortcodes (mitmproxy.utils.emoji); other strings show as 🔴
MARKS = {
    "ok": ":white_check_mark:",
    "error": ":x:",
    "client_aborted": ":no_entry:",
    "pending": ":hourglass:",
}
_OURS = frozenset(MARKS.values())


def comment_for(record: CallRecord) -> str:
    """The one-line summary of a call shown in mitmweb's comment column."""
    ai = record.ai
    parts: list[str] = []
    if ai is not None:
        model = ai.response_model or ai.request_model or "?"
        parts.append(f"{ai.provider}/{model}")
        u = ai.usage
        if u is not None:
            t = "~" if u.estimated else ""
            parts.append(f"{t}{u.prompt_tokens:,}→{t}{u.completion_tokens:,} tok")
        if ai.cost is not None:
            parts.append(_money(ai.cost))
        if ai.time_to_first_token_ms is not None and ai.stream:
            parts.append(f"TTFT {ai.time_to_first_token_ms:,.0f} ms")
    else:
        parts.append(record.route or record.request.get("uri", "?"))
    total = record.latencies.get("request")
    if total is not None and (ai is None or not ai.stream):
        parts.append(f"{total:,.0f} ms")
    if record.status == "client_aborted":
        parts.append("client aborted")
    elif record.status == "error":
        err = record.error or {}
        status = err.get("status") or record.response.get("status")
        what = err.get("type") or "error"
        msg = err.get("message")
        text = f"error {status} {what}" if status else f"error {what}"
        if isinstance(msg, str) and msg:
            text += f": {msg if len(msg) <= 80 else msg[:79] + '…'}"
        parts.append(text)
    return " · ".join(parts)


def _money(cost: float) -> str:
    """`$0.0081`; small costs keep two significant digits (`$0.000014`), never `1.4e-05`."""
    if cost <= 0:
        return "$0"
    if cost >= 0.0001:
        return f"${cost:,.4f}"
    digits = 4
    while cost < 10 ** -(digits - 1) and digits < 12:
        digits += 1
    return f"${cost:.{digits}f}"


def annotate(flow: http.HTTPFlow, record: CallRecord) -> None:
    """Mark and comment `flow` from its finished call record, and tell the views.

    Called by the recorder once the record is built (after the response hook, so the
    view must be told of the change). A mark the user set by hand is kept."""
    if flow.marked in ("", *_OURS):
        flow.marked = MARKS.get(record.status, MARKS["error"])
    flow.comment = comment_for(record)
    _push(flow)


def _push(flow: http.HTTPFlow) -> None:
    """Have mitmweb (or the console) redraw `flow`; nothing to do without a view."""
    try:
        master = ctx.master
    except AttributeError:
        return
    if master is None or master.addons.get("view") is None:
        return
    master.addons.trigger(hooks.UpdateHook([flow]))


class WebView:
    """The pending mark of LLM calls in flight, and the `llmitm_max_flows` cap."""

    name = "llmitm-webview"

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.max_flows = 0
        self.saving = False  # mitmproxy writes finished flows to a file (-w)

    def load(self, loader: Any) -> None:
        loader.add_option(
            "llmitm_max_flows",
            int,
            0,
            "Keep at most this many flows in mitmweb's (or the console's) view: the oldest "
            "finished flows beyond it are removed and freed. 0 keeps every flow.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llmitm_max_flows" in updated:
            value = ctx.options.llmitm_max_flows
            if value < 0:
                raise exceptions.OptionsError(
                    f"llmitm_max_flows must be 0 (no cap) or a positive number, got {value}"
                )
            self.max_flows = value
            self.trim()
        if "save_stream_file" in updated:
            self.saving = bool(getattr(ctx.options, "save_stream_file", None))

    # -- marks

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or call.provider is None or flow.marked:
            return
        if flow.response is not None and flow.response.stream:
            flow.marked = MARKS["pending"]
            _push(flow)  # mitmweb's view redraws a flow only on some hooks, not this one

    # -- the cap

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self.max_flows:
            self.trim()
        return self._annotated_before_saving(flow)

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self.max_flows:
            self.trim()
        return self._annotated_before_saving(flow)

    def _annotated_before_saving(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """While flows are saved as they finish, let the recorder annotate an LLM flow
        before mitmproxy's writer (a later addon) saves it: the recorder builds the
        record in a callback it scheduled in its own hook, which one turn of the event
        loop runs. (mitmproxy awaits what a hook returns; nothing for other flows.)"""
        meta = flow.metadata
        if not self.saving or (meta.get("llmitm.route") is None and "llmitm.provider" not in meta):
            return None
        return asyncio.sleep(0)

    def trim(self) -> None:
        """Remove the oldest finished flows from the view beyond `max_flows`.

        `View.remove` drops a flow from its store and its sorted view (and tells
        mitmweb's clients); nothing else in mitmproxy keeps a finished flow, so it is
        freed. Live flows are skipped: removing one would kill it."""
        if not self.max_flows:
            return
        try:
            view = ctx.master.addons.get("view")
        except AttributeError:
            return
        if view is None:
            return
        excess = view.store_count() - self.max_flows
        if excess <= 0:
            return
        store = getattr(view, "_store", None)  # insertion order: oldest first
        flows = store.values() if store is not None else view.resolve("@all")
        victims = []
        for f in flows:
            if len(victims) >= excess:
                break
            if not f.live:
                victims.append(f)
        for f in victims:  # one by one: View.remove logs an alert for several at once
            view.remove([f])
