"""key-auth end to end: a real mitmdump, the `openai` SDK as the client.

What a client sees (401s in OpenAI's error shape, which the SDK raises as
`openai.AuthenticationError`), where the key may travel (Authorization: Bearer, the
`apikey` header, the query string, the body), what reaches the upstream (a fake OpenAI
server), and what the call records hold: the consumer, never the key.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion, chat_stream
from tests.policy_helpers import FAKE_OPENAI_MODEL, MessageTag, mock_chat_config, module_gateway

ALICE_KEY = "sk-alice-e2e-7f3a9c1d5b"  # from the environment, through a vault reference
BOB_KEY = "sk-bob-e2e-2e8d4f6a0c"
WRONG_KEY = "sk-wrong-e2e-0000000000"

MOCK = "{route_type: llm/v1/chat, model: {provider: mock, name: mock-gpt}}"

CONFIG = f"""
_format_version: "3.0"
services:
  - name: llm
    routes:
      - name: sdk
        paths: ["/sdk/v1/chat/completions"]
        plugins:
          - name: key-auth
            config: {{key_names: [apikey, authorization], realm: llmitm}}
          - name: ai-proxy
            config: {MOCK}
      - name: apikey
        paths: ["/apikey/v1/chat/completions"]
        plugins:
          - name: key-auth
          - name: ai-proxy
            config: {MOCK}
      - name: body
        paths: ["/body/v1/chat/completions"]
        plugins:
          - name: key-auth
            config: {{key_in_body: true, key_in_header: false, key_in_query: false}}
          - name: ai-proxy
            config: {MOCK}
      - name: anon
        paths: ["/anon/v1/chat/completions"]
        plugins:
          - name: key-auth
            config: {{anonymous: guest}}
          - name: ai-proxy
            config: {MOCK}
      - name: hidden
        paths: ["/hidden/v1/chat/completions"]
        plugins:
          - name: key-auth
            config:
              key_names: [apikey, authorization]
              key_in_body: true
              hide_credentials: true
          # no provider auth of its own: ai-proxy would forward the client's headers
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {FAKE_OPENAI_MODEL}
              logging: {{log_payloads: true}}
      - name: shown
        paths: ["/shown/v1/chat/completions"]
        plugins:
          - name: key-auth
            config: {{key_in_body: true}}
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {FAKE_OPENAI_MODEL}
              logging: {{log_payloads: true}}
consumers:
  - username: alice
    custom_id: alice-cid
    keyauth_credentials:
      - {{key: "{{vault://env/LLMITM_ALICE_KEY}}", id: alice-cred}}
  - username: bob
    keyauth_credentials:
      - {{key: {BOB_KEY}}}
  - username: guest
plugins:
  - name: file-log
    config: {{path: "{{records}}"}}
