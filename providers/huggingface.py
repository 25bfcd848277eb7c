"""Hugging Face: Inference Providers (the router), the HF Inference API, TGI and TEI.

Three upstream forms, one per route type, all authenticated with the route's
`Authorization: Bearer hf_...` (added by the gateway):

- **Chat** (`llm/v1/chat`) uses the OpenAI-compatible Messages API:
  `POST https://router.huggingface.co/v1/chat/completions` with the model in the body
  (Inference Providers, what Kong's newer releases use), or `/v1/chat/completions` of a
  TGI server or an Inference Endpoint (`upstream_url`). The body is OpenAI's, built by
  the OpenAI adapter (`stream_options.include_usage` is asked for on every stream: TGI
  >= 2.2 and the router's providers honour it; older TGI ignores it and reports no
  usage, which the recorder then estimates). Tools and image content parts pass through
  as OpenAI sends them.
- **Completions** (`llm/v1/completions`) use the classic text-generation task, as Kong
  does: `POST https://router.huggingface.co/hf-inference/models/{model}` (the HF
  Inference API; its old host api-inference.huggingface.co is retired) with
  `{"inputs", "parameters", "options", "stream"}`, or TGI's own `/generate` and
  `/generate_stream` routes on a server (the same body, without the `stream` flag those
  two routes do not take). The answer (`[{"generated_text", "details"}]`, TGI's single
  object, or TGI's token SSE stream) becomes an OpenAI `text_completion`.
- **Embeddings** (`llm/v1/embeddings`) use the feature-extraction task:
  `POST https://router.huggingface.co/hf-inference/models/{model}/pipeline/feature-extraction`
  with `{"inputs": [...]}`, or a TEI server's `/embed` (the same body and answer). The
  inputs always go as a list, so the answer is one vector per input; a model without a
  pooling layer answers one vector per token instead, and those are **mean-pooled**
  into one vector per input (the pooling sentence-transformers uses for most models).
  HF reports no token count: usage is estimated.

`upstream_url` says which of the two kinds of upstream the route talks to:

- **The router** (no `upstream_url`; a `huggingface.co` host by its origin or `/v1`; or a
  mirror of the router given with its task path, `https://mirror.example/hf-inference`,
  whose root is what comes before): the paths above.
- **A server of its own** (TGI, TEI, an Inference Endpoint), given by its base URL: a
  bare origin (`http://tgi:8080`) or the `/v1` base URL Hugging Face documents for
  Inference Endpoints (`https://<ep>.endpoints.huggingface.cloud/v1/`). Chat goes to
  its `/v1/chat/completions`, completions to TGI's `/generate` (`/generate_stream` for
  streams), embeddings to TEI's `/embed`.
- **Any other path is used as written** (Kong's rule), e.g. a model's task URL on
  another host, or a TEI `/embed` behind a proxy. A TGI `/generate` path follows the
  stream flag (`/generate_stream` for streams, and the other way round).

`llm_format: huggingface` passes clients of Hugging Face's own APIs through (Kong's
native format): TGI's `/generate` and `/generate_stream` (sent to the model's
text-generation URL with the `stream` flag, or to a TGI `upstream_url` as they are;
`/generate` gets TGI's single object back, not the task's one-element list), the
task API's `/models/{model}...` and `/hf-inference/models/{model}...` paths (the
model swapped for the configured one), and `/v1/chat/completions`. Usage and the
answer are read for the call record.

Conventions where the two APIs differ:

- **Options.** `model.options.huggingface.use_cache` / `wait_for_model` are sent as the
  `x-use-cache` / `x-wait-for-model` headers the router documents, on every form; the
  classic text-generation body also carries them in its `options` object (the old
  Inference API's place). Nothing is sent when they are not configured.
- **Sampling (completions).** `max_tokens` -> `max_new_tokens`; `temperature: 0` means
  greedy decoding (`do_sample: false`, no temperature: TGI rejects 0); another
  temperature is sent with `do_sample: true`; `top_p` is sent when strictly between 0
  and 1 (TGI's range; 1 means no nucleus filtering); `top_k` and `seed` when positive;
  `stop` as a list; `frequency_penalty`; `echo` -> `return_full_text` (false otherwise).
  `details: true` is always asked for: it gives the finish reason and the token
  counts. `presence_penalty`, `logprobs`, `suffix` and `user` have no TGI counterpart
  and are not sent; `n`/`best_of` above 1 are a 400 (the task returns one text).
- **Stop sequences.** TGI leaves the stop sequence that ended the text at its end;
  OpenAI does not, so it is removed (in streams, text that may be the start of a stop
  sequence is held back until it is known not to be).
- **Finish reasons.** TGI's `eos_token` and `stop_sequence` are `stop`, `length` is
  `length` (Kong answers `complete`, which no OpenAI client knows). A chat answer with
  tool calls finishes with `tool_calls`. A classic answer without `details` says `stop`.
- **Usage.** Chat: the upstream's OpenAI usage (prompt tokens include cached ones, as
  OpenAI counts them). Completions: TGI's `x-prompt-tokens` / `x-generated-tokens`
  headers, else `details` (`input_length` + `generated_tokens` in a stream); when only
  `generated_tokens` is known the prompt is estimated and the usage marked estimated.
  Nothing reported: None, and the recorder estimates.
- **TGI's chat quirks** are smoothed over: an empty `id` gets one, `object` is OpenAI's,
  tool-call `arguments` sent as a JSON object become a string, and a streamed tool call
  repeating its id and name in every chunk carries them in its first delta only.
- **Errors.** `{"error": "..."}`, `{"error": ["...", ...]}`, TGI's `{"error",
  "error_type"}` (the type becomes the OpenAI `code`), axum's `{"message"}` and the
  router's OpenAI-shaped errors keep the upstream status and message. A model still
  loading (`503 {"error": "Model X is currently loading", "estimated_time": 20.5}`) is a
  503 whose message gives the estimated time, with `Retry-After: 21` for the client.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import secrets
import struct
import time
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

import orjson

from providers import sse
from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    Reply,
    RouteType,
    StreamTranslator,
    UpstreamRequest,
    Usage,
    as_int,
    compact_json,
    error_type_for,
    estimate_tokens,
    generic_error,
    json_body,
    new_completion_id,
    preserve_url,
)
from providers.openai import PROVIDER as OPENAI
from providers.openai import OpenAIStream, usage_from_openai
from providers.openai_compatible import host_url, readable

NAME = "huggingface"
DEFAULT_BASE_URL = "https://router.huggingface.co"
CHAT_PATH = "/v1/chat/completions"

#: TGI / OpenAI-compatible finish reasons -> OpenAI's
FINISH_REASONS = {
    "eos_token": "stop",
    "stop_sequence": "stop",
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "function_call",
    "content_filter": "content_filter",
}


def _bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _finish(reason: Any) -> str | None:
    if not isinstance(reason, str) or not reason:
        return None
    return FINISH_REASONS.get(reason, reason)


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except ValueError:
        return None


# ------------------------------------------------------------------------- URLs


def _model_path(model: str | None) -> str:
    if not model:
        raise _bad("huggingface needs a model name (none configured or sent)", "model")
    return quote(model.strip("/"), safe="/-._~@")


#: the path of a router (or a mirror of it) below which its task API lives
ROUTER_TASKS = "/hf-inference"


def _origin(parts: SplitResult) -> str:
    return f"{parts.scheme}://{parts.netloc}"


def router_root(upstream_url: str | None) -> str | None:
    """The root of the Inference Providers router `upstream_url` points at (None: it
    points at a server of its own, TGI, TEI or an Inference Endpoint).

    No upstream_url is the router; so is a huggingface.co host given by its origin or
    the `/v1` base URL Hugging Face documents for OpenAI clients, and a URL whose path
    ends in `/hf-inference` (a mirror of the router: its root is what comes before)."""
    if not upstream_url:
        return DEFAULT_BASE_URL
    parts = urlsplit(upstream_url)
    path = parts.path.rstrip("/")
    host = (parts.hostname or "").lower()
    if path in ("", "/v1") and (host == "huggingface.co" or host.endswith(".huggingface.co")):
        return _origin(parts)
    if path.endswith(ROUTER_TASKS):
        return _origin(parts) + path.removesuffix(ROUTER_TASKS)
    return None


def _server_root(upstream_url: str) -> str | None:
    """The origin of a self-hosted server given as its base URL: a bare origin, or the
    `/v1` base URL Hugging Face documents for Inference Endpoints (TGI and TEI serve
    their own routes at the root); None for any other path (used as written)."""
    parts = urlsplit(upstream_url)
    return _origin(parts) if parts.path.rstrip("/") in ("", "/v1") else None


def _chat_url(spec: CallSpec) -> str:
    upstream = spec.options.upstream_url
    root = router_root(upstream)
    if root is not None:
        return root + CHAT_PATH
    # a server's base URL (`http://tgi:8080`, `https://<ep>.endpoints.huggingface.cloud/v1/`)
    # is completed as vllm's is; any other path is used as written
    return host_url(upstream, None, CHAT_PATH)


def _text_generation_url(spec: CallSpec) -> str:
    """The classic text-generation URL: the router's task API, a server's TGI
    `/generate` (`/generate_stream` for streams), or `upstream_url` as written (a TGI
    `/generate` path follows the stream flag)."""
    upstream = spec.options.upstream_url
    root = router_root(upstream)
    if root is not None:
        return f"{root}{ROUTER_TASKS}/models/{_model_path(spec.model)}"
    assert upstream is not None
    server = _server_root(upstream)
    if server is not None:
        return server + ("/generate_stream" if spec.stream else "/generate")
    parts = urlsplit(upstream)
    path = parts.path.rstrip("/")
    if spec.stream and path.endswith("/generate"):
        path += "_stream"
    elif not spec.stream and path.endswith("/generate_stream"):
        path = path.removesuffix("_stream")
    return urlunsplit(parts._replace(path=path))


def _tgi_native_route(url: str) -> bool:
    """TGI's `/generate` and `/generate_stream` take no `stream` flag."""
    return urlsplit(url).path.rstrip("/").endswith(("/generate", "/generate_stream"))


