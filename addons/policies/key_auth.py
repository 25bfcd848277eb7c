"""key-auth: who the client is, from an API key (Kong's Key Authentication plugin).

The key is looked for under each of `key_names`, in order: in a header
(`key_in_header`), in the query string (`key_in_query`), in a JSON, form-urlencoded or
multipart body field (`key_in_body`). A known key makes its consumer the call's
consumer (`call.set_consumer`): the consumer's own plugins apply from then on, records
and metrics name it, and the upstream is told who it is with Kong's `X-Consumer-*`
headers. No key is a 401 `No API key found in request`, an unknown key a 401
`Unauthorized` (Kong 3.x), both in OpenAI's error shape (an OpenAI SDK raises
`AuthenticationError`) with a `WWW-Authenticate: Key` challenge. With `anonymous`, a
failed authentication lets the request through as that consumer instead.

OpenAI SDK clients send their key as `Authorization: Bearer <key>`: with
`authorization` among `key_names`, the `Bearer` scheme is stripped and the rest is the
key.

The decision is taken in `requestheaders` (before the body is read) unless the body
has to be searched, which only the `request` hook can do.

Beyond Kong:
- a key that is found is never written to a call record: a known key is a secret of
  the config (the recorder redacts it everywhere), and any other key the client sent
  (a wrong one) is redacted from the recorded headers, URL and payload too;
- `anonymous` naming no consumer is a load error, not a 500 at request time;
- a client cannot spoof `X-Consumer-*` / `X-Anonymous-Consumer`: the plugin always
  sets or removes them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from pydantic import Field, field_validator, model_validator

from addons.policies.base import PolicyAddon, deny, json_body, set_json_body
from providers.base import ProviderError
from providers.options import Strict

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.calls import Call
    from addons.config.model import Consumer, Credential, GatewayConfig

NAME = "key-auth"
PRIORITY = 1250
CONSUMER_SCOPE = False

# Kong's messages
NO_KEY = "No API key found in request"
BAD_KEY = "Unauthorized"
DUPLICATE_KEY = "Duplicate API key found"

# Kong's headers to the upstream
HEADER_CONSUMER_ID = "X-Consumer-ID"
HEADER_CONSUMER_CUSTOM_ID = "X-Consumer-Custom-ID"
HEADER_CONSUMER_USERNAME = "X-Consumer-Username"
HEADER_CREDENTIAL = "X-Credential-Identifier"
HEADER_ANONYMOUS = "X-Anonymous-Consumer"

_KEY_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_BEARER = re.compile(r"^bearer(?:\s+(.*?))?\s*$", re.IGNORECASE | re.DOTALL)


class Config(Strict):
    """Kong's key-auth config."""

    key_names: list[str] = Field(
        default_factory=lambda: ["apikey"],
        description=(
            "Names the key is looked for under, in order (header, query parameter or body "
            "field names: letters, digits, '_' and '-'). With `authorization`, "
            "`Authorization: Bearer <key>` (what OpenAI SDKs send) is accepted."
        ),
    )
    key_in_header: bool = Field(True, description="Look for the key in the request headers.")
    key_in_query: bool = Field(True, description="Look for the key in the query string.")
    key_in_body: bool = Field(
        False,
        description=(
            "Look for the key in the request body (JSON, form-urlencoded or multipart "
            "fields); the decision then waits for the body."
        ),
    )
    hide_credentials: bool = Field(
        False,
        description=(
            "Remove the key from the request (header, query parameter and body field) "
            "before the upstream, the other plugins or a record see it."
        ),
    )
    anonymous: str | None = Field(
        None,
        description=(
            "A consumer (username, custom_id or id) the request runs as when "
            "authentication fails, instead of a 401."
        ),
    )
    run_on_preflight: bool = Field(
        True,
        description="Authenticate CORS preflight (OPTIONS) requests too; false lets them through.",
    )
    realm: str | None = Field(
        None, description='The realm of the 401\'s challenge: `WWW-Authenticate: Key realm="..."`.'
    )

    @field_validator("key_names")
    @classmethod
    def _key_names(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("key_names needs at least one key name (Kong's default: apikey)")
        for name in names:
            if not _KEY_NAME.match(name):
                raise ValueError(f"key name {name!r} may only contain letters, digits, '_' and '-'")
        return list(dict.fromkeys(names))

    @field_validator("anonymous")
    @classmethod
    def _anonymous(cls, value: str | None) -> str | None:
        return value or None  # Kong's "" means none

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str | None) -> str | None:
        if value is not None and (
            '"' in value or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value)
        ):
            raise ValueError(
                f"realm {value!r} cannot hold quotes, backslashes or control characters"
            )
        return value

    @model_validator(mode="after")
    def _somewhere(self) -> Config:
        if not (self.key_in_header or self.key_in_query or self.key_in_body):
            raise ValueError(
                "key-auth has nowhere to look for the key: "
                "enable key_in_header, key_in_query or key_in_body"
            )
        return self

    def challenge(self) -> str:
        """The WWW-Authenticate value of a 401 (Kong: `Key`, with the realm if set)."""
        return f'Key realm="{self.realm}"' if self.realm else "Key"


