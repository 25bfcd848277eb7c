"""Types every provider adapter shares.

Pure code: nothing here imports mitmproxy or does I/O, so an adapter can be read and
tested on its own. The client side of the gateway always speaks OpenAI's formats; an
adapter turns an OpenAI-format request into its provider's native request, and the
provider's native answer (whole or streamed) back into OpenAI's format.
"""

from __future__ import annotations

import enum
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from providers.options import ModelOptions


class RouteType(enum.StrEnum):
    """Kong's `route_type`: which OpenAI operation a route serves."""

    CHAT = "llm/v1/chat"
    COMPLETIONS = "llm/v1/completions"
    EMBEDDINGS = "llm/v1/embeddings"
    PRESERVE = "preserve"


@dataclass(slots=True)
class Usage:
    """One normalized token usage for every provider.

    `prompt_tokens` counts every input token, cached ones included (OpenAI's meaning);
    adapters whose provider reports cached input separately add it in. `estimated` is
    True when the provider reported nothing and the gateway counted by itself: a
    usage is never a silent zero.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    # What the provider bills, when it bills other counts than it reports (Cohere's
    # billed units leave out the prompt template): cost uses these when set.
    billed_prompt_tokens: int | None = None
    billed_completion_tokens: int | None = None
    # The call's cost as the provider itself reports it (OpenRouter's `usage.cost`, in
    # USD): it wins over a cost computed from the route's prices.
    reported_cost: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost(self, options: ModelOptions) -> float | None:
        """Cost of the call: the provider's own figure when it reports one, else from the
        per-1M-token prices of `options`; None if neither."""
        if self.reported_cost is not None:
            return self.reported_cost
        if options.input_cost is None and options.output_cost is None:
            return None
        prompt = (
            self.prompt_tokens if self.billed_prompt_tokens is None else self.billed_prompt_tokens
        )
        completion = (
            self.completion_tokens
            if self.billed_completion_tokens is None
            else self.billed_completion_tokens
        )
        fresh_input = prompt - self.cache_read_tokens - self.cache_write_tokens
        input_cost = options.input_cost or 0.0
        cache_read = options.cache_read_cost if options.cache_read_cost is not None else input_cost
        cache_write = (
            options.cache_write_cost if options.cache_write_cost is not None else input_cost
        )
        total = (
            max(fresh_input, 0) * input_cost
            + self.cache_read_tokens * cache_read
            + self.cache_write_tokens * cache_write
            + completion * (options.output_cost or 0.0)
        )
        return round(total / 1_000_000, 10)

    def to_openai(self) -> dict[str, Any]:
        """The `usage` object of an OpenAI response."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