def _embeddings_url(spec: CallSpec) -> str:
    """The router's feature-extraction task, a server's TEI `/embed`, or `upstream_url`
    as written."""
    upstream = spec.options.upstream_url
    root = router_root(upstream)
    if root is not None:
        return f"{root}{ROUTER_TASKS}/models/{_model_path(spec.model)}/pipeline/feature-extraction"
    assert upstream is not None
    server = _server_root(upstream)
    return server + "/embed" if server is not None else upstream


def _option_headers(spec: CallSpec) -> dict[str, str]:
    hf = spec.options.huggingface
    headers: dict[str, str] = {}
    if hf is not None and hf.use_cache is not None:
        headers["x-use-cache"] = "true" if hf.use_cache else "false"
    if hf is not None and hf.wait_for_model is not None:
        headers["x-wait-for-model"] = "true" if hf.wait_for_model else "false"
    return headers


# ----------------------------------------------------- completions: the request


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _bad(
            "huggingface text-generation takes one prompt: 'prompt' must be a string "
            "(or an array of one string)",
            "prompt",
        )
    return prompt


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return []
    return [s for s in stop if isinstance(s, str) and s]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_generation_body(spec: CallSpec, url: str) -> dict[str, Any]:
    """The classic text-generation body for an OpenAI completions request."""
    body = spec.body
    for key in ("n", "best_of"):
        value = body.get(key)
        if isinstance(value, int) and value > 1:
            raise _bad(
                f"huggingface text-generation returns one completion: '{key}' must be 1", key
            )
    params: dict[str, Any] = {}
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        params["max_new_tokens"] = max_tokens
    temperature = body.get("temperature")
    if _number(temperature):
        if temperature <= 0:
            params["do_sample"] = False  # greedy: TGI rejects a temperature of 0
        else:
            params["temperature"] = temperature
            params["do_sample"] = True
    top_p = body.get("top_p")
    if _number(top_p) and 0 < top_p < 1:
        params["top_p"] = top_p
    for key in ("top_k", "seed"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            params[key] = value
    penalty = body.get("frequency_penalty")
    if _number(penalty) and penalty:
        params["frequency_penalty"] = penalty
    stops = _stops(body)
    if stops:
        params["stop"] = stops
    params["return_full_text"] = bool(body.get("echo")) and not spec.stream
    params["details"] = True
    out: dict[str, Any] = {"inputs": _prompt(body), "parameters": params}
    hf = spec.options.huggingface
    options = {
        key: getattr(hf, key)
        for key in ("use_cache", "wait_for_model")
        if hf is not None and getattr(hf, key) is not None
    }
    if options:
        out["options"] = options
    if spec.stream and not _tgi_native_route(url):
        out["stream"] = True
    return out


# ------------------------------------------------------ completions: the answer


def _strip_stop(text: str, stops: list[str]) -> str:
    """`text` without the stop sequence TGI left at its end (the longest that matches)."""
    for stop in sorted(stops, key=len, reverse=True):
        if text.endswith(stop):
            return text[: -len(stop)]
    return text


def _usage_from_details(
    details: Any, prompt: str, headers: dict[str, str] | None = None
) -> Usage | None:
    """TGI's token counts: the response headers, else `details`; a prompt count that is
    missing is estimated (and the usage marked so)."""
    headers = headers or {}
    prompt_hdr, generated_hdr = headers.get("x-prompt-tokens"), headers.get("x-generated-tokens")
    if prompt_hdr and generated_hdr and prompt_hdr.isdigit() and generated_hdr.isdigit():
        return Usage(prompt_tokens=int(prompt_hdr), completion_tokens=int(generated_hdr))
    if not isinstance(details, dict) or not isinstance(details.get("generated_tokens"), int):
        return None
    generated = as_int(details.get("generated_tokens"))
    input_length = details.get("input_length")
    if isinstance(input_length, int) and not isinstance(input_length, bool):
        return Usage(prompt_tokens=input_length, completion_tokens=generated)
    return Usage(estimate_tokens(prompt), generated, estimated=True)


def _completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def text_completion(
    spec: CallSpec, data: Any, headers: dict[str, str]
) -> tuple[dict, Usage | None]:
    """`[{"generated_text", "details"}]` (or TGI `/generate`'s single object) as an OpenAI
    text_completion, with its usage."""
    item = data[0] if isinstance(data, list) and data else data
    if not isinstance(item, dict) or not isinstance(item.get("generated_text"), str):
        raise ProviderError(502, "huggingface: the upstream answer has no 'generated_text'")
    details = item.get("details") if isinstance(item.get("details"), dict) else {}
    raw_reason = details.get("finish_reason")
    text = item["generated_text"]
    if raw_reason == "stop_sequence":
        text = _strip_stop(text, _stops(spec.body))
    prompt = _prompt(spec.body)
    answer: dict[str, Any] = {
        "id": _completion_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": spec.model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": _finish(raw_reason) or "stop",
            }
        ],
    }
    usage = _usage_from_details(details or None, prompt, headers)
    if usage is not None:
        answer["usage"] = usage.to_openai()
    return answer, usage


