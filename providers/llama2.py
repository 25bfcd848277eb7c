"""Llama 2, self-hosted: the raw prompt format (Hugging Face TGI), Ollama's, or OpenAI's.

`model.options.upstream_url` (where the model runs) and `model.options.llama2_format`
are required at load. Route types: chat and completions.

- `llama2_format: raw` - Hugging Face Text Generation Inference's generate API (and the
  Inference API, which speaks it): `POST <upstream_url>` (as written) with
  `{"inputs": <Llama 2 prompt>, "parameters": {...}}`; a stream asks `"stream": true`
  (TGI's `/` route) and goes to `/generate_stream` when the URL ends in `/generate`.
- `llama2_format: ollama` - Ollama's `/api/chat` and `/api/generate`, translated by
  `providers.ollama` (a bare-origin `upstream_url` gets those paths, a URL with a path is
  used as written).
- `llama2_format: openai` - any OpenAI-compatible server (vLLM, llama.cpp, TGI's
  Messages API): `providers.openai`, with `upstream_url` as the OpenAI provider reads it.

Conventions of the raw format (Kong's driver has known bugs here; we do better):

- **The prompt** is Llama 2's chat template (Meta's reference code and Hugging Face's
  "How to prompt Llama 2"): `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]
  {assistant} </s><s>[INST] {user} [/INST]`, each message stripped. Every system (and
  developer) message goes into the one `<<SYS>>` block; consecutive messages of one role
  are joined by a blank line; a last assistant message is left open (no `</s>`) for the
  model to continue. Kong wraps messages by position instead (its first message is taken
  as the system prompt whatever its role, assistant answers are dropped, and a later
  system message is taken as an answer). The template has no slot for tools or images:
  such requests are a 400 naming the formats that have them.
- **Completions**: a prompt is wrapped as `<s>[INST] {prompt} [/INST]` unless it already
  holds `[INST]` (the client wrote the template itself). Kong adds a system prompt of
  its own, with a malformed `<<SYS>>` closing tag.
- **Parameters**: `max_new_tokens` (from `max_completion_tokens`/`max_tokens`),
  `temperature`, `top_p`, `top_k`, `stop`, `seed`, `frequency_penalty`, and always
  `return_full_text: false` (the Inference API echoes the prompt otherwise) and
  `details: true` (the finish reason and token counts). TGI rejects `temperature: 0`,
  `top_p` outside (0, 1) and `top_k: 0`: a temperature of 0 is sent as greedy decoding
  (`do_sample: false`, no temperature), `top_p >= 1` and `top_k: 0` (no truncation) are
  not sent. Kong sends `top_p: 1` by default, which TGI refuses.
- **The answer**: `generated_text` (from `{...}`, `[{...}]` or Kong's `{"data": [{...}]}`)
  with the prompt removed when the server echoed it, else (Kong's rule) what follows
  the last `[/INST]`; then stripped of surrounding whitespace. A stream drops the
  whitespace before the first word. Special tokens (`</s>`) are not text.
- **Finish reason**: TGI's eos_token and stop_sequence are stop, length is length
  (Kong leaves it out).
- **Usage**: TGI's `x-prompt-tokens` / `x-generated-tokens` headers, or in a stream the
  last event's `details.input_length` and `generated_tokens`. Without them only
  `details.generated_tokens` may be known: the prompt is estimated and the usage marked
  estimated; with nothing at all the usage is None (the gateway estimates it).
- **Errors**: TGI's `{"error", "error_type"}` keeps its status (422 validation, 424
  generation, 429 overloaded) and gives its type as the `code`; the Hugging Face
  Inference API's model-loading 503 (`{"error", "estimated_time"}`) says how long to
  wait and sets `Retry-After` (read as `providers.huggingface` reads it). An error event
  inside a stream, or a stream that ends without its last event (the one with
  `generated_text`), ends the client's stream with an error event; so does an
  OpenAI-format stream (`llama2_format: openai`) that ends with neither `[DONE]` nor
  a finish reason.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from providers import huggingface, ollama, sse
from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    Reply,
    RouteType,
    UpstreamRequest,
    Usage,
    as_int,
    estimate_tokens,
    join_url,
    new_completion_id,
)
from providers.openai import OpenAI, usage_from_openai
from providers.openai_compatible import CompatibleStream, readable

NAME = "llama2"
FORMATS = ("raw", "ollama", "openai")

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
BOS, EOS = "<s>", "</s>"

#: TGI `finish_reason` -> OpenAI `finish_reason`
FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def _bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", None, param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _OpenAICompatible(OpenAI):
    """providers.openai for `llama2_format: openai`, with Llama 2's name in its errors."""

    name = NAME
    default_base_url = ""


