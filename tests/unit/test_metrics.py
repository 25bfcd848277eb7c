"""exporters/metrics.py: records observed, the text format scraped and parsed back with
prometheus_client's own parsers, label cardinality bounded, exporter counters, /status."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from exporters.metrics import (
    OTEL_SECONDS_BUCKETS,
    OTEL_TOKEN_BUCKETS,
    LabelCap,
    Metrics,
    PrometheusConfig,
    gen_ai_provider,
    parse_listen,
)
from tests.unit.test_sqlite import KINDS, ai, rec

Samples = list[tuple[str, dict[str, str], float]]


def scrape(m: Metrics) -> Samples:
    body, content_type = m.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of the samples `name` whose labels include `labels` (None: no sample)."""
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    return sum(found) if found else None


def observed(*kinds: str, **kw: Any) -> Samples:
    m = Metrics(process_collectors=False)
    for kind in kinds:
        m.observe(KINDS[kind], **kw)
    return scrape(m)


GPT = {"ai_provider": "openai", "ai_model": "gpt-4o", "route": "chat"}
OTEL = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}

# kind -> [(sample, labels, value)]; value None: no such sample at all
EXPECTED: dict[str, list[tuple[str, dict[str, str], float | None]]] = {
    "chat": [
        ("ai_llm_requests_total", {**GPT, "request_mode": "oneshot", "status": "ok"}, 1),
        ("ai_llm_tokens_total", {**GPT, "token_type": "prompt_tokens"}, 12),
        ("ai_llm_tokens_total", {**GPT, "token_type": "completion_tokens"}, 7),
        ("ai_llm_tokens_total", {**GPT, "token_type": "total_tokens"}, 19),
        ("ai_llm_tokens_total", {"token_type": "cache_read_tokens"}, None),
        ("ai_llm_cost_total", GPT, 0.0003),
        ("ai_llm_provider_latency_ms_count", {**GPT, "request_mode": "oneshot"}, 1),
        ("ai_llm_provider_latency_ms_sum", GPT, 800),
        ("ai_llm_provider_latency_ms_bucket", {**GPT, "le": "750.0"}, 0),
        ("ai_llm_provider_latency_ms_bucket", {**GPT, "le": "1000.0"}, 1),
        ("ai_llm_time_to_first_token_ms_count", {}, None),  # not a stream
        ("gen_ai_client_operation_duration_seconds_count", {**OTEL, "error_type": ""}, 1),
        ("gen_ai_client_operation_duration_seconds_sum", {"gen_ai_operation_name": "chat"}, 1.0),
        ("gen_ai_client_token_usage_sum", {**OTEL, "gen_ai_token_type": "input"}, 12),
        ("gen_ai_client_token_usage_sum", {**OTEL, "gen_ai_token_type": "output"}, 7),
        ("gen_ai_client_token_usage_bucket", {"gen_ai_token_type": "input", "le": "4.0"}, 0),
        ("gen_ai_client_token_usage_bucket", {"gen_ai_token_type": "input", "le": "16.0"}, 1),
        ("gen_ai_client_operation_time_to_first_chunk_seconds_count", {}, None),
        ("llmitm_http_requests_total", {"route": "chat", "code": "200", "status": "ok"}, 1),
        ("llmitm_request_latency_ms_sum", {"route": "chat", "status": "ok"}, 1000),
        ("llmitm_upstream_latency_ms_sum", {"route": "chat"}, 800),
        ("llmitm_gateway_latency_ms_sum", {"route": "chat"}, 200),
        ("llmitm_bandwidth_bytes_total", {"route": "chat", "direction": "ingress"}, 120),
        ("llmitm_bandwidth_bytes_total", {"route": "chat", "direction": "egress"}, 456),
    ],
    "streamed": [
        ("ai_llm_requests_total", {**GPT, "request_mode": "stream"}, 1),
        ("ai_llm_time_to_first_token_ms_sum", GPT, 150),
        ("ai_llm_time_to_first_token_ms_bucket", {**GPT, "le": "100.0"}, 0),
        ("ai_llm_time_to_first_token_ms_bucket", {**GPT, "le": "200.0"}, 1),
        ("gen_ai_client_operation_time_to_first_chunk_seconds_sum", OTEL, 0.15),
        ("gen_ai_client_operation_duration_seconds_sum", OTEL, 2.0),
        ("ai_llm_provider_latency_ms_sum", {**GPT, "request_mode": "stream"}, 1900),
    ],
    "upstream_error": [
        ("ai_llm_requests_total", {**GPT, "status": "error"}, 1),
        ("ai_llm_tokens_total", {}, None),
        ("ai_llm_cost_total", {}, None),
        ("gen_ai_client_operation_duration_seconds_count", {**OTEL, "error_type": "429"}, 1),
        ("gen_ai_client_token_usage_count", {}, None),
        ("llmitm_http_requests_total", {"code": "429", "status": "error"}, 1),
        ("llmitm_request_latency_ms_count", {"route": "chat", "status": "error"}, 1),
    ],
    "client_aborted": [
        ("ai_llm_requests_total", {**GPT, "status": "client_aborted"}, 1),
        ("ai_llm_tokens_total", {**GPT, "token_type": "prompt_tokens"}, 30),  # estimated
        ("gen_ai_client_operation_duration_seconds_count", {"error_type": "client_aborted"}, 1),
        ("ai_llm_time_to_first_token_ms_sum", GPT, 90),
        ("llmitm_http_requests_total", {"code": "200", "status": "client_aborted"}, 1),
    ],
    "embeddings": [
        ("ai_llm_requests_total", {"ai_model": "text-embedding-3-small", "route": "embeddings"}, 1),
        ("ai_llm_tokens_total", {"token_type": "completion_tokens"}, 0),
        ("ai_llm_cost_total", {"ai_model": "text-embedding-3-small"}, 0.00000016),
        (
            "gen_ai_client_token_usage_sum",
            {"gen_ai_operation_name": "embeddings", "gen_ai_token_type": "input"},
            8,
        ),
        ("gen_ai_client_token_usage_count", {"gen_ai_token_type": "output"}, None),
    ],
    "no_usage": [
        ("ai_llm_requests_total", {"ai_provider": "ollama", "ai_model": "llama3"}, 1),
        ("ai_llm_tokens_total", {}, None),
        ("gen_ai_client_operation_duration_seconds_count", {"gen_ai_provider_name": "ollama"}, 1),
    ],
    "estimated": [
        ("ai_llm_tokens_total", {"ai_provider": "mock", "token_type": "total_tokens"}, 10),
    ],
    "payloads_and_context": [
        ("ai_llm_requests_total", {**GPT, "consumer": ""}, 1),  # per_consumer is off
    ],
    "cache_reasoning_cost": [
        ("ai_llm_tokens_total", {"ai_provider": "anthropic", "token_type": "prompt_tokens"}, 1200),
        ("ai_llm_tokens_total", {"token_type": "cache_read_tokens"}, 1000),
        ("ai_llm_tokens_total", {"token_type": "cache_write_tokens"}, 100),
        ("ai_llm_tokens_total", {"token_type": "reasoning_tokens"}, 120),
        ("ai_llm_cost_total", {"ai_model": "claude-sonnet-4"}, 0.0123),
        ("gen_ai_client_token_usage_sum", {"gen_ai_provider_name": "anthropic"}, 1500),
    ],
    "no_statistics": [
        ("ai_llm_requests_total", GPT, 1),
        ("ai_llm_provider_latency_ms_count", GPT, 1),
        ("ai_llm_tokens_total", {}, None),
        ("ai_llm_cost_total", {}, None),
        ("gen_ai_client_token_usage_count", {}, None),
    ],
    "no_ai": [
        ("ai_llm_requests_total", {}, None),
        ("gen_ai_client_operation_duration_seconds_count", {}, None),
        ("llmitm_http_requests_total", {"route": "", "code": "404", "status": "error"}, 1),
        ("llmitm_upstream_latency_ms_count", {}, None),  # no upstream was called
        ("llmitm_gateway_latency_ms_sum", {"route": ""}, 1.5),
    ],
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_kind_of_record(kind: str) -> None:
    samples = observed(kind)
    for name, labels, value in EXPECTED[kind]:
        got = total(samples, name, **labels)
        if value is None:
            assert got is None, (name, labels)
        else:
            assert got == pytest.approx(value), (name, labels, got)


def test_every_kind_together_adds_up() -> None:
    samples = observed(*KINDS)
    assert total(samples, "ai_llm_requests_total") == len(KINDS) - 1  # all but no_ai
    assert total(samples, "llmitm_http_requests_total") == len(KINDS)
    assert total(samples, "ai_llm_requests_total", status="error") == 1
    assert total(samples, "llmitm_http_requests_total", status="error") == 2
    # the three Kong token types: totals are prompt + completion
    prompt = total(samples, "ai_llm_tokens_total", token_type="prompt_tokens")
    completion = total(samples, "ai_llm_tokens_total", token_type="completion_tokens")
    assert total(samples, "ai_llm_tokens_total", token_type="total_tokens") == prompt + completion
    assert prompt == 12 + 20 + 30 + 8 + 5 + 9 + 1200


def test_the_histograms_have_the_conventions_buckets() -> None:
    samples = observed("streamed")

    def bounds(name: str) -> list[float]:
        return sorted(
            float(lab["le"]) for n, lab, _ in samples if n == name and lab["le"] != "+Inf"
        )

    assert bounds("gen_ai_client_token_usage_bucket") == [
        float(b) for b in OTEL_TOKEN_BUCKETS for _ in ("input", "output")
    ]
    assert bounds("gen_ai_client_operation_duration_seconds_bucket") == list(OTEL_SECONDS_BUCKETS)
    assert bounds("gen_ai_client_operation_time_to_first_chunk_seconds_bucket") == list(
        OTEL_SECONDS_BUCKETS
    )
    assert max(bounds("ai_llm_provider_latency_ms_bucket")) >= 120_000  # long generations


def test_kong_metric_names_and_types() -> None:
    m = Metrics(process_collectors=False)
    m.observe(KINDS["streamed"])
    body, _ = m.exposition()
    types = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert types["ai_llm_requests"] == "counter"
    assert types["ai_llm_tokens"] == "counter"
    assert types["ai_llm_cost"] == "counter"
    assert types["ai_llm_provider_latency_ms"] == "histogram"
    assert types["gen_ai_client_token_usage"] == "histogram"
    assert types["gen_ai_client_operation_duration_seconds"] == "histogram"
    assert "_created" not in body.decode()  # no extra series per counter
    text = body.decode()
    assert 'llmitm_info{version="' in text


# --- cardinality ----------------------------------------------------------------------


def model_labels(samples: Samples) -> set[str]:
    return {lab["ai_model"] for n, lab, _ in samples if n == "ai_llm_requests_total"}


def test_models_beyond_the_cap_are_other() -> None:
    m = Metrics(max_models=3, process_collectors=False)
    m.set_config(routes=1, models=["gpt-4o", "$(headers.x-model)", ""])
    base = KINDS["chat"]
    for i in range(10):
        m.observe(replace(base, ai=replace(base.ai, request_model=f"junk-{i}")))
    m.observe(base)  # named in the config: keeps its label after the cap
    m.observe(replace(base, ai=replace(base.ai, request_model="x" * 300)))
    samples = scrape(m)
    assert model_labels(samples) == {"junk-0", "junk-1", "junk-2", "other", "gpt-4o"}
    assert total(samples, "ai_llm_requests_total", ai_model="other") == 7 + 1
    gen_ai_models = {
        lab["gen_ai_request_model"]
        for n, lab, _ in samples
        if n == "gen_ai_client_operation_duration_seconds_count"
    }
    assert gen_ai_models == {"junk-0", "junk-1", "junk-2", "other", "gpt-4o"}
    assert "$(headers" not in m.exposition()[0].decode()


def test_routes_and_consumers_are_capped_too() -> None:
    m = Metrics(max_routes=2, max_consumers=1, process_collectors=False)
    per_consumer = PrometheusConfig(per_consumer=True)
    for i in range(5):
        m.observe(replace(KINDS["chat"], route=f"r{i}", consumer=f"c{i}"), per_consumer)
    samples = scrape(m)
    routes = {lab["route"] for n, lab, _ in samples if n == "llmitm_http_requests_total"}
    consumers = {lab["consumer"] for n, lab, _ in samples if n == "ai_llm_requests_total"}
    assert routes == {"r0", "r1", "other"}
    assert consumers == {"c0", "other"}


def test_no_user_or_session_id_is_ever_a_label() -> None:
    m = Metrics(process_collectors=False)
    m.observe(KINDS["payloads_and_context"], PrometheusConfig(per_consumer=True))
    m.observe(KINDS["payloads_and_context"])
    text = m.exposition()[0].decode()
    for value in ("u-42", "s-7", "c-1", "gold", "127.0.0.1", KINDS["payloads_and_context"].id):
        assert value not in text
    samples = scrape(m)
    assert total(samples, "ai_llm_requests_total", consumer="alice") == 1  # per_consumer
    assert total(samples, "ai_llm_requests_total", consumer="") == 1


def test_odd_http_codes_are_bounded() -> None:
    m = Metrics(process_collectors=False)
    m.observe(replace(KINDS["chat"], response={"status": 999, "size": 0}))
    m.observe(replace(KINDS["client_aborted"], response={"status": None, "size": None}))
    m.observe(replace(KINDS["chat"], response={}))
    samples = scrape(m)
    codes = {lab["code"] for n, lab, _ in samples if n == "llmitm_http_requests_total"}
    assert codes == {"other", "499", ""}


def test_label_cap() -> None:
    cap = LabelCap(2, fixed=["keep"])
    assert [cap(v) for v in ["a", "b", "c", "a", "keep", None, ""]] == [
        "a",
        "b",
        "other",
        "a",
        "keep",
        "",
        "",
    ]


# --- what is measured -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options, absent, present",
    [
        (
            {"ai_metrics": False},
            ["ai_llm_requests_total", "gen_ai_client_token_usage_count"],
            ["llmitm_http_requests_total"],
        ),
        (
            {"status_code_metrics": False},
            ["llmitm_http_requests_total"],
            ["ai_llm_requests_total", "llmitm_request_latency_ms_count"],
        ),
        (
            {"latency_metrics": False},
            ["llmitm_request_latency_ms_count", "llmitm_upstream_latency_ms_count"],
            ["ai_llm_provider_latency_ms_count", "llmitm_bandwidth_bytes_total"],
        ),
        (
            {"bandwidth_metrics": False},
            ["llmitm_bandwidth_bytes_total"],
            ["llmitm_http_requests_total"],
        ),
    ],
)
def test_options_of_the_prometheus_plugin(
    options: dict[str, bool], absent: list[str], present: list[str]
) -> None:
    samples = observed("streamed", options=PrometheusConfig(**options))
    for name in absent:
        assert total(samples, name) is None, name
    for name in present:
        assert total(samples, name), name


