"""The LLM API hosts observe mode recognises, and which of their requests are LLM calls.

A host table maps `host[:port]` patterns to a provider of `providers/` (the provider
names its format: its native parsers read the traffic). `*` in a pattern stands for one
or more characters within one DNS label (`*.openai.azure.com`,
`bedrock-runtime.*.amazonaws.com`, `*-aiplatform.googleapis.com`); a pattern without a
port matches any port. Entries the user configures (`host=provider`, or `host=off` to
stop observing a built-in host) come before the built-in ones, so they win.

`operation()` says whether a request is an LLM call and in which format: the OpenAI
paths (`/chat/completions`, `/completions`, `/embeddings`, `/responses`) are the OpenAI
format on any host (Ollama's `/v1`, Gemini's and Anthropic's OpenAI-compatible
endpoints), other paths are the provider's own operations. `path_operation()` reads
the provider from the path alone, for hosts the table does not know (the service of a
gateway route without ai-proxy). Pure code: no mitmproxy.

    python -m addons.llm_hosts                    # the table
    python -m addons.llm_hosts --allow-hosts      # the regex for mitmproxy's allow_hosts
    python -m addons.llm_hosts --allow-hosts --add llm.internal:8443=openai
                                                  # ... with a host of your own
    python -m addons.llm_hosts --ca-bundle ~/.mitmproxy/llmitm-ca-bundle.pem
                                                  # public roots + mitmproxy's CA, for
                                                  # SSL_CERT_FILE / REQUESTS_CA_BUNDLE

Why a bundle: `SSL_CERT_FILE` (Python's ssl, httpx, the OpenAI and Anthropic SDKs) and
`REQUESTS_CA_BUNDLE` *replace* the trust store. Pointed at mitmproxy's CA alone, every
host mitmproxy does not intercept (all but the LLM hosts, with `allow_hosts`) fails its
certificate check. The bundle holds certifi's public roots and mitmproxy's CA, so both
the intercepted LLM hosts and the tunnelled other hosts verify.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: the built-in table: pattern -> provider (a name of `providers.registry()`)
DEFAULT_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("*.openai.azure.com", "azure"),
    ("*.cognitiveservices.azure.com", "azure"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("aiplatform.googleapis.com", "gemini"),
    ("*-aiplatform.googleapis.com", "gemini"),
    ("bedrock-runtime.*.amazonaws.com", "bedrock"),
    ("bedrock-runtime-fips.*.amazonaws.com", "bedrock"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.mistral.ai", "mistral"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "xai"),
    ("openrouter.ai", "openrouter"),
    ("api.together.xyz", "together"),
    ("api.cerebras.ai", "cerebras"),
    ("127.0.0.1:11434", "ollama"),
    ("localhost:11434", "ollama"),
)

#: the value of a configured entry that removes a host from observation
OFF = "off"

#: the operation of the OpenAI Responses API (no route type of its own in the gateway)
RESPONSES = "responses"

_LABEL = re.compile(r"^[a-z0-9*_-]+$")


@dataclass(frozen=True, slots=True)
class HostEntry:
    pattern: str  # host[:port] as configured, lowercased
    provider: str  # a provider name, or OFF
    host_re: re.Pattern[str]
    port: int | None

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        return self.host_re.fullmatch(host) is not None

    def allow_regex(self) -> str:
        """This entry as a regex over mitmproxy's `host:port` strings (allow_hosts)."""
        port = str(self.port) if self.port is not None else r"\d+"
        return f"^{self.host_re.pattern}:{port}$"


