"""addons/webview.py: marks and comments of LLM flows in mitmweb, and the cap on kept flows."""

from __future__ import annotations

import gc
import weakref

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.view import View
from mitmproxy.test import taddons, tflow
from mitmproxy.tools.web.web_columns import AVAILABLE_WEB_COLUMNS
from mitmproxy.utils.emoji import emoji

import providers
from addons.calls import Call
from addons.config import load_text
from addons.recorder import Recorder
from addons.state import Gateway
from addons.webview import MARKS, WebView, annotate, comment_for
from providers.base import CallSpec, ProviderError, RouteType, Usage

CONFIG = """
services:
  - name: llm
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model:
                provider: mock
                name: m
                options: {input_cost: 3, output_cost: 15}
"""


USAGE = Usage(1204, 311)


def _gateway() -> Gateway:
    gw = Gateway()
    gw.config = load_text(CONFIG)
    return gw


def _call(
    gw: Gateway,
    usage: Usage | None = USAGE,
    stream: bool = True,
    provider: str = "mock",
) -> Call:
    assert gw.config is not None
    route = gw.config.routes[0]
    options = route.plugin("ai-proxy").model.options
    spec = CallSpec(RouteType.CHAT, {"model": "m", "messages": []}, "m", options, stream)
    return Call(
        config=gw.config,
        route=route,
        match=None,
        started_at=100.0,
        provider=providers.get(provider),
        spec=spec,
        request_model="m",
        response_model="m-2025",
        stream=stream,
        usage=usage,
        upstream_started=100.05,
        upstream_ended=101.0,
        first_token=100.412,
        ended_at=101.2,
    )


def _finished(gw: Gateway, call: Call, flow=None):
    """What the recorder does once a call ended: build the record, export, annotate."""
    flow = flow or tflow.tflow(resp=True)
    flow.request.path = "/v1/chat/completions"
    Recorder(gw)._export(call, flow)
    return flow


def test_every_mark_is_an_emoji_mitmweb_renders() -> None:
    """mitmweb shows `emoji.get(flow.marked, "🔴")`: an unknown shortcode is a red dot."""
    for shortcode in MARKS.values():
        assert shortcode in emoji, shortcode
    assert "comment" in AVAILABLE_WEB_COLUMNS  # the column the README's web_columns adds


def test_a_finished_call_is_marked_ok_with_its_one_line_summary() -> None:
    gw = _gateway()
    with taddons.context():
        f = _finished(gw, _call(gw))
    assert f.marked == ":white_check_mark:"
    # 1204 * $3/M + 311 * $15/M = $0.0083; TTFT = 412 ms after the request began
    assert f.comment == "mock/m-2025 · 1,204→311 tok · $0.0083 · TTFT 412 ms"
    assert f.metadata["llmitm.status"] == "ok"


def test_a_buffered_call_shows_its_latency_and_estimates_are_marked() -> None:
    gw = _gateway()
    with taddons.context():
        f = _finished(gw, _call(gw, Usage(10, 2, estimated=True), stream=False))
    assert f.comment.startswith("mock/m-2025 · ~10→~2 tok · $")
    assert f.comment.endswith(" · 1,200 ms")
    assert "TTFT" not in f.comment


def test_a_failed_call_is_marked_with_its_error() -> None:
    gw = _gateway()
    call = _call(gw, usage=None)
    call.fail(ProviderError(429, "Rate limit reached for requests", "rate_limit_error"), "upstream")
    with taddons.context():
        f = _finished(gw, call)
    assert f.marked == ":x:"
    assert f.comment.endswith("error 429 rate_limit_error: Rate limit reached for requests")
    assert "tok" not in f.comment  # no usage is shown as none, not as zero


def test_a_client_that_left_mid_stream() -> None:
    gw = _gateway()
    call = _call(gw)
    call.client_aborted = True
    with taddons.context():
        f = _finished(gw, call)
    assert f.marked == ":no_entry:"
    assert f.comment.endswith("client aborted")


def test_a_mark_set_by_hand_is_kept() -> None:
    gw = _gateway()
    f = tflow.tflow(resp=True)
    f.marked = ":star:"
    with taddons.context():
        _finished(gw, _call(gw), f)
    assert f.marked == ":star:"
    assert f.comment.startswith("mock/m-2025")


def test_long_error_messages_are_cut_to_one_short_line() -> None:
    gw = _gateway()
    call = _call(gw, usage=None)
    call.fail(ProviderError(500, "x" * 500), "upstream")
    with taddons.context():
        f = _finished(gw, call)
    assert len(f.comment) < 160 and f.comment.endswith("…")


def test_mitmweb_is_told_of_the_change() -> None:
    """The record is built after the response hook, when mitmweb already drew the flow:
    annotate() must send an update through the view."""
    gw = _gateway()
    view = View()
    updated: list[object] = []
    with taddons.context(view):

        def on_update(flow: object) -> None:
            updated.append(flow)

        view.sig_view_update.connect(on_update)  # signals hold receivers weakly
        f = tflow.tflow(resp=True)
        view.add([f])
        _finished(gw, _call(gw), f)
    assert updated == [f]
    assert view.get_by_id(f.id).marked == ":white_check_mark:"


