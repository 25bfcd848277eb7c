"""A fake AWS Bedrock runtime (Converse and ConverseStream) as a FakeUpstream handler.

It behaves like the real service where the gateway could get it wrong:

- **SigV4**: the `Authorization` header must be well-formed, name a known access key,
  the `bedrock` service and the expected region, and carry a signature that botocore,
  recomputing it from the method, path, query, signed headers and body the fake
  received, agrees with (the host is the fake's own `127.0.0.1:port`, as the gateway
  must sign for the host it sends to). A session token must be sent and signed when the
  credentials have one. Failures get AWS's 403 answers with `x-amzn-errortype`.
- **Converse bodies** are validated as Bedrock does: only Converse fields (no `model`,
  no OpenAI fields), a non-empty conversation that starts with a user turn and
  alternates roles, well-formed content blocks (non-blank text, inline images with a
  format and valid base64, tool use and tool results whose ids match the previous
  assistant turn, reasoning blocks), a toolConfig whenever tool blocks are present, a
  toolChoice naming a declared tool. Failures are 400 ValidationException.
- **Answers**: Converse JSON, or a ConverseStream `application/vnd.amazon.eventstream`
  body built with providers.eventstream and sent in chunks cut at awkward places. The
  model calls every declared tool (up to `parallel_tools`) while the conversation has
  no tool results yet, then answers with text naming the results; otherwise it echoes
  the last user text. Options inject an HTTP error, an exception message mid-stream, a
  corrupt CRC, reasoning with a signature, and cache token counts.

Every request that passed the signature check is kept in `calls` with what was found
(operation, model id, body, access key, signed headers).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from providers.eventstream import encode_event, encode_exception
from tests.fakes.upstream import Received, Reply

ACCESS_KEY = "AKIDLLMITMTESTKEY01"
SECRET_KEY = "llmitm/test+secret/KEY0123456789abcdefghij"
SESSION_ACCESS_KEY = "ASIALLMITMTESTKEY02"
SESSION_SECRET_KEY = "llmitm/session+secret/0123456789abcdefghij"
SESSION_TOKEN = "FwoGZXIvYXdzELLMITM//session-token+with/odd=chars"
REGION = "us-east-1"

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s]+)/(?P<date>\d{8})/(?P<region>[^/\s]+)/"
    r"(?P<service>[^/\s]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_PATH = re.compile(r"/model/(?P<model>[^/?]+)/(?P<op>converse|converse-stream|invoke)(?:\?.*)?")
_FIELDS = {
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "performanceConfig",
    "requestMetadata",
    "promptVariables",
}
_BLOCKS = {
    "text",
    "image",
    "document",
    "toolUse",
    "toolResult",
    "reasoningContent",
    "cachePoint",
    "guardContent",
}
_INFERENCE = {"maxTokens": int, "temperature": (int, float), "topP": (int, float)}


class Invalid(Exception):
    """A Bedrock error answer (status, AWS error type, message)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def aws_error(status: int, kind: str, message: str) -> Reply:
    """An error answer exactly as Bedrock sends it."""
    return Reply.json(
        {"message": message},
        status,
        {
            "x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "x-amzn-requestid": "7f0c7e7e-0000-4000-8000-llmitmtest",
        },
    )


def split_awkwardly(data: bytes, sizes: tuple[int, ...] = (1, 3, 7, 13, 29)) -> list[bytes]:
    """`data` cut into pieces of cycling odd sizes (preludes, headers and CRCs split)."""
    out: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


@dataclass
class Call:
    op: str
    model: str
    body: dict[str, Any]
    access_key: str
    signed_headers: list[str]
    headers: dict[str, str]