def test_kong_plugin_config() -> None:
    kong = PrometheusConfig(
        per_consumer=True,
        status_code_metrics=True,
        ai_metrics=True,
        latency_metrics=True,
        bandwidth_metrics=True,
        upstream_health_metrics=True,
    )
    assert kong.per_consumer
    assert PrometheusConfig().ai_metrics and not PrometheusConfig().per_consumer
    with pytest.raises(ValidationError, match="ai_metric"):
        PrometheusConfig(ai_metric=True)


@pytest.mark.parametrize(
    "provider, url, expected",
    [
        ("openai", None, "openai"),
        ("azure", None, "azure.ai.openai"),
        ("bedrock", None, "aws.bedrock"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/models/x", "gcp.gemini"),
        ("gemini", "https://us-east1-aiplatform.googleapis.com/v1/projects/p", "gcp.vertex_ai"),
        ("mistral", None, "mistral_ai"),
        ("xai", None, "x_ai"),
        ("ollama", None, "ollama"),
    ],
)
def test_gen_ai_provider_names(provider: str, url: str | None, expected: str) -> None:
    assert gen_ai_provider(provider, url) == expected


def test_bedrock_record_uses_the_conventions_name() -> None:
    record = replace(KINDS["chat"], ai=replace(KINDS["chat"].ai, provider="bedrock"))
    m = Metrics(process_collectors=False)
    m.observe(record)
    samples = scrape(m)
    assert total(samples, "ai_llm_requests_total", ai_provider="bedrock") == 1
    assert (
        total(
            samples,
            "gen_ai_client_operation_duration_seconds_count",
            gen_ai_provider_name="aws.bedrock",
        )
        == 1
    )


def test_observe_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(process_collectors=False)
    sparse = rec("x", ai(usage=None), latencies={}, response={}, request={})
    m.observe(sparse)
    broken = rec("y", None)
    broken.ai = object()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR):
        m.observe(broken)
        m.observe(broken)
    assert sum("could not update the metrics" in r.message for r in caplog.records) == 1
    assert total(scrape(m), "ai_llm_requests_total") == 1


