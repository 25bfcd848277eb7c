"""A fake Hugging Face Text Generation Inference server (the raw generate API), as a
handler for `FakeUpstream`.

Routes as TGI serves them: `POST /generate` (one object), `POST /generate_stream` (SSE),
and the compat route `POST /` (a one-item list, or SSE with `"stream": true`). Answers
carry TGI's headers (`x-prompt-tokens`, `x-generated-tokens`, ...), `details` when asked
(finish reason eos_token, length or stop_sequence, token counts), and a stream's last
event holds `generated_text` and `details` (with `input_length`); the end-of-sequence
token is a special `</s>` token.

Requests are checked as TGI's validation does (422 `{"error", "error_type":
"validation"}`: empty inputs, `temperature` not strictly positive, `top_p` outside
(0, 1), `top_k` not positive, more than 4 stop sequences...), and more strictly where
TGI silently ignores what it does not know: an unknown top-level or `parameters` field
is a 422 too, since it would hide a mistranslation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.fakes.upstream import Handler, Received, Reply, rechunk

TOP_FIELDS = frozenset({"inputs", "parameters", "stream"})
#: TGI's GenerateParameters and the JSON types each takes
PARAMETERS: dict[str, type | tuple[type, ...]] = {
    "best_of": int,
    "temperature": (int, float),
    "repetition_penalty": (int, float),
    "frequency_penalty": (int, float),
    "top_k": int,
    "top_p": (int, float),
    "typical_p": (int, float),
    "do_sample": bool,
    "max_new_tokens": int,
    "return_full_text": bool,
    "stop": list,
    "truncate": int,
    "watermark": bool,
    "details": bool,
    "decoder_input_details": bool,
    "seed": int,
    "top_n_tokens": int,
    "grammar": dict,
    "adapter_id": str,
}
MAX_STOP_SEQUENCES = 4
EOS = {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}


@dataclass
class Script:
    """What the fake answers."""

    text: str = " The answer is 2."
    finish_reason: str = "eos_token"  # or stop_sequence (length when max_new_tokens cuts)
    input_length: int = 37
    # answer with the prompt in front of the text even without return_full_text, as
    # some servers do (Kong's recorded answers)
    echo_prompt: bool = False
    # TGI's usage headers on whole answers
    usage_headers: bool = True
    # streams: re-cut into pieces of this many bytes, a pause (s) before each token
    # event, the connection cut after this many pieces, an error event in place of event
    # number `error_at`, the stream ended cleanly after `end_at` events
    chunk_size: int = 19
    pause: float = 0.0
    cut_after: int | None = None
    error_at: int | None = None
    end_at: int | None = None


def validation_error(message: str) -> Reply:
    return Reply.json(
        {"error": f"Input validation error: {message}", "error_type": "validation"}, 422
    )


def check(body: Any) -> str | None:
    """What TGI's validation (or this stricter fake) refuses, if anything."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    for name in body:
        if name not in TOP_FIELDS:
            return f"unknown field `{name}`"
    inputs = body.get("inputs")
    if not isinstance(inputs, str):
        return "`inputs` must be a string"
    if not inputs:
        return "`inputs` cannot be empty"
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        return "`parameters` must be an object"
    for name, value in params.items():
        kind = PARAMETERS.get(name)
        if kind is None:
            return f"unknown parameter `{name}`"
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            return f"`{name}` has the wrong type: {value!r}"
    if "temperature" in params and params["temperature"] <= 0:
        return "`temperature` must be strictly positive"
    if "top_p" in params and not 0 < params["top_p"] < 1:
        return "`top_p` must be > 0.0 and < 1.0"
    if "top_k" in params and params["top_k"] <= 0:
        return "`top_k` must be strictly positive"
    if "max_new_tokens" in params and params["max_new_tokens"] <= 0:
        return "`max_new_tokens` must be strictly positive"
    if "frequency_penalty" in params and not -2 <= params["frequency_penalty"] <= 2:
        return "`frequency_penalty` must be >= -2.0 and <= 2.0"
    if "seed" in params and params["seed"] < 0:
        return "`seed` must be positive"
    stop = params.get("stop", [])
    if not all(isinstance(s, str) for s in stop):
        return "`stop` must be a list of strings"
    if len(stop) > MAX_STOP_SEQUENCES:
        return f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}"
    if not isinstance(body.get("stream", False), bool):
        return "`stream` must be a boolean"
    return None


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if words else []


