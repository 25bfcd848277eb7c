"""OpenAI and every host that speaks its API (`upstream_url` points elsewhere).

The client format is already OpenAI's, so requests pass with the model rules applied,
and answers pass through byte for byte. The stream translator observes the SSE events
(usage, time to first token, the assembled answer for the record) and removes the
usage chunk the gateway asked for when the client did not.
"""

from __future__ import annotations

import json
from typing import Any

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
    generic_error,
    join_url,
    json_body,
    preserve_url,
)

PATHS = {
    RouteType.CHAT: "/v1/chat/completions",
    RouteType.COMPLETIONS: "/v1/completions",
    RouteType.EMBEDDINGS: "/v1/embeddings",
}

# What a valid answer must contain, per route type.
_REQUIRED = {
    RouteType.CHAT: "choices",
    RouteType.COMPLETIONS: "choices",
    RouteType.EMBEDDINGS: "data",
}


def _is_json(data: str) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def usage_from_openai(u: Any) -> Usage | None:
    """OpenAI's `usage` object (prompt tokens include cached ones) as a normalized Usage."""
    if not isinstance(u, dict):
        return None
    prompt_details = u.get("prompt_tokens_details") or {}
    completion_details = u.get("completion_tokens_details") or {}
    usage = Usage(
        prompt_tokens=as_int(u.get("prompt_tokens")),
        completion_tokens=as_int(u.get("completion_tokens")),
        cache_read_tokens=as_int(prompt_details.get("cached_tokens"))
        if isinstance(prompt_details, dict)
        else 0,
        reasoning_tokens=as_int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0,
    )
    if usage.prompt_tokens == 0 and usage.completion_tokens == 0:
        total = as_int(u.get("total_tokens"))
        if total:
            usage.prompt_tokens = total  # embeddings report prompt and total only
    return usage


