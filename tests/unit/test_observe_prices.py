"""providers/prices.py: the prices of observed calls (the user's entries, then genai-prices).

The built-in prices are genai-prices' bundled database: the costs computed from the
per-1M-token prices llmitm takes from it are checked against genai-prices' own
`calc_price` for the same usage (tiers included), not against figures copied here that
the next release of the database would change.
"""

from __future__ import annotations

import genai_prices
import pytest

import providers
from providers import prices
from providers.base import Usage
from providers.prices import Prices, PriceTable, parse_entry


@pytest.fixture(scope="module", autouse=True)
def _builtin() -> None:
    assert prices.load_builtin(), "genai-prices is not installed"


def table(*lines: str) -> PriceTable:
    return PriceTable.from_config(lines, providers.registry())


# ------------------------------------------------------------------ user entries


@pytest.mark.parametrize(
    ("text", "provider", "model", "expected"),
    [
        ("gpt-4o=2.5/10", None, "gpt-4o", Prices(2.5, 10.0)),
        ("gpt-4o=2.5/10/1.25", None, "gpt-4o", Prices(2.5, 10.0, 1.25)),
        ("anthropic/claude-*=3/15/0.3/3.75", "anthropic", "claude-x", Prices(3, 15, 0.3, 3.75)),
        ("ollama/*=0/0", "ollama", "llama3.2", Prices(0.0, 0.0)),
        # a slash that does not follow a provider's name is the model's own
        ("*/gpt-4o=1/2", None, "openai/gpt-4o", Prices(1, 2)),
        (" My-Model = 1 / 2 ", None, "my-model", Prices(1, 2)),
    ],
)
def test_entries(text: str, provider: str | None, model: str, expected: Prices) -> None:
    entry = parse_entry(text, providers.registry())
    assert entry.provider == provider
    assert entry.prices is not None
    got = entry.prices
    assert (got.input, got.output, got.cache_read, got.cache_write) == (
        expected.input,
        expected.output,
        expected.cache_read,
        expected.cache_write,
    )
    assert got.source == "llmitm_observe_prices"
    assert entry.matches(provider or "openrouter", model)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpt-4o", "expected [provider/]model=input/output"),
        ("=1/2", "expected [provider/]model=input/output"),
        ("gpt-4o=", "expected [provider/]model=input/output"),
        ("gpt-4o=3", "expected 2 to 4 prices"),
        ("gpt-4o=1/2/3/4/5", "expected 2 to 4 prices"),
        ("gpt-4o=1/two", "the output price 'two' is not a number"),
        ("gpt-4o=-1/2", "the input price '-1' is not a number"),
        ("gpt-4o=1/2/nan", "the cache read price 'nan' is not a number"),
        ("openai/=1/2", "the model (or pattern) is missing"),
    ],
)
def test_bad_entries_name_the_entry_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_entry(text, providers.registry())
    assert repr(text.strip()) in str(e.value) or repr(text) in str(e.value)
    assert message in str(e.value)


def test_the_users_prices_win_first_match_first() -> None:
    t = table("openai/gpt-4o-mini*=1/2", "gpt-4o*=5/6", "anthropic/*=off")
    assert t.lookup("openai", ["gpt-4o-mini-2024-07-18"]) == Prices(
        1, 2, source="llmitm_observe_prices"
    )
    assert t.lookup("azure", ["gpt-4o-mini"]) == Prices(5, 6, source="llmitm_observe_prices")
    # `off`: no price, although the built-in database knows the model
    assert t.lookup("anthropic", ["claude-sonnet-4-5"]) is None
    # the answer's model first, then the requested one (an Azure deployment name)
    t = table("gpt-4o-2024-08-06=7/8", "my-deployment=1/1")
    assert t.lookup("azure", ["gpt-4o-2024-08-06", "my-deployment"]).input == 7  # type: ignore[union-attr]
    assert t.lookup("azure", [None, "my-deployment"]).input == 1  # type: ignore[union-attr]


def test_a_free_model_costs_zero_not_unknown() -> None:
    found = table("ollama/*=0/0").lookup("ollama", ["llama3.2"])
    assert found is not None
    assert Usage(100, 50).cost(found.options()) == 0.0


def test_without_the_built_in_prices_only_the_users_apply() -> None:
    t = PriceTable(table("my-model=1/2").entries, builtin=False)
    assert t.lookup("openai", ["gpt-4o"]) is None
    assert t.lookup("openai", ["my-model"]) is not None


# ------------------------------------------------------------------ built-in prices


@pytest.mark.parametrize(
    ("provider", "model", "usage"),
    [
        ("openai", "gpt-4o-mini-2024-07-18", Usage(1000, 200, cache_read_tokens=400)),
        ("openai", "text-embedding-3-small", Usage(5000, 0)),
        ("azure", "gpt-4o-2024-08-06", Usage(300, 20)),
        ("anthropic", "claude-sonnet-4-5", Usage(2021, 14, 1800, 200)),
        ("anthropic", "claude-haiku-4-5", Usage(50, 10)),
        # tiered: the whole prompt pays the tier it reaches (Gemini beyond 200k tokens)
        ("gemini", "gemini-2.5-pro", Usage(1000, 100)),
        ("gemini", "gemini-2.5-pro", Usage(250_000, 1000, cache_read_tokens=10_000)),
        ("gemini", "claude-sonnet-4-5@20250929", Usage(40, 4)),  # Claude on Vertex AI
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", Usage(100, 10)),
        ("mistral", "mistral-large-latest", Usage(70, 7)),
        ("cohere", "command-a-03-2025", Usage(71, 26)),
        ("groq", "llama-3.3-70b-versatile", Usage(31, 7)),
        ("deepseek", "deepseek-chat", Usage(40, 12)),
        ("xai", "grok-4", Usage(25, 11)),
    ],
)
def test_built_in_costs_are_genai_prices_own(provider: str, model: str, usage: Usage) -> None:
    found = PriceTable().lookup(provider, [model], usage.prompt_tokens)
    assert found is not None and found.source.startswith("genai-prices ")
    theirs = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        ),
        model,
        provider_id=prices.GENAI_PROVIDERS[provider],
    )
    ours = usage.cost(found.options())
    assert ours is not None and ours > 0
    assert ours == pytest.approx(float(theirs.total_price), rel=1e-9)


def test_unknown_models_and_providers_get_no_price() -> None:
    t = PriceTable()
    assert t.lookup("openai", ["no-such-model-xyz"]) is None
    assert t.lookup("ollama", ["llama3.2"]) is None  # local: no list price
    assert t.lookup("mock", ["mock-gpt"]) is None
    assert t.lookup("openai", [None]) is None
