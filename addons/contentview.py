"""A mitmproxy contentview that shows LLM requests and answers as a conversation.

Registered as "LLM" (pick it in mitmweb's or mitmproxy's view menu). It is chosen
automatically for the gateway's calls and observed calls (flows the gateway tagged), and
for LLM API paths on the known LLM API hosts (`addons.llm_hosts`, with
`llmitm_observe_hosts`); other traffic keeps mitmproxy's own views. It renders:

- requests of every supported format (OpenAI chat, completions, responses and
  embeddings; Anthropic messages, Claude on Vertex AI included; Gemini; Bedrock Converse
  and InvokeModel; Cohere v1 and v2; Ollama) as turns by role, with tool calls and
  their arguments, tool results and thinking;
- answers, whole or streamed (SSE, NDJSON, Gemini's JSON array, Bedrock's binary
  event-stream), as the assistant's turn with its thinking, tool calls, finish reason
  and usage.

Answers are decoded by the provider modules themselves: a whole body goes through the
provider's `parse_response`, a streamed body is fed whole to its stream translator
(`stream_translator` / `native_stream_observer`) and its `assembled()` answer is shown;
OpenAI's Responses API by `providers.openai_responses` (the reader preserve routes and
observe mode use); a Bedrock InvokeModel stream through the shared event-stream decoder
and the Bedrock observer (usage, errors), each chunk's model event through its model
vendor's parser (Anthropic's for Claude). Which provider speaks is told by the
request's path, else by the answer's first event. A 2xx body that is not the answer the
path promises is shown as it is, never as an error. Streamed bodies are only kept by
mitmproxy with `--set store_streamed_bodies=true`.

Nothing here may raise into mitmproxy: anything odd falls back to the body's text.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from mitmproxy import contentviews, http
from mitmproxy.contentviews import Contentview, Metadata

import providers
from addons.llm_hosts import HostTable, operation
from addons.recorder import request_params
from providers import eventstream, openai_responses, sse
from providers.base import CallSpec, ProviderError, RouteType, Usage
from providers.bedrock import invoke_text, usage_from_counts
from providers.options import CohereOptions, ModelOptions

log = logging.getLogger(__name__)

#: the priority that beats mitmproxy's JSON view (1) for LLM traffic
PRIORITY = 2.5
MAX_TEXT = 20_000  # characters of one text shown before it is cut


@dataclass(frozen=True, slots=True)
class Kind:
    """Which API a message speaks: the provider module that reads it, and the operation."""

    #: openai, openai-responses, anthropic, gemini, bedrock, bedrock-invoke, cohere-v1,
    #: cohere-v2, ollama
    api: str
    route_type: RouteType = RouteType.CHAT

    @property
    def provider(self) -> str:
        return {
            "openai-responses": "openai",
            "cohere-v1": "cohere",
            "cohere-v2": "cohere",
            "bedrock-invoke": "bedrock",
        }.get(self.api, self.api)

    @property
    def label(self) -> str:
        if self.api == "bedrock-invoke":
            return "bedrock invoke"
        op = {
            RouteType.CHAT: "chat",
            RouteType.COMPLETIONS: "completions",
            RouteType.EMBEDDINGS: "embeddings",
            RouteType.PRESERVE: "call",
        }[self.route_type]
        return f"{self.api} {op}"


C, T, E = RouteType.CHAT, RouteType.COMPLETIONS, RouteType.EMBEDDINGS

#: known API paths (without the query), most specific first
_PATHS: list[tuple[re.Pattern[str], Kind]] = [
    (re.compile(r"/v1/messages$"), Kind("anthropic", C)),
    (re.compile(r"/v1/complete$"), Kind("anthropic", T)),
    (
        re.compile(r"/publishers/anthropic/models/[^/:]+:(stream)?[rR]awPredict$"),
        Kind("anthropic", C),
    ),
    (re.compile(r"/models/[^/:]+:(stream)?[gG]enerateContent$"), Kind("gemini", C)),
    (re.compile(r"/models/[^/:]+:(batch)?[eE]mbedContents?$"), Kind("gemini", E)),
    (re.compile(r"/model/[^/]+/converse(-stream)?$"), Kind("bedrock", C)),
    (re.compile(r"/model/[^/]+/invoke(-with-response-stream)?$"), Kind("bedrock-invoke", C)),
    (re.compile(r"/v2/chat$"), Kind("cohere-v2", C)),
    (re.compile(r"/v1/chat$"), Kind("cohere-v1", C)),
    (re.compile(r"/v1/generate$"), Kind("cohere-v1", T)),
    (re.compile(r"/v[12]/embed$"), Kind("cohere-v2", E)),
    (re.compile(r"/api/chat$"), Kind("ollama", C)),
    (re.compile(r"/api/generate$"), Kind("ollama", T)),
    (re.compile(r"/api/embed(dings)?$"), Kind("ollama", E)),
    (re.compile(r"/responses$"), Kind("openai-responses", C)),
    (re.compile(r"/chat/completions$"), Kind("openai", C)),
    (re.compile(r"/completions$"), Kind("openai", T)),
    (re.compile(r"/embeddings$"), Kind("openai", E)),
]
_GEMINI_MODEL = re.compile(r"/models/([^/:]+):")
_BEDROCK_MODEL = re.compile(r"/model/([^/]+)/")


def kind_of_path(path: str) -> Kind | None:
    """The API a request path belongs to, if it is a known LLM API path."""
    p = path.partition("?")[0].rstrip("/")
    for pattern, kind in _PATHS:
        if pattern.search(p):
            return kind
    return None


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- body framing


def framing(data: bytes, content_type: str | None) -> str:
    """How a body is framed: "eventstream", "sse", "ndjson", "array" or "json"."""
    ct = (content_type or "").lower()
    head = data.lstrip()[:16]
    if "amazon.eventstream" in ct or (head[:1] not in b"{[:de" and _looks_eventstream(data)):
        return "eventstream"
    if "event-stream" in ct or head.startswith((b"data:", b"event:", b":")):
        return "sse"
    if head.startswith(b"["):
        return "array"
    if "ndjson" in ct or "jsonl" in ct:
        return "ndjson"
    if head.startswith(b"{") and _loads(data) is None:
        lines = [line for line in data.splitlines() if line.strip()]
        if len(lines) > 1 and _loads(lines[0]) is not None:
            return "ndjson"
    return "json"


def _looks_eventstream(data: bytes) -> bool:
    if len(data) < 16:
        return False
    total = int.from_bytes(data[:4], "big")
    headers = int.from_bytes(data[4:8], "big")
    return 16 <= total <= len(data) and headers < total


def _first_object(data: bytes, frame: str) -> Any:
    """The first JSON object of a body, whatever its framing (for sniffing)."""
    if frame == "json":
        return _loads(data)
    if frame == "array":
        value = _loads(data)
        if isinstance(value, list):
            return value[0] if value else None
        return _loads(data.lstrip()[1:].split(b"\n,", 1)[0].split(b"\r\n,", 1)[0])
    if frame == "ndjson":
        for line in data.splitlines():
            if line.strip():
                return _loads(line)
        return None
    if frame == "sse":
        dec = sse.SSEDecoder()
        for ev in [*dec.feed(data[:65536]), *dec.flush()]:
            obj = _loads(ev.data) if ev.data and ev.data != "[DONE]" else None
            if isinstance(obj, dict):
                if ev.event and "type" not in obj:
                    obj = {"type": ev.event, **obj}
                return obj
        return None
    try:
        messages = eventstream.EventStreamDecoder().feed(data[:65536])
    except eventstream.EventStreamError as e:
        messages = e.messages
    for message in messages:
        return {"type": message.event_type or "eventstream"}
    return None


def sniff(obj: Any, hint: Kind | None = None) -> Kind | None:
    """The API an answer (or its first stream event) comes from, by its shape."""
    if not isinstance(obj, dict):
        return None
    typ = obj.get("type")
    typ = typ if isinstance(typ, str) else ""
    route = hint.route_type if hint is not None else C
    if "choices" in obj:
        choices = obj.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else {}
        completions = obj.get("object") == "text_completion" or (
            isinstance(first, dict) and "text" in first and "message" not in first
        )
        return Kind("openai", T if completions else C)
    if obj.get("object") == "list" and isinstance(obj.get("data"), list):
        return Kind("openai", E)
    if obj.get("object") == "response" or typ.startswith("response."):
        return Kind("openai-responses", C)
    if typ in ("message_start", "message", "ping", "content_block_start") or "stop_reason" in obj:
        return Kind("anthropic", route if hint and hint.api == "anthropic" else C)
    if typ == "completion" or "completion" in obj:
        return Kind("anthropic", T)
    if "candidates" in obj or "usageMetadata" in obj or "promptFeedback" in obj:
        return Kind("gemini", C)
    if "embedding" in obj and isinstance(obj["embedding"], dict):
        return Kind("gemini", E)
    if isinstance(obj.get("output"), dict) or typ in ("messageStart", "contentBlockDelta"):
        return Kind("bedrock", C)
    if typ in ("message-start", "content-start", "content-delta", "tool-plan-delta"):
        return Kind("cohere-v2", route if hint and hint.api.startswith("cohere") else C)
    if "generations" in obj:
        return Kind("cohere-v1", T)
    if "event_type" in obj or "generation_id" in obj:
        return Kind("cohere-v1", route if hint and hint.api.startswith("cohere") else C)
    if "done" in obj and ("message" in obj or "response" in obj):
        return Kind("ollama", T if "response" in obj else C)
    if "message" in obj and "finish_reason" in obj:
        return Kind("cohere-v2", C)
    if "embeddings" in obj:
        if hint is not None and hint.route_type is E:
            return hint
        return Kind("cohere-v2" if "texts" in obj or "id" in obj else "ollama", E)
    return None


# ---------------------------------------------------------------- the view


#: the LLM API hosts whose LLM paths get this view automatically (observe mode's
#: table: the built-in hosts and `llmitm_observe_hosts`, set by ContentviewAddon)
_hosts = HostTable()


def set_hosts(table: HostTable) -> None:
    global _hosts
    _hosts = table


def _is_llm_flow(flow: Any) -> bool:
    """A flow the gateway called a provider for, or observed (its metadata says so)."""
    meta = getattr(flow, "metadata", None) or {}
    return "llmitm.provider" in meta or "llmitm.record_id" in meta


def _on_llm_host(flow: Any) -> bool:
    """A request to a known LLM API host, on one of its LLM operations (a flow recorded
    without the gateway, or with observe mode off)."""
    request = getattr(flow, "request", None)
    if request is None:
        return False
    for host in {request.pretty_host, request.host}:
        name = _hosts.provider_for(host, request.port)
        if name is not None and operation(name, request.method, request.path) is not None:
            return True
    return False


class LLMContentview(Contentview):
    """Renders LLM requests and answers (see the module's docstring)."""

    name = "LLM"
    syntax_highlight = "none"

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        try:
            if not data or not isinstance(metadata.http_message, http.Message):
                return -1
            flow = metadata.flow
            if _is_llm_flow(flow) or _on_llm_host(flow):
                return PRIORITY
            return -1
        except Exception:  # noqa: BLE001 - a view must never raise into mitmproxy
            return -1

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        try:
            return render(data, metadata)
        except Exception as e:  # never raise into mitmproxy: show the text instead
            log.debug("llmitm: LLM contentview failed", exc_info=True)
            return f"(not rendered as LLM traffic: {type(e).__name__}: {e})\n\n" + _text(data)


def _text(data: bytes) -> str:
    value = _loads(data)
    if value is not None:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return data.decode("utf-8", "replace")


def render(data: bytes, metadata: Metadata) -> str:
    """The view of one message's body (a request or a response of an HTTP flow)."""
    message = metadata.http_message
    flow = metadata.flow
    request = getattr(flow, "request", None)
    if isinstance(message, http.Request):
        return render_request(data, message.path, metadata.content_type)
    req_body = b""
    path = ""
    if request is not None:
        path = request.path
        try:
            req_body = request.get_content(strict=False) or b""
        except ValueError:
            req_body = b""
    status = message.status_code if isinstance(message, http.Response) else 200
    headers = dict(message.headers.items()) if message is not None else {}
    return render_response(
        data, status, headers, path, req_body, metadata.content_type, _provider_of(flow)
    )


def _provider_of(flow: Any) -> str | None:
    meta = getattr(flow, "metadata", None) or {}
    name = meta.get("llmitm.provider")
    return name if isinstance(name, str) else None


# ---------------------------------------------------------------- requests


def render_request(data: bytes, path: str, content_type: str | None = None) -> str:
    body = _loads(data)
    kind = kind_of_path(path) or _request_kind(body)
    if not isinstance(body, dict):
        return "LLM request (not a JSON object)\n\n" + _text(data)
    model = body.get("model") or body.get("modelId")
    m = _GEMINI_MODEL.search(path) or _BEDROCK_MODEL.search(path)
    if not model and m:
        model = unquote(m.group(1))
    stream = body.get("stream") is True or "stream" in path.lower().rsplit("/", 1)[-1]
    head = ["LLM request"]
    if kind is not None:
        head.append(kind.label)
    if model:
        head.append(f"model {model}")
    if stream:
        head.append("stream")
    lines = [" · ".join(head)]
    params = _params(body)
    if params:
        lines.append("params: " + " ".join(f"{k}={v}" for k, v in params.items()))
    tools = _tool_names(body)
    if tools:
        lines.append("tools: " + ", ".join(tools))
    lines.append("")
    turns = request_turns(body)
    for role, parts in turns:
        lines.extend(_turn(role, parts))
    if not turns:
        lines.append(_text(data))
    return "\n".join(lines).rstrip() + "\n"


def _request_kind(body: Any) -> Kind | None:
    if not isinstance(body, dict):
        return None
    if "contents" in body:
        return Kind("gemini", C)
    if "messages" in body:
        return Kind("openai", C)
    if "prompt" in body:
        return Kind("openai", T)
    if "input" in body:
        return Kind("openai", E)
    return None


def _params(body: dict[str, Any]) -> dict[str, Any]:
    params = request_params(body)  # the record's own choice of fields
    params.pop("stream", None)
    return dict(sorted(params.items()))


def _tool_names(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools")
    if tools is None and isinstance(body.get("toolConfig"), dict):
        tools = body["toolConfig"].get("tools")
    names: list[str] = []
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        decls = tool.get("functionDeclarations") or tool.get("function_declarations")
        if isinstance(decls, list):  # Gemini
            names += [str(d.get("name")) for d in decls if isinstance(d, dict)]
            continue
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else None
        spec = tool.get("toolSpec") if isinstance(tool.get("toolSpec"), dict) else None
        name = (fn or spec or tool).get("name") or tool.get("type")
        names.append(str(name))
    return names


Part = tuple[str, Any]  # ("text" | "thinking" | "call" | "result" | "media", value)


def request_turns(body: dict[str, Any]) -> list[tuple[str, list[Part]]]:
    """The turns of a request of any supported format, as (role, parts)."""
    turns: list[tuple[str, list[Part]]] = []
    for key in ("system", "systemInstruction", "system_instruction", "instructions", "preamble"):
        if body.get(key):
            turns.append(("system", _parts(body[key])))
    history = body.get("chat_history")  # Cohere v1
    if isinstance(history, list):
        turns += [_message(m) for m in history if isinstance(m, dict)]
    for key in ("messages", "contents"):
        value = body.get(key)
        value = [value] if isinstance(value, dict) else value  # Gemini allows one content
        if isinstance(value, list):
            turns += [_message(m) for m in value if isinstance(m, dict)]
    inputs = body.get("input")
    if isinstance(inputs, list) and any(isinstance(i, dict) for i in inputs):  # Responses
        turns += [_message(m) for m in inputs if isinstance(m, dict)]
    elif inputs is not None and not isinstance(inputs, dict):
        items = inputs if isinstance(inputs, list) else [inputs]
        role = "input" if _is_embeddings_input(body) else "user"
        turns.append((role, [("text", i if isinstance(i, str) else _compact(i)) for i in items]))
    if isinstance(body.get("message"), str):  # Cohere v1
        turns.append(("user", [("text", body["message"])]))
    for key in ("prompt", "texts", "inputs"):
        value = body.get(key)
        if isinstance(value, (str, list)) and value:
            items = value if isinstance(value, list) else [value]
            turns.append(
                ("prompt" if key == "prompt" else "input", [("text", str(i)) for i in items])
            )
    results = body.get("tool_results")  # Cohere v1
    if isinstance(results, list) and results:
        turns.append(("tool", [("result", (None, r)) for r in results]))
    requests = body.get("requests")  # Gemini batchEmbedContents
    if isinstance(requests, list):
        for r in requests:
            if isinstance(r, dict) and isinstance(r.get("content"), dict):
                turns.append(("input", _parts(r["content"])))
    if isinstance(body.get("content"), dict) and "parts" in body["content"]:  # embedContent
        turns.append(("input", _parts(body["content"])))
    return turns


def _is_embeddings_input(body: dict[str, Any]) -> bool:
    return "messages" not in body and "instructions" not in body


_ROLES = {"model": "assistant", "chatbot": "assistant", "function": "tool"}


def _message(m: dict[str, Any]) -> tuple[str, list[Part]]:
    kind = m.get("type")
    if kind == "function_call":  # Responses API items
        return "assistant", [("call", (m.get("name"), m.get("arguments"), m.get("call_id")))]
    if kind == "function_call_output":
        return "tool", [("result", (m.get("call_id"), m.get("output")))]
    if kind == "reasoning":
        return "assistant", [("thinking", _summary(m))]
    role = str(m.get("role") or "user").lower()
    role = _ROLES.get(role, role)
    parts: list[Part] = []
    for key in ("thinking", "reasoning_content", "reasoning"):
        if isinstance(m.get(key), str) and m[key]:
            parts.append(("thinking", m[key]))
    for key in ("content", "parts", "message"):
        if key in m and m[key] is not None:
            parts += _parts(m[key])
    for call in m.get("tool_calls") or ():
        if isinstance(call, dict):
            fn = call.get("function") if isinstance(call.get("function"), dict) else call
            args = fn.get("arguments", fn.get("parameters"))
            parts.append(("call", (fn.get("name"), args, call.get("id"))))
    if m.get("tool_call_id"):
        parts = [("result", (m["tool_call_id"], _joined(parts)))]
    return role, parts


def _summary(item: dict[str, Any]) -> str:
    summary = item.get("summary") or item.get("content") or []
    if isinstance(summary, str):
        return summary
    return "\n".join(
        s["text"] for s in summary if isinstance(s, dict) and isinstance(s.get("text"), str)
    )


def _joined(parts: list[Part]) -> str:
    return "\n".join(v for k, v in parts if k == "text" and isinstance(v, str))


def _parts(content: Any) -> list[Part]:
    """The parts of one message's content: a string, a list of blocks of any provider,
    or a Gemini content object."""
    if isinstance(content, str):
        return [("text", content)]
    if isinstance(content, dict):
        if "parts" in content and "text" not in content:  # a Gemini content object
            return _parts(content["parts"])
        return _block(content)
    if isinstance(content, list):
        return [p for block in content for p in _parts(block)]
    return [] if content is None else [("text", _compact(content))]


def _block(b: dict[str, Any]) -> list[Part]:
    t = b.get("type")
    if t == "thinking" or (b.get("thought") is True and isinstance(b.get("text"), str)):
        return [("thinking", b.get("thinking") or b.get("text") or "")]
    if t == "redacted_thinking":
        return [("thinking", "[redacted thinking]")]
    if t == "tool_use":
        return [("call", (b.get("name"), b.get("input"), b.get("id")))]
    if t == "tool_result":
        return [("result", (b.get("tool_use_id"), _joined(_parts(b.get("content")))))]
    if isinstance(b.get("text"), str):
        return [("text", b["text"])]
    if isinstance(b.get("toolUse"), dict):  # Bedrock
        u = b["toolUse"]
        return [("call", (u.get("name"), u.get("input"), u.get("toolUseId")))]
    if isinstance(b.get("toolResult"), dict):
        r = b["toolResult"]
        inner = r.get("content")
        shown = (
            [
                c.get("text") if isinstance(c.get("text"), str) else _compact(c.get("json", c))
                for c in inner
                if isinstance(c, dict)
            ]
            if isinstance(inner, list)
            else [_compact(inner)]
        )
        return [("result", (r.get("toolUseId"), "\n".join(shown)))]
    if isinstance(b.get("reasoningContent"), dict):
        text = (b["reasoningContent"].get("reasoningText") or {}).get("text")
        return [("thinking", text if isinstance(text, str) else "[redacted thinking]")]
    if isinstance(b.get("functionCall"), dict):  # Gemini
        fc = b["functionCall"]
        return [("call", (fc.get("name"), fc.get("args"), fc.get("id")))]
    if isinstance(b.get("functionResponse"), dict):
        fr = b["functionResponse"]
        return [("result", (fr.get("name"), _compact(fr.get("response"))))]
    if t in ("tool_call", "tool-call") or isinstance(b.get("function"), dict):
        fn = b.get("function") or {}
        return [("call", (fn.get("name"), fn.get("arguments"), b.get("id")))]
    if isinstance(b.get("document"), dict) and isinstance(b["document"].get("data"), str):
        return [("text", b["document"]["data"])]  # Cohere v2 tool results
    media = t or next((k for k in ("image", "inlineData", "fileData", "document") if k in b), None)
    return [("media", media or "part")]


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n… ({len(text) - MAX_TEXT:,} more characters)"


def _arguments(args: Any) -> str:
    if isinstance(args, str):
        parsed = _loads(args) if args.strip() else None
        if parsed is None:
            return args
        args = parsed
    if args is None:
        return "{}"
    return json.dumps(args, indent=2, ensure_ascii=False)


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines() or [""])


def _turn(role: str, parts: list[Part]) -> list[str]:
    out = [f"── {role} ──"]
    for kind, value in parts:
        if kind == "text":
            out.append(_cut(value))
        elif kind == "thinking":
            out.append("[thinking]")
            out.append(_indent(_cut(value)))
        elif kind == "call":
            name, args, call_id = value
            out.append(f"[tool call] {name}" + (f"  (id {call_id})" if call_id else ""))
            out.append(_indent(_cut(_arguments(args))))
        elif kind == "result":
            call_id, result = value
            out.append("[tool result]" + (f" {call_id}" if call_id else ""))
            text = result if isinstance(result, str) else _compact(result)
            out.append(_indent(_cut(text)))
        else:
            out.append(f"[{value}]")
    out.append("")
    return out


# ---------------------------------------------------------------- answers


@dataclass(slots=True)
class Answer:
    data: dict[str, Any]  # OpenAI-shaped (chat.completion, text_completion or list)
    usage: Usage | None
    error: str | None = None
    frame: str = "json"
    #: a 2xx body that is not the answer the kind promises: why (shown as it is)
    unreadable: str | None = None
    #: what the label adds (the model vendor of a Bedrock InvokeModel call)
    detail: str | None = None


def _spec(kind: Kind, body: Any, path: str, frame: str) -> CallSpec:
    body = body if isinstance(body, dict) else {}
    model = body.get("model") if isinstance(body.get("model"), str) else None
    m = _GEMINI_MODEL.search(path) or _BEDROCK_MODEL.search(path)
    if model is None and m:
        model = unquote(m.group(1))
    options = ModelOptions()
    if kind.api == "cohere-v1":
        options = ModelOptions(cohere=CohereOptions(api_version="v1"))
    native = kind.api not in ("openai", "openai-responses")
    return CallSpec(
        route_type=kind.route_type,
        body=body,
        model=model,
        options=options,
        stream=frame != "json",
        client_wants_usage=True,
        path=path.partition("?")[0] or "/",
        query=path.partition("?")[2],
        llm_format=kind.provider if native else "openai",
    )


def _err(e: ProviderError) -> str:
    return f"{e.status} {e.type}: {e.message}"


def read_answer(
    kind: Kind,
    data: bytes,
    status: int,
    headers: dict[str, str],
    req_body: Any,
    path: str,
    frame: str,
) -> Answer:
    """The answer of `kind` as an OpenAI-shaped object, by the provider's own code."""
    if kind.api == "openai-responses" and status < 400:
        return _responses_answer(data, frame)
    if kind.api == "bedrock-invoke" and status < 400:
        return _invoke_answer(data, headers, req_body, path, frame)
    provider = providers.get(kind.provider)
    spec = _spec(kind, req_body, path, frame)
    if status >= 400:
        return Answer({}, None, _err(provider.parse_error(status, headers, data)), frame)
    if frame != "json":
        if kind.api == "bedrock":
            translator = provider.native_stream_observer(spec)
        else:
            translator = provider.stream_translator(spec)
        translator.feed(data)
        translator.finish()
        error = translator.error
        return Answer(
            translator.assembled(), translator.usage, _err(error) if error else None, frame
        )
    if kind.api == "gemini" and kind.route_type is E:  # embedContent: one vector, not a batch
        obj = _loads(data)
        if isinstance(obj, dict) and isinstance(obj.get("embedding"), dict):
            data = json.dumps({"embeddings": [obj["embedding"]]}).encode()
        # the adapter estimates usage from an OpenAI `input`: give it the request's texts
        texts = [v for _, parts in request_turns(spec.body) for k, v in parts if k == "text"]
        spec.body = {**spec.body, "input": [t for t in texts if t] or ["?"]}
    try:
        reply = provider.parse_response(spec, status, headers, data)
    except ProviderError as e:  # a 2xx body of another shape: not an error of the call
        return Answer({}, None, None, frame, unreadable=e.message)
    return Answer(reply.data, reply.usage, None, frame)


def _responses_answer(data: bytes, frame: str) -> Answer:
    """OpenAI's Responses API, read by `providers.openai_responses` (the reader of
    preserve routes and observe mode): the stream's final `response`, or the JSON one,
    as a chat completion."""
    if frame == "sse":
        stream = openai_responses.ResponsesStream()
        stream.feed(data)
        stream.finish()
        if not stream.response:
            return Answer({}, None, None, frame, unreadable="no Responses API event")
        error = stream.error
        return Answer(stream.assembled(), stream.usage, _err(error) if error else None, frame)
    reply = openai_responses.parse(data)
    if reply.data.get("object") != "response" and "output" not in reply.data:
        return Answer({}, None, None, frame, unreadable="not a Responses API `response` object")
    return Answer(
        openai_responses.to_chat(reply.data),
        reply.usage,
        openai_responses.error_of(reply.data),
        frame,
    )


# ---------------------------------------------------------------- Bedrock InvokeModel


def _invoke_events(data: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """The model's own events of an InvokeModelWithResponseStream body (each `chunk`'s
    base64 `bytes`), decoded with the shared event-stream decoder; and a framing error."""
    problem = None
    try:
        messages = eventstream.EventStreamDecoder().feed(data)
    except eventstream.EventStreamError as e:
        messages, problem = e.messages, str(e)
    events: list[dict[str, Any]] = []
    for message in messages:
        if message.event_type != "chunk":
            continue
        try:
            payload = message.json()
            inner = json.loads(base64.b64decode(payload.get("bytes") or ""))
        except (ValueError, TypeError, AttributeError):
            continue
        if isinstance(inner, dict):
            events.append(inner)
    return events, problem


def _invoke_answer(
    data: bytes, headers: dict[str, str], req_body: Any, path: str, frame: str
) -> Answer:
    """Bedrock's InvokeModel: the body is the model vendor's own (Anthropic's Messages
    API for Claude, streamed as `chunk` events of an event-stream). The vendor's answer
    is read by its own provider module when it has one (Anthropic, OpenAI's shape), its
    text otherwise; the usage is Bedrock's (the stream's invocation metrics, read by the
    Bedrock observer, or the token-count headers)."""
    bedrock = providers.get("bedrock")
    spec = _spec(Kind("bedrock-invoke", C), req_body, path, frame)
    if frame == "eventstream":
        observer = bedrock.native_stream_observer(spec)  # usage, errors of the stream
        observer.feed(data)
        observer.finish()
        events, problem = _invoke_events(data)
        vendor = sniff(events[0]) if events else None
        usage = observer.usage
        error = _err(observer.error) if observer.error else problem
        if vendor is not None and vendor.api in ("anthropic", "openai"):
            translator = providers.get(vendor.provider).stream_translator(
                _spec(vendor, req_body, path, "sse")
            )
            for event in events:
                kind = event.get("type")
                translator.feed(sse.encode(event, kind if isinstance(kind, str) else None))
            translator.finish()
            answer = translator.assembled()
            answer["model"] = answer.get("model") or spec.model
            return Answer(answer, usage or translator.usage, error, frame, detail=vendor.api)
        texts, stops = zip(*(invoke_text(e) for e in events), strict=True) if events else ((), ())
        stop = next((s for s in reversed(stops) if s), None)
        return Answer(_chat("".join(texts), stop, spec.model), usage, error, frame)
    low = {k.lower(): v for k, v in headers.items()}
    usage = usage_from_counts(
        low.get("x-amzn-bedrock-input-token-count"),
        low.get("x-amzn-bedrock-output-token-count"),
        low.get("x-amzn-bedrock-cache-read-input-token-count"),
        low.get("x-amzn-bedrock-cache-write-input-token-count"),
    )
    obj = _loads(data)
    if not isinstance(obj, dict):
        return Answer({}, None, None, frame, unreadable="not a JSON object")
    vendor = sniff(obj)
    if vendor is not None and vendor.api in ("anthropic", "openai"):
        try:
            reply = providers.get(vendor.provider).parse_response(
                _spec(vendor, req_body, path, frame), 200, headers, data
            )
        except ProviderError as e:
            return Answer({}, None, None, frame, unreadable=e.message, detail=vendor.api)
        answer = reply.data
        answer["model"] = answer.get("model") or spec.model
        return Answer(answer, usage or reply.usage, None, frame, detail=vendor.api)
    text, stop = invoke_text(obj)
    return Answer(_chat(text, stop, spec.model), usage, None, frame)


def _chat(text: str, finish: str | None, model: str | None) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text or None},
                "finish_reason": finish,
            }
        ],
    }


