"""The SignalingRoom service task with fake peers, on trio's mock clock (autojump)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio

from tests.services.fakes import FakePeer, captured_log
from zajel.config import Config
from zajel.protocol.signaling import decode
from zajel.services import LocalAddress
from zajel.services._mailbox import ServiceFailure, start_service
from zajel.services._peers import Attach, Detach, Inbound
from zajel.services.signaling import GetStats, SignalingRoom, SignalingState, SignalingStats

A, B, C, D = "AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD"
KEY_A = base64.b64encode(b"\x0a" * 32).decode()
KEY_B = base64.b64encode(b"\x0b" * 32).decode()


@attrs.define
class Room:
    address: LocalAddress
    service: SignalingRoom
    tokens: dict[str, str] = attrs.field(factory=dict)  # each code's reconnect token

    async def attach(self, conn: int, peer: FakePeer, ip: str = "192.0.2.1") -> None:
        await self.address.cast(Attach(conn, peer, ip))

    async def send(self, conn: int, **frame: Any) -> None:
        await self.address.cast(Inbound(conn, decode(json.dumps(frame))))

    async def settle(self) -> SignalingStats:
        """Wait until everything sent so far is handled (the inbox is first in, first out)."""
        return await self.address.call(GetStats())

    async def join(
        self, conn: int, code: str, key: str | None = None, ip: str = "192.0.2.1"
    ) -> FakePeer:
        peer = FakePeer()
        await self.attach(conn, peer, ip)
        frame = {"pairingCode": code} if key is None else {"pairingCode": code, "publicKey": key}
        await self.send(conn, type="register", **frame)
        await self.settle()
        [registered] = peer.take()
        assert registered.keys() == {"type", "pairingCode", "reconnectToken"}
        assert (registered["type"], registered["pairingCode"]) == ("registered", code)
        self.tokens[code] = registered["reconnectToken"]
        return peer

    async def match(self, conn_a: int, code_a: str, conn_b: int, code_b: str) -> None:
        await self.send(conn_a, type="pair_request", targetCode=code_b)
        await self.send(conn_b, type="pair_accept", targetCode=code_a)
        await self.settle()


@pytest.fixture
async def room(nursery) -> Room:
    service = SignalingRoom(SignalingState())
    return Room(start_service(nursery, service), service)


@pytest.fixture
def signaling_log() -> Iterator[list[logging.LogRecord]]:
    with captured_log("zajel.signaling") as records:
        yield records


async def test_register_ping_and_stats(autojump_clock, room):
    peer = await room.join(1, A, KEY_A)
    await room.send(1, type="ping")
    await room.send(1, type="bogus")
    stats = await room.settle()
    assert stats == SignalingStats(connections=1, pairing_codes=1, pending_pair_requests=0)
    assert peer.take() == [
        {"type": "pong"},
        {"type": "error", "code": "unknown_type", "message": "Unknown message type: bogus"},
    ]


async def test_pairing_and_relay_through_the_service(autojump_clock, room):
    a = await room.join(1, A, KEY_A)
    b = await room.join(2, B, KEY_B)
    await room.send(1, type="pair_request", targetCode=B, proposedName="Alice")
    await room.settle()
    assert b.take() == [
        {
            "type": "pair_incoming",
            "fromCode": A,
            "fromPublicKey": KEY_A,
            "proposedName": "Alice",
            "expiresIn": 120_000,
        }
    ]
    await room.send(2, type="pair_response", targetCode=A, accepted=True)
    await room.send(1, type="offer", target=B, payload={"sdp": "v=0"})
    await room.settle()
    assert a.take() == [
        {"type": "pair_matched", "peerCode": B, "peerPublicKey": KEY_B, "isInitiator": True}
    ]
    assert b.take() == [
        {"type": "pair_matched", "peerCode": A, "peerPublicKey": KEY_A, "isInitiator": False},
        {"type": "offer", "from": A, "payload": {"sdp": "v=0"}},
    ]


async def test_pair_request_times_out_on_the_service_timer(autojump_clock, room):
    a = await room.join(1, A, KEY_A)
    b = await room.join(2, B, KEY_B)
    await room.send(1, type="pair_request", targetCode=B)
    await room.settle()
    assert b.take()[0]["type"] == "pair_incoming"
    await trio.sleep(89.9)
    await room.settle()
    assert a.frames == b.frames == []
    await trio.sleep(0.1)  # 90 s after the request
    await room.settle()
    assert a.take() == [{"type": "pair_expiring", "peerCode": B, "remainingSeconds": 30}]
    assert b.take() == [{"type": "pair_expiring", "peerCode": A, "remainingSeconds": 30}]
    await trio.sleep(30)  # 120 s after the request
    await room.settle()
    assert a.take() == [{"type": "pair_timeout", "peerCode": B}]
    assert b.take() == []
    assert (await room.settle()).pending_pair_requests == 0
    await room.send(2, type="pair_accept", targetCode=A)
    await room.settle()
    assert b.take() == [{"type": "pair_error", "error": "No pending request from this peer"}]


async def test_reconnect_grace_ends_on_the_service_timer(autojump_clock, room):
    await room.join(1, A, KEY_A)
    b = await room.join(2, B, KEY_B)
    await room.match(1, A, 2, B)
    b.take()
    await room.address.cast(Detach(1))
    await room.settle()
    assert b.take() == [{"type": "peer_left", "pairingCode": A}]
    await trio.sleep(31)
    other = await room.join(3, A)  # free again, for anyone
    await room.send(2, type="offer", target=A, payload={})
    await room.settle()
    assert b.take() == [
        {"type": "error", "code": "peer_not_found", "message": f"Peer not found: {A}"}
    ]
    assert other.frames == []


async def test_a_slow_consumer_is_closed_removed_and_cleaned_up(
    autojump_clock, room, signaling_log
):
    slow = await room.join(1, A, KEY_A)
    b = await room.join(2, B, KEY_B)
    c = await room.join(3, C)
    d = await room.join(4, D)
    await room.match(1, A, 2, B)
    await room.match(3, C, 4, D)
    for peer in (slow, b, c, d):
        peer.take()
    slow.capacity = 0  # its queue is full from now on

    await room.send(2, type="offer", target=A, payload={"sdp": "x"})
    await room.send(3, type="offer", target=D, payload={"sdp": "y"})
    stats = await room.settle()

    assert slow.closed == [1013]
    assert slow.frames == []
    assert b.take() == [{"type": "peer_left", "pairingCode": A}]
    assert d.take() == [{"type": "offer", "from": C, "payload": {"sdp": "y"}}]
    assert c.frames == []
    assert stats == SignalingStats(connections=3, pairing_codes=3, pending_pair_requests=0)
    assert any(r.getMessage() == "slow consumer disconnected" for r in signaling_log)

    # Whatever the dropped connection still sends is ignored, and its Detach is harmless.
    await room.send(1, type="ping")
    await room.address.cast(Detach(1))
    await room.address.cast(Detach(999))
    stats = await room.settle()
    assert slow.frames == []
    assert slow.closed == [1013]
    assert stats.connections == 3
    await room.send(2, type="offer", target=A, payload={})
    await room.settle()
    assert b.take()[0]["code"] == "peer_not_found"


async def test_a_slow_consumer_dropped_by_a_timer_frame(autojump_clock, room):
    a = await room.join(1, A, KEY_A)
    b = await room.join(2, B, KEY_B)
    await room.send(1, type="pair_request", targetCode=B)
    await room.settle()
    b.take()
    b.capacity = 0
    await trio.sleep(90)
    stats = await room.settle()
    assert b.closed == [1013]
    assert a.take() == [{"type": "pair_expiring", "peerCode": B, "remainingSeconds": 30}]
    assert stats == SignalingStats(connections=1, pairing_codes=1, pending_pair_requests=0)
    await trio.sleep(60)
    await room.settle()
    assert a.frames == []  # the request ended with B: no timeout follows


async def test_the_slow_consumers_cleanup_frames_can_drop_another_slow_consumer(
    autojump_clock, room
):
    a = await room.join(1, A, KEY_A)
    b = await room.join(2, B, KEY_B)
    c = await room.join(3, C, KEY_A)
    await room.match(1, A, 2, B)
    await room.match(2, B, 3, C)
    for peer in (a, b, c):
        peer.take()
    a.capacity = 0
    b.capacity = 0
    await room.send(3, type="offer", target=B, payload={})  # B is slow: peer_left to A and C
    stats = await room.settle()
    assert b.closed == [1013]
    assert a.closed == [1013]  # A could not take its peer_left either
    assert c.take() == [{"type": "peer_left", "pairingCode": B}]
    assert stats.connections == 1


async def test_an_unknown_request_is_a_service_failure_and_the_room_goes_on(autojump_clock, room):
    assert await room.address.call("not a request") == ServiceFailure("signaling")
    await room.join(1, A)
    assert (await room.settle()).pairing_codes == 1


async def test_detach_of_an_unknown_connection_is_harmless(autojump_clock, room):
    await room.address.cast(Detach(12345))
    assert await room.settle() == SignalingStats(0, 0, 0)
    peer = await room.join(1, A)
    assert peer.closed == []


def test_from_config_applies_the_pairing_limits():
    room = SignalingRoom.from_config(Config(pair_requests_per_minute=1, pair_pending_per_target=1))
    state = room.state
    for conn, code in ((1, A), (2, B), (3, C)):
        state.connect(conn, "192.0.2.1")
        state.handle(conn, decode(json.dumps({"type": "register", "pairingCode": code})), 0.0)
    request = decode(json.dumps({"type": "pair_request", "targetCode": C}))
    assert state.handle(1, request, 0.0)[0][0] == 3
    assert state.handle(1, request, 1.0)[0][1]["code"] == "rate_limited"
    assert state.handle(2, request, 1.0)[0][1] == {
        "type": "pair_error",
        "error": "Pair request could not be processed",
    }


def test_from_config_applies_the_per_ip_pair_request_limit():
    room = SignalingRoom.from_config(
        Config(pair_requests_per_minute=5, pair_requests_per_minute_per_ip=2)
    )
    state = room.state
    for conn, code in ((1, A), (2, B)):
        state.connect(conn, "192.0.2.1")
        state.handle(conn, decode(json.dumps({"type": "register", "pairingCode": code})), 0.0)
    request = decode(json.dumps({"type": "pair_request", "targetCode": C}))
    assert state.handle(1, request, 0.0)[0][1]["type"] == "pair_error"
    assert state.handle(2, request, 0.0)[0][1]["type"] == "pair_error"
    assert state.handle(2, request, 0.0)[0][1]["code"] == "rate_limited"
    assert state.handle(1, request, 0.0)[0][1]["code"] == "rate_limited"


async def test_the_per_ip_limit_on_the_service_clock(
    autojump_clock, nursery, signaling_log, caplog
):
    caplog.set_level(logging.DEBUG, logger="zajel.signaling")
    service = SignalingRoom.from_config(Config())
    room = Room(start_service(nursery, service), service)
    target = await room.join(100, "TTTTTT", KEY_B, ip="198.51.100.7")
    too_many = {"type": "error", "code": "rate_limited", "message": "Too many pair requests"}
    for index, code in enumerate(("PAAAAA", "PBBBBB", "PCCCCC")):
        prober = await room.join(index, code)
        for _ in range(10):
            await room.send(index, type="pair_request", targetCode="TTTTTT")
        await room.address.cast(Detach(index))
        await room.settle()
        assert prober.types() == []  # a live target: no reply to the sender
        assert target.types() == ["pair_incoming"] * 10
        target.take()
    prober = await room.join(3, "PDDDDD")
    await room.send(3, type="pair_request", targetCode="TTTTTT")
    await room.send(3, type="pair_request", targetCode="TTTTTT")
    await room.settle()
    assert prober.take() == [too_many, too_many]
    assert target.frames == []
    # One line for the run of refusals, naming no code and no address.
    [line] = [r for r in signaling_log if r.getMessage() == "pair requests limited for an IP"]
    assert "192.0.2.1" not in str(vars(line))
    await trio.sleep(60)
    await room.send(3, type="pair_request", targetCode="TTTTTT")
    await room.settle()
    assert prober.frames == []
    assert target.types() == ["pair_incoming"]


async def test_the_reconnect_token_is_never_logged(autojump_clock, room, signaling_log, caplog):
    caplog.set_level(logging.DEBUG, logger="zajel.signaling")
    await room.join(1, A, KEY_A)
    await room.join(2, B, KEY_B)
    await room.match(1, A, 2, B)
    await room.address.cast(Detach(1))
    await room.attach(3, FakePeer(), ip="198.51.100.7")
    for token in ("wrong-token", room.tokens[A]):
        await room.send(3, type="register", pairingCode=A, publicKey=KEY_A, reconnectToken=token)
    await room.settle()
    messages = [r.getMessage() for r in signaling_log]
    assert "pairing code in use" in messages
    assert "peer reconnected" in messages
    for record in signaling_log:
        assert room.tokens[A] not in str(vars(record))
        assert "wrong-token" not in str(vars(record))


async def test_a_message_whose_handling_fails_gets_internal_error_and_the_room_goes_on(
    autojump_clock, room, monkeypatch
):
    peer = await room.join(1, A)
    handle = room.service.state.handle

    def explode_on_ping(conn, message, now):
        if type(message).__name__ == "Ping":
            raise RuntimeError("bug")
        return handle(conn, message, now)

    monkeypatch.setattr(room.service.state, "handle", explode_on_ping)
    logging.getLogger("zajel.signaling").disabled = True
    try:
        await room.send(1, type="ping")
        await room.settle()
    finally:
        logging.getLogger("zajel.signaling").disabled = False
    assert peer.take() == [
        {"type": "error", "code": "internal_error", "message": "Internal server error"}
    ]
    await room.send(1, type="register", pairingCode=A)
    await room.settle()
    assert peer.take() == [
        {"type": "registered", "pairingCode": A, "reconnectToken": room.tokens[A]}
    ]


class RoutedFakePeer(FakePeer):
    """A peer that relays by routes, as a cluster edge's connection does: records them."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[tuple[str | None, dict[str, Any]]] = []

    def relay_routes(self, code: str | None, targets: dict[str, Any]) -> None:
        self.routes.append((code, dict(targets)))


