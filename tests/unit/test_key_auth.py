"""key-auth (addons/policies/key_auth.py): finding the key, looking it up in constant
time, the addon's answers in mitmproxy's test harness, and its config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.coretypes.multidict import MultiDict

from addons.calls import Call
from addons.config import ConfigError, load_text
from addons.policies import key_auth
from addons.policies.key_auth import NEED_BODY, Config, Found, credential_for, find_key
from addons.recorder import build_record
from addons.router import Router
from addons.state import Gateway
from tests.policy_helpers import client_request, error_of, mock_chat_config

KEY = "alice-key-0123456789"
BOB_KEY = "bob-key-9876543210"

CONFIG = mock_chat_config(
    {"key-auth": "KEYAUTH"},
    tail="""
consumers:
  - username: alice
    custom_id: alice-cid
    id: 5f1c1b2e-0000-4000-8000-000000000001
    keyauth_credentials:
      - {key: "ALICE", id: cred-alice-1}
  - custom_id: bob-cid
    keyauth_credentials:
      - {key: "BOB"}
  - username: guest
""",
)


def config(keyauth: str = "{}") -> str:
    return CONFIG.replace("KEYAUTH", keyauth).replace("ALICE", KEY).replace("BOB", BOB_KEY)


def gateway(keyauth: str = "{}") -> Gateway:
    gw = Gateway()
    gw.config = load_text(config(keyauth))
    return gw


def flow(
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}',
    ctype: str | None = "application/json",
    method: str = "POST",
) -> http.HTTPFlow:
    items = list(headers.items() if isinstance(headers, dict) else headers or [])
    if ctype:
        items.insert(0, ("content-type", ctype))
    return client_request(method, path, headers=items, body=body, host="gw.example")


def run(gw: Gateway, f: http.HTTPFlow) -> Call:
    """Router, then key-auth's two hooks, as mitmproxy calls them."""
    Router(gw).requestheaders(f)
    policy = key_auth.Policy(gw)
    policy.requestheaders(f)
    if f.response is None:
        policy.request(f)
    call = gw.calls.get(f)
    assert call is not None
    return call


# ------------------------------------------------------------------- finding the key


def headers(*pairs: tuple[str, str]) -> http.Headers:
    h = http.Headers()
    for k, v in pairs:
        h.add(k, v)
    return h


def query(*pairs: tuple[str, str]) -> MultiDict:
    return MultiDict(pairs)


@pytest.mark.parametrize(
    "conf, hdrs, qs, body, expected",
    [
        # the header, then the query, then the body, for each name in order
        ({}, [("apikey", "k")], [], None, Found("apikey", "header", "k")),
        ({}, [("ApiKey", "k")], [], None, Found("apikey", "header", "k")),
        ({}, [], [("apikey", "q")], None, Found("apikey", "query", "q")),
        ({}, [("apikey", "h")], [("apikey", "q")], None, Found("apikey", "header", "h")),
        ({}, [], [], None, None),
        # the query is case-sensitive (a query parameter, not a header)
        ({}, [], [("ApiKey", "q")], None, None),
        # places turned off are not searched
        ({"key_in_header": False}, [("apikey", "h")], [("apikey", "q")], None,
         Found("apikey", "query", "q")),
        ({"key_in_query": False}, [], [("apikey", "q")], None, None),
        # names in order: the first name present anywhere wins
        ({"key_names": ["a", "b"]}, [("b", "hb")], [("a", "qa")], None, Found("a", "query", "qa")),
        ({"key_names": ["a", "b"]}, [("b", "hb")], [], None, Found("b", "header", "hb")),
        # the body: only with key_in_body, and only once it has been read
        ({}, [], [], {"apikey": ["b"]}, None),
        ({"key_in_body": True}, [], [], None, NEED_BODY),
        ({"key_in_body": True}, [], [], {"apikey": ["b"]}, Found("apikey", "body", "b")),
        ({"key_in_body": True}, [("apikey", "h")], [], None, Found("apikey", "header", "h")),
        # Kong's order: name a's body is searched before name b's header
        ({"key_in_body": True, "key_names": ["a", "b"]}, [("b", "hb")], [], None, NEED_BODY),
        ({"key_in_body": True, "key_names": ["a", "b"]}, [("b", "hb")], [], {"a": ["ba"]},
         Found("a", "body", "ba")),
        ({"key_in_body": True, "key_names": ["a", "b"]}, [("b", "hb")], [], {},
         Found("b", "header", "hb")),
        # a body value that is no string is no key; a JSON array is a duplicate
        ({"key_in_body": True}, [], [], {"apikey": [12345]}, None),
        ({"key_in_body": True}, [], [], {"apikey": [["x", "y"]]}, Found("apikey", "body", None)),
        # the same name twice: Kong's duplicate key
        ({}, [("apikey", "a"), ("apikey", "b")], [], None, Found("apikey", "header", None)),
        ({}, [], [("apikey", "a"), ("apikey", "b")], None, Found("apikey", "query", None)),
        ({"key_in_body": True}, [], [], {"apikey": ["a", "b"]}, Found("apikey", "body", None)),
        # present but empty: found (then refused as no key)
        ({}, [("apikey", "")], [("apikey", "q")], None, Found("apikey", "header", "")),
    ],
)  # fmt: skip
def test_find_key(conf: dict, hdrs: list, qs: list, body: Any, expected: Any) -> None:
    assert find_key(Config(**conf), headers(*hdrs), query(*qs), body) == expected