# --- exporters and /status ------------------------------------------------------------


class DeliveryStats:
    sent = 7
    retried = 2
    spooled = 1
    dropped = 4


def test_exporter_counters() -> None:
    m = Metrics(
        process_collectors=False,
        stats_source=lambda: {
            "opik-log:abc": {"sent": 10, "retried": 3, "spooled": 5, "dropped": 1, "depth": 4},
            "ai-tracing:def": DeliveryStats(),
        },
    )
    m.set_exporter_stats("sqlite:store", 100, 0, 0, 0, 2, failed=1)
    samples = scrape(m)
    assert total(samples, "llmitm_exporter_sent_total", exporter="opik-log:abc") == 10
    assert total(samples, "llmitm_exporter_retried_total", exporter="opik-log:abc") == 3
    assert total(samples, "llmitm_exporter_spooled_total", exporter="opik-log:abc") == 5
    assert total(samples, "llmitm_exporter_dropped_total", exporter="opik-log:abc") == 1
    assert total(samples, "llmitm_exporter_queue_depth", exporter="opik-log:abc") == 4
    assert total(samples, "llmitm_exporter_sent_total", exporter="ai-tracing:def") == 7
    assert total(samples, "llmitm_exporter_queue_depth", exporter="ai-tracing:def") == 0
    assert total(samples, "llmitm_exporter_sent_total", exporter="sqlite:store") == 100
    assert total(samples, "llmitm_exporter_failed_total", exporter="sqlite:store") == 1
    m.forget_exporter("sqlite:store")
    assert total(scrape(m), "llmitm_exporter_sent_total", exporter="sqlite:store") is None


