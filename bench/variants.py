"""What the benchmark compares: bare mitmdump, and gateway variants, each a config.

A variant is a name, a gateway config (YAML, as a user would write it) and the fake
upstream endpoint its route calls. `run.py` starts one mitmdump per variant, loads
each with the same client requests, and compares each with bare mitmdump. To measure
another setup (a translated Anthropic route, an exporter, the policy chain...), add a
`Variant` to `VARIANTS` (and, for a new provider wire format, a handler to
`fake_upstream.ENDPOINTS`).

In a config, `$upstream` is replaced by the fake upstream's base URL, `$workdir` by
the run's temporary directory (for log files and the like) and `$variant` by the
variant's name. A variant that calls `$upstream/$variant/...` (its provider and its
sinks) is told apart by the fake, which then counts the calls it made and the records
each of its sinks received (see `fake_upstream.Received`).

The sink variants (`no-sink`, `store`, `file-log`, `opik`, `langfuse`, `otlp`,
`http-log`, `http-log-batch`, `all-sinks`) share one route and differ only in their
global log plugins and whether the embedded store is on; each is compared with
`no-sink`, so the report shows what that sink costs over none.

The forward-proxy variants (`observe-off`, `observe-no-store`, `observe`) run mitmdump
in regular mode, as an app's `HTTPS_PROXY` would use it: clients send absolute-form
requests (`POST http://127.0.0.1:FAKE/v1/chat/completions`) through the proxy to the
fake, which observe mode knows as an LLM host (`llmitm_observe_hosts`, `$fake` standing
for the fake's `127.0.0.1:port`), under the variant's tag (`/observe/v1/chat/completions`)
so that the fake counts each variant's calls, against which the store's rows are checked.
They are compared with bare mitmdump in regular mode (`bare-forward`), not with the
reverse-proxy `bare`.

The policy variants (`policies-local`, `policies-redis`, `policies-ai-limit`) are the
`no-sink` route with the policy chain of issue 7 on it: key-auth (the clients send the
consumer's key, `Variant.headers`), rate-limiting, ai-prompt-guard, ai-prompt-decorator
(and ai-rate-limiting-advanced), every limit far above what the bench sends, so that
every call passes the whole chain and reaches the fake. Each is compared with `no-sink`.
`policies-redis` keeps its counters in a `redis-server` the harness starts on a free
port (`$redis_port` in a config; `Variant.needs_redis`), with `fault_tolerant: false`:
if Redis failed, the calls would fail (and be counted as errors) instead of passing
uncounted.
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
    #: extra mitmdump options, e.g. ("--set", "stream_large_bodies=1"); a `--set` here
    #: replaces the harness's own value of that option (see `run.mitmdump_options`), e.g.
    #: `NO_STORE` turns the embedded store off
    mitmdump_args: tuple[str, ...] = ()
    #: run without asking (`--variants` names the others)
    default: bool = True
    #: also report this variant's cost over another one (e.g. a translated route over
    #: the plain OpenAI route), when both ran
    compare_to: str | None = None
    #: mitmdump's mode: "reverse" (clients call the proxy as if it were the API) or
    #: "regular" (a forward proxy: clients send absolute-form requests for the fake)
    mode: str = "reverse"
    #: load the gateway (`-s addons/gateway.py`); None: when the variant has a config
    gateway: bool | None = None
    #: the bare mitmdump this variant is judged against (a key of `BASELINES`)
    baseline: str = "bare"
    #: headers every client request carries (wrk, the TTFT client, instructions.py),
    #: e.g. a consumer's API key
    headers: dict[str, str] = field(default_factory=dict)
    #: further variants to report this one's cost over, after `compare_to`
    also_compare_to: tuple[str, ...] = ()

    def render_config(self, upstream: str, workdir: Path, redis_port: int | None = None) -> str:
        assert self.config is not None
        if self.needs_redis and redis_port is None:
            raise ValueError(f"variant {self.name} needs a redis-server ($redis_port)")
        return Template(self.config).substitute(
            upstream=upstream,
            workdir=str(workdir),
            variant=self.name,
            redis_port=str(redis_port or 0),
        )

    @property
    def needs_redis(self) -> bool:
        """Whether the config names the harness's redis-server (`$redis_port`)."""
        return self.config is not None and "$redis_port" in self.config

    @property
    def compared_with(self) -> tuple[str, ...]:
        """The variants this one's cost is reported over (`compare_to`, then
        `also_compare_to`)."""
        return (*((self.compare_to,) if self.compare_to else ()), *self.also_compare_to)

    @property
    def uses_gateway(self) -> bool:
        return self.gateway if self.gateway is not None else self.config is not None

    @property
    def forward(self) -> bool:
        return self.mode == "regular"

    @property
    def tagged(self) -> bool:
        """Whether the fake can tell this variant's requests apart (`$upstream/$variant`;
        a forward-proxy gateway's clients send theirs to the fake under that tag)."""
        if self.forward:
            return self.uses_gateway
        return self.config is not None and "$upstream/$variant/" in self.config

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