@pytest.mark.parametrize(
    "value, key",
    [
        ("Bearer sk-abc", "sk-abc"),
        ("bearer sk-abc", "sk-abc"),
        ("BEARER   sk-abc  ", "sk-abc"),
        ("sk-abc", "sk-abc"),  # no scheme: the value is the key
        ("Basic dXNlcjpwYXNz", "Basic dXNlcjpwYXNz"),  # another scheme: not a key of ours
        ("Bearer ", ""),  # the scheme and nothing: an empty key, refused as no key
        ("Bearer", ""),
        ("Bearerabc", "Bearerabc"),  # not the scheme: taken as it is (an unknown key)
    ],
)
def test_bearer_scheme_is_stripped_from_authorization(value: str, key: str) -> None:
    conf = Config(key_names=["Authorization"])
    assert find_key(conf, headers(("authorization", value)), query(), None) == Found(
        "Authorization", "header", key
    )


def test_bearer_is_only_stripped_from_the_authorization_header() -> None:
    conf = Config(key_names=["apikey", "authorization"])
    assert find_key(conf, headers(("apikey", "Bearer x")), query(), None) == Found(
        "apikey", "header", "Bearer x"
    )
    # a query parameter named authorization is taken as it is
    found = find_key(conf, headers(), query(("authorization", "Bearer x")), None)
    assert found == Found("authorization", "query", "Bearer x")


# ------------------------------------------------------------- constant-time lookup


class NoKeyLookups(dict):
    """A credentials map that fails the test if anything looks a key up in it."""

    def __getitem__(self, key: Any) -> Any:
        raise AssertionError("credentials looked up by the key itself")

    def get(self, key: Any, default: Any = None) -> Any:
        raise AssertionError("credentials looked up by the key itself")

    def __contains__(self, key: Any) -> bool:
        raise AssertionError("credentials looked up by the key itself")


def test_lookup_compares_the_key_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_text(config())
    cfg.credentials = NoKeyLookups(cfg.credentials)
    compared: list[tuple[bytes, bytes]] = []
    real = key_auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(key_auth.hmac, "compare_digest", spy)
    cred = credential_for(cfg, KEY)
    assert cred is not None and cred.consumer.username == "alice"
    assert compared == [(KEY.encode(), KEY.encode())]
    assert credential_for(cfg, BOB_KEY).consumer.custom_id == "bob-cid"


@pytest.mark.parametrize(
    "presented", ["", KEY[:-1], KEY + "x", KEY.upper(), " " + KEY, "alice", "Bearer " + KEY]
)
def test_lookup_refuses_near_misses(presented: str) -> None:
    assert credential_for(load_text(config()), presented) is None


