"""ai-sanitizer: personal data and secrets never leave in a prompt.

Kong's AI PII Sanitizer (Enterprise) sends each prompt to an external anonymizer
service; llmitm finds the data in-process (`addons/policies/_pii.py`): emails, phone
numbers, payment cards (Luhn), IBANs (mod 97), IP addresses, US social security
numbers, API keys and tokens, private keys and the user's own patterns.

In the `request` hook every finding in the prompt (chat messages, a completions
prompt, embeddings input; any JSON text for native formats) is replaced by a
placeholder (`<EMAIL_1>`, the same one for the same value) or a fake value of its kind,
or the request is refused (`block_if_detected`). The record gets counts per kind in its
context, never a value. The map back to the originals lives in memory on this addon for
the call only; with `recover_redacted` the originals are put back in the answer the
client gets, buffered or streamed (a stream filter on the SSE events, which holds back
the end of a delta that may be the start of a placeholder). The call record keeps what
the upstream saw and said: placeholders.

The originals come back LAST: in the chain's late hooks (`response_late`,
`responseheaders_late`, see addons/policies/__init__.py), after every other plugin has
seen the answer. So the ai-response-transformer sends its own LLM, and the record keeps,
the placeholders, not the originals. The answer's own findings (OUTPUT) are masked in
`response`, before the plugins after this one see it.

The plugins that run before this one and would let the prompt out (the
ai-request-transformer's LLM call, ai-prompt-template's `log_original_request`) mask
what they send or record with the call's masker (`prompt_masker`, `mask_document`):
the same placeholders this plugin then uses.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
import regex
from pydantic import Field, field_validator, model_validator

from addons.policies._pii import (
    TEXT_KEYS,
    UNSUPPORTED,
    CustomPattern,
    Detector,
    Masker,
    Recovery,
    SanitizerError,
    StringRef,
    TextStream,
    expand_kinds,
    iter_strings,
)
from addons.policies.base import (
    PolicyAddon,
    deny,
    json_body,
    logged_path,
    reply_error,
    set_json_body,
)
from providers import sse
from providers.base import ProviderError
from providers.options import Strict

if TYPE_CHECKING:
    from collections.abc import Callable

    from mitmproxy import http

    from addons.calls import Call
    from addons.state import Gateway

NAME = "ai-sanitizer"
# Kong does not publish it for this plugin; 771 with its name sorts it after
# ai-prompt-guard (771) and before ai-proxy (770): the guard sees the prompt as written.
PRIORITY = 771
CONSUMER_SCOPE = True

log = logging.getLogger("llmitm")

Kind = Literal[
    "all",
    "all_and_credentials",
    "email",
    "phone",
    "creditcard",
    "bank",
    "ip",
    "ssn",
    "credentials",
    "custom",
]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

_NAME = regex.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    return regex.compile(pattern, regex.VERSION0)


class CustomPatternConfig(Strict):
    """One pattern of the user's own (Kong's `custom_patterns` item)."""

    name: str = Field(
        description="Its name: the placeholder is `<NAME_1>` and the record counts it under "
        "this name (a letter, then letters, digits or _)."
    )
    regex: str = Field(
        min_length=1, description="The pattern (PCRE-style, `regex` module); matches are masked."
    )
    score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Its weight when it overlaps another finding: the higher score wins "
        "(built-in detectors: 0.6 phone to 1.0 private key).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"name {name!r} must start with a letter and hold only letters, digits "
                "and _ (it names the placeholder)"
            )
        return name

    @model_validator(mode="after")
    def _compiles(self) -> CustomPatternConfig:
        try:
            compile_pattern(self.regex)
        except regex.error as e:
            raise ValueError(
                f"custom pattern {self.name!r}: invalid regex {self.regex!r}: {e}"
            ) from None
        return self


class Config(Strict):
    """The ai-sanitizer's `config` (Kong's field names)."""

    anonymize: list[Kind] = Field(
        default_factory=lambda: ["all_and_credentials"],
        min_length=1,
        description="What to mask: email, phone, creditcard, bank (IBAN), ip, ssn, credentials "
        "(API keys, tokens, private keys, passwords), custom (custom_patterns); all = every "
        "kind but credentials, all_and_credentials = everything.",
    )
    redact_type: Literal["placeholder", "synthetic"] = Field(
        "placeholder",
        description="placeholder: `<EMAIL_1>`; synthetic: a realistic fake value of the same "
        "kind (example.com emails, Luhn-valid cards, documentation IP ranges, ...).",
    )
    recover_redacted: bool = Field(
        True,
        description="Put the originals back in the answer the client gets (buffered and "
        "streamed); the call record keeps the placeholders.",
    )
    block_if_detected: bool = Field(
        False, description="Refuse a request that holds anything to mask (400), naming the kinds."
    )
    custom_patterns: list[CustomPatternConfig] | None = Field(
        None,
        min_length=1,
        description="Patterns of your own: [{name, regex, score}]; anonymize must include "
        "custom (or all, all_and_credentials).",
    )
    sanitization_mode: Literal["INPUT", "OUTPUT", "BOTH"] = Field(
        "INPUT",
        description="INPUT masks prompts; OUTPUT masks the answers (never restored); BOTH "
        "does both.",
    )
    allow_all_conversation_history: bool = Field(
        True,
        description="Scan every message of a chat; false scans the last message only.",
    )
    stop_on_error: bool = Field(
        True,
        description="When the request cannot be scanned (a custom pattern runs out of time): "
        "refuse it (500) if true, forward it unmasked (logged, counted) if false.",
    )
    skip_logging_sanitized_items: bool = Field(
        False,
        description="Kong's switch to keep the found values out of its logs; llmitm never "
        "logs or records them (counts only), whatever this says.",
    )
    roles: list[Role] | None = Field(
        None,
        description="llmitm: the chat roles whose messages are scanned (default: all).",
    )
    regex_timeout_ms: int = Field(
        500,
        gt=0,
        le=60_000,
        description="llmitm: the longest time the custom patterns may spend on one request "
        "or one answer; past it the request is an error (see stop_on_error).",
    )
    # Kong's connection to its external anonymizer service: llmitm has none.
    host: str | None = Field(None, description="Kong's anonymizer service; unused by llmitm.")
    port: int | None = Field(None, description="Kong's anonymizer service; unused by llmitm.")
    scheme: str | None = Field(None, description="Kong's anonymizer service; unused by llmitm.")
    timeout: float | None = Field(None, description="Kong's anonymizer service; unused by llmitm.")
    keepalive_timeout: float | None = Field(
        None, description="Kong's anonymizer service; unused by llmitm."
    )

    @field_validator("anonymize", mode="before")
    @classmethod
    def _supported(cls, value: Any) -> Any:
        for kind in value if isinstance(value, list) else ():
            if kind in UNSUPPORTED:
                raise ValueError(
                    f"anonymize {kind!r} needs a language model (names, places, documents), "
                    "which llmitm's in-process sanitizer does not have; supported: all, "
                    "all_and_credentials, email, phone, creditcard, bank, ip, ssn, "
                    "credentials, custom"
                )
        return value

    @model_validator(mode="after")
    def _custom(self) -> Config:
        kinds = expand_kinds(self.anonymize)
        if "custom" in self.anonymize and not self.custom_patterns:
            raise ValueError("anonymize names 'custom' but custom_patterns is empty")
        if self.custom_patterns and "custom" not in kinds:
            raise ValueError(
                "custom_patterns are set but anonymize does not include 'custom' "
                "(or all, all_and_credentials): they would never run"
            )
        names = [p.name.upper() for p in self.custom_patterns or ()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"custom_patterns names must be unique: {', '.join(dupes)}")
        return self

    @property
    def masks_input(self) -> bool:
        return self.sanitization_mode != "OUTPUT"

    @property
    def masks_output(self) -> bool:
        return self.sanitization_mode != "INPUT"


# ---------------------------------------------------------------- request texts

# Native and free-form bodies: strings that are identifiers, not text, and subtrees
# that are definitions or binary data.
_ID_KEYS = frozenset(
    {
        "model",
        "role",
        "type",
        "id",
        "object",
        "name",
        "tool_use_id",
        "tool_call_id",
        "media_type",
        "mime_type",
        "mimeType",
        "encoding_format",
        "format",
        "stop_reason",
        "finish_reason",
        "signature",
        "detail",
        "service_tier",
        "reasoning_effort",
    }
)
_SKIP = frozenset(
    {
        "tools",
        "functions",
        "tool_choice",
        "toolConfig",
        "tool_config",
        "response_format",
        "generationConfig",
        "inferenceConfig",
        "safetySettings",
        "stream_options",
        "image_url",
        "input_audio",
        "inline_data",
        "inlineData",
        "file_data",
        "fileData",
        "source",
        "cache_control",
    }
)
_SYSTEM_KEYS = frozenset({"system", "systemInstruction", "system_instruction", "instructions"})
_ROLE_ALIASES = {"model": "assistant", "chatbot": "assistant", "human": "user"}

OPENAI_ROUTES = frozenset({"llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings"})
THREAD_ABOVE = 32 * 1024  # characters of text scanned off the event loop


def chat_texts(body: dict[str, Any], conf: Config) -> list[StringRef]:
    """The texts of an OpenAI chat request: message contents (strings and text parts),
    the arguments of tool calls in the history."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    scope = messages if conf.allow_all_conversation_history else messages[-1:]
    roles = set(conf.roles) if conf.roles else None
    out: list[StringRef] = []
    for m in scope:
        if not isinstance(m, dict) or (roles is not None and m.get("role") not in roles):
            continue
        content = m.get("content")
        if isinstance(content, str):
            out.append(StringRef((), m, "content", content))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    out.append(StringRef((), part, "text", part["text"]))
        calls = [c.get("function") for c in m.get("tool_calls") or () if isinstance(c, dict)]
        calls.append(m.get("function_call"))
        for fn in calls:
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                out.append(StringRef((), fn, "arguments", fn["arguments"]))
    return out


