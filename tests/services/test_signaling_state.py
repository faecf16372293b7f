"""``SignalingState`` driven directly, with explicit ``now`` (docs/protocol/signaling.md; no event
loop)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zajel.logs import CodeRedactor
from zajel.protocol.frames import Invalid, encode
from zajel.protocol.signaling import decode
from zajel.services.signaling import SignalingState, SignalingStats

A, B, C, D, E, T = "AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD", "EEEEEE", "TTTTTT"
CODES_OF_IP = {1: "PAAAAA", 2: "PBBBBB", 3: "PCCCCC", 4: "PDDDDD", 5: "PEEEEE"}
# Codes nobody holds, for probing (distinct, so that no request is a repeat).
UNKNOWN = [f"Z{index:05d}".translate(str.maketrans("01", "YX")) for index in range(40)]
KEY_A = base64.b64encode(b"\x01" * 32).decode()
KEY_B = base64.b64encode(b"\x02" * 32).decode()
KEY_C = base64.b64encode(b"\x03" * 32).decode()

UNPROCESSABLE = {"type": "pair_error", "error": "Pair request could not be processed"}
NO_REQUEST = {"type": "pair_error", "error": "No pending request from this peer"}
NOT_REGISTERED = {
    "type": "error",
    "code": "not_registered",
    "message": "Not registered: send register first",
}
IN_USE = {"type": "error", "code": "pairing_code_in_use", "message": "Pairing code already in use"}
TOO_MANY = {"type": "error", "code": "rate_limited", "message": "Too many pair requests"}
IP, OTHER_IP = "192.0.2.1", "198.51.100.7"


class _AnyToken:
    """Equal to any reconnect token the server makes: 43 characters of URL-safe base64."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and re.fullmatch(r"[A-Za-z0-9_-]{43}", other) is not None

    def __repr__(self) -> str:
        return "<any reconnect token>"


ANY_TOKEN = _AnyToken()


def registered(code: str) -> dict[str, Any]:
    return {"type": "registered", "pairingCode": code, "reconnectToken": ANY_TOKEN}


def peer_not_found(code: str) -> dict[str, Any]:
    return {"type": "error", "code": "peer_not_found", "message": f"Peer not found: {code}"}


def send(state: SignalingState, conn: int, now: float = 0.0, **frame: Any) -> list[Any]:
    return state.handle(conn, decode(json.dumps(frame)), now)


def register(state, conn, code, key=None, now=0.0, token=None):
    fields = {"pairingCode": code}
    if key is not None:
        fields["publicKey"] = key
    if token is not None:
        fields["reconnectToken"] = token
    return send(state, conn, now, type="register", **fields)


def join(state, conn, code, key=None, now=0.0, ip=IP):
    """Connect ``conn`` from ``ip`` and register ``code``; the registration must succeed.

    Returns the reconnect token of ``registered``.
    """
    state.connect(conn, ip)
    outs = register(state, conn, code, key, now)
    assert outs == [(conn, registered(code))]
    return outs[0][1]["reconnectToken"]


def request(state, conn, target, now=0.0, **extra):
    return send(state, conn, now, type="pair_request", targetCode=target, **extra)


def respond(state, conn, requester, accepted, now=0.0):
    return send(state, conn, now, type="pair_response", targetCode=requester, accepted=accepted)


def relay(state, conn, target, now=0.0, type_="offer", payload=None):
    payload = {"sdp": "v=0"} if payload is None else payload
    return send(state, conn, now, type=type_, target=target, payload=payload)


def match(state, conn_a, code_a, conn_b, code_b, now=0.0):
    assert len(request(state, conn_a, code_b, now)) == 1
    outs = respond(state, conn_b, code_a, True, now)
    assert [frame["type"] for _, frame in outs] == ["pair_matched", "pair_matched"]


@pytest.fixture
def state() -> SignalingState:
    return SignalingState()


@pytest.fixture
def pair(state) -> SignalingState:
    """Conn 1 holds A (KEY_A), conn 2 holds B (KEY_B); they are matched."""
    join(state, 1, A, KEY_A)
    join(state, 2, B, KEY_B)
    match(state, 1, A, 2, B)
    return state


# -- registration ---------------------------------------------------------------------------


def test_register(state):
    state.connect(1, IP)
    assert register(state, 1, A, KEY_A) == [(1, registered(A))]
    assert state.statistics() == SignalingStats(
        connections=1, pairing_codes=1, pending_pair_requests=0
    )