def test_lookup_follows_the_config_it_is_given() -> None:
    """A reload builds a new config: its keys, not the old ones, count."""
    old = load_text(config())
    new = load_text(config().replace(f'key: "{BOB_KEY}"', 'key: "bob-new-key"'))
    assert credential_for(old, BOB_KEY) is not None
    assert credential_for(new, BOB_KEY) is None
    assert credential_for(new, "bob-new-key").consumer.custom_id == "bob-cid"


def test_non_ascii_keys() -> None:
    cfg = load_text(config().replace(KEY, "clé-ünïcode-✓"))
    assert credential_for(cfg, "clé-ünïcode-✓").consumer.username == "alice"
    assert credential_for(cfg, "cle-unicode-✓") is None


# --------------------------------------------------------------------- the addon


def test_no_key_is_401_with_kongs_message_and_challenge() -> None:
    gw = gateway()
    f = flow()
    call = run(gw, f)
    assert f.response.status_code == 401
    assert f.response.headers["WWW-Authenticate"] == "Key"
    assert error_of(f) == {
        "message": "No API key found in request",
        "type": "authentication_error",
        "param": None,
        "code": "missing_api_key",
    }
    assert call.error is not None and call.error_source == "gateway"
    assert call.consumer is None


def test_realm_is_in_the_challenge() -> None:
    f = flow()
    run(gateway("{realm: llm-gateway}"), f)
    assert f.response.headers["WWW-Authenticate"] == 'Key realm="llm-gateway"'


def test_unknown_key_is_401_unauthorized() -> None:
    f = flow(headers={"apikey": "not-a-key"})
    run(gateway(), f)
    assert f.response.status_code == 401
    assert f.response.headers["WWW-Authenticate"] == "Key"
    err = error_of(f)
    assert (err["message"], err["code"], err["type"]) == (
        "Unauthorized",
        "invalid_api_key",
        "authentication_error",
    )


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_key_is_no_key(value: str) -> None:
    f = flow(headers={"apikey": value})
    run(gateway(), f)
    assert f.response.status_code == 401
    assert error_of(f)["code"] == "missing_api_key"


@pytest.mark.parametrize(
    "path, hdrs",
    [
        ("/v1/chat/completions", [("apikey", KEY), ("apikey", KEY)]),
        (f"/v1/chat/completions?apikey={KEY}&apikey=", None),
    ],
)
def test_duplicate_key_is_401(path: str, hdrs: Any) -> None:
    f = flow(path=path, headers=hdrs)
    run(gateway(), f)
    assert f.response.status_code == 401
    assert error_of(f)["message"] == "Duplicate API key found"
    assert error_of(f)["code"] == "duplicate_api_key"


def test_known_key_sets_the_consumer_and_kongs_headers() -> None:
    f = flow(headers={"apikey": KEY})
    call = run(gateway(), f)
    assert f.response is None
    assert call.consumer is not None and call.consumer.username == "alice"
    assert call.credential is not None and call.credential.id == "cred-alice-1"
    h = f.request.headers
    assert h["X-Consumer-Username"] == "alice"
    assert h["X-Consumer-Custom-ID"] == "alice-cid"
    assert h["X-Consumer-ID"] == "5f1c1b2e-0000-4000-8000-000000000001"
    assert h["X-Credential-Identifier"] == "cred-alice-1"
    assert "X-Anonymous-Consumer" not in h
    # without hide_credentials the key goes on (Kong)
    assert h["apikey"] == KEY


def test_consumer_headers_cannot_be_spoofed() -> None:
    spoofed = {
        "X-Consumer-Username": "admin",
        "X-Consumer-ID": "admin-id",
        "X-Credential-Identifier": "admin-cred",
        "X-Anonymous-Consumer": "true",
    }
    f = flow(headers={"apikey": BOB_KEY, **spoofed})
    call = run(gateway(), f)
    assert call.consumer.custom_id == "bob-cid"
    h = f.request.headers
    assert h["X-Consumer-Custom-ID"] == "bob-cid"
    for name in spoofed:  # bob has no username, id or credential id
        assert name not in h