@dataclass
class FakeBedrock:
    """The handler: `upstream.reply(FakeBedrock(...))`. Attributes can be changed per test."""

    credentials: dict[str, tuple[str, str | None]] = field(
        default_factory=lambda: {
            ACCESS_KEY: (SECRET_KEY, None),
            SESSION_ACCESS_KEY: (SESSION_SECRET_KEY, SESSION_TOKEN),
        }
    )
    region: str = REGION
    # the answer: None echoes the last user text
    text: str | None = None
    # (inputTokens, outputTokens, cacheReadInputTokens, cacheWriteInputTokens)
    usage: tuple[int, int, int, int] = (21, 7, 0, 0)
    # tool inputs by tool name (default: built from the tool's schema)
    tool_inputs: dict[str, Any] = field(default_factory=dict)
    parallel_tools: int = 2
    reasoning: tuple[str, str] | None = None  # (text, signature) sent before the answer
    stop_reason: str | None = None  # overrides the natural one
    # a whole-request error: (status, AWS error type, message)
    error: tuple[int, str, str] | None = None
    # an exception message sent mid-stream: (exception type, message), after N events
    stream_exception: tuple[str, str] | None = None
    exception_after: int = 3
    # corrupt the CRC of the stream's Nth message (0-based)
    corrupt_message: int | None = None
    # how the stream body is cut; pauses (s) are put between messages when set
    chunk_sizes: tuple[int, ...] = (1, 3, 7, 13, 29)
    pause: float = 0.0
    calls: list[Call] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)

    # -------------------------------------------------------------------- handler

    def __call__(self, req: Received) -> Reply:
        try:
            key = self.check_signature(req)
            m = _PATH.fullmatch(req.path)
            if m is None:
                raise Invalid(404, "UnknownOperationException", "Unknown operation")
            try:
                body = json.loads(req.body)
            except ValueError:
                raise Invalid(
                    400, "SerializationException", "Unable to parse the request body"
                ) from None
            call = Call(
                m["op"],
                unquote(m["model"]),
                body,
                key,
                _AUTH.search(req.headers["authorization"])["signed"].split(";"),  # type: ignore[index]
                dict(req.headers),
            )
            self.calls.append(call)
            if call.op == "invoke":
                validate_embedding(call.model, body)
            else:
                validate(body)
        except Invalid as e:
            self.rejected.append((e.status, e.kind, e.message))
            return aws_error(e.status, e.kind, e.message)
        if self.error is not None:
            return aws_error(*self.error)
        if call.op == "invoke":
            return self.embed(call.model, body)
        answer = self.answer(body)
        if call.op == "converse":
            return Reply.json(answer)
        return self.stream(answer)

    def last(self) -> Call:
        assert self.calls, "the fake Bedrock got no signed request"
        return self.calls[-1]

    # -------------------------------------------------------------------- SigV4

    def check_signature(self, req: Received) -> str:
        auth = req.headers.get("authorization")
        if not auth:
            raise Invalid(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        m = _AUTH.fullmatch(auth.strip())
        if m is None:
            raise Invalid(
                403,
                "IncompleteSignatureException",
                f"Authorization header requires 'Credential', 'SignedHeaders' and "
                f"'Signature' parameters. Authorization={auth[:40]}",
            )
        known = self.credentials.get(m["key"])
        if known is None:
            raise Invalid(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        secret, token = known
        if m["service"] != "bedrock" or m["region"] != self.region:
            raise Invalid(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region and service "
                f"({m['region']}/{m['service']}), expected {self.region}/bedrock.",
            )
        signed = m["signed"].split(";")
        amz_date = req.headers.get("x-amz-date", "")
        for needed in ("host", "x-amz-date"):
            if needed not in signed:
                raise Invalid(
                    403, "InvalidSignatureException", f"'{needed}' must be a signed header."
                )
        missing = [h for h in signed if h not in req.headers]
        if missing:
            raise Invalid(403, "InvalidSignatureException", f"Signed headers missing: {missing}")
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.UTC
            )
        except ValueError:
            raise Invalid(403, "IncompleteSignatureException", "Bad X-Amz-Date") from None
        if abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) > 300:
            raise Invalid(403, "InvalidSignatureException", "Signature expired")
        if amz_date[:8] != m["date"]:
            raise Invalid(403, "InvalidSignatureException", "Credential date mismatch")
        sent_token = req.headers.get("x-amz-security-token")
        if token is not None:
            if sent_token != token:
                raise Invalid(
                    403,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                )
            if "x-amz-security-token" not in signed:
                raise Invalid(
                    403, "InvalidSignatureException", "x-amz-security-token must be signed"
                )
        digest = req.headers.get("x-amz-content-sha256")
        if digest is not None and digest != hashlib.sha256(req.body).hexdigest():
            raise Invalid(
                400,
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        if sign(req, signed, m["key"], secret, self.region, amz_date) != m["signature"]:
            raise Invalid(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
        return m["key"]

    # -------------------------------------------------------------------- answers

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The Converse answer this fake model gives to `body`."""
        content: list[dict[str, Any]] = []
        if self.reasoning is not None:
            text, signature = self.reasoning
            content.append(
                {"reasoningContent": {"reasoningText": {"text": text, "signature": signature}}}
            )
        last = body["messages"][-1]
        results = [b["toolResult"] for b in last["content"] if "toolResult" in b]
        tools = [
            t["toolSpec"]
            for t in (body.get("toolConfig") or {}).get("tools", [])
            if "toolSpec" in t
        ]
        choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
        if "tool" in choice:
            tools = [t for t in tools if t["name"] == choice["tool"]["name"]]
        stop = "end_turn"
        if tools and not results:
            for i, tool in enumerate(tools[: self.parallel_tools]):
                content.append(
                    {
                        "toolUse": {
                            "toolUseId": f"tooluse_{i}_{tool['name']}",
                            "name": tool["name"],
                            "input": self.tool_inputs.get(tool["name"])
                            or sample_input(tool["inputSchema"]["json"]),
                        }
                    }
                )
            stop = "tool_use"
        else:
            if self.text is not None:
                text = self.text
            elif results:
                text = "Tool results: " + json.dumps(
                    {r["toolUseId"]: r["content"] for r in results}, sort_keys=True
                )
            else:
                texts = [b["text"] for b in last["content"] if "text" in b]
                text = "You said: " + " ".join(texts)
            content.append({"text": text})
        fresh, output, read, write = self.usage
        usage = {
            "inputTokens": fresh,
            "outputTokens": output,
            "totalTokens": fresh + output + read + write,
        }
        if read or write:
            usage["cacheReadInputTokens"] = read
            usage["cacheWriteInputTokens"] = write
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.stop_reason or stop,
            "usage": usage,
            "metrics": {"latencyMs": 123},
        }

    def embed(self, model: str, body: dict[str, Any]) -> Reply:
        """Titan's or Cohere's InvokeModel answer: one small vector per text."""
        texts = [body["inputText"]] if "inputText" in body else body["texts"]
        vectors = [embedding_of(t) for t in texts]
        tokens = sum(len(t.split()) for t in texts)
        if model.startswith("amazon.titan"):
            return Reply.json({"embedding": vectors[0], "inputTextTokenCount": tokens})
        return Reply.json(
            {
                "embeddings": vectors,
                "id": "emb-1",
                "response_type": "embeddings_floats",
                "texts": texts,
            },
            headers={"X-Amzn-Bedrock-Input-Token-Count": str(tokens)},
        )

    def events(self, answer: dict[str, Any]) -> list[bytes]:
        """The ConverseStream messages of `answer`, as Bedrock streams them."""
        out = [encode_event("messageStart", {"role": "assistant"})]
        for index, block in enumerate(answer["output"]["message"]["content"]):
            if "text" in block:
                words = re.findall(r"\S+\s*|\s+", block["text"]) or [""]
                for w in words:
                    out.append(
                        encode_event(
                            "contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": w}}
                        )
                    )
            elif "toolUse" in block:
                use = block["toolUse"]
                out.append(
                    encode_event(
                        "contentBlockStart",
                        {
                            "contentBlockIndex": index,
                            "start": {
                                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}
                            },
                        },
                    )
                )
                raw = json.dumps(use["input"])
                third = max(1, len(raw) // 3)
                for piece in (raw[:third], raw[third : 2 * third], raw[2 * third :]):
                    if piece:
                        out.append(
                            encode_event(
                                "contentBlockDelta",
                                {
                                    "contentBlockIndex": index,
                                    "delta": {"toolUse": {"input": piece}},
                                },
                            )
                        )
            elif "reasoningContent" in block:
                rt = block["reasoningContent"]["reasoningText"]
                half = len(rt["text"]) // 2
                for piece in (rt["text"][:half], rt["text"][half:]):
                    out.append(
                        encode_event(
                            "contentBlockDelta",
                            {
                                "contentBlockIndex": index,
                                "delta": {"reasoningContent": {"text": piece}},
                            },
                        )
                    )
                out.append(
                    encode_event(
                        "contentBlockDelta",
                        {
                            "contentBlockIndex": index,
                            "delta": {"reasoningContent": {"signature": rt["signature"]}},
                        },
                    )
                )
            out.append(encode_event("contentBlockStop", {"contentBlockIndex": index}))
        out.append(encode_event("messageStop", {"stopReason": answer["stopReason"]}))
        out.append(
            encode_event("metadata", {"usage": answer["usage"], "metrics": answer["metrics"]})
        )
        if self.stream_exception is not None:
            kind, message = self.stream_exception
            out = [*out[: self.exception_after], encode_exception(kind, message)]
        if self.corrupt_message is not None:
            bad = bytearray(out[self.corrupt_message])
            bad[-1] ^= 0xFF
            out[self.corrupt_message] = bytes(bad)
        return out

    def stream(self, answer: dict[str, Any]) -> Reply:
        chunks: list[bytes | float] = []
        if self.pause:
            for message in self.events(answer):
                chunks.append(self.pause)
                chunks += split_awkwardly(message, self.chunk_sizes)
        else:
            chunks += split_awkwardly(b"".join(self.events(answer)), self.chunk_sizes)
        return Reply(
            200,
            {
                "content-type": "application/vnd.amazon.eventstream",
                "x-amzn-requestid": "7f0c7e7e-0000-4000-8000-llmitmtest",
            },
            chunks=chunks,
        )


def sign(
    req: Received, signed: list[str], key: str, secret: str, region: str, amz_date: str
) -> str:
    """The SigV4 signature of `req` as received, computed by botocore."""
    host = req.headers["host"]
    request = AWSRequest(
        method=req.method,
        url=f"http://{host}{req.path}",
        headers={h: req.headers[h] for h in signed},
        data=req.body,
    )
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(key, secret), "bedrock", region)
    canonical = auth.canonical_request(request)
    return auth.signature(auth.string_to_sign(request, canonical), request)


def embedding_of(text: str) -> list[float]:
    """A deterministic small vector (exact in float32) for a text."""
    return [len(text) / 4, -0.5, (sum(map(ord, text)) % 64) / 8]


def validate_embedding(model: str, body: Any) -> None:
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    if model.startswith("amazon.titan-embed"):
        allowed = {"inputText", "dimensions", "normalize", "embeddingTypes"}
        if not isinstance(body.get("inputText"), str) or not body["inputText"]:
            raise _invalid("Malformed input request: required key [inputText] not found")
    elif model.startswith("cohere.embed"):
        allowed = {
            "texts",
            "input_type",
            "truncate",
            "embedding_types",
            "output_dimension",
            "images",
        }
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _invalid("Malformed input request: texts must be a list of strings")
        if body.get("input_type") not in (
            "search_document",
            "search_query",
            "classification",
            "clustering",
        ):
            raise _invalid("Malformed input request: input_type is required")
    else:
        raise _invalid(f"The provided model {model} does not support embeddings")
    extra = set(body) - allowed
    if extra:
        raise _invalid(
            f"Malformed input request: extraneous key [{sorted(extra)[0]}] is not permitted"
        )


def sample_input(schema: Any) -> Any:
    """A value that satisfies a (simple) JSON schema, for the fake model's tool calls."""
    if not isinstance(schema, dict):
        return {}
    kind = schema.get("type", "object")
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: sample_input(sub) for name, sub in props.items()}
    if kind == "array":
        return [sample_input(schema.get("items") or {"type": "string"})]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return "Paris"


# ------------------------------------------------------------------------ validation


def _invalid(message: str) -> Invalid:
    return Invalid(400, "ValidationException", message)


def validate(body: Any) -> None:
    """Reject a Converse body the way Bedrock does (ValidationException)."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    for key in body:
        if key not in _FIELDS:
            raise _invalid(f"extraneous key [{key}] is not permitted")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("A conversation must start with a user message. Try again.")
    uses: set[str] = set()
    previous_uses: set[str] = set()
    has_tool_blocks = False
    for i, m in enumerate(messages):
        at = f"messages.{i}"
        if not isinstance(m, dict) or set(m) - {"role", "content"}:
            raise _invalid(f"{at}: a message has exactly a role and content")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise _invalid(f"{at}.role: must be user or assistant")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            if i == 0:
                raise _invalid("A conversation must start with a user message. Try again.")
            raise _invalid(
                "A conversation must alternate between user and assistant roles. "
                "Make sure the conversation alternates between user and assistant roles and try again."
            )
        content = m.get("content")
        if not isinstance(content, list) or not content:
            raise _invalid(f"{at}.content: The content field in the Message object is empty.")
        uses = set()
        for j, block in enumerate(content):
            kind = _block(block, f"{at}.content.{j}", role)
            if kind == "toolUse":
                uses.add(block["toolUse"]["toolUseId"])
                has_tool_blocks = True
            elif kind == "toolResult":
                has_tool_blocks = True
                if block["toolResult"]["toolUseId"] not in previous_uses:
                    raise _invalid(
                        f"{at}.content.{j}: the toolResult's toolUseId does not match a "
                        "toolUse of the previous assistant turn"
                    )
        previous_uses = uses if role == "assistant" else set()
    for j, block in enumerate(body.get("system") or []):
        if (
            not isinstance(block, dict)
            or len(block) != 1
            or next(iter(block))
            not in (
                "text",
                "cachePoint",
                "guardContent",
            )
        ):
            raise _invalid(f"system.{j}: a system block is text, cachePoint or guardContent")
        if "text" in block and (not isinstance(block["text"], str) or not block["text"].strip()):
            raise _invalid(f"system.{j}.text: The text field in the SystemContentBlock is blank.")
    inference = body.get("inferenceConfig")
    if inference is not None:
        if not isinstance(inference, dict):
            raise _invalid("inferenceConfig must be an object")
        for key, value in inference.items():
            if key == "stopSequences":
                if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                    raise _invalid("inferenceConfig.stopSequences must be strings")
            elif (
                key not in _INFERENCE
                or isinstance(value, bool)
                or not isinstance(value, _INFERENCE[key])
            ):
                raise _invalid(f"extraneous or invalid key [inferenceConfig.{key}]")
    tool_config = body.get("toolConfig")
    if tool_config is None:
        if has_tool_blocks:
            raise _invalid(
                "The toolConfig field must be defined when using toolUse and toolResult "
                "content blocks."
            )
        return
    tools = tool_config.get("tools") if isinstance(tool_config, dict) else None
    if not isinstance(tools, list) or not tools:
        raise _invalid("toolConfig.tools must be a non-empty list")
    names = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict) or len(tool) != 1:
            raise _invalid(f"toolConfig.tools.{j}: one of toolSpec or cachePoint")
        if "cachePoint" in tool:
            continue
        spec = tool.get("toolSpec")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _invalid(f"toolConfig.tools.{j}.toolSpec needs a name")
        if set(spec) - {"name", "description", "inputSchema"}:
            raise _invalid(f"toolConfig.tools.{j}.toolSpec has extraneous keys")
        schema = spec.get("inputSchema")
        if not isinstance(schema, dict) or not isinstance(schema.get("json"), dict):
            raise _invalid(f"toolConfig.tools.{j}.toolSpec.inputSchema.json must be an object")
        if "description" in spec and not (
            isinstance(spec["description"], str) and spec["description"]
        ):
            raise _invalid(f"toolConfig.tools.{j}.toolSpec.description must not be empty")
        names.append(spec["name"])
    choice = tool_config.get("toolChoice")
    if choice is not None:
        if not isinstance(choice, dict) or len(choice) != 1:
            raise _invalid("toolConfig.toolChoice: exactly one of auto, any, tool")
        ((kind, value),) = choice.items()
        if kind in ("auto", "any"):
            if value != {}:
                raise _invalid(f"toolConfig.toolChoice.{kind} must be an empty object")
        elif kind == "tool":
            if not isinstance(value, dict) or value.get("name") not in names:
                raise _invalid("toolConfig.toolChoice.tool.name must name a declared tool")
        else:
            raise _invalid(f"toolConfig.toolChoice: unknown choice {kind!r}")


def _b64(value: Any, at: str) -> None:
    if not isinstance(value, str) or not value:
        raise _invalid(f"{at}: bytes must be base64 text")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{at}: Invalid base64 bytes") from None


def _block(block: Any, at: str, role: str) -> str:
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in _BLOCKS:
        raise _invalid(f"{at}: a content block has exactly one of {sorted(_BLOCKS)}")
    kind, value = next(iter(block.items()))
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise _invalid(f"{at}: The text field in the ContentBlock object is blank.")
    elif kind == "image":
        if not isinstance(value, dict) or value.get("format") not in ("png", "jpeg", "gif", "webp"):
            raise _invalid(f"{at}.image.format must be png, jpeg, gif or webp")
        source = value.get("source")
        if not isinstance(source, dict) or len(source) != 1:
            raise _invalid(f"{at}.image.source: one of bytes, s3Location")
        if "bytes" in source:
            _b64(source["bytes"], f"{at}.image.source.bytes")
        elif "s3Location" not in source:
            raise _invalid(f"{at}.image.source: one of bytes, s3Location")
    elif kind == "document":
        if not isinstance(value, dict) or not value.get("name") or not value.get("format"):
            raise _invalid(f"{at}.document needs a format and a name")
        _b64((value.get("source") or {}).get("bytes"), f"{at}.document.source.bytes")
    elif kind == "toolUse":
        if role != "assistant":
            raise _invalid(f"{at}: toolUse blocks are only allowed in assistant turns")
        if not isinstance(value, dict) or set(value) != {"toolUseId", "name", "input"}:
            raise _invalid(f"{at}.toolUse needs exactly toolUseId, name and input")
    elif kind == "toolResult":
        if role != "user":
            raise _invalid(f"{at}: toolResult blocks are only allowed in user turns")
        if not isinstance(value, dict) or not isinstance(value.get("toolUseId"), str):
            raise _invalid(f"{at}.toolResult needs a toolUseId")
        if set(value) - {"toolUseId", "content", "status"}:
            raise _invalid(f"{at}.toolResult has extraneous keys")
        if value.get("status") not in (None, "success", "error"):
            raise _invalid(f"{at}.toolResult.status must be success or error")
        result = value.get("content")
        if not isinstance(result, list) or not result:
            raise _invalid(f"{at}.toolResult.content must be a non-empty list")
        for k, item in enumerate(result):
            if (
                not isinstance(item, dict)
                or len(item) != 1
                or next(iter(item))
                not in (
                    "json",
                    "text",
                    "image",
                    "document",
                )
            ):
                raise _invalid(f"{at}.toolResult.content.{k}: one of json, text, image, document")
    elif kind == "reasoningContent":
        if role != "assistant":
            raise _invalid(f"{at}: reasoningContent is only allowed in assistant turns")
        if not isinstance(value, dict) or len(value) != 1:
            raise _invalid(f"{at}.reasoningContent: one of reasoningText, redactedContent")
        if "reasoningText" in value:
            rt = value["reasoningText"]
            if not isinstance(rt, dict) or not isinstance(rt.get("text"), str):
                raise _invalid(f"{at}.reasoningContent.reasoningText needs text")
            if set(rt) - {"text", "signature"}:
                raise _invalid(f"{at}.reasoningContent.reasoningText has extraneous keys")
        else:
            _b64(value.get("redactedContent"), f"{at}.reasoningContent.redactedContent")
    return kind
