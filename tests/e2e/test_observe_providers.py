"""Observe mode end to end for the providers `test_observe.py` does not cover: Azure
OpenAI, Vertex AI (Gemini on aiplatform.googleapis.com), Bedrock runtime (Converse,
ConverseStream, InvokeModel and InvokeModelWithResponseStream), Cohere v2 chat,
Mistral, Groq, DeepSeek, xAI, OpenRouter, and Ollama on its default port (plain HTTP).

One gateway (`mitmdump -s addons/gateway.py` in regular mode) serves every test; the
clients (the `openai` SDK for the OpenAI-compatible APIs, httpx for the others, SigV4
signed with botocore for Bedrock) use it as their proxy and trust mitmproxy's CA; a
test-only script sends the connections for the providers' real hostnames to local fakes
(HTTPS, one certificate for every name; plain HTTP for Ollama), which answer in each
provider's wire format with the answer builders of `tests/fakes/`.

Each provider gets a streamed and a non-streamed call, and each call is checked for what
a user of observe mode relies on: the client receives exactly the bytes the fake sent
(streams included), and the call record has route `observed`, the provider, the model,
the usage the provider reported and, for streams, a time to first token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import Gateway, free_port
from tests.e2e.test_llama2_mistral import MistralScript, mistral_api
from tests.e2e.test_observe import CONFIG, Proxy, Sent, _wait_port
from tests.fakes import anthropic as fake_anthropic
from tests.fakes import cohere as fake_cohere
from tests.fakes import ollama as fake_ollama
from tests.fakes import openai_like
from tests.fakes.azure import AzureScript, azure_api
from tests.fakes.bedrock import ACCESS_KEY, REGION, SECRET_KEY, FakeBedrock
from tests.fakes.bedrock_invoke import BEDROCK_VERSION, FakeBedrockInvoke
from tests.fakes.gemini import FakeGemini
from tests.fakes.tls import TLSFakeUpstream, redirect_script
from tests.fakes.upstream import FakeUpstream, Received, Reply

KEY = "sk-test-observe-providers-0123456789"
AZURE = "llmitm-test.openai.azure.com"
VERTEX = "us-central1-aiplatform.googleapis.com"
BEDROCK = f"bedrock-runtime.{REGION}.amazonaws.com"
OLLAMA = "localhost:11434"
HOSTS = [
    AZURE,
    VERTEX,
    BEDROCK,
    "api.cohere.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.deepseek.com",
    "api.x.ai",
    "openrouter.ai",
]


@pytest.fixture(scope="module")
def tls() -> Iterator[TLSFakeUpstream]:
    up = TLSFakeUpstream(HOSTS).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[FakeUpstream]:
    """Ollama's stand-in: plain HTTP, as Ollama serves on localhost:11434."""
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def fake(tls: TLSFakeUpstream) -> TLSFakeUpstream:
    tls.reset()
    return tls