def test_messages_before_registration(state):
    state.connect(1, IP)
    assert request(state, 1, B) == [(1, NOT_REGISTERED)]
    assert respond(state, 1, B, True) == [(1, NOT_REGISTERED)]
    assert send(state, 1, type="pair_accept", targetCode=B) == [(1, NOT_REGISTERED)]
    for type_ in ("offer", "answer", "ice_candidate", "call_offer", "call_hangup"):
        assert relay(state, 1, B, type_=type_) == [(1, NOT_REGISTERED)]
    assert send(state, 1, type="ping") == [(1, {"type": "pong"})]


def test_a_code_held_by_a_live_connection_is_refused(state):
    join(state, 1, A, KEY_A)
    state.connect(2, IP)
    assert register(state, 2, A, KEY_A) == [(2, IN_USE)]
    assert register(state, 2, A) == [(2, IN_USE)]
    assert state.statistics().pairing_codes == 1
    # Conn 2 is still unregistered; conn 1 still owns A.
    assert request(state, 2, A) == [(2, NOT_REGISTERED)]
    join(state, 3, B)
    assert request(state, 3, A)[0][0] == 1


def test_registering_the_same_code_again_on_the_same_connection(state):
    join(state, 1, A)
    assert register(state, 1, A, KEY_A) == [(1, registered(A))]
    join(state, 2, B)
    assert request(state, 2, A) == [
        (1, {"type": "pair_incoming", "fromCode": B, "fromPublicKey": None, "expiresIn": 120_000})
    ]
    assert respond(state, 1, B, True)[1] == (
        1,
        {"type": "pair_matched", "peerCode": B, "peerPublicKey": None, "isInitiator": False},
    )
    assert respond(state, 1, B, True) == [(1, NO_REQUEST)]
    assert state.statistics().pairing_codes == 2


def test_registering_a_new_code_releases_the_old_one(pair):
    state = pair
    join(state, 3, C)
    assert request(state, 1, C)[0][0] == 3  # a pending request from A
    assert register(state, 1, D, KEY_A) == [
        (2, {"type": "peer_left", "pairingCode": A}),
        (1, registered(D)),
    ]
    assert state.statistics() == SignalingStats(
        connections=3, pairing_codes=3, pending_pair_requests=0
    )
    assert respond(state, 3, A, True) == [(3, NO_REQUEST)]
    # A is free at once (no reconnect grace for a code given up on purpose), for any key.
    join(state, 4, A, KEY_C)
    assert relay(state, 2, A) == [(2, peer_not_found(A))]
    assert relay(state, 1, B) == [(1, peer_not_found(B))]


# -- consent pairing ------------------------------------------------------------------------


def test_pair_request_and_acceptance_send_the_exact_frames(state):
    join(state, 1, A, KEY_A)
    join(state, 2, B, KEY_B)
    assert request(state, 1, B, proposedName="Alice") == [
        (
            2,
            {
                "type": "pair_incoming",
                "fromCode": A,
                "fromPublicKey": KEY_A,
                "proposedName": "Alice",
                "expiresIn": 120_000,
            },
        )
    ]
    assert state.statistics().pending_pair_requests == 1
    assert respond(state, 2, A, True) == [
        (1, {"type": "pair_matched", "peerCode": B, "peerPublicKey": KEY_B, "isInitiator": True}),
        (2, {"type": "pair_matched", "peerCode": A, "peerPublicKey": KEY_A, "isInitiator": False}),
    ]
    assert state.statistics().pending_pair_requests == 0
    assert state.next_deadline() == float("inf")


def test_pair_incoming_without_a_name_or_key(state):
    join(state, 1, A)
    join(state, 2, B)
    assert request(state, 1, B, proposedName=None) == [
        (2, {"type": "pair_incoming", "fromCode": A, "fromPublicKey": None, "expiresIn": 120_000})
    ]


def test_pair_accept_is_an_accepting_response(state):
    join(state, 1, A, KEY_A)
    join(state, 2, B, KEY_B)
    request(state, 1, B)
    outs = send(state, 2, type="pair_accept", targetCode=A)
    assert outs == [
        (1, {"type": "pair_matched", "peerCode": B, "peerPublicKey": KEY_B, "isInitiator": True}),
        (2, {"type": "pair_matched", "peerCode": A, "peerPublicKey": KEY_A, "isInitiator": False}),
    ]
    assert relay(state, 2, A) == [(1, {"type": "offer", "from": B, "payload": {"sdp": "v=0"}})]


