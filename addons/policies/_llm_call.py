"""Calling a configured LLM from a plugin, and reading what it answered.

The AI transformer plugins (ai-request-transformer, ai-response-transformer) ask an LLM
of their own to rewrite a body. Their `llm` block is an ai-proxy block, and the call
goes the way ai-proxy's does: the provider's adapter builds the native request from an
OpenAI chat body, the route's auth (header, query or body parameter, AWS or GCP
credentials) is added, the gateway's shared upstream client sends it, and the adapter
translates the answer back. So every provider works, the embedded `mock` one included.

The plugin's call is the gateway's own, not the client's: no client header is
forwarded, and it is not a call record of its own (its usage goes into the client's
call record, see `LLMAnswer.stats`).

Errors come out as `ProviderError`s with the status the client should get: 502 when
the LLM answered an error, nothing readable or no text; 502/504 when it cannot be
reached or is too slow (`http_timeout`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import regex
from pydantic import Field, PrivateAttr, field_validator, model_validator

import providers
from addons import llm_request
from addons.ai_proxy_config import AIProxyConfig
from addons.policies.base import logged_path, reply_error
from addons.upstream import Timeouts, UpstreamResponse, upstream_failure
from providers.base import (
    CallSpec,
    ProviderError,
    RouteType,
    UpstreamRequest,
    Usage,
    estimate_tokens,
)
from providers.options import Strict

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from mitmproxy import http

    from addons.calls import Call
    from addons.state import Gateway

log = logging.getLogger("llmitm")

#: the longest a transformation pattern may search one answer (seconds): the search
#: runs on the event loop, so a pathological pattern must not stall every flow
PATTERN_TIMEOUT = 0.25

# ------------------------------------------------------------------------ config

# ai-proxy fields about the client's request and answer: meaningless in an `llm` block
_NOT_FOR_PLUGINS = frozenset({"response_streaming", "max_request_body_size", "model_name_header"})


class LLMCallConfig(Strict):
    """Kong's fields of the plugins that call an LLM themselves: the `llm` block and
    how to reach it."""

    http_timeout: int = Field(
        60000,
        gt=0,
        description="Timeout in milliseconds for the AI upstream service: to connect, and "
        "between two reads of its answer.",
    )
    https_verify: bool = Field(
        True, description="Verify the TLS certificate of the AI upstream service."
    )
    http_proxy_host: str | None = Field(
        None, description="Forward proxy for http:// LLM URLs (host; with http_proxy_port)."
    )
    http_proxy_port: int | None = Field(
        None, ge=1, le=65535, description="Port of http_proxy_host."
    )
    https_proxy_host: str | None = Field(
        None,
        description="Forward proxy for https:// LLM URLs (host; with https_proxy_port). "
        "It is spoken to in plain HTTP and tunnels with CONNECT, as Kong does.",
    )
    https_proxy_port: int | None = Field(
        None, ge=1, le=65535, description="Port of https_proxy_host."
    )
    llm: AIProxyConfig = Field(
        description="The LLM that does the work: an ai-proxy config block (route_type "
        "llm/v1/chat, auth, model with its name, logging)."
    )

    @model_validator(mode="after")
    def _llm_call(self) -> LLMCallConfig:
        errors: list[str] = []
        for scheme in ("http", "https"):
            host = getattr(self, f"{scheme}_proxy_host")
            port = getattr(self, f"{scheme}_proxy_port")
            if bool(host) != (port is not None):
                errors.append(f"{scheme}_proxy_host and {scheme}_proxy_port must be set together")
        llm = self.llm
        if llm.route_type is not RouteType.CHAT:
            errors.append(
                f"llm.route_type must be 'llm/v1/chat' for AI transformer plugins, "
                f"not {str(llm.route_type)!r}"
            )
        if llm.llm_format != "openai":
            errors.append(f"llm.llm_format must be 'openai' here, not {llm.llm_format!r}")
        for name in sorted(_NOT_FOR_PLUGINS & llm.model_fields_set):
            errors.append(
                f"llm.{name} does not apply to a plugin's own LLM call (it is never "
                "streamed, and its answer goes to the plugin, not the client)"
            )
        if not llm.model.name:
            errors.append(
                "llm.model.name is required: the plugin's own LLM call has no client "
                "request to take the model from"
            )
        if llm_request.has_templates(llm.model):
            errors.append(
                "llm.model cannot use $(...) templates: the plugin's LLM call is the "
                "gateway's own, not a client's request"
            )
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def transport(self) -> Transport:
        return Transport(
            timeout=self.http_timeout / 1000,
            verify=self.https_verify,
            http_proxy=_proxy_url(self.http_proxy_host, self.http_proxy_port),
            https_proxy=_proxy_url(self.https_proxy_host, self.https_proxy_port),
        )


class TransformerConfig(LLMCallConfig):
    """The fields both AI transformer plugins share."""

    prompt: str = Field(
        min_length=1,
        description="The instructions to the LLM (its system message); the body to "
        "transform is the user message.",
    )
    transformation_extract_pattern: str | None = Field(
        None,
        description="A regular expression (PCRE-style, case-insensitive, multi-line) the "
        "LLM's answer must match: the match becomes the new body (a group named 'body', "
        "if the pattern has one). No match: the transformation failed and the client gets "
        "an error. Unset: the whole answer is the new body.",
    )
    max_request_body_size: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest body (bytes) sent to the LLM for transformation. Kong's "
        "default is 8 KiB; llmitm's is ai-proxy's 10 MiB.",
    )
    _pattern: regex.Pattern[str] | None = PrivateAttr(None)

    @field_validator("transformation_extract_pattern")
    @classmethod
    def _valid_pattern(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_pattern(pattern)  # a bad pattern is a load error naming it
        return pattern

    @model_validator(mode="after")
    def _compile(self) -> TransformerConfig:
        if self.transformation_extract_pattern is not None:
            self._pattern = compile_pattern(self.transformation_extract_pattern)
        return self

    def extract(self, answer: str) -> str | None:
        """The new body from the LLM's answer, or None when the pattern does not match."""
        return extract(self._pattern, answer)