"""

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {"LLMITM_ALICE_KEY": ALICE_KEY}
    with module_gateway(tmp_path_factory, CONFIG, upstream, env=env) as g:
        yield g
    # whatever the tests sent, no sink holds a key
    text = g.records_path.read_text()
    for key in (ALICE_KEY, BOB_KEY, WRONG_KEY):
        assert key not in text


TAG = MessageTag()


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG.new()


def client(gw: Gateway, route: str, api_key: str = "sk-client-unused", **kw: Any) -> openai.OpenAI:
    return TAG.client(gw, route, api_key, default_headers=kw.pop("headers", None), **kw)


my_record = TAG.record


def chat(c: openai.OpenAI, model: str = "mock-gpt", **kw: Any) -> str:
    answer = c.chat.completions.create(model=model, messages=MESSAGES, **kw)
    return answer.choices[0].message.content or ""


# ------------------------------------------------------------------------ refused


def test_no_key_is_an_authentication_error(gw: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        chat(client(gw, "apikey"))  # the SDK's Bearer is not where this route looks
    err = e.value
    assert err.status_code == 401
    assert err.code == "missing_api_key"
    assert err.body == {
        "message": "No API key found in request",
        "type": "authentication_error",
        "param": None,
        "code": "missing_api_key",
    }
    assert err.response.headers["www-authenticate"] == "Key"
    record = my_record(gw)
    assert record["response"]["status"] == 401
    assert record["error"]["source"] == "gateway"
    assert record["consumer"] is None


@pytest.mark.parametrize("value", ["Bearer", "bearer"])
def test_empty_bearer_is_no_key(gw: Gateway, value: str) -> None:
    """The SDK refuses an empty api_key; a raw client can still send an empty Bearer."""
    r = httpx.post(
        f"{gw.url}/sdk/v1/chat/completions",
        headers={"Authorization": value},
        json={"model": "mock-gpt", "messages": MESSAGES},
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["www-authenticate"] == 'Key realm="llmitm"'


@pytest.mark.parametrize("how", ["bearer", "header", "query"])
def test_wrong_key_is_unauthorized(gw: Gateway, how: str) -> None:
    if how == "bearer":
        c = client(gw, "sdk", api_key=WRONG_KEY)
    elif how == "header":
        c = client(gw, "sdk", headers={"apikey": WRONG_KEY})
    else:
        c = client(gw, "sdk", default_query={"apikey": WRONG_KEY})
    with pytest.raises(openai.AuthenticationError) as e:
        chat(c)
    assert e.value.body["message"] == "Unauthorized"
    assert e.value.code == "invalid_api_key"
    assert e.value.response.headers["www-authenticate"] == 'Key realm="llmitm"'
    # a wrong key is not a config secret, yet the record does not keep it either
    assert WRONG_KEY not in json.dumps(my_record(gw))


def test_refused_before_the_body_is_sent_upstream(gw: Gateway, fake: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        chat(client(gw, "hidden", api_key=WRONG_KEY), model="gpt-4o-mini")
    assert fake.received == []


# ---------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    "route, how",
    [
        ("sdk", "bearer"),
        ("sdk", "header"),
        ("sdk", "query"),
        ("apikey", "header"),
        ("apikey", "query"),
        ("body", "body"),
    ],
)
def test_right_key_from_each_place(gw: Gateway, route: str, how: str) -> None:
    kw: dict[str, Any] = {}
    if how == "bearer":
        c = client(gw, route, api_key=ALICE_KEY)
    elif how == "header":
        c = client(gw, route, headers={"apikey": ALICE_KEY})
    elif how == "query":
        c = client(gw, route, default_query={"apikey": ALICE_KEY})
    else:
        c = client(gw, route)
        kw["extra_body"] = {"apikey": ALICE_KEY}
    assert chat(c, **kw) == "hello there"
    record = my_record(gw)
    assert record["consumer"]["username"] == "alice"
    assert record["status"] == "ok"
    assert ALICE_KEY not in json.dumps(record)


def test_body_route_ignores_headers(gw: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        chat(client(gw, "body", api_key=ALICE_KEY, headers={"apikey": ALICE_KEY}))
    assert e.value.code == "missing_api_key"


def test_keys_name_their_own_consumer(gw: Gateway) -> None:
    assert chat(client(gw, "sdk", api_key=BOB_KEY)) == "hello there"
    assert my_record(gw)["consumer"]["username"] == "bob"


@pytest.mark.parametrize("key", [None, WRONG_KEY, BOB_KEY])
def test_anonymous(gw: Gateway, key: str | None) -> None:
    c = client(gw, "anon", headers={"apikey": key} if key else {})
    assert chat(c) == "hello there"
    expected = "bob" if key == BOB_KEY else "guest"
    assert my_record(gw)["consumer"]["username"] == expected


def test_preflight_is_authenticated_by_default(gw: Gateway) -> None:
    r = httpx.options(
        f"{gw.url}/sdk/v1/chat/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 401


# -------------------------------------------------------------- hide_credentials


def _no_key_upstream(fake: FakeUpstream, key: str) -> None:
    sent = fake.last()
    assert key not in sent.path
    assert key not in json.dumps(sent.headers)
    assert key.encode() not in sent.body


@pytest.mark.parametrize("how", ["bearer", "header", "query", "body"])
def test_hide_credentials_keeps_the_key_from_the_upstream(
    gw: Gateway, fake: FakeUpstream, how: str
) -> None:
    fake.reply(Reply.json(chat_completion("hi alice")))
    kw: dict[str, Any] = {}
    if how == "bearer":
        c = client(gw, "hidden", api_key=ALICE_KEY)
    elif how == "header":
        c = client(gw, "hidden", headers={"apikey": ALICE_KEY})
    elif how == "query":
        c = client(gw, "hidden", default_query={"apikey": ALICE_KEY, "keep": "1"})
    else:
        c = client(gw, "hidden")
        kw["extra_body"] = {"apikey": ALICE_KEY}
    assert chat(c, model="gpt-4o-mini", **kw) == "hi alice"
    _no_key_upstream(fake, ALICE_KEY)
    sent = fake.last()
    # the upstream learns who the consumer is (Kong's headers), not the key
    assert sent.headers["x-consumer-username"] == "alice"
    assert sent.headers["x-consumer-custom-id"] == "alice-cid"
    assert sent.headers["x-credential-identifier"] == "alice-cred"
    assert "x-anonymous-consumer" not in sent.headers
    assert "apikey" not in sent.json()
    if how == "bearer":
        assert "authorization" not in sent.headers
    record = my_record(gw)
    assert record["consumer"]["username"] == "alice"
    assert ALICE_KEY not in json.dumps(record)
    assert "apikey" not in record["ai"]["proxy"]["payload"]["request"]


def test_hide_credentials_on_a_stream(gw: Gateway, fake: FakeUpstream) -> None:
    fake.reply(Reply.sse(chat_stream(["one ", "two"])))
    stream = client(gw, "hidden", api_key=BOB_KEY).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == "one two"
    _no_key_upstream(fake, BOB_KEY)
    record = my_record(gw)
    assert record["consumer"]["username"] == "bob"
    assert record["ai"]["proxy"]["meta"]["request_mode"] == "stream"
    assert BOB_KEY not in json.dumps(record)


def test_without_hide_credentials_the_upstream_gets_the_key_but_no_record_does(
    gw: Gateway, fake: FakeUpstream
) -> None:
    """Kong's behaviour: the key goes on to the upstream. It is still never recorded."""
    fake.reply(Reply.json(chat_completion()))
    c = client(gw, "shown", headers={"apikey": ALICE_KEY}, default_query={"apikey": ALICE_KEY})
    chat(c, model="gpt-4o-mini", extra_body={"apikey": ALICE_KEY})
    sent = fake.last()
    assert sent.headers["apikey"] == ALICE_KEY
    assert sent.headers["x-consumer-username"] == "alice"
    record = my_record(gw)
    assert record["consumer"]["username"] == "alice"
    assert record["request"]["headers"]["apikey"] == "[REDACTED]"
    assert record["request"]["uri"].endswith("?apikey=[REDACTED]")
    assert record["ai"]["proxy"]["payload"]["request"]["apikey"] == "[REDACTED]"
    assert ALICE_KEY not in json.dumps(record)