@pytest.mark.parametrize(
    "answer",
    [
        {"type": "pair_response", "targetCode": A, "accepted": False},
        {"type": "pair_reject", "targetCode": A},
    ],
)
def test_rejection_tells_only_the_requester(state, answer):
    join(state, 1, A, KEY_A)
    join(state, 2, B, KEY_B)
    request(state, 1, B)
    assert send(state, 2, **answer) == [(1, {"type": "pair_rejected", "peerCode": B})]
    assert state.statistics().pending_pair_requests == 0
    assert relay(state, 1, B) == [(1, peer_not_found(B))]
    assert relay(state, 2, A) == [(2, peer_not_found(A))]
    assert respond(state, 2, A, True) == [(2, NO_REQUEST)]
    assert state.next_deadline() == float("inf")


def test_answers_without_a_pending_request(state):
    join(state, 1, A)
    join(state, 2, B)
    assert respond(state, 2, A, True) == [(2, NO_REQUEST)]
    request(state, 1, B)
    assert respond(state, 1, B, True) == [(1, NO_REQUEST)]  # the requester cannot answer
    assert respond(state, 2, C, True) == [(2, NO_REQUEST)]
    assert state.statistics().pending_pair_requests == 1


def test_pair_error_has_one_text_for_self_unknown_and_full_targets():
    state = SignalingState(pending_per_target=2)
    join(state, 1, A)
    assert request(state, 1, A) == [(1, UNPROCESSABLE)]  # self
    assert request(state, 1, E) == [(1, UNPROCESSABLE)]  # unknown
    join(state, 2, B)
    join(state, 3, C)
    join(state, 4, D)
    assert request(state, 2, A)[0][0] == 1
    assert request(state, 3, A)[0][0] == 1
    assert request(state, 4, A) == [(4, UNPROCESSABLE)]  # full: two pending already
    assert request(state, 2, A)[0][0] == 1  # a repeat of a pending request still goes
    assert state.statistics().pending_pair_requests == 2
    respond(state, 1, B, False)
    assert request(state, 4, A)[0][0] == 1  # room again


def test_pair_error_for_a_code_in_reconnect_grace(pair):
    state = pair
    state.disconnect(1, 0.0)
    assert request(state, 2, A) == [(2, UNPROCESSABLE)]


def test_pair_requests_are_limited_per_minute_per_connection(state):
    join(state, 1, A)
    join(state, 2, B)
    join(state, 3, C)
    for second in range(10):
        assert request(state, 1, B, now=float(second))[0][0] == 2
    limited = {"type": "error", "code": "rate_limited", "message": "Too many pair requests"}
    assert request(state, 1, B, now=30.0) == [(1, limited)]
    assert request(state, 1, E, now=59.9) == [(1, limited)]
    assert request(state, 3, B, now=59.9)[0][0] == 2  # another connection has its own limit
    # 60 s after the first request, one slot is free again.
    assert request(state, 1, B, now=60.0)[0][0] == 2
    assert request(state, 1, B, now=60.5) == [(1, limited)]
    assert request(state, 1, B, now=61.0)[0][0] == 2


def test_refused_pair_requests_count_against_the_limit():
    state = SignalingState(pair_requests_per_minute=3)
    join(state, 1, A)
    join(state, 2, B)
    assert request(state, 1, E) == [(1, UNPROCESSABLE)]
    assert request(state, 1, A) == [(1, UNPROCESSABLE)]
    assert request(state, 1, B)[0][0] == 2
    assert request(state, 1, B)[0][1]["code"] == "rate_limited"


def test_pair_requests_are_limited_per_ip_over_all_its_connections(state):
    join(state, 9, T, KEY_C, ip=OTHER_IP)
    for conn in range(1, 6):
        join(state, conn, CODES_OF_IP[conn])
    # Three connections of one address, each within its own 10 a minute: 30 at 0 s..29 s.
    for second in range(30):
        conn = 1 + second // 10
        assert request(state, conn, UNKNOWN[second], now=float(second)) == [(conn, UNPROCESSABLE)]
    # Closing them buys nothing: a fourth connection, a live target, still refused.
    for conn in (1, 2, 3):
        state.disconnect(conn, 30.0)
    assert request(state, 4, T, now=30.0) == [(4, TOO_MANY)]
    assert request(state, 4, UNKNOWN[30], now=59.999) == [(4, TOO_MANY)]
    # Another address has its own budget.
    join(state, 8, E, ip=OTHER_IP)
    assert request(state, 8, T, now=59.999)[0][0] == 9
    # 60 s after the first request one slot is free again, then 61 s after the second.
    assert request(state, 4, T, now=60.0)[0][0] == 9
    assert request(state, 5, T, now=60.0) == [(5, TOO_MANY)]
    assert request(state, 5, T, now=60.999) == [(5, TOO_MANY)]
    assert request(state, 5, T, now=61.0)[0][0] == 9