@pytest.mark.parametrize(
    "where, make",
    [
        ("header", lambda: flow(headers={"apikey": KEY})),
        ("query", lambda: flow(path=f"/v1/chat/completions?apikey={KEY}")),
        ("bearer", lambda: flow(headers={"Authorization": f"Bearer {KEY}"})),
        ("body", lambda: flow(body=json.dumps({"model": "m", "apikey": KEY}).encode())),
    ],
)
def test_key_from_each_place(where: str, make: Any) -> None:
    gw = gateway("{key_names: [apikey, authorization], key_in_body: true}")
    f = make()
    call = run(gw, f)
    assert f.response is None, error_of(f)
    assert call.consumer.username == "alice"


def test_key_in_body_waits_for_the_body() -> None:
    gw = gateway("{key_in_body: true}")
    f = flow(body=json.dumps({"model": "m", "apikey": KEY}).encode())
    Router(gw).requestheaders(f)
    policy = key_auth.Policy(gw)
    policy.requestheaders(f)
    call = gw.calls.get(f)
    assert f.response is None and call.consumer is None  # not decided yet
    policy.request(f)
    assert call.consumer.username == "alice"
    # the body was parsed once, for the plugins after this one too
    assert call.body == {"model": "m", "apikey": KEY}


def test_key_in_headers_is_decided_before_the_body() -> None:
    gw = gateway("{key_in_body: true}")
    f = flow(headers={"apikey": KEY})
    Router(gw).requestheaders(f)
    key_auth.Policy(gw).requestheaders(f)
    assert gw.calls.get(f).consumer.username == "alice"


def test_missing_key_without_key_in_body_answers_before_the_body() -> None:
    gw = gateway()
    f = flow()
    Router(gw).requestheaders(f)
    key_auth.Policy(gw).requestheaders(f)
    assert f.response is not None and f.response.status_code == 401


@pytest.mark.parametrize(
    "ctype, body",
    [
        ("application/x-www-form-urlencoded", f"model=m&apikey={KEY}".encode()),
        (
            "multipart/form-data; boundary=XyZ",
            b'--XyZ\r\nContent-Disposition: form-data; name="apikey"\r\n\r\n'
            + KEY.encode()
            + b"\r\n--XyZ--\r\n",
        ),
    ],
)
def test_key_in_form_bodies(ctype: str, body: bytes) -> None:
    f = flow(ctype=ctype, body=body)
    call = run(gateway("{key_in_body: true}"), f)
    assert f.response is None, error_of(f)
    assert call.consumer.username == "alice"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_unreadable_body_means_no_key(body: bytes) -> None:
    f = flow(body=body)
    run(gateway("{key_in_body: true}"), f)
    assert f.response.status_code == 401
    assert error_of(f)["code"] == "missing_api_key"


@pytest.mark.parametrize("presented", [None, "wrong-key"])
def test_anonymous_when_authentication_fails(presented: str | None) -> None:
    f = flow(headers={"apikey": presented} if presented else None)
    call = run(gateway("{anonymous: guest}"), f)
    assert f.response is None
    assert call.consumer.username == "guest" and call.credential is None
    assert f.request.headers["X-Anonymous-Consumer"] == "true"
    assert f.request.headers["X-Consumer-Username"] == "guest"


def test_anonymous_does_not_replace_a_good_key() -> None:
    f = flow(headers={"apikey": KEY})
    call = run(gateway("{anonymous: guest}"), f)
    assert call.consumer.username == "alice"
    assert "X-Anonymous-Consumer" not in f.request.headers


@pytest.mark.parametrize("name", ["alice-cid", "5f1c1b2e-0000-4000-8000-000000000001"])
def test_anonymous_by_custom_id_or_id(name: str) -> None:
    f = flow()
    call = run(gateway(f"{{anonymous: {name}}}"), f)
    assert call.consumer.username == "alice" and call.credential is None


@pytest.mark.parametrize("run_on_preflight, status", [(True, 401), (False, None)])
def test_preflight(run_on_preflight: bool, status: int | None) -> None:
    gw = gateway(f"{{run_on_preflight: {str(run_on_preflight).lower()}}}")
    f = flow(method="OPTIONS", body=b"", ctype=None)
    f.request.headers["Access-Control-Request-Method"] = "POST"
    f.request.headers["Origin"] = "https://app.example"
    call = run(gw, f)
    assert (f.response.status_code if f.response else None) == status
    assert call.consumer is None


