"""vLLM and the hosted APIs that speak OpenAI's format, as named providers.

Each host is one `Host` entry of `HOSTS`: its name, where it lives, which operations it
serves and its quirks. Requests and answers are OpenAI's (the answers reach the client
byte for byte, as with `provider: openai`); what differs per host is the URL, the fields
it rejects, how it reports usage in a stream, and a few extra answer fields that are kept
and recorded. Adding the next host is adding one entry.

| provider   | default base URL (paths below it)                     | serves            |
|------------|-------------------------------------------------------|-------------------|
| vllm       | none: `upstream_url` is required (`/v1/...`)          | chat, completions, embeddings |
| deepseek   | https://api.deepseek.com (`/chat/completions`, FIM: `/beta/completions`) | chat, completions |
| xai        | https://api.x.ai (`/v1/...`)                          | chat, completions |
| groq       | https://api.groq.com/openai (`/v1/chat/completions`)  | chat              |
| together   | https://api.together.xyz (`/v1/...`)                  | chat, completions, embeddings |
| openrouter | https://openrouter.ai/api (`/v1/...`)                 | chat, completions, embeddings |
| cerebras   | https://api.cerebras.ai (`/v1/...`)                   | chat, completions |
| dashscope  | https://dashscope-intl.aliyuncs.com/compatible-mode (`/v1/...`; China: `upstream_url: https://dashscope.aliyuncs.com`) | chat, completions, embeddings |
| databricks | none: `upstream_url` is required, the workspace (`/serving-endpoints/...`) | chat, completions, embeddings |

Every one also serves `preserve` (the client's path below the base URL). Credentials are
the route's `auth` (`Authorization: Bearer ...` for all of them).

URLs. Without `upstream_url` the operation's path is appended to the base URL. With it,
Kong's rule is extended so that the base URLs the hosts' own docs give work as they are:
an `upstream_url` whose path is empty or a leading part of the operation's full path
(`http://vllm:8000`, `http://vllm:8000/v1`, `https://<workspace>/serving-endpoints`,
`https://proxy.example/openai`) is completed with the rest of that path; any other path
is used as written.

Quirks, per host (each is a field of its `Host` entry):

- **Usage in streams.** The gateway asks for it (`stream_options.include_usage`) where
  the host accepts that field: vllm, deepseek, xai, groq, openrouter, dashscope.
  together, cerebras and databricks report usage in their last chunks by themselves
  and are not sent `stream_options` (the client's own is removed too). Groq's older API
  puts usage in `x_groq.usage` of its last chunk. When the client asked for usage and
  the host gave it no standard `choices: []` usage chunk, one is added before
  `data: [DONE]`; a usage chunk only the gateway asked for is removed.
- **Usage normalized for the record** (the client gets the host's own object):
  DeepSeek's `prompt_cache_hit_tokens` are the cache reads (its `prompt_tokens` is hits
  plus misses); `prompt_tokens_details.cache_write_tokens` /
  `cache_creation_input_tokens` (OpenRouter, DashScope) are cache writes; xAI reports
  `reasoning_tokens` apart from `completion_tokens` (its `total_tokens` counts both):
  they are added to completion tokens, OpenAI's meaning. OpenRouter's `cost` (what the call
  was billed) is the record's cost, over one computed from the route's prices.
- **Reasoning.** `reasoning_content` (deepseek, xai, dashscope, vllm before 0.10) and
  `reasoning` (openrouter, groq, newer vllm) in answers and stream deltas pass through
  and go into the recorded answer. DeepSeek needs the `reasoning_content` of assistant
  turns that called tools sent back: client messages are forwarded with it.
- **Fields a host rejects** (400) are removed when they say nothing: groq's
  `messages[].name`, and its `n: 1`, `logprobs: false`, `logit_bias: {}`,
  `top_logprobs: 0`; cerebras' `parallel_tool_calls` and `service_tier`, and its zero
  `frequency_penalty`/`presence_penalty`. A non-neutral value is sent and the host's
  error reaches the client. `top_k` (a route option Kong knows) is sent only to hosts
  that take it (vllm, together, openrouter, dashscope, databricks).
  `max_completion_tokens` becomes `max_tokens` for hosts that only know the latter
  (deepseek, together, dashscope, databricks).
- **Text-only hosts.** DeepSeek's API serves no vision model and refuses any content
  part but text (400 "unknown variant `image_url`, expected `text`", from its JSON
  deserializer): an image, audio or file part sent to deepseek is the gateway's own 400
  (`code: unsupported_content`, `param: messages`) naming the part, before any upstream
  call. The other hosts take images for the models that read them (vllm, groq, xai,
  together, openrouter, cerebras, dashscope, databricks: model dependent), and a model
  that does not gets the host's own error.
- **Embeddings as base64** (what the openai SDK asks for by default): sent as asked to
  hosts that support `encoding_format: base64` (vllm, openrouter); the others
  (together, dashscope, databricks) get no `encoding_format` and the gateway encodes
  their float vectors (little-endian float32, base64). Any host that answers floats to
  a base64 request gets the same treatment.
- **Errors inside a stream** (OpenRouter: an event with `error` and `finish_reason:
  "error"`; any event with `error` and no choices) end the stream with an OpenAI error
  event; a stream that ends with neither `[DONE]` nor a finish reason is an error.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from providers import sse
from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    Reply,
    RouteType,
    UpstreamRequest,
    Usage,
    as_int,
    error_type_for,
    generic_error,
    json_body,
    preserve_url,
)
from providers.openai import OpenAI, OpenAIStream, usage_from_openai

CHAT, COMPLETIONS, EMBEDDINGS, PRESERVE = (
    RouteType.CHAT,
    RouteType.COMPLETIONS,
    RouteType.EMBEDDINGS,
    RouteType.PRESERVE,
)

#: OpenAI's operation paths, below a host's base URL
V1_PATHS: Mapping[RouteType, str] = {
    CHAT: "/v1/chat/completions",
    COMPLETIONS: "/v1/completions",
    EMBEDDINGS: "/v1/embeddings",
}

#: values that say nothing, for the neutral-field rules
_ZERO: tuple[Any, ...] = (None, 0, 0.0, False)


@dataclass(frozen=True, slots=True)
class Host:
    """One OpenAI-compatible API: everything that differs from OpenAI's own."""

    name: str
    #: scheme://host[/prefix] that the paths are appended to; None: upstream_url required
    base_url: str | None
    #: route type -> path below the base URL (the route types served, preserve aside)
    paths: Mapping[RouteType, str]
    #: whether the host's prompt_tokens counts the cached tokens too (`Provider.
    #: input_includes_cache`; stated per host, with the host's own semantics)
    input_includes_cache: bool
    #: the base URL's path for hosts without a fixed base URL (databricks)
    base_path: str = ""
    #: an example upstream_url for the config error of hosts without a base URL
    upstream_example: str = ""
    #: accepts stream_options.include_usage (injected); False: removed, the host reports
    #: usage in its last chunks by itself
    stream_usage: bool = True
    #: accepts `top_k`
    top_k: bool = False
    #: accepts `encoding_format: base64` for embeddings
    embeddings_base64: bool = True
    #: only knows `max_tokens` (a client's `max_completion_tokens` is renamed)
    max_tokens_only: bool = False
    #: rejects `name` on messages
    rejects_message_name: bool = False
    #: takes text content parts only (no vision model served): an image, audio or file
    #: part is the gateway's own clear 400, not the host's deserializer error
    text_only: bool = False
    #: fields it rejects, removed whatever their value
    drop: frozenset[str] = frozenset()
    #: fields it rejects, removed when their value is one of these (sent otherwise, so
    #: that the host's error tells the client)
    neutral: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The path of the base URL (e.g. Groq's /openai)."""
        if self.base_url:
            return urlsplit(self.base_url).path.rstrip("/")
        return self.base_path.rstrip("/")

    def full_path(self, route_type: RouteType) -> str:
        return self.prefix + self.paths[route_type]


HOSTS: tuple[Host, ...] = (
    Host(
        "vllm",
        None,
        V1_PATHS,
        # prompt_tokens is the whole prompt; prefix-cache hits are in
        # prompt_tokens_details.cached_tokens (with --enable-prompt-tokens-details)
        input_includes_cache=True,
        upstream_example="http://127.0.0.1:8000",
        top_k=True,
    ),
    Host(
        "deepseek",
        "https://api.deepseek.com",
        {CHAT: "/chat/completions", COMPLETIONS: "/beta/completions"},
        # prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens
        input_includes_cache=True,
        max_tokens_only=True,
        # 400 "unknown variant `image_url`, expected `text`" from the API itself
        text_only=True,
    ),
    Host(
        "xai",
        "https://api.x.ai",
        {CHAT: "/v1/chat/completions", COMPLETIONS: "/v1/completions"},
        # prompt_tokens counts prompt_tokens_details.cached_tokens too
        input_includes_cache=True,
    ),
    Host(
        "groq",
        "https://api.groq.com/openai",
        {CHAT: "/v1/chat/completions"},
        # prompt_tokens counts prompt_tokens_details.cached_tokens too
        input_includes_cache=True,
        rejects_message_name=True,
        neutral={
            "n": (None, 1),
            "logprobs": (None, False),
            "top_logprobs": (None, 0),
            "logit_bias": (None, {}),
        },
    ),
    Host(
        "together",
        "https://api.together.xyz",
        V1_PATHS,
        # prompt_tokens is the whole prompt (cached_tokens, where reported, among them)
        input_includes_cache=True,
        stream_usage=False,
        top_k=True,
        embeddings_base64=False,
        max_tokens_only=True,
    ),
    Host(
        "openrouter",
        "https://openrouter.ai/api",
        V1_PATHS,
        # prompt_tokens is the whole prompt: the cache reads (prompt_tokens_details.
        # cached_tokens) and the cache writes (cache_write_tokens) are parts of it
        input_includes_cache=True,
        top_k=True,
    ),
    Host(
        "cerebras",
        "https://api.cerebras.ai",
        {CHAT: "/v1/chat/completions", COMPLETIONS: "/v1/completions"},
        # prompt_tokens counts prompt_tokens_details.cached_tokens too
        input_includes_cache=True,
        stream_usage=False,
        drop=frozenset({"parallel_tool_calls", "service_tier"}),
        neutral={"frequency_penalty": _ZERO, "presence_penalty": _ZERO, "logit_bias": (None, {})},
    ),
    Host(
        "dashscope",
        "https://dashscope-intl.aliyuncs.com/compatible-mode",
        V1_PATHS,
        # prompt_tokens counts the cached_tokens (and the explicit cache's
        # cache_creation_input_tokens) of prompt_tokens_details
        input_includes_cache=True,
        top_k=True,
        embeddings_base64=False,
        max_tokens_only=True,
    ),
    Host(
        "databricks",
        None,
        {CHAT: "/chat/completions", COMPLETIONS: "/completions", EMBEDDINGS: "/embeddings"},
        # OpenAI's usage of the served model: prompt_tokens is the whole prompt
        input_includes_cache=True,
        base_path="/serving-endpoints",
        upstream_example="https://<workspace>.cloud.databricks.com/serving-endpoints",
        stream_usage=False,
        top_k=True,
        embeddings_base64=False,
        max_tokens_only=True,
    ),
)


# ---------------------------------------------------------------------------- URLs


def host_url(upstream_url: str | None, base_url: str | None, full_path: str) -> str:
    """The URL of an operation whose full path on the host is `full_path`.

    Without `upstream_url`: the base URL's origin and `full_path`. With it: its origin
    and `full_path` when its own path is empty or a leading part of `full_path` (whole
    segments), else `upstream_url` as written."""
    if not upstream_url:
        assert base_url, "a host without a base URL needs upstream_url"
        parts = urlsplit(base_url)
        return f"{parts.scheme}://{parts.netloc}{full_path}"
    parts = urlsplit(upstream_url)
    path = parts.path.rstrip("/")
    if path == "" or full_path == path or full_path.startswith(path + "/"):
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{parts.netloc}{full_path}{query}"
    return upstream_url


# --------------------------------------------------------------------------- usage


def usage_from_compatible(u: Any) -> Usage | None:
    """An OpenAI-shaped `usage` object of any of these hosts, normalized (see the module
    docstring): DeepSeek's cache hits, cache writes, xAI's separate reasoning tokens."""
    usage = usage_from_openai(u)
    if usage is None:
        return None
    if "prompt_cache_hit_tokens" in u or "prompt_cache_miss_tokens" in u:
        hits = as_int(u.get("prompt_cache_hit_tokens"))
        usage.cache_read_tokens = hits
        if not usage.prompt_tokens:
            usage.prompt_tokens = hits + as_int(u.get("prompt_cache_miss_tokens"))
    details = u.get("prompt_tokens_details")
    if isinstance(details, dict):
        usage.cache_write_tokens = as_int(details.get("cache_write_tokens")) or as_int(
            details.get("cache_creation_input_tokens")
        )
    reasoning = usage.reasoning_tokens
    total = as_int(u.get("total_tokens"))
    if reasoning and total == usage.prompt_tokens + usage.completion_tokens + reasoning:
        usage.completion_tokens += reasoning  # counted apart (xAI): OpenAI's include them
    cost = u.get("cost")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0:
        usage.reported_cost = float(cost)  # OpenRouter: what the call was billed
    return usage


# ---------------------------------------------------------------------- embeddings


def encode_base64(vector: list[Any]) -> str:
    """A float vector as OpenAI's base64 embedding: little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_reply(
    name: str, spec: CallSpec, data: dict[str, Any], body: bytes
) -> tuple[bytes, dict[str, Any]]:
    """The client's embeddings answer: the host's, with float vectors encoded when the
    client asked for base64 and the host answered floats."""
    items = data.get("data")
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("embedding"), (list, str)) for i in items
    ):
        raise ProviderError(502, f"{name}: an item of the answer's 'data' has no 'embedding'")
    wants_base64 = spec.body.get("encoding_format") == "base64"
    if not wants_base64 or not any(isinstance(i["embedding"], list) for i in items):
        return body, data
    try:
        encoded = [
            {**i, "embedding": encode_base64(i["embedding"])}
            if isinstance(i["embedding"], list)
            else i
            for i in items
        ]
    except struct.error:
        raise ProviderError(502, f"{name}: an embedding of the answer is not numbers") from None
    data = {**data, "data": encoded}
    return json.dumps(data).encode(), data


# -------------------------------------------------------------------------- streams


class CompatibleStream(OpenAIStream):
    """An OpenAI-format stream from an OpenAI-compatible host, passed through and watched.

    On top of `OpenAIStream`: errors inside the stream (an event with `error`, with or
    without choices) end it with an OpenAI error event; a stream that ends with neither
    `[DONE]` nor a finish reason is an error; usage is also read from Groq's
    `x_groq.usage` and normalized with `usage_fn`; a `choices: []` usage chunk is added
    when the client asked for usage and the host sent none of its own.
    """

    def __init__(
        self,
        spec: CallSpec,
        name: str,
        usage_fn: Callable[[Any], Usage | None] = usage_from_compatible,
    ) -> None:
        super().__init__(spec)
        self.name = name
        self._usage_fn = usage_fn
        self._done = False  # data: [DONE] seen
        self._failed = False  # an error event was emitted: nothing more is forwarded
        self._usage_sent = False  # a chunk with a top-level usage reached the client
        # chat and completions streams end with [DONE] or a finish reason and hold only
        # JSON; a preserve route may stream another API's events (e.g. /v1/responses)
        self._strict = spec.route_type is not PRESERVE

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.flush():
            if error is not None and not _is_json(ev.data):
                continue  # half an event, cut by the failure
            self._handle(ev, out)
        if not self._failed:
            if error is None and self._strict and not self._done and not self._finished():
                error = ProviderError(
                    502,
                    f"{self.name}: the upstream stream ended before the answer was complete "
                    "(no finish_reason and no [DONE])",
                )
            if error is not None:
                self._fail(error, out)
            elif self._wants_usage and not self._usage_sent and self.usage is not None:
                out.append(sse.encode(self._usage_chunk()))
        out.append(sse.DONE)
        return out

    # ---------------------------------------------------------------- internals

    def _handle(self, ev: sse.SSEEvent, out: list[bytes]) -> None:
        if self._failed:
            return
        data = ev.data
        if data == "[DONE]":
            self._done = True
            return  # re-emitted last by finish()
        try:
            obj = orjson.loads(data) if data else None
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            if ev.event == "error":
                self._fail(ProviderError(502, data or f"{self.name}: upstream stream error"), out)
            elif not self._strict:
                out.append(ev.raw)
            elif data:
                self._fail(
                    ProviderError(502, f"{self.name}: the upstream sent an event that is not JSON"),
                    out,
                )
            return
        choices = obj.get("choices")
        error = obj.get("error")
        if ev.event == "error" or (error is not None and (not choices or _errored(choices))):
            if isinstance(choices, list) and choices:
                self._absorb(obj, choices)  # what came with the error still counts
            self._fail(_stream_error(self.name, error if error is not None else obj), out)
            return
        self._observe(obj)
        usage = obj.get("usage")
        x_groq = obj.get("x_groq")
        native = usage or (x_groq.get("usage") if isinstance(x_groq, dict) else None)
        if isinstance(native, dict) and native:
            self.usage = self._usage_fn(native)  # running totals: set, never summed
        if isinstance(choices, list) and choices:
            self._absorb(obj, choices)
        elif usage and not self._wants_usage:
            return  # the usage chunk only the gateway asked for
        if usage:
            self._usage_sent = True
        out.append(ev.raw)

    def _observe(self, obj: dict[str, Any]) -> None:
        """A hook for host-specific fields of a chunk (Azure's filter results)."""

    def _fail(self, error: ProviderError, out: list[bytes]) -> None:
        self.error = error
        self._failed = True
        out.append(sse.encode(error.to_openai()))

    def _finished(self) -> bool:
        return any("finish_reason" in acc for acc in self._choices.values())

    def _usage_chunk(self) -> dict[str, Any]:
        assert self.usage is not None
        return {
            "id": self._head.get("id"),
            "object": "text_completion" if self._completions else "chat.completion.chunk",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": [],
            "usage": self.usage.to_openai(),
        }


def _is_json(data: str) -> bool:
    try:
        orjson.loads(data)
    except ValueError:
        return False
    return True


def _errored(choices: Any) -> bool:
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") == "error" for c in choices
    )


def _stream_error(name: str, err: Any) -> ProviderError:
    """An error object found inside a stream, as a ProviderError (its status when it
    gives one, as OpenRouter's numeric `code` does, else 502)."""
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
        if not isinstance(message, str) or not message:
            message = f"{name}: upstream stream error: {json.dumps(err)[:300]}"
        kind = err.get("type")
        return ProviderError(
            status,
            message,
            kind if _openai_type(kind) else error_type_for(status),
            code if isinstance(code, str) else None,
        )
    return ProviderError(502, str(err) if err else f"{name}: upstream stream error")


_TYPE = re.compile(r"^[a-z][a-z_]*$")


def readable(err: ProviderError, name: str) -> ProviderError:
    """`err` with a text message: an upstream error whose `message` is not a string
    (an object, a list, a number) is given as its JSON, an empty one says the status."""
    if not isinstance(err.message, str):
        err.message = json.dumps(err.message)[:500]
    if not err.message.strip():
        err.message = f"{name} upstream returned HTTP {err.status} with an empty error message"
    return err


def _openai_type(kind: Any) -> bool:
    """An error `type` in OpenAI's style (snake_case), not a class name or null."""
    return isinstance(kind, str) and bool(_TYPE.match(kind))


# ------------------------------------------------------------------------ provider


class OpenAICompatible(OpenAI):
    """The OpenAI adapter for one `Host`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.name = host.name
        self.default_base_url = host.base_url or ""
        self.route_types = frozenset(host.paths) | {PRESERVE}
        self.input_includes_cache = host.input_includes_cache

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        errors = super().config_errors(model, route_type, auth)
        options = getattr(model, "options", None)
        if self.host.base_url is None and not getattr(options, "upstream_url", None):
            errors.append(
                f"provider {self.name!r} has no default host: set model.options.upstream_url "
                f"(e.g. {self.host.upstream_example})"
            )
        return errors

    # ----------------------------------------------------------------- requests

    def url_for(self, spec: CallSpec) -> str:
        if spec.route_type is PRESERVE:
            return preserve_url(spec, self.default_base_url)
        return host_url(
            spec.options.upstream_url, self.host.base_url, self.host.full_path(spec.route_type)
        )

    def stream_usage(self, spec: CallSpec) -> bool:
        """Whether to ask the host for a usage chunk (`stream_options`)."""
        return self.host.stream_usage

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        if spec.route_type is PRESERVE:
            return super().build_request(spec)
        if spec.route_type not in self.host.paths:
            raise ProviderError(
                400,
                f"provider {self.name!r} cannot serve {spec.route_type}",
                "invalid_request_error",
            )
        body = self.request_body(spec)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if spec.stream else "application/json",
        }
        return UpstreamRequest("POST", self.url_for(spec), headers, json_body(body), spec.stream)

    def request_body(self, spec: CallSpec) -> dict[str, Any]:
        """The client's OpenAI body with the model set and this host's quirks applied."""
        host = self.host
        body = dict(spec.body)
        if spec.model:
            body["model"] = spec.model
        if not host.top_k:
            body.pop("top_k", None)
        for name in host.drop:
            body.pop(name, None)
        for name, values in host.neutral.items():
            if name in body and _is_neutral(body[name], values):
                del body[name]
        if spec.route_type is EMBEDDINGS:
            if not host.embeddings_base64 and body.get("encoding_format") == "base64":
                del body["encoding_format"]  # floats come back and are encoded here
            body.pop("stream", None)
            body.pop("stream_options", None)
            return body
        if spec.stream:
            body["stream"] = True
            if self.stream_usage(spec):
                options = body.get("stream_options")
                body["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
            else:
                body.pop("stream_options", None)
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        if host.max_tokens_only and "max_completion_tokens" in body:
            value = body.pop("max_completion_tokens")
            body.setdefault("max_tokens", value)
        if host.text_only:
            _check_text_only(self.name, body.get("messages"))
        if host.rejects_message_name and isinstance(body.get("messages"), list):
            body["messages"] = [
                {k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m
                for m in body["messages"]
            ]
        return body

    # ------------------------------------------------------------------ answers

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        reply = super().parse_response(spec, status, headers, body)
        if spec.route_type is EMBEDDINGS:
            reply.body, reply.data = embeddings_reply(self.name, spec, reply.data, reply.body)
        return reply

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        err = readable(generic_error(self.name, status, headers, body), self.name)
        try:
            data = json.loads(body)
        except ValueError:
            return err
        inner = data.get("error") if isinstance(data, dict) else None
        if not isinstance(inner, dict):
            inner = data if isinstance(data, dict) and "message" in data else None
        if isinstance(inner, dict):
            if _openai_type(inner.get("type")):
                err.type = inner["type"]
            code = inner.get("code")
            err.code = code if isinstance(code, (str, int)) and not isinstance(code, bool) else None
            param = inner.get("param")
            err.param = param if isinstance(param, str) and param else None
        return err

    def stream_translator(self, spec: CallSpec) -> CompatibleStream:
        return CompatibleStream(spec, self.name)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return usage_from_compatible(data.get("usage"))


def _check_text_only(name: str, messages: Any) -> None:
    """A 400 naming the first content part that is not text, for a text-only host."""
    for i, m in enumerate(messages if isinstance(messages, list) else ()):
        content = m.get("content") if isinstance(m, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ProviderError(
                    400,
                    f"provider {name!r} takes text only: messages[{i}].content[{j}] is "
                    f"{'an' if str(kind)[:1] in 'aeiou' else 'a'} {kind!r} part ({name} "
                    "serves no model that reads images, audio or files)",
                    "invalid_request_error",
                    "unsupported_content",
                    "messages",
                )


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    """`value` is one of `neutral` (True is not 1, 0 is 0.0)."""
    for n in neutral:
        if n is None or isinstance(n, bool) or isinstance(value, bool):
            if value is n:
                return True
        elif value == n:
            return True
    return False


PROVIDERS: list[Provider] = [OpenAICompatible(h) for h in HOSTS]