async def test_routed_peers_are_told_their_routes_when_pairing_changes_them(autojump_clock, room):
    """docs/cluster.md, "Direct relay": after a registration, a match, a peer leaving and a
    peer back within the grace time, each routed peer concerned learns where it may relay."""
    a, b, c = RoutedFakePeer(), RoutedFakePeer(), FakePeer()
    await room.attach(1, a)
    await room.attach(2, b)
    await room.attach(3, c)
    await room.send(1, type="register", pairingCode=A, publicKey=KEY_A)
    await room.send(2, type="register", pairingCode=B, publicKey=KEY_B)
    await room.send(3, type="register", pairingCode=C)
    await room.settle()
    assert (a.routes, b.routes) == ([(A, {})], [(B, {})])
    await room.match(1, A, 2, B)
    await room.match(1, A, 3, C)  # c is not routed: it is not told, but is a target
    await room.send(1, type="ping")  # no pairing change: nothing told
    await room.settle()
    assert a.routes[1:] == [(A, {B: b}), (A, {B: b, C: c})]
    assert b.routes[1:] == [(B, {A: a})]
    assert c.take()[-1]["type"] == "pair_matched"

    await room.address.cast(Detach(2))
    await room.settle()
    assert a.routes[-1] == (A, {C: c})  # b left: its code is reserved, not live
    back = RoutedFakePeer()
    await room.attach(4, back)
    token = next(f for f in b.frames if f["type"] == "registered")["reconnectToken"]
    await room.send(4, type="register", pairingCode=B, publicKey=KEY_B, reconnectToken=token)
    await room.settle()
    assert back.routes == [(B, {A: a})]
    assert a.routes[-1] == (A, {B: back, C: c})
