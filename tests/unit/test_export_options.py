"""Kong's `queue` block reaches the delivery: every field does what its doc says.

`addons/exporting.py` builds each HTTP sink's delivery from the plugin's config; these
tests read the delivery it builds from a loaded config (what a user writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from addons.config.loader import ConfigError, load_text
from addons.exporting import make_delivery
from exporters.http_delivery import PARALLEL_SENDERS, HttpDelivery


def delivery_of(plugin_yaml: str, tmp_path: Path) -> HttpDelivery:
    config = load_text(f'_format_version: "3.0"\nplugins:\n{plugin_yaml}')
    (plugin,) = [p for p in config.all_plugins() if p.name in ("http-log", "opentelemetry")]
    d = make_delivery(plugin, tmp_path)
    assert isinstance(d, HttpDelivery)
    return d


HTTP_LOG = """  - name: http-log
    config:
      http_endpoint: http://127.0.0.1:9/logs
"""

OTEL = """  - name: opentelemetry
    config:
      traces_endpoint: http://127.0.0.1:9/v1/traces
"""


def test_http_log_defaults(tmp_path: Path) -> None:
    d = delivery_of(HTTP_LOG, tmp_path)
    # max_batch_size 1 (Kong's default): nothing to coalesce, each record goes at once
    assert d.sink.max_batch == 1 and d.linger == 0
    assert (d.capacity, d.initial_retry_delay, d.max_retry_delay) == (10_000, 0.01, 60)
    # unset: no byte bound, never give up (the spool keeps what the endpoint refuses)
    assert d.max_bytes is None and d.max_retry_time is None
    assert d.senders == 1


def test_every_queue_field_is_passed_on(tmp_path: Path) -> None:
    d = delivery_of(
        HTTP_LOG
        + """      queue:
        max_batch_size: 50
        max_coalescing_delay: 0.5
        max_entries: 500
        max_bytes: 100000
        max_retry_time: 120
        initial_retry_delay: 0.2
        max_retry_delay: 8
        concurrency_limit: -1
""",
        tmp_path,
    )
    assert d.sink.max_batch == 50 and d.linger == 0.5
    assert (d.capacity, d.max_bytes, d.max_retry_time) == (500, 100_000, 120)
    assert (d.initial_retry_delay, d.max_retry_delay) == (0.2, 8)
    assert d.senders == PARALLEL_SENDERS


def test_opentelemetry_queue(tmp_path: Path) -> None:
    d = delivery_of(OTEL, tmp_path)
    assert d.sink.max_batch == 200 and d.linger == 1  # Kong's batch and delay
    d = delivery_of(OTEL + "      queue: {max_batch_size: 1, max_retry_time: 0}\n", tmp_path)
    assert d.linger == 0 and d.max_retry_time == 0


@pytest.mark.parametrize(
    "queue, message",
    [
        ("{concurrency_limit: 4}", "concurrency_limit"),
        ("{max_retry_time: -5}", "-1"),
        ("{max_bytes: 0}", "max_bytes"),
    ],
)
def test_bad_queue_values_are_load_errors(tmp_path: Path, queue: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        delivery_of(HTTP_LOG + f"      queue: {queue}\n", tmp_path)
    assert message in str(e.value)


def test_kong_default_max_retry_time_is_honoured_when_written(tmp_path: Path) -> None:
    """A Kong config that spells out Kong's default (60 s) gets Kong's behaviour."""
    d: Any = delivery_of(HTTP_LOG + "      queue: {max_retry_time: 60}\n", tmp_path)
    assert d.max_retry_time == 60
