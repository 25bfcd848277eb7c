"""One usage contract for every provider: `prompt_tokens` counts every input token,
cached ones included, whatever the provider's own figure means; cost bills cached
tokens at the cache prices, not as fresh input."""

from __future__ import annotations

from typing import Any

import pytest

import providers
from providers.openai_compatible import HOSTS
from providers.options import ModelOptions

# A native answer per provider with 100 fresh input tokens, 900 read from the cache and
# (where the provider has it) 50 written to it, and 20 output tokens.
NATIVE: dict[str, tuple[dict[str, Any], int]] = {
    "openai": (
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 900},
            }
        },
        0,
    ),
    "anthropic": (
        {
            "usage": {
                "input_tokens": 50,
                "cache_read_input_tokens": 900,
                "cache_creation_input_tokens": 50,
                "output_tokens": 20,
            }
        },
        50,
    ),
    "gemini": (
        {
            "usageMetadata": {
                "promptTokenCount": 1000,
                "cachedContentTokenCount": 900,
                "candidatesTokenCount": 20,
            }
        },
        0,
    ),
    "cohere": (
        {"usage": {"tokens": {"input_tokens": 1000, "output_tokens": 20}, "cached_tokens": 900}},
        0,
    ),
    "bedrock": (
        {
            "usage": {
                "inputTokens": 50,
                "cacheReadInputTokens": 900,
                "cacheWriteInputTokens": 50,
                "outputTokens": 20,
                "totalTokens": 1020,
            }
        },
        50,
    ),
    "azure": (
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 900},
            }
        },
        0,
    ),
    "mistral": (
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 900},
            }
        },
        0,
    ),
    # Ollama 0.30+: prompt_eval_count is the whole prompt, the KV-cache hits apart
    "ollama": (
        {"prompt_eval_count": 1000, "prompt_eval_cached_count": 900, "eval_count": 20},
        0,
    ),
    # the router's (or TGI's) OpenAI usage
    "huggingface": (
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 900},
            }
        },
        0,
    ),
    # DeepSeek: prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens
    "deepseek": (
        {
            "usage": {
                "prompt_tokens": 1000,
                "prompt_cache_hit_tokens": 900,
                "prompt_cache_miss_tokens": 100,
                "completion_tokens": 20,
            }
        },
        0,
    ),
    # OpenRouter: prompt_tokens counts the cache reads and the cache writes
    "openrouter": (
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 900, "cache_write_tokens": 50},
            }
        },
        50,
    ),
}

#: what each provider's own input figure is in the payload above: the whole prompt
#: (1000, cached tokens included) or the fresh part only (50)
NATIVE_INPUT = {name: 1000 for name in NATIVE} | {"anthropic": 50, "bedrock": 50}


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_prompt_tokens_include_cached_ones(name: str) -> None:
    provider = providers.get(name)
    data, writes = NATIVE[name]
    usage = provider.usage_from(data)
    assert usage is not None
    assert usage.prompt_tokens == 1000
    assert usage.cache_read_tokens == 900
    assert usage.cache_write_tokens == writes
    assert usage.completion_tokens == 20
    # the declared meaning of the native figure matches the payload above
    assert provider.input_includes_cache == (NATIVE_INPUT[name] == usage.prompt_tokens)


#: the adapters of the providers added with issue 4: each states what its input figure
#: means, rather than inheriting the default
STATED = sorted(
    {"azure", "cohere", "mistral", "llama2", "ollama", "huggingface"} | {h.name for h in HOSTS}
)


@pytest.mark.parametrize("name", STATED)
def test_each_adapter_states_whether_its_input_count_includes_cached_tokens(name: str) -> None:
    provider = providers.get(name)
    declared = {**vars(type(provider)), **vars(provider)}  # not inherited
    assert "input_includes_cache" in declared, f"{name} inherits input_includes_cache"
    assert provider.input_includes_cache is True  # each counts the whole prompt


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_cached_input_is_billed_at_the_cache_price(name: str) -> None:
    usage = providers.get(name).usage_from(NATIVE[name][0])
    assert usage is not None
    options = ModelOptions(
        input_cost=3.0, output_cost=15.0, cache_read_cost=0.3, cache_write_cost=3.75
    )
    fresh = 1000 - 900 - usage.cache_write_tokens
    expected = (fresh * 3.0 + 900 * 0.3 + usage.cache_write_tokens * 3.75 + 20 * 15.0) / 1e6
    assert usage.cost(options) == pytest.approx(expected)
    # far below what the same prompt would cost as fresh input
    assert usage.cost(options) < (1000 * 3.0 + 20 * 15.0) / 1e6 / 3


def test_a_cost_the_provider_reports_wins_over_the_route_prices() -> None:
    """OpenRouter bills per provider and route; its own figure is the truth."""
    usage = providers.get("openrouter").usage_from(
        {"usage": {"prompt_tokens": 100, "completion_tokens": 10, "cost": 0.0042}}
    )
    assert usage is not None
    assert usage.cost(ModelOptions(input_cost=1.0, output_cost=1.0)) == 0.0042
    assert usage.cost(ModelOptions()) == 0.0042
