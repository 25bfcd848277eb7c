"""Observe mode limited to the LLM hosts with mitmproxy's `allow_hosts`, as the README
sets it up: the regex from `python -m addons.llm_hosts --allow-hosts --add HOST=PROVIDER`,
and the clients trusting the bundle of `python -m addons.llm_hosts --ca-bundle` (public
roots + mitmproxy's CA) through SSL_CERT_FILE.

A real mitmdump in regular mode; HTTPS fakes of api.openai.com, of a host of the
user's (`llm.internal`) and of a host that is none of them (`example.org`, whose
self-signed certificate stands for a certificate of the public roots). An LLM host is
intercepted (the client sees mitmproxy's certificate) and its calls recorded; the other
host is tunnelled untouched: its own certificate, its own bytes, no flow, no record.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO, Gateway, free_port
from tests.e2e.test_observe import CONFIG, Sent, _wait_port
from tests.fakes.tls import TLSFakeUpstream, redirect_script
from tests.fakes.upstream import Received, Reply, chat_completion

KEY = "sk-test-allow-hosts-0123456789"
HOSTS = ["api.openai.com", "llm.internal", "example.org"]
PAGE = b'{"model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 1}}'


def llm_hosts(*args: str) -> str:
    """`python -m addons.llm_hosts ARGS`, as the README runs it: its output."""
    done = subprocess.run(
        [sys.executable, "-m", "addons.llm_hosts", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class Setup:
    def __init__(self, gw: Gateway, port: int, fake: TLSFakeUpstream, bundle: Path) -> None:
        self.gw = gw
        self.proxy = f"http://127.0.0.1:{port}"
        self.fake = fake
        self.bundle = bundle
        self.mitm_ca = gw.tmp / "confdir" / "mitmproxy-ca-cert.pem"

    def client(self, *cafiles: Path) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(cafiles[0]))
        for extra in cafiles[1:]:
            ctx.load_verify_locations(cafile=str(extra))
        return httpx.Client(proxy=self.proxy, verify=ctx, trust_env=False, timeout=20)

    def app(self) -> httpx.Client:
        """An app trusting SSL_CERT_FILE=bundle, where the fake's certificate stands in
        for the public root that signs example.org's."""
        return self.client(self.bundle, self.fake.cert_path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("allow-hosts")
    fake = TLSFakeUpstream(HOSTS).start()
    allow = llm_hosts("--allow-hosts", "--add", "llm.internal=openai")
    script = redirect_script({h: ("127.0.0.1", fake.port) for h in HOSTS}, tmp)
    port = free_port()
    gw = Gateway(
        tmp,
        CONFIG,
        extra=["--mode", f"regular@127.0.0.1:{port}", "-s", str(script)]
        + ["--set", "ssl_insecure=true", "--set", f"allow_hosts={allow}"]
        + ["--set", "llmitm_observe_hosts=llm.internal=openai"],
    )
    try:
        gw.wait_ready()
        _wait_port(port, gw)
        bundle = tmp / "ca-bundle.pem"
        llm_hosts("--ca-bundle", str(bundle), "--confdir", str(tmp / "confdir"))
        yield Setup(gw, port, fake, bundle)
    finally:
        gw.stop()
        fake.stop()


def answer(req: Received) -> Reply:
    host = req.headers.get("host", "")
    if host == "example.org":
        return Reply(200, {"content-type": "application/json"}, PAGE)
    return Reply.json(chat_completion("Paris.", "gpt-4o-mini-2024-07-18", prompt_tokens=17))


def test_an_llm_host_is_intercepted_and_recorded(setup: Setup) -> None:
    setup.fake.reply(answer)
    with setup.app() as http:
        sdk = openai.OpenAI(api_key=KEY, http_client=http, max_retries=0)
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Capital of France?"}],
            extra_headers={"x-session-id": "allowed"},
        )
    rec = setup.gw.record(session_id="allowed")
    assert rec["route"] == {"name": "observed"}
    assert rec["ai"]["proxy"]["usage"]["prompt_tokens"] == 17
    # intercepted: mitmproxy's CA alone verifies the certificate the client got
    with setup.client(setup.mitm_ca) as http:
        r = http.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"x-session-id": "allowed-2"},
        )
    assert r.status_code == 200
    setup.gw.record(session_id="allowed-2")


def test_a_host_added_with_add_is_intercepted_too(setup: Setup) -> None:
    setup.fake.reply(answer)
    with setup.app() as http:
        sdk = openai.OpenAI(
            api_key=KEY, base_url="https://llm.internal/v1", http_client=http, max_retries=0
        )
        sdk.chat.completions.create(
            model="house-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-session-id": "added"},
        )
    ai = setup.gw.record(session_id="added")["ai"]["proxy"]
    assert ai["meta"]["upstream_url"] == "https://llm.internal/v1/chat/completions"


def test_other_hosts_are_tunnelled_untouched(setup: Setup) -> None:
    sent = Sent(answer)
    setup.fake.reply(sent)
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}'
    with setup.app() as http:  # the bundle's public roots: the app works as without proxy
        r = http.post(
            "https://example.org/v1/chat/completions",
            content=body,
            headers={"x-session-id": "tunnelled"},
        )
    assert r.content == PAGE == sent.bodies[-1]
    assert setup.fake.last().body == body
    # the certificate the client got is example.org's own: its root alone verifies it,
    # and mitmproxy's CA does not
    with setup.client(setup.fake.cert_path) as http:
        assert http.post("https://example.org/x", content=b"{}").content == PAGE
    with setup.client(setup.mitm_ca) as http, pytest.raises(httpx.ConnectError):
        http.post("https://example.org/x", content=b"{}")
    # and it left no record: an observed call made after it is the last one
    with setup.app() as http:
        http.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"x-session-id": "after"},
        )
    setup.gw.record(session_id="after")
    sessions = {r["context"].get("session_id") for r in setup.gw.records()}
    assert "tunnelled" not in sessions
    assert json.dumps(setup.gw.records()).count("example.org") == 0
