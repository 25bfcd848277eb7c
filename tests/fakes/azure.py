"""A fake Azure OpenAI resource, as a handler for `FakeUpstream`.

It checks what Azure checks: the path `/openai/deployments/{deployment}/{operation}` of a
known deployment, an `api-version` query parameter, the `api-key` header (or an
`Authorization: Bearer` token), and the body, with the fields an older api-version does
not know rejected as Azure does (`stream_options` before 2024-09-01, `tools` before
2023-12-01-preview: 400 "Unrecognized request argument supplied: ..."). It answers in
Azure's shapes: `prompt_filter_results` and `content_filter_results` on answers, a first
stream chunk with `choices: []` and the prompt's filter results, a usage chunk only when
asked, a prompt rejected by the content filter (400, code `content_filter`, with
`innererror`), an answer cut by the filter (`finish_reason: "content_filter"`), 429s with
or without `retry-after`, and errors with Azure's string codes and null types.
Embeddings come back as floats unless the api-version honours `encoding_format: base64`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.openai_like import (
    EMBEDDING_FIELDS,
    Dialect,
    Script,
    chat_chunks,
    chat_json,
    check_request,
    completion_chunks,
    completion_json,
    embeddings_json,
    stream_reply,
)
from tests.fakes.upstream import Handler, Received, Reply

PATH = re.compile(
    r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<op>chat/completions|completions|embeddings)$"
)
VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2})(-preview)?$")
KINDS = {"chat/completions": "chat", "completions": "completions", "embeddings": "embeddings"}

#: deployment -> the model it serves
DEPLOYMENTS = {
    "gpt-4o-prod": "gpt-4o-2024-11-20",
    "instruct": "gpt-35-turbo-instruct",
    "embed-small": "text-embedding-3-small",
}

SAFE = {"filtered": False, "severity": "safe"}
CATEGORIES = ("hate", "self_harm", "sexual", "violence")
FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content "
    "management policy. Please modify your prompt and retry. To learn more about our "
    "content filtering policies please read our documentation: "
    "https://go.microsoft.com/fwlink/?linkid=2198766"
)


@dataclass
class AzureScript(Script):
    """What the fake answers; on top of `Script`:"""

    # a prompt containing this word is rejected by the content filter (400)
    blocked_word: str = "forbidden-topic"
    # the answer is cut by the output filter (finish_reason content_filter)
    filter_answer: bool = False
    # 429 answers: whether they carry a retry-after header
    retry_after_header: bool = True
    # the deployments the resource has
    deployments: dict[str, str] = field(default_factory=lambda: dict(DEPLOYMENTS))


def azure_error(status: int, message: str, code: Any = None, **extra: Any) -> Reply:
    body = {
        "error": {"code": code if code is not None else str(status), "message": message, **extra}
    }
    return Reply.json(body, status, {"apim-request-id": "fake-apim-0001"})


def unrecognized(name: str) -> Reply:
    body = {
        "error": {
            "message": f"Unrecognized request argument supplied: {name}",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    return Reply.json(body, 400)


def prompt_filter_results() -> list[dict[str, Any]]:
    results: dict[str, Any] = {c: dict(SAFE) for c in CATEGORIES}
    results["jailbreak"] = {"filtered": False, "detected": False}
    return [{"prompt_index": 0, "content_filter_results": results}]


def choice_filter_results(filtered: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {c: dict(SAFE) for c in CATEGORIES}
    if filtered:
        results["violence"] = {"filtered": True, "severity": "medium"}
    return results


def _prompt_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return json.dumps(body["prompt"])
    return json.dumps(body.get("messages"))


def azure_api(api_key: str, script: AzureScript | None = None) -> Handler:
    s = script or AzureScript()
    dialect = Dialect(
        "azure",
        api_key,
        {},
        extra_fields=frozenset({"data_sources", "enhancements", "input_type"}),
    )

    def handle(req: Received) -> Reply:
        parts = urlsplit(req.path)
        m = PATH.match(parts.path)
        if req.method != "POST" or m is None:
            return azure_error(404, "Resource not found")
        version = dict(parse_qsl(parts.query)).get("api-version")
        vm = VERSION.match(version or "")
        if vm is None:
            return azure_error(404, "Resource not found")
        date = vm.group(1)
        bearer = req.headers.get("authorization", "")
        if req.headers.get("api-key") != api_key and bearer != f"Bearer {api_key}":
            return azure_error(
                401,
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        deployment = m.group("deployment")
        if deployment not in s.deployments:
            return azure_error(
                404,
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
                "DeploymentNotFound",
            )
        try:
            body = json.loads(req.body)
        except ValueError:
            return azure_error(400, "Invalid JSON body", "BadRequest")
        if not isinstance(body, dict):
            return azure_error(400, "The request body must be an object", "BadRequest")
        kind = KINDS[m.group("op")]
        if kind == "embeddings":
            for name in body:
                if name not in EMBEDDING_FIELDS | {"input_type"}:
                    return unrecognized(name)
        if "stream_options" in body and date < "2024-09-01":
            return unrecognized("stream_options")
        for name in ("tools", "tool_choice"):
            if name in body and date < "2023-12-01":
                return unrecognized(name)
        body.setdefault("model", s.deployments[deployment])  # Azure needs none
        problem = check_request(dialect, kind, body)
        if problem:
            if problem.startswith("Unrecognized request argument supplied: "):
                return unrecognized(problem.rsplit(": ", 1)[1])
            return Reply.json(
                {
                    "error": {
                        "message": problem,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                400,
            )
        if s.fail is not None:
            status, message = s.fail
            reply = azure_error(status, message)
            if status == 429 and s.retry_after_header:
                seconds = re.search(r"retry after (\d+)", message)
                reply.headers["retry-after"] = seconds.group(1) if seconds else "1"
            reply.headers.update(s.fail_headers)
            return reply
        if kind != "embeddings" and s.blocked_word in _prompt_text(body):
            result = choice_filter_results()
            result["violence"] = {"filtered": True, "severity": "high"}
            result["jailbreak"] = {"filtered": True, "detected": True}
            return Reply.json(
                {
                    "error": {
                        "message": FILTER_MESSAGE,
                        "type": None,
                        "param": "prompt",
                        "code": "content_filter",
                        "status": 400,
                        "innererror": {
                            "code": "ResponsibleAIPolicyViolation",
                            "content_filter_result": result,
                        },
                    }
                },
                400,
            )
        # Azure answers with the deployed model's name, whatever the body said
        model = s.model or s.deployments[deployment]
        if kind == "embeddings":
            honours_base64 = date >= "2024-02-01"
            d = Dialect("azure", api_key, {}, base64=honours_base64)
            return Reply.json(embeddings_json(d, {**body, "model": model}, s))
        script = s
        body = {**body, "model": model}
        if kind == "completions":
            if body.get("stream"):
                return stream_reply(
                    dialect, body, script, completion_chunks(dialect, body, script), _decorate(s)
                )
            out = completion_json(dialect, body, script)
            out["prompt_filter_results"] = prompt_filter_results()
            out["choices"][0]["content_filter_results"] = choice_filter_results()
            return Reply.json(out)
        if body.get("stream"):
            return stream_reply(
                dialect, body, script, chat_chunks(dialect, body, script), _decorate(s)
            )
        out = chat_json(dialect, body, script)
        out["prompt_filter_results"] = prompt_filter_results()
        choice = out["choices"][0]
        choice["content_filter_results"] = choice_filter_results(s.filter_answer)
        if s.filter_answer:
            choice["finish_reason"] = "content_filter"
        return Reply.json(out)

    return handle


def _decorate(s: AzureScript):
    """Azure's stream: a first chunk with the prompt's filter results and no choices,
    filter results on every content chunk (and the filter's verdict at the end)."""

    def decorate(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        first = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": prompt_filter_results(),
        }
        out = [first]
        for c in chunks:
            for choice in c.get("choices") or ():
                finish = choice.get("finish_reason")
                if s.filter_answer and finish:
                    choice["finish_reason"] = "content_filter"
                choice["content_filter_results"] = (
                    {}
                    if choice.get("delta", {}).get("role")
                    else choice_filter_results(bool(s.filter_answer and finish))
                )
            out.append(c)
        return out

    return decorate
