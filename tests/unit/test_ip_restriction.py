"""ip-restriction: address and CIDR parsing, Kong's allow/deny precedence, the addon."""

from __future__ import annotations

import ipaddress

import pytest
from mitmproxy.http import HTTPFlow

from addons.config import load_text
from addons.policies import ip_restriction
from addons.policies.ip_restriction import Config, client_address, parse_network
from addons.state import Gateway
from tests.policy_helpers import error_of, gateway_for, load_error, route_config, routed_request

# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("entry", "network"),
    [
        ("10.0.0.1", "10.0.0.1/32"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),  # host bits ignored
        (" 192.168.0.0/16 ", "192.168.0.0/16"),
        ("::1", "::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:DB8::1/128", "2001:db8::1/128"),
        ("::ffff:10.0.0.1", "10.0.0.1/32"),  # IPv4-mapped: its IPv4 address
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
    ],
)
def test_entries(entry: str, network: str) -> None:
    assert parse_network(entry) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    "entry", ["", "localhost", "10.0.0.256", "10.0.0.0/33", "1.2.3", "::g", "10.0.0.0/8/8", "*"]
)
def test_bad_entries_name_themselves(entry: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or CIDR range") as e:
        parse_network(entry)
    assert repr(entry) in str(e.value)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),  # an IPv4 client on a dual-stack socket
        ("fe80::1%eth0", "fe80::1"),
        ("2001:db8::5", "2001:db8::5"),
    ],
)
def test_client_addresses(peer: str, address: str) -> None:
    assert client_address(peer) == ipaddress.ip_address(address)


@pytest.mark.parametrize("peer", ["", "/tmp/socket", "not-an-ip"])
def test_unknown_client_addresses(peer: str) -> None:
    assert client_address(peer) is None


# --------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("allow", "deny", "client", "allowed"),
    [
        # allow only: everyone else is refused
        (["10.0.0.0/8"], None, "10.9.8.7", True),
        (["10.0.0.0/8"], None, "11.0.0.1", False),
        # deny only: everyone else passes
        (None, ["10.0.0.0/8"], "10.0.0.1", False),
        (None, ["10.0.0.0/8"], "192.0.2.1", True),
        # both: deny is checked first (an address in both is refused) ...
        (["10.0.0.0/8"], ["10.0.0.5"], "10.0.0.5", False),
        (["10.0.0.0/8"], ["10.0.0.5"], "10.0.0.6", True),
        # ... and outside allow is refused even if not denied
        (["10.0.0.0/8"], ["192.0.2.0/24"], "172.16.0.1", False),
        # IPv6
        (["2001:db8::/32"], None, "2001:db8:1::1", True),
        (["2001:db8::/32"], None, "2001:db9::1", False),
        (None, ["::1"], "::1", False),
        # an IPv4 rule never matches an IPv6 client, nor the reverse
        (["0.0.0.0/0"], None, "::1", False),
        (["::/0"], None, "127.0.0.1", False),
        # IPv4-mapped clients and rules meet their IPv4 counterparts
        (["127.0.0.0/8"], None, "::ffff:127.0.0.1", True),
        (None, ["127.0.0.1"], "::ffff:127.0.0.1", False),
        (["::ffff:127.0.0.1"], None, "127.0.0.1", True),
        (None, ["::ffff:10.0.0.0/104"], "10.20.30.40", False),
    ],
)
def test_kong_precedence(
    allow: list[str] | None, deny: list[str] | None, client: str, allowed: bool
) -> None:
    conf = Config(allow=allow, deny=deny)
    addr = client_address(client)
    assert addr is not None
    assert conf.allows(addr) is allowed


# ------------------------------------------------------------------- config


def _config(block: str, consumers: str = "") -> str:
    return route_config({"ip-restriction": block}, tail=consumers)


@pytest.mark.parametrize(
    ("block", "says"),
    [
        ('{allow: ["10.0.0.0/8", "10.0.0.300"]}', "config.allow[1]: '10.0.0.300' is not an IP"),
        ('{deny: ["nope"]}', "config.deny[0]: 'nope' is not an IP address or CIDR range"),
        ("{}", "needs at least one entry in allow or deny"),
        ("{allow: [], deny: []}", "needs at least one entry in allow or deny"),
        ('{deny: ["1.2.3.4"], status: 99}', "config.status"),
        ('{deny: ["1.2.3.4"], status: 600}', "config.status"),
        ('{deny: ["1.2.3.4"], whitelist: ["1.2.3.4"]}', "unknown field 'whitelist'"),
    ],
)
def test_bad_configs_are_load_errors(block: str, says: str) -> None:
    assert says in load_error(_config(block))


