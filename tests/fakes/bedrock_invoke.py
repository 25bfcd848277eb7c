"""A fake Bedrock runtime InvokeModel for Anthropic's Claude models, as a `FakeUpstream`
handler (`tests/fakes/bedrock.py` fakes Converse, and InvokeModel for embeddings only).

`POST /model/{modelId}/invoke` and `/invoke-with-response-stream` take Anthropic's
Messages body as Bedrock wants it: `anthropic_version: "bedrock-2023-05-31"` in the body,
no `model` (it is in the path) and no `stream` (the operation says it); anything else
is a 400 ValidationException. The request must be SigV4-signed like every Bedrock call
(checked by `FakeBedrock.check_signature`). Answers are built by the Anthropic fake
(`tests/fakes/anthropic.py`), in Bedrock's envelope:

- InvokeModel: the Messages JSON, with the token counts in
  `X-Amzn-Bedrock-Input-Token-Count` / `-Output-Token-Count` (and the cache's
  `-Cache-Read-Input-Token-Count` / `-Cache-Write-Input-Token-Count`) and
  `X-Amzn-Bedrock-Invocation-Latency` headers.
- InvokeModelWithResponseStream: an `application/vnd.amazon.eventstream` body of `chunk`
  events, each `{"bytes": base64(one Messages stream event as JSON)}`; the last one
  (`message_stop`) carries `amazon-bedrock-invocationMetrics` (the token counts and
  latencies), cut at awkward byte boundaries.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from providers.eventstream import encode_event
from tests.fakes import anthropic as fake_anthropic
from tests.fakes.bedrock import FakeBedrock, Invalid, aws_error, split_awkwardly
from tests.fakes.upstream import Received, Reply

BEDROCK_VERSION = "bedrock-2023-05-31"
_PATH = re.compile(r"/model/(?P<model>[^/?]+)/(?P<op>invoke|invoke-with-response-stream)")
#: Bedrock's name of a Claude model id -> the model name its answers carry
_MODEL_NAME = re.compile(
    r"^(?:[a-z]{2}\.)?anthropic\.(?P<name>claude-[a-z0-9.-]+?)(?:-v\d+)?(?::\d+)?$"
)


@dataclass
class FakeBedrockInvoke:
    """The handler: `upstream.reply(FakeBedrockInvoke())`."""

    script: fake_anthropic.Script = field(default_factory=fake_anthropic.Script)
    #: checks the SigV4 signature (its credentials and region)
    signer: FakeBedrock = field(default_factory=FakeBedrock)
    latency_ms: int = 412
    #: (operation, model id, body) of each accepted request
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, req: Received) -> Reply:
        try:
            self.signer.check_signature(req)
            m = _PATH.fullmatch(req.path)
            if m is None:
                raise Invalid(404, "UnknownOperationException", "Unknown operation")
            model_id = unquote(m["model"])
            name = _MODEL_NAME.match(model_id)
            if name is None:
                raise Invalid(
                    400,
                    "ValidationException",
                    f"The provided model identifier is invalid: {model_id}",
                )
            try:
                body = json.loads(req.body)
            except ValueError:
                raise Invalid(400, "ValidationException", "Malformed input request") from None
            if not isinstance(body, dict) or body.get("anthropic_version") != BEDROCK_VERSION:
                raise Invalid(
                    400,
                    "ValidationException",
                    "Malformed input request: #: required key [anthropic_version] not found",
                )
            for extra in ("model", "stream"):
                if extra in body:
                    raise Invalid(
                        400,
                        "ValidationException",
                        f"Malformed input request: #: extraneous key [{extra}] is not permitted",
                    )
            as_messages = {k: v for k, v in body.items() if k != "anthropic_version"}
            problem = fake_anthropic.check_messages({**as_messages, "model": name["name"]})
            if problem:
                raise Invalid(400, "ValidationException", problem)
        except Invalid as e:
            return aws_error(e.status, e.kind, e.message)
        self.calls.append((m["op"], model_id, body))
        request = {**as_messages, "model": name["name"]}
        blocks, stop = fake_anthropic.answer_blocks(request, self.script)
        if m["op"] == "invoke":
            answer = fake_anthropic.message_json(request, self.script, blocks, stop)
            return Reply.json(answer, headers=self.count_headers())
        return self.stream(request, blocks, stop)

    def count_headers(self) -> dict[str, str]:
        s = self.script
        return {
            "x-amzn-requestid": "0d1c3e29-0000-4000-8000-llmitminvoke",
            "x-amzn-bedrock-invocation-latency": str(self.latency_ms),
            "x-amzn-bedrock-input-token-count": str(s.input_tokens),
            "x-amzn-bedrock-output-token-count": str(s.output_tokens),
            "x-amzn-bedrock-cache-read-input-token-count": str(s.cache_read_input_tokens),
            "x-amzn-bedrock-cache-write-input-token-count": str(s.cache_creation_input_tokens),
        }

    def stream(self, request: dict[str, Any], blocks: list[dict[str, Any]], stop: str) -> Reply:
        s = self.script
        events = []
        for raw in fake_anthropic.message_events(request, s, blocks, stop):
            data = next(line[6:] for line in raw.decode().splitlines() if line.startswith("data: "))
            event = json.loads(data)
            if event["type"] == "ping":
                continue  # Bedrock does not relay Anthropic's pings
            if event["type"] == "message_stop":
                event["amazon-bedrock-invocationMetrics"] = {
                    "inputTokenCount": s.input_tokens,
                    "outputTokenCount": s.output_tokens,
                    "cacheReadInputTokenCount": s.cache_read_input_tokens,
                    "cacheWriteInputTokenCount": s.cache_creation_input_tokens,
                    "invocationLatency": self.latency_ms,
                    "firstByteLatency": self.latency_ms // 3,
                }
            payload = base64.b64encode(json.dumps(event).encode()).decode()
            events.append(encode_event("chunk", {"bytes": payload, "p": "abcdefgh"}))
        chunks: list[bytes | float] = []
        for message in events:
            if s.pause:
                chunks.append(s.pause)
            chunks += split_awkwardly(message)
        return Reply(
            200,
            {
                "content-type": "application/vnd.amazon.eventstream",
                "x-amzn-requestid": "0d1c3e29-0000-4000-8000-llmitmstream",
                "x-amzn-bedrock-content-type": "application/json",
            },
            chunks=chunks,
        )