def test_a_failing_stats_source_does_not_break_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    m = Metrics(process_collectors=False, stats_source=broken)
    m.set_exporter_stats("file-log:x", 1, 0, 0, 0, 0)
    with caplog.at_level(logging.ERROR):
        samples = scrape(m)
    assert total(samples, "llmitm_exporter_sent_total", exporter="file-log:x") == 1
    assert "stats source failed" in caplog.text


def test_status() -> None:
    m = Metrics(version="9.9.9", process_collectors=False)
    m.set_config(routes=3, models=["gpt-4o"], source="/etc/llmitm.yaml")
    m.set_exporter_stats("file-log:x", 5, 0, 0, 1, 2)
    for record in KINDS.values():
        m.observe(record)
    status = m.status()
    assert status["version"] == "9.9.9"
    assert status["uptime_seconds"] >= 0
    assert status["config"] == {"routes": 3, "source": "/etc/llmitm.yaml"}
    assert status["calls"] == {"total": 11, "ok": 8, "error": 2, "client_aborted": 1}
    assert status["exporters"] == {
        "file-log:x": {
            "sent": 5,
            "retried": 0,
            "spooled": 0,
            "dropped": 1,
            "depth": 2,
            "failed": 0,
            "refused": 0,
            "misconfigured": 0,
        }
    }
    assert total(scrape(m), "llmitm_config_routes") == 3


def test_openmetrics_when_asked() -> None:
    m = Metrics(process_collectors=False)
    m.observe(KINDS["streamed"])
    body, content_type = m.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["ai_llm_requests"].samples[0].value == 1


def test_process_collectors() -> None:
    samples = scrape(Metrics())
    assert total(samples, "process_resident_memory_bytes")
    assert total(samples, "python_info") == 1


@pytest.mark.parametrize(
    "value, expected",
    [
        ("127.0.0.1:8100", ("127.0.0.1", 8100)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:8100", ("::1", 8100)),
        (":8100", ("127.0.0.1", 8100)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8100x", "localhost", "host:99999", "host:"])
def test_parse_listen_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="host:port or off"):
        parse_listen(value)