def test_a_request_refused_by_either_limit_counts_against_neither():
    state = SignalingState(pair_requests_per_minute=2, pair_requests_per_minute_per_ip=3)
    join(state, 1, A)
    join(state, 2, B)
    join(state, 9, T, ip=OTHER_IP)
    assert request(state, 1, T, now=0.0)[0][0] == 9
    assert request(state, 1, T, now=0.0)[0][0] == 9
    # The connection's own limit refuses this one: the address has counted 2, not 3...
    assert request(state, 1, T, now=0.0) == [(1, TOO_MANY)]
    # ...so another connection of it may still send one.
    assert request(state, 2, T, now=30.0)[0][0] == 9
    # The address's limit refuses this one: the connection has counted 1, not 2...
    assert request(state, 2, T, now=30.0) == [(2, TOO_MANY)]
    # ...so once the first two have left the address's window, it may send 1 more, not 0.
    assert request(state, 2, T, now=60.0)[0][0] == 9
    assert request(state, 2, T, now=60.0) == [(2, TOO_MANY)]


def test_ip_windows_outlive_their_connections_but_not_their_minute(state):
    join(state, 9, T, ip=OTHER_IP)
    for index in range(500):
        conn = 100 + index
        join(state, conn, UNKNOWN[index % 40], ip=f"10.0.{index // 250}.{index % 250}")
        request(state, conn, T, now=0.0)
        state.disconnect(conn, 0.0)
    assert state.sizes()["ip_windows"] == 500
    assert state.sizes()["connections"] == 1
    join(state, 1, A)
    request(state, 1, T, now=59.0)
    assert state.sizes()["ip_windows"] == 501
    # A minute after the first requests, their windows are gone.
    request(state, 1, T, now=60.0)
    assert state.sizes()["ip_windows"] == 1
    assert state.expire(119.0) == []  # the pair timers
    state.expire(200.0)
    assert state.sizes()["ip_windows"] == 0


def test_a_refused_ip_is_forgotten_with_its_window():
    state = SignalingState(pair_requests_per_minute_per_ip=1)
    join(state, 9, T, ip=OTHER_IP)
    join(state, 1, A)
    assert request(state, 1, T, now=0.0)[0][0] == 9
    assert request(state, 1, T, now=1.0) == [(1, TOO_MANY)]
    assert (state.sizes()["ip_windows"], state.sizes()["refused_ips"]) == (1, 1)
    state.expire(60.0)  # the address's only request has left its minute
    assert (state.sizes()["ip_windows"], state.sizes()["refused_ips"]) == (0, 0)


# -- reconnect token --------------------------------------------------------------------------


def test_registered_carries_a_reconnect_token_bound_to_its_code(state):
    token_a = join(state, 1, A, KEY_A)
    token_b = join(state, 2, B, KEY_B)
    assert token_a == ANY_TOKEN
    assert token_a != token_b
    # The code keeps its token while it is held, whatever key it is registered with again.
    assert register(state, 1, A, KEY_C) == [
        (1, {"type": "registered", "pairingCode": A, "reconnectToken": token_a})
    ]
    # A code given up and registered afresh has a new one.
    assert register(state, 1, C, KEY_A)[0][1]["reconnectToken"] != token_a
    assert join(state, 3, A, KEY_A) not in {token_a, token_b}