_OPENAI = _OpenAICompatible()


# ------------------------------------------------------------------ the prompt


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or an array of parts", "messages")
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise _bad(
                f"'{where}.content[{j}]': the llama2 raw format takes text only "
                f"(not {kind!r}); use llama2_format ollama or openai for images",
                "messages",
            )
    return "\n".join(texts)


def llama2_prompt(messages: Any) -> str:
    """OpenAI chat messages as one Llama 2 chat prompt (see the module docstring)."""
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array", "messages")
    system: list[str] = []
    turns: list[list[Any]] = []  # [role, [texts]]
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{where}' must be an object", "messages")
        role = m.get("role")
        if role == "tool" or m.get("tool_calls"):
            raise _bad(
                f"'{where}': the llama2 raw format has no tool calling; "
                "use llama2_format ollama or openai",
                "messages",
            )
        text = _text(m.get("content"), where).strip()
        if role in ("system", "developer"):
            if text:
                system.append(text)
        elif role in ("user", "assistant"):
            if turns and turns[-1][0] == role:
                turns[-1][1].append(text)
            else:
                turns.append([role, [text]])
        else:
            raise _bad(f"'{where}': role {role!r} is not supported by llama2", "messages")
    if not turns or turns[0][0] != "user":
        raise _bad("llama2: the conversation must start with a user message", "messages")
    out: list[str] = []
    for n, (role, texts) in enumerate(turns):
        text = "\n\n".join(t for t in texts if t)
        if role == "user":
            if n == 0 and system:
                text = B_SYS + "\n\n".join(system) + E_SYS + text
            out.append(f"{BOS}{B_INST} {text} {E_INST}")
        elif n == len(turns) - 1:
            out.append(f" {text}")  # left open: the model continues this answer
        else:
            out.append(f" {text} {EOS}")
    return "".join(out)


