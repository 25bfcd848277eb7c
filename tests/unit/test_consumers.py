"""Consumers in the config: loading, their keys, the load errors a user can make, and
Kong's plugin precedence once a consumer is known (GatewayConfig.plugins_for)."""

from __future__ import annotations

import pytest

from addons.calls import Call
from addons.config import ConfigError, load_text
from addons.config.model import Consumer, GatewayConfig, Plugin, Route, Service
from addons.config.plugins import CONSUMER_PLUGINS
from providers.options import Strict
from tests.policy_helpers import mock_chat_config

BASE = mock_chat_config({"key-auth": None})


def load(consumers: str, extra: str = "") -> GatewayConfig:
    return load_text(BASE + "consumers:\n" + consumers + extra, "test.yaml")


def problems(consumers: str, extra: str = "") -> str:
    with pytest.raises(ConfigError) as e:
        load(consumers, extra)
    return str(e.value)


def test_consumers_and_their_keys_load() -> None:
    cfg = load(
        """
  - username: alice
    custom_id: A-1
    id: 11111111-2222-4333-8444-555555555555
    tags: [team-a]
    keyauth_credentials:
      - {key: k-alice-1, id: c1}
      - {key: k-alice-2}
  - custom_id: B-2
    keyauth_credentials: [{key: k-bob}]
  - username: nobody-with-keys
"""
    )
    assert [c.name for c in cfg.consumers] == ["alice", "B-2", "nobody-with-keys"]
    alice = cfg.consumers[0]
    assert (alice.custom_id, alice.id, alice.tags) == (
        "A-1",
        "11111111-2222-4333-8444-555555555555",
        ["team-a"],
    )
    assert set(cfg.credentials) == {"k-alice-1", "k-alice-2", "k-bob"}
    assert cfg.credentials["k-alice-1"].consumer is alice
    assert cfg.credentials["k-alice-1"].id == "c1"
    assert cfg.credentials["k-bob"].consumer.custom_id == "B-2"
    # keys are secrets: the recorder redacts them wherever they appear
    assert {"k-alice-1", "k-alice-2", "k-bob"} <= cfg.secrets
    # Kong's anonymous / top-level `consumer:` take a username, custom_id or id
    for name in ("alice", "A-1", "11111111-2222-4333-8444-555555555555"):
        assert cfg.consumer(name) is alice
    assert cfg.consumer("k-alice-1") is None


def test_credential_repr_never_shows_the_key() -> None:
    cfg = load("  - username: alice\n    keyauth_credentials: [{key: sk-very-secret-key}]\n")
    assert "sk-very-secret-key" not in repr(cfg.credentials["sk-very-secret-key"])


def test_keys_from_the_vault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALICE_KEY", "sk-from-env-123")
    cfg = load("  - username: alice\n    keyauth_credentials: [{key: '{vault://env/ALICE_KEY}'}]\n")
    assert cfg.credentials["sk-from-env-123"].consumer.username == "alice"
    assert "sk-from-env-123" in cfg.secrets


def test_a_consumer_may_use_the_same_name_as_username_and_custom_id() -> None:
    cfg = load("  - {username: alice, custom_id: alice}\n")
    assert cfg.consumer("alice").username == "alice"


