"""Responses the gateway itself produces: always OpenAI's error shape, never a traceback."""

from __future__ import annotations

import json

from mitmproxy import http

from providers.base import ProviderError, error_type_for


def error_response(
    status: int,
    message: str,
    type: str | None = None,
    code: str | int | None = None,
    headers: dict[str, str] | None = None,
) -> http.Response:
    body = {
        "error": {
            "message": message,
            "type": type or error_type_for(status),
            "param": None,
            "code": code,
        }
    }
    hdrs = {"content-type": "application/json", **(headers or {})}
    return http.Response.make(status, json.dumps(body).encode(), hdrs)


def from_provider_error(err: ProviderError, headers: dict[str, str] | None = None) -> http.Response:
    hdrs = {"content-type": "application/json", **(headers or {}), **err.headers}
    return http.Response.make(err.status, err.body(), hdrs)


class GatewayError(ProviderError):
    """An error the gateway raises about a client's request (4xx) or its own state."""