def _strings(container: Any, key: Any, out: list[StringRef]) -> None:
    value = container[key]
    if isinstance(value, str):
        out.append(StringRef((), container, key, value))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                out.append(StringRef((), value, i, v))


def generic_texts(doc: Any, roles: set[str] | None, out: list[StringRef]) -> None:
    """Every text string of a JSON body in any format (a native provider's, a preserved
    API's): not identifiers, tool definitions or binary data; messages of the chosen
    roles only."""
    if isinstance(doc, dict):
        role = doc.get("role")
        if (
            roles is not None
            and isinstance(role, str)
            and _ROLE_ALIASES.get(role, role) not in roles
        ):
            return
        for k, v in doc.items():
            if k in _SKIP or (isinstance(v, str) and k in _ID_KEYS):
                continue
            if roles is not None and k in _SYSTEM_KEYS and "system" not in roles:
                continue
            if isinstance(v, str):
                if not v.startswith("data:"):
                    out.append(StringRef((), doc, k, v))
            elif isinstance(v, (dict, list)):
                generic_texts(v, roles, out)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            if isinstance(v, str):
                if not v.startswith("data:"):
                    out.append(StringRef((), doc, i, v))
            elif isinstance(v, (dict, list)):
                generic_texts(v, roles, out)


def request_texts(body: Any, conf: Config, route_type: str | None, native: bool) -> list[StringRef]:
    """The strings of a request that are scanned, by what the route serves."""
    if not isinstance(body, dict):
        return []
    out: list[StringRef] = []
    if native or route_type not in OPENAI_ROUTES:
        generic_texts(body, set(conf.roles) if conf.roles else None, out)
    elif route_type == "llm/v1/chat":
        out = chat_texts(body, conf)
    elif route_type == "llm/v1/completions":
        if "prompt" in body:
            _strings(body, "prompt", out)
    elif "input" in body:
        _strings(body, "input", out)
    return out


