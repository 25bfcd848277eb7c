"""Kong's ip-restriction: let a client in, or not, by its IP address.

`allow` and `deny` hold IPv4 and IPv6 addresses and CIDR ranges, checked when the config
loads. Kong's precedence: a client in `deny` is refused; then, when `allow` is set, a
client not in it is refused too (so an address in both lists is refused). The client is
the address that connected to the gateway (`call.client_ip`); an IPv4 client seen
through an IPv6 socket (`::ffff:1.2.3.4`) matches the IPv4 rules, and an IPv4-mapped
rule matches the IPv4 client.

The decision is made in `requestheaders`, before the body is read. A consumer can have
its own ip-restriction, which replaces the route's once key-auth names the consumer:
when key-auth can only do so from the body (`key_in_body`), the decision waits for the
`request` hook, where key-auth (higher priority) has run; and whenever the config in
force changed since the decision, the plugin decides again.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, PrivateAttr, model_validator

from addons.policies.base import PolicyAddon, consumer_pending, deny
from providers.options import Strict

if TYPE_CHECKING:
    from mitmproxy import http

    from addons.calls import Call

NAME = "ip-restriction"
PRIORITY = 990
CONSUMER_SCOPE = True

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# where the flow records which config was applied (an id: metadata must stay plain data)
_APPLIED = "llmitm.ip-restriction"

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_network(entry: str) -> Network:
    """An IP address or CIDR range (`10.0.0.0/8`, `2001:db8::/32`, `::ffff:10.0.0.1`).

    Host bits after the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`), and an
    IPv4-mapped IPv6 range is its IPv4 range. Raises ValueError naming the entry.
    """
    text = entry.strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_IPV4_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return net


def client_address(ip: str) -> Address | None:
    """The client's address, IPv4-mapped IPv6 unwrapped; None when it is not an IP
    (a Unix socket, or no peer address at all)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _check_entry(entry: str) -> str:
    parse_network(entry)
    return entry


IpOrCidr = Annotated[str, AfterValidator(_check_entry)]


def _contains(networks: tuple[Network, ...], addr: Address) -> bool:
    return any(addr in net for net in networks if net.version == addr.version)


class Config(Strict):
    """Kong's ip-restriction config."""

    allow: list[IpOrCidr] | None = Field(
        None,
        description="IPs or CIDR ranges (IPv4 or IPv6) allowed; everyone else is refused. "
        "One of allow or deny must be set.",
    )
    deny: list[IpOrCidr] | None = Field(
        None,
        description="IPs or CIDR ranges (IPv4 or IPv6) refused; checked before allow. "
        "One of allow or deny must be set.",
    )
    status: int | None = Field(
        None,
        ge=100,
        le=599,
        description="HTTP status of a refused request (default 403).",
    )
    message: str | None = Field(
        None,
        description="Message of a refused request (default 'IP address not allowed: <client ip>').",
    )

    _allow: tuple[Network, ...] = PrivateAttr(default=())
    _deny: tuple[Network, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _one_list(self) -> Config:
        if not self.allow and not self.deny:
            raise ValueError("ip-restriction needs at least one entry in allow or deny")
        return self

    def model_post_init(self, context: object) -> None:
        self._allow = tuple(parse_network(e) for e in self.allow or ())
        self._deny = tuple(parse_network(e) for e in self.deny or ())

    def allows(self, addr: Address) -> bool:
        """Kong's rule: deny first, then allow (when set)."""
        if self._deny and _contains(self._deny, addr):
            return False
        return not self._allow or _contains(self._allow, addr)


class Policy(PolicyAddon):
    """Refuses clients by IP address (Kong's ip-restriction)."""

    name = "llmitm-ip-restriction"
    plugin = NAME

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call, conf = self.active(flow)
        if call is not None and not consumer_pending(call):
            self._check(flow, call, conf)

    def request(self, flow: http.HTTPFlow) -> None:
        # Decided already, unless the decision waited for key-auth to read the body, or
        # key-auth named a consumer with a config of its own since.
        call, conf = self.active(flow)
        if call is not None and flow.metadata.get(_APPLIED) != id(conf):
            self._check(flow, call, conf)

    def _check(self, flow: http.HTTPFlow, call: Call, conf: Config) -> None:
        flow.metadata[_APPLIED] = id(conf)
        addr = client_address(call.client_ip)
        if addr is None:
            deny(
                flow,
                call,
                403,
                "Cannot identify the client IP address, unix domain sockets are not supported.",
                code="ip_not_allowed",
            )
            return
        if not conf.allows(addr):
            message = (
                conf.message if conf.message is not None else f"IP address not allowed: {addr}"
            )
            deny(flow, call, conf.status or 403, message, code="ip_not_allowed")
