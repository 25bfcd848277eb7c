"""A fake Anthropic API, as a handler for `FakeUpstream`.

It checks what the real API checks (the `x-api-key` and `anthropic-version` headers,
the body's required fields, roles that alternate starting with the user, no fields the
Messages API does not know, tool results that answer the previous turn's tool calls,
thinking budgets) and answers with errors of Anthropic's shape and status, or with a
Messages JSON or SSE stream of the real shape: `event:` names, `ping`, thinking with a
signature, tool_use blocks with their input streamed as JSON fragments, usage with the
cache fields. Streams are re-cut at awkward byte boundaries.

What it answers is scripted with `Script`: the text, the tool calls to make when the
request offers tools (and is not already sending tool results back), the usage, and
faults (a cut connection, an `overloaded_error` event mid-stream).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.upstream import Handler, Received, Reply, rechunk

MESSAGE_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
    }
)
COMPLETE_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "max_tokens_to_sample",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
    }
)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


@dataclass
class Script:
    """What the fake answers (every field has a realistic default)."""

    text: str = "The answer is 2."
    # (name, input) of the tool calls made when the request has tools and its last turn
    # holds no tool_result; several are parallel calls in one answer
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # text said before the tool calls, in the same answer
    text_before_tools: str = "Let me check."
    # sent as a thinking block (with a signature) when the request enables thinking
    thinking: str = "The user asks for a sum. 1 + 1 = 2."
    signature: str = "EqQBCkYIARgCIkD3fakesignature0123456789abcdefABCDEF=="
    stop_reason: str | None = None  # default: end_turn, or tool_use for tool calls
    model: str | None = None  # default: the model asked for
    input_tokens: int = 21
    cache_read_input_tokens: int = 1800
    cache_creation_input_tokens: int = 200
    output_tokens: int = 14
    message_id: str = "msg_01FakeAnthropicMessage0001"
    # streams: re-cut into pieces of this many bytes, a pause (s) before each content
    # event, the connection cut after this many pieces, an overloaded_error event in
    # place of the content event of this number
    chunk_size: int = 13
    pause: float = 0.0
    cut_after: int | None = None
    error_at: int | None = None
    # end the stream cleanly after this many events (no message_stop: a truncated answer)
    end_at: int | None = None


def error(status: int, kind: str, message: str) -> Reply:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return Reply.json(body, status, {"request-id": "req_fake0001"})


def invalid(message: str) -> Reply:
    return error(400, "invalid_request_error", message)


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


PING = sse_event("ping", {"type": "ping"})


def anthropic_api(api_key: str, script: Script | None = None) -> Handler:
    """A handler answering `POST /v1/messages` and `POST /v1/complete` like Anthropic."""
    s = script or Script()

    def handle(req: Received) -> Reply:
        path = req.path.split("?")[0]
        if req.method != "POST" or path not in ("/v1/messages", "/v1/complete"):
            return error(404, "not_found_error", "Not Found")
        key = req.headers.get("x-api-key")
        if not key:
            return error(401, "authentication_error", "x-api-key header is required")
        if key != api_key:
            return error(401, "authentication_error", "invalid x-api-key")
        if not req.headers.get("anthropic-version"):
            return invalid("anthropic-version: header is required")
        try:
            body = json.loads(req.body)
        except ValueError:
            return invalid("There was an error parsing the body of your request as JSON")
        if not isinstance(body, dict):
            return invalid("Input should be an object")
        if path == "/v1/complete":
            problem = check_complete(body)
            if problem:
                return invalid(problem)
            return complete_stream(body, s) if body.get("stream") else complete_json(body, s)
        problem = check_messages(body)
        if problem:
            return invalid(problem)
        blocks, stop = answer_blocks(body, s)
        if body.get("stream"):
            return message_stream(body, s, blocks, stop)
        return Reply.json(message_json(body, s, blocks, stop), headers={"request-id": "req_fake"})

    return handle


# ------------------------------------------------------------------ checks


def check_messages(body: dict[str, Any]) -> str | None:
    """What the real Messages API would reject in `body`, as its message; None if valid."""
    for name in body:
        if name not in MESSAGE_FIELDS:
            return f"{name}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    system = body.get("system")
    if isinstance(system, list):
        if any(
            not isinstance(b, dict) or b.get("type") != "text" or not b.get("text") for b in system
        ):
            return "system: a list of non-empty text blocks is expected"
    elif system is not None and not isinstance(system, str):
        return "system: Input should be a valid string or a list of text blocks"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    stop = body.get("stop_sequences")
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop)
    ):
        return "stop_sequences: each stop sequence must be non-empty"
    if stop and not all(x.strip() for x in stop):
        return "stop_sequences: each stop sequence must contain non-whitespace"
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        return "metadata: only user_id is allowed"
    problem = check_thinking(body)
    if problem:
        return problem
    problem = check_tools(body)
    if problem:
        return problem
    return check_turns(body.get("messages"))


def check_thinking(body: dict[str, Any]) -> str | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        return "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"
    if thinking["type"] != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if body["max_tokens"] <= budget:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if body.get("temperature") not in (None, 1):
        return "`temperature` may only be set to 1 when thinking is enabled"
    if body.get("top_k") is not None:
        return "`top_k` must be unset when thinking is enabled"
    return None


def check_tools(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    names = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                return f"tools.{i}.name: Field required"
            names.add(tool["name"])
            if tool.get("type", "custom") != "custom":
                continue  # a server tool
            for name in tool:
                if name not in ("name", "description", "input_schema", "cache_control", "type"):
                    return f"tools.{i}.custom.{name}: Extra inputs are not permitted"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema.type: Field required"
    choice = body.get("tool_choice")
    if choice is not None:
        if not tools:
            return "tool_choice may only be specified while providing tools"
        if not isinstance(choice, dict) or choice.get("type") not in (
            "auto",
            "any",
            "tool",
            "none",
        ):
            return "tool_choice: Input tag does not match any of the expected tags"
        if choice["type"] == "tool" and choice.get("name") not in names:
            return f"tool_choice.tool.name: tool {choice.get('name')!r} not found in tools"
        for name in choice:
            if name not in ("type", "name", "disable_parallel_tool_use"):
                return f"tool_choice.{name}: Extra inputs are not permitted"
    return None


def _check_block(block: Any, role: str, where: str) -> str | None:
    if not isinstance(block, dict):
        return f"{where}: Input should be an object"
    kind = block.get("type")
    allowed = {
        "user": ("text", "image", "document", "tool_result"),
        "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
    }[role]
    if kind not in allowed:
        return f"{where}.type: {kind!r} blocks are not allowed in {role} messages"
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        return f"{where}: text content blocks must be non-empty"
    if kind == "image":
        src = block.get("source") or {}
        if src.get("type") == "base64":
            if src.get("media_type") not in IMAGE_TYPES or not src.get("data"):
                return f"{where}.source.base64: media_type and data are required"
        elif src.get("type") != "url" or not str(src.get("url", "")).startswith("http"):
            return f"{where}.source: Input tag does not match any of the expected tags"
    if kind == "tool_use" and (
        not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict)
    ):
        return f"{where}.tool_use: id, name and an object input are required"
    if kind == "tool_result" and not block.get("tool_use_id"):
        return f"{where}.tool_result.tool_use_id: Field required"
    if kind == "thinking" and (not block.get("signature") or "thinking" not in block):
        return f"{where}.thinking.signature: Field required"
    return None


def check_turns(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    pending: list[str] = []  # tool_use ids of the previous assistant turn
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            role = m.get("role") if isinstance(m, dict) else None
            return f"{where}.role: Input should be 'user' or 'assistant' (got {role!r})"
        for name in m:
            if name not in ("role", "content"):
                return f"{where}.{name}: Extra inputs are not permitted"
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            if i == 0:
                return 'messages: first message must use the "user" role'
            return (
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{m["role"]}" roles in a row'
            )
        content = m.get("content")
        if isinstance(content, str):
            if not content and i < len(messages) - 1:
                return f"{where}: all messages must have non-empty content"
            blocks: list[Any] = []
        elif isinstance(content, list) and content:
            blocks = content
        else:
            return f"{where}.content: Input should be a valid string or a non-empty list"
        for j, block in enumerate(blocks):
            problem = _check_block(block, m["role"], f"{where}.content.{j}")
            if problem:
                return problem
        if m["role"] == "user":
            results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
            for j, b in enumerate(blocks):
                if b.get("type") == "tool_result" and b["tool_use_id"] not in pending:
                    return (
                        f"{where}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                        f"blocks: {b['tool_use_id']}. Each `tool_result` block must have a "
                        "corresponding `tool_use` block in the previous message."
                    )
            missing = [p for p in pending if p not in results]
            if missing:
                return (
                    f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}"
                )
            kinds = [b.get("type") for b in blocks]
            first_other = next((k for k, t in enumerate(kinds) if t != "tool_result"), len(kinds))
            if "tool_result" in kinds[first_other:]:
                return f"{where}: tool_result blocks must come before any other content"
            pending = []
        else:
            pending = [b["id"] for b in blocks if b.get("type") == "tool_use"]
    return None


def check_complete(body: dict[str, Any]) -> str | None:
    for name in body:
        if name not in COMPLETE_FIELDS:
            return f"{name}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens_to_sample"), int):
        return "max_tokens_to_sample: Field required"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.startswith("\n\nHuman:"):
        return 'prompt must start with "\\n\\nHuman:" turn'
    if not prompt.endswith("\n\nAssistant:"):
        return 'prompt must end with "\\n\\nAssistant:" turn'
    return None


# ------------------------------------------------------------------ answers


def _thinking_on(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "enabled"


def _answers_tool_results(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]
    content = last.get("content")
    return (
        last["role"] == "user"
        and isinstance(content, list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    )


def answer_blocks(body: dict[str, Any], s: Script) -> tuple[list[dict[str, Any]], str]:
    """The content blocks of the answer and its stop_reason."""
    blocks: list[dict[str, Any]] = []
    if _thinking_on(body):
        blocks.append({"type": "thinking", "thinking": s.thinking, "signature": s.signature})
    if body.get("tools") and s.tool_calls and not _answers_tool_results(body):
        if s.text_before_tools:
            blocks.append({"type": "text", "text": s.text_before_tools})
        for n, (name, args) in enumerate(s.tool_calls):
            blocks.append(
                {"type": "tool_use", "id": f"toolu_fake{n:02d}", "name": name, "input": args}
            )
        return blocks, s.stop_reason or "tool_use"
    blocks.append({"type": "text", "text": s.text})
    return blocks, s.stop_reason or "end_turn"


def _usage(s: Script, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": s.input_tokens,
        "cache_creation_input_tokens": s.cache_creation_input_tokens,
        "cache_read_input_tokens": s.cache_read_input_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message_json(
    body: dict[str, Any], s: Script, blocks: list[dict[str, Any]], stop: str
) -> dict[str, Any]:
    return {
        "id": s.message_id,
        "type": "message",
        "role": "assistant",
        "model": s.model or body["model"],
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(s, s.output_tokens),
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def message_events(
    body: dict[str, Any], s: Script, blocks: list[dict[str, Any]], stop: str
) -> list[bytes]:
    """The SSE events of a streamed answer, as the real API orders them."""
    start = message_json(body, s, [], stop)
    start["stop_reason"] = None
    start["usage"] = _usage(s, 1)
    events = [sse_event("message_start", {"type": "message_start", "message": start}), PING]
    for index, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": w} for w in _words(block["text"])]
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": w} for w in _words(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            opening = {**block, "input": {}}
            args = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": p} for p in _pieces(args, 6)]
        events.append(
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        for d in deltas:
            events.append(
                sse_event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": d},
                )
            )
        events.append(
            sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
        )
        if index == 0:
            events.append(PING)
    events.append(
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": s.output_tokens},
            },
        )
    )
    events.append(sse_event("message_stop", {"type": "message_stop"}))
    return events


OVERLOADED = sse_event(
    "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)


def _send(events: list[bytes], s: Script) -> Reply:
    if s.error_at is not None:
        events = [*events[: s.error_at], OVERLOADED]
    if s.end_at is not None:
        events = events[: s.end_at]
    timed: list[bytes | float] = []
    for e in events:
        if s.pause and b"_delta" in e:
            timed.append(s.pause)
        timed.append(e)
    reply = Reply.sse(rechunk(timed, s.chunk_size), cut_after=s.cut_after)
    reply.headers = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_fake"}
    return reply


def message_stream(
    body: dict[str, Any], s: Script, blocks: list[dict[str, Any]], stop: str
) -> Reply:
    return _send(message_events(body, s, blocks, stop), s)


def complete_json(body: dict[str, Any], s: Script) -> Reply:
    return Reply.json(
        {
            "type": "completion",
            "id": "compl_fake0001",
            "completion": " " + s.text,
            "stop_reason": s.stop_reason or "stop_sequence",
            "model": s.model or body["model"],
            "stop": "\n\nHuman:",
            "log_id": "compl_fake0001",
        }
    )


def complete_stream(body: dict[str, Any], s: Script) -> Reply:
    model = s.model or body["model"]

    def event(text: str, stop: str | None) -> bytes:
        data = {"type": "completion", "id": "compl_fake0001", "completion": text}
        return sse_event("completion", {**data, "stop_reason": stop, "model": model})

    events = [event(piece, None) for piece in _pieces(" " + s.text, 5)]
    events.insert(1, PING)
    events.append(event("", s.stop_reason or "stop_sequence"))
    return _send(events, s)