#: The same two, in regular (forward proxy) mode: the baselines of observe mode.
BARE_FORWARD = Variant(
    "bare-forward",
    "mitmdump, no addon, forward proxy (regular mode) to the fake",
    mode="regular",
    baseline="bare-forward",
)
BARE_FORWARD_STREAMING = Variant(
    "bare-forward",
    "mitmdump, no addon, forward proxy, stream_large_bodies=1",
    mode="regular",
    baseline="bare-forward",
    mitmdump_args=("--set", "stream_large_bodies=1"),
)

#: baseline name -> (its variant for load and latency, its variant for time to first token)
BASELINES: dict[str, tuple[Variant, Variant]] = {
    "bare": (BARE, BARE_STREAMING),
    "bare-forward": (BARE_FORWARD, BARE_FORWARD_STREAMING),
}

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

#: mitmdump options that turn the embedded SQLite store off (it is on by default)
NO_STORE = ("--set", "llmitm_store=")

# The sink variants: one route to the fake OpenAI under the variant's tag, and the
# global log plugins below, each sending to the fake's stand-in for its service.
TAGGED_OPENAI = OPENAI_ONLY.replace(
    "upstream_url: $upstream", "upstream_url: $upstream/$variant/v1/chat/completions"
)
SINK_PLUGINS = {
    "file-log": """\
  - name: file-log
    config:
      path: $workdir/$variant.jsonl
""",
    "opik": """\
  - name: opik-log
    config:
      http_endpoint: $upstream/$variant/api
      opik_api_key: bench-key
      opik_workspace: bench
      project_name: bench
""",
    "langfuse": """\
  - name: ai-tracing
    config:
      langfuse_enabled: true
      langfuse_public_key: pk-lf-bench
      langfuse_secret_key: sk-lf-bench
      langfuse_endpoint: $upstream/$variant
""",
    "otlp": """\
  - name: opentelemetry
    config:
      traces_endpoint: $upstream/$variant/v1/traces
""",
    # Kong's default queue: max_batch_size 1, i.e. one request per record
    "http-log": """\
  - name: http-log
    config:
      http_endpoint: $upstream/$variant/log
""",
    "http-log-batch": """\
  - name: http-log
    config:
      http_endpoint: $upstream/$variant/log
      queue:
        max_batch_size: 1000
""",
}


def with_sinks(*names: str) -> str:
    """The tagged OpenAI route with these global log plugins (`SINK_PLUGINS` keys)."""
    if not names:
        return TAGGED_OPENAI
    return TAGGED_OPENAI + "plugins:\n" + "".join(SINK_PLUGINS[n] for n in names)


def _sink_variant(name: str, summary: str, *sinks: str, store: bool = False) -> Variant:
    return Variant(
        name,
        summary,
        with_sinks(*sinks),
        mitmdump_args=() if store else NO_STORE,
        default=False,
        compare_to=None if name == "no-sink" else "no-sink",
    )


# The policy variants: the `no-sink` route with issue 7's chain on it. Every limit is far
# above what the bench sends (a few hundred calls a second at most), and the guard's
# patterns do not match the bench's request: every call passes every policy.

#: the bench consumer's API key, sent as OpenAI SDK clients send theirs
BENCH_KEY = "bench-key-7d41c09e2b5a"
BENCH_HEADERS = {"Authorization": f"Bearer {BENCH_KEY}"}

POLICY_KEY_AUTH = """\
          - name: key-auth
            config:
              key_names: [apikey, authorization]
              hide_credentials: true
"""
POLICY_RATE_LIMITING_LOCAL = """\
          - name: rate-limiting
            config:
              second: 1000000
              limit_by: consumer
              policy: local
"""
POLICY_RATE_LIMITING_REDIS = """\
          - name: rate-limiting
            config:
              second: 1000000
              limit_by: consumer
              policy: redis
              redis: {host: 127.0.0.1, port: $redis_port}
              fault_tolerant: false
"""
POLICY_PROMPTS = """\
          - name: ai-prompt-guard
            config:
              deny_patterns:
                - '(?i)ignore (all |any )?(previous|prior) instructions'
                - '(?i)\\bpassword\\b'
                - '(?i)reveal (your|the) system prompt'
                - '\\b\\d{4}[ -]?\\d{4}[ -]?\\d{4}[ -]?\\d{4}\\b'
          - name: ai-prompt-decorator
            config:
              prompts:
                prepend:
                  - role: system
                    content: You are a helpful assistant. Answer in one paragraph.
"""
POLICY_AI_RATE_LIMITING = """\
          - name: ai-rate-limiting-advanced
            config:
              identifier: consumer
              tokens_count_strategy: total_tokens
              llm_providers:
                - name: openai
                  limit: [1000000000]
                  window_size: [3600]
"""
POLICY_CONSUMERS = f"""\
consumers:
  - username: bench
    keyauth_credentials:
      - key: {BENCH_KEY}
"""