# ----------------------------------------------------------------- hide_credentials


def test_hide_credentials_header() -> None:
    f = flow(headers={"apikey": KEY, "x-other": "kept"})
    run(gateway("{hide_credentials: true}"), f)
    assert "apikey" not in f.request.headers
    assert f.request.headers["x-other"] == "kept"


def test_hide_credentials_bearer() -> None:
    f = flow(headers={"Authorization": f"Bearer {KEY}"})
    call = run(gateway("{hide_credentials: true, key_names: [authorization]}"), f)
    assert call.consumer.username == "alice"
    assert "authorization" not in f.request.headers


def test_hide_credentials_query_keeps_the_other_parameters_as_sent() -> None:
    f = flow(path=f"/v1/chat/completions?a=1%2B2&apikey={KEY}&b=x+y")
    call = run(gateway("{hide_credentials: true}"), f)
    assert call.consumer.username == "alice"
    assert f.request.path == "/v1/chat/completions?a=1%2B2&b=x+y"
    f = flow(path=f"/v1/chat/completions?apikey={KEY}")
    run(gateway("{hide_credentials: true}"), f)
    assert f.request.path == "/v1/chat/completions"


def test_hide_credentials_json_body() -> None:
    f = flow(body=json.dumps({"model": "m", "apikey": KEY, "n": 1}).encode())
    call = run(gateway("{hide_credentials: true, key_in_body: true}"), f)
    assert call.consumer.username == "alice"
    assert json.loads(f.request.content) == {"model": "m", "n": 1}
    assert call.body == {"model": "m", "n": 1}  # what ai-proxy will send


def test_hide_credentials_strips_the_body_field_even_when_the_key_was_a_header() -> None:
    """Kong clears the name everywhere it may be, not just where it was found."""
    f = flow(headers={"apikey": KEY}, body=json.dumps({"model": "m", "apikey": KEY}).encode())
    run(gateway("{hide_credentials: true, key_in_body: true}"), f)
    assert "apikey" not in f.request.headers
    assert json.loads(f.request.content) == {"model": "m"}


def test_hide_credentials_form_body() -> None:
    f = flow(ctype="application/x-www-form-urlencoded", body=f"a=%C3%A9&apikey={KEY}&b=2".encode())
    call = run(gateway("{hide_credentials: true, key_in_body: true}"), f)
    assert call.consumer.username == "alice"
    assert f.request.content == b"a=%C3%A9&b=2"


def test_hide_credentials_multipart_body_keeps_the_other_parts() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="apikey"\r\n\r\n'
        + KEY.encode()
        + b'\r\n--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b"--XyZ--\r\n"
    )
    f = flow(ctype="multipart/form-data; boundary=XyZ", body=body)
    call = run(gateway("{hide_credentials: true, key_in_body: true}"), f)
    assert call.consumer.username == "alice"
    out = f.request.content
    assert KEY.encode() not in out
    assert b'filename="a.wav"' in out and b"Content-Type: audio/wav" in out
    assert dict(f.request.multipart_form.items()) == {b"file": b"RIFF....", b"model": b"whisper-1"}


def test_hide_credentials_strips_a_wrong_key_too() -> None:
    f = flow(headers={"apikey": "wrong"})
    run(gateway("{hide_credentials: true, anonymous: guest}"), f)
    assert "apikey" not in f.request.headers


def test_without_hide_credentials_the_request_is_untouched() -> None:
    path = f"/v1/chat/completions?apikey={KEY}"
    body = json.dumps({"model": "m", "apikey": KEY}).encode()
    f = flow(path=path, body=body)
    run(gateway("{key_in_body: true}"), f)
    assert f.request.path == path and f.request.content == body


# --------------------------------------------------------------------- the record


def test_record_names_the_consumer_and_never_holds_a_key() -> None:
    gw = gateway()
    f = flow(path=f"/v1/chat/completions?apikey={KEY}")
    call = run(gw, f)
    record = build_record(call, f)
    for finish in call.on_finish:
        finish(call, record)
    data = json.dumps(record.to_dict())
    assert record.to_dict()["consumer"]["username"] == "alice"
    assert KEY not in data