def test_the_public_key_alone_does_not_reclaim_a_reserved_code(state):
    token_a = join(state, 1, A, KEY_A)
    token_b = join(state, 2, B, KEY_B)
    match(state, 1, A, 2, B)
    state.disconnect(1, 100.0)
    state.connect(3, OTHER_IP)
    # Every attempt is refused and nobody else hears of it.
    for token in (None, "x" * 43, token_b, token_a[:-1], token_a + "x", "é" * 43):
        assert register(state, 3, A, KEY_A, now=101.0, token=token) == [(3, IN_USE)]
    # The right token needs the right key too.
    assert register(state, 3, A, KEY_C, now=101.0, token=token_a) == [(3, IN_USE)]
    assert register(state, 3, A, now=101.0, token=token_a) == [(3, IN_USE)]
    assert relay(state, 3, B) == [(3, NOT_REGISTERED)]
    assert relay(state, 2, A) == [(2, peer_not_found(A))]
    # The device itself, from another network, with its token.
    assert register(state, 3, A, KEY_A, now=129.9, token=token_a) == [
        (3, {"type": "registered", "pairingCode": A, "reconnectToken": token_a}),
        (2, {"type": "peer_joined", "pairingCode": A}),
    ]
    assert relay(state, 2, A) == [(3, {"type": "offer", "from": B, "payload": {"sdp": "v=0"}})]


def test_without_a_token_only_the_same_ip_reclaims_a_reserved_code(state):
    join(state, 1, A, KEY_A, ip=IP)
    join(state, 2, B, KEY_B, ip=OTHER_IP)
    match(state, 1, A, 2, B)
    state.disconnect(1, 0.0)
    state.connect(3, OTHER_IP)
    assert register(state, 3, A, KEY_A, now=1.0) == [(3, IN_USE)]
    state.connect(4, IP)
    # From the same address a token, if sent, must still be right.
    assert register(state, 4, A, KEY_A, now=1.0, token="x" * 43) == [(4, IN_USE)]
    assert register(state, 4, A, KEY_B, now=1.0) == [(4, IN_USE)]
    assert register(state, 4, A, KEY_A, now=2.0) == [
        (4, registered(A)),
        (2, {"type": "peer_joined", "pairingCode": A}),
    ]


def test_a_reclaimed_code_is_held_from_its_new_ip(state):
    token_a = join(state, 1, A, KEY_A, ip=IP)
    join(state, 2, B, KEY_B)
    match(state, 1, A, 2, B)
    state.disconnect(1, 0.0)
    state.connect(3, OTHER_IP)
    assert register(state, 3, A, KEY_A, now=1.0, token=token_a)[0] == (3, registered(A))
    state.disconnect(3, 2.0)
    # Without the token, only the address it was last held from may take it back now.
    state.connect(4, IP)
    assert register(state, 4, A, KEY_A, now=3.0) == [(4, IN_USE)]
    state.connect(5, OTHER_IP)
    assert register(state, 5, A, KEY_A, now=3.0)[0] == (5, registered(A))
    # The token is the code's for as long as it is held or reserved.
    state.disconnect(5, 4.0)
    assert register(state, 4, A, KEY_A, now=5.0, token=token_a)[1] == (
        2,
        {"type": "peer_joined", "pairingCode": A},
    )


# -- relay ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_",
    [
        "offer",
        "answer",
        "ice_candidate",
        "call_offer",
        "call_answer",
        "call_reject",
        "call_hangup",
        "call_ice",
    ],
)
def test_relay_between_matched_peers(pair, type_):
    payload = {"callId": "c1", "sdp": "v=0", "nested": {"list": [1, None]}}
    assert relay(pair, 1, B, type_=type_, payload=payload) == [
        (2, {"type": type_, "from": A, "payload": payload})
    ]
    assert relay(pair, 2, A, type_=type_, payload={}) == [
        (1, {"type": type_, "from": B, "payload": {}})
    ]


def test_relay_only_to_matched_peers(pair):
    state = pair
    join(state, 3, C)
    assert relay(state, 3, A) == [(3, peer_not_found(A))]  # registered, not matched
    assert relay(state, 1, C) == [(1, peer_not_found(C))]
    assert relay(state, 1, E) == [(1, peer_not_found(E))]  # unknown
    assert relay(state, 1, A) == [(1, peer_not_found(A))]  # self
    request(state, 3, A)
    assert relay(state, 3, A) == [(3, peer_not_found(A))]  # pending is not matched


def test_a_bad_relay_from_a_registered_connection_is_invalid_field(pair):
    outs = send(pair, 1, type="offer", target="nope", payload={})
    assert outs == [
        (1, {"type": "error", "code": "invalid_field", "message": "Invalid target code format"})
    ]


# -- check order ----------------------------------------------------------------------------