# ----------------------------------------------------------------- every sink


def test_consumer_in_the_embedded_store(gw: Gateway) -> None:
    chat(client(gw, "sdk", api_key=BOB_KEY))
    my_record(gw)  # the file sink has it
    deadline = time.time() + 5
    rows: list[tuple[Any, ...]] = []
    while time.time() < deadline:
        if gw.store_path.exists():
            with sqlite3.connect(f"file:{gw.store_path}?mode=ro", uri=True) as db:
                rows = db.execute(
                    "SELECT consumer, record FROM calls WHERE record LIKE ?",
                    (f"%{TAG.id}%",),
                ).fetchall()
            if rows:
                break
        time.sleep(0.05)
    assert rows, "the call never reached the embedded store"
    consumer, record = rows[0]
    assert consumer == "bob"
    assert json.loads(record)["consumer"]["username"] == "bob"
    assert BOB_KEY not in record


# -------------------------------------------------------------------- hot reload

RELOAD = mock_chat_config(
    {"key-auth": "{key_names: [authorization]}"},
    tail=f"""
consumers:
  - username: alice
    keyauth_credentials: [{{key: {ALICE_KEY}}}]
BOB
""",
)
BOB = f"""  - username: bob
    keyauth_credentials: [{{key: {BOB_KEY}}}]
"""


def test_hot_reload_that_removes_a_consumer_revokes_its_key(start_gateway: Any) -> None:
    gw = start_gateway(RELOAD.replace("BOB\n", BOB))

    def post(key: str) -> int:
        return httpx.post(
            f"{gw.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock-gpt", "messages": MESSAGES},
            timeout=5,
        ).status_code

    assert post(BOB_KEY) == 200 and post(ALICE_KEY) == 200
    gw.write_config(RELOAD.replace("BOB\n", ""))
    deadline = time.time() + 10
    while post(BOB_KEY) != 401:
        assert time.time() < deadline, f"bob's key still accepted after the reload:\n{gw.log()}"
        time.sleep(0.1)
    assert post(ALICE_KEY) == 200
    # a reload with an anonymous consumer that does not exist is refused: the last good
    # config stays
    gw.write_config(
        RELOAD.replace("BOB\n", "").replace("[authorization]}", "[authorization], anonymous: bob}")
    )
    deadline = time.time() + 10
    while "anonymous consumer 'bob' is not configured" not in gw.log():
        assert time.time() < deadline, gw.log()
        time.sleep(0.1)
    assert post(BOB_KEY) == 401 and post(ALICE_KEY) == 200