# ------------------------------------------------------------- chat: the answer


def _fix_tool_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    fn = call.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("arguments"), (dict, list)):
        call = {**call, "function": {**fn, "arguments": compact_json(fn["arguments"])}}
    if not call.get("id"):
        call = {**call, "id": f"call_{secrets.token_hex(12)}"}
    if not call.get("type"):
        call = {**call, "type": "function"}
    return call


def chat_completion(data: dict[str, Any], spec: CallSpec) -> dict[str, Any]:
    """An OpenAI-compatible chat answer with TGI's quirks smoothed over."""
    out = dict(data)
    if not out.get("id"):
        out["id"] = new_completion_id()
    out["object"] = "chat.completion"
    if not out.get("model"):
        out["model"] = spec.model
    choices = []
    for choice in data["choices"]:
        if not isinstance(choice, dict):
            continue
        choice = dict(choice)
        message = choice.get("message")
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if isinstance(calls, list) and calls:
            choice["message"] = {**message, "tool_calls": [_fix_tool_call(c) for c in calls]}
        reason = _finish(choice.get("finish_reason"))
        if calls and reason == "stop":
            reason = "tool_calls"
        choice["finish_reason"] = reason
        choices.append(choice)
    out["choices"] = choices
    return out


# --------------------------------------------------------------------- errors


