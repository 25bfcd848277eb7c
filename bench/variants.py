"""What the benchmark compares: bare mitmdump, and gateway variants, each a config.

A variant is a name, a gateway config (YAML, as a user would write it) and the fake
upstream endpoint its route calls. `run.py` starts one mitmdump per variant, loads
each with the same client requests, and compares each with bare mitmdump. To measure
another setup (a translated Anthropic route, an exporter, the policy chain...), add a
`Variant` to `VARIANTS` (and, for a new provider wire format, a handler to
`fake_upstream.ENDPOINTS`).

In a config, `$upstream` is replaced by the fake upstream's base URL and `$workdir` by
the run's temporary directory (for log files and the like).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

#: the non-streamed chat request every target is loaded with
CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello."},
    ],
}


@dataclass(frozen=True, slots=True)
class Variant:
    """One mitmdump setup under test."""

    name: str
    summary: str
    #: gateway config YAML; None runs mitmdump without any addon
    config: str | None = None
    #: the fake upstream's endpoint the setup calls (must be in fake_upstream.ENDPOINTS)
    fake_endpoint: str = "/v1/chat/completions"
    #: where clients send their requests, and what
    client_path: str = "/v1/chat/completions"
    request: dict[str, Any] = field(default_factory=lambda: dict(CHAT_REQUEST))
    #: extra mitmdump options, e.g. ("--set", "stream_large_bodies=1")
    mitmdump_args: tuple[str, ...] = ()
    #: run without asking (`--variants` names the others)
    default: bool = True
    #: also report this variant's cost over another one (e.g. a translated route over
    #: the plain OpenAI route), when both ran
    compare_to: str | None = None

    def render_config(self, upstream: str, workdir: Path) -> str:
        assert self.config is not None
        return Template(self.config).substitute(upstream=upstream, workdir=str(workdir))

    def body(self, stream: bool = False) -> bytes:
        """The client request body (streamed: asking for the usage chunk, as SDKs do)."""
        req = dict(self.request)
        if stream:
            req["stream"] = True
            req["stream_options"] = {"include_usage": True}
        return json.dumps(req, separators=(",", ":")).encode()


#: Baseline for throughput and latency: mitmdump as the issue runs it, no addon.
BARE = Variant("bare", "mitmdump, no addon, reverse proxy to the fake")

#: Baseline for time to first token. Without an addon, mitmdump buffers a whole response
#: body before sending it on, so a stream's first token would arrive with its last; with
#: stream_large_bodies=1 it passes each chunk on as it comes, like the gateway.
BARE_STREAMING = Variant(
    "bare",
    "mitmdump, no addon, stream_large_bodies=1",
    mitmdump_args=("--set", "stream_large_bodies=1"),
)

OPENAI_FILE_LOG = """\
_format_version: "3.0"
services:
  - name: bench
    routes:
      - name: chat
        paths: ["/v1/chat/completions"]
        plugins:
          - name: ai-proxy
            config:
              route_type: llm/v1/chat
              model:
                provider: openai
                name: gpt-4o-mini
                options:
                  upstream_url: $upstream
plugins:
  - name: file-log
    config:
      path: $workdir/calls.jsonl
"""

OPENAI_ONLY = OPENAI_FILE_LOG.split("plugins:\n  - name: file-log")[0]

ANTHROPIC_FILE_LOG = (
    OPENAI_FILE_LOG.replace("provider: openai", "provider: anthropic")
    .replace("name: gpt-4o-mini", "name: claude-bench")
    .replace(
        "                  upstream_url: $upstream",
        "                  upstream_url: $upstream\n                  anthropic_version: '2023-06-01'",
    )
)

#: The gateway setups under test, each compared with the baselines above.
VARIANTS: list[Variant] = [
    Variant("gateway", "ai-proxy to OpenAI (pass-through) + global file-log", OPENAI_FILE_LOG),
    Variant("no-log", "ai-proxy to OpenAI, no log plugin", OPENAI_ONLY, default=False),
    Variant(
        "anthropic",
        "OpenAI in, Anthropic out (translated both ways) + global file-log",
        ANTHROPIC_FILE_LOG,
        fake_endpoint="/v1/messages",
        request={**CHAT_REQUEST, "model": "claude-bench"},
        compare_to="gateway",
    ),
]
