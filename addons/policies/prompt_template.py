"""ai-prompt-template (Kong's): requests name a prompt template the gateway holds and
fill its `{{placeholders}}`, so clients send values, never the prompt itself.

A chat request names a template in place of its messages, a completions request in
place of its prompt:

    {"model": "gpt-4o", "messages": "{template://explain}", "properties": {"thing": "gravity"}}

The template is a JSON body fragment (`{"messages": [...]}` or `{"prompt": "..."}`) whose
strings hold `{{name}}` placeholders. Each value is JSON-escaped before it is put in,
so a value with quotes or newlines stays inside its string: a property cannot add
messages or fields. The rendered fragment replaces the reference; the rest of the
client's body (model, temperature, stream, ...) is kept and `properties` is removed
(Kong replaces the whole body with the template).

Templates are checked when the config loads: one that is not valid JSON once its
placeholders are filled, or that has no `messages` list or `prompt`, is a load error
naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field, PrivateAttr, model_validator

from addons.policies import sanitizer
from addons.policies.base import (
    PolicyAddon,
    max_request_body_size_field,
    read_body,
    refuse_request,
    set_json_body,
)
from providers.base import ProviderError
from providers.options import Strict

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from mitmproxy import http

    from addons.calls import Call


NAME = "ai-prompt-template"
PRIORITY = 773
CONSUMER_SCOPE = True

#: `{{name}}`: letters, digits and underscores, no spaces (Kong's placeholders)
PLACEHOLDER = re.compile(r"\{\{([A-Za-z0-9_]+)\}\}")
REFERENCE_PREFIX = "{template://"
# What a placeholder is replaced by when a template is checked at load.
_DUMMY = "llmitm"
# The fields a template fills: chat messages or a completions prompt.
KINDS = ("messages", "prompt")


@dataclass(frozen=True, slots=True)
class Compiled:
    """A template checked at load: its text, what it fills and its placeholders."""

    name: str
    text: str
    kind: str  # "messages" or "prompt"
    placeholders: tuple[str, ...]  # in order of first use


def compile_template(name: str, text: str) -> Compiled:
    """Check a template (raises ValueError saying what is wrong with it)."""
    placeholders = tuple(dict.fromkeys(PLACEHOLDER.findall(text)))
    try:
        data = orjson.loads(PLACEHOLDER.sub(_DUMMY, text))
    except orjson.JSONDecodeError as e:
        raise ValueError(
            f"template {name!r} is not valid JSON once its {{{{placeholders}}}} are "
            f"filled (a placeholder must be inside a JSON string): {e}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"template {name!r} must be a JSON object with 'messages' or 'prompt', "
            f"got {type(data).__name__}"
        )
    kinds = [k for k in KINDS if k in data]
    if len(kinds) != 1:
        raise ValueError(
            f"template {name!r} must have either 'messages' (llm/v1/chat) or 'prompt' "
            "(llm/v1/completions)" + (", not both" if kinds else "")
        )
    kind = kinds[0]
    if kind == "messages":
        problem = _messages_problem(data["messages"])
    else:
        prompt = data["prompt"]
        ok = isinstance(prompt, str) or (
            isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
        )
        problem = None if ok else "'prompt' must be a string or a list of strings"
    if problem:
        raise ValueError(f"template {name!r}: {problem}")
    return Compiled(name, text, kind, placeholders)


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"messages[{i}] must be an object with a string 'role'"
        content = m.get("content")
        if not isinstance(content, (str, list)):
            return f"messages[{i}] must have a 'content' string or list of parts"
    return None


def template_name(reference: Any) -> str | None:
    """The template a `{template://NAME}` reference names, or None if it is not one."""
    if (
        isinstance(reference, str)
        and reference.startswith(REFERENCE_PREFIX)
        and reference.endswith("}")
    ):
        return reference[len(REFERENCE_PREFIX) : -1]
    return None


def _escaped(key: str, value: Any) -> str:
    """A property value as it goes inside a JSON string (without the quotes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()[1:-1]
    if isinstance(value, (int, float)):
        return orjson.dumps(value).decode()
    kind = "null" if value is None else "object" if isinstance(value, dict) else "array"
    raise _bad(f"property values must be a string, number or boolean: {key!r} is {kind}")


def render(template: Compiled, properties: Any) -> dict[str, Any]:
    """The template filled with `properties` (raises a 400 ProviderError when a
    placeholder has no value or a value cannot be used)."""
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise _bad("properties must be an object")
    missing = [p for p in template.placeholders if p not in properties]
    if missing:
        raise _bad(
            "missing template parameters: " + ", ".join(f"[{p}]" for p in missing),
            param="properties",
            code="missing_template_parameters",
        )
    values = {p: _escaped(p, properties[p]) for p in template.placeholders}
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], template.text)
    return orjson.loads(text)  # valid: checked at load, and the values are escaped


def _bad(
    message: str, param: str | None = None, code: str = "invalid_template_request"
) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", code, param)


# ---------------------------------------------------------------------------- config