# --------------------------------------------------------------------- finding the key


@dataclass(frozen=True, slots=True)
class Found:
    """A key the request carries: its name, where it was (header, query or body) and
    its value (None when the name appears more than once: Kong's duplicate key)."""

    name: str
    where: str
    key: str | None


#: `find_key`'s answer when the body must be searched and was not given
NEED_BODY = object()
_ABSENT = object()


def _one(values: list[Any]) -> Any:
    """Kong's reading of one name's values: absent, a duplicate (None), a string, or
    something that is not a key (skipped)."""
    if not values:
        return _ABSENT
    if len(values) > 1 or isinstance(values[0], list):
        return None
    return values[0]


def find_key(
    conf: Config,
    headers: Any,
    query: Any,
    body: dict[str, list[Any]] | None,
) -> Found | object | None:
    """The key of a request, Kong's way: for each key name in order, the header, then
    the query parameter, then the body field; the first one present decides.

    `headers` and `query` have `get_all(name)` (mitmproxy's Headers and MultiDictView);
    `body` maps a field name to its values, or is None when not read yet: then
    `NEED_BODY` is returned if the body would be searched. None: no key anywhere."""
    for name in conf.key_names:
        for where, source, enabled in (
            ("header", headers, conf.key_in_header),
            ("query", query, conf.key_in_query),
        ):
            if not enabled:
                continue
            value = _one(source.get_all(name))
            if value is _ABSENT:
                continue
            if value is None:
                return Found(name, where, None)
            if where == "header":
                value = value.strip(" \t")  # HTTP's optional whitespace around a value
                if name.lower() == "authorization":
                    m = _BEARER.match(value)
                    if m:
                        value = m.group(1) or ""
            return Found(name, where, value)
        if conf.key_in_body:
            if body is None:
                return NEED_BODY
            value = _one(body.get(name, []))
            if value is None:
                return Found(name, "body", None)
            if isinstance(value, str):
                return Found(name, "body", value)
            # absent, or a JSON value that is no string (a number): not a key
    return None


# --------------------------------------------------------------- looking the key up

# Keys are looked up by the SHA-256 digest of the presented key, then the stored key is
# compared with `hmac.compare_digest`. A dict keyed by the keys themselves would compare
# the presented key with a stored one byte by byte (on a hash collision of the dict, or
# in any linear search), and the time that takes tells an attacker how many leading
# bytes they got right. The digest lookup only compares digests, which reveal nothing
# usable about the key, and the final comparison takes the same time wherever the keys
# differ. (Kong looks keys up in its database by value, as a dict lookup would.)
_INDEXES: weakref.WeakKeyDictionary[GatewayConfig, dict[bytes, Credential]] = (
    weakref.WeakKeyDictionary()
)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def credential_for(config: GatewayConfig, key: str) -> Credential | None:
    """The credential whose key is `key` in `config`, compared in constant time."""
    index = _INDEXES.get(config)
    if index is None:
        index = {_digest(k): cred for k, cred in config.credentials.items()}
        _INDEXES[config] = index  # built once per loaded config (a reload builds anew)
    cred = index.get(_digest(key))
    if cred is None:
        return None
    presented = key.encode("utf-8", "surrogatepass")
    stored = cred.key.encode("utf-8", "surrogatepass")
    return cred if hmac.compare_digest(stored, presented) else None