def _generation(body: dict[str, Any], s: Script) -> tuple[list[str], str]:
    tokens = [t for t in _tokens(s.text) if t]
    limit = body.get("parameters", {}).get("max_new_tokens")
    if isinstance(limit, int) and limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, s.finish_reason


def _full(body: dict[str, Any], s: Script, text: str) -> str:
    params = body.get("parameters", {})
    return body["inputs"] + text if params.get("return_full_text") or s.echo_prompt else text


def generate_json(body: dict[str, Any], s: Script) -> dict[str, Any]:
    tokens, reason = _generation(body, s)
    out: dict[str, Any] = {"generated_text": _full(body, s, "".join(tokens))}
    if body.get("parameters", {}).get("details"):
        out["details"] = {
            "finish_reason": reason,
            "generated_tokens": len(tokens) + (reason == "eos_token"),
            "seed": None,
            "prefill": [],
            "tokens": [
                {"id": 100 + n, "text": t, "logprob": -0.25, "special": False}
                for n, t in enumerate(tokens)
            ]
            + ([EOS] if reason == "eos_token" else []),
        }
    return out


def _headers(s: Script, generated: int) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-compute-type": "gpu+optimized"}
    if s.usage_headers:
        headers |= {
            "x-prompt-tokens": str(s.input_length),
            "x-generated-tokens": str(generated),
            "x-time-per-token": "21",
        }
    return headers


def stream_events(body: dict[str, Any], s: Script) -> list[bytes]:
    tokens, reason = _generation(body, s)
    details = bool(body.get("parameters", {}).get("details"))
    items = [
        {"id": 100 + n, "text": t, "logprob": -0.25, "special": False} for n, t in enumerate(tokens)
    ]
    if reason == "eos_token":
        items.append(EOS)
    events = []
    for n, token in enumerate(items):
        last = n == len(items) - 1
        event: dict[str, Any] = {
            "index": n + 1,
            "token": token,
            "generated_text": _full(body, s, "".join(tokens)) if last else None,
            "details": None,
        }
        if last and details:
            event["details"] = {
                "finish_reason": reason,
                "generated_tokens": len(items),
                "seed": None,
                "input_length": s.input_length,
            }
        events.append(b"data:" + json.dumps(event).encode() + b"\n\n")
    return events


def _stream(body: dict[str, Any], s: Script) -> Reply:
    events = stream_events(body, s)
    if s.error_at is not None:
        err = {
            "error": "Request failed during generation: Server error: CUDA out of memory",
            "error_type": "generation",
        }
        events = [*events[: s.error_at], b"data:" + json.dumps(err).encode() + b"\n\n"]
    if s.end_at is not None:
        events = events[: s.end_at]
    timed: list[bytes | float] = []
    for e in events:
        if s.pause:
            timed.append(s.pause)
        timed.append(e)
    reply = Reply.sse(rechunk(timed, s.chunk_size), cut_after=s.cut_after)
    reply.headers = {
        "content-type": "text/event-stream",
        "x-compute-type": "gpu+optimized",
        "x-accel-buffering": "no",
    }
    return reply


def tgi_api(script: Script | None = None, token: str | None = None) -> Handler:
    """A handler answering TGI's `/`, `/generate` and `/generate_stream` (with `token`,
    requests must carry `Authorization: Bearer <token>`, as Hugging Face endpoints do)."""
    s = script or Script()

    def handle(req: Received) -> Reply:
        path = req.path.split("?")[0]
        if req.method != "POST" or path not in ("/", "/generate", "/generate_stream"):
            return Reply(404, {"content-type": "text/plain"}, b"Not Found")
        if token is not None and req.headers.get("authorization") != f"Bearer {token}":
            return Reply.json(
                {"error": "Authorization header is correct, but the token seems invalid"}, 401
            )
        try:
            body = json.loads(req.body)
        except ValueError:
            return Reply.json({"error": "Failed to parse the request body as JSON"}, 422)
        problem = check(body)
        if problem:
            return validation_error(problem)
        if path == "/generate_stream" or (path == "/" and body.get("stream")):
            return _stream(body, s)
        answer = generate_json(body, s)
        tokens, reason = _generation(body, s)
        headers = _headers(s, len(tokens) + (reason == "eos_token"))
        data = [answer] if path == "/" else answer
        return Reply(200, headers, json.dumps(data).encode())

    return handle
