"""The config block of every plugin llmitm knows, with Kong's field names.

A plugin is registered here by name; its `config` is validated by the model below. An
unknown plugin name or config field is a load error that names it.
"""

from __future__ import annotations

from pydantic import Field

from addons import policies
from addons.ai_proxy_config import AIProxyConfig, LoggingConfig
from exporters.http_log import HttpLogConfig
from exporters.langfuse import AiTracingConfig
from exporters.metrics import PrometheusConfig
from exporters.opik import OpikLogConfig
from exporters.otlp import OpenTelemetryConfig
from providers.options import Strict


class FileLogConfig(Strict):
    """Kong's file-log: one JSON call record per line, appended to `path`."""

    path: str = Field(description="File the records are appended to (created if missing).")
    reopen: bool = Field(
        False, description="Reopen the file for every batch (for external log rotation)."
    )


#: plugin name -> model of its `config` block
PLUGIN_CONFIGS: dict[str, type[Strict]] = {
    "ai-proxy": AIProxyConfig,
    "file-log": FileLogConfig,
    "opik-log": OpikLogConfig,
    "ai-tracing": AiTracingConfig,
    "opentelemetry": OpenTelemetryConfig,
    "http-log": HttpLogConfig,
    # what the metrics count (the status listener serves them, see llmitm_status_listen)
    "prometheus": PrometheusConfig,
}

# the policies (addons/policies/): each module brings its plugin's config model
for _module in policies.modules():
    PLUGIN_CONFIGS[_module.NAME] = _module.Config

#: plugins that can be configured for a consumer (and then win over the route's)
CONSUMER_PLUGINS = frozenset(m.NAME for m in policies.modules() if m.CONSUMER_SCOPE)

__all__ = ["AIProxyConfig", "LoggingConfig"]

#: plugins that receive finished call records
LOG_PLUGINS = frozenset({"file-log", "opik-log", "ai-tracing", "opentelemetry", "http-log"})
