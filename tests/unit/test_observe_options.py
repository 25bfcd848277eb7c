"""Observe mode's list options given on the command line (`--set NAME=a --set NAME=b`).

mitmproxy hands a script its options before the script's addons have declared them;
the gateway refuses a repeated single-value option at load (mitmproxy would otherwise
drop every option of the script), and must accept repeated list options, which is how
mitmproxy takes a list on the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons import config_watch
from addons.dispatch import Chain
from addons.gateway import chain
from addons.observe import Observe
from addons.state import Gateway


def test_the_list_options_are_the_ones_the_chain_declares() -> None:
    """LIST_OPTIONS is checked before the addons declaring them have loaded: it must
    name every list option of the gateway's addons."""
    with taddons.context(*chain(Gateway())) as tctx:
        declared = {
            name
            for name, option in tctx.options._options.items()
            if name.startswith("llmitm_") and option.typespec == Sequence[str]
        }
    assert declared == config_watch.LIST_OPTIONS


def test_repeated_list_options_are_taken_whole(caplog: pytest.LogCaptureFixture) -> None:
    gw = Gateway()
    with taddons.context() as tctx:
        tctx.options.set(
            "llmitm_observe_hosts=llm-a.internal=openai",
            "llmitm_observe_hosts=llm-b.internal:8443=anthropic",
            "llmitm_observe_prices=my-model=1/2",
            "llmitm_observe_prices=anthropic/*=3/15",
            defer=True,
        )
        with caplog.at_level(logging.ERROR, logger="llmitm"):
            observe = Observe(gw)
            tctx.master.addons.add(config_watch.ConfigWatch(gw), observe)
            observe.configure({"llmitm_observe_hosts", "llmitm_observe_prices"})  # as at startup
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert list(tctx.options.llmitm_observe_hosts) == [
            "llm-a.internal=openai",
            "llm-b.internal:8443=anthropic",
        ]
        assert observe.hosts.provider_for("llm-a.internal", 443) == "openai"
        assert observe.hosts.provider_for("llm-b.internal", 8443) == "anthropic"
        assert observe.prices.lookup("openai", ["my-model"]) is not None
        assert observe.prices.lookup("anthropic", ["claude-x"]) is not None


def test_a_repeated_single_value_option_is_a_startup_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = Gateway()
    with taddons.context() as tctx:
        tctx.options.set("llmitm_config=a.yaml", "llmitm_config=b.yaml", defer=True)
        with (
            caplog.at_level(logging.ERROR, logger="llmitm"),
            pytest.raises(exceptions.OptionsError),
        ):
            tctx.master.addons.add(config_watch.ConfigWatch(gw))
    assert "--set llmitm_config is given 2 times (a.yaml, b.yaml): give it once" in caplog.text


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "llmitm_shutdown_grace=soon",
            "--set llmitm_shutdown_grace=soon: Failed to parse option llmitm_shutdown_grace: "
            "not an integer: soon",
        ),
        ("llmitm_observe=maybe", "--set llmitm_observe=maybe: Failed to parse option"),
    ],
)
def test_an_unparsable_option_value_is_a_startup_error(
    caplog: pytest.LogCaptureFixture, setting: str, message: str
) -> None:
    # mitmproxy would drop every option of the script (the config too) without a word
    gw = Gateway()
    with taddons.context() as tctx:
        tctx.options.set(setting, defer=True)
        with (
            caplog.at_level(logging.ERROR, logger="llmitm"),
            pytest.raises(exceptions.OptionsError),
        ):
            tctx.master.addons.add(Chain(chain(gw)))
    assert message in caplog.text


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("llmitm_observe_prices", ["gpt-4o=cheap"], "llmitm_observe_prices: 'gpt-4o=cheap'"),
        ("llmitm_observe_hosts", ["llm.internal=nobody"], "unknown provider 'nobody'"),
    ],
)
def test_bad_entries_are_option_errors(option: str, value: list[str], message: str) -> None:
    with taddons.context(Observe(Gateway())) as tctx:
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(tctx.master.addons.get("llmitm-observe"), **{option: value})
        assert message in str(e.value)