def test_registration_is_checked_before_fields(state):
    state.connect(1, IP)
    bad_offer = decode(json.dumps({"type": "offer", "target": 5}))
    assert isinstance(bad_offer, Invalid)
    assert bad_offer.needs_registration
    assert state.handle(1, bad_offer, 0.0) == [(1, NOT_REGISTERED)]
    assert send(state, 1, type="pair_request", targetCode="x") == [(1, NOT_REGISTERED)]
    # Frame errors and register's own field errors come before registration.
    assert send(state, 1, type="bogus")[0][1]["code"] == "unknown_type"
    assert state.handle(1, decode(b"{}"), 0.0)[0][1]["code"] == "invalid_message"
    assert send(state, 1, type="register", pairingCode="x")[0][1]["code"] == "invalid_field"
    register(state, 1, A)
    assert state.handle(1, bad_offer, 0.0)[0][1]["code"] == "invalid_field"


def test_messages_of_unknown_or_closed_connections_are_ignored(state):
    assert send(state, 9, type="ping") == []
    join(state, 1, A)
    state.disconnect(1, 0.0)
    assert send(state, 1, type="ping") == []
    assert state.disconnect(1, 0.0) == []
    assert state.disconnect(42, 0.0) == []


# -- timers ---------------------------------------------------------------------------------


def test_pair_request_warns_both_sides_at_90_s_and_times_out_at_120_s(state):
    join(state, 1, A, KEY_A)
    join(state, 2, B, KEY_B)
    request(state, 1, B, now=10.0)
    assert state.next_deadline() == 100.0
    assert state.expire(99.999) == []
    assert state.expire(100.0) == [
        (1, {"type": "pair_expiring", "peerCode": B, "remainingSeconds": 30}),
        (2, {"type": "pair_expiring", "peerCode": A, "remainingSeconds": 30}),
    ]
    assert state.next_deadline() == 130.0
    assert state.expire(129.999) == []
    assert state.expire(130.0) == [(1, {"type": "pair_timeout", "peerCode": B})]
    assert state.statistics().pending_pair_requests == 0
    assert state.next_deadline() == float("inf")
    assert respond(state, 2, A, True, now=130.0) == [(2, NO_REQUEST)]


def test_late_expire_sends_warning_then_timeout(state):
    join(state, 1, A)
    join(state, 2, B)
    request(state, 1, B, now=0.0)
    assert [frame["type"] for _, frame in state.expire(500.0)] == [
        "pair_expiring",
        "pair_expiring",
        "pair_timeout",
    ]


def test_a_repeated_request_restarts_its_timer(state):
    join(state, 1, A)
    join(state, 2, B)
    request(state, 1, B, now=0.0)
    assert request(state, 1, B, now=50.0)[0][1]["type"] == "pair_incoming"
    assert state.statistics().pending_pair_requests == 1
    assert state.expire(90.0) == []
    assert state.expire(120.0) == []
    assert len(state.expire(140.0)) == 2
    assert state.expire(169.0) == []
    assert state.expire(170.0) == [(1, {"type": "pair_timeout", "peerCode": B})]


def test_an_answered_request_has_no_timers(state):
    join(state, 1, A)
    join(state, 2, B)
    request(state, 1, B, now=0.0)
    respond(state, 2, A, False, now=1.0)
    assert state.next_deadline() == float("inf")
    assert state.expire(1_000.0) == []


# -- disconnect and reconnect grace -----------------------------------------------------------


def test_disconnect_tells_only_matched_partners(state):
    join(state, 1, A, KEY_A)
    join(state, 2, B, KEY_B)
    join(state, 3, C, KEY_C)
    join(state, 4, D)
    match(state, 1, A, 2, B)
    match(state, 1, A, 3, C)
    request(state, 4, A)  # pending towards A
    request(state, 1, D)  # pending from A
    assert state.disconnect(1, 5.0) == [
        (2, {"type": "peer_left", "pairingCode": A}),
        (3, {"type": "peer_left", "pairingCode": A}),
    ]
    assert state.statistics() == SignalingStats(
        connections=3, pairing_codes=3, pending_pair_requests=0
    )
    assert relay(state, 2, A) == [(2, peer_not_found(A))]
    assert respond(state, 4, A, True) == [(4, NO_REQUEST)]
    # Only the grace timer of A is left; the pair timers ended with the requests.
    assert state.next_deadline() == 35.0