@pytest.mark.parametrize(
    "consumers, message",
    [
        (
            "  - username: alice\n  - username: alice\n",
            "test.yaml:14: consumers[1].username: consumer 'alice' is configured twice",
        ),
        (
            "  - custom_id: X\n  - custom_id: X\n",
            "consumers[1].custom_id: consumer 'X' is configured twice",
        ),
        # a username that is another consumer's custom_id: `anonymous: X` would be ambiguous
        (
            "  - username: X\n  - custom_id: X\n",
            "consumers[1].custom_id: consumer 'X' is configured twice",
        ),
        (
            "  - {username: a, id: same}\n  - {username: b, id: same}\n",
            "consumers[1].id: consumer 'same' is configured twice",
        ),
        (
            "  - tags: [x]\n",
            "consumers[0]: a consumer needs a username or a custom_id",
        ),
        (
            "  - username: a\n    keyauth_credentials: [{key: ''}]\n",
            "consumers[0].keyauth_credentials[0].key: String should have at least 1 character",
        ),
        (
            "  - username: a\n    keyauth_credentials: [{}]\n",
            "consumers[0].keyauth_credentials[0].key: required field is missing",
        ),
        (
            "  - username: a\n    keyauth_credential: []\n",
            "unknown field 'keyauth_credential' (did you mean 'keyauth_credentials'?)",
        ),
    ],
)
def test_consumer_load_errors(consumers: str, message: str) -> None:
    assert message in problems(consumers)


def test_a_key_cannot_belong_to_two_consumers() -> None:
    text = problems(
        """
  - username: alice
    keyauth_credentials: [{key: sk-shared-key-1}]
  - username: bob
    keyauth_credentials: [{key: sk-shared-key-1}]
"""
    )
    assert "consumers[1].keyauth_credentials[0].key: this key is already another credential's" in (
        text
    )
    assert "sk-shared-key-1" not in text  # the error does not print the key


def test_a_key_listed_twice_for_one_consumer() -> None:
    text = problems("  - username: a\n    keyauth_credentials: [{key: k1}, {key: k1}]\n")
    assert "consumers[0].keyauth_credentials[1].key: this key is already" in text


def test_key_auth_cannot_be_configured_for_a_consumer() -> None:
    nested = problems(
        """
  - username: alice
    plugins:
      - name: key-auth
"""
    )
    where = "consumers[0].plugins[0].name"
    assert f"{where}: plugin 'key-auth' cannot be configured for a consumer" in nested
    top = problems(
        "  - username: alice\n",
        """
plugins:
  - name: key-auth
    consumer: alice
""",
    )
    assert "plugins[0].name: plugin 'key-auth' cannot be configured for a consumer" in top


def test_every_problem_is_reported_at_once() -> None:
    text = problems(
        "  - username: alice\n  - username: alice\n",
        """
plugins:
  - name: key-auth
    route: chat
    config: {anonymous: ghost}
""",
    )
    assert "consumers[1].username: consumer 'alice' is configured twice" in text
    assert "plugins[0].config.anonymous: anonymous consumer 'ghost' is not configured" in text


def test_a_top_level_plugin_names_an_existing_consumer() -> None:
    text = problems("  - username: alice\n", "plugins:\n  - name: file-log\n    consumer: bob\n"
                    "    config: {path: /tmp/x}\n")  # fmt: skip
    assert "plugins[0].consumer: no consumer named 'bob'" in text


# ---------------------------------------------------------------- precedence


class Conf(Strict):
    level: str


def plugin(name: str, level: str, scope: str = "x") -> Plugin:
    return Plugin(name, Conf(level=level), scope)


def precedence_config() -> tuple[GatewayConfig, Route, Route, Consumer]:
    svc = Service("svc", None, 60, 60, 60, 5)
    other_svc = Service("other", None, 60, 60, 60, 5)
    # a route's effective plugins are global < service < route (the loader merges them)
    route_plugins = {
        "p-global": plugin("p-global", "global"),
        "p-service": plugin("p-service", "service"),
        "p-route": plugin("p-route", "route"),
        "p-consumer": plugin("p-consumer", "route"),
        "p-consumer-service": plugin("p-consumer-service", "route"),
        "p-consumer-route": plugin("p-consumer-route", "route"),
    }
    chat = Route("chat", svc, ["/chat"], [], [], {}, True, False, 0, plugins=route_plugins)
    other = Route("other", other_svc, ["/o"], [], [], {}, True, False, 0, plugins=route_plugins)
    alice = Consumer("alice", None)
    alice.plugins = {
        "p-consumer": plugin("p-consumer", "consumer"),
        "p-consumer-service": plugin("p-consumer-service", "consumer"),
        "p-consumer-route": plugin("p-consumer-route", "consumer"),
        "p-only-consumer": plugin("p-only-consumer", "consumer"),
    }
    alice.service_plugins = {
        "svc": {
            "p-consumer-service": plugin("p-consumer-service", "consumer+service"),
            "p-consumer-route": plugin("p-consumer-route", "consumer+service"),
        }
    }
    alice.route_plugins = {
        "chat": {"p-consumer-route": plugin("p-consumer-route", "consumer+route")}
    }
    cfg = GatewayConfig(
        source="t",
        routes=[chat, other],
        global_plugins={"p-global": plugin("p-global", "global")},
        table=None,
        consumers=[alice],
    )
    return cfg, chat, other, alice


