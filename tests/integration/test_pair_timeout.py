"""Pair-request timers (docs/protocol/signaling.md, "Timers"): a warning to both sides at 90 s, a
timeout to the requester at 120 s, driven by jumps of the mock clock the in-process server
shares."""

from __future__ import annotations

import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._signal import assert_quiet, expect, pair, registered

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

A, B, C = "AAAAAA", "BBBBBB", "CCCCCC"
NO_REQUEST = {"type": "pair_error", "error": "No pending request from this peer"}


async def test_a_pair_request_warns_at_90_seconds_and_times_out_at_120(server, clock):
    with trio.fail_after(200):
        async with registered(server.url, A, B) as (a, b):
            await a.pair_request(B)
            await b.expect("pair_incoming")

            clock.jump(85)
            await assert_quiet(a, b)
            clock.jump(5)
            await expect(a, {"type": "pair_expiring", "peerCode": B, "remainingSeconds": 30})
            await expect(b, {"type": "pair_expiring", "peerCode": A, "remainingSeconds": 30})

            clock.jump(25)
            await assert_quiet(a, b)
            clock.jump(5)
            await expect(a, {"type": "pair_timeout", "peerCode": B})
            await assert_quiet(b)

            await b.pair_response(A, True)
            await expect(b, NO_REQUEST)
            await assert_quiet(a)


async def test_a_repeated_request_restarts_the_timer(server, clock):
    with trio.fail_after(300):
        async with registered(server.url, A, B) as (a, b):
            await a.pair_request(B)
            await b.expect("pair_incoming")
            clock.jump(60)
            await a.pair_request(B)
            await b.expect("pair_incoming")

            clock.jump(60)  # 120 s after the first request, 60 s after the second
            await assert_quiet(a, b)
            clock.jump(30)
            await expect(a, {"type": "pair_expiring", "peerCode": B, "remainingSeconds": 30})
            await expect(b, {"type": "pair_expiring", "peerCode": A, "remainingSeconds": 30})
            clock.jump(30)
            await expect(a, {"type": "pair_timeout", "peerCode": B})
            await assert_quiet(a, b)


async def test_an_answer_before_the_timeout_stops_the_timers(server, clock):
    with trio.fail_after(200):
        async with registered(server.url, A, B) as (a, b):
            await pair(a, b)
            clock.jump(121)
            await assert_quiet(a, b)


async def test_a_pending_request_ends_when_its_target_disconnects(server, clock):
    with trio.fail_after(200):
        async with registered(server.url, A, C) as (a, c):
            async with registered(server.url, B) as (b,):
                await pair(b, c)
                await a.pair_request(B)
                await b.expect("pair_incoming")
            # B's partner hears of the disconnect once the server has cleaned up after it.
            await expect(c, {"type": "peer_left", "pairingCode": B})
            clock.jump(121)
            await assert_quiet(a, c)


async def test_a_pending_request_ends_when_its_requester_disconnects(server, clock):
    with trio.fail_after(200):
        async with registered(server.url, B, C) as (b, c):
            async with registered(server.url, A) as (a,):
                await pair(a, c)
                await a.pair_request(B)
                await b.expect("pair_incoming")
            await expect(c, {"type": "peer_left", "pairingCode": A})
            await b.pair_response(A, True)
            await expect(b, NO_REQUEST)
            clock.jump(121)
            await assert_quiet(b, c)
