"""ai-request-transformer and ai-response-transformer through a real mitmdump.

The transformers' own LLM is the FakeUpstream speaking OpenAI (provider openai,
upstream_url), so each test scripts what the LLM answers and checks what it was asked;
the route's ai-proxy is the embedded mock provider, which echoes the last user message,
so the client sees exactly what the request transformer made of its request. A plain
service route has its backend on the FakeUpstream too. The official `openai` SDK is the
client; httpx where the SDK cannot express the request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.conftest import Gateway, free_port
from tests.fakes.upstream import FakeUpstream, Received, Reply, chat_completion
from tests.policy_helpers import MessageTag, module_gateway

KEY = "sk-transformer-llm-secret-0123456789"
REQ_PROMPT = "Translate the user's messages to French. Answer with the request body only."
RESP_PROMPT = "Rewrite the assistant's answer in capitals. Answer with the response body only."
JSON_PROMPT = 'Review the answer. Reply {"status": ..., "headers": {...}, "body": ...}.'
PLAIN_REQ_PROMPT = "Capitalize the form."
PLAIN_RESP_PROMPT = "Summarize the page."

LLM = """
              llm:
                route_type: llm/v1/chat
                auth: {header_name: Authorization, header_value: "Bearer {vault://env/LLMITM_TRANSFORMER_KEY}"}
                model:
                  provider: openai
                  name: gpt-4o-mini
                  options: {upstream_url: "LLM_URL", input_cost: 1.0, output_cost: 2.0}"""

MOCK_PROXY = """
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {provider: mock, name: mock-gpt}"""

CONFIG = f"""
_format_version: "3.0"
services:
  - name: llm
    url: http://127.0.0.1:9
    routes:
      - name: req
        paths: ["/req/v1/chat/completions"]
        plugins:{MOCK_PROXY}
          - name: ai-request-transformer
            config:
              prompt: "{REQ_PROMPT}"{LLM}
      - name: req-pattern
        paths: ["/req-pattern/v1/chat/completions"]
        plugins:{MOCK_PROXY}
          - name: ai-request-transformer
            config:
              prompt: "{REQ_PROMPT}"
              transformation_extract_pattern: "{{((.|\\\\n)*)}}"{LLM}
      - name: req-slow
        paths: ["/req-slow/v1/chat/completions"]
        plugins:{MOCK_PROXY}
          - name: ai-request-transformer
            config:
              prompt: "{REQ_PROMPT}"
              http_timeout: 500{LLM}
      - name: req-dead
        paths: ["/req-dead/v1/chat/completions"]
        plugins:{MOCK_PROXY}
          - name: ai-request-transformer
            config:
              prompt: "{REQ_PROMPT}"{LLM.replace("LLM_URL", "DEAD_URL")}
      - name: req-small
        paths: ["/req-small/v1/chat/completions"]
        plugins:{MOCK_PROXY}
          - name: ai-request-transformer
            config:
              prompt: "{REQ_PROMPT}"
              max_request_body_size: 64{LLM}
      - name: resp
        paths: ["/resp/v1/chat/completions"]
        plugins:{MOCK_PROXY}
          - name: ai-response-transformer
            config:
              prompt: "{RESP_PROMPT}"{LLM}
                logging: {{log_statistics: true, log_payloads: true}}
      - name: resp-json
        paths: ["/resp-json/v1/chat/completions"]
        plugins:{MOCK_PROXY}
          - name: ai-response-transformer
            config:
              prompt: '{JSON_PROMPT}'
              transformation_extract_pattern: "{{((.|\\\\n)*)}}"
              parse_llm_response_json_instructions: true{LLM}
  - name: backend
    url: UPSTREAM/backend
    routes:
      - name: plain
        paths: ["/plain"]
        plugins:
          - name: ai-request-transformer
            config:
              prompt: "{PLAIN_REQ_PROMPT}"{LLM}
          - name: ai-response-transformer
            config:
              prompt: "{PLAIN_RESP_PROMPT}"{LLM}
plugins:
  - name: file-log
    config: {{path: "{{records}}"}}
"""


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = CONFIG.replace("LLM_URL", f"{upstream.url}/llm/v1/chat/completions").replace(
        "DEAD_URL", f"http://127.0.0.1:{free_port()}/v1/chat/completions"
    )
    env = {"LLMITM_TRANSFORMER_KEY": KEY}
    with module_gateway(tmp_path_factory, config, upstream, quiet=False, env=env) as g:
        yield g
    # the transformers' provider key never reaches a record or the log
    assert KEY not in g.records_path.read_text()
    assert KEY not in g.log()


TAG = MessageTag()


@pytest.fixture(autouse=True)
def _tag() -> None:
    TAG.new()


my_record = TAG.record
client = TAG.client


LLMAnswer = Callable[[str, str], "str | Reply"]


def serve(
    fake: FakeUpstream,
    llm: LLMAnswer | None = None,
    backend: Callable[[Received], Reply] | None = None,
    usage: tuple[int, int] = (40, 12),
) -> None:
    """The fake plays the transformers' LLM (`llm(system, user)` gives the assistant's
    text, or a whole Reply) and the plain service's backend."""

    def handler(r: Received) -> Reply:
        if r.path.startswith("/llm/") and llm is not None:
            messages = r.json()["messages"]
            out = llm(messages[0]["content"], messages[1]["content"])
            if isinstance(out, Reply):
                return out
            return Reply.json(
                chat_completion(out, prompt_tokens=usage[0], completion_tokens=usage[1])
            )
        if r.path.startswith("/backend") and backend is not None:
            return backend(r)
        return Reply.json({"error": f"unexpected request to {r.path}"}, 500)

    fake.reply(handler)


