"""A fake Gemini API (Google AI Studio and Vertex AI) and Google OAuth token endpoint.

`FakeGemini` is a `FakeUpstream` handler (`upstream.reply(fake_gemini)`) that behaves
like the real services where the gateway could get them wrong:

- AI Studio (`/v1beta/models/{model}:{op}`) wants the API key in `x-goog-api-key` or
  the `key` query parameter: none is 403 PERMISSION_DENIED, a wrong one 400
  INVALID_ARGUMENT (API_KEY_INVALID), as Google answers.
- Vertex (`/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{op}`)
  wants `Authorization: Bearer <token>` with a token this fake's `/token` endpoint
  issued (401 UNAUTHENTICATED otherwise), for the service account's project.
- `POST /token` is Google's OAuth token endpoint for service accounts: a JWT-bearer
  grant whose RS256 signature is checked with the service account's public key and whose
  claims are checked (iss the account's email, aud the token_uri or Google's token
  endpoint, which google-auth always signs for, scope with cloud-platform, exp in the
  future); it counts its requests.
- Request bodies are validated like Google does (unknown fields, roles other than
  user/model, empty parts, OpenAI-only schema keywords, unanswered or misnamed function
  results, function calls replayed without the thought signature they were issued
  with): 400 INVALID_ARGUMENT naming the problem.
- Answers: JSON for generateContent, SSE for `streamGenerateContent?alt=sse`, Google's
  pretty-printed JSON-array stream (cut in small pieces) without `alt=sse`; a
  functionCall (one per declared function, at most two, the first carrying a
  thoughtSignature) when tools are given and the last turn is the user's text; a text
  answer otherwise (with a thought part when `includeThoughts`); usageMetadata with
  running totals on every streamed event.

The last user text can ask for failures: `trigger:quota` (429 RESOURCE_EXHAUSTED),
`trigger:block` (prompt blocked, no candidates), `trigger:safety` (candidate stopped by
SAFETY), `trigger:array-error` (a 400 wrapped in a JSON array, as Vertex sometimes does),
`trigger:stream-error` (an error object in the middle of a stream), `trigger:cut` (the
stream's connection cut mid-event), `trigger:slow` (streamed events 0.15 s apart).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.upstream import Received, Reply

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"

_AI_STUDIO = re.compile(r"^/v1beta/models/([^/:]+):([A-Za-z]+)$")
_VERTEX = re.compile(
    r"^/v1/projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/:]+):([A-Za-z]+)$"
)

_REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
    "labels",
}
_GENERATION_FIELDS = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
}
_PART_DATA = {
    "text",
    "inlineData",
    "inline_data",
    "fileData",
    "file_data",
    "functionCall",
    "function_call",
    "functionResponse",
    "function_response",
    "executableCode",
    "codeExecutionResult",
}
_PART_META = {"thought", "thoughtSignature", "thought_signature", "videoMetadata"}
# Gemini's Schema (the OpenAPI subset `parameters` and `responseSchema` take)
_SCHEMA_FIELDS = {
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
}
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


def google_error(code: int, status: str, message: str, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    err.update(extra)
    return {"error": err}


def _error_reply(code: int, status: str, message: str, **extra: Any) -> Reply:
    return Reply.json(google_error(code, status, message, **extra), code)


class Invalid(Exception):
    """A request Google would refuse with 400 INVALID_ARGUMENT."""


# --------------------------------------------------------------- service account


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class ServiceAccount:
    """A throwaway service-account key, as the JSON file Google hands out."""

    info: dict[str, Any]
    public_key: rsa.RSAPublicKey

    @property
    def json(self) -> str:
        return json.dumps(self.info)

    @property
    def email(self) -> str:
        return self.info["client_email"]

    @property
    def project_id(self) -> str:
        return self.info["project_id"]


def make_service_account(token_uri: str, project_id: str = "llmitm-test") -> ServiceAccount:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": f"gateway@{project_id}.iam.gserviceaccount.com",
        "client_id": "104242424242424242424",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    return ServiceAccount(info, key.public_key())


# ------------------------------------------------------------------------ the fake


@dataclass
class Issued:
    """A function call the fake answered with, and the signature it must come back with."""

    name: str
    args: dict[str, Any]
    signature: str | None


@dataclass
class FakeGemini:
    api_key: str
    service_account: ServiceAccount | None = None
    # What the text answer says (default: echo the last user text).
    text: str | None = None
    cached_tokens: int = 0
    token_requests: int = 0
    token_failures: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    calls: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, req: Received) -> Reply:
        parts = urlsplit(req.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if req.method == "POST" and parts.path == "/token":
            return self._token(req)
        with self._lock:
            self.calls.append(req)
        m = _AI_STUDIO.match(parts.path)
        if m:
            denied = self._check_key(req, query)
            if denied:
                return denied
            return self._operation(req, query, m.group(1), m.group(2), vertex=False)
        m = _VERTEX.match(parts.path)
        if m:
            denied = self._check_bearer(req, m.group(1))
            if denied:
                return denied
            return self._operation(req, query, m.group(3), m.group(4), vertex=True)
        return _error_reply(404, "NOT_FOUND", f"Requested entity was not found: {parts.path}")

    @property
    def last(self) -> Received:
        assert self.calls, "the fake Gemini API received no call"
        return self.calls[-1]

    # ------------------------------------------------------------------ auth

    def _check_key(self, req: Received, query: dict[str, str]) -> Reply | None:
        key = req.headers.get("x-goog-api-key") or query.get("key")
        if not key:
            return _error_reply(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != self.api_key:
            return _error_reply(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            )
        return None

    def _check_bearer(self, req: Received, project: str) -> Reply | None:
        auth = req.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None or token not in self.tokens:
            return _error_reply(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        if self.service_account and project != self.service_account.project_id:
            return _error_reply(
                403,
                "PERMISSION_DENIED",
                f"Permission denied on resource project {project}.",
            )
        return None

    def _token(self, req: Received) -> Reply:
        with self._lock:
            self.token_requests += 1
        try:
            token = self._grant(req)
        except Invalid as e:
            self.token_failures.append(str(e))
            return Reply.json({"error": "invalid_grant", "error_description": str(e)}, 400)
        with self._lock:
            self.tokens.add(token)
        return Reply.json({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _grant(self, req: Received) -> str:
        sa = self.service_account
        if sa is None:
            raise Invalid("no service account is known to this token endpoint")
        if "application/x-www-form-urlencoded" not in req.headers.get("content-type", ""):
            raise Invalid("the grant must be form-encoded")
        form = {k: v[-1] for k, v in parse_qs(req.body.decode()).items()}
        if form.get("grant_type") != JWT_GRANT:
            raise Invalid(f"unsupported grant_type {form.get('grant_type')!r}")
        pieces = form.get("assertion", "").split(".")
        if len(pieces) != 3:
            raise Invalid("the assertion is not a JWT")
        try:
            header = json.loads(unb64url(pieces[0]))
            claims = json.loads(unb64url(pieces[1]))
            signature = unb64url(pieces[2])
        except (ValueError, binascii.Error):
            raise Invalid("the JWT does not decode") from None
        if header.get("alg") != "RS256":
            raise Invalid(f"JWT alg {header.get('alg')!r}, expected RS256")
        if header.get("kid") not in (None, sa.info["private_key_id"]):
            raise Invalid("JWT kid is not the service account's private_key_id")
        try:
            sa.public_key.verify(
                signature,
                f"{pieces[0]}.{pieces[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise Invalid("Invalid JWT Signature.") from None
        now = time.time()
        if claims.get("iss") != sa.email:
            raise Invalid(f"iss {claims.get('iss')!r} is not {sa.email}")
        # google-auth signs for Google's own token endpoint whatever token_uri says, and
        # Google accepts that; the token_uri itself is as good an audience
        if claims.get("aud") not in (sa.info["token_uri"], GOOGLE_TOKEN_ENDPOINT):
            raise Invalid(f"aud {claims.get('aud')!r} is not the token endpoint")
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            raise Invalid(f"scope {claims.get('scope')!r} lacks cloud-platform")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, (int, float)) or exp <= now:
            raise Invalid(
                "Invalid JWT: Token must be a short-lived token and in a reasonable "
                "timeframe (expired)"
            )
        if not isinstance(iat, (int, float)) or iat > now + 300 or exp - iat > 3600:
            raise Invalid("Invalid JWT: iat/exp out of range")
        return f"ya29.fake-{secrets.token_hex(16)}"

    # ------------------------------------------------------------ operations

    def _operation(
        self, req: Received, query: dict[str, str], model: str, op: str, vertex: bool
    ) -> Reply:
        if req.method != "POST":
            return _error_reply(405, "INVALID_ARGUMENT", f"method {req.method} not allowed")
        try:
            body = json.loads(req.body) if req.body else None
        except ValueError:
            return _error_reply(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return _error_reply(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            if op == "generateContent":
                return self._generate(body, model, stream=None)
            if op == "streamGenerateContent":
                return self._generate(
                    body, model, stream="sse" if query.get("alt") == "sse" else "array"
                )
            if op == "batchEmbedContents" and not vertex:
                return self._batch_embed(body, model)
            if op == "predict" and vertex:
                return self._predict(body)
        except Invalid as e:
            self.rejected.append(str(e))
            return _error_reply(400, "INVALID_ARGUMENT", str(e))
        return _error_reply(404, "NOT_FOUND", f"operation {op} is not supported by this fake")

    # ------------------------------------------------------------ validation

    def _validate(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        for key in body:
            if key not in _REQUEST_FIELDS:
                raise Invalid(
                    f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
                )
        contents = _listify(body.get("contents"))
        if not contents:
            raise Invalid("* GenerateContentRequest.contents: contents is not specified")
        declared = self._validate_tools(body)
        for i, content in enumerate(contents):
            if not isinstance(content, dict):
                raise Invalid(f"contents[{i}] must be an object")
            role = content.get("role", "user")
            if role not in ("user", "model"):
                raise Invalid(
                    f"Please use a valid role: user, model. (contents[{i}].role={role!r})"
                )
            parts = _listify(content.get("parts"))
            if not parts:
                raise Invalid(
                    f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
                )
            for j, part in enumerate(parts):
                self._validate_part(part, f"contents[{i}].parts[{j}]", role, declared)
        self._validate_function_flow(contents)
        gc = body.get("generationConfig") or body.get("generation_config") or {}
        for key in gc:
            if key not in _GENERATION_FIELDS:
                raise Invalid(
                    f'Invalid JSON payload received. Unknown name "{key}" at '
                    "'generation_config': Cannot find field."
                )
        if "responseSchema" in gc:
            _validate_schema(gc["responseSchema"], "generation_config.response_schema")
        if "responseJsonSchema" in gc and gc.get("responseMimeType") != "application/json":
            raise Invalid("responseJsonSchema needs responseMimeType application/json")
        system = body.get("systemInstruction") or body.get("system_instruction")
        if system is not None:
            for j, part in enumerate(_listify(system.get("parts"))):
                if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                    raise Invalid(f"system_instruction.parts[{j}] must be a text part")
        return contents, gc

    def _validate_part(self, part: Any, where: str, role: str, declared: dict[str, Any]) -> None:
        if not isinstance(part, dict):
            raise Invalid(f"{where} must be an object")
        data = [k for k in part if k in _PART_DATA]
        unknown = [k for k in part if k not in _PART_DATA and k not in _PART_META]
        if unknown:
            raise Invalid(
                f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at '{where}'"
            )
        if len(data) != 1:
            raise Invalid(f"{where}: a part must hold exactly one kind of data, has {data}")
        kind = data[0]
        value = part[kind]
        if kind == "text":
            if not isinstance(value, str) or not value:
                raise Invalid(
                    f"Unable to submit request because it has an empty text parameter ({where})"
                )
        elif kind in ("inlineData", "inline_data"):
            mime = value.get("mimeType") or value.get("mime_type")
            if not mime or not isinstance(value.get("data"), str):
                raise Invalid(f"{where}.inline_data needs mime_type and data")
            try:
                base64.b64decode(value["data"], validate=True)
            except (binascii.Error, ValueError):
                raise Invalid(f"{where}.inline_data.data is not base64") from None
        elif kind in ("fileData", "file_data"):
            if not (value.get("mimeType") or value.get("mime_type")) or not (
                value.get("fileUri") or value.get("file_uri")
            ):
                raise Invalid(f"{where}.file_data needs mime_type and file_uri")
        elif kind in ("functionCall", "function_call"):
            if role != "model":
                raise Invalid(f"{where}: a function call must be in a model turn")
            if not isinstance(value.get("name"), str) or not isinstance(
                value.get("args", {}), dict
            ):
                raise Invalid(f"{where}.function_call needs a name and object args")
        elif kind in ("functionResponse", "function_response"):
            if role != "user":
                raise Invalid(f"{where}: a function response must be in a user turn")
            if not isinstance(value.get("name"), str) or not isinstance(
                value.get("response"), dict
            ):
                raise Invalid(f"{where}.function_response needs a name and an object response")

    def _validate_tools(self, body: dict[str, Any]) -> dict[str, Any]:
        declared: dict[str, Any] = {}
        for t, tool in enumerate(_listify(body.get("tools"))):
            decls = tool.get("functionDeclarations", tool.get("function_declarations"))
            for d, decl in enumerate(_listify(decls)):
                where = f"tools[{t}].function_declarations[{d}]"
                unknown = set(decl) - {
                    "name",
                    "description",
                    "parameters",
                    "parametersJsonSchema",
                    "response",
                }
                if unknown:
                    raise Invalid(
                        f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at '{where}'"
                    )
                name = decl.get("name")
                if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                    raise Invalid(f"* {where}.name: Invalid function name {name!r}")
                if "parameters" in decl:
                    params = decl["parameters"]
                    _validate_schema(params, f"{where}.parameters")
                    if str(params.get("type", "")).lower() == "object" and not params.get(
                        "properties"
                    ):
                        raise Invalid(
                            f"* {where}.parameters.properties: should be non-empty for OBJECT type"
                        )
                declared[name] = decl
        config = body.get("toolConfig") or body.get("tool_config")
        if config:
            fcc = config.get("functionCallingConfig") or config.get("function_calling_config") or {}
            mode = str(fcc.get("mode", "AUTO")).upper()
            if mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
                raise Invalid(
                    f"Invalid value at 'tool_config.function_calling_config.mode': {mode}"
                )
            names = fcc.get("allowedFunctionNames") or fcc.get("allowed_function_names")
            if names and mode != "ANY":
                raise Invalid("allowed_function_names may only be set when mode is ANY")
            for n in names or ():
                if n not in declared:
                    raise Invalid(f"allowed function name {n!r} is not declared")
        return declared

    def _validate_function_flow(self, contents: list[dict[str, Any]]) -> None:
        """Function results must answer the calls of the model turn before them, by
        name; replayed calls must carry the thought signature they were issued with."""
        previous_calls: list[str] = []
        for i, content in enumerate(contents):
            parts = _listify(content.get("parts"))
            calls = [_fc(p) for p in parts if _fc(p) is not None]
            responses = [
                p.get("functionResponse") or p.get("function_response")
                for p in parts
                if "functionResponse" in p or "function_response" in p
            ]
            for r in responses:
                if r["name"] not in previous_calls:
                    raise Invalid(
                        f"contents[{i}]: function response {r['name']!r} answers no function "
                        f"call of the previous turn (calls: {previous_calls})"
                    )
            for p in parts:
                fc = _fc(p)
                if fc is None:
                    continue
                sig = p.get("thoughtSignature") or p.get("thought_signature")
                expected = {
                    issued.signature
                    for issued in self.issued
                    if issued.signature
                    and issued.name == fc["name"]
                    and issued.args == fc.get("args", {})
                }
                if expected and sig not in expected:
                    raise Invalid(
                        "Function call is missing a thought_signature in functionCall parts. "
                        f"(contents[{i}], {fc['name']})"
                    )
            previous_calls = [c["name"] for c in calls] if content.get("role") == "model" else []

    # ------------------------------------------------------------ answers

    def _generate(self, body: dict[str, Any], model: str, stream: str | None) -> Reply:
        contents, gc = self._validate(body)
        prompt_text = _all_text(body)
        last = contents[-1]
        last_parts = _listify(last.get("parts"))
        last_text = " ".join(p["text"] for p in last_parts if isinstance(p.get("text"), str))
        trigger = re.search(r"trigger:([a-z-]+)", last_text)
        trigger = trigger.group(1) if trigger else None
        if trigger == "quota":
            return _error_reply(
                429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."
            )
        if trigger == "array-error":
            return Reply.json(
                [google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")],
                400,
            )
        prompt_tokens = _count(prompt_text)
        if trigger == "block":
            return Reply.json(
                {
                    "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                    "usageMetadata": {
                        "promptTokenCount": prompt_tokens,
                        "totalTokenCount": prompt_tokens,
                    },
                    "modelVersion": model,
                }
            )
        events = self._answer(body, gc, contents, last_parts, last_text, trigger, model)
        if stream is None:
            return Reply.json(_merge(events))
        return self._stream(events, stream, trigger)

    def _answer(
        self,
        body: dict[str, Any],
        gc: dict[str, Any],
        contents: list[dict[str, Any]],
        last_parts: list[dict[str, Any]],
        last_text: str,
        trigger: str | None,
        model: str,
    ) -> list[dict[str, Any]]:
        """The answer as the list of streamed events (a whole answer merges them)."""
        prompt_tokens = _count(_all_text(body))
        response_id = secrets.token_hex(8)
        declared = self._validate_tools(body)
        config = body.get("toolConfig") or {}
        fcc = config.get("functionCallingConfig") or {}
        mode = str(fcc.get("mode", "AUTO")).upper()
        answers_functions = any(_fr(p) for p in last_parts)
        thinking = (gc.get("thinkingConfig") or {}).get("includeThoughts") is True
        pieces: list[dict[str, Any]] = []  # parts, one per event
        if thinking:
            pieces.append(
                {"text": f"Thinking about: {last_text or 'the results'}", "thought": True}
            )
        if declared and mode != "NONE" and not answers_functions and "no tools" not in last_text:
            names = fcc.get("allowedFunctionNames") or list(declared)
            for k, name in enumerate(names[:2]):
                args = _sample_args(declared[name])
                part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
                sig = None
                if k == 0:
                    sig = f"sig-{secrets.token_hex(6)}"
                    part["thoughtSignature"] = sig
                self.issued.append(Issued(name, args, sig))
                pieces.append(part)
        else:
            if answers_functions:
                results = [
                    f"{r['name']} -> {json.dumps(r['response'], sort_keys=True)}"
                    for r in (_fr(p) for p in last_parts)
                    if r
                ]
                text = "Results: " + "; ".join(results)
            else:
                text = self.text if self.text is not None else f"Echo: {last_text}"
            if gc.get("responseMimeType") == "application/json":
                text = json.dumps({"answer": text})
            words = re.findall(r"\S+\s*", text) or [text]
            pieces.extend({"text": w} for w in words)
        events = []
        out_tokens = 0
        thought_tokens = 0
        for k, part in enumerate(pieces):
            if part.get("thought"):
                thought_tokens += _count(part["text"])
            elif "text" in part:
                out_tokens += _count(part["text"])
            else:
                out_tokens += 5
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
            if k == len(pieces) - 1:
                candidate["finishReason"] = "SAFETY" if trigger == "safety" else "STOP"
            usage = {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": out_tokens,
                "totalTokenCount": prompt_tokens + out_tokens + thought_tokens,
            }
            if thought_tokens:
                usage["thoughtsTokenCount"] = thought_tokens
            if self.cached_tokens:
                usage["cachedContentTokenCount"] = self.cached_tokens
            events.append(
                {
                    "candidates": [candidate],
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": response_id,
                }
            )
        return events

    def _stream(self, events: list[dict[str, Any]], kind: str, trigger: str | None) -> Reply:
        if trigger == "stream-error":
            half = max(1, len(events) // 2)
            events = events[:half] + [
                google_error(500, "INTERNAL", "An internal error has occurred.")
            ]
        if kind == "sse":
            blobs = [b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events]
            headers = {"content-type": "text/event-stream"}
        else:
            # Google's array stream: pretty-printed objects separated by "\n,\r\n"
            blobs = [
                (("[" if k == 0 else "\n,\r\n") + json.dumps(e, indent=2)).encode()
                for k, e in enumerate(events)
            ]
            blobs[-1] += b"\n]"
            headers = {"content-type": "application/json; charset=UTF-8"}
        cut = None
        if trigger == "cut":  # the first event whole, then half of the second, then cut
            blobs = blobs[:1] + [blobs[1][: len(blobs[1]) // 2]] if len(blobs) > 1 else blobs
        chunks: list[bytes | float] = []
        for blob in blobs:
            if trigger == "slow":
                chunks.append(0.15)
            # each event in 29-byte pieces: the gateway must join them
            chunks += [blob[i : i + 29] for i in range(0, len(blob), 29)]
        if trigger == "cut":
            cut = sum(1 for c in chunks if isinstance(c, bytes))
        return Reply(200, headers, chunks=chunks, cut_after=cut)

    # ------------------------------------------------------------ embeddings

    def _batch_embed(self, body: dict[str, Any], model: str) -> Reply:
        requests = body.get("requests")
        if set(body) - {"requests"} or not isinstance(requests, list) or not requests:
            raise Invalid("batchEmbedContents needs exactly 'requests'")
        out = []
        for i, r in enumerate(requests):
            if r.get("model") != f"models/{model}":
                raise Invalid(f"requests[{i}].model must be models/{model}, got {r.get('model')!r}")
            text = " ".join(
                p.get("text", "") for p in _listify((r.get("content") or {}).get("parts"))
            )
            if not text:
                raise Invalid(f"requests[{i}].content has no text")
            out.append({"values": _vector(text, r.get("outputDimensionality") or 4)})
        return Reply.json({"embeddings": out})

    def _predict(self, body: dict[str, Any]) -> Reply:
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise Invalid("predict needs 'instances'")
        dims = (body.get("parameters") or {}).get("outputDimensionality") or 4
        preds = []
        for inst in instances:
            text = inst.get("content")
            if not isinstance(text, str) or not text:
                raise Invalid("each instance needs 'content'")
            preds.append(
                {
                    "embeddings": {
                        "values": _vector(text, dims),
                        "statistics": {"token_count": _count(text), "truncated": False},
                    }
                }
            )
        return Reply.json({"predictions": preds, "metadata": {"billableCharacterCount": 10}})


# ------------------------------------------------------------------------ helpers


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _fc(part: Any) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        return None
    return part.get("functionCall") or part.get("function_call")


def _fr(part: Any) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        return None
    return part.get("functionResponse") or part.get("function_response")


def _validate_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise Invalid(f"{where} must be an object")
    for key, value in schema.items():
        if key not in _SCHEMA_FIELDS:
            raise Invalid(
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': "
                "Cannot find field."
            )
        if key == "properties":
            for name, sub in value.items():
                _validate_schema(sub, f"{where}.properties[{name}]")
        elif key == "items":
            _validate_schema(value, f"{where}.items")
        elif key == "anyOf":
            for k, sub in enumerate(value):
                _validate_schema(sub, f"{where}.any_of[{k}]")
        elif key == "enum" and not all(isinstance(v, str) for v in value):
            raise Invalid(f"{where}.enum: only strings are allowed")
        elif key == "format" and value not in (
            "enum",
            "date-time",
            "int32",
            "int64",
            "float",
            "double",
        ):
            raise Invalid(f"{where}.format: only 'enum' and 'date-time' are supported for STRING")


def _sample_args(decl: dict[str, Any]) -> dict[str, Any]:
    params = decl.get("parameters") or decl.get("parametersJsonSchema") or {}
    out: dict[str, Any] = {}
    for name, schema in (params.get("properties") or {}).items():
        kind = str(schema.get("type", "string")).lower()
        if schema.get("enum"):
            out[name] = schema["enum"][0]
        elif kind == "integer":
            out[name] = 3
        elif kind == "number":
            out[name] = 1.5
        elif kind == "boolean":
            out[name] = True
        elif kind == "array":
            out[name] = []
        elif kind == "object":
            out[name] = {}
        else:
            out[name] = "Paris" if "city" in name or "location" in name else f"{name}-value"
    return out


def _all_text(body: dict[str, Any]) -> str:
    texts: list[str] = []
    system = body.get("systemInstruction") or body.get("system_instruction") or {}
    for part in _listify(system.get("parts")):
        texts.append(str(part.get("text", "")))
    for content in _listify(body.get("contents")):
        for part in _listify(content.get("parts")):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                texts.append(json.dumps(part))
    return " ".join(texts)


def _count(text: str) -> int:
    return max(1, len(text.split()))


def _vector(text: str, dims: int) -> list[float]:
    seed = sum(text.encode()) % 97
    return [round((seed + i) / 100, 2) for i in range(dims)]


def _merge(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A whole generateContent answer: every event's parts in one candidate, text
    parts of the same kind joined, the last event's finishReason and usage."""
    parts: list[dict[str, Any]] = []
    for e in events:
        for part in e["candidates"][0]["content"]["parts"]:
            prev = parts[-1] if parts else None
            if (
                prev is not None
                and "text" in part
                and "text" in prev
                and bool(prev.get("thought")) == bool(part.get("thought"))
            ):
                prev["text"] += part["text"]
            else:
                parts.append(dict(part))
    last = events[-1]
    candidate = {
        "content": {"role": "model", "parts": parts},
        "finishReason": last["candidates"][0].get("finishReason", "STOP"),
        "index": 0,
    }
    return {
        "candidates": [candidate],
        "usageMetadata": last["usageMetadata"],
        "modelVersion": last["modelVersion"],
        "responseId": last["responseId"],
    }
