"""What every policy addon needs: its config for a flow, refusing a request in OpenAI's
error shape, and the request body parsed once for all of them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field

from addons import llm_request
from providers.base import ProviderError, error_type_for

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.calls import Call
    from addons.state import Gateway

log = logging.getLogger("llmitm")


class PolicyAddon:
    """Base of a policy addon: `active(flow)` gives the call and this plugin's config
    when the plugin runs for the flow and nothing has answered it yet."""

    #: the plugin's name in the config (the module's NAME)
    plugin: str = ""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def active(self, flow: http.HTTPFlow) -> tuple[Call, Any] | tuple[None, None]:
        call = self.gw.calls.get(flow)
        if call is None or flow.response is not None:
            return None, None
        conf = call.plugin(self.plugin)
        if conf is None:
            return None, None
        return call, conf


def deny(
    flow: http.HTTPFlow,
    call: Call,
    status: int,
    message: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    type: str | None = None,
    param: str | None = None,
) -> None:
    """Answer the request with an error of the gateway's (OpenAI's error shape); the
    call's record says the gateway refused it."""
    err = ProviderError(status, message, type or error_type_for(status), code, param, headers)
    reply_error(flow, call, err)


def reply_error(flow: http.HTTPFlow, call: Call, err: ProviderError) -> None:
    """Answer the request with `err` (OpenAI's error shape), a refusal of the gateway's."""
    from addons.errors import from_provider_error  # mitmproxy: not at import time

    call.fail(err, "gateway")
    flow.response = from_provider_error(err)


def refuse_request(flow: http.HTTPFlow, call: Call, plugin: str, err: ProviderError) -> None:
    """Answer the request with `err` (as `reply_error` does): a prompt plugin refusing a
    request it cannot read or will not let through, noted in the debug log."""
    log.debug("%s: %s %s refused: %s", plugin, flow.request.method, logged_path(flow, call), err)
    reply_error(flow, call, err)


def logged_path(flow: http.HTTPFlow, call: Call | None) -> str:
    """The request's path as a policy's log line may show it: its query's credentials
    (the usual names, the key-auth key's name, any configured secret or consumer key)
    redacted, as the call record shows them. Every policy log line that names the
    request's path or URL goes through here."""
    return logged_url(flow.request.path, call)


def logged_url(url: str, call: Call | None) -> str:
    """`url` (a path or a whole URL) with its query's credentials redacted (see
    `logged_path`)."""
    if "?" not in url:
        return url
    from addons.recorder import redact_url  # mitmproxy: not at import time

    if call is None:
        return redact_url(url)
    return redact_url(url, call.config.secrets, call.secret_names)


def consumer_pending(call: Call) -> bool:
    """Whether key-auth may still name the consumer, from the body (`key_in_body`): a
    consumer's own config of a plugin would then replace the one in force now, so a
    plugin that could decide in `requestheaders` waits for `request`."""
    if call.consumer is not None:
        return False
    auth = call.plugin("key-auth")
    return auth is not None and bool(getattr(auth, "key_in_body", False))


def json_body(flow: http.HTTPFlow, call: Call) -> dict[str, Any]:
    """The request body as a JSON object, parsed once per call (raises a 400
    ProviderError when it is not one)."""
    if call.body is None:
        call.body = llm_request.parse_json(llm_request.body_bytes(flow.request))
    return call.body


def set_json_body(flow: http.HTTPFlow, call: Call, body: dict[str, Any]) -> None:
    """Replace the request body (a prompt plugin's rewrite): the flow carries the new
    bytes, and the plugins after this one (ai-proxy too) read the new object."""
    call.body = body
    flow.request.content = orjson.dumps(body)


def body_size(flow: http.HTTPFlow) -> int:
    """The size of the request body as it is now (decoded when it is compressed)."""
    try:
        return len(flow.request.content or b"")
    except ValueError:  # a bad content-encoding: json_body says so
        return len(flow.request.raw_content or b"")


def max_request_body_size_field() -> Any:
    """The prompt plugins' `max_request_body_size` field (what `read_body` is given)."""
    return Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest request body (bytes) this plugin reads; larger ones get 413. "
        "Kong's default is 8 KiB.",
    )


def read_body(flow: http.HTTPFlow, call: Call, limit: int, plugin: str) -> dict[str, Any]:
    """The request body as a JSON object, if it is at most `limit` bytes (a prompt
    plugin's `max_request_body_size`, measured on the body as this plugin gets it, after
    the rewrites of the plugins before it); raises a ProviderError (413, 400) otherwise."""
    size = body_size(flow)
    if size > limit:
        raise ProviderError(
            413,
            f"request body of {size} bytes exceeds {plugin}'s max_request_body_size "
            f"({limit} bytes)",
            "invalid_request_error",
            "request_too_large",
        )
    return json_body(flow, call)


def set_headers(headers: http.Headers, values: dict[str, str]) -> None:
    """Set several headers at once (replacing any of the same names). mitmproxy's
    per-name assignment rebuilds the whole field list each time: for a rate limit's
    five headers that cost more than counting the request (bench/README.md)."""
    if not values:
        return
    names = {name.lower().encode() for name in values}
    fields = [f for f in headers.fields if f[0].lower() not in names]
    fields.extend(
        (name.encode(), value.encode("utf-8", "surrogateescape")) for name, value in values.items()
    )
    headers.fields = tuple(fields)