# ------------------------------------------------------------------ the request body


def _body_fields(flow: http.HTTPFlow, call: Call) -> tuple[str, dict[str, list[Any]]]:
    """The body's fields by name (and the body's kind: json, form, multipart or none).
    A body that cannot be read has no fields: the key is then not found (Kong)."""
    req = flow.request
    ctype = req.headers.get("content-type", "").lower()
    try:
        if "application/x-www-form-urlencoded" in ctype:
            fields: dict[str, list[Any]] = {}
            for k, v in req.urlencoded_form.items(multi=True):
                fields.setdefault(k, []).append(v)
            return "form", fields
        if "multipart/form-data" in ctype:
            fields = {}
            for k, v in req.multipart_form.items(multi=True):
                fields.setdefault(k.decode("utf-8", "replace"), []).append(
                    v.decode("utf-8", "replace")
                )
            return "multipart", fields
        if not ctype or "json" in ctype:
            body = json_body(flow, call)
            return "json", {k: [v] for k, v in body.items()}
    except (ProviderError, ValueError):
        pass
    return "none", {}


def _drop_pairs(query: str, name: str) -> str:
    """A query string (or form body) without the `name` parameters, the others kept
    byte for byte."""
    kept = [
        part
        for part in query.split("&")
        if not part or unquote_plus(part.partition("=")[0]) != name
    ]
    return "&".join(p for p in kept if p)


def _drop_multipart_field(content: bytes, content_type: str, name: str) -> bytes | None:
    """A multipart body without the part named `name` (the other parts untouched:
    file names and part headers stay), or None if the boundary is unknown."""
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not m:
        return None
    delimiter = b"--" + m.group(1).encode("latin-1")
    wanted = re.compile(
        rb'content-disposition:[^\r\n]*;\s*name="?'
        + re.escape(name.encode())
        + rb'"?\s*(;|\r|\n|$)',
        re.IGNORECASE,
    )
    parts = content.split(delimiter)
    kept = [parts[0]]
    for part in parts[1:]:
        head = part.partition(b"\r\n\r\n")[0]
        if not part.startswith(b"--") and wanted.search(head):
            continue
        kept.append(part)
    return delimiter.join(kept)


def _strip_body(flow: http.HTTPFlow, call: Call, name: str) -> None:
    """Remove the body field `name` (hide_credentials)."""
    kind, fields = _body_fields(flow, call)
    if name not in fields:
        return
    req = flow.request
    if kind == "json":
        body = dict(call.body)
        body.pop(name, None)
        set_json_body(flow, call, body)
    elif kind == "form":
        # latin-1 maps bytes to characters one to one: other fields stay byte for byte
        raw = (req.content or b"").decode("latin-1")
        req.content = _drop_pairs(raw, name).encode("latin-1")
    elif kind == "multipart":
        content = _drop_multipart_field(
            req.content or b"", req.headers.get("content-type", ""), name
        )
        if content is not None:
            req.content = content


def _strip(flow: http.HTTPFlow, call: Call, conf: Config, name: str, body_read: bool) -> bool:
    """Remove the key `name` from the request's headers, query and (when read) body,
    as Kong does with hide_credentials. True when the body is still to be stripped."""
    req = flow.request
    req.headers.pop(name, None)
    path, sep, query = req.path.partition("?")
    if sep:
        query = _drop_pairs(query, name)
        req.path = f"{path}?{query}" if query else path
    if conf.key_in_body:
        if not body_read:
            return True
        _strip_body(flow, call, name)
    return False


