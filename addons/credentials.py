"""Provider credentials that take I/O to obtain: AWS keys for SigV4, Google OAuth tokens.

The provider adapters sign requests with what this module resolves (pure computation);
the resolving itself may read files, call a metadata service or a token endpoint, so it
runs in a worker thread and its result is cached:

- AWS: the route's `auth.aws_access_key_id`/`aws_secret_access_key`(/`aws_session_token`)
  when set, else botocore's standard chain (environment, shared config and credential
  files, SSO, container and instance metadata). Temporary credentials are refreshed by
  botocore when they near expiry; only then does a call wait for a thread.
- GCP: a service account JSON (`auth.gcp_service_account_json`, else the environment
  variable `GCP_SERVICE_ACCOUNT`) from which google-auth mints an access token for the
  `cloud-platform` scope (a signed JWT grant to the account's `token_uri`). The token is
  reused until google-auth says it is no longer valid (a few minutes before expiry).

Concurrent calls that need the same credentials wait for one resolution, not one each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import httpx

from providers.base import AWSCredentials, ProviderError
from providers.options import AuthConfig

log = logging.getLogger(__name__)

GCP_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
GCP_ENV = "GCP_SERVICE_ACCOUNT"


def _credentials_error(message: str) -> ProviderError:
    return ProviderError(500, message, "api_error", "gateway_credentials")


class _HttpxTransport:
    """google-auth's transport interface (`google.auth.transport.Request`) over httpx,
    so that minting a token needs no extra HTTP library. Called in a worker thread."""

    def __init__(self) -> None:
        # trust_env off: an HTTPS_PROXY meant for the apps must not route us through ourselves
        self._client = httpx.Client(trust_env=False, timeout=30.0)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        from google.auth import exceptions

        try:
            r = self._client.request(
                method, url, content=body, headers=headers, timeout=timeout or 30.0
            )
        except httpx.HTTPError as e:
            raise exceptions.TransportError(str(e)) from e
        return _response(r)

    def close(self) -> None:
        self._client.close()


def _response(r: httpx.Response) -> Any:
    from google.auth.transport import Response

    class _Response(Response):
        @property
        def status(self) -> int:
            return r.status_code

        @property
        def headers(self) -> dict[str, str]:
            return dict(r.headers)

        @property
        def data(self) -> bytes:
            return r.content

    return _Response()


class Credentials:
    """Cached, lazily resolved provider credentials, shared by all calls of a gateway."""

    def __init__(self) -> None:
        self._aws: dict[tuple[str, ...], Any] = {}  # key -> botocore credentials
        self._gcp: dict[str, Any] = {}  # service account JSON -> google credentials
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._transport: _HttpxTransport | None = None

    async def get(self, kind: str, auth: AuthConfig) -> Any:
        if kind == "aws":
            return await self.aws(auth)
        if kind == "gcp":
            return await self.gcp_token(auth)
        raise ValueError(f"unknown credential kind {kind!r}")

    def _lock(self, key: tuple[str, ...]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # ------------------------------------------------------------------- AWS

    async def aws(self, auth: AuthConfig) -> AWSCredentials:
        if auth.aws_access_key_id and auth.aws_secret_access_key:
            return AWSCredentials(
                auth.aws_access_key_id, auth.aws_secret_access_key, auth.aws_session_token
            )
        key = ("aws", "chain")
        creds = self._aws.get(key)
        if creds is None or _needs_refresh(creds):
            async with self._lock(key):
                creds = self._aws.get(key)
                if creds is None:
                    creds = await asyncio.to_thread(_aws_chain)
                    self._aws[key] = creds
                if _needs_refresh(creds):
                    frozen = await asyncio.to_thread(creds.get_frozen_credentials)
                    return AWSCredentials(frozen.access_key, frozen.secret_key, frozen.token)
        frozen = creds.get_frozen_credentials()  # no I/O: nothing to refresh
        return AWSCredentials(frozen.access_key, frozen.secret_key, frozen.token)

    # ------------------------------------------------------------------- GCP

    async def gcp_token(self, auth: AuthConfig) -> str:
        info = auth.gcp_service_account_json or os.environ.get(GCP_ENV)
        if not info:
            raise _credentials_error(
                "auth.gcp_use_service_account is set but neither auth.gcp_service_account_json "
                f"nor the {GCP_ENV} environment variable holds a service account"
            )
        creds = self._gcp.get(info)
        if creds is not None and creds.valid:
            return creds.token
        async with self._lock(("gcp", info)):
            creds = self._gcp.get(info)
            if creds is None:
                creds = self._gcp[info] = _gcp_credentials(info)
            if not creds.valid:
                if self._transport is None:
                    self._transport = _HttpxTransport()
                from google.auth.exceptions import GoogleAuthError

                try:
                    await asyncio.to_thread(creds.refresh, self._transport)
                except (GoogleAuthError, ValueError) as e:
                    raise ProviderError(
                        502,
                        f"could not get a Google access token for {creds.service_account_email}:"
                        f" {e}",
                        "api_error",
                        "gateway_credentials",
                    ) from None
                log.info("llmitm: minted a Google access token for %s", creds.signer_email)
            return creds.token

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _needs_refresh(creds: Any) -> bool:
    refresh_needed = getattr(creds, "refresh_needed", None)
    return bool(refresh_needed and refresh_needed())


def _aws_chain() -> Any:
    """botocore's credential chain (reads the environment and files: run in a thread)."""
    try:
        import botocore.session
    except ImportError:
        raise _credentials_error(
            "AWS credentials need botocore: pip install 'llmitm[bedrock]'"
        ) from None
    creds = botocore.session.get_session().get_credentials()
    if creds is None:
        raise _credentials_error(
            "no AWS credentials: set auth.aws_access_key_id and auth.aws_secret_access_key, "
            "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an AWS profile"
        )
    return creds


def _gcp_credentials(info: str) -> Any:
    try:
        from google.oauth2 import service_account
    except ImportError:
        raise _credentials_error(
            "Vertex service accounts need google-auth: pip install 'llmitm[gcp]'"
        ) from None
    try:
        data = json.loads(info)
        return service_account.Credentials.from_service_account_info(data, scopes=GCP_SCOPES)
    except (ValueError, KeyError, TypeError) as e:
        raise _credentials_error(f"the GCP service account JSON is not usable: {e}") from None