def completion_prompt(prompt: Any) -> str:
    """A completions prompt, wrapped as one instruction unless it holds `[INST]`."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("llama2 completions take one text 'prompt'", "prompt")
    if B_INST in prompt:
        return prompt
    return f"{BOS}{B_INST} {prompt.strip()} {E_INST}"


def raw_prompt(spec: CallSpec) -> str:
    if spec.route_type is RouteType.CHAT:
        return llama2_prompt(spec.body.get("messages"))
    return completion_prompt(spec.body.get("prompt"))


# ------------------------------------------------------------------ TGI requests


def tgi_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """TGI's `parameters` from an OpenAI body (values TGI would refuse are mapped)."""
    n = body.get("n")
    if _is_int(n) and n > 1:
        raise _bad("llama2 (raw) makes one answer per call ('n' must be 1)", "n")
    params: dict[str, Any] = {}
    limit = ollama.max_tokens_of(body)
    if limit is not None:
        params["max_new_tokens"] = limit
    temperature = body.get("temperature")
    if _is_num(temperature):
        if temperature > 0:
            params["temperature"] = temperature
        else:
            params["do_sample"] = False  # greedy: TGI wants a strictly positive temperature
    top_p = body.get("top_p")
    if _is_num(top_p) and 0 < top_p < 1:
        params["top_p"] = top_p
    top_k = body.get("top_k")
    if _is_int(top_k) and top_k > 0:
        params["top_k"] = top_k
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        params["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        params["stop"] = [s for s in stop if isinstance(s, str) and s]
    seed = body.get("seed")
    if _is_int(seed) and seed >= 0:
        params["seed"] = seed
    penalty = body.get("frequency_penalty")
    if _is_num(penalty) and penalty:
        params["frequency_penalty"] = penalty
    params["return_full_text"] = False
    params["details"] = True
    return params


def tgi_body(spec: CallSpec) -> dict[str, Any]:
    """The TGI generate request for an OpenAI chat or completions body."""
    out: dict[str, Any] = {"inputs": raw_prompt(spec), "parameters": tgi_parameters(spec.body)}
    if spec.stream:
        out["stream"] = True
    return out


def tgi_url(upstream_url: str, stream: bool) -> str:
    """`upstream_url` as written; a stream to a `/generate` URL goes to `/generate_stream`."""
    parts = urlsplit(upstream_url)
    if stream and parts.path.rstrip("/").endswith("/generate"):
        path = parts.path.rstrip("/") + "_stream"
        return urlunsplit(parts._replace(path=path))
    return upstream_url


# ------------------------------------------------------------------ TGI answers


def generated_text(data: Any) -> tuple[str, dict[str, Any]]:
    """(generated_text, the object holding it) of a TGI answer: `{...}`, `[{...}]` or
    Kong's `{"data": [{...}]}`."""
    obj = data
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if isinstance(obj, list):
        if len(obj) != 1:
            raise ProviderError(
                502, f"llama2: expected one generation in the upstream answer, got {len(obj)}"
            )
        obj = obj[0]
    if not isinstance(obj, dict) or not isinstance(obj.get("generated_text"), str):
        raise ProviderError(502, "llama2: the upstream answer has no 'generated_text'")
    return obj["generated_text"], obj


def answer_text(text: str, prompt: str | None) -> str:
    """The model's answer in a generated text that may repeat the prompt."""
    if prompt and text.startswith(prompt):
        text = text[len(prompt) :]
    elif E_INST in text:
        text = text.rsplit(E_INST, 1)[1]  # Kong's rule, for servers echoing another prompt
    return text.strip()


def _finish(details: Any) -> str:
    reason = details.get("finish_reason") if isinstance(details, dict) else None
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _header_int(headers: dict[str, str], name: str) -> int | None:
    for key, value in headers.items():
        if key.lower() == name:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def tgi_usage(headers: dict[str, str], obj: dict[str, Any], prompt: str, data: Any) -> Usage | None:
    """Usage of a whole TGI answer (see the module docstring)."""
    prompt_tokens = _header_int(headers, "x-prompt-tokens")
    generated = _header_int(headers, "x-generated-tokens")
    if prompt_tokens is not None and generated is not None:
        return Usage(prompt_tokens, generated)
    if isinstance(data, dict) and isinstance(data.get("usage"), dict):
        return usage_from_openai(data["usage"])  # a server that reports OpenAI's usage
    details = obj.get("details") if isinstance(obj.get("details"), dict) else {}
    if _is_int(details.get("generated_tokens")):
        return Usage(estimate_tokens(prompt), details["generated_tokens"], estimated=True)
    return None


def tgi_to_openai(
    spec: CallSpec, headers: dict[str, str], body: bytes
) -> tuple[dict[str, Any], Usage | None]:
    """A whole TGI answer as an OpenAI chat.completion or text_completion."""
    try:
        data = orjson.loads(body)
    except ValueError:
        raise ProviderError(502, "llama2: the upstream answer is not JSON") from None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        raise ProviderError(502, f"llama2: {data['error']}")
    text, obj = generated_text(data)
    try:
        prompt: str | None = raw_prompt(spec)
    except ProviderError:
        prompt = None
    content = answer_text(text, prompt)
    finish = _finish(obj.get("details"))
    created = int(time.time())
    if spec.route_type is RouteType.COMPLETIONS:
        answer: dict[str, Any] = {
            "id": "cmpl-" + secrets.token_hex(12),
            "object": "text_completion",
            "created": created,
            "model": spec.model,
            "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": finish}],
        }
    else:
        answer = {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": created,
            "model": spec.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
        }
    usage = tgi_usage(headers, obj, prompt or "", data)
    if usage is not None:
        answer["usage"] = usage.to_openai()
    return answer, usage


