"""request-size-limiting: sizes and units, the decisions on the headers, the body counted
as it streams in (HeldBody and the gate's hand-over), and the check once the body is in.

The gate's answers through a real mitmproxy are in tests/e2e/test_network_policies.py."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.http import HTTPFlow

from addons.policies import request_size_limiting as rsl
from addons.policies.request_size_limiting import (
    Config,
    HeldBody,
    content_length,
    is_chunked,
    refusal_status,
)
from addons.state import Gateway
from tests.policy_helpers import (
    dashed,
    error_of,
    gateway_for,
    load_error,
    route_config,
    routed_request,
)

# ------------------------------------------------------------ sizes and units


@pytest.mark.parametrize(
    ("size", "unit", "limit"),
    [
        (128, "megabytes", 128 * 1024 * 1024),  # Kong's default
        (1, "megabytes", 1_048_576),
        (2, "kilobytes", 2048),
        (10, "bytes", 10),
        (0, "bytes", 0),
    ],
)
def test_limits_in_bytes(size: int, unit: str, limit: int) -> None:
    assert Config(allowed_payload_size=size, size_unit=unit).limit == limit


def test_defaults() -> None:
    conf = Config()
    assert (conf.allowed_payload_size, conf.size_unit, conf.require_content_length) == (
        128,
        "megabytes",
        False,
    )
    assert rsl.PRIORITY == 951 and rsl.CONSUMER_SCOPE


@pytest.mark.parametrize(
    ("headers", "length"),
    [
        ({"content-length": "10"}, 10),
        ({"content-length": " 0 "}, 0),
        ({"content-length": "abc"}, None),
        ({"content-length": "-1"}, None),
        ({"content-length": "1e3"}, None),
        ({"content-length": "١٢"}, None),  # non-ASCII digits are not a length
        ({}, None),
    ],
)
def test_content_length(headers: dict[str, str], length: int | None) -> None:
    assert content_length(http.Headers(**headers)) == length


@pytest.mark.parametrize(
    ("headers", "chunked", "status"),
    [
        ({"transfer-encoding": "chunked"}, True, 413),
        ({"transfer-encoding": "gzip, Chunked"}, True, 413),
        ({}, False, 413),
        ({"expect": "100-continue"}, False, 417),
        ({"expect": " 100-Continue "}, False, 417),
    ],
)
def test_header_readings(headers: dict[str, str], chunked: bool, status: int) -> None:
    h = http.Headers(**headers)
    assert is_chunked(h) is chunked
    assert refusal_status(h) == status


def _config(block: str, consumers: str = "") -> str:
    return route_config({"request-size-limiting": block}, tail=consumers)


@pytest.mark.parametrize(
    ("block", "says"),
    [
        ("{allowed_payload_size: -1}", "config.allowed_payload_size"),
        ("{allowed_payload_size: 1.5}", "config.allowed_payload_size"),
        (
            "{size_unit: gigabytes}",
            "config.size_unit: expected 'megabytes', 'kilobytes' or 'bytes'",
        ),
        ("{require_content_length: maybe}", "config.require_content_length"),
        ("{allowed_payload: 3}", "unknown field 'allowed_payload'"),
    ],
)
def test_bad_configs_are_load_errors(block: str, says: str) -> None:
    assert says in load_error(_config(block))


# --------------------------------------------------------------------- addon


def _gw(block: str, consumers: str = "") -> Gateway:
    return gateway_for(_config(block, consumers))


def _flow(gw: Gateway, **headers: str) -> HTTPFlow:
    """A POST whose body is not read yet."""
    return routed_request(gw, "POST", headers=dashed(**headers))


@pytest.fixture
async def policy_gw():
    made: list[rsl.Policy] = []

    def make(block: str, consumers: str = "") -> tuple[rsl.Policy, Gateway]:
        gw = _gw(block, consumers)
        p = rsl.Policy(gw)
        made.append(p)
        return p, gw

    yield make
    for p in made:
        p.done()


async def test_content_length_over_the_limit_is_refused_on_the_headers(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, content_length="11")
    await policy.requestheaders(f)
    assert f.response is not None and f.response.status_code == 413
    assert error_of(f) == {
        "message": "Request size limit exceeded",
        "type": "request_too_large",
        "param": None,
        "code": "request_too_large",
    }
    assert gw.calls.get(f).error_source == "gateway"
    # the gate takes the answer over, so that it goes out before the body is read
    held = f.request.stream
    assert isinstance(held, HeldBody) and held.refusal is f.response


async def test_expect_100_continue_gets_417_and_no_continue(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, content_length="11", expect="100-continue")
    await policy.requestheaders(f)
    assert f.response.status_code == 417
    assert "expect" not in f.request.headers  # mitmproxy sends no "100 Continue"


@pytest.mark.parametrize("length", ["10", "0"])
async def test_content_length_within_the_limit_passes(policy_gw, length: str) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, content_length=length)
    await policy.requestheaders(f)
    assert f.response is None and not isinstance(f.request.stream, HeldBody)


async def test_require_content_length(policy_gw) -> None:
    policy, gw = policy_gw("{require_content_length: true}")
    f = _flow(gw)
    await policy.requestheaders(f)
    assert f.response.status_code == 411
    assert error_of(f)["message"] == "A valid Content-Length header is required"
    # a chunked body is fine (Kong), and counted as it comes
    f = _flow(gw, transfer_encoding="chunked")
    await policy.requestheaders(f)
    assert f.response is None and isinstance(f.request.stream, HeldBody)


async def test_chunked_body_is_held_and_counted(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, transfer_encoding="chunked", x_client="1")
    client = f.request
    await policy.requestheaders(f)
    held = f.request.stream
    assert isinstance(held, HeldBody)

    # mitmproxy reads the stream attribute after the requestheaders hooks: the flow
    # now points at the gate, and the client's request waits aside
    assert bool(held) is True
    stand_in = f.request
    assert stand_in is not client
    assert (stand_in.host, stand_in.port) == ("127.0.0.1", policy.gate.port)
    assert stand_in.headers["transfer-encoding"] == "chunked"
    assert bool(held) is True  # decided once

    assert held(b"hello ") == []  # nothing goes on to the gate
    assert held(b"you") == []
    assert held(b"") == []  # the end: the client's request is back, with its body
    assert f.request is client
    assert client.raw_content == b"hello you"
    assert client.headers["x-client"] == "1"
    assert f.response is None


async def test_chunked_body_over_the_limit_is_refused_as_it_crosses_it(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, transfer_encoding="chunked")
    client = f.request
    await policy.requestheaders(f)
    held = f.request.stream
    assert bool(held)
    assert held(b"0123456789") == []
    assert held.refusal is None and not held.refused.is_set()
    assert held(b"X") == []
    assert held.refused.is_set()  # the gate answers now
    assert held.refusal.status_code == 413
    assert held.chunks == []  # nothing more is kept
    assert held(b"more and more") == []
    held(b"")
    assert f.request is client and client.raw_content is None
    assert f.response is held.refusal  # the request hooks skip the flow
    assert gw.calls.get(f).error.status == 413


async def test_refusal_on_the_headers_is_handed_to_the_gate(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, content_length="100")
    await policy.requestheaders(f)
    refusal = f.response
    held = f.request.stream
    assert bool(held) is True  # mitmproxy may now stream: no response set
    assert f.response is None and held.refusal is refusal
    assert held(b"x" * 100) == []
    held(b"")
    assert f.response is refusal


async def test_an_answer_set_by_a_later_plugin_keeps_the_flow_off_the_gate(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, transfer_encoding="chunked")
    client = f.request
    await policy.requestheaders(f)
    f.response = http.Response.make(429, b"slow down")  # e.g. a limit decided on headers
    assert bool(f.request.stream) is False  # mitmproxy buffers the body and sends the 429
    assert f.request is client and f.response.status_code == 429


async def test_gate_closed_leaves_the_refusal_an_ordinary_answer(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, content_length="100")
    await policy.requestheaders(f)
    refusal = f.response
    policy.done()
    assert bool(f.request.stream) is False
    assert f.response is refusal


async def test_responseheaders_gives_the_client_request_back(policy_gw) -> None:
    # a refusal answered while the body still streams in: the record must show the
    # client's request, not the stand-in
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw, transfer_encoding="chunked")
    client = f.request
    await policy.requestheaders(f)
    held = f.request.stream
    assert bool(held)
    held(b"x" * 11)
    f.response = http.Response.make(413, b"{}")  # the gate's answer, read back
    policy.responseheaders(f)
    assert f.request is client
    assert f.request.stream is held  # the rest of the body still goes to it
    assert held(b"rest") == []


def test_body_checked_once_complete() -> None:
    # bodies nobody could count on the way (HTTP/2 without Content-Length)
    gw = _gw("{allowed_payload_size: 10, size_unit: bytes}")
    f = _flow(gw)
    f.request.raw_content = b"x" * 11
    rsl.Policy(gw).request(f)
    assert f.response is not None and f.response.status_code == 413


CONSUMER_LIMIT = """
consumers:
  - username: alice
    plugins:
      - name: request-size-limiting
        config: {allowed_payload_size: 5, size_unit: bytes}