_FRAMES = {
    "sse": "SSE stream",
    "ndjson": "NDJSON stream",
    "array": "JSON array stream",
    "eventstream": "AWS event-stream",
    "json": "JSON",
}


def render_response(
    data: bytes,
    status: int,
    headers: dict[str, str],
    path: str,
    req_data: bytes,
    content_type: str | None = None,
    provider: str | None = None,
) -> str:
    """The view of an answer: the assistant's turn, finish reason and usage."""
    frame = framing(data, content_type)
    hint = kind_of_path(path)
    kind = sniff(_first_object(data, frame), hint)
    if kind is None or (hint is not None and (status >= 400 or hint.api == "bedrock-invoke")):
        kind = hint  # (an InvokeModel body is the model vendor's: the path says Bedrock)
    if kind is None and provider is not None and status >= 400:
        kind = Kind("openai", C)
    if kind is None:
        return "LLM response (format not recognised)\n\n" + _text(data)
    if kind.api.startswith("cohere") and hint is not None and hint.api.startswith("cohere"):
        kind = Kind(hint.api, kind.route_type)  # the path tells v1 from v2
    req_body = _loads(req_data) if req_data else None
    answer = read_answer(kind, data, status, headers, req_body, path, frame)
    label = kind.label + (f" ({answer.detail})" if answer.detail else "")
    if answer.unreadable is not None:  # say so, and show the body: no made-up error
        return (
            f"LLM response · {status} · not an answer of the {label} API "
            f"({answer.unreadable})\n\n" + _cut(_text(data)) + "\n"
        )
    d = answer.data
    head = [f"LLM response · {status}", label]
    if d.get("model"):
        head.append(f"model {d['model']}")
    head.append(_FRAMES.get(answer.frame, answer.frame))
    lines = [" · ".join(head), ""]
    if answer.error:
        lines += [f"error: {answer.error}", ""]
    if kind.route_type is E or d.get("object") == "list":
        lines += _embeddings(d)
    for choice in d.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        lines += _choice(choice, len(d.get("choices") or ()) > 1)
    if answer.usage is not None:
        lines.append("usage: " + usage_line(answer.usage))
    elif isinstance(d.get("usage"), dict):
        lines.append("usage: " + _compact(d["usage"]))
    if len(lines) <= 2 or (answer.error and not d.get("choices")):
        lines += ["── body ──", _cut(_text(data))]
    return "\n".join(lines).rstrip() + "\n"


