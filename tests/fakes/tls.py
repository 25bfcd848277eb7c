"""HTTPS fakes of the providers' public hosts, for forward-proxy (observe mode) tests.

`TLSFakeUpstream` is `FakeUpstream` behind TLS with a self-signed certificate (the
gateway's mitmproxy runs with `ssl_insecure=true` on its upstream side). One fake serves
every host: handlers dispatch on the `Host` header, which keeps the name the client
asked for (`api.openai.com`). `redirect_script` writes a test-only mitmproxy script that
sends the connections for those names to the fake's 127.0.0.1 port without DNS, in the
`server_connect` hook: the request (its host, the Host header, the TLS SNI) is untouched,
so the gateway records the original host.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.upstream import FakeUpstream


def self_signed(names: Iterable[str], directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `names` (and 127.0.0.1): (cert.pem, key.pem)."""
    import ipaddress

    names = list(names) or ["localhost"]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "fake-cert.pem"
    key_path = directory / "fake-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TLSFakeUpstream(FakeUpstream):
    """The scriptable fake upstream, over HTTPS (HTTP/1.1) on 127.0.0.1."""

    def __init__(self, names: Iterable[str] = ("localhost",)) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory(prefix="llmitm-tls-")
        cert, key = self_signed(names, Path(self._dir.name))
        self.cert_path = cert
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["http/1.1"])

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        super().stop()
        self._dir.cleanup()


_SCRIPT = '''"""Test only: connections to these hosts go to local fakes (no DNS)."""

TARGETS = {targets!r}


class Redirect:
    def server_connect(self, data):
        address = data.server.address
        if address is None:
            return
        host, port = address[0], address[1]
        target = TARGETS.get(f"{{host}}:{{port}}") or TARGETS.get(host)
        if target is not None:
            data.server.address = (target[0], target[1])


addons = [Redirect()]
'''


def redirect_script(targets: dict[str, tuple[str, int]], directory: Path) -> Path:
    """A mitmproxy script sending `host` or `host:port` to `(ip, port)`."""
    path = directory / "redirect_fakes.py"
    path.write_text(_SCRIPT.format(targets=targets))
    return path