class TGIStream:
    """TGI's token stream (SSE `data:{"token": {...}, "generated_text": null, ...}`) ->
    OpenAI chat.completion.chunk or text_completion SSE."""

    def __init__(self, spec: CallSpec) -> None:
        self._dec = sse.SSEDecoder()
        self._spec = spec
        self._completions = spec.route_type is RouteType.COMPLETIONS
        self._wants_usage = spec.client_wants_usage
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self.id = ("cmpl-" + secrets.token_hex(12)) if self._completions else new_completion_id()
        self.created = int(time.time())
        self.model = spec.model
        self.finish_reason: str | None = None
        self._parts: list[str] = []
        self._opened = False
        self._complete = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.feed(data):
            self._event(ev, out)
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.flush():
            if error is not None and not _is_json(ev.data):
                continue  # half an event, cut by the failure
            self._event(ev, out)
        if self.error is None:
            if error is not None:
                self._fail(error, out)
            elif not self._complete:
                self._fail(
                    ProviderError(
                        502,
                        "llama2: the stream ended before the answer was complete "
                        "(no event with 'generated_text')",
                    ),
                    out,
                )
        out.append(sse.DONE)
        return out

    def _event(self, ev: sse.SSEEvent, out: list[bytes]) -> None:
        if self.error is not None or self._complete or not ev.data or ev.data == "[DONE]":
            return
        try:
            obj = orjson.loads(ev.data)
        except ValueError:
            self._fail(
                ProviderError(502, "llama2: the upstream stream holds an event that is not JSON"),
                out,
            )
            return
        if not isinstance(obj, dict):
            return
        if "error" in obj and "token" not in obj:
            status = {"validation": 422, "overloaded": 429, "generation": 424}.get(
                str(obj.get("error_type")), 500
            )
            self._fail(ProviderError(status, str(obj["error"]), "api_error"), out)
            return
        if not self._opened:
            self._opened = True
            if not self._completions:
                out.append(
                    self._chunk(
                        [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ]
                    )
                )
        token = obj.get("token") if isinstance(obj.get("token"), dict) else {}
        text = token.get("text")
        if isinstance(text, str) and text and not token.get("special"):
            self._text(text, out)
        if obj.get("generated_text") is not None or obj.get("details") is not None:
            self._done(obj, out)

    def _text(self, text: str, out: list[bytes]) -> None:
        if not self._parts:
            text = text.lstrip()  # the answer starts at its first word, as a whole one does
            if not text:
                return
        self._parts.append(text)
        self.started = True
        if self._completions:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        out.append(self._chunk([choice]))

    def _done(self, obj: dict[str, Any], out: list[bytes]) -> None:
        self._complete = True
        details = obj.get("details") if isinstance(obj.get("details"), dict) else {}
        self.finish_reason = _finish(details)
        generated = details.get("generated_tokens")
        prompt_tokens = details.get("input_length")
        if _is_int(generated) and _is_int(prompt_tokens):
            self.usage = Usage(prompt_tokens, generated)
        elif _is_int(generated):
            try:
                prompt = raw_prompt(self._spec)
            except ProviderError:
                prompt = ""
            self.usage = Usage(estimate_tokens(prompt), generated, estimated=True)
        if self._completions:
            choice: dict[str, Any] = {"index": 0, "text": "", "logprobs": None}
        else:
            choice = {"index": 0, "delta": {}}
        out.append(self._chunk([{**choice, "finish_reason": self.finish_reason}]))
        if self._wants_usage and self.usage is not None:
            out.append(self._chunk([], self.usage.to_openai()))

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion" if self._completions else "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _fail(self, error: ProviderError, out: list[bytes]) -> None:
        self.error = error
        out.append(sse.encode(error.to_openai()))

    def assembled(self) -> dict[str, Any]:
        text = "".join(self._parts)
        if self._completions:
            choice: dict[str, Any] = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": self.finish_reason,
            }
        out: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion" if self._completions else "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out