# ------------------------------------------------------------------ the call's masker

_DETECTORS: dict[int, tuple[Config, Detector]] = {}
#: flow.id -> the masker the plugins before the sanitizer used on the call's prompt
_EARLY: dict[str, Masker] = {}


def detector_for(conf: Config) -> Detector:
    """The detector of a config (built once per config)."""
    found = _DETECTORS.get(id(conf))
    if found is None or found[0] is not conf:
        if len(_DETECTORS) > 256:  # old configs after many reloads
            _DETECTORS.clear()
        custom = [
            CustomPattern(p.name, compile_pattern(p.regex), p.score)
            for p in conf.custom_patterns or ()
        ]
        found = (conf, Detector(conf.anonymize, custom, conf.regex_timeout_ms / 1000))
        _DETECTORS[id(conf)] = found
    return found[1]


def prompt_masker(flow: http.HTTPFlow, call: Call) -> tuple[Config, Masker] | None:
    """The ai-sanitizer's config and the call's masker, when the sanitizer runs for
    the call and masks (or blocks) prompts: for a plugin that runs before it and would
    otherwise let the prompt's findings out (to an LLM of its own, into the record).
    The sanitizer goes on with the same masker, so the placeholders agree."""
    conf = call.plugin(NAME)
    if not isinstance(conf, Config) or not (conf.masks_input or conf.block_if_detected):
        return None
    masker = _EARLY.get(flow.id)
    if masker is None:
        masker = _EARLY[flow.id] = Masker(detector_for(conf), conf.redact_type)
        fid = flow.id
        call.on_finish.append(lambda _call, _record: _forget_early(fid))
    return conf, masker


