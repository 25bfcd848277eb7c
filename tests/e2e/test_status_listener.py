"""The status listener end to end: served on a free loopback port by the test's own
event loop (as the gateway serves it on mitmproxy's), scraped over HTTP with httpx;
then a real gateway process with the listener and the embedded store."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters.metrics import Metrics
from exporters.sqlite import open_store
from tests.conftest import free_port
from tests.unit.test_sqlite import KINDS


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float | None:
    found = [v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab)]
    return sum(found) if found else None


@pytest.fixture
async def listener() -> Any:
    m = Metrics(version="1.2.3")
    port = await m.start("127.0.0.1", 0)
    assert port == m.port and port > 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        yield m, client
    await m.stop()


async def test_metrics_status_and_health(listener: Any) -> None:
    m, client = listener
    m.set_config(routes=4, models=["gpt-4o"], source="llmitm.yaml")
    m.stats_source = lambda: {
        "opik-log:abc": {"sent": 3, "retried": 1, "spooled": 0, "dropped": 0, "depth": 2}
    }
    for record in KINDS.values():
        m.observe(record)

    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(r.text)
    assert total(samples, "ai_llm_requests_total") == len(KINDS) - 1
    assert total(samples, "ai_llm_requests_total", ai_model="gpt-4o", status="error") == 1
    assert total(samples, "ai_llm_tokens_total", token_type="cache_read_tokens") == 1000
    assert total(samples, "ai_llm_cost_total") == pytest.approx(
        0.0003 + 0.001 + 0.00000016 + 0.0001 + 0.0123
    )
    assert total(samples, "ai_llm_provider_latency_ms_count") == len(KINDS) - 1
    assert total(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 7
    assert total(samples, "gen_ai_client_operation_duration_seconds_count") == len(KINDS) - 1
    assert total(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == 2
    assert total(samples, "llmitm_http_requests_total", code="404") == 1
    assert total(samples, "llmitm_exporter_sent_total", exporter="opik-log:abc") == 3
    assert total(samples, "llmitm_exporter_queue_depth", exporter="opik-log:abc") == 2
    assert total(samples, "llmitm_info", version="1.2.3") == 1
    assert total(samples, "process_resident_memory_bytes")

    r = await client.get("/status")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    status = r.json()
    assert status["version"] == "1.2.3"
    assert status["config"] == {"routes": 4, "source": "llmitm.yaml"}
    assert status["calls"] == {"total": 11, "ok": 8, "error": 2, "client_aborted": 1}
    assert status["exporters"]["opik-log:abc"]["retried"] == 1
    assert 0 <= status["uptime_seconds"] < 60

    r = await client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = await client.head("/health")
    assert r.status_code == 200


async def test_openmetrics_for_scrapers_that_ask(listener: Any) -> None:
    m, client = listener
    m.observe(KINDS["chat"])
    r = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert "ai_llm_requests_total{" in r.text


async def test_unknown_paths_and_methods(listener: Any) -> None:
    _, client = listener
    assert (await client.get("/nope")).status_code == 404
    assert (await client.post("/metrics")).status_code == 405


async def test_scrapes_while_records_flow(listener: Any) -> None:
    m, client = listener
    records = list(KINDS.values())

    async def traffic() -> None:
        for i in range(2000):
            m.observe(records[i % len(records)])
            if i % 50 == 0:
                await asyncio.sleep(0)

    task = asyncio.create_task(traffic())
    seen: list[float] = []
    while not task.done():
        r = await client.get("/metrics")
        seen.append(total(parse(r.text), "llmitm_http_requests_total") or 0)
    await task
    r = await client.get("/metrics")
    seen.append(total(parse(r.text), "llmitm_http_requests_total") or 0)
    assert seen == sorted(seen)
    assert seen[-1] == 2000


async def test_rendering_the_metrics_does_not_hold_the_loop(listener: Any) -> None:
    m, client = listener
    real = m._encode

    def slow(accept: str | None) -> tuple[bytes, str]:
        time.sleep(0.5)  # a huge registry
        return real(accept)

    m._encode = slow  # type: ignore[method-assign]
    scrape = asyncio.create_task(client.get("/metrics"))
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    health = await client.get("/health")
    took = time.perf_counter() - start
    assert health.status_code == 200
    assert took < 0.3  # answered while the metrics were being rendered
    assert not scrape.done()
    assert (await scrape).status_code == 200


async def test_the_port_is_released_on_stop() -> None:
    port = free_port()
    first, second = Metrics(process_collectors=False), Metrics(process_collectors=False)
    assert await first.start("127.0.0.1", port) == port
    with pytest.raises(RuntimeError, match="already runs"):
        await first.start("127.0.0.1", port)
    with pytest.raises(OSError):
        await second.start("127.0.0.1", port)
    assert not second.listening
    await first.stop()
    await first.stop()  # twice is harmless
    assert await second.start("127.0.0.1", port) == port
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
    await second.stop()
    with socket.socket() as s, pytest.raises(OSError):
        s.connect(("127.0.0.1", port))


# --- a real gateway ---------------------------------------------------------------------
#
# These need the gateway's wiring: every record to `Metrics.observe` and to the store
# (`llmitm_store`), and the listener started from `llmitm_status_listen`.

CONFIG = """
_format_version: "3.0"
services:
  - name: local
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model:
                provider: mock
                name: mock-gpt
                options: {input_cost: 1.0, output_cost: 2.0}
              logging: {log_statistics: true, log_payloads: true}
      - name: embeddings
        paths: ["/v1/embeddings"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/embeddings
              model: {provider: mock, name: mock-embedding}
"""


def calls(gw: Any) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-client-secret", max_retries=0)
    client.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "héllo wörld 🚀"}],
        extra_headers={"X-User-Id": "user-123", "X-Session-Id": "sess-9"},
    )
    list(
        client.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "stream these words"}],
            stream=True,
        )
    )
    client.embeddings.create(model="mock-embedding", input=["a"])


def test_gateway_stores_every_call_without_a_sink(start_gateway) -> None:
    gw = start_gateway(CONFIG)
    calls(gw)
    gw.stop()  # the store is drained at shutdown
    with open_store(gw.store_path) as store:  # tests/conftest.py sets llmitm_store
        rows = store.latest()
        assert [(r.route, r.model, r.status) for r in rows] == [
            ("embeddings", "mock-embedding", "ok"),
            ("chat", "mock-gpt", "ok"),
            ("chat", "mock-gpt", "ok"),
        ]
        streamed, plain = rows[1], rows[2]
        assert streamed.stream and streamed.ttft_ms is not None
        assert plain.prompt_tokens and plain.cost
        full = store.get(plain.id)
        assert full["ai"]["proxy"]["payload"]["request"]["messages"][0]["content"] == (
            "héllo wörld 🚀"
        )
        assert full["context"]["user_id"] == "user-123"
        assert "sk-client-secret" not in json.dumps(full)
        assert {t.key: t.calls for t in store.totals("model")} == {
            "mock-gpt": 2,
            "mock-embedding": 1,
        }


def test_gateway_serves_its_metrics(start_gateway) -> None:
    port = free_port()
    gw = start_gateway(CONFIG, status_listen=f"127.0.0.1:{port}")
    calls(gw)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 5
    while True:  # records are observed just after each response
        samples = parse(httpx.get(f"{base}/metrics").text)
        if total(samples, "ai_llm_requests_total") == 3 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert total(samples, "ai_llm_requests_total", ai_provider="mock", ai_model="mock-gpt") == 2
    assert total(samples, "ai_llm_requests_total", route="embeddings", status="ok") == 1
    assert total(samples, "ai_llm_tokens_total", token_type="prompt_tokens")
    assert total(samples, "ai_llm_cost_total", route="chat")
    assert total(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == 1
    assert total(samples, "llmitm_http_requests_total", route="chat", code="200") == 2
    text = httpx.get(f"{base}/metrics").text
    assert "user-123" not in text and "sess-9" not in text and "sk-client-secret" not in text
    status = httpx.get(f"{base}/status").json()
    assert status["config"]["routes"] == 2
    assert status["calls"]["total"] == 3
    assert any(name.startswith("sqlite") for name in status["exporters"])
    assert httpx.get(f"{base}/health").status_code == 200
    gw.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health")


def test_the_prometheus_plugin_chooses_what_is_counted(start_gateway) -> None:
    """Kong's prometheus plugin fields: with `ai_metrics: false` the AI series stay empty
    while the request counts go on."""
    port = free_port()
    config = (
        CONFIG
        + """
plugins:
  - name: prometheus
    config: {ai_metrics: false}
"""
    )
    gw = start_gateway(config, status_listen=f"127.0.0.1:{port}")
    calls(gw)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 5
    while True:
        samples = parse(httpx.get(f"{base}/metrics").text)
        if total(samples, "llmitm_http_requests_total") == 3 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert total(samples, "llmitm_http_requests_total") == 3
    assert not total(samples, "ai_llm_requests_total")
    assert not total(samples, "ai_llm_tokens_total")


def test_the_exporters_counts_say_what_happened(start_gateway, tmp_path) -> None:
    """A file-log that cannot write (its path is a directory) reports its records
    failed, not sent; an http-log whose endpoint refuses the token reports the records
    kept (queue depth), not dropped, and raises the misconfigured gauge; the store,
    which can write, reports them sent."""
    from tests.fakes.upstream import FakeUpstream, Reply

    refusing = FakeUpstream().start()
    refusing.reply(Reply.json({"message": "bad token"}, 401))
    not_a_file = tmp_path / "a-directory"
    not_a_file.mkdir()
    port = free_port()
    config = (
        CONFIG
        + f"""
plugins:
  - name: file-log
    config: {{path: "{not_a_file}"}}
  - name: http-log
    config:
      http_endpoint: "{refusing.url}/logs"
      headers: {{X-Log-Token: wrong-token}}
"""
    )
    try:
        gw = start_gateway(config, status_listen=f"127.0.0.1:{port}", quiet=False)
        calls(gw)  # three calls
        base = f"http://127.0.0.1:{port}"

        def exporters() -> dict[str, dict[str, int]]:
            found = httpx.get(f"{base}/status").json()["exporters"]
            return {name.split(":", 1)[0]: s for name, s in found.items()}

        deadline = time.time() + 15
        while True:
            now = exporters()
            if (
                now.get("file-log", {}).get("failed") == 3
                and now.get("http-log", {}).get("misconfigured") == 1
                and now.get("http-log", {}).get("spooled") == 3
                and now.get("sqlite", {}).get("sent") == 3
            ):
                break
            assert time.time() < deadline, f"{now}\n{gw.log()[-3000:]}"
            time.sleep(0.1)
        assert (now["file-log"]["sent"], now["file-log"]["depth"]) == (0, 0)
        assert now["http-log"]["sent"] == now["http-log"]["dropped"] == 0
        assert now["http-log"]["depth"] == 3 and now["http-log"]["refused"] >= 1
        samples = parse(httpx.get(f"{base}/metrics").text)
        assert (
            total(samples, "llmitm_exporter_failed_total", exporter=f"file-log:{not_a_file}") == 3
        )
        misconfigured = [
            v
            for (name, labels), v in samples.items()
            if name == "llmitm_exporter_misconfigured"
            and dict(labels)["exporter"].startswith("http-log:")
        ]
        assert misconfigured == [1]
        assert "wrong-token" not in gw.log()
    finally:
        refusing.stop()