def test_disconnect_of_an_unmatched_code_frees_it_at_once(state):
    join(state, 1, A, KEY_A)
    join(state, 2, B)
    request(state, 2, A)
    assert state.disconnect(1, 0.0) == []
    assert state.next_deadline() == float("inf")
    join(state, 3, A, KEY_C)


def test_reconnect_within_grace_restores_the_matches(pair):
    state = pair
    assert state.disconnect(1, 100.0) == [(2, {"type": "peer_left", "pairingCode": A})]
    state.connect(3, IP)
    assert register(state, 3, A, KEY_B, now=101.0) == [(3, IN_USE)]  # another key
    assert register(state, 3, A, now=102.0) == [(3, IN_USE)]  # no key
    state.connect(4, IP)
    assert register(state, 4, A, KEY_A, now=129.9) == [
        (4, registered(A)),
        (2, {"type": "peer_joined", "pairingCode": A}),
    ]
    assert state.next_deadline() == float("inf")  # the grace timer is gone
    assert relay(state, 2, A) == [(4, {"type": "offer", "from": B, "payload": {"sdp": "v=0"}})]
    assert relay(state, 4, B) == [(2, {"type": "offer", "from": A, "payload": {"sdp": "v=0"}})]
    assert state.expire(1_000.0) == []
    assert relay(state, 2, A)[0][0] == 4


def test_no_grace_without_a_public_key(state):
    join(state, 1, A)
    join(state, 2, B, KEY_B)
    match(state, 1, A, 2, B)
    assert state.disconnect(1, 0.0) == [(2, {"type": "peer_left", "pairingCode": A})]
    assert state.next_deadline() == float("inf")
    join(state, 3, A, KEY_C)
    assert relay(state, 2, A) == [(2, peer_not_found(A))]
    assert relay(state, 3, B) == [(3, peer_not_found(B))]


def test_after_the_grace_time_the_code_is_free_and_forgotten(pair):
    state = pair
    state.disconnect(1, 0.0)
    assert state.next_deadline() == 30.0
    assert state.expire(29.9) == []
    state.connect(3, IP)
    assert register(state, 3, A, KEY_C, now=29.9) == [(3, IN_USE)]
    assert state.expire(30.0) == []
    assert state.sizes()["codes"] == 1
    assert register(state, 3, A, KEY_C, now=30.0) == [(3, registered(A))]
    # B's match with the old A is gone: the new holder of A is a stranger to B.
    assert relay(state, 2, A) == [(2, peer_not_found(A))]
    assert relay(state, 3, B) == [(3, peer_not_found(B))]


def test_both_partners_gone_then_one_returns(pair):
    state = pair
    state.disconnect(1, 0.0)
    assert state.disconnect(2, 10.0) == []  # A is not live: nobody to tell
    state.connect(3, IP)
    assert register(state, 3, A, KEY_A, now=20.0) == [(3, registered(A))]
    assert state.expire(40.0) == []  # B's grace ends
    assert relay(state, 3, B) == [(3, peer_not_found(B))]
    assert state.sizes()["codes"] == 1


# -- statistics and memory ------------------------------------------------------------------


def test_statistics(pair):
    state = pair
    join(state, 3, C)
    state.connect(4, IP)
    request(state, 3, A)
    stats = state.statistics()
    assert stats == SignalingStats(connections=4, pairing_codes=3, pending_pair_requests=1)
    assert stats.to_json() == {"connections": 4, "pairingCodes": 3, "pendingPairRequests": 1}


def test_every_map_is_empty_once_everyone_has_gone_and_timers_ran_out():
    state = SignalingState(redact=CodeRedactor(enabled=False))
    count = 200
    codes = [f"A{index:05d}".translate(str.maketrans("01", "XY")) for index in range(count)]
    keys = [base64.b64encode(index.to_bytes(32, "big")).decode() for index in range(count)]
    for conn, (code, key) in enumerate(zip(codes, keys, strict=True)):
        join(state, conn, code, key if conn % 3 else None, ip=f"10.0.0.{conn % 50}")
    for conn in range(0, count, 2):  # matched couples
        match(state, conn, codes[conn], conn + 1, codes[conn + 1], now=1.0)
    for conn in range(count):  # pending requests, in both directions and to full targets
        request(state, conn, codes[(conn + 7) % count], now=2.0)
        request(state, conn, codes[(conn * 13 + 3) % count], now=3.0)
    assert state.statistics().pending_pair_requests > count
    assert state.sizes()["timers"] > 0
    for conn in range(count):
        state.disconnect(conn, 10.0)
    assert state.statistics() == SignalingStats(0, 0, 0)
    assert state.expire(10.0 + 120.0 + 30.0) == []
    assert state.next_deadline() == float("inf")
    assert state.sizes() == dict.fromkeys(state.sizes(), 0)
    assert set(state.sizes()) == {
        "codes",
        "conn_codes",
        "connections",
        "ip_windows",
        "refused_ips",
        "pending",
        "incoming",
        "outgoing",
        "timers",
    }