def test_a_stream_in_flight_is_marked_pending() -> None:
    gw = _gateway()
    view = View()
    webview = WebView(gw)
    with taddons.context(view, webview):
        f = tflow.tflow(resp=True)
        f.response.stream = lambda data: [data]
        view.add([f])
        gw.calls.put(f, _call(gw))
        webview.responseheaders(f)
        assert f.marked == ":hourglass:"
        call = gw.calls.pop(f)
        assert call is not None
        _finished(gw, call, f)
        assert f.marked == ":white_check_mark:"  # the pending mark is replaced

        other = tflow.tflow(resp=True)  # not an LLM call: left alone
        other.response.stream = lambda data: [data]
        webview.responseheaders(other)
        assert other.marked == ""


def test_comment_of_a_record_without_ai_info() -> None:
    gw = _gateway()
    call = _call(gw)
    call.provider = None
    with taddons.context():
        f = _finished(gw, call)
    assert f.comment == "chat · 1,200 ms"
    assert comment_for  # the function the recorder's annotate uses
    assert annotate


# ---------------------------------------------------------------- the flow cap


def _done_flow():
    f = tflow.tflow(resp=True)
    f.live = False
    return f


def test_the_oldest_finished_flows_beyond_the_cap_are_removed_and_freed() -> None:
    gw = _gateway()
    view = View()
    webview = WebView(gw)
    with taddons.context(view, webview) as tctx:
        tctx.configure(webview, llmitm_max_flows=3)
        flows = [_done_flow() for _ in range(5)]
        for f in flows:
            view.add([f])
            webview.response(f)
        assert view.store_count() == 3
        assert [view.get_by_id(f.id) is not None for f in flows] == [False, False, True, True, True]
        assert len(view) == 3
        gone = weakref.ref(flows[0])
        del flows[:2], f
        gc.collect()
        assert gone() is None, gc.get_referrers(gone())


def test_flows_in_flight_are_never_removed() -> None:
    gw = _gateway()
    view = View()
    webview = WebView(gw)
    with taddons.context(view, webview) as tctx:
        tctx.configure(webview, llmitm_max_flows=2)
        live = tflow.tflow(resp=True)
        live.live = True
        view.add([live])
        done = [_done_flow() for _ in range(3)]
        for f in done:
            view.add([f])
            webview.response(f)
        assert view.get_by_id(live.id) is live  # the oldest, but still live
        assert live.error is None  # removing it would have killed it
        assert [view.get_by_id(f.id) is not None for f in done] == [False, False, True]
        live.live = False
        webview.error(live)
        newest = _done_flow()
        view.add([newest])
        webview.response(newest)
        assert view.get_by_id(live.id) is None  # finished: now it goes first
        assert view.store_count() == 2


def test_lowering_the_cap_trims_at_once_and_zero_keeps_everything() -> None:
    gw = _gateway()
    view = View()
    webview = WebView(gw)
    with taddons.context(view, webview) as tctx:
        for _ in range(6):
            f = _done_flow()
            view.add([f])
            webview.response(f)
        assert view.store_count() == 6  # default 0: no cap
        tctx.configure(webview, llmitm_max_flows=4)
        assert view.store_count() == 4
        tctx.configure(webview, llmitm_max_flows=0)
        for _ in range(3):
            f = _done_flow()
            view.add([f])
            webview.response(f)
        assert view.store_count() == 7


def test_a_negative_cap_is_refused() -> None:
    webview = WebView(_gateway())
    with (
        taddons.context(webview) as tctx,
        pytest.raises(exceptions.OptionsError, match="llmitm_max_flows"),
    ):
        tctx.configure(webview, llmitm_max_flows=-1)


def test_without_a_view_the_cap_does_nothing() -> None:
    """mitmdump keeps no flows and has no view addon."""
    webview = WebView(_gateway())
    with taddons.context(webview) as tctx:
        tctx.configure(webview, llmitm_max_flows=1)
        webview.response(_done_flow())


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (0.0081, "$0.0081"),
        (1.5, "$1.5000"),
        (0.000014, "$0.000014"),
        (3e-6, "$0.0000030"),
        (0, "$0"),
    ],
)
def test_costs_read_as_dollars_never_in_exponent_notation(cost: float, shown: str) -> None:
    from addons.webview import _money

    assert _money(cost) == shown


async def test_while_flows_are_saved_the_record_annotates_before_the_writer() -> None:
    """`mitmdump -w FILE`: mitmproxy's writer saves a flow in its `response` hook, after
    the gateway's; the recorder builds the record in a callback its own hook scheduled.
    The webview's hook lets that callback run first, so the saved flow has its mark and
    comment; only while saving, only for the gateway's flows."""
    import asyncio

    from mitmproxy.addons.save import Save

    gw = _gateway()
    webview = WebView(gw)
    with taddons.context(Save(), webview) as tctx:
        llm = tflow.tflow(resp=True)
        llm.metadata["llmitm.route"] = "observed"
        other = tflow.tflow(resp=True)
        assert webview.response(llm) is None  # not saving: nothing to wait for
        tctx.configure(webview, save_stream_file="/dev/null")
        assert webview.response(other) is None
        ran: list[str] = []
        asyncio.get_running_loop().call_soon(ran.append, "record")
        waiting = webview.response(llm)
        assert waiting is not None and ran == []
        await waiting
        assert ran == ["record"]
        waiting = webview.error(llm)  # a stream cut off: the same
        assert waiting is not None
        await waiting