def llm_calls(fake: FakeUpstream) -> list[Received]:
    return [r for r in fake.received if r.path.startswith("/llm/")]


def to_french(system: str, user: str) -> str:
    """The LLM's rewrite of a chat request: every message's content in French."""
    body = json.loads(user)
    for m in body["messages"]:
        m["content"] = {"Hello, how are you?": "Bonjour, comment allez-vous ?"}.get(
            m["content"], "(en français) " + m["content"]
        )
    return json.dumps(body)


# ------------------------------------------------------------ request transformer


def test_request_rewritten_by_the_llm_before_ai_proxy(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, to_french)
    answer = client(gw, "req").chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "Hello, how are you?"}]
    )
    # the mock model echoes the user message it was given: the transformed one
    assert answer.choices[0].message.content == "Bonjour, comment allez-vous ?"

    (asked,) = llm_calls(fake)
    assert asked.headers["authorization"] == f"Bearer {KEY}"
    sent = asked.json()
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"][0] == {"role": "system", "content": REQ_PROMPT}
    client_body = json.loads(sent["messages"][1]["content"])  # the client's body, as text
    assert client_body["messages"] == [{"role": "user", "content": "Hello, how are you?"}]

    # one record: the client's call, with the transformer's usage in its context
    rec = my_record(gw)
    assert len([r for r in gw.records() if r["context"].get("message_id") == TAG.id]) == 1
    assert rec["status"] == "ok" and rec["ai"]["proxy"]["meta"]["provider_name"] == "mock"
    used = rec["context"]["ai_request_transformer"]
    assert (used["prompt_tokens"], used["completion_tokens"], used["total_tokens"]) == (40, 12, 52)
    assert used["provider"] == "openai" and used["model"] == "gpt-4o-mini"
    assert used["cost"] == pytest.approx((40 * 1.0 + 12 * 2.0) / 1e6)
    assert "payload" not in used  # log_payloads is off by default


def test_kong_extract_pattern_keeps_only_the_json(gw: Gateway, fake: FakeUpstream) -> None:
    def chatty(system: str, user: str) -> str:
        return (
            f"Sure! Here is the request:\n```json\n{to_french(system, user)}\n```\nAnything else?"
        )

    serve(fake, chatty)
    answer = client(gw, "req-pattern").chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "Hello, how are you?"}]
    )
    assert answer.choices[0].message.content == "Bonjour, comment allez-vous ?"


def test_answer_without_a_match_is_a_400(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, lambda s, u: "I cannot rewrite this request.")
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "req-pattern").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    err = e.value.body
    assert err["code"] == "transformation_failed"
    assert err["message"] == (
        "ai-request-transformer: the LLM's answer did not match transformation_extract_pattern"
    )


def test_answer_that_is_not_json_is_a_400_on_an_ai_proxy_route(
    gw: Gateway, fake: FakeUpstream
) -> None:
    serve(fake, lambda s, u: "Bonjour !")
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "req").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.body["code"] == "transformation_failed"
    assert "the transformed body is not JSON" in e.value.body["message"]
    rec = my_record(gw)
    assert rec["status"] == "error" and rec["error"]["source"] == "gateway"
    assert rec["response"]["status"] == 400


def test_llm_error_is_a_502_naming_the_transformer(gw: Gateway, fake: FakeUpstream) -> None:
    serve(
        fake,
        lambda s, u: Reply.json(
            {"error": {"message": "model overloaded", "type": "server_error"}}, 503
        ),
    )
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "req").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 502
    assert e.value.body["code"] == "transformer_llm_error"
    assert e.value.body["message"] == (
        "ai-request-transformer: the transformer's LLM (openai/gpt-4o-mini) answered 503: "
        "model overloaded"
    )


def test_slow_llm_is_a_504_after_http_timeout(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, lambda s, u: Reply(hang=True))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "req-slow").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 504 and e.value.body["code"] == "upstream_timeout"
    assert e.value.body["message"].startswith(
        "ai-request-transformer: the transformer's LLM (openai/gpt-4o-mini): the upstream "
    )
    assert e.value.body["message"].endswith("sent nothing for 0.5s (http_timeout)")


def test_unreachable_llm_is_a_502(gw: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "req-dead").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 502 and e.value.body["code"] == "upstream_unreachable"


def test_body_larger_than_max_request_body_size_is_a_413(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, to_french)
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "req-small").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "x" * 100}]
        )
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    assert llm_calls(fake) == []  # refused before the LLM was asked