def _choice(choice: dict[str, Any], numbered: bool) -> list[str]:
    role = "assistant" + (f" #{choice.get('index')}" if numbered else "")
    parts: list[Part] = []
    message = choice.get("message")
    if isinstance(message, dict):
        blocks = message.get("thinking_blocks")
        if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
            parts.append(("thinking", message["reasoning_content"]))
        elif isinstance(message.get("reasoning"), str) and message["reasoning"]:
            parts.append(("thinking", message["reasoning"]))
        elif isinstance(blocks, list) and blocks:
            parts += [p for b in blocks if isinstance(b, dict) for p in _block(b)]
        if isinstance(message.get("content"), (str, list)):
            parts += _parts(message["content"])
        if isinstance(message.get("refusal"), str):
            parts.append(("text", "[refusal] " + message["refusal"]))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                fn = call.get("function") or {}
                parts.append(("call", (fn.get("name"), fn.get("arguments"), call.get("id"))))
    elif isinstance(choice.get("text"), str):
        parts.append(("text", choice["text"]))
    out = _turn(role, parts)
    out.append(f"finish: {choice.get('finish_reason')}")
    return out


def _embeddings(d: dict[str, Any]) -> list[str]:
    items = d.get("data")
    if not isinstance(items, list):
        return []
    dims = {
        len(e["embedding"])
        for e in items
        if isinstance(e, dict) and isinstance(e.get("embedding"), list)
    }
    shape = f" × {', '.join(str(n) for n in sorted(dims))} dimensions" if dims else ""
    return [f"embeddings: {len(items)}{shape}", ""]