# -- random sessions --------------------------------------------------------------------------

CODES = [A, B, C, D]
KEYS = [None, KEY_A, KEY_B]
CONNS = [1, 2, 3, 4]
IP_OF = {1: IP, 2: IP, 3: OTHER_IP, 4: OTHER_IP}  # two clients behind each address

session_ops = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.sampled_from(CONNS)),
        st.tuples(
            st.just("register"),
            st.sampled_from(CONNS),
            st.sampled_from(CODES),
            st.sampled_from(KEYS),
        ),
        st.tuples(st.just("request"), st.sampled_from(CONNS), st.sampled_from(CODES)),
        st.tuples(st.just("answer"), st.sampled_from(CONNS), st.sampled_from(CODES), st.booleans()),
        st.tuples(st.just("relay"), st.sampled_from(CONNS), st.sampled_from(CODES)),
        st.tuples(st.just("match"), st.sampled_from(CONNS), st.sampled_from(CONNS)),
        st.tuples(st.just("garbage"), st.sampled_from(CONNS)),
        st.tuples(st.just("disconnect"), st.sampled_from(CONNS)),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 29.0, 30.0, 60.0, 90.0])),
    ),
    max_size=40,
)


@settings(deadline=None, max_examples=150)
@given(session_ops)
def test_random_sessions_address_only_open_connections_and_leave_nothing_behind(ops):
    state = SignalingState()
    for conn in CONNS:
        state.connect(conn, IP_OF[conn])
    connected: set[int] = set(CONNS)
    code_of: dict[int, str] = {}
    now = 0.0
    for op, *args in ops:
        outs: list[Any] = []
        if op == "connect":
            if args[0] not in connected:
                state.connect(args[0], IP_OF[args[0]])
                connected.add(args[0])
        elif op == "register":
            outs = register(state, args[0], args[1], args[2], now)
        elif op == "request":
            outs = request(state, args[0], args[1], now)
        elif op == "answer":
            outs = respond(state, args[0], args[1], args[2], now)
        elif op == "relay":
            outs = relay(state, args[0], args[1], now)
        elif op == "match" and args[0] in code_of and args[1] in code_of:
            outs = request(state, args[0], code_of[args[1]], now)
            outs += respond(state, args[1], code_of[args[0]], True, now)
        elif op == "garbage":
            outs = state.handle(args[0], decode("{not json"), now)
        elif op == "disconnect":
            outs = state.disconnect(args[0], now)
            connected.discard(args[0])
        elif op == "wait":
            now += args[0]
            outs = state.expire(now)
        for conn, frame in outs:
            assert conn in connected
            encode(frame)
            if frame["type"] == "registered":
                code_of[conn] = frame["pairingCode"]
        if op == "disconnect":
            code_of.pop(args[0], None)
        assert state.statistics().connections == len(connected)
    # Matches are symmetric: a relay goes through one way exactly when it goes the other way.
    for x, code_x in code_of.items():
        for y, code_y in code_of.items():
            there = relay(state, x, code_y, now)[0][0] == y
            back = relay(state, y, code_x, now)[0][0] == x
            assert there is back
    for conn in list(connected):
        outs = state.disconnect(conn, now)
        connected.discard(conn)
        assert all(target in connected for target, _ in outs)
    state.expire(now + 1_000.0)
    assert state.sizes() == dict.fromkeys(state.sizes(), 0)


def test_requests_both_ways_end_together_when_one_is_accepted(state):
    join(state, 1, A, KEY_A)
    join(state, 2, B, KEY_B)
    request(state, 1, B)
    request(state, 2, A)
    assert state.statistics().pending_pair_requests == 2
    respond(state, 2, A, True)
    assert state.statistics().pending_pair_requests == 0
    assert state.next_deadline() == float("inf")
    assert state.expire(1_000.0) == []  # no pair_expiring or pair_timeout for matched peers