"""


async def test_consumer_known_after_the_body_gets_its_own_limit(policy_gw) -> None:
    policy, gw = policy_gw("{allowed_payload_size: 10, size_unit: bytes}", CONSUMER_LIMIT)
    f = _flow(gw, content_length="8")
    await policy.requestheaders(f)
    assert f.response is None
    f.request.raw_content = b"12345678"
    gw.calls.get(f).set_consumer(gw.config.consumer("alice"), None)  # key-auth, key in the body
    policy.request(f)
    assert f.response is not None and f.response.status_code == 413


KEY_IN_BODY = route_config(
    {
        "key-auth": "{key_in_body: true}",
        "request-size-limiting": "{allowed_payload_size: 10, size_unit: bytes}",
    },
    tail="""
consumers:
  - username: alice
    keyauth_credentials: [{key: alice-key}]
    plugins:
      - name: request-size-limiting
        config: {allowed_payload_size: 100, size_unit: bytes}
  - username: bob
    keyauth_credentials: [{key: bob-key}]
""",
)


@pytest.mark.parametrize(
    ("length", "consumer", "status"),
    [
        ("50", "alice", None),  # over the route's limit, within alice's own
        ("50", "bob", 413),  # bob has none of his own: the route's applies
        ("101", "alice", 413),  # over every limit: refused on the headers already
    ],
)
async def test_limit_waits_for_a_consumer_named_from_the_body(
    length: str, consumer: str, status: int | None
) -> None:
    gw = gateway_for(KEY_IN_BODY)
    policy = rsl.Policy(gw)
    try:
        f = _flow(gw, content_length=length)
        await policy.requestheaders(f)
        if f.response is None:
            f.request.raw_content = b"x" * int(length)
            gw.calls.get(f).set_consumer(gw.config.consumer(consumer), None)  # key-auth
            policy.request(f)
        assert (f.response.status_code if f.response else None) == status
    finally:
        policy.done()
