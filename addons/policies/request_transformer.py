"""Kong's ai-request-transformer: an LLM rewrites the client's request body.

In the `request` hook, before the prompt plugins and ai-proxy (priority 777): the
client's body (as text) is sent to the plugin's own LLM (`llm`, an ai-proxy block) as
the user message, with `prompt` as the system message. The answer, or the match of
`transformation_extract_pattern` in it, becomes the body the rest of the chain sees:

- on an ai-proxy route it must be a JSON object (for `preserve` routes, anything): it
  replaces the parsed body that the prompt plugins and ai-proxy read. An answer fenced
  in a Markdown code block is read inside the fence;
- on a plain service route the answer's bytes are sent to the service as they are.

When ai-sanitizer runs for the call too (it runs later, at 771), the body is masked
with the sanitizer's masker before it is sent to the plugin's LLM, and the placeholders
in the LLM's answer are put back before the rest of the chain sees it: the personal data
and secrets the sanitizer masks never reach either LLM, and the record keeps the masked
text the plugin sent.

Failures answer the client in OpenAI's error shape: 400 when the answer does not match
the pattern or is not the JSON an ai-proxy route needs, 413 when the body is larger
than `max_request_body_size`, 502/504 when the LLM fails or cannot be reached, 500 when
the sanitizer cannot scan the body (its `stop_on_error`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from addons import llm_request
from addons.policies import sanitizer
from addons.policies._llm_call import (
    TransformerConfig,
    ask,
    json_value,
    note,
    refuse,
    transform_or_refuse,
)
from addons.policies.base import PolicyAddon, set_json_body
from providers.base import ProviderError, RouteType

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.calls import Call

NAME = "ai-request-transformer"
PRIORITY = 777
CONSUMER_SCOPE = False  # Kong: no_consumer

#: where the call record's context keeps the plugin's LLM usage
CONTEXT_KEY = "ai_request_transformer"

log = logging.getLogger("llmitm")


class Config(TransformerConfig):
    """Kong's ai-request-transformer: `prompt`, `transformation_extract_pattern`,
    `max_request_body_size`, `http_timeout`, `https_verify`, the forward proxy fields,
    and `llm` (an ai-proxy block)."""


class Policy(PolicyAddon):
    name = "llmitm-ai-request-transformer"
    plugin = NAME

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > conf.max_request_body_size:
            refuse(flow, call, NAME, llm_request.too_large(int(length), conf.max_request_body_size))

    async def request(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        await transform_or_refuse(flow, call, NAME, self._transform(flow, call, conf))

    async def _transform(self, flow: http.HTTPFlow, call: Call, conf: Config) -> None:
        raw = llm_request.body_bytes(flow.request)
        if len(raw) > conf.max_request_body_size:
            raise llm_request.too_large(len(raw), conf.max_request_body_size)
        sent = raw.decode("utf-8", "replace")
        shield = sanitizer.prompt_masker(flow, call)
        if shield is not None:
            sent = await _masked(sent, *shield)
        answer = await ask(self.gw, conf.llm, conf.prompt, sent, conf.transport())
        note(call, CONTEXT_KEY, conf.llm, answer, sent)
        new = conf.extract(answer.text)
        if new is None:
            raise _failed("the LLM's answer did not match transformation_extract_pattern")

        proxy = call.plugin("ai-proxy")
        if proxy is None or proxy.route_type is RouteType.PRESERVE:
            # a plain service or a preserve route: the answer's bytes, as Kong sends them
            # (what the sanitizer masked for the LLM put back)
            if shield is not None:
                new = sanitizer.restore_text(shield[1], new)
            flow.request.content = new.encode()
            call.body = None
            return
        try:
            parsed = json_value(new)
            what = f"a JSON {_json_type(parsed)}"
        except ValueError:
            parsed, what = None, "not JSON"
        if not isinstance(parsed, dict):
            log.debug("llmitm: %s: the LLM answered %r", NAME, new[:500])
            raise _failed(
                f"the transformed body is {what}; this route's ai-proxy needs a JSON object"
            )
        if shield is not None:  # the originals back in its strings (the sanitizer masks
            sanitizer.restore_document(shield[1], parsed)  # them again before ai-proxy)
        set_json_body(flow, call, parsed)
        flow.request.headers["content-type"] = "application/json"


async def _masked(text: str, conf: sanitizer.Config, masker: sanitizer.Masker) -> str:
    """The body as the plugin's LLM may see it: what the ai-sanitizer masks, masked (a
    JSON body's strings, or the whole text)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = text
    if not isinstance(doc, (dict, list)):  # a text, or a lone JSON scalar: as text
        doc = text
    try:
        masked = await sanitizer.mask_document(masker, conf, doc)
    except sanitizer.SanitizerError as e:
        if conf.stop_on_error:
            raise ProviderError(
                500,
                f"the ai-sanitizer could not scan the request: {e}",
                "api_error",
                "sanitizer_error",
            ) from None
        log.warning("llmitm: %s sends a request its ai-sanitizer could not scan: %s", NAME, e)
        return text
    if isinstance(masked, str):
        return masked
    return json.dumps(masked, ensure_ascii=False)


def _failed(message: str) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", "transformation_failed")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
