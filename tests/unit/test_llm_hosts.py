"""The host table of observe mode: matching, wildcards, ports, configured entries, the
allow_hosts regex, and which requests are LLM operations (on a known host, and by the
path alone on any other)."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

import providers
from addons.llm_hosts import (
    DEFAULT_HOSTS,
    RESPONSES,
    HostTable,
    Operation,
    main,
    operation,
    parse_entry,
    path_operation,
)

TABLE = HostTable()


@pytest.mark.parametrize(
    ("host", "port", "provider"),
    [
        ("api.openai.com", 443, "openai"),
        ("API.OpenAI.com", 443, "openai"),  # DNS names are case-insensitive
        ("api.openai.com.", 443, "openai"),  # a fully qualified name
        ("myres.openai.azure.com", 443, "azure"),
        ("myres.cognitiveservices.azure.com", 443, "azure"),
        ("api.anthropic.com", 443, "anthropic"),
        ("generativelanguage.googleapis.com", 443, "gemini"),
        ("us-central1-aiplatform.googleapis.com", 443, "gemini"),
        ("aiplatform.googleapis.com", 443, "gemini"),
        ("bedrock-runtime.us-east-1.amazonaws.com", 443, "bedrock"),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", 443, "bedrock"),
        ("api.cohere.com", 443, "cohere"),
        ("api.mistral.ai", 443, "mistral"),
        ("api.groq.com", 443, "groq"),
        ("api.deepseek.com", 443, "deepseek"),
        ("api.x.ai", 443, "xai"),
        ("openrouter.ai", 443, "openrouter"),
        ("127.0.0.1", 11434, "ollama"),
        ("localhost", 11434, "ollama"),
        ("api.openai.com", 8443, "openai"),  # no port in the pattern: any port
    ],
)
def test_builtin_hosts(host: str, port: int, provider: str) -> None:
    assert TABLE.provider_for(host, port) == provider


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("example.org", 443),
        ("openai.com", 443),
        ("evil-api.openai.com.attacker.net", 443),  # suffixes and prefixes do not match
        ("api.openai.com.attacker.net", 443),
        ("a.b.openai.azure.com", 443),  # '*' is one label, not several
        (".openai.azure.com", 443),  # and not an empty one
        ("bedrock.us-east-1.amazonaws.com", 443),  # the control plane, not the runtime
        ("bedrock-runtime.amazonaws.com", 443),
        ("aiplatform.googleapis.com.evil", 443),
        ("127.0.0.1", 8080),  # Ollama only on its default port
        ("localhost", 11435),
    ],
)
def test_other_hosts_are_not_observed(host: str, port: int) -> None:
    assert TABLE.provider_for(host, port) is None


def test_every_builtin_provider_exists() -> None:
    known = providers.registry()
    for _, name in DEFAULT_HOSTS:
        assert name in known


def test_configured_entries_add_and_win() -> None:
    table = HostTable.from_config(
        [
            "llm.internal:8443=vllm",
            "*.corp-llm.net=openai",
            "api.openai.com=azure",  # a configured entry wins over the built-in one
            "api.groq.com=off",  # and can turn one off
        ],
        providers.registry(),
    )
    assert table.provider_for("llm.internal", 8443) == "vllm"
    assert table.provider_for("llm.internal", 443) is None
    assert table.provider_for("eu.corp-llm.net", 443) == "openai"
    assert table.provider_for("api.openai.com", 443) == "azure"
    assert table.provider_for("api.groq.com", 443) is None
    assert table.provider_for("api.anthropic.com", 443) == "anthropic"  # defaults stay
    observed = {e.pattern for e in table.observed()}
    assert "api.groq.com" not in observed and "llm.internal:8443" in observed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api.example.com", "expected host[:port]=provider"),
        ("=openai", "expected host[:port]=provider"),
        ("api.example.com=", "expected host[:port]=provider"),
        ("api.example.com=nope", "unknown provider 'nope'"),
        ("api.example.com:0=openai", "port"),
        ("api.example.com:http=openai", "port"),
        ("api..example.com=openai", "expected host[:port]"),
        ("https://api.example.com=openai", "port"),
        ("api/example=openai", "expected host[:port]"),
    ],
)
def test_bad_entries_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_entry(text, providers.registry())


def test_allow_hosts_regex_matches_what_mitmproxy_checks() -> None:
    """mitmproxy's allow_hosts searches each regex in `host:port` strings."""
    rx = re.compile(HostTable.from_config(["llm.internal:8443=vllm"]).allow_hosts())
    for hit in (
        "api.openai.com:443",
        "myres.openai.azure.com:443",
        "bedrock-runtime.eu-west-3.amazonaws.com:443",
        "europe-west4-aiplatform.googleapis.com:443",
        "localhost:11434",
        "127.0.0.1:11434",
        "llm.internal:8443",
    ):
        assert rx.search(hit), hit
    for miss in (
        "example.org:443",
        "api.openai.com.evil.net:443",
        "xapi.openai.com:443",
        "127.0.0.1:8080",
        "llm.internal:443",
        "a.b.openai.azure.com:443",
    ):
        assert not rx.search(miss), miss


