"""``/signal`` against hostile clients, over real sockets (docs/protocol/signaling.md):

- the reconnect grace cannot be taken over with the public key alone (every ``pair_incoming``
  carries it): a reconnect needs the ``reconnectToken`` of ``registered``, or, for older clients
  that send none, the same client IP;
- ``pair_request`` is limited per client IP as well as per connection, so opening new
  connections does not buy new probes of which codes are live.

The server trusts 127.0.0.1 as its proxy, and each client names its own address in
``X-Forwarded-For``: that is how one test plays clients on several IPs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket

from tests.conftest import ALL_DEPLOYMENTS, RunningServer, deployments, make_config, start_server
from tests.integration._signal import assert_quiet, error, expect, pair
from zajel.client import SignalClient, connect_signal, generate_public_key

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

A, B, M, T = "AAAAAA", "BBBBBB", "MMMMMM", "TTTTTT"
PHONE_WIFI, PHONE_MOBILE, PARTNER, ATTACKER, OTHER = (
    "198.51.100.7",
    "198.51.100.200",
    "192.0.2.10",
    "203.0.113.66",
    "203.0.113.99",
)
IN_USE = error("pairing_code_in_use", "Pairing code already in use")
TOO_MANY = error("rate_limited", "Too many pair requests")
UNPROCESSABLE = {"type": "pair_error", "error": "Pair request could not be processed"}
# Codes nobody holds, for probing (distinct, so no request is a repeat).
UNKNOWN = [f"Z{index:05d}".translate(str.maketrans("01", "YX")) for index in range(40)]


@pytest.fixture
async def proxied(nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    """The real app behind a trusted proxy at 127.0.0.1 that passes X-Forwarded-For."""
    config = make_config(
        ws_idle_timeout=86_400.0,
        trust_proxy="X-Forwarded-For",
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    running = await start_server(nursery, config)
    yield running
    running.stop.set()


@asynccontextmanager
async def connect_from(server: RunningServer, ip: str) -> AsyncIterator[SignalClient]:
    """A ``/signal`` connection the server takes to come from ``ip``."""
    headers = [(b"X-Forwarded-For", ip.encode("ascii"))]
    async with trio_websocket.open_websocket_url(
        server.ws_url + "/signal", extra_headers=headers
    ) as ws:
        yield SignalClient(ws)


# -- reconnect grace ----------------------------------------------------------------------------


async def test_the_grace_cannot_be_taken_over_with_the_public_key_alone(proxied):
    key_a = generate_public_key()
    with trio.fail_after(20):
        async with (
            connect_from(proxied, PARTNER) as b,
            connect_from(proxied, ATTACKER) as mallory,
        ):
            await b.register(B, generate_public_key())
            await mallory.register(M, generate_public_key())
            async with connect_from(proxied, PHONE_WIFI) as a:
                token = (await a.register(A, key_a))["reconnectToken"]
                await pair(a, b)
                # The device once asked the attacker to pair: that hands over its public key.
                await a.pair_request(M)
                assert (await mallory.expect("pair_incoming"))["fromPublicKey"] == key_a
            await expect(b, {"type": "peer_left", "pairingCode": A})

            # During the grace, from its own address: the key without a token, the key with a
            # made-up token, and the key with a token of its own (of another code).
            own_token = mallory.reconnect_token
            async with connect_from(proxied, ATTACKER) as thief:
                for extra in ({}, {"reconnectToken": "x" * 43}, {"reconnectToken": own_token}):
                    await thief.send(
                        {"type": "register", "pairingCode": A, "publicKey": key_a, **extra}
                    )
                    await expect(thief, IN_USE)
                await thief.send({"type": "offer", "target": B, "payload": {"sdp": "evil"}})
                await expect(thief, error("not_registered", "Not registered: send register first"))
            await mallory.signal("offer", B, {"sdp": "evil"})
            await expect(mallory, error("peer_not_found", f"Peer not found: {B}"))
            # The partner heard nothing: no peer_joined, no offer.
            await assert_quiet(b)

            # The device itself, on another network, comes back with its token.
            async with connect_from(proxied, PHONE_MOBILE) as again:
                reply = await again.register(A, key_a, reconnect_token=token)
                assert reply["pairingCode"] == A
                await expect(b, {"type": "peer_joined", "pairingCode": A})
                await again.signal("offer", B, {"sdp": "genuine"})
                await expect(b, {"type": "offer", "from": A, "payload": {"sdp": "genuine"}})
                await b.signal("answer", A, {"sdp": "welcome back"})
                await expect(
                    again, {"type": "answer", "from": B, "payload": {"sdp": "welcome back"}}
                )
                await assert_quiet(again, b)


async def test_an_older_client_without_a_token_reconnects_from_the_same_ip_only(proxied, clock):
    key_a = generate_public_key()
    with trio.fail_after(60):  # 29 s of it are a clock jump
        async with connect_from(proxied, PARTNER) as b:
            await b.register(B, generate_public_key())
            async with connect_from(proxied, PHONE_WIFI) as a:
                await a.register(A, key_a)
                await pair(a, b)
            await expect(b, {"type": "peer_left", "pairingCode": A})

            # The same key from another address, without the token: refused.
            async with connect_from(proxied, PHONE_MOBILE) as elsewhere:
                await elsewhere.send({"type": "register", "pairingCode": A, "publicKey": key_a})
                await expect(elsewhere, IN_USE)
            await assert_quiet(b)

            # From the address it left from, an older client (no token) is still let back in.
            clock.jump(29)
            async with connect_from(proxied, PHONE_WIFI) as again:
                await again.send({"type": "register", "pairingCode": A, "publicKey": key_a})
                assert (await again.expect("registered"))["pairingCode"] == A
                await expect(b, {"type": "peer_joined", "pairingCode": A})
                await again.signal("offer", B, {"sdp": "old client"})
                await expect(b, {"type": "offer", "from": A, "payload": {"sdp": "old client"}})


async def test_the_reconnect_token_is_kept_by_the_client_and_restores_from_anywhere(proxied):
    key_a = generate_public_key()
    with trio.fail_after(20):
        async with connect_from(proxied, PARTNER) as b:
            await b.register(B, generate_public_key())
            async with connect_from(proxied, PHONE_WIFI) as a:
                reply = await a.register(A, key_a)
                assert reply.keys() == {"type", "pairingCode", "reconnectToken"}
                assert a.reconnect_token == reply["reconnectToken"]
                await pair(a, b)
            await expect(b, {"type": "peer_left", "pairingCode": A})
            async with connect_from(proxied, PHONE_MOBILE) as again:
                await again.register(A, key_a, reconnect_token=a.reconnect_token)
                await expect(b, {"type": "peer_joined", "pairingCode": A})
            await expect(b, {"type": "peer_left", "pairingCode": A})
            # Twice: the token is the code's for as long as the code is held or reserved.
            async with connect_from(proxied, OTHER) as third:
                await third.register(A, key_a, reconnect_token=again.reconnect_token)
                assert third.reconnect_token == a.reconnect_token
                await expect(b, {"type": "peer_joined", "pairingCode": A})


# -- pair_request per client IP -------------------------------------------------------------------


async def test_pair_requests_are_limited_per_ip_across_new_connections(proxied, clock):
    with trio.fail_after(100):  # 61 s of it are a clock jump
        async with connect_from(proxied, PARTNER) as target:
            await target.register(T, generate_public_key())
            probes = iter(UNKNOWN)
            # Three connections in turn, each within its own limit of 10 a minute: 30 probes.
            for letter in "ABC":
                async with connect_from(proxied, ATTACKER) as prober:
                    await prober.register(f"P{letter}2222")
                    for _ in range(10):
                        await prober.pair_request(next(probes))
                        await expect(prober, UNPROCESSABLE)
            # A fresh connection from the same address gets nothing more: an unknown code and
            # a live one are refused alike, and the live one is never asked.
            async with connect_from(proxied, ATTACKER) as prober:
                await prober.register("PD2222")
                await prober.pair_request(next(probes))
                await expect(prober, TOO_MANY)
                await prober.pair_request(T)
                await expect(prober, TOO_MANY)
            await assert_quiet(target)

            # Another address is not affected.
            async with connect_from(proxied, OTHER) as neighbour:
                await neighbour.register("N22222")
                await neighbour.pair_request(T)
                assert (await target.expect("pair_incoming"))["fromCode"] == "N22222"

            # A minute later the first address may ask again.
            clock.jump(61)
            async with connect_from(proxied, ATTACKER) as prober:
                await prober.register("PE2222")
                await prober.pair_request(T)
                assert (await target.expect("pair_incoming"))["fromCode"] == "PE2222"


async def test_the_per_ip_limit_counts_requests_of_open_connections_together(proxied):
    with trio.fail_after(20):
        async with connect_from(proxied, PARTNER) as target:
            await target.register(T, generate_public_key())
            async with (
                connect_from(proxied, ATTACKER) as first,
                connect_from(proxied, ATTACKER) as second,
                connect_from(proxied, ATTACKER) as third,
                connect_from(proxied, ATTACKER) as fourth,
            ):
                probers = [first, second, third, fourth]
                for letter, prober in zip("ABCD", probers, strict=True):
                    await prober.register(f"Q{letter}2222")
                for round_ in range(10):  # interleaved: 30 allowed, whoever sends them
                    for prober in probers[:3]:
                        await prober.pair_request(UNKNOWN[round_])
                        await expect(prober, UNPROCESSABLE)
                await fourth.pair_request(UNKNOWN[10])
                await expect(fourth, TOO_MANY)
                await fourth.pair_request(T)
                await expect(fourth, TOO_MANY)
                await assert_quiet(target)


async def test_a_malformed_reconnect_token_is_invalid_field_and_null_is_absent(server):
    invalid = error(
        "invalid_field", "Invalid reconnectToken: expected a string of 1 to 128 characters"
    )
    key = generate_public_key()
    with trio.fail_after(10):
        async with connect_signal(server.url) as client:
            for bad in (12, "", "t" * 129, ["t"], {"t": 1}, True):
                await client.send(
                    {"type": "register", "pairingCode": A, "publicKey": key, "reconnectToken": bad}
                )
                await expect(client, invalid)
            await client.send(
                {"type": "register", "pairingCode": A, "publicKey": key, "reconnectToken": None}
            )
            assert (await client.expect("registered"))["pairingCode"] == A
