"""Kong's ai-rate-limiting-advanced: token (or cost) budgets per time window, by LLM
provider (`llm_providers`, Kong's older form) or by policies that match the request's
consumer, model, provider, header, path or IP (`policies`, Kong 3.14's form).

Kong counts a call's tokens once its response is back, so its budget is checked
against past calls only: N requests sent at once all pass on the same remaining budget.
Here a request RESERVES an estimate before anything is sent upstream (its prompt,
estimated, plus its max_tokens), atomically in every window it counts against (in this
process, or in Redis for every gateway process), and gets 429 when the estimate does
not fit. When the call is finished (its record built, streamed answers included), the
reservation is settled with the real usage the provider reported (or the real cost).

A request that sets no max_tokens (the OpenAI SDK's default) on a route whose ai-proxy
sets none reserves `reserve_completion_tokens` for its answer, or what is left of the
budget when that is less (as long as something beyond the prompt is left): requests
sent at once cannot all start answers on the same last tokens.

The reservation is taken at Kong's priority (905), before the prompt plugins rewrite
the body; in the chain's late `request` hook, just before ai-proxy sends it, the
request is estimated again as it now is (a rendered template, the decorator's
messages) and the reservation topped up, or the request refused (429) when the
difference does not fit.

The counters are `addons.policies._counters` (shared with rate-limiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import random
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

import providers
from addons.ai_proxy_config import LLMFormat
from addons.policies import _counters
from addons.policies._counters import CountersUnavailable, RedisConfig, Ticket, Window
from addons.policies.base import PolicyAddon, deny, json_body, set_headers
from providers.base import ProviderError, RouteType, estimate_tokens, text_of_messages
from providers.options import Strict

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from mitmproxy import http

    from addons.ai_proxy_config import AIProxyConfig
    from addons.calls import Call
    from addons.state import Gateway

NAME = "ai-rate-limiting-advanced"
PRIORITY = 905
CONSUMER_SCOPE = True

log = logging.getLogger("llmitm")

TokensCountStrategy = Literal["total_tokens", "prompt_tokens", "completion_tokens", "cost"]
WindowType = Literal["sliding", "fixed"]

#: the pseudo-provider of `llm_providers` that counts every request's prompt
REQUEST_PROMPT = "requestPrompt"
#: what a requestPrompt window counts (its own "strategy": never settled afterwards)
_PROMPT_ONLY = "request_prompt"

DEFAULT_ERROR_MESSAGE = "AI token rate limit exceeded for provider(s): "

_LUA = (
    "is Lua code run by Kong, which llmitm cannot run; without it the requestPrompt "
    "provider counts each request's prompt tokens (estimated before it is sent)"
)


def _known_providers() -> list[str]:
    return list(providers.registry())


def _number(x: float) -> str:
    """A count or cost for a header or message: 100, not 100.0; 0.0025, not 0.00250000."""
    if abs(x - round(x)) < 1e-9:
        return str(round(x))
    return f"{x:.6g}"


# --------------------------------------------------------------------- the config


class LLMProviderLimits(Strict):
    """One entry of Kong's `llm_providers`: the limits of one provider."""

    name: str = Field(
        description="The LLM provider the limits apply to (an ai-proxy provider name, e.g. "
        "openai, anthropic, mock), or `requestPrompt`: every request, counted by its prompt "
        "tokens (estimated before it is sent), whatever its provider."
    )
    limit: list[float] = Field(
        description="One or more limits (tokens, or cost with tokens_count_strategy: cost), "
        "one per window_size, in the same order."
    )
    window_size: list[int] = Field(
        description="One or more window sizes in seconds, one per limit, in the same order."
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name == "customCost":
            raise ValueError(
                "provider 'customCost' needs custom_cost_count_function (Lua code run by "
                "Kong), which llmitm cannot run; use tokens_count_strategy: cost"
            )
        known = _known_providers()
        if name != REQUEST_PROMPT and name not in known:
            raise ValueError(
                f"unknown provider {name!r} (expected {REQUEST_PROMPT} or one of: "
                f"{', '.join(known)})"
            )
        return name

    @model_validator(mode="after")
    def _pairs(self) -> LLMProviderLimits:
        _check_limits(self.limit, self.window_size)
        return self


def _check_limits(limits: Sequence[float], sizes: Sequence[int]) -> None:
    if not limits or not sizes:
        raise ValueError("limit and window_size must each have at least one value")
    if len(limits) != len(sizes):
        raise ValueError(
            f"limit has {len(limits)} value(s) but window_size has {len(sizes)}: "
            "each limit needs its window_size, in the same order"
        )
    for value in limits:
        if not value > 0:
            raise ValueError(f"limit {_number(value)} must be greater than 0")
    for size in sizes:
        if size <= 0:
            raise ValueError(f"window_size {size} must be a positive number of seconds")
    dupes = sorted({s for s in sizes if list(sizes).count(s) > 1})
    if dupes:
        raise ValueError(f"window_size {dupes[0]} is given twice for the same provider")


MatchType = Literal["consumer", "consumer_group", "header", "ip", "model", "path", "provider"]


class MatchCondition(Strict):
    """One condition of a policy's `match` (all of a policy's conditions must hold)."""

    type: MatchType = Field(
        description="What is matched: consumer, header, ip, model, path or provider "
        "(consumer_group is Kong's and does not exist in llmitm)."
    )
    key: str | None = Field(
        None,
        description="consumer: which of its fields the values name (id, username or "
        "custom_id; unset: any of them). header: the header's name (required).",
    )
    values: list[str] | None = Field(
        None,
        description="Values that match (any one of them). Unset: any value matches, as long "
        "as the request has one (a consumer, the header, a model). ip: addresses or CIDRs; "
        "path: prefixes of the request's path.",
    )
    partition_by: bool = Field(
        False,
        description="Count separately per matched value (e.g. one budget per model) instead "
        "of one budget for all values this condition matches.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MatchCondition:
        t = self.type
        if t == "consumer_group":
            raise ValueError(
                "match type 'consumer_group' is not supported: llmitm has no consumer groups "
                "(match the consumers by name instead)"
            )
        if self.values is not None and not self.values:
            raise ValueError(f"match type {t!r}: values is empty (leave it out to match any)")
        if t == "header":
            if not self.key:
                raise ValueError("match type 'header' needs key: the header's name")
        elif t == "consumer":
            if self.key is not None and self.key not in ("id", "username", "custom_id"):
                raise ValueError(
                    f"match type 'consumer': key {self.key!r} must be id, username or custom_id"
                )
        elif self.key is not None:
            raise ValueError(f"match type {t!r} takes no key (only consumer and header do)")
        if t == "ip":
            for v in self.values or ():
                try:
                    ipaddress.ip_network(v, strict=False)
                except ValueError:
                    raise ValueError(
                        f"match type 'ip': {v!r} is not an IP address or CIDR"
                    ) from None
        if t == "path":
            for v in self.values or ():
                if not v.startswith("/"):
                    raise ValueError(f"match type 'path': {v!r} must start with '/'")
        if t == "provider":
            known = _known_providers()
            for v in self.values or ():
                if v not in known:
                    raise ValueError(
                        f"match type 'provider': unknown provider {v!r} "
                        f"(expected one of: {', '.join(known)})"
                    )
        return self


class PolicyLimit(Strict):
    """One limit of a policy: at most `limit` per `window_size` seconds."""

    limit: float = Field(
        gt=0, description="The most tokens (or cost) that fit in one window; greater than 0."
    )
    window_size: int = Field(gt=0, description="The window's length in seconds.")
    tokens_count_strategy: TokensCountStrategy | None = Field(
        None,
        description="What this limit counts. Unset: the plugin's tokens_count_strategy "
        "(Kong defaults a limit to total_tokens whatever the plugin says).",
    )


class RatePolicy(Strict):
    """One entry of `policies`: the requests it matches and their limits."""

    name: str | None = Field(
        None,
        description="llmitm: the policy's name in the X-AI-RateLimit-* headers and the 429 "
        "message. Unset: the provider when the policy only matches one provider, else "
        "policy-<n> (its position, from 1).",
    )
    id: str | None = Field(
        None,
        description="Kong: a reference to a shared policy entity. Not supported (llmitm has "
        "no such entities): write the limits in the policy.",
    )
    match: list[MatchCondition] | None = Field(
        None,
        description="Conditions, all of which must hold. Unset or empty: a fallback policy, "
        "applied only to requests no other policy matched.",
    )
    limits: list[PolicyLimit] = Field(
        min_length=1, description="The limits enforced when the policy matches."
    )
    window_type: WindowType = Field("sliding", description="sliding (Kong's default) or fixed.")

    @model_validator(mode="after")
    def _consistent(self) -> RatePolicy:
        if self.id is not None:
            raise ValueError(
                "id (a reference to a shared Kong policy entity) is not supported: "
                "write the policy's match and limits here"
            )
        if self.name is not None and not _header_safe(self.name):
            raise ValueError(
                f"name {self.name!r} must be letters, digits, '-', '_' or '.' "
                "(it is part of response header names)"
            )
        sizes = [lim.window_size for lim in self.limits]
        dupes = sorted({s for s in sizes if sizes.count(s) > 1})
        if dupes:
            raise ValueError(
                f"window_size {dupes[0]} is given twice in one policy (headers would clash): "
                "put the second limit in another policy with the same match and its own name"
            )
        return self


def _header_safe(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)


class Config(Strict):
    """Kong's ai-rate-limiting-advanced: token or cost budgets per time window."""

    llm_providers: list[LLMProviderLimits] | None = Field(
        None,
        description="Kong's older form: limits per provider (name, limit list, window_size "
        "list). Mutually exclusive with policies.",
    )
    policies: list[RatePolicy] | None = Field(
        None,
        description="Kong 3.14's form: each policy matches requests (consumer, model, "
        "provider, header, path, ip) and has its own limits. Every matching policy applies; "
        "policies without match apply only when no other matched. Mutually exclusive with "
        "llm_providers.",
    )
    tokens_count_strategy: TokensCountStrategy = Field(
        "total_tokens",
        description="What a limit counts: total_tokens, prompt_tokens, completion_tokens, or "
        "cost (the call's cost from the route's ai-proxy model.options input_cost and "
        "output_cost, per 1M tokens, in their unit).",
    )
    identifier: Literal[
        "consumer", "consumer-group", "credential", "header", "ip", "path", "service"
    ] = Field(
        "consumer",
        description="Whose budget a request spends: consumer, credential, ip, service, header "
        "(header_name) or path (path). A request without one (no consumer, credential or "
        "header) is counted by its client IP, as in Kong.",
    )
    header_name: str | None = Field(None, description="The header of identifier: header.")
    path: str | None = Field(
        None,
        description="identifier: path: requests to this exact path share one budget, every "
        "other path shares another (Kong's behaviour).",
    )
    strategy: Literal["local", "redis", "cluster"] = Field(
        "local",
        description="Where counters live: local (this process) or redis (shared by every "
        "gateway process using the same Redis). Kong's cluster (its database) is not "
        "supported.",
    )
    redis: RedisConfig | None = Field(None, description="The Redis server (strategy: redis).")
    window_type: WindowType = Field(
        "sliding",
        description="llm_providers' windows: sliding (Kong's default: the previous window "
        "counts with a weight that falls as the current one elapses) or fixed.",
    )
    fault_tolerant: bool = Field(
        True,
        description="When the counters' store (Redis) cannot be reached: true lets requests "
        "through uncounted (logged, and counted in llmitm_policy_store_unavailable_total), "
        "false answers 500.",
    )
    reserve_completion_tokens: int = Field(
        1024,
        ge=0,
        description="llmitm: the answer tokens reserved for a request that sets no max_tokens "
        "(nor max_completion_tokens...) on a route whose ai-proxy sets no "
        "model.options.max_tokens; when less is left in a window, what is left is reserved "
        "(something beyond the prompt must be left). 0: only the prompt is reserved.",
    )
    hide_client_headers: bool = Field(
        False, description="Do not send the X-AI-RateLimit-Limit-* and -Remaining-* headers."
    )
    error_code: int = Field(429, ge=400, le=599, description="Status of a request over the limit.")
    error_message: str = Field(
        DEFAULT_ERROR_MESSAGE,
        description="Message of a request over the limit; the limited providers (or "
        "policies) are appended unless error_hide_providers.",
    )
    error_hide_providers: bool = Field(
        False, description="Do not name the limited providers in the error message."
    )
    retry_after_jitter_max: float = Field(
        0,
        ge=0,
        description="Add a random 0..this many seconds to Retry-After, so limited clients do "
        "not all come back at once.",
    )
    disable_penalty: bool = Field(
        False,
        description="Kong: do not count denied requests. Only requestPrompt windows with "
        "sliding windows count a denied request (its prompt), as in Kong.",
    )
    namespace: str | None = Field(
        None,
        description="Counters are per plugin instance; instances with the same namespace "
        "(and strategy) share their counters.",
    )
    sync_rate: float | None = Field(
        None,
        ge=-1,
        description="Kong: how often counters are synced to the store. Accepted, no effect: "
        "llmitm reads and updates the store on every request (always exact).",
    )
    decrease_by_fractions_in_redis: bool = Field(
        False,
        description="Kong: decrease Redis counters by fractions. Accepted, no effect: llmitm "
        "always adds and subtracts exact amounts.",
    )
    dictionary_name: str = Field(
        "kong_rate_limiting_counters",
        description="Kong: the nginx shared dictionary. Accepted, no effect.",
    )
    llm_format: LLMFormat | None = Field(  # type: ignore[valid-type]
        None,
        description="Kong: the request format. Accepted, no effect: the route's ai-proxy "
        "llm_format says how the request is read.",
    )
    request_prompt_count_function: str | None = Field(
        None, description=f"Not supported: it {_LUA}."
    )
    custom_cost_count_function: str | None = Field(
        None, description="Not supported: Lua code run by Kong."
    )

    _labels: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.request_prompt_count_function is not None:
            raise ValueError(f"request_prompt_count_function {_LUA}: remove it")
        if self.custom_cost_count_function is not None:
            raise ValueError(
                "custom_cost_count_function is Lua code run by Kong, which llmitm cannot run: "
                "remove it (tokens_count_strategy: cost prices calls with the route's "
                "input_cost and output_cost)"
            )
        if self.llm_providers is not None and self.policies is not None:
            raise ValueError("llm_providers and policies are mutually exclusive: use one")
        if not self.llm_providers and not self.policies:
            raise ValueError("nothing to limit: give llm_providers or policies (not empty)")
        if self.llm_providers:
            names = [p.name for p in self.llm_providers]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(
                    f"provider {dupes[0]!r} is listed twice in llm_providers: give all its "
                    "limits in one entry"
                )
        if self.policies:
            explicit = [p.name for p in self.policies if p.name]
            dupes = sorted({n for n in explicit if explicit.count(n) > 1})
            if dupes:
                raise ValueError(f"two policies are named {dupes[0]!r}: names must differ")
        if self.identifier == "consumer-group":
            raise ValueError(
                "identifier 'consumer-group' is not supported: llmitm has no consumer groups"
            )
        if self.identifier == "header" and not self.header_name:
            raise ValueError("identifier 'header' needs header_name")
        if self.identifier == "path":
            if not self.path:
                raise ValueError("identifier 'path' needs path")
            if not self.path.startswith("/") or "//" in self.path:
                raise ValueError(
                    f"path {self.path!r} must start with '/' and have no empty segment"
                )
        if self.strategy == "cluster":
            raise ValueError(
                "strategy 'cluster' (Kong's database) does not exist in llmitm: use local or redis"
            )
        if self.strategy == "redis" and (self.redis is None or not self.redis.host):
            raise ValueError("strategy 'redis' needs redis.host")
        return self

    @property
    def store(self) -> RedisConfig | None:
        """The Redis server of strategy redis; None for local counters."""
        return self.redis if self.strategy == "redis" else None

    def labels(self) -> list[str]:
        """The name of each policy in headers and messages (same order as policies)."""
        return self._labels

    @model_validator(mode="after")
    def _name_policies(self) -> Config:
        out: list[str] = []
        taken = {p.name for p in self.policies or () if p.name}
        for n, p in enumerate(self.policies or (), start=1):
            if p.name:
                out.append(p.name)
                continue
            label = f"policy-{n}"
            conds = p.match or []
            if (
                len(conds) == 1
                and conds[0].type == "provider"
                and conds[0].values is not None
                and len(conds[0].values) == 1
                and not conds[0].partition_by
            ):
                label = conds[0].values[0]
            while label in taken:
                label = f"policy-{n}" if label != f"policy-{n}" else f"{label}-{n}"
            taken.add(label)
            out.append(label)
        self._labels = out
        return self


# ----------------------------------------------------------------- the estimates


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a request will spend, estimated before it is sent."""

    prompt: int
    completion: int
    input_cost: float | None = None  # per 1M tokens (the route's model.options)
    output_cost: float | None = None
    #: the completion is the plugin's reserve_completion_tokens (the request and its
    #: route set no max_tokens), not a limit the model is held to
    guessed: bool = False

    def amount(self, strategy: str, completion: int | None = None) -> float:
        out = self.completion if completion is None else completion
        if strategy == "prompt_tokens" or strategy == _PROMPT_ONLY:
            return float(self.prompt)
        if strategy == "completion_tokens":
            return float(out)
        if strategy == "cost":
            return (
                self.prompt * (self.input_cost or 0.0) + out * (self.output_cost or 0.0)
            ) / 1_000_000
        return float(self.prompt + out)

    def least(self, strategy: str) -> float:
        """The least the request can be let through with: its amount, or, when the
        completion is a guess, its prompt's."""
        return self.amount(strategy, 0 if self.guessed else None)


_NOT_TEXT = frozenset({"model", "role", "type", "id", "mime_type", "mimeType", "media_type"})


def _strings(value: Any) -> list[str]:
    """Every string of a JSON value but identifiers (prompts in a provider's own format)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k not in _NOT_TEXT for s in _strings(v)]
    return []


def _input_tokens(value: Any) -> int:
    """Tokens of a completions `prompt` or an embeddings `input`: strings are estimated,
    arrays of token ids count one per id."""
    if isinstance(value, str):
        return estimate_tokens(value)
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return len(value)
        return sum(_input_tokens(v) for v in value)
    return 0


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _max_output(body: dict[str, Any]) -> int | None:
    """The most tokens the request lets the model answer, in any format's field."""
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens", "max_new_tokens"):
        found = _positive_int(body.get(key))
        if found:
            return found
    for block, key in (("generationConfig", "maxOutputTokens"), ("inferenceConfig", "maxTokens")):
        inner = body.get(block)
        if isinstance(inner, dict) and _positive_int(inner.get(key)):
            return inner[key]
    params = body.get("parameters")  # Hugging Face TGI
    if isinstance(params, dict):
        return _positive_int(params.get("max_new_tokens"))
    return None


def estimate(ai: AIProxyConfig, body: Any, reserve: int = 0) -> Estimate:
    """The tokens a request to a route with this ai-proxy config is expected to spend:
    its prompt (estimated from its text, about four characters a token) and its answer
    (at most max_tokens: the route's model.options.max_tokens, which wins in ai-proxy, or
    the request's max_tokens / max_completion_tokens, times `n`; `reserve`, a guess,
    when neither is set)."""
    options = ai.model.options
    body = body if isinstance(body, dict) else {}
    route_type = ai.route_type
    if ai.llm_format != "openai" or route_type is RouteType.PRESERVE:
        prompt = estimate_tokens(" ".join(_strings(body)))
    elif route_type is RouteType.CHAT:
        prompt = estimate_tokens(text_of_messages(body.get("messages")))
    elif route_type is RouteType.COMPLETIONS:
        prompt = _input_tokens(body.get("prompt"))
    elif route_type is RouteType.EMBEDDINGS:
        prompt = _input_tokens(body.get("input"))
    else:
        prompt = estimate_tokens(" ".join(_strings(body)))
    completion = 0
    guessed = False
    if route_type is not RouteType.EMBEDDINGS:
        # ai-proxy sends the route's max_tokens on OpenAI-format chat and completions
        applies = ai.llm_format == "openai" and route_type in (
            RouteType.CHAT,
            RouteType.COMPLETIONS,
        )
        most = (options.max_tokens if applies else None) or _max_output(body)
        if most is None:
            most, guessed = reserve, reserve > 0
        completion = most * (_positive_int(body.get("n")) or 1)
    return Estimate(prompt, completion, options.input_cost, options.output_cost, guessed)


def spent(strategy: str, record: Any) -> float:
    """What a finished call really spent, from its record (0 when it reported nothing:
    refused, failed before the model answered)."""
    ai = getattr(record, "ai", None)
    if ai is None:
        return 0.0
    if strategy == "cost":
        return float(ai.cost or 0.0)
    usage = ai.usage
    if usage is None:
        return 0.0
    if strategy == "prompt_tokens":
        return float(usage.prompt_tokens)
    if strategy == "completion_tokens":
        return float(usage.completion_tokens)
    return float(usage.total_tokens)


# ---------------------------------------------------------------- matching


@dataclass(slots=True)
class Facts:
    """What policies match on, for one request."""

    provider: str
    model: str | None
    path: str
    client_ip: str
    headers: Any  # mitmproxy Headers (case-insensitive)
    consumer: Any = None  # addons.config.model.Consumer

    def value(self, cond: MatchCondition) -> str | None:
        """The request's value for a condition if it matches, else None."""
        t = cond.type
        values = cond.values
        if t == "provider":
            return self.provider if values is None or self.provider in values else None
        if t == "model":
            if not self.model:
                return None
            return self.model if values is None or self.model in values else None
        if t == "path":
            if values is None:
                return self.path
            return next((v for v in values if self.path.startswith(v)), None)
        if t == "header":
            got = self.headers.get(cond.key or "")
            if got is None:
                return None
            return got if values is None or got in values else None
        if t == "ip":
            if not self.client_ip:
                return None
            if values is None:
                return self.client_ip
            try:
                addr = ipaddress.ip_address(self.client_ip.removeprefix("::ffff:"))
            except ValueError:
                return None
            for v in values:
                if addr in ipaddress.ip_network(v, strict=False):
                    return self.client_ip
            return None
        if t == "consumer":
            c = self.consumer
            if c is None:
                return None
            fields = [cond.key] if cond.key else ["username", "custom_id", "id"]
            for f in fields:
                own = getattr(c, f, None)
                if own and (values is None or own in values):
                    return own
            return None
        return None


def matching(conf: Config, facts: Facts) -> list[tuple[int, list[str]]]:
    """The policies that apply to a request: (index, partition values) for each policy
    whose conditions all hold; when none with conditions holds, the fallback policies."""
    found: list[tuple[int, list[str]]] = []
    fallbacks: list[tuple[int, list[str]]] = []
    for n, policy in enumerate(conf.policies or ()):
        if not policy.match:
            fallbacks.append((n, []))
            continue
        parts: list[str] = []
        for cond in policy.match:
            got = facts.value(cond)
            if got is None:
                break
            if cond.partition_by:
                parts.append(f"{cond.type}={got}")
        else:
            found.append((n, parts))
    return found or fallbacks


# ------------------------------------------------------------------- the plan


@dataclass(slots=True)
class Limited:
    """One window of the request, with the name its headers carry."""

    window: Window
    label: str  # provider or policy name
    #: requestPrompt windows: what this request counts (Kong's X-AI-RateLimit-Query-Cost)
    query_cost: float | None = None


@dataclass(slots=True)
class Group:
    """Windows that count the same thing, charged together in one atomic acquire."""

    strategy: str  # a TokensCountStrategy, or _PROMPT_ONLY
    amount: float  # what the request reserves (once reserved: what it holds)
    windows: list[Limited] = field(default_factory=list)
    #: the least it can pass with, when `amount` holds a guessed answer size: what is
    #: left of the budget is reserved, if it is more than this
    least: float | None = None

    @property
    def floor(self) -> float:
        return self.amount if self.least is None else self.least


def _short(value: str, plain: str = "") -> str:
    """A counter key part: as is when short and plain (no space, no ':' unless `plain`
    allows it), else a digest."""
    if len(value) <= 64 and all(c.isprintable() and (c not in " :" or c in plain) for c in value):
        return value
    return "#" + hashlib.sha256(value.encode()).hexdigest()[:24]


def identity(conf: Config, call: Call, path: str, headers: Any) -> str:
    """Whose budget the request spends (Kong's identifier)."""
    ip = f"ip:{call.client_ip}"
    kind = conf.identifier
    if kind == "consumer":
        c = call.consumer
        name = (c.id or c.username or c.custom_id) if c is not None else None
        return f"consumer:{_short(name)}" if name else ip
    if kind == "credential":
        cred = call.credential
        if cred is None:
            return ip
        return (
            f"credential:{_short(cred.id)}"
            if cred.id
            else "credential:" + _short("key\0" + cred.key)
        )
    if kind == "service":
        route = call.route
        if route is not None and route.service is not None:
            return f"service:{_short(route.service.name)}"
        return f"route:{_short(route.name)}" if route is not None else "global"
    if kind == "header":
        got = headers.get(conf.header_name or "")
        return f"header:{_short(got)}" if got else ip
    if kind == "path":
        return f"path:{_short(path)}" if path == conf.path else "path:*"
    return ip


def plan(conf: Config, scope: str, who: str, facts: Facts, est: Estimate) -> list[Group]:
    """The windows a request counts against, grouped by what they count."""
    ns = f"ns={_short(conf.namespace)}" if conf.namespace else f"scope={_short(scope, ':')}"
    base = f"ai:{ns}:{who}"
    groups: dict[str, Group] = {}

    def add(strategy: str, key: str, size: int, limit: float, sliding: bool, label: str) -> None:
        g = groups.get(strategy)
        if g is None:
            amount, least = est.amount(strategy), est.least(strategy)
            g = groups[strategy] = Group(strategy, amount, least=least if least < amount else None)
        window = Window(f"{base}:{key}:{strategy}:{size}", size, float(limit), sliding)
        g.windows.append(Limited(window, label, g.amount if strategy == _PROMPT_ONLY else None))

    if conf.llm_providers is not None:
        sliding = conf.window_type == "sliding"
        for entry in conf.llm_providers:
            if entry.name == REQUEST_PROMPT:
                strategy = _PROMPT_ONLY
            elif entry.name == facts.provider:
                strategy = conf.tokens_count_strategy
            else:
                continue
            for limit, size in zip(entry.limit, entry.window_size, strict=True):
                add(strategy, f"provider={entry.name}", size, limit, sliding, entry.name)
    else:
        labels = conf.labels()
        assert conf.policies is not None
        for n, parts in matching(conf, facts):
            policy = conf.policies[n]
            key = "policy=" + _short(labels[n]) + "".join(f":{_short(p)}" for p in parts)
            for lim in policy.limits:
                strategy = lim.tokens_count_strategy or conf.tokens_count_strategy
                add(
                    strategy,
                    key,
                    lim.window_size,
                    lim.limit,
                    policy.window_type == "sliding",
                    labels[n],
                )
    # the request-prompt windows first: with penalties they keep a denied request's charge
    return sorted(groups.values(), key=lambda g: g.strategy != _PROMPT_ONLY)


# -------------------------------------------------------------------- headers


def _unit(strategy: str) -> str:
    return "cost" if strategy == "cost" else "tokens"


def state_headers(
    conf: Config, states: list[tuple[Limited, Any]], exceeded: set[int], retry_after: int
) -> dict[str, str]:
    """Kong's X-AI-RateLimit-* headers for the windows of a request; `exceeded` holds the
    index (in `states`) of the windows that refused it."""
    out: dict[str, str] = {}
    for n, (lim, state) in enumerate(states):
        suffix = f"{lim.window.size}-{lim.label}"
        if not conf.hide_client_headers:
            out[f"X-AI-RateLimit-Limit-{suffix}"] = _number(lim.window.limit)
            out[f"X-AI-RateLimit-Remaining-{suffix}"] = _number(max(0.0, state.remaining))
            if lim.query_cost is not None:
                out[f"X-AI-RateLimit-Query-Cost-{suffix}"] = _number(lim.query_cost)
        if n in exceeded:
            out[f"X-AI-RateLimit-Reset-{suffix}"] = str(retry_after)
            out[f"X-AI-RateLimit-Retry-After-{suffix}"] = str(retry_after)
        else:
            out[f"X-AI-RateLimit-Reset-{suffix}"] = str(max(1, math.ceil(state.reset)))
    return out


def error_message(conf: Config, names: list[str]) -> str:
    if conf.error_hide_providers or not names:
        return conf.error_message.rstrip().rstrip(":").rstrip() or DEFAULT_ERROR_MESSAGE.rstrip(
            ": "
        )
    return conf.error_message + ", ".join(dict.fromkeys(names))


# ---------------------------------------------------------------------- addon


@dataclass(slots=True)
class _Reservation:
    counters: Any
    charged: list[tuple[Group, Ticket]]
    headers: dict[str, str]
    estimate: Estimate | None = None  # what was reserved for
    raw: bytes | None = None  # the body it was estimated from (by identity)


class Policy(PolicyAddon):
    """Reserves each request's estimated tokens before it is sent, answers 429 when they
    do not fit, adds the X-AI-RateLimit-* headers, and settles the reservation with the
    call's real usage once its record is built."""

    name = "llmitm-ai-rate-limiting-advanced"
    plugin = NAME

    #: seconds between two warnings that the counters' store is unreachable
    WARN_EVERY = 10.0

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self._reserved: weakref.WeakKeyDictionary[http.HTTPFlow, _Reservation] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: dict[str, float] = {}  # kind of warning -> when last logged

    # ------------------------------------------------------------------- hooks

    async def request(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is None:
            return
        ai: AIProxyConfig | None = call.plugin("ai-proxy")
        if ai is None:  # no LLM call on this route: nothing to count
            return
        try:
            body = self._body(flow, call, ai)
        except ProviderError as e:
            deny(flow, call, e.status, e.message, code=e.code, type=e.type, param=e.param)
            return
        est = estimate(ai, body, conf.reserve_completion_tokens)
        path = flow.request.path.partition("?")[0]
        model = ai.model.name if ai.model.name and "$(" not in ai.model.name else None
        if model is None and isinstance(body, dict) and isinstance(body.get("model"), str):
            model = body["model"]
        facts = Facts(
            ai.model.provider, model, path, call.client_ip, flow.request.headers, call.consumer
        )
        plugin = call.plugins.get(NAME)
        scope = plugin.scope if plugin is not None else "global"
        groups = plan(conf, scope, identity(conf, call, path, flow.request.headers), facts, est)
        if not groups:
            return
        if any(g.strategy == "cost" for g in groups) and (
            ai.model.options.input_cost is None and ai.model.options.output_cost is None
        ):
            deny(
                flow,
                call,
                500,
                "ai-rate-limiting-advanced counts cost, but this route's ai-proxy has no "
                "model.options.input_cost or output_cost to price the call with",
                code="gateway_misconfigured",
                type="api_error",
            )
            return
        if self._too_large(flow, call, conf, groups):
            return
        store = _counters.counters(self.gw, conf.store)
        reservation = await self._reserve(flow, call, conf, store, groups)
        if reservation is not None:
            reservation.estimate = est
            reservation.raw = flow.request.raw_content

    def request_late(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Just before ai-proxy sends the request: when a plugin after this one rewrote
        the body (a template rendered, the decorator's messages), estimate it again and
        top the reservation up, or refuse the request when the difference does not fit."""
        res = self._reserved.get(flow)
        if res is None or res.estimate is None or flow.request.raw_content is res.raw:
            return None  # the body is the one estimated (no coroutine)
        return self._re_estimate(flow, res)

    async def _re_estimate(self, flow: http.HTTPFlow, res: _Reservation) -> None:
        call, conf = self.active(flow)
        ai: AIProxyConfig | None = call.plugin("ai-proxy") if call is not None else None
        if call is None or ai is None:
            return
        try:
            body = self._body(flow, call, ai)
        except ProviderError:
            return  # ai-proxy says what is wrong with it
        est = estimate(ai, body, conf.reserve_completion_tokens)
        before, res.estimate = res.estimate, est
        res.raw = flow.request.raw_content
        more: list[Group] = []
        for g, _ in res.charged:
            extra = est.amount(g.strategy) - before.amount(g.strategy)
            if extra > 1e-9:
                more.append(Group(g.strategy, extra, g.windows, least=None))
        if not more:
            return
        # the request as it is now must fit a whole window at all
        sized = [Group(g.strategy, est.least(g.strategy), g.windows) for g in more]
        if self._too_large(flow, call, conf, sized):
            await self._undo(flow, res)
            return
        await self._top_up(flow, call, conf, res, more)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._add_headers(flow, keep=True)

    def response(self, flow: http.HTTPFlow) -> None:
        self._add_headers(flow, keep=False)

    def error(self, flow: http.HTTPFlow) -> None:
        self._reserved.pop(flow, None)

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _body(flow: http.HTTPFlow, call: Call, ai: AIProxyConfig) -> Any:
        if ai.route_type is RouteType.PRESERVE:
            try:
                return json_body(flow, call)
            except ProviderError:  # ai-proxy passes a non-JSON preserved body on
                try:
                    raw = flow.request.content or b""
                except ValueError:
                    raw = b""
                return {"raw": raw.decode("utf-8", "replace")}
        return json_body(flow, call)

    def _too_large(
        self, flow: http.HTTPFlow, call: Call, conf: Config, groups: list[Group]
    ) -> bool:
        """A request whose estimate alone is more than a whole window's limit can never
        pass: refused at once, saying so, without Retry-After (waiting would not help).
        A guessed answer size does not count here: only what the request says."""
        for g in groups:
            for lim in g.windows:
                if g.floor > lim.window.limit + 1e-9:
                    unit = _unit(g.strategy)
                    reason = (
                        f"this request needs an estimated {_number(g.floor)} {unit}, more "
                        f"than the whole limit of {_number(lim.window.limit)} {unit} per "
                        f"{lim.window.size} seconds: send a shorter prompt or a lower max_tokens"
                    )
                    message = f"{error_message(conf, [lim.label])} ({reason})"
                    headers = {}
                    if not conf.hide_client_headers:
                        suffix = f"{lim.window.size}-{lim.label}"
                        headers[f"X-AI-RateLimit-Limit-{suffix}"] = _number(lim.window.limit)
                    deny(
                        flow,
                        call,
                        conf.error_code,
                        message,
                        code="token_rate_limit_exceeded",
                        type="rate_limit_error",
                        headers=headers,
                    )
                    return True
        return False

    @staticmethod
    async def _acquire(store: Any, g: Group) -> Any:
        """Charge the group's amount; with a guessed answer size, what is left of the
        budget when the whole guess does not fit but more than the prompt does."""
        windows = [lim.window for lim in g.windows]
        if g.least is not None:  # never more than one whole window holds
            g.amount = min(g.amount, min(w.limit for w in windows))
        decision = await store.acquire(windows, g.amount)
        if decision.allowed or g.least is None:
            return decision
        room = min(st.remaining for st in decision.states)
        if room <= g.least + 1e-9:
            return decision
        second = await store.acquire(windows, room)
        g.amount = room  # what the request holds, or what it was refused for
        return second

    async def _reserve(
        self, flow: http.HTTPFlow, call: Call, conf: Config, store: Any, groups: list[Group]
    ) -> _Reservation | None:
        charged: list[tuple[Group, Ticket]] = []
        states: list[tuple[Group, Limited, Any]] = []
        try:
            for g in groups:
                decision = await self._acquire(store, g)
                if not decision.allowed:
                    await self._refuse(flow, call, conf, store, charged, states, g, decision)
                    return None
                charged.append((g, decision.ticket))
                states.extend(
                    (g, lim, s) for lim, s in zip(g.windows, decision.states, strict=True)
                )
        except CountersUnavailable as e:
            with contextlib.suppress(CountersUnavailable):
                await self._release(store, charged)
            self._unavailable(flow, call, conf, e)
            return None
        headers = state_headers(conf, [(lim, s) for _, lim, s in states], set(), 0)
        reservation = _Reservation(store, charged, headers)
        self._reserved[flow] = reservation
        call.on_finish.append(lambda c, record: self._settle(store, charged, record))
        return reservation

    async def _top_up(
        self, flow: http.HTTPFlow, call: Call, conf: Config, res: _Reservation, more: list[Group]
    ) -> None:
        """Charge `more` on the reservation's windows, or refuse the request (and release
        what it holds). The charge is counted in the group it adds to, so the call's
        settlement corrects it with the rest (on the first charge's window instances)."""
        store = res.counters
        done: list[tuple[Group, Ticket]] = []
        try:
            for extra in more:
                decision = await store.acquire([lim.window for lim in extra.windows], extra.amount)
                if not decision.allowed:
                    await self._release(store, done)
                    await self._refuse(flow, call, conf, store, res.charged, [], extra, decision)
                    self._reserved.pop(flow, None)
                    res.charged.clear()  # released (or kept as Kong's penalty): not settled
                    return
                done.append((extra, decision.ticket))
                for lim in extra.windows:  # a requestPrompt window's Query-Cost grows too
                    if lim.query_cost is not None:
                        lim.query_cost += extra.amount
                res.headers.update(
                    state_headers(
                        conf, list(zip(extra.windows, decision.states, strict=True)), set(), 0
                    )
                )
        except CountersUnavailable as e:
            self._unavailable(flow, call, conf, e)
            if not conf.fault_tolerant:  # refused: nothing stays held
                with contextlib.suppress(CountersUnavailable):
                    await self._release(store, done)
                await self._undo(flow, res)
                return
        for extra, _ in done:
            for g, _ in res.charged:
                if g.strategy == extra.strategy:
                    g.amount += extra.amount
                    break

    async def _undo(self, flow: http.HTTPFlow, res: _Reservation) -> None:
        """Release what a reservation holds: its request was refused after all (its
        answer gets no X-AI-RateLimit-* of the reservation, its record settles nothing)."""
        self._reserved.pop(flow, None)
        try:
            await self._release(res.counters, res.charged)
        except CountersUnavailable as e:
            self._warn(f"llmitm: {NAME}: could not release a reservation: {e}")
        res.charged.clear()

    def _unavailable(
        self, flow: http.HTTPFlow, call: Call, conf: Config, err: CountersUnavailable
    ) -> None:
        """The store failed: the request passes uncounted (fault_tolerant), or gets 500,
        as rate-limiting does; logged at most every WARN_EVERY seconds, and counted."""
        outcome = "allowed" if conf.fault_tolerant else "refused"
        self.gw.metrics.store_unavailable.labels(NAME, outcome).inc()
        if conf.fault_tolerant:
            self._warn(f"llmitm: {NAME}: counters unavailable, request allowed: {err}", "pass")
            return
        self._warn(
            f"llmitm: {NAME}: counters unavailable, request refused (fault_tolerant is "
            f"false): {err}",
            "refuse",
        )
        deny(
            flow,
            call,
            500,
            f"{NAME} cannot reach its counters (Redis is unavailable)",
            code="rate_limit_unavailable",
        )

    async def _refuse(
        self,
        flow: http.HTTPFlow,
        call: Call,
        conf: Config,
        store: Any,
        charged: list[tuple[Group, Ticket]],
        states: list[tuple[Group, Limited, Any]],
        group: Group,
        decision: Any,
    ) -> None:
        """Answer 429: undo what earlier groups charged (but Kong's penalty), and name the
        windows that refused the request."""

        def penalized(g: Group) -> bool:  # Kong: only requestPrompt, only sliding windows
            return (
                not conf.disable_penalty
                and g.strategy == _PROMPT_ONLY
                and all(lim.window.sliding for lim in g.windows)
            )

        release = [(g, t) for g, t in charged if not penalized(g)]
        try:
            await self._release(store, release)
            if penalized(group):
                await store.adjust(decision.ticket, group.amount)
        except CountersUnavailable as e:
            self._warn(f"llmitm: {NAME}: could not release a reservation: {e}")
        released = {id(g) for g, _ in release}
        shown: list[tuple[Limited, Any]] = []
        for g, lim, state in states:
            if id(g) in released:  # its state counted this request: take it back out
                state.remaining = min(lim.window.limit, state.remaining + g.amount)
            shown.append((lim, state))
        exceeded: set[int] = set()
        for lim, state in zip(group.windows, decision.states, strict=True):
            if state.used + group.amount > lim.window.limit + 1e-9:
                exceeded.add(len(shown))
            shown.append((lim, state))
        retry = decision.retry_after
        headers = state_headers(conf, shown, exceeded, retry)
        headers["X-AI-RateLimit-Reset"] = str(retry)
        headers["X-AI-RateLimit-Retry-After"] = str(retry)
        jitter = random.uniform(0, conf.retry_after_jitter_max)
        headers["Retry-After"] = str(retry + math.ceil(jitter))
        names = [shown[n][0].label for n in sorted(exceeded)]
        deny(
            flow,
            call,
            conf.error_code,
            error_message(conf, names),
            code="token_rate_limit_exceeded",
            type="rate_limit_error",
            headers=headers,
        )

    @staticmethod
    async def _release(store: Any, charged: list[tuple[Group, Ticket]]) -> None:
        for g, ticket in charged:
            await store.adjust(ticket, -g.amount)

    def _settle(self, store: Any, charged: list[tuple[Group, Ticket]], record: Any) -> None:
        """on_finish: replace each reservation by what the call really spent (requestPrompt
        windows keep their count: the prompt is what they limit)."""
        for g, ticket in charged:
            if g.strategy == _PROMPT_ONLY:
                continue
            delta = spent(g.strategy, record) - g.amount
            if abs(delta) < 1e-12:
                continue
            task = asyncio.get_running_loop().create_task(self._adjust(store, ticket, delta))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adjust(self, store: Any, ticket: Ticket, delta: float) -> None:
        try:
            await store.adjust(ticket, delta)
        except CountersUnavailable as e:
            self._warn(f"llmitm: {NAME}: could not settle a reservation: {e}")
        except Exception:
            log.exception("llmitm: %s: settling a reservation failed", NAME)

    def _add_headers(self, flow: http.HTTPFlow, keep: bool) -> None:
        reservation = self._reserved.get(flow) if keep else self._reserved.pop(flow, None)
        if reservation is None or flow.response is None:
            return
        set_headers(flow.response.headers, reservation.headers)

    def _warn(self, message: str, kind: str = "store") -> None:
        """Log a warning of its kind at most once every WARN_EVERY seconds."""
        now = time.monotonic()
        last = self._warned.get(kind)
        if last is None or now - last >= self.WARN_EVERY:
            self._warned[kind] = now
            log.warning(message)