def test_allow_hosts_leaves_out_hosts_turned_off() -> None:
    rx = re.compile(HostTable.from_config(["api.groq.com=off"]).allow_hosts())
    assert not rx.search("api.groq.com:443")
    assert rx.search("api.openai.com:443")


def test_command_prints_the_regex(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--allow-hosts", "--add", "llm.internal:8443=vllm"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == HostTable.from_config(["llm.internal:8443=vllm"]).allow_hosts()
    assert main([]) == 0
    assert "api.anthropic.com" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("provider", "method", "path", "expected"),
    [
        ("openai", "POST", "/v1/chat/completions", Operation("openai", "llm/v1/chat")),
        ("openai", "POST", "/v1/completions", Operation("openai", "llm/v1/completions")),
        ("openai", "POST", "/v1/embeddings", Operation("openai", "llm/v1/embeddings")),
        ("openai", "POST", "/v1/responses", Operation("openai", RESPONSES)),
        ("openai", "GET", "/v1/models", None),
        ("openai", "GET", "/v1/responses/resp_1", None),
        ("openai", "POST", "/v1/files", None),
        (
            "azure",
            "POST",
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
            Operation("openai", "llm/v1/chat"),
        ),
        ("groq", "POST", "/openai/v1/chat/completions", Operation("openai", "llm/v1/chat")),
        ("anthropic", "POST", "/v1/messages", Operation("native", "llm/v1/chat")),
        ("anthropic", "POST", "/v1/messages?beta=true", Operation("native", "llm/v1/chat")),
        ("anthropic", "POST", "/v1/complete", Operation("native", "llm/v1/completions")),
        ("anthropic", "POST", "/v1/messages/count_tokens", None),
        ("anthropic", "POST", "/v1/messages/batches", None),
        (
            "gemini",
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Operation("native", "llm/v1/chat"),
        ),
        (
            "gemini",
            "POST",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro"
            ":generateContent",
            Operation("native", "llm/v1/chat"),
        ),
        (
            "gemini",
            "POST",
            "/v1beta/models/text-embedding-004:embedContent",
            Operation("native", "llm/v1/embeddings"),
        ),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:countTokens", None),
        # Claude on Vertex AI: Anthropic's Messages API, read by the anthropic provider
        (
            "gemini",
            "POST",
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
            "claude-sonnet-4-5@20250929:rawPredict",
            Operation("native", "llm/v1/chat", "anthropic"),
        ),
        (
            "gemini",
            "POST",
            "/v1/projects/p/locations/global/publishers/anthropic/models/"
            "claude-haiku-4-5@20251001:streamRawPredict",
            Operation("native", "llm/v1/chat", "anthropic"),
        ),
        (
            "gemini",
            "POST",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:countTokens",
            None,
        ),
        (
            "gemini",
            "POST",
            "/v1beta/openai/chat/completions",  # Gemini's OpenAI-compatible endpoint
            Operation("openai", "llm/v1/chat"),
        ),
        (
            "bedrock",
            "POST",
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
            Operation("native", "llm/v1/chat"),
        ),
        ("bedrock", "POST", "/model/m/invoke", Operation("native", "llm/v1/chat")),
        ("bedrock", "POST", "/guardrail/g/version/1/apply", None),
        ("cohere", "POST", "/v2/chat", Operation("native", "llm/v1/chat")),
        ("cohere", "POST", "/v1/embed", Operation("native", "llm/v1/embeddings")),
        ("ollama", "POST", "/api/chat", Operation("native", "llm/v1/chat")),
        ("ollama", "POST", "/api/generate", Operation("native", "llm/v1/completions")),
        ("ollama", "POST", "/v1/chat/completions", Operation("openai", "llm/v1/chat")),
        ("ollama", "GET", "/api/tags", None),
    ],
)
def test_operations(provider: str, method: str, path: str, expected: Operation | None) -> None:
    assert operation(provider, method, path) == expected