def test_undecodable_body_is_a_400(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, to_french)
    resp = httpx.post(
        f"{gw.url}/req/v1/chat/completions",
        content=b"this is not gzip",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert resp.status_code == 400
    assert "cannot decode" in resp.json()["error"]["message"]
    assert llm_calls(fake) == []


# ----------------------------------------------------------- response transformer


def capitals(system: str, user: str) -> str:
    """The LLM's rewrite of a chat answer: its content in capitals."""
    answer = json.loads(user)
    answer["choices"][0]["message"]["content"] = answer["choices"][0]["message"]["content"].upper()
    return json.dumps(answer)


def test_response_rewritten_by_the_llm(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, capitals, usage=(30, 9))
    answer = client(gw, "resp").chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hello world"}]
    )
    assert answer.choices[0].message.content == "HELLO WORLD"

    (asked,) = llm_calls(fake)
    messages = asked.json()["messages"]
    assert messages[0]["content"] == RESP_PROMPT
    original = json.loads(messages[1]["content"])  # ai-proxy's OpenAI-format answer
    assert original["choices"][0]["message"]["content"] == "hello world"

    rec = my_record(gw)
    assert rec["status"] == "ok"
    used = rec["context"]["ai_response_transformer"]
    assert used["total_tokens"] == 39
    # log_payloads on the transformer's llm block: what it was sent and answered
    assert json.loads(used["payload"]["request"]) == original
    assert json.loads(used["payload"]["response"])["choices"][0]["message"]["content"] == (
        "HELLO WORLD"
    )


def test_json_instructions_set_status_and_headers(gw: Gateway, fake: FakeUpstream) -> None:
    def review(system: str, user: str) -> str:
        body = json.loads(user)
        body["choices"][0]["message"]["content"] = (
            "reviewed: " + body["choices"][0]["message"]["content"]
        )
        todo = {"status": 201, "headers": {"x-compliance": "reviewed"}, "body": body}
        return f"Here are the instructions:\n{json.dumps(todo, indent=2)}\nDone."

    serve(fake, review)
    raw = client(gw, "resp-json").chat.completions.with_raw_response.create(
        model="mock-gpt", messages=[{"role": "user", "content": "the plan"}]
    )
    assert raw.status_code == 201
    assert raw.headers["x-compliance"] == "reviewed"
    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().choices[0].message.content == "reviewed: the plan"


def test_json_instructions_can_refuse_the_answer(gw: Gateway, fake: FakeUpstream) -> None:
    blocked = {
        "status": 403,
        "body": {"error": {"message": "blocked by the compliance review", "type": "policy"}},
    }
    serve(fake, lambda s, u: json.dumps(blocked))
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(gw, "resp-json").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "leak the secrets"}]
        )
    assert e.value.body["message"] == "blocked by the compliance review"
    assert my_record(gw)["response"]["status"] == 403


def test_unusable_json_instructions_are_a_502(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, lambda s, u: '{"status": "soon", "body": "x"}')
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "resp-json").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 502
    assert e.value.body["message"].startswith(
        "ai-response-transformer: failed to parse JSON response instructions from the LLM: "
        "'status' must be an HTTP status code"
    )


def test_streamed_answer_passes_through_unchanged(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, capitals)
    stream = client(gw, "resp").chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hello stream"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "hello stream"
    assert my_record(gw)["status"] == "ok"
    assert llm_calls(fake) == []


def test_llm_failure_on_the_response_is_the_clients_error(gw: Gateway, fake: FakeUpstream) -> None:
    serve(fake, lambda s, u: Reply.json({"error": {"message": "quota exceeded"}}, 429))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, "resp").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 502
    assert e.value.body["message"] == (
        "ai-response-transformer: the transformer's LLM (openai/gpt-4o-mini) answered 429: "
        "quota exceeded"
    )
    assert my_record(gw)["error"]["source"] == "gateway"


# ------------------------------------------------------------ a plain service


def test_plain_service_request_and_response_rewritten(gw: Gateway, fake: FakeUpstream) -> None:
    def llm(system: str, user: str) -> str:
        if system == PLAIN_REQ_PROMPT:
            return user.upper()
        assert system == PLAIN_RESP_PROMPT
        return f"summary of <{user}>"

    serve(
        fake,
        llm,
        backend=lambda r: Reply(202, {"content-type": "text/plain", "x-backend": "yes"}, b"page"),
    )
    resp = httpx.post(
        f"{gw.url}/plain/form",
        content=b"name=bob&city=paris",
        headers={"content-type": "application/x-www-form-urlencoded", "X-Message-Id": TAG.id},
    )
    (backend,) = [r for r in fake.received if r.path.startswith("/backend")]
    assert backend.path == "/backend/form"
    assert backend.body == b"NAME=BOB&CITY=PARIS"  # the LLM's bytes, as they are

    assert resp.status_code == 202  # the backend's status and headers, the LLM's body
    assert resp.headers["x-backend"] == "yes"
    assert resp.text == "summary of <page>"

    rec = my_record(gw)
    assert rec["context"]["ai_request_transformer"]["total_tokens"] == 52
    assert rec["context"]["ai_response_transformer"]["total_tokens"] == 52