class OpenAIStream:
    """Pass OpenAI SSE through while watching it."""

    def __init__(self, spec: CallSpec) -> None:
        self._dec = sse.SSEDecoder()
        self._wants_usage = spec.client_wants_usage
        self._completions = spec.route_type is RouteType.COMPLETIONS
        self.usage: Usage | None = None
        self.error: ProviderError | None = None
        self.started = False
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.feed(data):
            self._handle(ev, out)
        return out

    def finish(self, error: ProviderError | None = None) -> list[bytes]:
        out: list[bytes] = []
        for ev in self._dec.flush():
            if error is not None and not _is_json(ev.data):
                continue  # half an event, cut by the failure: a client could not parse it
            self._handle(ev, out)
        if error is not None:
            self.error = error
            out.append(sse.encode(error.to_openai()))
        out.append(sse.DONE)
        return out

    def _handle(self, ev: sse.SSEEvent, out: list[bytes]) -> None:
        data = ev.data
        if data == "[DONE]":
            return  # re-emitted last by finish(), after anything the gateway adds
        try:
            # orjson: this parse runs for every chunk of every stream, and only observes
            # (the client gets the upstream's own bytes)
            obj = orjson.loads(data) if data else None
        except ValueError:
            obj = None
        if ev.event == "error" or (
            isinstance(obj, dict) and "error" in obj and not obj.get("choices")
        ):
            err = obj.get("error", obj) if isinstance(obj, dict) else data
            msg = err.get("message") if isinstance(err, dict) else str(err)
            self.error = ProviderError(502, msg or "upstream stream error", "api_error")
            out.append(ev.raw)
            return
        if not isinstance(obj, dict):
            out.append(ev.raw)
            return
        usage = obj.get("usage")
        if usage:
            self.usage = usage_from_openai(usage)
        choices = obj.get("choices")
        if choices and isinstance(choices, list):
            self._absorb(obj, choices)
        elif usage and not self._wants_usage:
            return  # the usage chunk only the gateway asked for
        out.append(ev.raw)

    def _absorb(self, obj: dict[str, Any], choices: list[Any]) -> None:
        # the client gets the upstream's chunk as it is; the recorded answer keeps what
        # has OpenAI's types only (a number or object where text belongs is not text)
        choices = clean_choices(choices)
        if not self._head:
            self._head = {k: obj.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            acc = self._choices.setdefault(as_int(choice.get("index")), {"content": []})
            if choice.get("finish_reason"):
                acc["finish_reason"] = choice["finish_reason"]
            if self._completions:
                text = choice.get("text")
                if text:
                    acc["content"].append(text)
                    self.started = True
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if delta.get("content"):
                acc["content"].append(delta["content"])
                self.started = True
            for key in ("reasoning_content", "reasoning", "refusal"):
                if delta.get(key):
                    acc.setdefault(key, []).append(delta[key])
                    self.started = True
            for tc in delta.get("tool_calls") or ():
                if not isinstance(tc, dict):
                    continue
                self.started = True
                calls = acc.setdefault("tool_calls", {})
                entry = calls.setdefault(
                    as_int(tc.get("index")),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if tc.get("id"):
                    entry["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name") and not entry["function"]["name"]:
                    entry["function"]["name"] = fn["name"]
                if fn.get("arguments"):
                    entry["function"]["arguments"] += fn["arguments"]

    def assembled(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            text = "".join(acc["content"])
            if self._completions:
                choices.append(
                    {"index": index, "text": text, "finish_reason": acc.get("finish_reason")}
                )
                continue
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            for key in ("reasoning_content", "reasoning", "refusal"):
                if key in acc:
                    message[key] = "".join(acc[key])
            if "tool_calls" in acc:
                message["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
            choices.append(
                {"index": index, "message": message, "finish_reason": acc.get("finish_reason")}
            )
        out: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "text_completion" if self._completions else "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": choices,
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_openai()
        return out


class OpenAI(Provider):
    name = "openai"
    default_base_url = "https://api.openai.com"
    route_types = frozenset(
        {RouteType.CHAT, RouteType.COMPLETIONS, RouteType.EMBEDDINGS, RouteType.PRESERVE}
    )

    def url_for(self, spec: CallSpec) -> str:
        if spec.route_type is RouteType.PRESERVE:
            return preserve_url(spec, self.default_base_url)
        return join_url(spec.options.upstream_url, self.default_base_url, PATHS[spec.route_type])

    def build_request(self, spec: CallSpec) -> UpstreamRequest:
        url = self.url_for(spec)
        if spec.route_type is RouteType.PRESERVE:
            return UpstreamRequest(spec.method, url, {}, spec.raw_body, spec.stream)
        body = dict(spec.body)
        if spec.model:
            body["model"] = spec.model
        body.pop("top_k", None)  # not an OpenAI parameter
        if spec.route_type is not RouteType.EMBEDDINGS:
            if spec.stream:
                body["stream"] = True
                options = body.get("stream_options")
                body["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
            else:
                body.pop("stream", None)
                body.pop("stream_options", None)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if spec.stream else "application/json",
        }
        return UpstreamRequest("POST", url, headers, json_body(body), spec.stream)

    def parse_response(
        self, spec: CallSpec, status: int, headers: dict[str, str], body: bytes
    ) -> Reply:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if spec.route_type is RouteType.PRESERVE:
            data = data if isinstance(data, dict) else {}
            return Reply(body, data, self.usage_from(data), data.get("model"))
        if not isinstance(data, dict):
            raise ProviderError(502, f"{self.name}: the upstream answer is not a JSON object")
        required = _REQUIRED[spec.route_type]
        if required not in data:
            raise ProviderError(502, f"{self.name}: the upstream answer has no '{required}'")
        return Reply(body, data, self.usage_from(data), data.get("model"))

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        err = generic_error(self.name, status, headers, body)
        try:
            data = json.loads(body)
        except ValueError:
            return err
        inner = data.get("error") if isinstance(data, dict) else None
        if isinstance(inner, dict):
            if isinstance(inner.get("type"), str):
                err.type = inner["type"]
            code, param = inner.get("code"), inner.get("param")
            err.code = code if isinstance(code, str | int) and not isinstance(code, bool) else None
            err.param = param if isinstance(param, str) else None
        return err

    def stream_translator(self, spec: CallSpec) -> OpenAIStream:
        return OpenAIStream(spec)

    def usage_from(self, data: dict[str, Any]) -> Usage | None:
        return usage_from_openai(data.get("usage"))


PROVIDER = OpenAI()


_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def clean_choices(choices: list[Any]) -> list[dict[str, Any]]:
    """The choices of a stream chunk with only OpenAI's types where the running answer
    is read: text fields that are strings, tool calls that are objects with a function
    object whose name and arguments are strings. What is not is left out."""
    out = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        choice = dict(choice)
        if "text" in choice and not isinstance(choice["text"], str):
            del choice["text"]
        if not isinstance(choice.get("finish_reason"), (str, type(None))):
            choice["finish_reason"] = None
        delta = choice.get("delta")
        if isinstance(delta, dict):
            delta = {k: v for k, v in delta.items() if k not in _TEXT_FIELDS or isinstance(v, str)}
            calls = delta.get("tool_calls")
            if calls is not None:
                delta["tool_calls"] = [
                    _clean_call(c) for c in (calls if isinstance(calls, list) else ())
                ]
            choice["delta"] = delta
        out.append(choice)
    return out


def _clean_call(call: Any) -> dict[str, Any]:
    call = dict(call) if isinstance(call, dict) else {}
    if not isinstance(call.get("id"), (str, type(None))):
        del call["id"]
    fn = call.get("function")
    fn = dict(fn) if isinstance(fn, dict) else {}
    for key in ("name", "arguments"):
        if key in fn and not isinstance(fn[key], str):
            del fn[key]
    call["function"] = fn
    return call