class Template(Strict):
    """One template: its name and its JSON text."""

    name: str = Field(
        min_length=1,
        description="Unique name of the template; requests call it with `{template://NAME}`.",
    )
    template: str = Field(
        min_length=1,
        description="The template: a JSON object with `messages` (llm/v1/chat) or `prompt` "
        "(llm/v1/completions), whose strings may hold `{{placeholders}}` filled from the "
        "request's `properties`.",
    )
    _compiled: Compiled | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> Template:
        self._compiled = compile_template(self.name, self.template)
        return self


class Config(Strict):
    """Kong's ai-prompt-template `config`."""

    templates: list[Template] = Field(
        min_length=1, description="The templates requests can call, each with a unique name."
    )
    allow_untemplated_requests: bool = Field(
        True,
        description="Let requests that do not call a template through (false: they get 400).",
    )
    log_original_request: bool = Field(
        False,
        description="Keep the client's original request (before rendering) in the call "
        "record, as `context.original_request`.",
    )
    max_request_body_size: int = max_request_body_size_field()
    _by_name: dict[str, Compiled] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        seen: dict[str, Compiled] = {}
        dupes = []
        for t in self.templates:
            if t.name in seen:
                dupes.append(t.name)
            assert t._compiled is not None
            seen[t.name] = t._compiled
        if dupes:
            raise ValueError(
                "template names must be unique: " + ", ".join(repr(d) for d in dict.fromkeys(dupes))
            )
        self._by_name = seen
        return self

    def template(self, name: str) -> Compiled | None:
        return self._by_name.get(name)


# --------------------------------------------------------------------------- request


def apply_template(body: dict[str, Any], conf: Config) -> dict[str, Any] | None:
    """The request body with its template rendered, or None when the request calls no
    template and may pass as it is (raises a 400 ProviderError otherwise)."""
    refs = {k: template_name(body.get(k)) for k in KINDS}
    called = [(k, n) for k, n in refs.items() if n is not None]
    if not called:
        if conf.allow_untemplated_requests:
            return None
        raise _bad("this LLM route only supports templated requests", code="untemplated_request")
    if "messages" in body and "prompt" in body:
        raise _bad("cannot run 'messages' and 'prompt' templates at the same time")
    kind, name = called[0]
    template = conf.template(name)
    if template is None:
        raise _bad(f"could not find template name [{name}]", param=kind, code="template_not_found")
    if template.kind != kind:
        raise _bad(
            f"template [{name}] fills '{template.kind}', but the request calls it in '{kind}'",
            param=kind,
        )
    rendered = render(template, body.get("properties"))
    out = {k: v for k, v in body.items() if k not in ("properties", kind)}
    out.update(rendered)
    return out


def redacted(value: Any, secrets: frozenset[str], key: str | None) -> Any:
    """`value` with every string holding a secret (a vault value, the client's key)
    replaced: the original request goes into records."""
    if isinstance(value, str):
        if value in secrets or (key and key in value):
            return "[REDACTED]"
        return value
    if isinstance(value, list):
        return [redacted(v, secrets, key) for v in value]
    if isinstance(value, dict):
        return {k: redacted(v, secrets, key) for k, v in value.items()}
    return value


class Policy(PolicyAddon):
    """Renders the template a request calls, before the decorator, guard and ai-proxy."""

    name = "llmitm-ai-prompt-template"
    plugin = NAME

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call, conf = self.active(flow)
        if call is None:
            return None
        try:
            body = read_body(flow, call, conf.max_request_body_size, NAME)
        except ProviderError as e:
            refuse_request(flow, call, NAME, e)
            return None
        if conf.log_original_request:
            key = call.credential.key if call.credential is not None else None
            original = redacted(body, call.config.secrets, key)  # a copy
            masking = sanitizer.prompt_masker(flow, call)
            if masking is not None:  # the sanitizer's masking takes a coroutine
                return self._masked_original(flow, call, conf, body, original, masking)
            call.context["original_request"] = original
        self._render(flow, call, conf, body)
        return None

    async def _masked_original(
        self,
        flow: http.HTTPFlow,
        call: Call,
        conf: Config,
        body: dict[str, Any],
        original: Any,
        masking: tuple[sanitizer.Config, sanitizer.Masker],
    ) -> None:
        """The client's request into the record masked as the ai-sanitizer (which runs
        for the call, later) masks prompts: its properties hold the values the template
        puts in the prompt. Then the template is rendered."""
        try:
            original = await sanitizer.mask_document(masking[1], masking[0], original)
        except sanitizer.SanitizerError as e:
            original = f"[NOT RECORDED: the ai-sanitizer could not scan it: {e}]"
        call.context["original_request"] = original
        self._render(flow, call, conf, body)

    @staticmethod
    def _render(flow: http.HTTPFlow, call: Call, conf: Config, body: dict[str, Any]) -> None:
        try:
            rendered = apply_template(body, conf)
        except ProviderError as e:
            refuse_request(flow, call, NAME, e)
            return
        if rendered is not None:
            set_json_body(flow, call, rendered)