@pytest.mark.parametrize(
    "headers_, path",
    [
        ({"x-my-key": "sk-wrong-but-secret"}, "/v1/chat/completions"),
        (None, "/v1/chat/completions?x-my-key=sk-wrong-but-secret&keep=1"),
    ],
)
def test_a_wrong_key_is_not_recorded_either(headers_: Any, path: str) -> None:
    """A wrong key is no config secret, yet it may be a real key of something else."""
    gw = gateway("{key_names: [x-my-key]}")
    f = flow(path=path, headers=headers_)
    call = run(gw, f)
    assert f.response.status_code == 401
    record = build_record(call, f)
    for finish in call.on_finish:
        finish(call, record)
    data = json.dumps(record.to_dict())
    assert "sk-wrong-but-secret" not in data
    assert "[REDACTED]" in data
    if "keep=1" in path:
        assert record.request["uri"].endswith("&keep=1")


# ------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "keyauth, message",
    [
        ("{anonymous: nobody}", "config.anonymous: anonymous consumer 'nobody' is not configured"),
        ("{key_names: []}", "config.key_names: key_names needs at least one key name"),
        ("{key_names: ['x y']}", "key name 'x y' may only contain letters, digits, '_' and '-'"),
        ("{key_names: ['x:y']}", "key name 'x:y' may only contain"),
        (
            "{key_in_header: false, key_in_query: false}",
            "key-auth has nowhere to look for the key",
        ),
        ("{realm: 'a\"b'}", "realm 'a\"b' cannot hold quotes"),
        ("{hide_credential: true}", "unknown field 'hide_credential' (did you mean 'hide_credentials'?)"),
        ("{key_in_body: maybe}", "config.key_in_body: "),
    ],
)  # fmt: skip
def test_config_errors(keyauth: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_text(config(keyauth), "test.yaml")
    assert message in str(e.value)
    assert "test.yaml:" in str(e.value)


def test_anonymous_naming_nobody_is_caught_in_every_scope() -> None:
    text = (
        config("{}")
        + """
plugins:
  - name: key-auth
    service: llm
    config: {anonymous: ghost}
"""
    )
    with pytest.raises(ConfigError) as e:
        load_text(text, "t.yaml")
    assert "plugins[0].config.anonymous: anonymous consumer 'ghost' is not configured" in str(
        e.value
    )


def test_defaults_are_kongs() -> None:
    c = Config()
    assert c.key_names == ["apikey"]
    assert (c.key_in_header, c.key_in_query, c.key_in_body) == (True, True, False)
    assert (c.hide_credentials, c.anonymous, c.run_on_preflight, c.realm) == (
        False,
        None,
        True,
        None,
    )
    assert Config(anonymous="").anonymous is None  # Kong's "" is none
    assert key_auth.PRIORITY == 1250 and key_auth.CONSUMER_SCOPE is False


def test_key_auth_runs_in_kongs_order() -> None:
    from addons import policies

    names = [m.NAME for m in policies.modules()]
    assert "key-auth" in names
    for m in policies.modules():  # higher priority first
        if m.NAME != "key-auth":
            before = names.index(m.NAME) < names.index("key-auth")
            assert before == (m.PRIORITY > key_auth.PRIORITY)


def test_the_documented_example_loads_and_authenticates(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policies" / "key-auth.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("ALICE_API_KEY", "sk-doc-alice")
    monkeypatch.setenv("CI_API_KEY", "sk-doc-ci")
    gw = Gateway()
    gw.config = load_text(example, "docs/policies/key-auth.md")
    f = flow(headers={"Authorization": "Bearer sk-doc-alice"})
    call = run(gw, f)
    assert call.consumer.username == "alice" and call.credential.id == "alice-laptop"
    assert "authorization" not in f.request.headers  # hide_credentials
    f = flow(headers={"Authorization": "Bearer sk-not-a-key"})
    run(gw, f)
    assert f.response.status_code == 401
