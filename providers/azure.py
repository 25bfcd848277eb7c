"""Azure OpenAI: OpenAI's formats on a deployment of an Azure OpenAI resource.

The request and the answer are OpenAI's (requests are built, and answers passed through
and observed, by the OpenAI-compatible adapter); what is Azure's own:

- **URL.** `https://{azure_instance}.openai.azure.com/openai/deployments/{azure_deployment_id}/`
  followed by `chat/completions`, `completions` or `embeddings`, with
  `?api-version=...`. Both options are required (as in Kong, which does not default the
  deployment to the model name). With `upstream_url` (no `azure_instance` needed), a
  bare origin keeps that path and a URL with a path is used as written (the deployment
  is then the URL's business).
- **api-version.** The client's own `api-version` query parameter wins (Kong's rule: the
  `AzureOpenAI` SDK sends one), then one written in `upstream_url`, then
  `model.options.azure_api_version` (default `2023-05-15`, Kong's). No other client
  query parameter is forwarded. `preserve` routes send the client's path and query to
  the resource, with `api-version` added when the client sent none.
- **The model field** is sent as the route's model (or the client's), as Kong does:
  Azure serves the deployment's model whatever it says.
- **Usage in streams.** `stream_options.include_usage` exists from api-version
  2024-09-01(-preview) on (and in the v1/preview APIs): the gateway asks for it there.
  Older versions reject the field (400 "Unrecognized request argument supplied:
  stream_options"), so it is removed, the client's included: such a stream has no usage
  and the call record estimates it.
- **Content filtering.** `prompt_filter_results` (in the first stream chunk, which has
  `choices: []`) and `content_filter_results` on choices reach the client unchanged, and
  go into the recorded answer; `finish_reason: "content_filter"` is OpenAI's value. A
  prompt the filter rejects is Azure's 400 with code `content_filter`: the client gets
  that status, `invalid_request_error`, code `content_filter`, and the message names
  the filtered categories.
- **Errors** keep Azure's status and message; Azure's `type` is often null (the status
  decides it then). A 429 without a `Retry-After` header gets one from the message's
  "retry after N seconds".
- **Auth**: the route's `auth`, `api-key: <key>` or `Authorization: Bearer <Entra token>`.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from providers.base import (
    CallSpec,
    Provider,
    ProviderError,
    RouteType,
    preserve_url,
)
from providers.openai_compatible import CompatibleStream, Host, OpenAICompatible

NAME = "azure"
DEFAULT_API_VERSION = "2023-05-15"
#: the first api-version (by date) that takes stream_options
STREAM_OPTIONS_SINCE = "2024-09-01"

PATHS = {
    RouteType.CHAT: "/chat/completions",
    RouteType.COMPLETIONS: "/completions",
    RouteType.EMBEDDINGS: "/embeddings",
}

#: URLs are built by `Azure.url_for` (the deployment is part of the path); OpenAI's usage:
#: prompt_tokens counts the cached prompt_tokens_details.cached_tokens too
HOST = Host(NAME, None, PATHS, input_includes_cache=True)

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")
_RETRY = re.compile(r"retry after (\d+) seconds?", re.IGNORECASE)


def supports_stream_options(api_version: str) -> bool:
    """Whether an Azure api-version takes `stream_options` (dated versions from
    2024-09-01 on; the undated v1 API's "v1", "latest" and "preview" do)."""
    m = _DATE.match(api_version)
    return m is None or m.group(1) >= STREAM_OPTIONS_SINCE


def _query_value(query: str, name: str) -> str | None:
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name and value:
            return value
    return None


def _set_query(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    pairs.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(pairs)))


class AzureStream(CompatibleStream):
    """Azure's stream: OpenAI's, with content filter results kept for the record."""

    def __init__(self, spec: CallSpec) -> None:
        super().__init__(spec, NAME)
        self._prompt_filters: list[Any] = []
        self._choice_filters: dict[int, dict[str, Any]] = {}

    def _observe(self, obj: dict[str, Any]) -> None:
        found = obj.get("prompt_filter_results")
        if isinstance(found, list):
            self._prompt_filters.extend(found)
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and isinstance(choice.get("content_filter_results"), dict):
                index = choice.get("index")
                index = index if isinstance(index, int) else 0
                self._choice_filters.setdefault(index, {}).update(choice["content_filter_results"])

    def assembled(self) -> dict[str, Any]:
        out = super().assembled()
        if self._prompt_filters:
            out["prompt_filter_results"] = self._prompt_filters
        for choice in out["choices"]:
            filters = self._choice_filters.get(choice["index"])
            if filters:
                choice["content_filter_results"] = filters
        return out