def _message_of(err: Any) -> str | None:
    if isinstance(err, str) and err:
        return err
    if isinstance(err, list):
        parts = [str(e) for e in err if e]
        return "; ".join(parts) or None
    if isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"]:
        return err["message"]
    return None


def error_from(
    status: int, data: Any, headers: dict[str, str] | None = None
) -> ProviderError | None:
    """A Hugging Face error body as a ProviderError (None if `data` is not one)."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    message = _message_of(err)
    if message is None:
        if isinstance(data.get("message"), str) and data["message"]:
            message = data["message"]  # axum's JSON rejection ({"message": ...})
        elif isinstance(data.get("detail"), str) and data["detail"]:
            message = data["detail"]
        else:
            return None
    out = ProviderError(status, message, error_type_for(status))
    if isinstance(err, dict):  # the router's OpenAI-shaped error
        if isinstance(err.get("type"), str) and err["type"]:
            out.type = err["type"]
        code, param = err.get("code"), err.get("param")
        out.code = code if isinstance(code, (str, int)) and not isinstance(code, bool) else None
        out.param = param if isinstance(param, str) and param else None
    elif isinstance(data.get("error_type"), str):  # TGI
        out.code = data["error_type"]
    estimated = data.get("estimated_time")
    if _number(estimated) and estimated >= 0:
        wait = max(1, math.ceil(estimated))
        out.message = (
            f"{message} (estimated time {estimated:.1f} s): retry in {wait} s, or set "
            "model.options.huggingface.wait_for_model to have Hugging Face wait for it"
        )
        out.code = out.code or "model_loading"
        if "retry-after" not in {k.lower() for k in (headers or {})}:
            out.headers = {"retry-after": str(wait)}
    return out


# ------------------------------------------------------------------ streams


class _StreamBase:
    """SSE decoding, failing once, and the end of the stream."""

    def __init__(self, spec: CallSpec) -> None:
        self._dec = sse.SSEDecoder()
        self._wants_usage = spec.client_wants_usage
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self._ended = False  # an error event went out: nothing more does
        self._complete = False  # the upstream said the answer is whole

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.feed(data):
            if not self._ended:
                self._event(ev, out)
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.flush():
            if self._ended or (error is not None and _loads(ev.data) is None):
                continue  # half an event, cut by the failure
            self._event(ev, out)
        if not self._ended:
            if not self._complete:
                self._fail(
                    error
                    or ProviderError(
                        502,
                        "huggingface: the upstream stream ended before the answer was complete",
                        "api_error",
                        "upstream_truncated",
                    ),
                    out,
                )
            else:
                self._end(out)
        out.append(sse.DONE)
        return out

    def _fail(self, err: ProviderError, out: list[bytes]) -> None:
        self.error = err
        self._ended = True
        out.append(sse.encode(err.to_openai()))

    def _stream_error(self, obj: Any, data: str) -> ProviderError:
        err = error_from(502, obj) if isinstance(obj, dict) else None
        if err is None:
            err = ProviderError(502, data or "huggingface: upstream stream error", "api_error")
        inner = obj.get("error") if isinstance(obj, dict) else None
        status = inner.get("http_status_code") if isinstance(inner, dict) else None
        if isinstance(status, int) and 400 <= status < 600:  # TGI's OpenAI error events
            err.status = status
            err.type = error_type_for(status)
        return err

    def _event(self, ev: sse.SSEEvent, out: list[bytes]) -> None:
        raise NotImplementedError

    def _end(self, out: list[bytes]) -> None:
        """The answer is whole: anything held back goes out."""


class ChatStream(_StreamBase):
    """OpenAI-compatible chat SSE (the router, TGI) re-emitted as clean OpenAI chunks.

    Chunks are re-encoded where TGI departs from OpenAI (empty ids, `object`, finish
    reasons, tool-call ids and names repeated in every delta); an OpenAIStream keeps the
    running answer for `assembled()`.
    """

    def __init__(self, spec: CallSpec) -> None:
        super().__init__(spec)
        self._acc = OpenAIStream(spec)
        self._id = new_completion_id()
        self._model = spec.model
        self._created: int | None = None
        self._calls_seen: set[tuple[int, int]] = set()
        self._usage_sent = False

    def _event(self, ev: sse.SSEEvent, out: list[bytes]) -> None:
        data = ev.data
        if data == "[DONE]":
            self._complete = True
            return
        obj = _loads(data)
        if ev.event == "error" or (
            isinstance(obj, dict) and "error" in obj and not obj.get("choices")
        ):
            self._fail(self._stream_error(obj, data), out)
            return
        if not isinstance(obj, dict):
            self._fail(
                ProviderError(
                    502, f"huggingface: the upstream sent an event that is not JSON: {data[:80]!r}"
                ),
                out,
            )
            return
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage:
            self.usage = usage_from_openai(usage)
        choices = obj.get("choices")
        if isinstance(choices, list) and choices:
            obj = self._normalize(obj, choices)
            self._acc._absorb(obj, obj["choices"])
            self.started = self.started or self._acc.started
            out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
            if any(isinstance(c, dict) and c.get("finish_reason") for c in obj["choices"]):
                self._complete = True  # [DONE] may still follow
        elif isinstance(usage, dict) and usage and self._wants_usage:
            self._usage_sent = True
            out.append(b"data: " + orjson.dumps(self._head_of(obj)) + b"\n\n")

    def _head_of(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` with OpenAI's id, object, created and model (the same on every chunk)."""
        obj = dict(obj)
        if obj.get("id"):
            self._id = obj["id"]
        obj["id"] = self._id
        obj["object"] = "chat.completion.chunk"
        if self._created is None:
            created = obj.get("created")
            self._created = created if isinstance(created, int) else int(time.time())
        obj["created"] = self._created
        if isinstance(obj.get("model"), str) and obj["model"]:
            self._model = obj["model"]
        obj["model"] = self._model
        return obj

    def _normalize(self, obj: dict[str, Any], choices: list[Any]) -> dict[str, Any]:
        obj = self._head_of(obj)
        fixed = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            choice = dict(choice)
            index = as_int(choice.get("index"))
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("tool_calls"), list):
                choice["delta"] = {
                    **delta,
                    "tool_calls": [
                        self._call_delta(index, call)
                        for call in delta["tool_calls"]
                        if isinstance(call, dict)
                    ],
                }
            reason = _finish(choice.get("finish_reason"))
            if reason == "stop" and any(k[0] == index for k in self._calls_seen):
                reason = "tool_calls"
            choice["finish_reason"] = reason
            fixed.append(choice)
        obj["choices"] = fixed
        return obj

    def _call_delta(self, choice: int, call: dict[str, Any]) -> dict[str, Any]:
        key = (choice, as_int(call.get("index")))
        call = dict(call)
        given = call.get("function")
        fn = dict(given) if isinstance(given, dict) else {}
        if isinstance(fn.get("arguments"), (dict, list)):
            fn["arguments"] = compact_json(fn["arguments"])
        if key in self._calls_seen:
            # id, type and name belong to the first delta of a call only
            call.pop("id", None)
            call.pop("type", None)
            fn.pop("name", None)
        else:
            self._calls_seen.add(key)
            call["index"] = key[1]
            if not call.get("id"):
                call["id"] = f"call_{secrets.token_hex(12)}"
            call["type"] = "function"
        call["function"] = fn
        return call

    def _end(self, out: list[bytes]) -> None:
        if self._wants_usage and not self._usage_sent and self.usage is not None:
            # the upstream put its usage on a content chunk: OpenAI's own final chunk
            head = self._head_of({})
            head.update(choices=[], usage=self.usage.to_openai())
            out.append(b"data: " + orjson.dumps(head) + b"\n\n")

    def assembled(self) -> dict[str, Any]:
        self._acc.usage = self.usage
        out = self._acc.assembled()
        out["id"] = out.get("id") or self._id
        out["model"] = out.get("model") or self._model
        out["created"] = out.get("created") or self._created
        return out