def parse_pattern(pattern: str) -> tuple[re.Pattern[str], int | None]:
    """`host[:port]` -> (host regex, port or None); ValueError when malformed."""
    text = pattern.strip().lower()
    host, sep, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    port: int | None = None
    if sep:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{pattern!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not host or any(not label or not _LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"{pattern!r}: expected host[:port], '*' standing for part of a label")
    rx = r"\.".join(
        "[^.:]+".join(re.escape(piece) for piece in label.split("*")) for label in host.split(".")
    )
    return re.compile(rx), port


def entry(pattern: str, provider: str) -> HostEntry:
    host_re, port = parse_pattern(pattern)
    return HostEntry(pattern.strip().lower(), provider.strip().lower(), host_re, port)


def parse_entry(text: str, known: Iterable[str] | None = None) -> HostEntry:
    """A configured `host[:port]=provider` (or `=off`); ValueError when malformed or when
    the provider is not in `known`."""
    pattern, sep, provider = text.partition("=")
    provider = provider.strip().lower()
    if not sep or not pattern.strip() or not provider:
        raise ValueError(f"{text!r}: expected host[:port]=provider (or host=off)")
    if known is not None and provider != OFF:
        names = sorted(known)
        if provider not in names:
            raise ValueError(f"{text!r}: unknown provider {provider!r} (known: {', '.join(names)})")
    return entry(pattern, provider)


class HostTable:
    """Configured entries first, then the built-in ones; the first match decides."""

    def __init__(self, extra: Sequence[HostEntry] = (), defaults: bool = True) -> None:
        base = [entry(p, prov) for p, prov in DEFAULT_HOSTS] if defaults else []
        self.entries: list[HostEntry] = [*extra, *base]
        self._cache: dict[tuple[str, int | None], str | None] = {}

    @classmethod
    def from_config(cls, lines: Iterable[str], known: Iterable[str] | None = None) -> HostTable:
        known_list = list(known) if known is not None else None
        return cls([parse_entry(line, known_list) for line in lines if line.strip()])

    def provider_for(self, host: str, port: int | None = None) -> str | None:
        """The provider observing `host:port`, or None (unknown host, or turned off)."""
        key = (host.lower().rstrip("."), port)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found: str | None = None
        for e in self.entries:
            if e.matches(key[0], port):
                found = None if e.provider == OFF else e.provider
                break
        if len(self._cache) < 4096:  # bounded: hosts are few, but a client picks them
            self._cache[key] = found
        return found

    def observed(self) -> list[HostEntry]:
        """The entries that observe (not shadowed by an `off` entry of the same pattern)."""
        seen: set[str] = set()
        out: list[HostEntry] = []
        for e in self.entries:
            if e.pattern in seen:
                continue
            seen.add(e.pattern)
            if e.provider != OFF:
                out.append(e)
        return out

    def allow_hosts(self) -> str:
        """One regex for `--set allow_hosts=...`: mitmproxy then intercepts only these
        hosts and passes every other connection through untouched (TLS included)."""
        return "|".join(e.allow_regex() for e in self.observed())


# ------------------------------------------------------------------ operations

_OPENAI_OPS = (
    ("/chat/completions", "llm/v1/chat"),
    ("/completions", "llm/v1/completions"),
    ("/embeddings", "llm/v1/embeddings"),
    ("/responses", RESPONSES),
)

_GEMINI_OP = re.compile(r"/models/[^/:?]+:([A-Za-z]+)$")
_GEMINI_OPS = {
    "generateContent": "llm/v1/chat",
    "streamGenerateContent": "llm/v1/chat",
    "embedContent": "llm/v1/embeddings",
    "batchEmbedContents": "llm/v1/embeddings",
}
_BEDROCK_OP = re.compile(
    r"/model/[^/]+/(converse|converse-stream|invoke|invoke-with-response-stream)/?$"
)
#: Claude on Vertex AI: Anthropic's Messages API behind Vertex's predict operations
_VERTEX_ANTHROPIC_OP = re.compile(r"/publishers/anthropic/models/[^/:?]+:(?:stream)?[rR]awPredict$")

_NATIVE_OPS: dict[str, dict[str, str]] = {
    "anthropic": {"/v1/messages": "llm/v1/chat", "/v1/complete": "llm/v1/completions"},
    "cohere": {
        "/v1/chat": "llm/v1/chat",
        "/v2/chat": "llm/v1/chat",
        "/v1/generate": "llm/v1/completions",
        "/v1/embed": "llm/v1/embeddings",
        "/v2/embed": "llm/v1/embeddings",
    },
    "ollama": {
        "/api/chat": "llm/v1/chat",
        "/api/generate": "llm/v1/completions",
        "/api/embed": "llm/v1/embeddings",
        "/api/embeddings": "llm/v1/embeddings",
    },
}


@dataclass(frozen=True, slots=True)
class Operation:
    #: "openai" (OpenAI's wire format, whatever the provider) or "native"
    format: str
    #: a RouteType value ("llm/v1/chat", ...) or RESPONSES
    kind: str
    #: the provider whose native format the request speaks, when it is not the host's
    #: (Claude on Vertex AI speaks Anthropic's Messages API on Google's hosts)
    provider: str | None = None


def operation(provider: str, method: str, path: str) -> Operation | None:
    """Whether `method path` on a host of `provider` is an LLM call, and of what kind
    (None: another request, e.g. listing models, which observe mode does not record)."""
    if method.upper() != "POST":
        return None
    p = path.partition("?")[0].rstrip("/")
    for suffix, kind in _OPENAI_OPS:
        if p.endswith(suffix):
            return Operation("openai", kind)
    if provider == "gemini":
        if _VERTEX_ANTHROPIC_OP.search(p):
            return Operation("native", "llm/v1/chat", "anthropic")
        m = _GEMINI_OP.search(p)
        kind = _GEMINI_OPS.get(m.group(1)) if m else None
        return Operation("native", kind) if kind else None
    if provider == "bedrock":
        return Operation("native", "llm/v1/chat") if _BEDROCK_OP.search(p) else None
    kind = _NATIVE_OPS.get(provider, {}).get(p)
    return Operation("native", kind) if kind else None


#: the native operations by the last two segments of their path, with the provider whose
#: format they are (`anthropic/v1/messages` and `/v1/messages` alike speak Anthropic's)
_NATIVE_TAILS: dict[str, tuple[str, str]] = {
    path.lstrip("/"): (provider, kind)
    for provider, ops in _NATIVE_OPS.items()
    for path, kind in ops.items()
}


@functools.lru_cache(maxsize=4096)  # few paths, each asked for on every request
def path_operation(method: str, path: str) -> tuple[str, Operation] | None:
    """The provider whose API `method path` speaks, and the operation, for a request to
    a host the table does not know (a gateway route's service: a vLLM, a LiteLLM, a
    self-hosted model server), or None when the path is no LLM call's.

    The format is read from the path alone: the OpenAI paths (any prefix) are OpenAI's
    format, read by the `openai` provider; Anthropic's, Cohere's and Ollama's own
    operations are known by their last two segments (`.../v1/messages`,
    `.../v2/chat`, `.../api/chat`), under any prefix; Gemini's `models/M:operation`
    (Claude on Vertex AI's `:rawPredict` included) and Bedrock's `model/M/converse`
    by their shapes. A few string tests and one dict lookup, once per path (cached)."""
    if method.upper() != "POST":
        return None
    p = path.partition("?")[0].rstrip("/")
    for suffix, kind in _OPENAI_OPS:
        if p.endswith(suffix):
            return "openai", Operation("openai", kind)
    head, _, last = p.rpartition("/")
    found = _NATIVE_TAILS.get(f"{head.rpartition('/')[2]}/{last}")
    if found is not None:
        return found[0], Operation("native", found[1])
    if ":" in last:
        op = operation("gemini", method, p)
        if op is not None:
            return op.provider or "gemini", op
    elif "/model/" in p:
        op = operation("bedrock", method, p)
        if op is not None:
            return "bedrock", op
    return None


# ------------------------------------------------------------------ the command

#: the certificate mitmproxy writes to its confdir (its CA, without the key)
CA_CERT = "mitmproxy-ca-cert.pem"


def write_ca_bundle(path: str, confdir: str = "~/.mitmproxy") -> str:
    """Write certifi's public roots followed by mitmproxy's CA to `path` (atomically);
    returns the path written. ValueError when mitmproxy has no CA there yet."""
    import certifi  # httpx's own dependency

    ca_path = os.path.join(os.path.expanduser(confdir), CA_CERT)
    try:
        with open(ca_path, "rb") as f:
            ca = f.read()
    except FileNotFoundError:
        raise ValueError(
            f"no mitmproxy CA at {ca_path}: run mitmdump (or mitmweb) once, it creates it"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in ca:
        raise ValueError(f"{ca_path} holds no PEM certificate")
    with open(certifi.where(), "rb") as f:
        roots = f.read()
    target = os.path.abspath(os.path.expanduser(path))
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(roots.rstrip(b"\n") + b"\n\n# mitmproxy (llmitm observe mode)\n" + ca)
    os.replace(tmp, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m addons.llm_hosts",
        description="The LLM API hosts llmitm's observe mode recognises.",
    )
    parser.add_argument(
        "--allow-hosts",
        action="store_true",
        help="print the regex for mitmproxy's allow_hosts option (intercept only these)",
    )
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="HOST=PROVIDER",
        help="an extra entry, as for --set llmitm_observe_hosts (repeatable)",
    )
    parser.add_argument(
        "--ca-bundle",
        metavar="PATH",
        help="write a CA bundle (certifi's public roots + mitmproxy's CA) to PATH, for "
        "SSL_CERT_FILE and REQUESTS_CA_BUNDLE",
    )
    parser.add_argument(
        "--confdir",
        default="~/.mitmproxy",
        help="mitmproxy's confdir, where its CA is (default: ~/.mitmproxy)",
    )
    args = parser.parse_args(argv)
    try:
        table = HostTable.from_config(args.add)
    except ValueError as e:
        parser.error(str(e))
    if args.ca_bundle:
        try:
            path = write_ca_bundle(args.ca_bundle, args.confdir)
        except (OSError, ValueError) as e:
            print(f"llm_hosts: {e}", file=sys.stderr)
            return 1
        print(f"wrote {path}: the public roots and mitmproxy's CA. Trust it with:")
        print(f'    export SSL_CERT_FILE="{path}" REQUESTS_CA_BUNDLE="{path}"')
        return 0
    if args.allow_hosts:
        print(table.allow_hosts())
        return 0
    for e in table.observed():
        print(f"{e.pattern:40} {e.provider}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