def _proxy_url(host: str | None, port: int | None) -> str | None:
    if not host or port is None:
        return None
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{port}"


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """`transformation_extract_pattern` compiled with Kong's flags (case-insensitive,
    multi-line); a bad pattern is a config error that names it."""
    try:
        return regex.compile(pattern, regex.IGNORECASE | regex.MULTILINE | regex.VERSION0)
    except (regex.error, ValueError, OverflowError) as e:
        raise ValueError(
            f"transformation_extract_pattern {pattern!r} is not a valid regular expression: {e}"
        ) from None


def extract(pattern: regex.Pattern[str] | None, answer: str) -> str | None:
    """Kong's rule: the first match of the pattern in the answer is the new body (the
    group named `body` when the pattern has one); no pattern: the whole answer. None
    when it does not match (or the search took too long)."""
    if pattern is None:
        return answer
    try:
        found = pattern.search(answer, timeout=PATTERN_TIMEOUT)
    except TimeoutError:
        return None
    if found is None:
        return None
    if "body" in pattern.groupindex and found.group("body") is not None:
        return found.group("body")
    return found.group(0)


# ------------------------------------------------------------------------ the call


@dataclass(frozen=True, slots=True)
class Transport:
    """How to reach the LLM: Kong's http_timeout, https_verify and forward proxies."""

    timeout: float = 60.0  # seconds
    verify: bool = True
    http_proxy: str | None = None
    https_proxy: str | None = None

    def proxy_for(self, url: str) -> str | None:
        if url.startswith("https://"):
            return self.https_proxy
        if url.startswith("http://"):
            return self.http_proxy
        return None


