"""Token prices (USD per 1M tokens) for calls whose route states none: observed calls.

A gateway route prices its calls with its own `model.options` (`input_cost`,
`output_cost`, `cache_read_cost`, `cache_write_cost`). Observe mode has no route, so it
asks a `PriceTable`, whose sources are tried in order, the first that knows the model
winning:

1. the user's entries (`--set llmitm_observe_prices=...`, repeatable), each
   `[provider/]model=input/output[/cache_read[/cache_write]]` in USD per 1M tokens,
   `*` standing for any characters of the model name (`gpt-4o*=2.5/10/1.25`,
   `anthropic/claude-sonnet-4-5=3/15/0.3/3.75`, `ollama/*=0/0`); `=off` gives a model
   no price at all (`*=off` turns the built-in prices off);
2. the built-in prices: `genai-prices`, pydantic's maintained database of LLM API
   prices (its data is bundled with the package and read from it: it never fetches
   prices from the network unless its `UpdatePrices` is started, which llmitm does not
   do). Where a price depends on the prompt's size (Gemini and Claude beyond 200k
   tokens) the tier of the call's prompt applies; prices that change over time are
   taken at the call's time.

Only token prices are used (not per-request, search or image fees). A model neither
source knows gets no cost (never a made-up $0).

Loading the built-in database takes a fraction of a second: `load_builtin()` is meant
to run in a thread at startup; until it has run, `PriceTable.lookup` answers from the
user's entries only, so no lookup ever blocks on it. Pure code otherwise: no mitmproxy.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from providers.options import ModelOptions

log = logging.getLogger("llmitm")

#: the name of llmitm's providers in genai-prices (None: no built-in prices)
GENAI_PROVIDERS: dict[str, str] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "bedrock": "aws",
    "cohere": "cohere",
    "mistral": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "openrouter": "openrouter",
    "together": "together",
    "cerebras": "cerebras",
    "huggingface": "huggingface",
}

OFF = "off"
_MAX_CACHE = 2048


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1M tokens. A cache price left None is the input price (as for routes)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    #: where the prices come from: "llmitm_observe_prices" or "genai-prices <version>"
    source: str = ""

    def options(self) -> ModelOptions:
        """Model options carrying these prices, for `Usage.cost` (as a route's would).
        Built without validation: a free model's 0 is a price here, not a missing one."""
        return ModelOptions.model_construct(
            input_cost=self.input,
            output_cost=self.output,
            cache_read_cost=self.cache_read,
            cache_write_cost=self.cache_write,
        )


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One user entry: `[provider/]model-pattern=prices` (prices None: `off`)."""

    text: str
    provider: str | None
    model: re.Pattern[str]
    prices: Prices | None

    def matches(self, provider: str, model: str) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        return self.model.fullmatch(model.lower()) is not None


def _number(text: str, what: str, entry: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{entry!r}: the {what} price {text!r} is not a number of USD per 1M tokens (>= 0)"
        )
    return value


def parse_entry(text: str, known_providers: Iterable[str] | None = None) -> PriceEntry:
    """A user entry; ValueError naming the entry and what is wrong with it."""
    key, sep, value = text.strip().rpartition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise ValueError(
            f"{text!r}: expected [provider/]model=input/output[/cache_read[/cache_write]] "
            "(USD per 1M tokens) or [provider/]model=off"
        )
    provider: str | None = None
    model = key
    head, slash, rest = key.partition("/")
    names = set(known_providers) if known_providers is not None else set(GENAI_PROVIDERS)
    if slash and head.lower() in names:  # else the slash is the model's own (openai/gpt-4o)
        provider, model = head.lower(), rest
    if not model:
        raise ValueError(f"{text!r}: the model (or pattern) is missing")
    pattern = re.compile(".*".join(re.escape(p) for p in model.lower().split("*")))
    if value.lower() == OFF:
        return PriceEntry(text.strip(), provider, pattern, None)
    parts = value.split("/")
    if not 2 <= len(parts) <= 4:
        raise ValueError(
            f"{text!r}: expected 2 to 4 prices, input/output[/cache_read[/cache_write]] "
            f"(USD per 1M tokens), got {len(parts)}"
        )
    names_of = ("input", "output", "cache read", "cache write")
    numbers = [_number(p.strip(), names_of[i], text) for i, p in enumerate(parts)]
    prices = Prices(
        numbers[0],
        numbers[1],
        numbers[2] if len(numbers) > 2 else None,
        numbers[3] if len(numbers) > 3 else None,
        source="llmitm_observe_prices",
    )
    return PriceEntry(text.strip(), provider, pattern, prices)


# ------------------------------------------------------------ the built-in prices

_lock = threading.Lock()
_snapshot: Any = None  # genai_prices' DataSnapshot once loaded
_version = ""
_failed = False


def load_builtin() -> bool:
    """Load genai-prices' bundled database (blocking: a fraction of a second; call it
    from a thread). True when the built-in prices are available."""
    global _snapshot, _version, _failed
    with _lock:
        if _snapshot is not None or _failed:
            return _snapshot is not None
        try:
            import genai_prices
            from genai_prices import data_snapshot

            snapshot = data_snapshot.get_snapshot()
            snapshot.providers  # noqa: B018 - the bundled data is imported here
            _version = f"genai-prices {genai_prices.__version__}"
        except Exception as e:  # noqa: BLE001 - not installed or broken: user prices only
            _failed = True
            log.warning("llmitm: no built-in prices (genai-prices: %s)", e)
            return False
        _snapshot = snapshot
        return True


def builtin_loaded() -> bool:
    return _snapshot is not None


def _rate(value: Any, prompt_tokens: int) -> float | None:
    """One price of genai-prices (a Decimal, or tiers chosen by the prompt's size)."""
    if value is None:
        return None
    base = getattr(value, "base", None)
    if base is not None:  # TieredPrices: the whole prompt pays the tier it reaches
        rate = base
        for tier in sorted(value.tiers, key=lambda t: t.start):
            if prompt_tokens > tier.start:
                rate = tier.price
        return float(rate)
    return float(value)


class PriceTable:
    """The user's entries first, then the built-in prices."""

    def __init__(self, entries: Sequence[PriceEntry] = (), builtin: bool = True) -> None:
        self.entries = list(entries)
        self.builtin = builtin
        self._models: dict[tuple[str, str], Any] = {}  # (genai provider, model) -> ModelInfo

    @classmethod
    def from_config(
        cls, lines: Iterable[str], known_providers: Iterable[str] | None = None
    ) -> PriceTable:
        known = list(known_providers) if known_providers is not None else None
        return cls([parse_entry(line, known) for line in lines if line.strip()])

    def lookup(
        self,
        provider: str,
        models: Iterable[str | None],
        prompt_tokens: int = 0,
        when: float | None = None,
    ) -> Prices | None:
        """The prices of a call of `provider` to the first of `models` (the answer's
        model, then the requested one) that a source knows; None when none does."""
        names = [m for m in models if isinstance(m, str) and m]
        for name in names:
            for e in self.entries:
                if e.matches(provider, name):
                    return e.prices
        if not self.builtin or _snapshot is None:
            return None
        genai_provider = GENAI_PROVIDERS.get(provider)
        if genai_provider is None:
            return None
        moment = datetime.fromtimestamp(when, UTC) if when is not None else datetime.now(UTC)
        for name in names:
            info = self._model(genai_provider, name)
            if info is None:
                continue
            try:
                price = info.get_prices(moment)
            except Exception:  # noqa: BLE001 - a model without usable prices
                continue
            found = self._prices(price, prompt_tokens)
            if found is not None:
                return found
        return None

    def _model(self, genai_provider: str, model: str) -> Any:
        key = (genai_provider, model.lower())
        try:
            return self._models[key]
        except KeyError:
            pass
        try:
            _, info = _snapshot.find_provider_model(model, None, genai_provider, None)
        except LookupError:
            info = None
        if len(self._models) < _MAX_CACHE:  # bounded: a client picks the model names
            self._models[key] = info
        return info

    @staticmethod
    def _prices(price: Any, prompt_tokens: int) -> Prices | None:
        inp = _rate(getattr(price, "input_mtok", None), prompt_tokens)
        out = _rate(getattr(price, "output_mtok", None), prompt_tokens)
        if inp is None and out is None:
            return None
        return Prices(
            inp or 0.0,
            out or 0.0,
            _rate(getattr(price, "cache_read_mtok", None), prompt_tokens),
            _rate(getattr(price, "cache_write_mtok", None), prompt_tokens),
            source=_version,
        )