def set_consumer_headers(
    headers: Any, consumer: Consumer | None, credential: Credential | None
) -> None:
    """Kong's headers to the upstream: who the consumer is, which credential, or that
    it is the anonymous consumer. Set or removed, so a client cannot spoof them."""
    values = {
        HEADER_CONSUMER_ID: consumer.id if consumer else None,
        HEADER_CONSUMER_CUSTOM_ID: consumer.custom_id if consumer else None,
        HEADER_CONSUMER_USERNAME: consumer.username if consumer else None,
        HEADER_CREDENTIAL: credential.id if credential else None,
        HEADER_ANONYMOUS: None if credential else "true",
    }
    for name, value in values.items():
        if value:
            headers[name] = value
        else:
            headers.pop(name, None)


# ------------------------------------------------------------------------- the addon


class Policy(PolicyAddon):
    """Authenticates the client by its API key and sets the call's consumer."""

    name = "llmitm-key-auth"
    plugin = NAME

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        # flows whose key is in a body not read yet, and flows whose body still has a
        # key field to hide (weak: a flow that never reaches `request` is forgotten)
        self._pending: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self._strip_later: weakref.WeakKeyDictionary[http.HTTPFlow, str] = (
            weakref.WeakKeyDictionary()
        )

    def _runs(self, flow: http.HTTPFlow) -> tuple[Call, Config] | tuple[None, None]:
        call, conf = self.active(flow)
        if call is None:
            return None, None
        if not conf.run_on_preflight and flow.request.method == "OPTIONS":
            return None, None
        if conf.anonymous and call.credential is not None:
            return None, None  # already authenticated (Kong's logical OR)
        return call, conf

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call, conf = self._runs(flow)
        if call is None:
            return
        req = flow.request
        found = find_key(conf, req.headers, req.query, None)
        if found is NEED_BODY:
            self._pending.add(flow)
            return
        self._decide(flow, call, conf, found, body_read=False)  # type: ignore[arg-type]

    def request(self, flow: http.HTTPFlow) -> None:
        strip = self._strip_later.pop(flow, None)
        pending = flow in self._pending
        if not (strip or pending):
            return
        self._pending.discard(flow)
        call, conf = self.active(flow)
        if call is None:
            return
        if strip:
            _strip_body(flow, call, strip)
        if pending:
            req = flow.request
            _, fields = _body_fields(flow, call)
            found = find_key(conf, req.headers, req.query, fields)
            self._decide(flow, call, conf, found, body_read=True)  # type: ignore[arg-type]

    def _decide(
        self, flow: http.HTTPFlow, call: Call, conf: Config, found: Found | None, body_read: bool
    ) -> None:
        if found is None:
            return self._fail(flow, call, conf, NO_KEY, "missing_api_key")
        if found.key is None:
            return self._fail(flow, call, conf, DUPLICATE_KEY, "duplicate_api_key")
        call.secret_names.add(found.name)  # the recorder redacts it, right or wrong
        if conf.hide_credentials and _strip(flow, call, conf, found.name, body_read):
            self._strip_later[flow] = found.name
        if not found.key:
            return self._fail(flow, call, conf, NO_KEY, "missing_api_key")
        credential = credential_for(call.config, found.key)
        if credential is None:
            return self._fail(flow, call, conf, BAD_KEY, "invalid_api_key")
        call.set_consumer(credential.consumer, credential)
        set_consumer_headers(flow.request.headers, credential.consumer, credential)
        return None

    def _fail(self, flow: http.HTTPFlow, call: Call, conf: Config, message: str, code: str) -> None:
        if conf.anonymous is None:
            deny(
                flow, call, 401, message, code=code, headers={"WWW-Authenticate": conf.challenge()}
            )
            return
        consumer = call.config.consumer(conf.anonymous)
        if consumer is None:  # the loader refuses such a config: a safety net
            deny(
                flow,
                call,
                500,
                f"anonymous consumer {conf.anonymous!r} is configured but doesn't exist",
                code="gateway_error",
            )
            return
        call.set_consumer(consumer, None)
        set_consumer_headers(flow.request.headers, consumer, None)