def test_kong_fields_load() -> None:
    config = load_text(_config('{allow: ["10.0.0.0/8", "::1"], status: 401, message: "no"}'))
    conf = config.routes[0].plugin("ip-restriction")
    assert (conf.status, conf.message) == (401, "no")
    assert ip_restriction.PRIORITY == 990 and ip_restriction.CONSUMER_SCOPE


# -------------------------------------------------------------------- addon


def _flow(gw: Gateway, peer: str | None) -> HTTPFlow:
    return routed_request(gw, peer=peer)


def _gw(block: str, consumers: str = "") -> Gateway:
    return gateway_for(_config(block, consumers))


def test_refused_client_gets_kongs_message_in_openai_shape() -> None:
    gw = _gw('{allow: ["10.0.0.0/8"]}')
    f = _flow(gw, "192.0.2.7")
    ip_restriction.Policy(gw).requestheaders(f)
    assert f.response is not None and f.response.status_code == 403
    assert error_of(f) == {
        "message": "IP address not allowed: 192.0.2.7",
        "type": "permission_error",
        "param": None,
        "code": "ip_not_allowed",
    }
    call = gw.calls.get(f)
    assert call.error is not None and call.error_source == "gateway"


def test_allowed_client_passes() -> None:
    gw = _gw('{allow: ["10.0.0.0/8"]}')
    f = _flow(gw, "10.1.1.1")
    ip_restriction.Policy(gw).requestheaders(f)
    assert f.response is None


def test_status_and_message_overrides() -> None:
    gw = _gw('{deny: ["10.0.0.0/8"], status: 451, message: "Unavailable here"}')
    f = _flow(gw, "::ffff:10.0.0.1")
    ip_restriction.Policy(gw).requestheaders(f)
    assert f.response.status_code == 451
    assert error_of(f)["message"] == "Unavailable here"


def test_client_without_an_ip_is_refused() -> None:
    gw = _gw('{deny: ["10.0.0.0/8"]}')
    f = _flow(gw, None)
    ip_restriction.Policy(gw).requestheaders(f)
    assert f.response.status_code == 403
    assert "Cannot identify the client IP address" in error_of(f)["message"]


CONSUMER_RULE = """
consumers:
  - username: alice
    keyauth_credentials: [{key: alice-key}]
    plugins:
      - name: ip-restriction
        config: {deny: ["192.0.2.0/24"]}
"""


def test_consumer_known_only_after_the_body_gets_its_own_rules() -> None:
    # the route lets 192.0.2.7 in; alice's own ip-restriction does not
    gw = _gw('{deny: ["10.0.0.0/8"]}', CONSUMER_RULE)
    f = _flow(gw, "192.0.2.7")
    policy = ip_restriction.Policy(gw)
    policy.requestheaders(f)
    assert f.response is None
    call = gw.calls.get(f)
    call.set_consumer(gw.config.consumer("alice"), None)  # key-auth, key read from the body
    policy.request(f)
    assert f.response is not None and f.response.status_code == 403


def test_same_config_is_not_checked_twice() -> None:
    gw = _gw('{allow: ["10.0.0.0/8"]}')
    f = _flow(gw, "10.0.0.1")
    policy = ip_restriction.Policy(gw)
    policy.requestheaders(f)
    gw.calls.get(f).client_ip = "192.0.2.1"  # (would be refused if checked again)
    policy.request(f)
    assert f.response is None


def _config_with_key_in_body(route_rule: str) -> str:
    return route_config(
        {"key-auth": "{key_in_body: true}", "ip-restriction": route_rule},
        tail="""
consumers:
  - username: alice
    keyauth_credentials: [{key: alice-key}]
    plugins:
      - name: ip-restriction
        config: {allow: ["192.0.2.0/24"]}
""",
    )


@pytest.mark.parametrize(("consumer", "refused"), [("alice", False), (None, True)])
def test_decision_waits_when_key_auth_reads_the_key_from_the_body(
    consumer: str | None, refused: bool
) -> None:
    # the route refuses 192.0.2.7, alice's own rule lets it in; key-auth can only tell
    # who it is once the body is read
    gw = gateway_for(_config_with_key_in_body('{deny: ["192.0.2.0/24"]}'))
    f = _flow(gw, "192.0.2.7")
    policy = ip_restriction.Policy(gw)
    policy.requestheaders(f)
    assert f.response is None  # not decided yet
    if consumer:
        gw.calls.get(f).set_consumer(gw.config.consumer(consumer), None)  # key-auth's request hook
    policy.request(f)
    assert (f.response is not None) is refused