def with_policies(*plugins: str) -> str:
    """The `no-sink` route (the tagged OpenAI route) with these route plugins, and the
    bench consumer."""
    return TAGGED_OPENAI + "".join(plugins) + POLICY_CONSUMERS


def _policy_variant(name: str, summary: str, *plugins: str, **kw: Any) -> Variant:
    return Variant(
        name,
        summary,
        with_policies(POLICY_KEY_AUTH, *plugins),
        mitmdump_args=NO_STORE,
        default=False,
        compare_to="no-sink",
        headers=dict(BENCH_HEADERS),
        **kw,
    )


#: observe mode's host entry for the fake (`$fake` is its 127.0.0.1:port): a local
#: server speaking OpenAI's `/v1` format, as Ollama or vLLM do on their own port
OBSERVE_FAKE = ("--set", "llmitm_observe_hosts=$fake=ollama")


def _forward_variant(name: str, summary: str, *args: str, compare_to: str | None = None) -> Variant:
    """The gateway in regular (forward) mode, without a config file: what
    `mitmdump -s addons/gateway.py` gives a user who points an app's HTTPS_PROXY at it."""
    return Variant(
        name,
        summary,
        mode="regular",
        gateway=True,
        baseline="bare-forward",
        mitmdump_args=(*OBSERVE_FAKE, *args),
        default=False,
        compare_to=compare_to,
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
    # what each sink costs: each alone (store off) against none at all
    _sink_variant("no-sink", "ai-proxy to OpenAI, no log plugin, store off"),
    _sink_variant("store", "ai-proxy + the embedded SQLite store only", store=True),
    _sink_variant("file-log", "ai-proxy + file-log, store off", "file-log"),
    _sink_variant("opik", "ai-proxy + opik-log, store off", "opik"),
    _sink_variant("langfuse", "ai-proxy + ai-tracing (Langfuse OTLP), store off", "langfuse"),
    _sink_variant("otlp", "ai-proxy + opentelemetry (OTLP), store off", "otlp"),
    _sink_variant("http-log", "ai-proxy + http-log (1 record a request), store off", "http-log"),
    _sink_variant(
        "http-log-batch",
        "ai-proxy + http-log (batches of up to 1000), store off",
        "http-log-batch",
    ),
    _sink_variant(
        "all-sinks",
        "ai-proxy + store, file-log, opik-log, ai-tracing, opentelemetry, http-log",
        "file-log",
        "opik",
        "langfuse",
        "otlp",
        "http-log",
        store=True,
    ),
    # observe mode in forward-proxy mode, against bare mitmdump in regular mode
    _forward_variant(
        "observe-off",
        "gateway loaded in forward mode, observe mode off, store off",
        "--set",
        "llmitm_observe=false",
        *NO_STORE,
    ),
    _forward_variant(
        "observe-no-store",
        "forward mode, observe mode on, no sink (the record is built, then dropped)",
        *NO_STORE,
        compare_to="observe-off",
    ),
    _forward_variant(
        "observe",
        "forward mode, observe mode on, records in the embedded store (the default)",
        compare_to="observe-no-store",
    ),
    # the policy chain (issue 7) on the no-sink route, against that route alone
    _policy_variant(
        "policies-local",
        "no-sink + key-auth, rate-limiting (local), ai-prompt-guard, ai-prompt-decorator",
        POLICY_RATE_LIMITING_LOCAL,
        POLICY_PROMPTS,
    ),
    _policy_variant(
        "policies-redis",
        "policies-local with rate-limiting on a local redis-server",
        POLICY_RATE_LIMITING_REDIS,
        POLICY_PROMPTS,
        also_compare_to=("policies-local",),
    ),
    _policy_variant(
        "policies-ai-limit",
        "policies-local + ai-rate-limiting-advanced (local, a token budget never reached)",
        POLICY_RATE_LIMITING_LOCAL,
        POLICY_PROMPTS,
        POLICY_AI_RATE_LIMITING,
        also_compare_to=("policies-local",),
    ),
]