def usage_line(u: Usage) -> str:
    """`1,204 in (300 cached) → 311 out (120 reasoning) · reported`."""
    tilde = "~" if u.estimated else ""
    prompt = f"{tilde}{u.prompt_tokens:,} in"
    extra = []
    if u.cache_read_tokens:
        extra.append(f"{u.cache_read_tokens:,} cache read")
    if u.cache_write_tokens:
        extra.append(f"{u.cache_write_tokens:,} cache write")
    if extra:
        prompt += f" ({', '.join(extra)})"
    completion = f"{tilde}{u.completion_tokens:,} out"
    if u.reasoning_tokens:
        completion += f" ({u.reasoning_tokens:,} reasoning)"
    return f"{prompt} → {completion} · {'estimated' if u.estimated else 'reported'}"


llm_view = LLMContentview()


def register() -> None:
    """Add the view to mitmproxy (idempotent: the registry replaces a view by name)."""
    contentviews.add(llm_view)


class ContentviewAddon:
    """Registers the view when the gateway's script loads (a reload replaces it by name),
    and keeps its LLM hosts in step with observe mode's `llmitm_observe_hosts`."""

    name = "llmitm-contentview"

    def load(self, loader: Any) -> None:
        register()

    def configure(self, updated: set[str]) -> None:
        if "llmitm_observe_hosts" not in updated:
            return
        try:
            from mitmproxy import ctx

            set_hosts(HostTable.from_config(ctx.options.llmitm_observe_hosts))
        except (AttributeError, KeyError, ValueError):  # no such option, or a bad entry
            pass  # (observe mode reports a bad entry)
