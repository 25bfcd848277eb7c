"""The gateway as a user runs it: the README's quickstart, bad configs, hot reload."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai

from tests.conftest import REPO
from tests.fakes.upstream import FakeUpstream, Reply, chat_completion


def quickstart(tmp: Path) -> str:
    text = (REPO / "configs" / "quickstart.yaml").read_text()
    return text.replace("logs/llmitm-calls.jsonl", "{records}")


def test_quickstart_with_the_openai_sdk(start_gateway, tmp_path: Path) -> None:
    gw = start_gateway(quickstart(tmp_path))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)

    answer = client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.choices[0].message.content == "hello there"
    assert answer.usage.prompt_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "stream these words"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "stream these words"
    assert chunks[-1].usage.completion_tokens > 0

    done = client.completions.create(model="mock-instruct", prompt="complete me")
    assert done.choices[0].text == "complete me"
    emb = client.embeddings.create(model="mock-embedding", input=["a", "b"])
    assert len(emb.data) == 2 and emb.data[0].embedding != emb.data[1].embedding

    records = gw.wait_records(4)
    assert [r["ai"]["proxy"]["meta"]["route_type"] for r in records] == [
        "llm/v1/chat",
        "llm/v1/chat",
        "llm/v1/completions",
        "llm/v1/embeddings",
    ]
    streamed = records[1]["ai"]["proxy"]
    assert streamed["meta"]["request_mode"] == "stream"
    assert streamed["usage"]["time_to_first_token"] is not None
    assert streamed["usage"]["cost"] > 0


def test_bad_config_refuses_to_start_and_says_why(start_gateway) -> None:
    bad = """
_format_version: "3.0"
services:
  - name: llm
    routes:
      - name: chat
        paths: ["/chat"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chatt
              model: {provider: openai, naem: gpt-4o}
"""
    gw = start_gateway(bad, ready=False)
    assert gw.wait_exit() == 1
    log = gw.log()
    assert f"{gw.config_path}:11: services[0].routes[0].plugins[0].config.route_type" in log
    assert "llm/v1/chat" in log  # what was expected
    assert "config.model.naem: unknown field 'naem' (did you mean 'name'?)" in log
    assert "Traceback" not in log


def test_an_option_given_twice_refuses_to_start(start_gateway, tmp_path) -> None:
    """mitmproxy drops every option of a script when one is given twice; the gateway
    would serve nothing, silently. It refuses to start and names the option."""
    other = tmp_path / "other.yaml"
    other.write_text("_format_version: '3.0'\n")
    gw = start_gateway(quickstart(tmp_path), ready=False, extra=["--set", f"llmitm_config={other}"])
    assert gw.wait_exit() == 1
    assert "--set llmitm_config is given 2 times" in gw.log()


def test_an_unparsable_option_refuses_to_start(start_gateway, tmp_path) -> None:
    """A value mitmproxy cannot parse would drop every option of the script as silently:
    the gateway refuses to start and says which."""
    gw = start_gateway(
        quickstart(tmp_path), ready=False, extra=["--set", "llmitm_shutdown_grace=soon"]
    )
    assert gw.wait_exit() == 1
    assert "--set llmitm_shutdown_grace=soon: Failed to parse option" in gw.log()


def test_missing_secret_refuses_to_start(start_gateway) -> None:
    config = """
services:
  - name: llm
    routes:
      - paths: ["/chat"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              auth: {header_name: Authorization, header_value: "{vault://env/LLMITM_SURELY_UNSET}"}
              model: {provider: openai, name: gpt-4o}
"""
    gw = start_gateway(config, ready=False)
    assert gw.wait_exit() == 1
    assert "{vault://env/LLMITM_SURELY_UNSET}: environment variable is not set" in gw.log()


def test_hot_reload_keeps_last_good_config(start_gateway, fake: FakeUpstream) -> None:
    def config(path: str, model: str) -> str:
        return f"""
services:
  - name: llm
    routes:
      - paths: ["{path}"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model: {{provider: openai, name: {model}, options: {{upstream_url: "{fake.url}"}}}}
"""

    fake.reply(Reply.json(chat_completion()))
    gw = start_gateway(config("/v1/chat/completions", "gpt-a"), quiet=False)
    body = {"messages": [{"role": "user", "content": "x"}]}

    def post(path: str) -> httpx.Response:
        return httpx.post(f"{gw.url}{path}", json=body, timeout=5)

    assert post("/v1/chat/completions").status_code == 200
    assert fake.last().json()["model"] == "gpt-a"

    gw.write_config(config("/v2/chat/completions", "gpt-b"))
    _eventually(lambda: post("/v2/chat/completions").status_code == 200)
    assert fake.last().json()["model"] == "gpt-b"
    assert post("/v1/chat/completions").status_code == 404

    gw.write_config("services: [this is: not valid")
    _eventually(lambda: "keeping the last good config" in gw.log())
    assert post("/v2/chat/completions").status_code == 200  # still serving
    assert gw.proc.poll() is None


def _eventually(check, timeout: float = 5.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.1)