class Azure(OpenAICompatible):
    auth_headers = ("api-key", "authorization")

    def __init__(self) -> None:
        super().__init__(HOST)

    def config_errors(self, model: Any, route_type: RouteType, auth: Any = None) -> list[str]:
        errors = Provider.config_errors(self, model, route_type, auth)
        options = getattr(model, "options", None)
        upstream = getattr(options, "upstream_url", None)
        if not upstream and not getattr(options, "azure_instance", None):
            errors.append(
                "provider 'azure' needs model.options.azure_instance (the resource name "
                "of https://<azure_instance>.openai.azure.com), or an upstream_url"
            )
        has_path = bool(upstream) and urlsplit(upstream).path not in ("", "/")
        if (
            route_type is not RouteType.PRESERVE
            and not has_path
            and not getattr(options, "azure_deployment_id", None)
        ):
            errors.append(
                "provider 'azure' needs model.options.azure_deployment_id (the deployment "
                "the calls go to; it may be a template such as $(uri_captures.deployment))"
            )
        if not getattr(options, "azure_api_version", None):
            errors.append(
                "provider 'azure' needs model.options.azure_api_version (e.g. \"2024-10-21\")"
            )
        return errors

    # ----------------------------------------------------------------- requests

    def api_version(self, spec: CallSpec) -> str:
        """The api-version the call uses: the client's, the upstream_url's, the route's."""
        upstream = spec.options.upstream_url
        return (
            _query_value(spec.query, "api-version")
            or (_query_value(urlsplit(upstream).query, "api-version") if upstream else None)
            or spec.options.azure_api_version
            or DEFAULT_API_VERSION
        )

    def _origin(self, spec: CallSpec) -> str:
        instance = spec.options.azure_instance
        if not instance:
            raise ProviderError(
                500, "provider 'azure' needs model.options.azure_instance", "api_error"
            )
        return f"https://{instance}.openai.azure.com"

    def url_for(self, spec: CallSpec) -> str:
        options = spec.options
        version = self.api_version(spec)
        if spec.route_type is RouteType.PRESERVE:
            base = options.upstream_url or self._origin(spec)
            url = preserve_url(spec, base)
            if _query_value(urlsplit(url).query, "api-version"):
                return url
            return _set_query(url, "api-version", version)
        deployment = options.azure_deployment_id or spec.model or ""
        path = f"/openai/deployments/{quote(deployment, safe='')}{PATHS[spec.route_type]}"
        upstream = options.upstream_url
        if upstream:
            parts = urlsplit(upstream)
            url = (
                upstream
                if parts.path not in ("", "/")
                else f"{parts.scheme}://{parts.netloc}{path}"
            )
            if parts.query and url != upstream:
                url += f"?{parts.query}"
        else:
            url = self._origin(spec) + path
        return _set_query(url, "api-version", version)

    def stream_usage(self, spec: CallSpec) -> bool:
        return supports_stream_options(self.api_version(spec))

    # ------------------------------------------------------------------ answers

    def parse_error(self, status: int, headers: dict[str, str], body: bytes) -> ProviderError:
        err = super().parse_error(status, headers, body)  # a text message, always
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        inner = data.get("error") if isinstance(data, dict) else None
        if isinstance(inner, dict):
            innererror = inner.get("innererror")
            innererror = innererror if isinstance(innererror, dict) else {}
            if (
                inner.get("code") == "content_filter"
                or innererror.get("code") == "ResponsibleAIPolicyViolation"
            ):
                err.type = "invalid_request_error" if status < 500 else err.type
                err.code = "content_filter"
                err.param = err.param or "prompt"
                filtered = _filtered_categories(innererror.get("content_filter_result"))
                if filtered and "filtered:" not in err.message:
                    err.message = f"{err.message} (filtered: {filtered})"
        if status == 429 and not any(k.lower() == "retry-after" for k in headers):
            m = _RETRY.search(err.message)
            if m:
                err.headers["retry-after"] = m.group(1)
        return err

    def stream_translator(self, spec: CallSpec) -> AzureStream:
        return AzureStream(spec)


def _filtered_categories(result: Any) -> str:
    """`hate (high), jailbreak` for the categories a content filter result flags."""
    if not isinstance(result, dict):
        return ""
    names = []
    for category, verdict in result.items():
        if isinstance(verdict, dict) and verdict.get("filtered"):
            severity = verdict.get("severity")
            names.append(f"{category} ({severity})" if isinstance(severity, str) else category)
    return ", ".join(names)


PROVIDER = Azure()