@pytest.fixture(scope="module")
def proxy(
    tls: TLSFakeUpstream, plain: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("observe-providers")
    targets = {h: ("127.0.0.1", tls.port) for h in HOSTS}
    targets[OLLAMA] = ("127.0.0.1", plain.port)
    script = redirect_script(targets, tmp)
    port = free_port()
    gw = Gateway(
        tmp,
        CONFIG,
        extra=["--mode", f"regular@127.0.0.1:{port}", "-s", str(script)]
        + ["--set", "ssl_insecure=true"],
    )
    try:
        gw.wait_ready()
        _wait_port(port, gw)
        yield Proxy(gw, port)
    finally:
        gw.stop()


def observed(
    proxy: Proxy,
    session: str,
    *,
    provider: str,
    model: str,
    usage: tuple[int, int],
    stream: bool,
) -> dict[str, Any]:
    """The call's record, checked for what every observed call must have; returned for
    the provider's own checks."""
    rec = proxy.gw.record(session_id=session)
    assert rec["route"] == {"name": "observed"}
    assert rec["status"] == "ok", rec.get("error")
    ai = rec["ai"]["proxy"]
    assert ai["meta"]["provider_name"] == provider
    assert ai["meta"]["request_model"] == model
    assert ai["meta"]["request_mode"] == ("stream" if stream else "oneshot")
    got = ai["usage"]
    assert (got["prompt_tokens"], got["completion_tokens"]) == usage, got
    assert got["source"] == "reported"
    if stream:
        assert got["time_to_first_token"] is not None and got["time_to_first_token"] > 0
    assert KEY not in json.dumps(rec) and SECRET_KEY not in json.dumps(rec)
    return ai


def post(
    proxy: Proxy,
    url: str,
    body: dict[str, Any],
    session: str,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> tuple[int, bytes]:
    """POST through the proxy; the answer's raw bytes as they came (streams read to
    their end)."""
    with (
        proxy.http() as http,
        http.stream(
            "POST",
            url,
            content=content if content is not None else json.dumps(body).encode(),
            headers={"content-type": "application/json", "x-session-id": session} | (headers or {}),
        ) as resp,
    ):
        return resp.status_code, b"".join(resp.iter_raw())


# ------------------------------------------------ the OpenAI-compatible APIs (SDK)


@dataclass(frozen=True)
class Compatible:
    base_url: str
    model: str
    handler: Callable[[], Any]
    usage: tuple[int, int]
    #: whether the client asks for the usage chunk (Mistral refuses the field; Groq's
    #: usage comes in `x_groq.usage` unasked)
    include_usage: bool = True
    #: what else the record must show (a key of `usage`, its value)
    extra: tuple[tuple[str, Any], ...] = ()


def _like(name: str, **script: Any) -> Callable[[], Any]:
    return lambda: openai_like.openai_like_api(
        openai_like.dialects(KEY)[name], openai_like.Script(**script)
    )


COMPATIBLE = {
    "mistral": Compatible(
        "https://api.mistral.ai/v1",
        "mistral-large-latest",
        lambda: mistral_api(KEY, MistralScript(prompt_tokens=2048, cached_tokens=1536)),
        (2048, 6),  # six words; the cached tokens are part of prompt_tokens
        include_usage=False,
        extra=(("cache_read_tokens", 1536),),
    ),
    "groq": Compatible(
        "https://api.groq.com/openai/v1",
        "llama-3.3-70b-versatile",
        _like("groq", prompt_tokens=31, completion_tokens=7),
        (31, 7),
        include_usage=False,
    ),
    "deepseek": Compatible(
        "https://api.deepseek.com",
        "deepseek-reasoner",
        _like(
            "deepseek",
            prompt_tokens=40,
            completion_tokens=12,
            cached_tokens=32,
            reasoning="First, add the numbers.",
        ),
        (40, 12),
        extra=(("cache_read_tokens", 32),),
    ),
    "xai": Compatible(
        "https://api.x.ai/v1",
        "grok-3-mini",
        _like("xai", prompt_tokens=25, completion_tokens=6, reasoning_tokens=5),
        (25, 11),  # xAI counts reasoning apart: added to completion tokens, as OpenAI does
        extra=(("reasoning_tokens", 5),),
    ),
    "openrouter": Compatible(
        "https://openrouter.ai/api/v1",
        "anthropic/claude-sonnet-4.5",
        _like("openrouter", prompt_tokens=19, completion_tokens=9),
        (19, 9),
        extra=(("cost", 0.000042),),  # what OpenRouter billed
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", list(COMPATIBLE))
def test_openai_compatible_apis(
    proxy: Proxy, fake: TLSFakeUpstream, name: str, stream: bool
) -> None:
    case = COMPATIBLE[name]
    sent = Sent(case.handler())
    fake.reply(sent)
    session = f"{name}-{'stream' if stream else 'whole'}"
    client = openai.OpenAI(
        base_url=case.base_url, api_key=KEY, http_client=proxy.http(), max_retries=0
    )
    kw: dict[str, Any] = {
        "model": case.model,
        "messages": [{"role": "user", "content": "What is 1 + 1?"}],
        "extra_headers": {"x-session-id": session},
    }
    if stream:
        if case.include_usage:
            kw["stream_options"] = {"include_usage": True}
        with client.chat.completions.with_streaming_response.create(stream=True, **kw) as resp:
            received = b"".join(resp.iter_bytes())
        assert b"data: [DONE]" in received
    else:
        raw = client.chat.completions.with_raw_response.create(**kw)
        received = raw.http_response.content
        assert raw.parse().choices[0].message.content
    assert received == sent.bodies[-1]
    got = fake.last()
    assert got.headers["host"] == case.base_url.split("/")[2]
    assert got.headers["authorization"] == f"Bearer {KEY}"  # the client's own

    ai = observed(proxy, session, provider=name, model=case.model, usage=case.usage, stream=stream)
    assert ai["meta"]["finish_reason"] == "stop"
    for key, value in case.extra:
        assert ai["usage"][key] == value, (key, ai["usage"])
    answer = ai["payload"]["response"]
    assert answer["choices"][0]["message"]["content"]


# ------------------------------------------------------------------ Azure OpenAI


def test_azure_sdk_whole_answer(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    sent = Sent(azure_api(KEY, AzureScript(prompt_tokens=33, completion_tokens=8)))
    fake.reply(sent)
    client = openai.AzureOpenAI(
        azure_endpoint=f"https://{AZURE}",
        api_key=KEY,
        api_version="2024-10-21",
        http_client=proxy.http(),
        max_retries=0,
    )
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-prod",  # the deployment
        messages=[{"role": "user", "content": "What is 1 + 1?"}],
        extra_headers={"x-session-id": "azure-whole"},
    )
    assert raw.http_response.content == sent.bodies[-1]
    got = fake.last()
    assert got.path == "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    assert got.headers["api-key"] == KEY

    rec = proxy.gw.record(session_id="azure-whole")
    assert rec["request"]["headers"]["api-key"] == "[REDACTED]"
    ai = observed(
        proxy, "azure-whole", provider="azure", model="gpt-4o-prod", usage=(33, 8), stream=False
    )
    assert ai["meta"]["response_model"] == "gpt-4o-2024-11-20"  # the deployed model
    assert ai["meta"]["finish_reason"] == "stop"


def test_azure_stream_names_the_deployment(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    """A body without `model` (Azure needs none): the deployment in the path names it."""
    sent = Sent(azure_api(KEY, AzureScript(prompt_tokens=12, completion_tokens=9, pause=0.05)))
    fake.reply(sent)
    status, received = post(
        proxy,
        f"https://{AZURE}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
        {
            "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        "azure-stream",
        {"api-key": KEY},
    )
    assert status == 200
    assert received == sent.bodies[-1]
    assert b'"prompt_filter_results"' in received  # Azure's own first chunk, passed on
    ai = observed(
        proxy, "azure-stream", provider="azure", model="gpt-4o-prod", usage=(12, 9), stream=True
    )
    assert ai["meta"]["response_model"] == "gpt-4o-2024-11-20"
    assert ai["meta"]["finish_reason"] == "stop"
    assert ai["payload"]["response"]["choices"][0]["message"]["content"] == "The answer is 2."


# ------------------------------------------------------------------ Vertex AI


VERTEX_MODEL_PATH = (
    "/v1/projects/llmitm-test/locations/us-central1/publishers/google/models/gemini-2.5-flash"
)


@pytest.mark.parametrize(
    "op",
    [":generateContent", ":streamGenerateContent?alt=sse", ":streamGenerateContent"],
    ids=["whole", "sse", "json-array"],
)
def test_vertex_gemini(proxy: Proxy, fake: TLSFakeUpstream, op: str) -> None:
    gemini = FakeGemini(api_key="unused", text="Bonjour tout le monde, comment allez-vous ?")
    gemini.tokens.add("ya29.observe-test-token")
    sent = Sent(gemini)
    fake.reply(sent)
    session = f"vertex-{op}"
    status, received = post(
        proxy,
        f"https://{VERTEX}{VERTEX_MODEL_PATH}{op}",
        {"contents": [{"role": "user", "parts": [{"text": "Say bonjour"}]}]},
        session,
        {"authorization": "Bearer ya29.observe-test-token"},
    )
    assert status == 200, received
    assert received == sent.bodies[-1]
    stream = "stream" in op
    if stream and "alt=sse" in op:
        last = json.loads(received.decode().strip().splitlines()[-1][6:])
    elif stream:
        last = json.loads(received)[-1]  # Google's JSON array, cut in pieces
    else:
        last = json.loads(received)
    counts = last["usageMetadata"]
    usage = (
        counts["promptTokenCount"],
        counts["candidatesTokenCount"] + counts.get("thoughtsTokenCount", 0),
    )
    ai = observed(
        proxy, session, provider="gemini", model="gemini-2.5-flash", usage=usage, stream=stream
    )
    assert ai["meta"]["finish_reason"] == "stop"
    assert ai["meta"]["upstream_url"].startswith(f"https://{VERTEX}/v1/projects/")
    rec = proxy.gw.record(session_id=session)
    assert rec["request"]["headers"]["authorization"] == "[REDACTED]"
    assert "ya29.observe-test-token" not in json.dumps(rec)


VERTEX_CLAUDE = "/v1/projects/llmitm-test/locations/us-east5/publishers/anthropic/models/"
VERTEX_VERSION = "vertex-2023-10-16"


def vertex_claude(script: fake_anthropic.Script) -> Callable[[Received], Reply]:
    """Claude on Vertex AI: Anthropic's Messages API, the model in the path (`:rawPredict`,
    `:streamRawPredict`), `anthropic_version` in the body, Google's OAuth token."""
    path = re.compile(
        rf"{re.escape(VERTEX_CLAUDE)}(?P<model>[^/:]+):(?P<op>rawPredict|streamRawPredict)"
    )

    def handle(req: Received) -> Reply:
        m = path.fullmatch(req.path)
        if m is None or req.headers.get("authorization") != "Bearer ya29.observe-test-token":
            return fake_anthropic.error(404, "not_found_error", f"no {req.path}")
        body = req.json()
        if body.get("anthropic_version") != VERTEX_VERSION or "model" in body:
            return fake_anthropic.invalid("anthropic_version: vertex-2023-10-16, and no model")
        request = {k: v for k, v in body.items() if k != "anthropic_version"}
        request["model"] = m["model"].partition("@")[0]
        blocks, stop = fake_anthropic.answer_blocks(request, script)
        if m["op"] == "streamRawPredict":
            return fake_anthropic.message_stream(request, script, blocks, stop)
        return Reply.json(fake_anthropic.message_json(request, script, blocks, stop))

    return handle


@pytest.mark.parametrize("stream", [False, True], ids=["rawPredict", "streamRawPredict"])
def test_vertex_claude(proxy: Proxy, fake: TLSFakeUpstream, stream: bool) -> None:
    """Claude on Vertex AI is read by the Anthropic provider: model from the path,
    Anthropic's usage, finish reason and, streamed, the time to first token."""
    script = fake_anthropic.Script(
        input_tokens=40,
        cache_read_input_tokens=0,
        cache_creation_input_tokens=0,
        tool_calls=[("get_weather", {"city": "Paris"})],
        pause=0.02,
    )
    sent = Sent(vertex_claude(script))
    fake.reply(sent)
    model = "claude-sonnet-4-5@20250929"
    session = f"vertex-claude-{stream}"
    status, received = post(
        proxy,
        f"https://{VERTEX}{VERTEX_CLAUDE}{model}:{'streamRawPredict' if stream else 'rawPredict'}",
        {
            "anthropic_version": VERTEX_VERSION,
            "max_tokens": 256,
            "stream": stream,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
        },
        session,
        {"authorization": "Bearer ya29.observe-test-token"},
    )
    assert status == 200, received
    assert received == sent.bodies[-1]
    ai = observed(
        proxy,
        session,
        provider="anthropic",
        model=model,
        usage=(40, script.output_tokens),
        stream=stream,
    )
    assert ai["meta"]["finish_reason"] == "tool_calls"  # tool_use, as the gateway maps it
    assert ai["meta"]["response_model"] == "claude-sonnet-4-5"
    assert ai["usage"]["cost"] is not None and ai["usage"]["cost"] > 0  # Claude's list price
    if stream:
        calls = ai["payload"]["response"]["choices"][0]["message"]["tool_calls"]
        assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}


# ------------------------------------------------------------------ Bedrock


def signed(url: str, body: bytes, accept: str = "application/json") -> dict[str, str]:
    """The headers of a SigV4-signed Bedrock request (as the AWS SDKs sign it)."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"content-type": "application/json", "accept": accept},
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", REGION).add_auth(request)
    return dict(request.headers.items())


def bedrock_post(proxy: Proxy, path: str, body: dict[str, Any], session: str) -> bytes:
    url = f"https://{BEDROCK}{path}"
    raw = json.dumps(body).encode()
    stream = path.endswith(("-stream", "-with-response-stream"))
    headers = signed(url, raw, "application/vnd.amazon.eventstream" if stream else "*/*")
    status, received = post(proxy, url, body, session, headers, content=raw)
    assert status == 200, received
    return received


CONVERSE_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
CONVERSE_BODY = {
    "messages": [{"role": "user", "content": [{"text": "What is 1 + 1?"}]}],
    "inferenceConfig": {"maxTokens": 100},
}


def test_bedrock_converse(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    bedrock = FakeBedrock(text="1 + 1 = 2.", usage=(21, 7, 0, 0))
    sent = Sent(bedrock)
    fake.reply(sent)
    received = bedrock_post(
        proxy, f"/model/{CONVERSE_MODEL}/converse", CONVERSE_BODY, "bedrock-converse"
    )
    assert received == sent.bodies[-1]
    assert bedrock.last().op == "converse"  # the signature held: the bytes are untouched
    ai = observed(
        proxy,
        "bedrock-converse",
        provider="bedrock",
        model=CONVERSE_MODEL,
        usage=(21, 7),
        stream=False,
    )
    assert ai["meta"]["finish_reason"] == "stop"  # end_turn, as the gateway maps it
    assert ai["payload"]["response"]["stopReason"] == "end_turn"  # the native answer
    rec = proxy.gw.record(session_id="bedrock-converse")
    assert rec["request"]["headers"]["authorization"] == "[REDACTED]"


def test_bedrock_converse_stream(proxy: Proxy, fake: TLSFakeUpstream) -> None:
    bedrock = FakeBedrock(usage=(30, 9, 1800, 200), pause=0.02)
    sent = Sent(bedrock)
    fake.reply(sent)
    received = bedrock_post(
        proxy, f"/model/{CONVERSE_MODEL}/converse-stream", CONVERSE_BODY, "bedrock-stream"
    )
    assert received == sent.bodies[-1]
    ai = observed(
        proxy,
        "bedrock-stream",
        provider="bedrock",
        model=CONVERSE_MODEL,
        usage=(30 + 1800 + 200, 9),  # cache reads and writes are part of the prompt
        stream=True,
    )
    assert ai["usage"]["cache_read_tokens"] == 1800 and ai["usage"]["cache_write_tokens"] == 200
    assert ai["meta"]["finish_reason"] == "stop"
    answer = ai["payload"]["response"]["choices"][0]["message"]["content"]
    assert answer == "You said: What is 1 + 1?"


INVOKE_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
INVOKE_BODY = {
    "anthropic_version": BEDROCK_VERSION,
    "max_tokens": 200,
    "messages": [{"role": "user", "content": "What is 1 + 1?"}],
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_bedrock_invoke_model(proxy: Proxy, fake: TLSFakeUpstream, stream: bool) -> None:
    """InvokeModel with Claude's own body: the usage comes from Bedrock's token-count
    headers (whole answers) or its invocation metrics (streams)."""
    script = fake_anthropic.Script(
        input_tokens=15, cache_read_input_tokens=0, cache_creation_input_tokens=0, pause=0.02
    )
    invoke = FakeBedrockInvoke(script)
    sent = Sent(invoke)
    fake.reply(sent)
    op = "invoke-with-response-stream" if stream else "invoke"
    session = f"bedrock-{op}"
    received = bedrock_post(proxy, f"/model/{INVOKE_MODEL}/{op}", INVOKE_BODY, session)
    assert received == sent.bodies[-1]
    assert invoke.calls[-1][0] == op
    ai = observed(
        proxy,
        session,
        provider="bedrock",
        model=INVOKE_MODEL,
        usage=(15, script.output_tokens),
        stream=stream,
    )
    assert ai["payload"]["request"]["anthropic_version"] == BEDROCK_VERSION
    if not stream:
        assert ai["meta"]["finish_reason"] == "end_turn"  # as Claude's body says it
    else:  # the answer assembled from Claude's own events inside the event stream
        assert ai["meta"]["finish_reason"] == "stop"  # end_turn, as streams map it
        message = ai["payload"]["response"]["choices"][0]["message"]
        assert message["content"] == script.text


# ------------------------------------------------------------------ Cohere


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_cohere_v2_chat(proxy: Proxy, fake: TLSFakeUpstream, stream: bool) -> None:
    script = fake_cohere.Script(input_tokens=71, output_tokens=26, pause=0.01 if stream else 0)
    sent = Sent(fake_cohere.cohere_api(KEY, script))
    fake.reply(sent)
    session = f"cohere-{'stream' if stream else 'whole'}"
    status, received = post(
        proxy,
        "https://api.cohere.com/v2/chat",
        {
            "model": "command-a-03-2025",
            "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            "stream": stream,
        },
        session,
        {"authorization": f"Bearer {KEY}"},
    )
    assert status == 200, received
    assert received == sent.bodies[-1]
    ai = observed(
        proxy, session, provider="cohere", model="command-a-03-2025", usage=(71, 26), stream=stream
    )
    assert ai["meta"]["finish_reason"] == "stop"  # COMPLETE, as the gateway maps it


# ------------------------------------------------------------------ Ollama


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_ollama_on_its_default_port(proxy: Proxy, plain: FakeUpstream, stream: bool) -> None:
    """Plain HTTP to localhost:11434, as apps call a local Ollama: observed without any
    configuration (the default host list has it)."""
    plain.reset()
    script = fake_ollama.Script(prompt_eval_count=26, pause=0.02 if stream else 0)
    sent = Sent(fake_ollama.ollama_api(script))
    plain.reply(sent)
    session = f"ollama-{'stream' if stream else 'whole'}"
    status, received = post(
        proxy,
        f"http://{OLLAMA}/api/chat",
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            "stream": stream,
        },
        session,
    )
    assert status == 200, received
    assert received == sent.bodies[-1]
    assert plain.last().headers["host"] == OLLAMA
    words = len(script.text.split(" "))
    ai = observed(
        proxy, session, provider="ollama", model="llama3.2", usage=(26, words), stream=stream
    )
    assert ai["meta"]["finish_reason"] == "stop"
    assert ai["meta"]["upstream_url"] == f"http://{OLLAMA}/api/chat"
