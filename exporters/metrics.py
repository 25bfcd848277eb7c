"""Prometheus metrics of the calls, and the status listener that serves them.

`Metrics.observe(record)` runs on the event loop for every finished call: it only
updates in-memory counters and histograms (no I/O, child series cached by label
values). The status listener (`start(host, port)`, default 127.0.0.1:8100 like Kong's
status API) is an aiohttp server on the same loop, so a stuck loop shows as an
unanswered `/health`:

- `/metrics`: the Prometheus text format (OpenMetrics when the scraper asks for it)
- `/status`: JSON with the version, uptime, routes count, calls by status and the
  exporters' counters
- `/health`: 200 `{"status": "ok"}`; 503 `{"status": "draining"}` once the gateway is
  stopping (its calls in flight finishing)

Metric families (everything in its own `CollectorRegistry`):

- Kong's AI metrics, with Kong's names and label names (`ai_provider`, `ai_model`),
  plus `route`:
  `ai_llm_requests_total{ai_provider,ai_model,route,request_mode,status,consumer}`,
  `ai_llm_tokens_total{...,route,token_type,consumer}` (Kong's prompt_tokens,
  completion_tokens and total_tokens, plus cache_read_tokens, cache_write_tokens and
  reasoning_tokens when non-zero), `ai_llm_cost_total{...,route,consumer}`,
  `ai_llm_provider_latency_ms{...,route,request_mode}` (the provider's part) and
  `ai_llm_time_to_first_token_ms{...,route}` (streams only).
- The OpenTelemetry GenAI client metrics, as an OTel Prometheus exporter names them:
  `gen_ai_client_token_usage` (`gen_ai_token_type` input/output),
  `gen_ai_client_operation_duration_seconds` (the whole call as the client saw it,
  `error_type` on failures) and `gen_ai_client_operation_time_to_first_chunk_seconds`
  (streams only), with the semantic conventions' bucket boundaries and
  `gen_ai_operation_name`, `gen_ai_provider_name` and `gen_ai_request_model` labels.
- Gateway traffic, Kong-like: `llmitm_http_requests_total{route,code,status,consumer}`,
  `llmitm_request_latency_ms{route,status}`, `llmitm_upstream_latency_ms{route}`,
  `llmitm_gateway_latency_ms{route}`, `llmitm_bandwidth_bytes_total{route,direction}`.
- Exporters: `llmitm_exporter_{sent,retried,spooled,dropped,failed}_total{exporter}`,
  `llmitm_exporter_refused_requests_total{exporter}` (requests a sink refused for the
  exporter's settings: a wrong key or URL; their records are kept),
  `llmitm_exporter_queue_depth{exporter}` (records waiting: in memory, in the spool, in
  a writer thread) and `llmitm_exporter_misconfigured{exporter}` (1 while the sink
  refuses the settings), read at scrape time from what the delivery reports
  (`set_exporter_stats` or a `stats_source` function).
- `llmitm_info{version}`, `llmitm_config_routes`, and the process, platform and GC
  collectors of prometheus_client.

Label cardinality is bounded: no user, session or other per-request id is ever a
label. Models named in the config (`set_config(models=...)`) always keep their own
label; the first `max_models` other distinct models seen keep theirs too and any
later one is counted as `other` (clients of a route without a fixed model choose the
model name, so it cannot be trusted to stay small). Routes, providers and consumers
are config names, capped the same way against reload churn; values longer than 200
characters are `other`; an HTTP code outside 100..599 is `other`.
`per_consumer` (off by default, as in Kong) fills the `consumer` label.

What is measured follows Kong's prometheus plugin fields (`PrometheusConfig`): the
route's plugin config can be passed to `observe`. Tokens and cost are counted only
when the route's `logging.log_statistics` is on, since the record carries no usage
otherwise.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from pydantic import Field

from exporters._threads import run_blocking
from exporters.record import CallRecord
from providers.options import Strict

log = logging.getLogger(__name__)

# `<name>_created` series double the series count and nothing reads them (Kong has
# none); this switch is process-wide, and llmitm is the only user of it in-process.
disable_created_metrics()

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8100
OTHER = "other"
MAX_LABEL_LEN = 200

# Milliseconds: calls to LLMs take from tens of ms (embeddings, cached) to minutes.
LATENCY_MS_BUCKETS = (
    5, 10, 25, 50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500,
    10000, 15000, 30000, 60000, 120000, 300000,
)  # fmt: skip
# What the gateway itself adds is small: finer low buckets.
GATEWAY_MS_BUCKETS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
TTFT_MS_BUCKETS = (
    10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
)  # fmt: skip
# The OpenTelemetry GenAI semantic conventions' advised boundaries.
OTEL_SECONDS_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
OTEL_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip

#: Kong route_type -> gen_ai.operation.name
OPERATIONS = {
    "llm/v1/chat": "chat",
    "llm/v1/completions": "text_completion",
    "llm/v1/embeddings": "embeddings",
}
#: llmitm provider -> gen_ai.provider.name, where the conventions name it otherwise
GEN_AI_PROVIDERS = {
    "azure": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "xai": "x_ai",
}


def gen_ai_provider(provider: str, upstream_url: str | None = None) -> str:
    """`gen_ai.provider.name` of an llmitm provider (Gemini on Vertex is gcp.vertex_ai)."""
    if provider == "gemini" and upstream_url and "aiplatform.googleapis.com" in upstream_url:
        return "gcp.vertex_ai"
    return GEN_AI_PROVIDERS.get(provider, provider)


class PrometheusConfig(Strict):
    """Kong's prometheus plugin: what is measured on the routes it applies to.

    Kong's defaults are all false; llmitm's are true but for `per_consumer`, since the
    listener is what these are for and every label here is bounded.
    """

    per_consumer: bool = Field(
        False, description="Label request, token and cost metrics with the consumer name."
    )
    status_code_metrics: bool = Field(True, description="Requests per route, HTTP code, status.")
    ai_metrics: bool = Field(True, description="Kong's ai_llm_* and OTel's gen_ai_* metrics.")
    latency_metrics: bool = Field(
        True, description="Request, upstream and gateway latency histograms per route."
    )
    bandwidth_metrics: bool = Field(True, description="Request and response bytes per route.")
    upstream_health_metrics: bool = Field(
        False,
        description="Accepted for Kong compatibility; llmitm has no upstream health checks.",
    )


DEFAULTS = PrometheusConfig()


class LabelCap:
    """Keeps a label's distinct values bounded: `fixed` values (from the config) and the
    first `limit` others seen keep their own value, any later one becomes "other"."""

    def __init__(self, limit: int, fixed: Iterable[str] = ()) -> None:
        self.limit = limit
        self.fixed = frozenset(fixed)
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self.fixed or value in self.seen:
            return value
        if len(value) > MAX_LABEL_LEN or len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


@dataclass(slots=True)
class ExporterStats:
    sent: int = 0
    retried: int = 0
    spooled: int = 0
    dropped: int = 0
    depth: int = 0
    failed: int = 0  # records a write error lost (file-log, the store)
    refused: int = 0  # requests refused for the exporter's settings (401, 403, 404, 3xx)
    misconfigured: int = 0  # 1 while the sink refuses the settings


_FIELDS = ("sent", "retried", "spooled", "dropped", "depth", "failed", "refused", "misconfigured")


StatsSource = Callable[[], Mapping[str, Any]]


def _stats(value: Any) -> ExporterStats:
    """ExporterStats from a mapping or an object with the same fields (absent ones: 0)."""
    if isinstance(value, ExporterStats):
        return value
    get = value.get if isinstance(value, Mapping) else lambda k, d: getattr(value, k, d)
    return ExporterStats(**{k: int(get(k, 0) or 0) for k in _FIELDS})


def _version() -> str:
    try:
        return importlib.metadata.version("llmitm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_listen(value: str) -> tuple[str, int] | None:
    """A status listen address: "host:port", "[v6]:port", or "off" (None)."""
    value = value.strip()
    if value.lower() in ("off", ""):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port or off, got {value!r}")
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_HOST
    return host, int(port)


class Metrics:
    """The gateway's metrics, and the status listener serving them."""

    def __init__(
        self,
        *,
        max_models: int = 100,
        max_routes: int = 500,
        max_consumers: int = 200,
        version: str | None = None,
        stats_source: StatsSource | None = None,
        process_collectors: bool = True,
    ) -> None:
        self.version = version or _version()
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.registry = CollectorRegistry()
        self.stats_source = stats_source
        self.routes_count = 0
        self.config_source: str | None = None
        self.calls: dict[str, int] = {"ok": 0, "error": 0, "client_aborted": 0}
        self._exporters: dict[str, ExporterStats] = {}
        self._snapshot: dict[str, ExporterStats] = {}
        self._failed_once = False
        self._runner: web.AppRunner | None = None
        # the gateway is shutting down, letting its calls in flight finish: /health says
        # so with a 503, for a load balancer to send the next calls elsewhere
        self.draining = False
        self.host: str | None = None
        self.port: int | None = None

        self._models = LabelCap(max_models)
        self._routes = LabelCap(max_routes)
        self._providers = LabelCap(100)
        self._consumers = LabelCap(max_consumers)
        self.max_models = max_models

        r = self.registry
        ai = ["ai_provider", "ai_model", "route"]
        self.ai_requests = _CallCounter(
            "ai_llm_requests_total",
            "AI requests sent to LLM providers",
            [*ai, "request_mode", "status", "consumer"],
        )
        self.ai_tokens = _CallCounter(
            "ai_llm_tokens_total",
            "AI tokens counted by LLM providers (or estimated by the gateway)",
            [*ai, "token_type", "consumer"],
        )
        self.ai_cost = _CallCounter(
            "ai_llm_cost_total",
            "AI cost charged by LLM providers (from the route's prices or the provider's own figure)",
            [*ai, "consumer"],
        )
        self.ai_latency = _CallHistogram(
            "ai_llm_provider_latency_ms",
            "Time taken by the LLM provider to return a response, in ms",
            [*ai, "request_mode"],
            buckets=LATENCY_MS_BUCKETS,
        )
        self.ai_ttft = _CallHistogram(
            "ai_llm_time_to_first_token_ms",
            "Time to the first streamed token, from the client's request, in ms",
            ai,
            buckets=TTFT_MS_BUCKETS,
        )
        gen_ai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
        self.gen_ai_tokens = _CallHistogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used",
            [*gen_ai, "gen_ai_token_type"],
            buckets=OTEL_TOKEN_BUCKETS,
        )
        self.gen_ai_duration = _CallHistogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration",
            [*gen_ai, "error_type"],
            buckets=OTEL_SECONDS_BUCKETS,
        )
        self.gen_ai_ttfc = _CallHistogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to receive the first chunk of a streamed response",
            gen_ai,
            buckets=OTEL_SECONDS_BUCKETS,
        )
        self.store_unavailable = Counter(
            "llmitm_policy_store_unavailable_total",
            "Requests a limit plugin could not count (its Redis unreachable), by what "
            "happened to them: allowed (fault_tolerant) or refused",
            ["plugin", "outcome"],
            registry=r,
        )
        self.http_requests = _CallCounter(
            "llmitm_http_requests_total",
            "Requests through the gateway per route, HTTP code and call status",
            ["route", "code", "status", "consumer"],
        )
        self.request_latency = _CallHistogram(
            "llmitm_request_latency_ms",
            "Whole call latency as the client saw it, in ms",
            ["route", "status"],
            buckets=LATENCY_MS_BUCKETS,
        )
        self.upstream_latency = _CallHistogram(
            "llmitm_upstream_latency_ms",
            "Time spent waiting for the upstream, in ms",
            ["route"],
            buckets=LATENCY_MS_BUCKETS,
        )
        self.gateway_latency = _CallHistogram(
            "llmitm_gateway_latency_ms",
            "Time the gateway itself added, in ms",
            ["route"],
            buckets=GATEWAY_MS_BUCKETS,
        )
        self.bandwidth = _CallCounter(
            "llmitm_bandwidth_bytes_total",
            "Request (ingress) and response (egress) body bytes",
            ["route", "direction"],
        )
        self.config_routes = Gauge(
            "llmitm_config_routes", "Routes in the running config", registry=r
        )
        Info("llmitm", "The gateway", registry=r).info({"version": self.version})
        r.register(_ExporterCollector(self))
        r.register(_CallCollector(self))
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # -- config and exporters (called by the gateway)

    def set_config(
        self, *, routes: int, models: Iterable[str] = (), source: str | None = None
    ) -> None:
        """The running config: its routes count, and the models it names (they always
        keep their own label; templated names like "$(headers.x)" are skipped)."""
        self.routes_count = routes
        self.config_source = source
        self.config_routes.set(routes)
        fixed = {m for m in models if m and "$(" not in m and len(m) <= MAX_LABEL_LEN}
        self._models.fixed = frozenset(fixed)

    def set_exporter_stats(
        self,
        name: str,
        sent: int,
        retried: int,
        spooled: int,
        dropped: int,
        depth: int,
        failed: int = 0,
        refused: int = 0,
        misconfigured: int = 0,
    ) -> None:
        """Cumulative counters of one exporter (and its current queue depth)."""
        self._exporters[name] = ExporterStats(
            sent, retried, spooled, dropped, depth, failed, refused, misconfigured
        )

    def forget_exporter(self, name: str) -> None:
        self._exporters.pop(name, None)

    def exporter_stats(self) -> dict[str, ExporterStats]:
        """Every exporter's counters: those set, then those the stats source reports."""
        out = dict(self._exporters)
        if self.stats_source is not None:
            try:
                for name, value in self.stats_source().items():
                    out[name] = _stats(value)
            except Exception:
                log.exception("llmitm: the exporters' stats source failed")
        return out

    # -- the hot path

    def observe(self, record: CallRecord, options: PrometheusConfig | None = None) -> None:
        """Count one finished call (in memory only; never raises)."""
        try:
            self._observe(record, options or DEFAULTS)
        except Exception:
            if not self._failed_once:  # once: a bug here must not flood the log per call
                self._failed_once = True
                log.exception("llmitm: could not update the metrics of a call")

    def _observe(self, record: CallRecord, o: PrometheusConfig) -> None:
        status = record.status
        self.calls[status] = self.calls.get(status, 0) + 1
        route = self._routes(record.route)
        consumer = self._consumers(record.consumer) if o.per_consumer else ""
        lat = record.latencies or {}
        total_ms = lat.get("request")

        if o.status_code_metrics:
            code = (record.response or {}).get("status")
            if isinstance(code, int) and not isinstance(code, bool):
                label = str(code) if 100 <= code <= 599 else OTHER
            else:  # no response: nginx's 499 for a client that left, else unknown
                label = "499" if status == "client_aborted" else ""
            self.http_requests.inc((route, label, status, consumer))

        if o.latency_metrics:
            if total_ms is not None:
                self.request_latency.observe((route, status), total_ms)
            if lat.get("proxy") is not None:
                self.upstream_latency.observe((route,), lat["proxy"])
            if lat.get("gateway") is not None:
                self.gateway_latency.observe((route,), max(lat["gateway"], 0.0))

        if o.bandwidth_metrics:
            size_in = (record.request or {}).get("size")
            size_out = (record.response or {}).get("size")
            if size_in:
                self.bandwidth.inc((route, "ingress"), size_in)
            if size_out:
                self.bandwidth.inc((route, "egress"), size_out)

        ai = record.ai
        if ai is None or not o.ai_metrics:
            return
        provider = self._providers(ai.provider)
        model = self._models(ai.request_model or ai.response_model)
        mode = "stream" if ai.stream else "oneshot"
        op = OPERATIONS.get(ai.route_type, ai.route_type)
        gp = self._providers(gen_ai_provider(ai.provider, ai.upstream_url))

        self.ai_requests.inc((provider, model, route, mode, status, consumer))
        if ai.llm_latency_ms is not None:
            self.ai_latency.observe((provider, model, route, mode), ai.llm_latency_ms)
        if total_ms is not None:
            error = "" if status == "ok" else _error_type(record)
            self.gen_ai_duration.observe((op, gp, model, error), total_ms / 1000)
        ttft = ai.time_to_first_token_ms
        if ai.stream and ttft is not None:
            self.ai_ttft.observe((provider, model, route), ttft)
            self.gen_ai_ttfc.observe((op, gp, model), ttft / 1000)

        if not ai.log_statistics:
            return
        usage = ai.usage
        if usage is not None:
            for token_type, n in (
                ("prompt_tokens", usage.prompt_tokens),
                ("completion_tokens", usage.completion_tokens),
                ("total_tokens", usage.total_tokens),
                ("cache_read_tokens", usage.cache_read_tokens),
                ("cache_write_tokens", usage.cache_write_tokens),
                ("reasoning_tokens", usage.reasoning_tokens),
            ):
                if n or token_type in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    self.ai_tokens.inc((provider, model, route, token_type, consumer), n)
            self.gen_ai_tokens.observe((op, gp, model, "input"), usage.prompt_tokens)
            if ai.route_type != "llm/v1/embeddings":  # embeddings have no output tokens
                self.gen_ai_tokens.observe((op, gp, model, "output"), usage.completion_tokens)
        if ai.cost is not None:
            self.ai_cost.inc((provider, model, route, consumer), ai.cost)

    # -- scraping

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics in the format `accept` asks for (default: Prometheus text), and
        its content type."""
        self._snapshot = self.exporter_stats()
        return self._encode(accept)

    def _encode(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def status(self) -> dict[str, Any]:
        """What `/status` answers."""
        return {
            "version": self.version,
            "started_at": round(self.started_at, 3),
            "uptime_seconds": round(time.monotonic() - self._started_mono, 3),
            "config": {"routes": self.routes_count, "source": self.config_source},
            "calls": {"total": sum(self.calls.values()), **self.calls},
            "exporters": {name: asdict(s) for name, s in sorted(self.exporter_stats().items())},
        }

    # -- the status listener

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
        """Serve /metrics, /status and /health on the running loop; returns the port
        (useful with port 0). Raises OSError when the address is taken."""
        if self._runner is not None:
            raise RuntimeError(f"the status listener already runs on {self.host}:{self.port}")
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/status", self._handle_status)
        app.router.add_get("/health", self._handle_health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = runner.addresses[0][1]
        log.info("llmitm: status listener on http://%s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        # exporters' stats are read on the loop (they may be loop-owned objects); the
        # text is produced off it
        self._snapshot = self.exporter_stats()
        body, content_type = await run_blocking(self._encode, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _handle_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _handle_health(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})


def _error_type(record: CallRecord) -> str:
    """OTel's `error.type` for a failed call, low-cardinality: the HTTP status of the
    error, "client_aborted", "connection_error", else "_OTHER"."""
    if record.status == "client_aborted":
        return "client_aborted"
    err = record.error or {}
    status = err.get("status")
    if status is None:
        status = (record.response or {}).get("status")
    if isinstance(status, int) and 100 <= status <= 599:
        return str(status)
    if err.get("type") == "connection_error":
        return "connection_error"
    return "_OTHER"


class _ExporterCollector:
    """The exporters' counters, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        stats = self.metrics._snapshot
        families = {
            field: CounterMetricFamily(
                f"llmitm_exporter_{field}", f"Records {field} by the exporter", labels=["exporter"]
            )
            for field in ("sent", "retried", "spooled", "dropped", "failed")
        }
        refused = CounterMetricFamily(
            "llmitm_exporter_refused_requests",
            "Requests the sink refused for the exporter's settings (a wrong key or URL); "
            "their records are kept",
            labels=["exporter"],
        )
        depth = GaugeMetricFamily(
            "llmitm_exporter_queue_depth",
            "Records waiting to be delivered: in memory, in the disk spool, in a writer",
            labels=["exporter"],
        )
        misconfigured = GaugeMetricFamily(
            "llmitm_exporter_misconfigured",
            "1 while the sink refuses the exporter's settings (fix the plugin's config)",
            labels=["exporter"],
        )
        for name, s in sorted(stats.items()):
            for field, family in families.items():
                family.add_metric([name], getattr(s, field))
            refused.add_metric([name], s.refused)
            depth.add_metric([name], s.depth)
            misconfigured.add_metric([name], s.misconfigured)
        yield from families.values()
        yield refused
        yield depth
        yield misconfigured


# -- the per-call metrics ---------------------------------------------------------------


class _CallCounter:
    """A labelled counter of the per-call metrics, kept in a dict: `Metrics.observe`
    updates a dozen series per call, and prometheus_client's own metrics (a child
    object per label set, a lock per update) made that 26 µs of every call. The event
    loop is the only writer; `_CallCollector` renders the series at scrape time,
    as prometheus_client's Counter would."""

    __slots__ = ("name", "documentation", "labelnames", "values")

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down ({amount})")
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return family


class _CallHistogram:
    """A labelled histogram of the per-call metrics (see `_CallCounter`): per label set,
    the count of each bucket (not cumulative) and the sum, last."""

    __slots__ = ("name", "documentation", "labelnames", "bounds", "values")

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str], buckets: Iterable[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)  # +Inf is implied, last
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1  # the first bucket with le >= value
        row[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        for labels, row in list(self.values.items()):
            counts = itertools.accumulate(row[:-1])
            family.add_metric(labels, list(zip(les, counts, strict=True)), row[-1])
        return family


class _CallCollector:
    """The per-call metrics (`_CallCounter`, `_CallHistogram`), read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        for value in vars(self.metrics).values():
            if isinstance(value, _CallCounter | _CallHistogram):
                yield value.family()
