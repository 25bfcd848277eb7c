"""The addons that route: each request gets its route and its Call, or a 404.

Matching itself is `addons.routing.RouteTable` (pure, Kong's rules)."""

from __future__ import annotations

from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from addons.calls import Call, auth_names, context_from_headers, now
from addons.errors import from_provider_error
from providers.base import ProviderError


def no_route() -> ProviderError:
    """Kong's answer when no route matches."""
    return ProviderError(
        404, "no Route matched with those values", "not_found_error", "route_not_found"
    )


class Router:
    """Gives each request its route (or a 404 in reverse mode) and opens its Call."""

    name = "llmitm-router"

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        config = self.gw.config
        if config is None or flow.response is not None:
            return
        req = flow.request
        host = req.host_header or req.pretty_host
        match = config.table.match(req.method, host, req.path, req.headers)
        if match is None and req.method == "OPTIONS":
            match = _preflight_match(config, req, host)
        if match is None and not isinstance(flow.client_conn.proxy_mode, ReverseMode):
            return  # forward mode: not ours to route
        peer = flow.client_conn.peername
        call = Call(
            config=config,
            route=match.route if match else None,
            match=match,
            started_at=req.timestamp_start or now(),
            client_ip=peer[0] if peer else "",
            context=context_from_headers(req.headers),
            plugins=match.route.plugins if match else config.global_plugins,
        )
        if match is None:
            err = no_route()
            call.fail(err, "gateway")
            flow.response = from_provider_error(err)
        else:
            ai_proxy = call.plugin("ai-proxy")
            if ai_proxy is not None:  # a key the client sends there is a secret too
                call.secret_names.update(auth_names(ai_proxy))
        self.gw.calls.put(flow, call)
        flow.metadata["llmitm.route"] = match.route.name if match else None


def _preflight_match(config: Any, req: http.Request, host: str) -> Any:
    """A CORS preflight to a route whose `methods` leave out OPTIONS: the route of the
    request the browser asks about (Access-Control-Request-Method), if cors runs there.
    Kong answers these with a 404; the browser then refuses the actual request."""
    wanted = req.headers.get("access-control-request-method", "").strip().upper()
    if not wanted or not req.headers.get("origin"):
        return None
    match = config.table.match(wanted, host, req.path, req.headers)
    if match is None or "cors" not in match.route.plugins:
        return None
    return match


class ServiceProxy:
    """Routes without ai-proxy are proxied to their service's url, as in Kong. Their
    requests pass unchanged; the ones that are LLM calls are observed on the way
    (`addons.observe.Observe`, after this in the chain: provider, model, usage and cost
    in the record, for the route's log plugins)."""

    name = "llmitm-service-proxy"

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway

    def request(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or call.route is None or flow.response is not None:
            return
        route = call.route
        if "ai-proxy" in route.plugins or route.service is None or not route.service.url:
            return
        assert call.match is not None
        call.proxied = True
        base = route.service.url.rstrip("/")
        query = flow.request.path.partition("?")[2]
        host_header = flow.request.host_header
        flow.request.url = base + call.match.upstream_path + (f"?{query}" if query else "")
        if route.preserve_host and host_header:
            flow.request.host_header = host_header