def _is_json(data: str) -> bool:
    try:
        orjson.loads(data)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ the provider


def _format(spec: CallSpec) -> str:
    fmt = spec.options.llama2_format
    if fmt not in FORMATS:
        raise ProviderError(500, "llama2: model.options.llama2_format is not set", "api_error")
    return fmt


def _upstream(spec: CallSpec) -> str:
    url = spec.options.upstream_url
    if not url:
        raise ProviderError(500, "llama2: model.options.upstream_url is not set", "api_error")
    return url


class Llama2(Provider):
    name = NAME
    # every format counts the whole prompt: TGI's input_length / x-prompt-tokens (TGI
    # reports no cache), Ollama's prompt_eval_count, OpenAI-style prompt_tokens
    input_includes_cache = True
    default_base_url = ""
    route_types = frozenset({RouteType.CHAT, RouteType.COMPLETIONS})

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        errors = super().config_errors(model, route_type, auth)
        options = getattr(model, "options", None)
        if not getattr(options, "upstream_url", None):
            errors.append(
                "provider 'llama2' needs model.options.upstream_url (where the model runs, "
                'e.g. "http://127.0.0.1:8080/generate" for TGI, "http://127.0.0.1:11434" '
                "for Ollama)"
            )
        if getattr(options, "llama2_format", None) not in FORMATS:
            errors.append(
                "provider 'llama2' needs model.options.llama2_format: raw (Hugging Face "
                "TGI), ollama or openai"
            )
        return errors

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        if spec.route_type not in self.route_types:
            raise _bad(f"llama2 cannot serve {spec.route_type}")
        fmt = _format(spec)
        url = _upstream(spec)
        if fmt == "openai":
            return _OPENAI.build_request(spec)
        if fmt == "ollama":
            url = join_url(url, url, ollama.PATHS[spec.route_type])
            return ollama.build_upstream(spec, url, self.name)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if spec.stream else "application/json",
        }
        body = orjson.dumps(tgi_body(spec))
        return UpstreamRequest("POST", tgi_url(url, spec.stream), headers, body, spec.stream)

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        fmt = _format(spec)
        if fmt == "openai":
            return _OPENAI.parse_response(spec, status, headers, body)
        if fmt == "ollama":
            return ollama.parse_reply(spec, body, self.name)
        answer, usage = tgi_to_openai(spec, headers, body)
        return Reply(orjson.dumps(answer), answer, usage, answer["model"])

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        # TGI's {"error", "error_type"}, Ollama's {"error"} and OpenAI's {"error": {...}}
        # (whose type, code and param are kept) all read as Hugging Face's errors do,
        # the Inference API's model-loading 503 included (its estimated time, Retry-After)
        try:
            data = orjson.loads(body) if body else None
        except ValueError:
            data = None
        err = huggingface.error_from(status, data, headers)
        return (
            err if err is not None else readable(_OPENAI.parse_error(status, headers, body), NAME)
        )

    def stream_translator(
        self, spec: CallSpec
    ) -> TGIStream | ollama.OllamaStream | CompatibleStream:
        fmt = _format(spec)
        if fmt == "openai":
            # a stream cut before [DONE] or a finish reason is an error, as for vllm
            return CompatibleStream(spec, NAME)
        if fmt == "ollama":
            return ollama.OllamaStream(spec, self.name)
        return TGIStream(spec)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        if not isinstance(data, dict):
            return None
        if isinstance(data.get("usage"), dict):
            return usage_from_openai(data["usage"])
        if "eval_count" in data or "prompt_eval_count" in data:
            return ollama.usage_from_ollama(data)
        details = data.get("details")
        if isinstance(details, dict) and _is_int(details.get("input_length")):
            return Usage(details["input_length"], as_int(details.get("generated_tokens")))
        return None


PROVIDER = Llama2()