def _forget_early(fid: str) -> None:
    masker = _EARLY.pop(fid, None)
    if masker is not None:
        masker.originals.clear()
        masker.replacements.clear()


async def mask_document(masker: Masker, conf: Config, doc: Any) -> Any:
    """`doc` with every text it holds masked: a JSON value (its strings but
    identifiers, changed in place) or a text. Raises SanitizerError when the custom
    patterns run out of time."""
    holder = [doc]
    texts: list[StringRef] = []
    if isinstance(doc, str):
        texts.append(StringRef((), holder, 0, doc))
    else:
        generic_texts(doc, None, texts)
    for ref, text in await _mask_all(masker, texts, conf):
        ref.set(text)
    return holder[0]


def restore_text(masker: Masker, text: str) -> str:
    """`text` with the masker's replacements put back (an LLM's answer to what
    `mask_document` masked)."""
    return Recovery(masker.originals).recover(text) if masker.originals else text


def restore_document(masker: Masker, doc: Any) -> None:
    """`restore_text` on every string of a JSON document, in place."""
    if masker.originals:
        rewrite_strings(doc, Recovery(masker.originals), None)


# ------------------------------------------------------------------ the addon


@dataclass(slots=True)
class CallState:
    """What the sanitizer keeps for a call in flight: the way back to the originals
    (`recovery`) and the masker of the answer (OUTPUT, BOTH). Dropped when the call
    ends."""

    recovery: Recovery | None
    output: Masker | None

    def forget(self) -> None:
        if self.recovery is not None:
            self.recovery.originals.clear()
        self.recovery = None
        self.output = None