CHAT = Operation("native", "llm/v1/chat")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # the OpenAI paths, under any prefix: OpenAI's format, read by `openai`
        ("POST", "/v1/chat/completions", ("openai", Operation("openai", "llm/v1/chat"))),
        ("POST", "/chat/completions", ("openai", Operation("openai", "llm/v1/chat"))),
        ("post", "/v1/chat/completions/", ("openai", Operation("openai", "llm/v1/chat"))),
        ("POST", "/vllm/v1/completions?x=1", ("openai", Operation("openai", "llm/v1/completions"))),
        ("POST", "/v1/embeddings", ("openai", Operation("openai", "llm/v1/embeddings"))),
        ("POST", "/openai/v1/responses", ("openai", Operation("openai", RESPONSES))),
        ("POST", "/api/v1/chat/completions", ("openai", Operation("openai", "llm/v1/chat"))),
        # native operations by their last two segments, with or without a prefix
        ("POST", "/v1/messages", ("anthropic", CHAT)),
        ("POST", "/anthropic/v1/messages?beta=true", ("anthropic", CHAT)),
        ("POST", "/v1/complete", ("anthropic", Operation("native", "llm/v1/completions"))),
        ("POST", "/cohere/v2/chat", ("cohere", CHAT)),
        ("POST", "/v1/chat", ("cohere", CHAT)),
        ("POST", "/v2/embed", ("cohere", Operation("native", "llm/v1/embeddings"))),
        ("POST", "/api/chat", ("ollama", CHAT)),
        ("POST", "/ollama/api/generate", ("ollama", Operation("native", "llm/v1/completions"))),
        ("POST", "/api/embed", ("ollama", Operation("native", "llm/v1/embeddings"))),
        # an OpenAI path first (Open WebUI's; Ollama's own /api/embeddings is deprecated)
        ("POST", "/api/embeddings", ("openai", Operation("openai", "llm/v1/embeddings"))),
        ("POST", "/v1beta/models/gemini-2.5-flash:generateContent", ("gemini", CHAT)),
        (
            "POST",
            "/gemini/v1beta/models/text-embedding-004:embedContent",
            ("gemini", Operation("native", "llm/v1/embeddings")),
        ),
        (
            "POST",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:rawPredict",
            ("anthropic", Operation("native", "llm/v1/chat", "anthropic")),
        ),
        ("POST", "/model/m/converse-stream", ("bedrock", CHAT)),
        # not LLM calls
        ("GET", "/v1/chat/completions", None),
        ("POST", "/v1/models", None),
        ("POST", "/v1/messages/batches", None),
        ("POST", "/v1/messages/count_tokens", None),
        ("POST", "/v3/chat", None),
        ("POST", "/chat", None),
        ("POST", "/messages", None),
        ("POST", "/v1beta/models/gemini-2.5-flash:countTokens", None),
        ("POST", "/files/a:b", None),
        ("POST", "/model/m/other", None),
        ("POST", "/", None),
        ("POST", "", None),
    ],
)
def test_path_operations(method: str, path: str, expected: tuple[str, Operation] | None) -> None:
    assert path_operation(method, path) == expected


def test_path_operations_name_existing_providers() -> None:
    """Each provider a path can name is one of providers/ (observed calls need it)."""
    names = set(providers.registry())
    paths = ["/v1/chat/completions", "/v1/messages", "/v2/chat", "/api/chat", "/model/m/invoke"]
    paths.append("/v1beta/models/g:generateContent")
    for path in paths:
        found = path_operation("POST", path)
        assert found is not None and found[0] in names, path


def test_ca_bundle_holds_the_public_roots_and_mitmproxys_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ca-bundle`: one file to trust in SSL_CERT_FILE, which replaces the trust
    store: the public roots (hosts mitmproxy tunnels, with allow_hosts) and mitmproxy's
    CA (the LLM hosts it intercepts)."""
    import certifi
    from mitmproxy.certs import CertStore

    confdir = tmp_path / "confdir"
    CertStore.from_store(confdir, "mitmproxy", 2048)  # what mitmdump's first run writes
    out = tmp_path / "bundle.pem"
    assert main(["--ca-bundle", str(out), "--confdir", str(confdir)]) == 0
    assert f'export SSL_CERT_FILE="{out}"' in capsys.readouterr().out
    public = ssl.create_default_context(cafile=certifi.where()).get_ca_certs()
    mitm = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
    bundle = ssl.create_default_context(cafile=str(out)).get_ca_certs()
    assert len(bundle) == len(public) + 1
    assert mitm.get_ca_certs()[0] in bundle
    # no CA yet (mitmproxy never ran with this confdir): a clear error, no file
    assert main(["--ca-bundle", str(tmp_path / "x.pem"), "--confdir", str(tmp_path)]) == 1
    assert "run mitmdump (or mitmweb) once" in capsys.readouterr().err
    assert not (tmp_path / "x.pem").exists()
