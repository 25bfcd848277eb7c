"""A fake Hugging Face, as a handler for `FakeUpstream`: the router, HF Inference, TGI.

Paths it serves (every request needs `Authorization: Bearer <token>`):

- `POST /v1/chat/completions`: the OpenAI-compatible Messages API. `flavour="router"`
  answers like the Inference Providers router (clean OpenAI chunks, usage chunk when
  `stream_options.include_usage`, cached tokens); `flavour="tgi"` like a TGI server
  with its quirks (empty ids, `object: "text_completion"`, finish reason `eos_token`,
  the tool call's id and name repeated in every streamed delta, arguments as a JSON
  object in whole answers) and, with `old_tgi`, no support for `stream_options`.
- `POST /hf-inference/models/{model}` and `POST /models/{model}` (classic
  text-generation, `[{"generated_text", "details"}]` or TGI's token SSE when `stream`),
  `POST /generate` and `POST /generate_stream` (TGI's own routes: one object, or SSE).
- `POST /hf-inference/models/{model}/pipeline/feature-extraction` (and TEI's
  `/embed`): one vector per input, or per-token vectors with `token_level`.

With `flavour="tgi"` it is a self-hosted server (TGI and TEI's routes: `/v1/chat/completions`,
`/generate`, `/generate_stream`, `/`, `/embed`): the router's task paths are a 404, as on
a real TGI or TEI.

It rejects what the real servers reject (a missing or wrong token, a chat body with
fields OpenAI's API does not have, TGI's parameter validation: temperature and top_k
strictly positive, top_p strictly between 0 and 1, at most 4 stop sequences) and is
stricter than TGI in one way: an unknown text-generation parameter is a 422 where TGI
silently ignores it, so a misspelt one (Kong's `max_lenght`) cannot go unnoticed. A
model can be scripted as still loading: 503 with `estimated_time`, unless the request
asks to wait for it (`x-wait-for-model: true` or `options.wait_for_model`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.fakes.upstream import Handler, Received, Reply, rechunk

CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "presence_penalty",
        "response_format",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "tool_prompt",
        "parallel_tool_calls",
        "user",
        "reasoning_effort",
    }
)
# TGI's GenerateParameters
TG_PARAMETERS = frozenset(
    {
        "best_of",
        "temperature",
        "repetition_penalty",
        "frequency_penalty",
        "top_k",
        "top_p",
        "typical_p",
        "do_sample",
        "max_new_tokens",
        "return_full_text",
        "stop",
        "truncate",
        "watermark",
        "details",
        "decoder_input_details",
        "seed",
        "top_n_tokens",
        "grammar",
        "adapter_id",
    }
)
FEATURE_FIELDS = frozenset(
    {"inputs", "normalize", "prompt_name", "truncate", "truncation_direction"}
)
UNAUTHORIZED = "Authorization header is correct, but the token seems invalid"  # Kong's fixture


@dataclass
class Script:
    """What the fake answers (every field has a realistic default)."""

    text: str = "The answer is 2."
    flavour: Literal["router", "tgi"] = "router"
    old_tgi: bool = False  # a TGI before stream_options: streams carry no usage
    # (name, arguments) of the tool calls made when the request has tools and its last
    # message is not a tool result (TGI makes only the first)
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    prompt_tokens: int = 25
    completion_tokens: int = 9
    cached_tokens: int = 0
    model: str | None = None  # the model the answer names (default: the one asked for)
    # text-generation: how TGI ended (default: eos_token, or stop_sequence/length as met)
    finish: str | None = None
    # a model still loading: 503 with this estimated_time unless the request waits
    loading: float | None = None
    embedding_dim: int = 4
    token_level: bool = False  # feature-extraction answers per-token vectors
    # streams: re-cut into pieces of this many bytes, a pause (s) before each content
    # event, the connection cut after this many pieces, an error event in place of
    # event number `error_at`, the stream ended cleanly after `end_at` events
    chunk_size: int = 17
    pause: float = 0.0
    cut_after: int | None = None
    error_at: int | None = None
    end_at: int | None = None


def hf_error(status: int, message: str | list[str], **extra: Any) -> Reply:
    return Reply.json({"error": message, **extra}, status)


def openai_error(status: int, message: str, kind: str, param: str | None = None) -> Reply:
    return Reply.json(
        {"error": {"message": message, "type": kind, "param": param, "code": None}}, status
    )


def validation(message: str) -> Reply:
    return hf_error(422, message, error_type="validation")


def deserialize(message: str) -> Reply:
    # axum's JSON rejection, as TGI and the HF API send it (Kong's fixture)
    return Reply.json(
        {"message": f"Failed to deserialize the JSON body into the target type: {message}"},
        422,
    )


def huggingface_api(token: str, script: Script | None = None) -> Handler:
    s = script or Script()

    def handle(req: Received) -> Reply:
        path = req.path.split("?")[0].rstrip("/") or "/"
        auth = req.headers.get("authorization", "")
        if not auth:
            return hf_error(401, "Authorization header is required")
        if auth != f"Bearer {token}":
            return hf_error(401, UNAUTHORIZED)
        if req.method != "POST":
            return hf_error(405, "Method Not Allowed")
        try:
            body = json.loads(req.body)
        except ValueError:
            return deserialize("expected value at line 1 column 1")
        if not isinstance(body, dict):
            return deserialize("invalid type: expected a JSON object")
        if s.flavour == "tgi" and path.startswith(("/hf-inference/", "/models/")):
            return Reply(404, {}, b"")  # the router's task API: TGI and TEI have no such route
        model = _model_of(path, body)
        if s.loading is not None and not _waits(req, body):
            return hf_error(503, f"Model {model} is currently loading", estimated_time=s.loading)
        if path == "/v1/chat/completions":
            return chat(body, s)
        if path.endswith("/pipeline/feature-extraction") or path == "/embed":
            return feature_extraction(body, s)
        if path in ("/generate", "/generate_stream"):
            return text_generation(body, s, route=path.lstrip("/"), model=model)
        if path.startswith(("/hf-inference/models/", "/models/")) or path == "/":
            return text_generation(body, s, route="compat", model=model)
        return hf_error(404, "Not Found")

    return handle


def _model_of(path: str, body: dict[str, Any]) -> str:
    for prefix in ("/hf-inference/models/", "/models/"):
        if path.startswith(prefix):
            return path[len(prefix) :].split("/pipeline/")[0]
    model = body.get("model")
    return model if isinstance(model, str) and model else "tgi"


def _waits(req: Received, body: dict[str, Any]) -> bool:
    options = body.get("options")
    return req.headers.get("x-wait-for-model") == "true" or (
        isinstance(options, dict) and options.get("wait_for_model") is True
    )


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _send(events: list[bytes], s: Script, error_event: bytes) -> Reply:
    if s.error_at is not None:
        events = [*events[: s.error_at], error_event]
    if s.end_at is not None:
        events = events[: s.end_at]
    timed: list[bytes | float] = []
    for e in events:
        if s.pause:
            timed.append(s.pause)
        timed.append(e)
    reply = Reply.sse(rechunk(timed, s.chunk_size), cut_after=s.cut_after)
    reply.headers = {"content-type": "text/event-stream", "x-accel-buffering": "no"}
    return reply


# ------------------------------------------------------------------ chat


def check_chat(body: dict[str, Any]) -> str | None:
    """What the router would reject in `body`, as its message; None if valid."""
    for name in body:
        if name not in CHAT_FIELDS:
            return f"Unrecognized request argument supplied: {name}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            return f"messages[{i}].role: invalid role"
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    continue
                url = (part.get("image_url") or {}).get("url") if kind == "image_url" else None
                if isinstance(url, str) and url.startswith(("data:image/", "http://", "https://")):
                    continue
                return f"messages[{i}].content[{j}]: invalid content part"
        elif content is not None and not isinstance(content, str):
            return f"messages[{i}].content: invalid type"
        if m["role"] == "tool" and not m.get("tool_call_id"):
            return f"messages[{i}].tool_call_id: Field required"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        return "temperature must be between 0 and 2"
    for i, tool in enumerate(body.get("tools") or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            return f"tools[{i}]: a function with a name is required"
    options = body.get("stream_options")
    if options is not None and not body.get("stream"):
        return "stream_options is only allowed when stream is true"
    return None


def _makes_calls(body: dict[str, Any], s: Script) -> bool:
    last = body["messages"][-1]
    return bool(body.get("tools") and s.tool_calls and last.get("role") != "tool")


def _chat_usage(s: Script) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    }
    if s.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": s.cached_tokens}
    return usage


def chat(body: dict[str, Any], s: Script) -> Reply:
    problem = check_chat(body)
    if problem:
        if s.flavour == "tgi":
            return validation(problem)
        return openai_error(400, problem, "invalid_request_error")
    model = s.model or body["model"]
    calls = s.tool_calls if _makes_calls(body, s) else []
    if s.flavour == "tgi":
        calls = calls[:1]
    if body.get("stream"):
        return chat_stream(body, s, model, calls)
    tgi = s.flavour == "tgi"
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else s.text}
    if calls:
        message["tool_calls"] = [
            {
                "id": str(n) if tgi else f"call_fake{n:02d}",
                "type": "function",
                "function": {
                    "name": name,
                    # TGI 2.0 sent the arguments as an object
                    "arguments": args if tgi else json.dumps(args),
                    **({"description": None} if tgi else {}),
                },
            }
            for n, (name, args) in enumerate(calls)
        ]
    finish = "eos_token" if tgi else ("tool_calls" if calls else "stop")
    return Reply.json(
        {
            "object": "chat.completion" if not tgi else "text_completion",
            "id": "" if tgi else "chatcmpl-fakehf0001",
            "created": 1722866733,
            "model": model,
            "system_fingerprint": "2.1.1-sha-4dfdb48" if tgi else None,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": _chat_usage(s),
        }
    )


def chat_stream(
    body: dict[str, Any], s: Script, model: str, calls: list[tuple[str, dict[str, Any]]]
) -> Reply:
    tgi = s.flavour == "tgi"

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": "" if tgi else "chatcmpl-fakehf0002",
            "object": "text_completion" if tgi else "chat.completion.chunk",
            "created": 1722866800,
            "model": model,
            "system_fingerprint": "2.1.1-sha-4dfdb48",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if tgi and not s.old_tgi:
            obj["usage"] = None
        return b"data:" + json.dumps(obj).encode() + b"\n\n"

    events: list[bytes] = []
    if not tgi:
        events.append(event({"role": "assistant", "content": ""}))
    if calls:
        for n, (name, args) in enumerate(calls):
            text = json.dumps(args)
            pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
            for k, piece in enumerate(pieces):
                call: dict[str, Any] = {"index": n, "function": {"arguments": piece}}
                if tgi:  # id, type and name in every delta (name null after the first)
                    call = {
                        "index": 0,
                        "id": "0",
                        "type": "function",
                        "function": {"name": name if k == 0 else None, "arguments": piece},
                    }
                elif k == 0:
                    call = {
                        "index": n,
                        "id": f"call_fake{n:02d}",
                        "type": "function",
                        "function": {"name": name, "arguments": piece},
                    }
                delta: dict[str, Any] = {"tool_calls": [call]}
                if tgi:
                    delta["role"] = "assistant"
                events.append(event(delta))
    else:
        for w in _words(s.text):
            events.append(event({"role": "assistant", "content": w} if tgi else {"content": w}))
    finish = "eos_token" if tgi else ("tool_calls" if calls else "stop")
    events.append(event({"role": "assistant", "content": ""} if tgi else {}, finish))
    options = body.get("stream_options") or {}
    if options.get("include_usage") and not s.old_tgi:
        usage = {
            "id": "" if tgi else "chatcmpl-fakehf0002",
            "object": "chat.completion.chunk",
            "created": 1722866800,
            "model": model,
            "system_fingerprint": "2.1.1-sha-4dfdb48",
            "choices": [],
            "usage": _chat_usage(s),
        }
        events.append(b"data:" + json.dumps(usage).encode() + b"\n\n")
    events.append(b"data:[DONE]\n\n")
    error = {"error": {"message": "Request failed during generation", "http_status_code": 422}}
    return _send(events, s, b"data:" + json.dumps(error).encode() + b"\n\n")


# ------------------------------------------------------------------ text generation


def check_parameters(params: Any) -> Reply | None:
    """TGI's validation of `parameters` (422s with TGI's messages)."""
    if params is None:
        return None
    if not isinstance(params, dict):
        return deserialize("parameters: invalid type: expected struct GenerateParameters")
    for name in params:
        if name not in TG_PARAMETERS:
            return deserialize(f"parameters: unknown field `{name}`")
    t = params.get("temperature")
    if t is not None and not t > 0:
        return validation("`temperature` must be strictly positive")
    p = params.get("top_p")
    if p is not None and not 0 < p < 1:
        return validation("`top_p` must be > 0.0 and < 1.0")
    k = params.get("top_k")
    if k is not None and not k > 0:
        return validation("`top_k` must be strictly positive")
    m = params.get("max_new_tokens")
    if m is not None and not m > 0:
        return validation("`max_new_tokens` must be strictly positive")
    stop = params.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(x, str) for x in stop):
        return deserialize("parameters.stop: invalid type: expected a sequence of strings")
    if len(stop) > 4:
        return validation(f"`stop` supports up to 4 stop sequences. Given: {len(stop)}")
    for name in ("do_sample", "details", "return_full_text"):
        if params.get(name) is not None and not isinstance(params[name], bool):
            return deserialize(f"parameters.{name}: invalid type: expected a boolean")
    return None


def generation(text: str, params: dict[str, Any], s: Script) -> tuple[list[str], str]:
    """The tokens TGI would generate and how it ends (the stop sequence left in)."""
    tokens = _words(text)
    limit = params.get("max_new_tokens")
    out: list[str] = []
    so_far = ""
    for tok in tokens:
        if isinstance(limit, int) and len(out) >= limit:
            return out, "length"
        out.append(tok)
        so_far += tok
        for stop in params.get("stop") or ():
            if stop in so_far:
                # TGI stops on the token that completes the stop sequence, keeping it
                cut = so_far.index(stop) + len(stop)
                out[-1] = tok[: len(tok) - (len(so_far) - cut)]
                return out, "stop_sequence"
    return out, s.finish or "eos_token"


def text_generation(body: dict[str, Any], s: Script, route: str, model: str) -> Reply:
    inputs = body.get("inputs")
    if not isinstance(inputs, str):
        return deserialize("missing field `inputs` at line 1 column 2")
    problem = check_parameters(body.get("parameters"))
    if problem:
        return problem
    if "stream" in body and not isinstance(body["stream"], bool):
        return deserialize("stream: invalid type: expected a boolean")
    params = body.get("parameters") or {}
    tokens, finish = generation(s.text, params, s)
    generated = "".join(tokens)
    full = (inputs + generated) if params.get("return_full_text") else generated
    details = {
        "finish_reason": finish,
        "generated_tokens": len(tokens),
        "seed": params.get("seed"),
    }
    stream = route == "generate_stream" or (route == "compat" and body.get("stream") is True)
    if stream:
        return generate_stream(tokens, full, details if params.get("details") else None, s)
    answer: dict[str, Any] = {"generated_text": full}
    if params.get("details"):
        answer["details"] = {
            **details,
            "prefill": [],
            "tokens": [
                {"id": 1000 + i, "text": t, "logprob": -0.25, "special": False}
                for i, t in enumerate(tokens)
            ],
        }
    headers = {}
    if s.flavour == "tgi":  # TGI's own counts, on whole answers
        headers = {"x-prompt-tokens": str(s.prompt_tokens), "x-generated-tokens": str(len(tokens))}
    return Reply.json(answer if route == "generate" else [answer], headers=headers)


def generate_stream(
    tokens: list[str], full: str, details: dict[str, Any] | None, s: Script
) -> Reply:
    events: list[bytes] = [b":\n\n"]  # axum's keep-alive comment
    tokens = [*tokens, "</s>"] if details and details["finish_reason"] == "eos_token" else tokens
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        end_details = None
        if last and details is not None:
            end_details = dict(details)
            if not s.old_tgi:
                end_details["input_length"] = s.prompt_tokens
        obj = {
            "index": i + 1,
            "token": {"id": 1000 + i, "text": tok, "logprob": -0.25, "special": tok == "</s>"},
            "generated_text": full if last else None,
            "details": end_details,
        }
        events.append(b"data:" + json.dumps(obj).encode() + b"\n\n")
    error = {
        "error": "Request failed during generation: CUDA out of memory",
        "error_type": "generation",
    }
    return _send(events, s, b"data:" + json.dumps(error).encode() + b"\n\n")


# ------------------------------------------------------------------ feature extraction


def vector(text: str, dim: int, shift: int = 0) -> list[float]:
    """A deterministic embedding of `text` (tests compute the same)."""
    return [(sum(text.encode()) % 97 + i + shift) / 100 for i in range(dim)]


def feature_extraction(body: dict[str, Any], s: Script) -> Reply:
    for name in body:
        if name not in FEATURE_FIELDS:
            return hf_error(400, f"unknown field `{name}`")
    inputs = body.get("inputs")
    single = isinstance(inputs, str)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return hf_error(400, ["Input should be a valid string", "Input should be a valid list"])
    if s.token_level:  # one vector per word: what a model without pooling answers
        out: list[Any] = [
            [vector(w, s.embedding_dim, n) for n, w in enumerate(t.split())] for t in texts
        ]
    else:
        out = [vector(t, s.embedding_dim) for t in texts]
    return Reply.json(out[0] if single else out)
