"""WebSocket ``/signal`` end to end (docs/protocol/signaling.md): registration, consent pairing,
WebRTC and call relay, disconnects and the reconnect grace, against the real app under hypercorn."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._signal import assert_quiet, error, expect, pair, registered
from zajel.client import connect_signal, generate_public_key

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

A, B, C, D = "AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD"
UNPROCESSABLE = {"type": "pair_error", "error": "Pair request could not be processed"}
NO_REQUEST = {"type": "pair_error", "error": "No pending request from this peer"}
CALL_PAYLOADS = {
    "call_offer": {"callId": "c-1", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n", "withVideo": True},
    "call_answer": {"callId": "c-1", "sdp": "v=0\r\no=- 3 4 IN IP4 0.0.0.0\r\n"},
    "call_ice": {"callId": "c-1", "candidate": "candidate:1 1 udp 2122260223 10.0.0.2 9 typ host"},
    "call_reject": {"callId": "c-1", "reason": "busy"},
    "call_hangup": {"callId": "c-1"},
}


async def test_consent_pairing_then_webrtc_signals_flow_both_ways(server):
    key_a, key_b = generate_public_key(), generate_public_key()
    with trio.fail_after(10):
        async with connect_signal(server.url) as a, connect_signal(server.url) as b:
            reply_a, reply_b = await a.register(A, key_a), await b.register(B, key_b)
            # registered carries the code and the device's reconnect token (a secret of its own).
            assert reply_a.keys() == reply_b.keys() == {"type", "pairingCode", "reconnectToken"}
            assert (reply_a["pairingCode"], reply_b["pairingCode"]) == (A, B)
            assert reply_a["reconnectToken"] != reply_b["reconnectToken"]

            await a.pair_request(B, "Amira's phone")
            await expect(
                b,
                {
                    "type": "pair_incoming",
                    "fromCode": A,
                    "fromPublicKey": key_a,
                    "proposedName": "Amira's phone",
                    "expiresIn": 120_000,
                },
            )
            await b.pair_response(A, True)
            await expect(
                a,
                {
                    "type": "pair_matched",
                    "peerCode": B,
                    "peerPublicKey": key_b,
                    "isInitiator": True,
                },
            )
            await expect(
                b,
                {
                    "type": "pair_matched",
                    "peerCode": A,
                    "peerPublicKey": key_a,
                    "isInitiator": False,
                },
            )

            offer = {"type": "offer", "sdp": "v=0\r\n…", "nested": {"list": [1, 2.5, None, "ü"]}}
            answer = {"type": "answer", "sdp": "v=0\r\na=ice-ufrag:x\r\n"}
            candidate = {"candidate": "candidate:0 1 UDP 1 1.2.3.4 5 typ host", "sdpMLineIndex": 0}
            await a.signal("offer", B, offer)
            await expect(b, {"type": "offer", "from": A, "payload": offer})
            await b.signal("answer", A, answer)
            await expect(a, {"type": "answer", "from": B, "payload": answer})
            await a.signal("ice_candidate", B, candidate)
            await expect(b, {"type": "ice_candidate", "from": A, "payload": candidate})
            await b.signal("ice_candidate", A, candidate)
            await expect(a, {"type": "ice_candidate", "from": B, "payload": candidate})
            # The sender of a relayed signal gets nothing back.
            await assert_quiet(a, b)


async def test_pairing_without_keys_or_name_sends_null_keys_and_no_name(server):
    with trio.fail_after(10):
        async with connect_signal(server.url) as a, connect_signal(server.url) as b:
            await a.register(A)
            await b.register(B)
            await a.pair_request(B)
            await expect(
                b,
                {
                    "type": "pair_incoming",
                    "fromCode": A,
                    "fromPublicKey": None,
                    "expiresIn": 120_000,
                },
            )
            await b.pair_response(A, True)
            await expect(
                a,
                {"type": "pair_matched", "peerCode": B, "peerPublicKey": None, "isInitiator": True},
            )
            await expect(
                b,
                {
                    "type": "pair_matched",
                    "peerCode": A,
                    "peerPublicKey": None,
                    "isInitiator": False,
                },
            )


async def test_pair_accept_and_pair_reject_are_spellings_of_pair_response(server):
    with trio.fail_after(10):
        async with registered(server.url, A, B, C) as (a, b, c):
            await a.pair_request(B)
            await b.expect("pair_incoming")
            await b.send({"type": "pair_accept", "targetCode": A})
            assert (await a.expect("pair_matched"))["peerCode"] == B
            assert (await b.expect("pair_matched"))["peerCode"] == A

            await c.pair_request(B)
            await b.expect("pair_incoming")
            await b.send({"type": "pair_reject", "targetCode": C})
            await expect(c, {"type": "pair_rejected", "peerCode": B})
            await assert_quiet(a, b, c)

            # The accepted pair relays; the rejected one does not.
            await a.signal("offer", B, {"sdp": "x"})
            await expect(b, {"type": "offer", "from": A, "payload": {"sdp": "x"}})
            await c.signal("offer", B, {"sdp": "x"})
            await expect(c, error("peer_not_found", f"Peer not found: {B}"))


async def test_a_rejected_request_is_gone_and_matches_nothing(server):
    with trio.fail_after(10):
        async with registered(server.url, A, B) as (a, b):
            await a.pair_request(B)
            await b.expect("pair_incoming")
            await b.pair_response(A, False)
            await expect(a, {"type": "pair_rejected", "peerCode": B})
            await assert_quiet(b)
            await b.pair_response(A, True)
            await expect(b, NO_REQUEST)
            await a.signal("offer", B, {})
            await expect(a, error("peer_not_found", f"Peer not found: {B}"))


async def test_pair_response_without_a_pending_request_is_a_pair_error(server):
    with trio.fail_after(10):
        async with registered(server.url, A, B, C) as (a, b, c):
            await b.pair_response(A, True)
            await expect(b, NO_REQUEST)
            await b.send({"type": "pair_accept", "targetCode": "ZZZZZZ"})
            await expect(b, NO_REQUEST)
            # Only the target of a request may answer it, and only for its own requester.
            await a.pair_request(B)
            await b.expect("pair_incoming")
            await a.pair_response(B, True)
            await expect(a, NO_REQUEST)
            await c.pair_response(A, True)
            await expect(c, NO_REQUEST)
            await b.pair_response(C, True)
            await expect(b, NO_REQUEST)
            await assert_quiet(a, b, c)


async def test_self_unknown_and_full_targets_get_one_indistinguishable_pair_error(server):
    requesters = [f"{letter}22222" for letter in "EFGHJKLMNP"]
    with trio.fail_after(20):
        async with registered(server.url, A, B, *requesters) as (a, b, *others):
            await a.pair_request(A)
            await expect(a, UNPROCESSABLE)
            await a.pair_request("ZZZZZZ")
            await expect(a, UNPROCESSABLE)

            for other in others:
                await other.pair_request(B)
                assert (await b.expect("pair_incoming"))["fromCode"] == other.code
            await a.pair_request(B)  # the eleventh pending request for B
            await expect(a, UNPROCESSABLE)
            await assert_quiet(b)

            # Answering one frees a slot.
            await b.pair_response(requesters[0], False)
            await others[0].expect("pair_rejected")
            await a.pair_request(B)
            assert (await b.expect("pair_incoming"))["fromCode"] == A


async def test_more_than_ten_pair_requests_a_minute_are_rate_limited(server, clock):
    with trio.fail_after(100):
        async with registered(server.url, A, B) as (a, b):
            for _ in range(10):
                await a.pair_request(B)
                await b.expect("pair_incoming")
            await a.pair_request(B)
            frame = await a.receive()
            assert frame.keys() == {"type", "code", "message"}
            assert (frame["type"], frame["code"]) == ("error", "rate_limited")
            await assert_quiet(b)

            clock.jump(61)
            await a.pair_request(B)
            await b.expect("pair_incoming")


async def test_relay_to_a_registered_but_unmatched_code_is_peer_not_found(server):
    with trio.fail_after(10):
        async with registered(server.url, A, B) as (a, b):
            for kind in ("offer", "answer", "ice_candidate", "call_offer", "call_hangup"):
                await a.signal(kind, B, {"callId": "x"})
                await expect(a, error("peer_not_found", f"Peer not found: {B}"))
            await a.signal("offer", "ZZZZZZ", {})
            await expect(a, error("peer_not_found", "Peer not found: ZZZZZZ"))
            await assert_quiet(b)


async def test_a_live_code_cannot_be_registered_by_another_connection(server):
    with trio.fail_after(10):
        async with registered(server.url, A) as (a,), connect_signal(server.url) as thief:
            await thief.send({"type": "register", "pairingCode": A})
            await expect(thief, error("pairing_code_in_use", "Pairing code already in use"))
            await thief.send(
                {"type": "register", "pairingCode": A, "publicKey": generate_public_key()}
            )
            await expect(thief, error("pairing_code_in_use", "Pairing code already in use"))
            # The owner keeps it (re-registering is fine) and the refused one can take another.
            assert (await a.register(A))["pairingCode"] == A
            assert (await thief.register(B))["pairingCode"] == B


async def test_disconnect_sends_peer_left_to_matched_partners_only(server):
    with trio.fail_after(10):
        async with (
            registered(server.url, B, C) as (b, bystander),
            connect_signal(server.url) as unregistered,
        ):
            async with registered(server.url, A) as (a,):
                await pair(a, b)
            await expect(b, {"type": "peer_left", "pairingCode": A})
            # Had anyone else been told, it would be queued before these pongs.
            await assert_quiet(bystander, unregistered, b)


async def test_reconnect_within_the_grace_time_restores_the_match(server):
    key_a = generate_public_key()
    with trio.fail_after(10):
        async with registered(server.url, B) as (b,):
            async with connect_signal(server.url) as a:
                await a.register(A, key_a)
                await pair(a, b)
            await expect(b, {"type": "peer_left", "pairingCode": A})
            await b.signal("offer", A, {})
            await expect(b, error("peer_not_found", f"Peer not found: {A}"))

            async with connect_signal(server.url) as again:
                reply = await again.register(A, key_a, reconnect_token=a.reconnect_token)
                assert (reply["pairingCode"], reply["reconnectToken"]) == (A, a.reconnect_token)
                await expect(b, {"type": "peer_joined", "pairingCode": A})
                await again.signal("offer", B, {"sdp": "again"})
                await expect(b, {"type": "offer", "from": A, "payload": {"sdp": "again"}})
                await b.signal("answer", A, {"sdp": "welcome back"})
                await expect(
                    again, {"type": "answer", "from": B, "payload": {"sdp": "welcome back"}}
                )
                await assert_quiet(again, b)


async def test_the_grace_time_reserves_the_code_for_its_key_then_frees_it(server, clock):
    key_a = generate_public_key()
    in_use = error("pairing_code_in_use", "Pairing code already in use")
    with trio.fail_after(60):
        async with registered(server.url, B) as (b,), connect_signal(server.url) as other:
            async with connect_signal(server.url) as a:
                await a.register(A, key_a)
                await pair(a, b)
            await expect(b, {"type": "peer_left", "pairingCode": A})

            await other.send(
                {"type": "register", "pairingCode": A, "publicKey": generate_public_key()}
            )
            await expect(other, in_use)
            await other.send({"type": "register", "pairingCode": A})
            await expect(other, in_use)

            clock.jump(31)
            await assert_quiet(b)  # the grace timer has run
            assert (await other.register(A, generate_public_key()))["pairingCode"] == A
            # A newcomer on the code inherits nothing: no peer_joined, no match.
            await assert_quiet(b)
            await b.signal("offer", A, {})
            await expect(b, error("peer_not_found", f"Peer not found: {A}"))


async def test_registering_a_new_code_releases_the_old_one(server):
    with trio.fail_after(10):
        async with registered(server.url, A, B, D) as (a, b, d), connect_signal(server.url) as c:
            await pair(a, b)
            await a.pair_request(D)
            await d.expect("pair_incoming")

            assert (await a.register(C))["pairingCode"] == C
            await expect(b, {"type": "peer_left", "pairingCode": A})
            # The old code is free at once (no grace for a code given up) and its pending
            # request is gone.
            assert (await c.register(A))["pairingCode"] == A
            await d.pair_response(A, True)
            await expect(d, NO_REQUEST)
            await b.signal("offer", A, {})
            await expect(b, error("peer_not_found", f"Peer not found: {A}"))
            await a.signal("offer", B, {})
            await expect(a, error("peer_not_found", f"Peer not found: {B}"))
            await assert_quiet(a, c)


@pytest.mark.parametrize("kind", sorted(CALL_PAYLOADS))
async def test_call_messages_are_relayed_between_matched_peers(server, kind):
    payload = CALL_PAYLOADS[kind]
    with trio.fail_after(10):
        async with registered(server.url, A, B) as (a, b):
            await pair(a, b)
            await a.signal(kind, B, payload)
            await expect(b, {"type": kind, "from": A, "payload": payload})
            await b.signal(kind, A, payload)
            await expect(a, {"type": kind, "from": B, "payload": payload})
            await assert_quiet(a, b)


async def test_call_payload_size_limits(server):
    with trio.fail_after(10):
        async with registered(server.url, A, B) as (a, b):
            await pair(a, b)
            at_limit = [
                ("call_offer", {"callId": "1", "sdp": "s" * 65_536}),
                ("call_answer", {"callId": "1", "sdp": "s" * 65_536}),
                ("call_ice", {"callId": "1", "candidate": "c" * 4_096}),
            ]
            for kind, payload in at_limit:
                await a.signal(kind, B, payload)
                await expect(b, {"type": kind, "from": A, "payload": payload})
            over = [
                ("call_offer", {"callId": "1", "sdp": "s" * 65_537}, "sdp"),
                ("call_answer", {"callId": "1", "sdp": "s" * 65_537}, "sdp"),
                ("call_ice", {"callId": "1", "candidate": "c" * 4_097}, "candidate"),
            ]
            for kind, payload, field in over:
                await a.signal(kind, B, payload)
                frame = await a.receive()
                assert frame.keys() == {"type", "code", "message"}
                assert (frame["type"], frame["code"]) == ("error", "invalid_field")
                assert field in frame["message"]
            await assert_quiet(a, b)


async def test_ping_gets_pong_registered_or_not(server):
    with trio.fail_after(10):
        async with connect_signal(server.url) as client:
            await client.send({"type": "ping"})
            await expect(client, {"type": "pong"})
            await client.register(A)
            await client.send({"type": "ping", "extra": "ignored"})
            await expect(client, {"type": "pong"})