class Policy(PolicyAddon):
    name = "llmitm-ai-sanitizer"
    plugin = NAME

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self._calls: dict[str, CallState] = {}  # flow.id -> state, while the call runs

    @staticmethod
    def detector(conf: Config) -> Detector:
        return detector_for(conf)

    # ------------------------------------------------------------------ request

    async def request(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        assert isinstance(conf, Config)
        detector = self.detector(conf)
        masker = _EARLY.pop(flow.id, None)  # a plugin before this one masked with it
        if masker is None or masker.detector is not detector:
            masker = Masker(detector, conf.redact_type)
        masker.counts = {}  # the record counts what the prompt sent upstream holds
        scan = (conf.masks_input or conf.block_if_detected) and flow.request.raw_content
        if scan and not await self._scan(flow, call, conf, masker):
            return  # refused
        recovery = Recovery(masker.originals) if conf.recover_redacted else None
        state = CallState(recovery or None, masker.fork() if conf.masks_output else None)
        if state.recovery is None and state.output is None:
            return
        self._calls[flow.id] = state
        fid = flow.id

        def forget(_call: Call, _record: Any) -> None:
            (self._calls.pop(fid, None) or state).forget()

        call.on_finish.append(forget)

    async def _scan(self, flow: http.HTTPFlow, call: Call, conf: Config, masker: Masker) -> bool:
        """Mask (or only find, to block) what the request holds; False when it was
        refused. The masker keeps the replacements."""
        proxy = call.plugin("ai-proxy")
        route_type = str(proxy.route_type) if proxy is not None else None
        native = proxy is not None and proxy.llm_format != "openai"
        try:
            body = json_body(flow, call)
        except ProviderError as e:
            if route_type in OPENAI_ROUTES and not native:
                deny(flow, call, e.status, e.message, e.code, e.headers, e.type, e.param)
                return False
            return True  # not JSON: nothing this plugin can read (a preserve route's upload)
        texts = request_texts(body, conf, route_type, native)
        try:
            masked = await _mask_all(masker, texts, conf)
        except Exception as e:
            if isinstance(e, SanitizerError):
                reason = str(e)
            else:
                reason = "internal error"
                log.exception("llmitm: ai-sanitizer failed on %s", logged_path(flow, call))
            if conf.stop_on_error:
                message = f"the ai-sanitizer could not scan the request: {reason}"
                deny(flow, call, 500, message, "sanitizer_error", type="api_error")
                return False
            log.warning("llmitm: ai-sanitizer forwards a request unscanned: %s", reason)
            call.context["sanitizer_error"] = reason
            masked = []
        counts = dict(sorted(masker.counts.items()))
        call.context["sanitizer"] = counts
        if counts and conf.block_if_detected:
            message = (
                f"the request contains sensitive data ({', '.join(counts)}); "
                "the ai-sanitizer blocks it"
            )
            deny(flow, call, 400, message, "sensitive_data_detected")
            return False
        if not conf.masks_input:  # found to block only: nothing is replaced
            masker.replacements.clear()
            masker.originals.clear()
        elif masked:
            for ref, text in masked:
                ref.set(text)
            set_json_body(flow, call, body)
        return True

    # ------------------------------------------------------------------ answers
    # `response` masks the answer's own findings (OUTPUT), before the plugins after this
    # one see it; the late hooks put the originals back once every plugin is done.

    def responseheaders_late(self, flow: http.HTTPFlow) -> None:
        """A stream: its filter (mask, restore) is the last one the stream goes through."""
        state = self._calls.get(flow.id)
        call = self.gw.calls.get(flow)
        if state is None or call is None or call.relay_token is None or flow.response is None:
            return
        conf = call.plugin(self.plugin)
        stop = bool(conf is not None and conf.stop_on_error)
        ctype = flow.response.headers.get("content-type", "").lower()
        if "event-stream" in ctype:
            call.stream_filters.append(StreamFilter(state, False, stop, call))
        elif "ndjson" in ctype:
            call.stream_filters.append(StreamFilter(state, True, stop, call))
        else:  # a JSON array stream (Gemini without alt=sse), binary event streams
            log.debug("llmitm: ai-sanitizer cannot rewrite a %s stream", ctype or "untyped")
        if state.output is not None:
            # the record's copy of the answer is assembled from the upstream's stream,
            # before the filters: mask its findings there too
            call.on_finish.append(_masked_record(state.output))

    def response(self, flow: http.HTTPFlow) -> None:
        """A whole answer's own findings masked (OUTPUT, BOTH), and the record's copy too."""
        state = self._calls.get(flow.id)
        if state is None or state.output is None:
            return
        call = self.gw.calls.get(flow)
        resp = flow.response
        if resp is not None and not resp.stream and resp.raw_content:
            try:
                doc = self._rewrite(resp, None, state.output)
            except Exception as e:  # noqa: BLE001 (logged by _unmasked)
                self._unmasked(flow, call, state, e)
            else:
                # the record keeps the masked answer too
                if doc is not None and call is not None and call.response_payload is not None:
                    call.response_payload = doc
        if call is not None:
            call.context["sanitizer_output"] = dict(sorted(state.output.counts.items()))

    def response_late(self, flow: http.HTTPFlow) -> None:
        """The originals back in a whole answer, after every other plugin."""
        state = self._calls.pop(flow.id, None)
        if state is None or state.recovery is None:
            return
        resp = flow.response
        if resp is not None and not resp.stream and resp.raw_content:
            try:
                self._rewrite(resp, state.recovery, None)
            except Exception as e:  # noqa: BLE001 (logged by _unmasked)
                self._unmasked(flow, self.gw.calls.get(flow), state, e)

    def _unmasked(
        self, flow: http.HTTPFlow, call: Call | None, state: CallState, e: Exception
    ) -> None:
        reason = str(e) if isinstance(e, SanitizerError) else "internal error"
        if not isinstance(e, SanitizerError):
            log.exception("llmitm: ai-sanitizer could not rewrite an answer")
        conf = call.plugin(self.plugin) if call is not None else None
        if state.output is not None and conf is not None and conf.stop_on_error:
            # the answer could not be masked: it does not reach the client
            reply_error(flow, call, _answer_error(reason))  # type: ignore[arg-type]
        else:
            log.warning("llmitm: ai-sanitizer passes an answer unscanned: %s", reason)
            if call is not None:
                call.context["sanitizer_error"] = reason

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._calls.pop(flow.id, None)
        call = self.gw.calls.get(flow)
        if state is not None and call is not None and state.output is not None:
            call.context["sanitizer_output"] = dict(sorted(state.output.counts.items()))

    @staticmethod
    def _rewrite(resp: http.Response, recovery: Recovery | None, output: Masker | None) -> Any:
        """A whole JSON answer with its own findings masked (`output`) or its originals
        restored (`recovery`): the new document, or None when nothing changed."""
        if "json" not in resp.headers.get("content-type", "").lower():
            return None
        try:
            doc = json.loads(resp.content or b"")
        except ValueError:
            return None
        if output is not None:
            output.deadline = time.monotonic() + output.detector.timeout
        if not rewrite_strings(doc, recovery, output):
            return None
        resp.content = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        return doc


def _masked_record(output: Masker) -> Callable[[Call, Any], None]:
    """An on_finish callback: the answer's own findings masked in the record's payload,
    with the placeholders the client got (the masker maps a finding to one)."""

    def mask(call: Call, record: Any) -> None:
        ai = getattr(record, "ai", None)
        if ai is None or ai.response_payload is None:
            return
        output.deadline = time.monotonic() + output.detector.timeout
        rewrite_strings(ai.response_payload, None, output)

    return mask


def _answer_error(reason: str) -> ProviderError:
    return ProviderError(
        500, f"the ai-sanitizer could not scan the answer: {reason}", "api_error", "sanitizer_error"
    )


def rewrite_strings(doc: Any, recovery: Recovery | None, output: Masker | None) -> bool:
    """Every string of a JSON answer restored, its model-written texts masked first
    (OUTPUT); whether anything changed."""
    changed = False
    for ref in iter_strings(doc):
        text = ref.text
        if output is not None and ref.path and ref.path[-1] in TEXT_KEYS:
            text = output.mask(text)
        if recovery is not None:
            text = recovery.recover(text)
        if text != ref.text:
            ref.set(text)
            changed = True
    return changed


async def _mask_all(
    masker: Masker, texts: list[StringRef], conf: Config
) -> list[tuple[StringRef, str]]:
    """The new value of each text that changed; a large body is scanned off the event
    loop (the `regex` module releases the GIL)."""
    masker.avoid = "\n".join(r.text for r in texts)
    masker.deadline = time.monotonic() + conf.regex_timeout_ms / 1000

    def work(concurrent: bool) -> list[tuple[StringRef, str]]:
        out = []
        for ref in texts:
            new = masker.mask(ref.text, concurrent)
            if new != ref.text:
                out.append((ref, new))
        return out

    if len(masker.avoid) > THREAD_ABOVE:
        return await asyncio.to_thread(work, True)
    return work(False)


# ------------------------------------------------------------------ streams

_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n")
_LINE = regex.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class _Event:
    raw: bytes
    lines: list[bytes]  # the SSE lines that are not data (event:, id:, ...)
    doc: Any
    refs: dict[tuple[Any, ...], StringRef]  # its texts, by path
    changed: bool

    def encode(self, ndjson: bool) -> bytes:
        if not self.changed:
            return self.raw
        try:
            data = orjson.dumps(self.doc)
        except TypeError:  # an integer beyond 64 bits
            data = json.dumps(self.doc, ensure_ascii=False, separators=(",", ":")).encode()
        if ndjson:
            return data + b"\n"
        return b"".join(line + b"\n" for line in self.lines) + b"data: " + data + b"\n\n"


class StreamFilter:
    """Restores the originals (and masks the answer's own findings) in a streamed
    answer: SSE events (`data: {...}`) or NDJSON lines, in any chunking.

    Each text of an event (a choice's delta content, a tool call's arguments, an
    Anthropic text delta) is a `TextStream` by its path; an event whose text ends with
    what may begin a placeholder is held, and the held end goes on at the start of the
    same text in the next event, or back into the held event when the text does not go
    on. Events without text (a finish chunk, a ping) wait behind a held one. Anything
    that is not JSON passes unchanged, and a failure turns the filter into a pass-through.
    """

    def __init__(
        self,
        state: CallState,
        ndjson: bool = False,
        stop_on_error: bool = False,
        call: Call | None = None,
    ) -> None:
        self.recovery = state.recovery
        self.output = state.output
        self.ndjson = ndjson
        # an answer that cannot be masked (OUTPUT) ends with an error rather than unmasked
        self.stop_on_error = stop_on_error and state.output is not None
        self.call = call
        self._stopped = False
        self._buf = bytearray()
        self._scan = 0
        self._slots: dict[tuple[Any, ...], TextStream] = {}
        self._held: list[_Event] = []  # the event holding text first, then those behind it
        self._broken = False
        starts = {k[0] for k in (self.recovery.originals if self.recovery else ())}
        self._starts = [c.encode() for c in starts] + [b"\\u"]

    def __call__(self, chunks: list[bytes], last: bool) -> list[bytes]:
        if self._stopped:
            return []
        if self._broken:
            return chunks
        out: list[bytes] = []
        for chunk in chunks:
            self._buf += chunk
        current = b""
        try:
            while (block := self._next()) is not None:
                current = block
                self._event(block, out)
                current = b""
            if last:
                rest = bytes(self._buf)
                self._buf.clear()
                if rest.strip():
                    current = rest
                    self._event(rest, out)
                    current = b""
                elif rest:
                    self._release(out)
                    out.append(rest)
                self._release(out)
            return out
        except Exception as e:
            if self.stop_on_error:
                reason = str(e) if isinstance(e, SanitizerError) else "internal error"
                log.warning("llmitm: ai-sanitizer ends a stream it cannot mask: %s", reason)
                self._stopped = True
                err = _answer_error(reason)
                if self.call is not None:
                    self.call.fail(err, "gateway")
                if self.ndjson:
                    return [*out, orjson.dumps(err.to_openai()) + b"\n"]
                return [*out, sse.encode(err.to_openai()), sse.DONE]
            log.exception("llmitm: ai-sanitizer stream filter failed; passing the stream through")
            self._broken = True
            tail = [e.raw for e in self._held] + [current, bytes(self._buf)]
            self._held.clear()
            self._buf.clear()
            return out + [t for t in tail if t]

    # framing
    def _next(self) -> bytes | None:
        buf = self._buf
        if self.ndjson:
            i = buf.find(b"\n", self._scan)
            if i < 0:
                self._scan = len(buf)
                return None
            end = i + 1
        else:
            end = -1
            for boundary in _BOUNDARIES:
                i = buf.find(boundary, self._scan)
                if i >= 0 and (end < 0 or i + len(boundary) < end):
                    end = i + len(boundary)
            if end < 0:
                self._scan = max(0, len(buf) - 3)
                return None
        block = bytes(buf[:end])
        del buf[:end]
        self._scan = 0
        return block

    def _parse(self, raw: bytes) -> tuple[list[bytes], Any] | None:
        """(the non-data lines, the data's JSON) or None when it holds no JSON."""
        if self.ndjson:
            lines: list[bytes] = []
            payload = raw.strip()
        else:
            lines, data = [], []
            for line in _LINE.split(raw):
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif line:
                    lines.append(line)
            if not data:
                return None
            payload = b"\n".join(data)
        if not payload or payload[:1] not in b"{[":
            return None
        try:
            return lines, orjson.loads(payload)
        except orjson.JSONDecodeError:
            try:
                return lines, json.loads(payload)
            except ValueError:
                return None

    # events
    def _event(self, raw: bytes, out: list[bytes]) -> None:
        if not self._held and self.output is None and not any(s in raw for s in self._starts):
            out.append(raw)  # nothing to restore in it: untouched
            return
        parsed = self._parse(raw)
        if parsed is None:
            if raw.strip().endswith(b"[DONE]"):
                self._release(out)
            if self._held:
                self._held.append(_Event(raw, [], None, {}, False))
            else:
                out.append(raw)
            return
        lines, doc = parsed
        event = _Event(raw, lines, doc, {}, False)
        texts: list[StringRef] = []
        for ref in iter_strings(doc):
            if ref.path and ref.path[-1] in TEXT_KEYS:
                texts.append(ref)
                event.refs[ref.path] = ref
            elif self.recovery is not None:
                restored = self.recovery.recover(ref.text)
                if restored != ref.text:
                    ref.set(restored)
                    event.changed = True
        if self._held:
            if not texts:
                self._held.append(event)
                return
            holding = [p for p, s in self._slots.items() if s.holding]
            if any(p in event.refs for p in holding):
                self._release(out, keep=event.refs.keys())
            else:
                self._release(out)
        for ref in texts:
            slot = self._slots.get(ref.path)
            if slot is None:
                slot = self._slots[ref.path] = TextStream(self.output, self.recovery)
            text = slot.feed(ref.text)
            if text != ref.text:
                ref.set(text)
                event.changed = True
        if any(self._slots[r.path].holding for r in texts):
            self._held.append(event)
        else:
            out.append(event.encode(self.ndjson))

    def _release(self, out: list[bytes], keep: Any = ()) -> None:
        """Send the held events; a text that does not go on (not in `keep`) gets its
        held end back."""
        if self._held:
            head = self._held[0]
            for path, slot in self._slots.items():
                if path in keep or not slot.holding:
                    continue
                rest = slot.flush()
                ref = head.refs.get(path)
                if ref is not None and rest:
                    ref.set(ref.container[ref.key] + rest)
                    head.changed = True
            out.extend(e.encode(self.ndjson) for e in self._held)
            self._held.clear()