class TextGenerationStream(_StreamBase):
    """TGI's token SSE (`{"token": {"text", "special"}, "generated_text", "details"}`,
    no `[DONE]`) -> OpenAI `text_completion` chunks."""

    def __init__(self, spec: CallSpec) -> None:
        super().__init__(spec)
        self._id = _completion_id()
        self._created = int(time.time())
        self._model = spec.model
        body = spec.body if isinstance(spec.body, dict) else {}
        self._stops = _stops(body)
        prompt = body.get("prompt", body.get("inputs"))  # `inputs`: a native request
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        self._prompt = prompt if isinstance(prompt, str) else ""
        self._echo = bool(body.get("echo")) and bool(self._prompt)
        self._pending = ""  # text that may be the start of a stop sequence
        self._parts: list[str] = []
        self.finish_reason: str | None = None

    def _chunk(self, text: str, finish: str | None = None) -> bytes:
        obj = {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _held(self) -> int:
        """How many trailing characters of the pending text could begin a stop sequence."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop), len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._echo:
            self._echo = False
            self._emit(self._prompt, out)
        self._pending += text
        keep = self._held()
        ready = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        if ready:
            self._emit(ready, out)

    def _emit(self, text: str, out: list[bytes]) -> None:
        self.started = True
        self._parts.append(text)
        out.append(self._chunk(text))

    def _event(self, ev: sse.SSEEvent, out: list[bytes]) -> None:
        if self._complete:
            return
        data = ev.data
        if data == "[DONE]":
            return
        obj = _loads(data)
        if ev.event == "error" or (isinstance(obj, dict) and "error" in obj):
            self._fail(self._stream_error(obj, data), out)
            return
        if not isinstance(obj, dict):
            self._fail(
                ProviderError(
                    502, f"huggingface: the upstream sent an event that is not JSON: {data[:80]!r}"
                ),
                out,
            )
            return
        token = obj.get("token")
        if isinstance(token, dict) and not token.get("special"):
            text = token.get("text")
            if isinstance(text, str) and text:
                self._text(text, out)
        details = obj.get("details")
        if isinstance(obj.get("generated_text"), str) or isinstance(details, dict):
            self._final(details if isinstance(details, dict) else {}, out)

    def _final(self, details: dict[str, Any], out: list[bytes]) -> None:
        raw = details.get("finish_reason")
        if raw == "stop_sequence":
            self._pending = _strip_stop(self._pending, self._stops)
        self.finish_reason = _finish(raw) or "stop"
        if self._echo:  # nothing was generated
            self._echo = False
            self._emit(self._prompt, out)
        if self._pending:
            self.started = True
            self._parts.append(self._pending)
        out.append(self._chunk(self._pending, self.finish_reason))
        self._pending = ""
        self.usage = _usage_from_details(details or None, self._prompt)
        if self._wants_usage and self.usage is not None:
            obj = {
                "id": self._id,
                "object": "text_completion",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": self.usage.to_openai(),
            }
            out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
        self._complete = True

    def assembled(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(self._parts),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out


# ---------------------------------------------------------------------- embeddings


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    data = body.get("input")
    items = [data] if isinstance(data, str) else data
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t for t in items):
        raise _bad(
            "huggingface feature-extraction embeds text: 'input' must be a string or an "
            "array of strings (token arrays are not supported)",
            "input",
        )
    return items


def _depth(value: Any) -> int:
    """How deeply lists nest in `value` (following first elements): [0.1] is 1."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def _vector(values: Any) -> list[float]:
    if not isinstance(values, list) or not values or not all(_number(v) for v in values):
        raise ProviderError(502, "huggingface: an embedding in the answer is not a list of numbers")
    return values


def _mean_pool(tokens: Any) -> list[float]:
    """One vector from per-token vectors: their mean.

    Column sums by `map(sum, zip(*rows))`, so that the per-number work runs in C: an
    answer of 32 inputs x 256 tokens x 768 dimensions pools in about 0.1 s, where a
    type check of every number in Python took over 1 s of the event loop's time. A
    value that is not a number fails the sum, and rows of different sizes fail the
    strict zip (a 502 either way)."""
    if not isinstance(tokens, list) or not tokens:
        raise ProviderError(502, "huggingface: an embedding in the answer has no token vectors")
    first = tokens[0]
    if not isinstance(first, list) or not first:
        raise ProviderError(502, "huggingface: an embedding in the answer is not a list of numbers")
    count = len(tokens)
    try:
        return [total / count for total in map(sum, zip(*tokens, strict=True))]
    except ValueError:
        raise ProviderError(
            502, "huggingface: the token vectors of an embedding differ in size"
        ) from None
    except TypeError:
        raise ProviderError(
            502, "huggingface: an embedding in the answer is not a list of numbers"
        ) from None


def embedding_vectors(data: Any, count: int) -> list[list[float]]:
    """Feature-extraction output for `count` inputs as one vector per input."""
    if not isinstance(data, list) or not data:
        raise ProviderError(502, "huggingface: the upstream answer is not a list of embeddings")
    depth = _depth(data)
    if depth == 1 and count == 1:  # one input answered with a bare vector
        vectors = [_vector(data)]
    elif depth == 2 and count == 1 and len(data) > 1:
        vectors = [_mean_pool(data)]  # the token vectors of the one input, unbatched
    elif depth == 2:
        vectors = [_vector(v) for v in data]
    elif depth == 3:  # per-token vectors (a model without pooling): mean-pooled
        vectors = [_mean_pool(tokens) for tokens in data]
    elif depth == 4 and all(isinstance(b, list) and len(b) == 1 for b in data):
        vectors = [_mean_pool(b[0]) for b in data]  # transformers' [1, tokens, dim] per input
    else:
        raise ProviderError(
            502, f"huggingface: unexpected feature-extraction answer (lists nested {depth} deep)"
        )
    if len(vectors) != count:
        raise ProviderError(
            502, f"huggingface: the upstream answered {len(vectors)} embeddings for {count} inputs"
        )
    return vectors


def _encode_vector(values: list[float], encoding: Any) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embeddings_answer(data: Any, spec: CallSpec) -> tuple[dict[str, Any], Usage]:
    texts = _embedding_inputs(spec.body)
    vectors = embedding_vectors(data, len(texts))
    encoding = spec.body.get("encoding_format")
    usage = Usage(prompt_tokens=sum(estimate_tokens(t) for t in texts), estimated=True)
    out = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "model": spec.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return out, usage


# ---------------------------------------------------------------------- provider


class HuggingFace(Provider):
    name = NAME
    default_base_url = DEFAULT_BASE_URL
    route_types = frozenset(
        {RouteType.CHAT, RouteType.COMPLETIONS, RouteType.EMBEDDINGS, RouteType.PRESERVE}
    )
    native_format = "huggingface"
    # chat: the router's and TGI's OpenAI usage (prompt_tokens counts cached tokens too);
    # text-generation: TGI's input_length / x-prompt-tokens, the whole prompt (no cache)
    input_includes_cache = True

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        headers = _option_headers(spec)
        if spec.route_type is RouteType.PRESERVE:
            url = preserve_url(spec, self.default_base_url)
            return UpstreamRequest(spec.method, url, headers, spec.raw_body, spec.stream)
        if spec.route_type is RouteType.CHAT:
            up = OPENAI.build_request(spec)  # OpenAI's body: model, stream_options, ...
            up.url = _chat_url(spec)
            up.headers.update(headers)
            return up
        headers["content-type"] = "application/json"
        if spec.route_type is RouteType.EMBEDDINGS:
            if spec.body.get("dimensions") is not None:
                raise _bad(
                    "huggingface feature-extraction cannot change the size of an embedding: "
                    "remove 'dimensions'",
                    "dimensions",
                )
            body = {"inputs": _embedding_inputs(spec.body)}
            return UpstreamRequest("POST", _embeddings_url(spec), headers, json_body(body))
        url = _text_generation_url(spec)
        body = text_generation_body(spec, url)
        headers["accept"] = "text/event-stream" if spec.stream else "application/json"
        return UpstreamRequest("POST", url, headers, json_body(body), spec.stream)

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        data = _loads(body)
        if spec.route_type is RouteType.PRESERVE:
            obj = data if isinstance(data, dict) else {}
            model = obj.get("model")
            return Reply(body, obj, self.usage_from(obj), model if isinstance(model, str) else None)
        if data is None and body.lstrip().startswith((b"data:", b":")):
            return self._from_stream_body(spec, body)  # a stream where none was asked
        if isinstance(data, dict) and "error" in data and not data.get("choices"):
            raise error_from(502, data) or ProviderError(502, "huggingface: upstream error")
        if spec.route_type is RouteType.EMBEDDINGS:
            out, usage = embeddings_answer(data, spec)
            return Reply(orjson.dumps(out), out, usage, spec.model)
        if spec.route_type is RouteType.COMPLETIONS:
            answer, usage = text_completion(spec, data, headers)
            return Reply(orjson.dumps(answer), answer, usage, spec.model)
        if not isinstance(data, dict):
            raise ProviderError(502, "huggingface: the upstream answer is not a JSON object")
        if not isinstance(data.get("choices"), list):
            raise ProviderError(502, "huggingface: the upstream answer has no 'choices'")
        out = chat_completion(data, spec)
        usage = usage_from_openai(data.get("usage"))
        model = out.get("model") if isinstance(out.get("model"), str) else spec.model
        return Reply(orjson.dumps(out), out, usage, model)

    def _from_stream_body(self, spec: CallSpec, body: bytes) -> Reply:
        stream = self.stream_translator(dataclasses.replace(spec, client_wants_usage=False))
        stream.feed(body)
        stream.finish()
        if stream.error is not None:
            raise stream.error
        out = stream.assembled()
        return Reply(orjson.dumps(out), out, stream.usage, out.get("model") or spec.model)

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        err = error_from(status, _loads(body), headers)
        return (
            err
            if err is not None
            else readable(generic_error(self.name, status, headers, body), self.name)
        )

    def stream_translator(self, spec: CallSpec) -> ChatStream | TextGenerationStream | OpenAIStream:
        if spec.route_type is RouteType.CHAT:
            return ChatStream(spec)
        if spec.route_type is RouteType.PRESERVE:
            path = (spec.options.upstream_path or spec.path or "").rstrip("/")
            if path.endswith("/chat/completions"):
                return ChatStream(spec)
            if path.endswith("/completions"):
                return OpenAIStream(dataclasses.replace(spec, route_type=RouteType.COMPLETIONS))
        return TextGenerationStream(spec)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return usage_from_openai(data.get("usage")) if isinstance(data, dict) else None

    # --------------------------------------------------- native (llm_format)

    def native_model(self, spec: CallSpec) -> str | None:
        model = spec.body.get("model") if isinstance(spec.body, dict) else None
        if isinstance(model, str) and model:
            return model
        m = _MODEL_IN_PATH.search(spec.path or "")
        return m.group(1) if m else None

    def build_native_request(self, spec: CallSpec) -> UpstreamRequest:
        body = spec.body if isinstance(spec.body, dict) else {}
        path = spec.path or "/"
        tgi_route = _native_tgi_route(path)
        stream = body.get("stream") is True or tgi_route == "generate_stream"
        headers = {"content-type": "application/json", **_option_headers(spec)}
        raw = spec.raw_body
        if tgi_route:
            # TGI's own routes: a TGI upstream_url takes them as they are; the HF
            # Inference API takes the same body at the model's URL, with `stream`
            url = _text_generation_url(dataclasses.replace(spec, stream=stream))
            if not _tgi_native_route(url) and stream and body.get("stream") is not True:
                raw = orjson.dumps({**body, "stream": True})
        else:
            if spec.model:
                m = _MODEL_IN_PATH.search(path)
                if m:
                    path = path[: m.start(1)] + _model_path(spec.model) + path[m.end(1) :]
                elif body.get("model") != spec.model and (
                    "model" in body or path.rstrip("/").endswith("completions")
                ):
                    raw = orjson.dumps({**body, "model": spec.model})
            url = self._host_url(spec, path)
        if stream:
            headers["accept"] = "text/event-stream"
        return UpstreamRequest(spec.method, url, headers, raw, stream)

    def _host_url(self, spec: CallSpec, path: str) -> str:
        """The client's own path on the router (or a mirror's root), or on a server
        given by its base URL; an upstream_url with another path is used as written."""
        upstream = spec.options.upstream_url
        root = router_root(upstream)
        if root is None and upstream:
            root = _server_root(upstream)
        url = root + path if root is not None else (upstream or self.default_base_url)
        if spec.query:
            url += ("&" if "?" in url else "?") + spec.query
        return url

    def parse_native_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        data = _loads(body)
        request = spec.body if isinstance(spec.body, dict) else {}
        if (
            _native_tgi_route(spec.path or "/") == "generate"
            and isinstance(data, list)
            and len(data) == 1
            and isinstance(data[0], dict)
        ):
            data = data[0]  # the task API's list, as TGI's /generate answers
            body = orjson.dumps(data)
        item = data[0] if isinstance(data, list) and data else data
        obj = item if isinstance(item, dict) else {}
        if isinstance(obj.get("generated_text"), str):
            inputs = request.get("inputs")
            usage = _usage_from_details(
                obj.get("details"), inputs if isinstance(inputs, str) else "", headers
            )
        else:
            usage = self.usage_from(obj)
        model = obj.get("model") if isinstance(obj.get("model"), str) else spec.model
        return Reply(body, data if isinstance(data, dict) else obj, usage, model)

    def native_stream_observer(self, spec: CallSpec) -> StreamTranslator:
        path = (spec.path or "").rstrip("/")
        if path.endswith("/chat/completions"):
            return ChatStream(spec)
        if path.endswith("/completions"):
            return OpenAIStream(dataclasses.replace(spec, route_type=RouteType.COMPLETIONS))
        return TextGenerationStream(spec)


_MODEL_IN_PATH = re.compile(r"/models/(.+?)(?=/pipeline/|/v1/|$)")


def _native_tgi_route(path: str) -> str | None:
    """ "generate" or "generate_stream" for a client of TGI's own routes."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in ("generate", "generate_stream") else None


PROVIDER = HuggingFace()