def levels(plugins: dict[str, Plugin]) -> dict[str, str]:
    return {name: p.config.level for name, p in plugins.items()}


def test_plugins_for_follows_kongs_precedence() -> None:
    """consumer+route > consumer+service > consumer > route > service > global."""
    cfg, chat, other, alice = precedence_config()
    assert levels(cfg.plugins_for(chat, alice)) == {
        "p-global": "global",
        "p-service": "service",
        "p-route": "route",
        "p-consumer": "consumer",
        "p-consumer-service": "consumer+service",
        "p-consumer-route": "consumer+route",
        "p-only-consumer": "consumer",
    }
    # on another service's route only the consumer's own plugins apply
    assert levels(cfg.plugins_for(other, alice)) == {
        "p-global": "global",
        "p-service": "service",
        "p-route": "route",
        "p-consumer": "consumer",
        "p-consumer-service": "consumer",
        "p-consumer-route": "consumer",
        "p-only-consumer": "consumer",
    }


def test_plugins_for_without_a_consumer_or_a_route() -> None:
    cfg, chat, _, alice = precedence_config()
    assert cfg.plugins_for(chat, None) is chat.plugins
    assert levels(cfg.plugins_for(None, None)) == {"p-global": "global"}
    # no route (a 404): global plugins, then the consumer's own
    assert levels(cfg.plugins_for(None, alice))["p-consumer"] == "consumer"
    # the route's own map is never modified by a consumer's plugins
    assert chat.plugins["p-consumer"].config.level == "route"


def test_set_consumer_switches_the_calls_plugins() -> None:
    cfg, chat, _, alice = precedence_config()
    call = Call(config=cfg, route=chat, match=None, started_at=0.0, plugins=chat.plugins)
    assert call.plugin("p-consumer-route").level == "route"
    assert call.plugin("p-only-consumer") is None
    call.set_consumer(alice, None)
    assert call.consumer is alice
    assert call.plugin("p-consumer-route").level == "consumer+route"
    assert call.plugin("p-only-consumer").level == "consumer"


@pytest.mark.skipif(
    "rate-limiting" not in CONSUMER_PLUGINS, reason="no rate-limiting plugin in this checkout"
)
def test_consumer_scopes_through_the_loader() -> None:
    """The same precedence, from a config file (needs a consumer-scoped plugin)."""
    cfg = load(
        """
  - username: alice
    keyauth_credentials: [{key: k-alice}]
    plugins:
      - name: rate-limiting
        config: {minute: 2}
  - username: bob
""",
        """
plugins:
  - name: rate-limiting
    config: {minute: 100}
  - name: rate-limiting
    consumer: alice
    service: llm
    config: {minute: 3}
  - name: rate-limiting
    consumer: alice
    route: chat
    config: {minute: 4}
""",
    )
    chat = cfg.routes[0]
    alice, bob = cfg.consumers
    p = cfg.plugins_for(chat, alice)["rate-limiting"]
    assert (p.config.minute, p.scope) == (4, "consumer:alice+route:chat")
    assert cfg.plugins_for(chat, bob)["rate-limiting"].config.minute == 100
    assert cfg.plugins_for(chat, None)["rate-limiting"].config.minute == 100
