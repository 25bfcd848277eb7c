"""Kong's ai-response-transformer: an LLM rewrites the upstream's answer.

In the `response` hook, for answers that came from the upstream (ai-proxy's translated
answer, or a plain service's): the answer's body (as text) is sent to the plugin's own
LLM (`llm`, an ai-proxy block) as the user message, with `prompt` as the system
message. The answer, or the match of `transformation_extract_pattern` in it, becomes
the body the client receives, with the upstream's status and headers.

With `parse_llm_response_json_instructions`, the LLM's answer is read as JSON
instructions, `{"status": 201, "headers": {"x-a": "b"}, "body": ...}`: the status
(default 200, as Kong), the headers (set over the upstream's) and the body (a string
as it is; any other JSON value encoded, `application/json`; absent: the whole object,
as Kong) are what the client gets. This lets the LLM refuse an answer (a 4xx) as well
as rewrite it.

Not transformed: streamed answers (passed through unchanged, as in Kong, whose
transformers buffer), and answers the gateway made itself (its errors, a CORS
preflight, ...). Failures answer the client in OpenAI's error shape: 400 when the
answer does not match the pattern (Kong's), 502 when the instructions are not usable or
the upstream's answer is larger than `max_request_body_size`, 502/504 when the LLM
fails or cannot be reached.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import Field

from addons.policies._llm_call import (
    TransformerConfig,
    ask,
    json_value,
    note,
    transform_or_refuse,
)
from addons.policies.base import PolicyAddon
from providers.base import ProviderError

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.calls import Call

NAME = "ai-response-transformer"
# Kong's current priority (768; it was 769 before Kong 3.8's AI plugin framework)
PRIORITY = 768
CONSUMER_SCOPE = False  # Kong: no_consumer

#: where the call record's context keeps the plugin's LLM usage
CONTEXT_KEY = "ai_response_transformer"

# Framing headers the instructions cannot set: the gateway frames the new body itself.
_FRAMING = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


class Config(TransformerConfig):
    """Kong's ai-response-transformer: the transformer fields, and
    `parse_llm_response_json_instructions`."""

    parse_llm_response_json_instructions: bool = Field(
        False,
        description="Read the LLM's answer as JSON instructions {status, headers, body} "
        "and answer the client with them (the prompt must ask for that format).",
    )


class Instructions:
    """What the LLM said the client gets."""

    __slots__ = ("status", "headers", "body", "json_body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, json_body: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.json_body = json_body


def parse_instructions(text: str) -> Instructions:
    """Kong's JSON instructions: `status` (default 200), `headers`, `body` (absent: the
    whole object). Raises a 502 ProviderError naming what is wrong."""
    try:
        data = json_value(text)
    except ValueError as e:
        raise _bad_instructions(f"the LLM's answer is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise _bad_instructions("the LLM's answer is not a JSON object")

    status: Any = data.get("status", 200)
    if isinstance(status, str) and status.strip().isdigit():
        status = int(status.strip())
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise _bad_instructions(f"'status' must be an HTTP status code, not {status!r}")

    raw_headers = data.get("headers")
    headers: dict[str, str] = {}
    if raw_headers is not None:
        if not isinstance(raw_headers, dict):
            raise _bad_instructions("'headers' must be an object of header names and values")
        for name, value in raw_headers.items():
            if not name or any(c in name for c in " \t\r\n:"):
                raise _bad_instructions(f"{name!r} is not a header name")
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            if not isinstance(value, str) or any(c in value for c in "\r\n"):
                raise _bad_instructions(f"header {name!r} must have a one-line string value")
            if name.lower() not in _FRAMING:
                headers[name] = value

    body: Any = data.get("body", data)
    if isinstance(body, str):
        return Instructions(status, headers, body.encode(), json_body=False)
    if body is None:
        return Instructions(status, headers, b"", json_body=False)
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Instructions(status, headers, encoded, json_body=True)


class Policy(PolicyAddon):
    name = "llmitm-ai-response-transformer"
    plugin = NAME

    async def response(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or flow.response is None:
            return
        conf = call.plugin(NAME)
        if conf is None or not from_upstream(flow, call):
            return
        await transform_or_refuse(flow, call, NAME, self._transform(flow, call, conf))

    async def _transform(self, flow: http.HTTPFlow, call: Call, conf: Config) -> None:
        resp = flow.response
        assert resp is not None
        try:
            raw = resp.content or b""
        except ValueError:
            raise _failed(502, "cannot decode the upstream answer's content-encoding") from None
        if len(raw) > conf.max_request_body_size:
            raise _failed(
                502,
                f"the upstream answer of {len(raw)} bytes exceeds max_request_body_size "
                f"({conf.max_request_body_size} bytes): not transformed, not sent",
            )
        sent = raw.decode("utf-8", "replace")
        answer = await ask(self.gw, conf.llm, conf.prompt, sent, conf.transport())
        note(call, CONTEXT_KEY, conf.llm, answer, sent)
        new = conf.extract(answer.text)
        if new is None:
            raise _failed(400, "the LLM's answer did not match transformation_extract_pattern")

        if conf.parse_llm_response_json_instructions:
            todo = parse_instructions(new)
        else:
            todo = Instructions(resp.status_code, {}, new.encode(), json_body=False)
        apply(resp, todo)
        if call.log_payloads:  # the record shows what the client received
            try:
                call.response_payload = json.loads(todo.body)
            except (ValueError, RecursionError):
                call.response_payload = todo.body.decode("utf-8", "replace")


def from_upstream(flow: http.HTTPFlow, call: Call) -> bool:
    """Whether the flow's response is a whole answer from the upstream (not streamed,
    not made by the gateway)."""
    resp = flow.response
    if resp is None or resp.stream or call.route is None:
        return False
    if resp.status_code < 200 or flow.request.method == "HEAD":
        return False  # a protocol switch, or an answer that has no body by definition
    if call.error is not None and call.error_source != "upstream":
        return False  # the gateway refused or failed the call itself
    if call.provider is not None:  # ai-proxy: the gateway did the upstream I/O itself
        return call.upstream_status is not None
    # a plain service: mitmproxy connected to it (a response an addon set has no server)
    return flow.server_conn.timestamp_start is not None


def apply(resp: http.Response, todo: Instructions) -> None:
    """Give the client `todo`'s status, headers and body."""
    for name in ("content-encoding", "transfer-encoding", "content-length"):
        resp.headers.pop(name, None)
    if todo.status != resp.status_code:
        resp.status_code = todo.status
        resp.reason = (
            HTTPStatus(todo.status).phrase if todo.status in HTTPStatus._value2member_map_ else ""
        )
    for name, value in todo.headers.items():
        resp.headers[name] = value
    if todo.json_body and not any(n.lower() == "content-type" for n in todo.headers):
        resp.headers["content-type"] = "application/json"
    resp.content = todo.body


def _failed(status: int, message: str) -> ProviderError:
    kind = "invalid_request_error" if status < 500 else "api_error"
    return ProviderError(status, message, kind, "transformation_failed")


def _bad_instructions(why: str) -> ProviderError:
    return _failed(502, f"failed to parse JSON response instructions from the LLM: {why}")
