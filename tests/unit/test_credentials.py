"""addons/credentials: AWS credentials for SigV4 from the route, the environment or
AWS's chain; a clear error when there are none. (Google tokens are minted against a
fake token endpoint in tests/e2e/test_gemini.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from addons.credentials import Credentials
from providers.base import AWSCredentials, ProviderError
from providers.options import AuthConfig


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """An environment where AWS's chain finds nothing (no files, no metadata service)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def test_keys_in_the_route_win(no_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    auth = AuthConfig(
        aws_access_key_id="AKIDROUTE", aws_secret_access_key="route-secret", aws_session_token="t"
    )
    assert await Credentials().get("aws", auth) == AWSCredentials("AKIDROUTE", "route-secret", "t")


async def test_the_environment_through_botocores_chain(
    no_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    store = Credentials()
    first = await store.get("aws", AuthConfig())
    assert first == AWSCredentials("AKIDENV", "env-secret", "env-token")
    # resolved once, then served from the cache
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCHANGED")
    assert await store.get("aws", AuthConfig()) == first


async def test_a_profile_file(no_aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[work]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "work")
    got = await Credentials().get("aws", AuthConfig())
    assert got == AWSCredentials("AKIDFILE", "file-secret", None)


async def test_no_credentials_anywhere_is_a_clear_error(no_aws: None) -> None:
    with pytest.raises(ProviderError) as e:
        await Credentials().get("aws", AuthConfig())
    assert e.value.status == 500
    assert "no AWS credentials" in e.value.message
    assert "aws_access_key_id" in e.value.message


async def test_service_account_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCP_SERVICE_ACCOUNT", raising=False)
    with pytest.raises(ProviderError) as e:
        await Credentials().get("gcp", AuthConfig(gcp_use_service_account=True))
    assert "gcp_service_account_json" in e.value.message
    assert "GCP_SERVICE_ACCOUNT" in e.value.message


async def test_an_unusable_service_account_json_is_named_without_its_content() -> None:
    auth = AuthConfig(
        gcp_use_service_account=True, gcp_service_account_json='{"private_key": "SECRET"}'
    )
    with pytest.raises(ProviderError) as e:
        await Credentials().get("gcp", auth)
    assert "service account JSON is not usable" in e.value.message
    assert "SECRET" not in e.value.message


def test_a_config_with_bedrock_imports_botocore_off_the_event_loop(tmp_path: Path) -> None:
    """botocore takes a third of a second to import: the gateway imports it in a thread
    when a config with a Bedrock route is applied, not in the first call's hook."""
    import os
    import subprocess
    import sys

    from tests.unit.conftest import CONFIGS

    script = f"""
import asyncio, sys, threading, time
import addons.state
from addons.config import load_file
assert "botocore.auth" not in sys.modules
importer = []
class Spy:  # notes the thread that imports botocore.auth, finds nothing itself
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "botocore.auth":
            importer.append(threading.current_thread() is threading.main_thread())
sys.meta_path.insert(0, Spy)
async def main():
    addons.state.Gateway().apply(load_file({str(CONFIGS / "bedrock.yaml")!r}))
    deadline = time.time() + 30
    while "botocore.session" not in sys.modules and time.time() < deadline:
        await asyncio.sleep(0.01)
    print(importer, "botocore.session" in sys.modules)
asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # the config's file-log writes under logs/
        env={**os.environ, "PYTHONPATH": str(CONFIGS.parent)},
    )
    assert out.stdout.split() == ["[False]", "True"], out.stdout + out.stderr


async def test_a_google_token_is_minted_once_shared_and_minted_again_when_it_expires() -> None:
    """Vertex: concurrent calls wait for one token; the token is reused while valid, and
    a new one is minted (against the fake token endpoint, which checks the signed JWT)
    once google-auth says the old one is about to expire."""
    import asyncio
    import datetime

    from tests.fakes.gemini import FakeGemini, make_service_account
    from tests.fakes.upstream import FakeUpstream

    upstream = FakeUpstream().start()
    try:
        account = make_service_account(f"{upstream.url}/token")
        fake = FakeGemini(api_key="unused", service_account=account)
        upstream.reply(fake)
        auth = AuthConfig(gcp_use_service_account=True, gcp_service_account_json=account.json)
        creds = Credentials()
        tokens = await asyncio.gather(*(creds.gcp_token(auth) for _ in range(5)))
        assert len(set(tokens)) == 1 and tokens[0] in fake.tokens
        assert fake.token_requests == 1 and fake.token_failures == []
        assert await creds.gcp_token(auth) == tokens[0]
        assert fake.token_requests == 1

        # an hour later: google-auth refreshes a few minutes before the expiry
        google = creds._gcp[account.json]
        google.expiry = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + (
            datetime.timedelta(seconds=30)
        )
        fresh = await creds.gcp_token(auth)
        assert fake.token_requests == 2 and fake.token_failures == []
        assert fresh in fake.tokens and fresh != tokens[0]
        creds.close()
    finally:
        upstream.stop()