@dataclass(slots=True)
class UpstreamRequest:
    """The native request an adapter wants sent to its provider."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool = False
    # Headers sent only when the client did not send them itself (a native request's
    # API version, say): `headers` replace the client's, these fill in.
    default_headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Reply:
    """A whole (non-streamed) answer, translated to OpenAI's format.

    `body` is what the client receives; `data` is the same answer as a dict, kept for
    the call record (payload, finish reason, response model).
    """

    body: bytes
    data: dict[str, Any]
    usage: Usage | None
    model: str | None


class ProviderError(Exception):
    """An error that reaches the client in OpenAI's error shape.

    Raised by adapters for upstream errors (keeping the upstream's status and message)
    and for answers that cannot be translated (502, naming what was missing).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "api_error",
        code: str | int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        # response headers the client must get with this error (e.g. a Retry-After the
        # adapter derived from the body); they win over the upstream's own
        self.headers = headers or {}

    def to_openai(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return json.dumps(self.to_openai()).encode()


@dataclass(slots=True)
class CallSpec:
    """Everything an adapter needs to build one upstream request.

    `body` is the client's OpenAI-format request after the gateway's model rules and
    option defaults were applied; adapters must not mutate it.
    """

    route_type: RouteType
    body: dict[str, Any]
    model: str | None
    options: ModelOptions
    stream: bool
    # The client asked for a usage chunk at the end of the stream.
    client_wants_usage: bool = False
    # For `preserve` routes: the path and query the client sent (after strip_path).
    path: str = "/"
    query: str = ""
    method: str = "POST"
    raw_body: bytes = b""
    # Kong's `llm_format`: "openai" (translate), or the provider's own format (the
    # client speaks it already: pass through, observe only).
    llm_format: str = "openai"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def native(self) -> bool:
        return self.llm_format != "openai"


@dataclass(frozen=True, slots=True)
class AWSCredentials:
    """What SigV4 needs; resolved by the gateway (config, environment or AWS's chain)."""

    access_key: str
    secret_key: str
    token: str | None = None


class StreamTranslator(Protocol):
    """Turns a provider's streamed bytes into OpenAI SSE bytes, incrementally.

    `feed` is called with chunks cut at arbitrary byte boundaries and returns the bytes
    to forward now (possibly none); `finish` is called once at the end. Neither may raise
    on bad upstream data: they report it in `error` and emit an error event instead.
    """

    usage: Usage | None
    error: ProviderError | None
    # True once a chunk carrying content (text, tool call, reasoning) was emitted.
    started: bool

    def feed(self, data: bytes) -> list[bytes]: ...

    def finish(self, error: ProviderError | None = None) -> list[bytes]: ...

    def assembled(self) -> dict[str, Any]:
        """The whole answer as one OpenAI response object (for the call record)."""
        ...


def as_int(value: Any) -> int:
    """`value` if it is an int (not a bool), else 0: for counts read from upstream JSON."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def json_body(value: Any) -> bytes:
    """A request body for an upstream: compact UTF-8 JSON from orjson (a twentieth of
    the json module's time on a long conversation), or compact ASCII JSON from the json
    module for what orjson refuses (an integer beyond 64 bits, a lone surrogate, a key
    that is not a string)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":")).encode()


def compact_json(value: Any) -> str:
    """JSON without spaces, non-ASCII kept: tool-call arguments, as OpenAI sends them."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def new_completion_id() -> str:
    """An id for an answer whose provider gives none, in OpenAI's style."""
    return "chatcmpl-" + secrets.token_hex(12)


def join_url(upstream_url: str | None, default_base: str, path: str) -> str:
    """Kong's rule for `upstream_url`: a bare origin keeps the provider's standard path,
    a URL with a path is used as written."""
    if not upstream_url:
        return default_base.rstrip("/") + path
    parts = urlsplit(upstream_url)
    if parts.path in ("", "/"):
        return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{parts.query}" if parts.query else "")
    return upstream_url


def estimate_tokens(text: str) -> int:
    """A provider-neutral token estimate (about four characters per token)."""
    if not text:
        return 0
    return max(1, (len(text) + 3) // 4)


def text_of_messages(messages: Any) -> str:
    """All text of an OpenAI `messages` list, for estimates and guards."""
    parts: list[str] = []
    if not isinstance(messages, list):
        return ""
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for p in content:
                if isinstance(p, dict) and isinstance(p.get("text"), str):
                    parts.append(p["text"])
        for call in m.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                parts.append(str(fn.get("name", "")))
                parts.append(str(fn.get("arguments", "")))
    return "\n".join(parts)


class Provider:
    """One upstream API format. Subclasses live one per module in `providers/`.

    Every method is pure: the gateway does the I/O and hands the bytes in.
    """

    name: str = ""
    default_base_url: str = ""
    route_types: frozenset[RouteType] = frozenset({RouteType.PRESERVE})
    # Header names that carry this provider's credentials (redacted, never forwarded
    # from the client when the route configures its own auth).
    auth_headers: tuple[str, ...] = ("authorization",)
    # Query parameters that carry credentials (dropped from a client's URL likewise).
    auth_params: tuple[str, ...] = ()
    # Kong's `llm_format` value for clients that speak this provider's own API (None:
    # only OpenAI-format clients).
    native_format: str | None = None
    # Slow-to-import modules the adapter needs on its first call (an SDK's signer): the
    # gateway imports them in a thread when a config uses the provider, so that the
    # first call does not import them on mitmproxy's event loop.
    warm_imports: tuple[str, ...] = ()
    # Media types of this provider's streamed answers. A 2xx answer to a streamed
    # request is relayed as a stream unless it is plain `application/json` not listed
    # here: that is an upstream that ignored `stream` and sent the whole answer, which
    # the gateway then reads and streams to the client itself. A provider whose stream
    # may be JSON (Gemini's JSON array, without alt=sse) lists application/json.
    stream_content_types: tuple[str, ...] = (
        "text/event-stream",
        "application/x-ndjson",
        "application/vnd.amazon.eventstream",
    )
    # Whether the provider's own input-token count already includes cached tokens
    # (OpenAI, Gemini) or reports them apart (Anthropic, Bedrock). Adapters normalize
    # to Usage's contract either way; this states what the native figure means.
    input_includes_cache: bool = True

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        """Problems with a route's `model` (and `auth`) blocks for this provider (checked
        at load)."""
        if route_type not in self.route_types:
            served = ", ".join(sorted(self.route_types))
            return [
                f"provider {self.name!r} cannot serve route_type {str(route_type)!r} "
                f"(it serves: {served})"
            ]
        return []

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        raise NotImplementedError

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        raise NotImplementedError

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        return generic_error(self.name, status, headers, body)

    def stream_translator(self, spec: CallSpec) -> StreamTranslator:
        raise NotImplementedError

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        """Usage of a native response object, for observed and preserved calls."""
        return None

    # ---- credentials the gateway resolves (asynchronously) before sending

    def credential_kind(self, auth: Any, options: ModelOptions) -> str | None:
        """ "aws" or "gcp" when `sign` needs credentials the gateway must resolve
        (AWSCredentials, or an OAuth access token as a str); None otherwise."""
        return None

    def sign(self, up: UpstreamRequest, spec: CallSpec, credentials: Any) -> None:
        """Last step before sending, after the route's auth headers and params are set:
        add what is computed from `credentials` (a SigV4 signature, a bearer token)."""

    # ---- native passthrough (Kong's llm_format) and observed traffic

    def native_model(self, spec: CallSpec) -> str | None:
        """The model a native-format request asks for (body or path)."""
        model = spec.body.get("model") if isinstance(spec.body, dict) else None
        return model if isinstance(model, str) else None

    def build_native_request(self, spec: CallSpec) -> UpstreamRequest:
        """A client's native request, sent unchanged but for the model (`spec.model`) to
        the same path on the provider's host (or `upstream_url`). `stream` says whether
        the answer will be streamed. This default serves APIs with the model in the body
        and `"stream": true` for streams (Anthropic, OpenAI-like); Gemini and Bedrock,
        with the model and the operation in the path, override it."""
        body = spec.body if isinstance(spec.body, dict) else {}
        raw = spec.raw_body
        if spec.model and body.get("model") != spec.model:
            raw = json_body({**body, "model": spec.model})
        headers = {"content-type": "application/json"}
        return UpstreamRequest(
            spec.method,
            preserve_url(spec, self.default_base_url),
            headers,
            raw,
            bool(body.get("stream")),
        )

    def parse_native_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        """A native answer, passed on unchanged (`body`), with its usage and model read."""
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        data = data if isinstance(data, dict) else {}
        model = data.get("model") or data.get("modelVersion")
        return Reply(body, data, self.usage_from(data), model if isinstance(model, str) else None)

    def native_stream_observer(self, spec: CallSpec) -> StreamTranslator:
        """Watches a native stream passed through unchanged: the gateway forwards the
        upstream's bytes and ignores what `feed` returns, so the OpenAI translator (which
        already decodes the native stream) serves by default, and its `assembled()`
        answer goes into the call record."""
        return self.stream_translator(spec)


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    return _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def generic_error(
    provider: str, status: int, headers: dict[str, str], body: bytes
) -> ProviderError:
    """An upstream error body of unknown or non-JSON shape, kept as readable as possible."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    message: str | None = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            inner = err.get("message")
            message = inner if isinstance(inner, str) and inner.strip() else json.dumps(err)[:500]
        elif isinstance(err, str) and err.strip():
            message = err
        elif isinstance(data.get("message"), str) and data["message"].strip():
            message = data["message"]
        elif isinstance(data.get("detail"), str) and data["detail"].strip():
            message = data["detail"]
    if message is None:
        if text.startswith("<"):
            message = f"{provider} upstream returned an HTML error page (HTTP {status})"
        elif text:
            message = text[:500]
        else:
            message = f"{provider} upstream returned HTTP {status} with an empty body"
    return ProviderError(status, message, error_type_for(status))


def preserve_url(spec: CallSpec, default_base: str) -> str:
    """Where a `preserve` route sends the client's request: the upstream_url (or the
    provider's base) followed by `upstream_path` or else the client's own path, after
    the route's strip_path."""
    base = (spec.options.upstream_url or default_base).rstrip("/")
    path = spec.options.upstream_path or spec.path or "/"
    return base + path + (f"?{spec.query}" if spec.query else "")