@dataclass(slots=True)
class LLMAnswer:
    """What the plugin's LLM answered."""

    text: str
    provider: str
    model: str | None
    usage: Usage
    cost: float | None
    latency_ms: int

    def stats(self) -> dict[str, Any]:
        """For the client's call record (`context`): what the plugin's LLM call used."""
        out: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
            "latency_ms": self.latency_ms,
        }
        if self.usage.estimated:
            out["usage_estimated"] = True
        if self.cost is not None:
            out["cost"] = self.cost
        return out


async def complete(gateway: Gateway, llm: AIProxyConfig, system: str, user: str) -> str:
    """The assistant's text for a chat of `system` instructions and `user` content, from
    the LLM of an ai-proxy style block (default transport: 60 s timeout, TLS verified,
    no proxy). Raises ProviderError (see the module's docstring)."""
    return (await ask(gateway, llm, system, user)).text


async def ask(
    gateway: Gateway,
    llm: AIProxyConfig,
    system: str,
    user: str,
    transport: Transport | None = None,
) -> LLMAnswer:
    """`complete`, with the usage, cost and model of the call, over `transport`."""
    transport = transport or Transport()
    provider = providers.get(llm.model.provider)
    model = llm.model
    body: dict[str, Any] = {
        "model": model.name,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "stream": False,
    }
    spec = CallSpec(
        route_type=RouteType.CHAT,
        body=llm_request.apply_options(RouteType.CHAT, body, model),
        model=model.name,
        options=model.options,
        stream=False,
        path="/v1/chat/completions",
    )
    up = provider.build_request(spec)
    up.stream = False
    _authenticate(up, llm)
    kind = provider.credential_kind(llm.auth, model.options)
    if kind is not None:
        credentials = await gateway.credentials.get(kind, llm.auth)
        provider.sign(up, spec, credentials)

    where = f"{provider.name}/{model.name}"
    started = time.monotonic()
    try:
        resp = await _send(gateway, up, transport)
    except ProviderError as e:  # not reached, too slow, broke off
        message = e.message.replace("(read_timeout)", "(http_timeout)")
        raise ProviderError(
            e.status, f"the transformer's LLM ({where}): {message}", e.type, e.code
        ) from None
    latency_ms = round((time.monotonic() - started) * 1000)
    if resp.status >= 400:
        err = provider.parse_error(resp.status, resp.header_dict(), resp.body)
        raise ProviderError(
            502,
            f"the transformer's LLM ({where}) answered {resp.status}: {err.message}",
            "api_error",
            "transformer_llm_error",
        )
    try:
        reply = provider.parse_response(spec, resp.status, resp.header_dict(), resp.body)
    except ProviderError as e:
        raise ProviderError(
            502,
            f"the transformer's LLM ({where}) sent an unreadable answer: {e.message}",
            "api_error",
            "transformer_llm_error",
        ) from None
    text = answer_text(reply.data)
    if text is None:
        raise ProviderError(
            502,
            f"the transformer's LLM ({where}) answered no text",
            "api_error",
            "transformer_llm_error",
        )
    usage = reply.usage or Usage(
        estimate_tokens(system + "\n" + user), estimate_tokens(text), estimated=True
    )
    return LLMAnswer(
        text=text,
        provider=provider.name,
        model=reply.model or model.name,
        usage=usage,
        cost=usage.cost(model.options),
        latency_ms=latency_ms,
    )


