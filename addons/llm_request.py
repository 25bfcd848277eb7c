"""Checks and rewrites of a client's OpenAI-format request body (pure helpers).

Kong's model rules live here: the configured model wins, a client asking for another
gets a 400, `$(headers.x)`-style templates fill model fields from the request, and the
route's options override the client's sampling parameters.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from providers.base import ProviderError, RouteType
from providers.options import ModelConfig

_TEMPLATE = re.compile(r"\$\(([a-z_]+)\.([^)]+)\)")

#: body fields whose JSON type the gateway checks before anything is sent upstream
_NUMBERS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
_INTEGERS = ("max_tokens", "max_completion_tokens", "n", "top_k", "seed")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", code, param)


def body_bytes(request: Any) -> bytes:
    """A mitmproxy request's body, decoded (gzip, ...); a 400 when it cannot be."""
    try:
        return request.content or b""
    except ValueError:
        raise bad_request("cannot decode the request body's content-encoding") from None


def header_dict(headers: Any) -> dict[str, str]:
    """A mitmproxy `Headers` as a dict with lower-case names, the values of a repeated
    name joined with ", " (what `headers[name]` gives). Read from the raw fields: eight
    times faster than `headers.items()`, which looks every name up again."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers.fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def too_large(size: int, limit: int) -> ProviderError:
    """The 413 of a body over a plugin's `max_request_body_size`."""
    return ProviderError(
        413,
        f"request body of {size} bytes exceeds max_request_body_size ({limit} bytes)",
        "invalid_request_error",
        "request_too_large",
    )


#: deepest nesting of arrays and objects a request body may have. Real requests stay far
#: below it (a JSON schema of a tool is a few dozen levels at most); deeper ones would
#: hit Python's recursion limit in the encoders after us, and orjson's (254 levels) when
#: the record, which holds the body a few levels down, is written.
MAX_DEPTH = 128


def _too_deep() -> ProviderError:
    return bad_request(
        f"request body is nested too deeply (more than {MAX_DEPTH} levels of arrays and objects)",
        code="invalid_json",
    )


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type says."""
    try:
        data = json.loads(raw, parse_constant=_not_json) if raw else None
    except RecursionError:  # thousands of `[`: deeper than the parser's stack
        raise _too_deep() from None
    except ValueError as e:
        raise bad_request(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    # a body can only be this deep if it has this many brackets: two C-speed counts
    # spare the walk to almost every request
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and depth_exceeds(data, MAX_DEPTH):
        raise _too_deep()
    return data


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether parsed JSON `value` nests arrays and objects more than `limit` levels
    deep. Level by level, without recursion: the value may be deeper than Python's
    stack (about 50 us for a 200-message conversation of 65 KB)."""
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        add = below.append
        for node in level:
            for child in node.values() if type(node) is dict else node:
                kind = type(child)
                if kind is dict or kind is list:
                    add(child)
        level = below
        depth += 1
    return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(route_type: RouteType, body: dict[str, Any]) -> None:
    """Reject what no provider would accept, naming the field."""
    if "model" in body and body["model"] is not None and not isinstance(body["model"], str):
        raise bad_request("'model' must be a string", "model")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise bad_request("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    for name in _NUMBERS:
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad_request(f"'{name}' must be a number", name)
    for name in _INTEGERS:
        v = body.get(name)
        if v is not None and not _is_int(v):
            raise bad_request(f"'{name}' must be an integer", name)
    if route_type is RouteType.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty array", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise bad_request(f"'messages[{i}]' must be an object with a 'role'", "messages")
            content = m.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise bad_request(
                    f"'messages[{i}].content' must be a string or an array of parts", "messages"
                )
    elif route_type is RouteType.COMPLETIONS:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)) or prompt in ("", []):
            raise bad_request("'prompt' must be a non-empty string or array", "prompt")
    elif route_type is RouteType.EMBEDDINGS:
        data = body.get("input")
        if not isinstance(data, (str, list)) or data in ("", []):
            raise bad_request("'input' must be a non-empty string or array", "input")


def has_templates(model: ModelConfig) -> bool:
    return "$(" in model.model_dump_json()


def render_model(model: ModelConfig, lookup: dict[str, Any]) -> ModelConfig:
    """`model` with every `$(source.key)` replaced from `lookup[source]` (a mapping)."""

    def fill(value: Any) -> Any:
        if isinstance(value, str) and "$(" in value:

            def sub(m: re.Match[str]) -> str:
                source, key = m.group(1), m.group(2)
                if source not in lookup:
                    raise bad_request(f"template source '{source}' is not supported")
                found = lookup[source].get(key)
                if found is None or found == "":
                    raise bad_request(f"{source} key {key} was not provided")
                return str(found)

            return _TEMPLATE.sub(sub, value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    try:
        return ModelConfig.model_validate(fill(model.model_dump(exclude_unset=True)))
    except ValidationError as e:  # a value the client sent made the model config invalid
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "model"
        msg = first["msg"].removeprefix("Value error, ")
        raise bad_request(f"model.{where} after templating: {msg}") from None


def resolve_model(
    route_type: RouteType, configured: str | None, body: dict[str, Any]
) -> str | None:
    """Kong's rule: the configured model wins; a different client model is a 400."""
    asked = body.get("model")
    if configured:
        if isinstance(asked, str) and asked and asked != configured:
            raise bad_request(f"cannot use own model - must be: {configured}", "model")
        return configured
    if isinstance(asked, str) and asked:
        return asked
    if route_type is RouteType.PRESERVE:
        return None
    raise bad_request("model parameter not found in request, nor in gateway configuration", "model")


def apply_options(
    route_type: RouteType, body: dict[str, Any], model: ModelConfig
) -> dict[str, Any]:
    """The body with the route's sampling options applied (Kong: options win)."""
    if route_type not in (RouteType.CHAT, RouteType.COMPLETIONS):
        return body
    o = model.options
    out = dict(body)
    if o.max_tokens is not None:
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        out[key] = o.max_tokens
    if o.temperature is not None:
        out["temperature"] = o.temperature
    if o.top_p is not None:
        out["top_p"] = o.top_p
    if o.top_k is not None:
        out["top_k"] = o.top_k
    return out


def strip_gateway_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Remove what only the gateway reads: a `metadata` object for tracing, unless it is
    OpenAI's own stored-completion metadata (`store: true` and string values)."""
    meta = body.get("metadata")
    if meta is None:
        return body
    if (
        body.get("store") is True
        and isinstance(meta, dict)
        and all(isinstance(v, str) for v in meta.values())
    ):
        return body
    out = dict(body)
    del out["metadata"]
    return out


def set_query_param(url: str, name: str, value: str) -> str:
    """`url` with query parameter `name` set to `value` (a provider key by `param_name`)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def set_body_param(body: bytes, name: str, value: str, keep_existing: bool = False) -> bytes:
    """A JSON body with field `name` set to `value` (a provider key in the body); kept
    as it is when it is not a JSON object, or has the field and `keep_existing`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if isinstance(data, dict) and (name not in data or not keep_existing):
        data[name] = value
        return json.dumps(data).encode()
    return body