def answer_text(data: Any) -> str | None:
    """The text of the first choice of an OpenAI chat answer (text parts joined), or
    None when it has none."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        content = "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    if not isinstance(content, str) or not content:
        return None
    return content


def _authenticate(up: UpstreamRequest, llm: AIProxyConfig) -> None:
    """The block's auth on the request, as ai-proxy sets a route's (header, or query or
    body parameter). There is no client here, so nothing to forward or override."""
    auth = llm.auth
    if auth.header_name and auth.header_value:
        up.headers = {**up.headers, auth.header_name.lower(): auth.header_value}
    if auth.param_name and auth.param_value:
        if auth.param_location == "query":
            up.url = llm_request.set_query_param(up.url, auth.param_name, auth.param_value)
        elif auth.param_location == "body":
            up.body = llm_request.set_body_param(up.body, auth.param_name, auth.param_value)


async def _send(gateway: Gateway, up: UpstreamRequest, transport: Transport) -> UpstreamResponse:
    """Send with the gateway's client. Without TLS verification or through a proxy the
    request goes over the same pooled session with those per-request settings (the
    shared `Upstream.send` has no such knobs)."""
    timeouts = Timeouts(transport.timeout, transport.timeout, transport.timeout)
    proxy = transport.proxy_for(up.url)
    if up.url.startswith("mock://") or (transport.verify and proxy is None):
        return await gateway.upstream.send(up, timeouts)
    upstream = gateway.upstream
    if upstream.session is None:
        await upstream.start()
    assert upstream.session is not None
    extra: dict[str, Any] = {}
    if not transport.verify:
        extra["ssl"] = False
    if proxy is not None:
        extra["proxy"] = proxy
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
    )
    try:
        async with upstream.session.request(
            up.method,
            up.url,
            headers=up.headers,
            data=up.body or None,
            timeout=timeout,
            allow_redirects=False,
            **extra,
        ) as resp:
            body = await resp.read()
            return UpstreamResponse(resp.status, list(resp.headers.items()), body)
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise upstream_failure(e, up.url, timeouts) from None


# ------------------------------------------------------------ for the plugins


def note(call: Call, key: str, llm: AIProxyConfig, answer: LLMAnswer, sent: str) -> None:
    """Put what the plugin's LLM call used in the client's call record (its `context`,
    under `key`), as the `llm` block's `logging` says: statistics by default, the text
    sent and answered with `log_payloads`."""
    if not (llm.logging.log_statistics or llm.logging.log_payloads):
        return
    entry = answer.stats() if llm.logging.log_statistics else {}
    if llm.logging.log_payloads:
        entry["payload"] = {"request": sent, "response": answer.text}
    call.context[key] = entry


def refuse(flow: http.HTTPFlow, call: Call, plugin: str, err: ProviderError) -> None:
    """Answer the client with `err` (OpenAI's error shape), its message prefixed with
    the plugin's name; the call record says the gateway failed it."""
    named = ProviderError(
        err.status,
        f"{plugin}: {err.message}",
        err.type,
        err.code,
        err.param,
        err.headers,
    )
    log.warning(
        "llmitm: %s failed on %s %s: %s",
        plugin,
        flow.request.method,
        logged_path(flow, call),
        err.message,
    )
    reply_error(flow, call, named)


async def transform_or_refuse(
    flow: http.HTTPFlow, call: Call, plugin: str, transform: Awaitable[None]
) -> None:
    """Run a transformer plugin's `transform`; a ProviderError it raises answers the
    client (`refuse`), and so does a crash, as a 500 (logged with its traceback)."""
    try:
        await transform
    except ProviderError as e:
        refuse(flow, call, plugin, e)
    except Exception:
        log.exception("llmitm: %s crashed on %s", plugin, logged_path(flow, call))
        refuse(
            flow,
            call,
            plugin,
            ProviderError(500, "internal gateway error", "api_error", "gateway_error"),
        )


_FENCED = regex.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?```", regex.DOTALL)


def json_value(text: str) -> Any:
    """`text` as JSON; an answer fenced in a Markdown code block (```json ... ```) is
    read inside its fence. Raises ValueError when it is not JSON."""
    try:
        return _loads(text)
    except ValueError as first:
        fenced = _FENCED.search(text)
        if fenced is None:
            raise first from None
        return _loads(fenced.group(1))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:  # an LLM's answer nested too deeply: not JSON we can use
        raise ValueError("the JSON is nested too deeply") from None
