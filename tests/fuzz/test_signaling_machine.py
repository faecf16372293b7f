"""Stateful fuzzing of the SignalingRoom (docs/protocol/signaling.md): several clients connect,
register, re-register, pair (accept, reject, time out), relay offers, answers and ICE to matched
and unmatched codes, send malformed, mistyped and unknown frames, disconnect and come back with
their reconnect token, while the clock jumps over the pairing and grace timers.

Each frame goes the way ``/signal`` sends it: through the endpoint's decoder, then to the room
as an ``Inbound`` (channel messages go to the chunk index, not here). The room runs in process
with ``FakePeer`` connections and an explicit ``now``; the WebSocket front end is tested
elsewhere (``tests/integration``). After every step:

- the room never failed: no client ever got ``internal_error``;
- every frame sent is well formed: a known ``type`` with its fields of the right types, error
  codes from the protocol's list, pairing codes valid;
- the state keeps the invariants its module states: a live code belongs to exactly one
  connection and a connection holds at most one code, matches are symmetric, a pending
  request is between two live codes, and the room knows exactly the open connections;
- once every client is gone and the timers have run, nothing is left (``sizes()``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests import strategies
from tests.fuzz._frames import SIGNALING, check_frame
from tests.fuzz._settings import machine_settings
from tests.services.fakes import FakePeer
from zajel.protocol import channels
from zajel.protocol.signaling import PAIR_ANSWER_TYPES, RELAY_TYPES, decode
from zajel.services._peers import Attach, Detach, Inbound
from zajel.services.signaling import SignalingRoom, SignalingState

CODES = ["AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD"]
KEYS = [base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2, 3)]
IPS = ["192.0.2.1", "192.0.2.2", "198.51.100.7"]
# Most rules use the few codes and keys the clients share, so that they meet; the ``odd_*``
# rules send anything at all in the same fields.
codes = st.sampled_from(CODES)
keys = st.sampled_from([*KEYS, None])
odd_codes = strategies.pairing_codes | strategies.near_pairing_codes | strategies.field_values
odd_keys = strategies.field_values
clients = st.integers(min_value=0, max_value=1_000)  # an index into the open connections
# Jumps that cross the timers: 60 s pair-request windows, 30 s reconnect grace, the 90 s
# warning and the 120 s lifetime of a pair request.
jumps = st.sampled_from([0.001, 1.0, 29.0, 31.0, 61.0, 91.0, 121.0])


class SignalingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.room = SignalingRoom(SignalingState(pair_requests_per_minute=5))
        self.now = 10_000.0
        self.next_conn = 1
        self.peers: dict[int, FakePeer] = {}
        self.ips: dict[int, str] = {}
        self.tokens: dict[str, str] = {}  # code -> the last reconnect token handed out
        self.registered_as: dict[int, str] = {}  # conn -> the code its last registered named
        self.partners: dict[int, set[str]] = {}  # conn -> the codes it was matched with

    # -- helpers ---------------------------------------------------------------------------

    def pick(self, index: int) -> int:
        conns = sorted(self.peers)
        return conns[index % len(conns)]

    def open(self, ip: str) -> int:
        conn = self.next_conn
        self.next_conn += 1
        self.peers[conn] = FakePeer()
        self.ips[conn] = ip
        self.room.handle(Attach(conn, self.peers[conn], ip), self.now)
        return conn

    def deliver(self, conn: int, data: str | bytes) -> None:
        """What ``/signal`` does with one frame: decode it, and hand it to the room unless
        it is a channel message (those go to the chunk index)."""
        message = decode(data)
        if isinstance(message, channels.ROUTED):
            return
        self.room.handle(Inbound(conn, message, None), self.now)

    def send(self, conn: int, frame: dict[str, Any]) -> None:
        self.deliver(conn, json.dumps(frame))

    def close(self, conn: int) -> None:
        del self.peers[conn]
        del self.ips[conn]
        self.registered_as.pop(conn, None)
        self.partners.pop(conn, None)
        self.room.handle(Detach(conn), self.now)

    # -- rules -----------------------------------------------------------------------------

    @initialize(ip=st.sampled_from(IPS), key=keys)
    def first_clients(self, ip: str, key: str | None) -> None:
        """Two registered clients and one that is not, to start from."""
        for code in CODES[:2]:
            self.send(self.open(ip), {"type": "register", "pairingCode": code, "publicKey": key})
        self.open(ip)
        self.check_frames()

    @precondition(lambda self: len(self.peers) < 6)
    @rule(ip=st.sampled_from(IPS))
    def connect(self, ip: str) -> None:
        self.open(ip)

    @precondition(lambda self: self.peers)
    @rule(client=clients, code=codes, key=keys, token=st.sampled_from(["none", "own", "wrong"]))
    def register(self, client: int, code: str, key: Any, token: str) -> None:
        frame: dict[str, Any] = {"type": "register", "pairingCode": code}
        if key is not None:
            frame["publicKey"] = key
        if token == "own" and code in self.tokens:
            frame["reconnectToken"] = self.tokens[code]
        elif token == "wrong":
            frame["reconnectToken"] = "not-the-token"
        self.send(self.pick(client), frame)

    @precondition(lambda self: self.peers)
    @rule(client=clients, to=codes, name=st.none() | st.text(max_size=20))
    def pair_request(self, client: int, to: str, name: str | None) -> None:
        frame: dict[str, Any] = {"type": "pair_request", "targetCode": to}
        if name is not None:
            frame["proposedName"] = name
        self.send(self.pick(client), frame)

    @precondition(lambda self: self.peers)
    @rule(
        client=clients,
        to=codes,
        kind=st.sampled_from(sorted(PAIR_ANSWER_TYPES)),
        accepted=st.booleans(),
    )
    def pair_response(self, client: int, to: str, kind: str, accepted: Any) -> None:
        self.send(self.pick(client), {"type": kind, "targetCode": to, "accepted": accepted})

    @precondition(lambda self: self.peers)
    @rule(
        client=clients,
        kind=st.sampled_from(sorted(RELAY_TYPES)),
        to=codes,
        payload=strategies.call_payloads,
    )
    def relay(self, client: int, kind: str, to: str, payload: Any) -> None:
        self.send(self.pick(client), {"type": kind, "target": to, "payload": payload})

    @precondition(lambda self: self.peers)
    @rule(
        client=clients,
        kind=st.sampled_from(["register", "pair_request", *PAIR_ANSWER_TYPES, *RELAY_TYPES]),
        code=odd_codes,
        key=odd_keys,
        accepted=strategies.json_values,
        payload=strategies.json_values,
    )
    def odd_fields(
        self, client: int, kind: str, code: Any, key: Any, accepted: Any, payload: Any
    ) -> None:
        """A known type with fields of any value and type."""
        frame = {
            "type": kind,
            "pairingCode": code,
            "targetCode": code,
            "target": code,
            "publicKey": key,
            "accepted": accepted,
            "payload": payload,
        }
        self.send(self.pick(client), frame)

    @precondition(lambda self: self.peers)
    @rule(client=clients, data=strategies.frames)
    def garbage(self, client: int, data: str | bytes) -> None:
        """Malformed JSON, binary, not an object, no or a non-string type."""
        self.deliver(self.pick(client), data)

    @precondition(lambda self: self.peers)
    @rule(client=clients, frame=strategies.signal_objects)
    def any_object(self, client: int, frame: dict[str, Any]) -> None:
        """Known and unknown types with fields of any type."""
        self.send(self.pick(client), frame)

    @precondition(lambda self: len(self.registered_as) >= 2)
    @rule(first=clients, second=clients, accept=st.booleans())
    def pair_up(self, first: int, second: int, accept: bool) -> None:
        """A pair request between two registered clients, answered at once."""
        conns = sorted(self.registered_as)
        a, b = conns[first % len(conns)], conns[second % len(conns)]
        code_a, code_b = self.registered_as[a], self.registered_as[b]
        self.send(a, {"type": "pair_request", "targetCode": code_b})
        self.send(b, {"type": "pair_response", "targetCode": code_a, "accepted": accept})

    @precondition(lambda self: self.partners)
    @rule(
        client=clients,
        partner=clients,
        kind=st.sampled_from(sorted(RELAY_TYPES)),
        payload=strategies.call_payloads,
    )
    def relay_to_partner(self, client: int, partner: int, kind: str, payload: Any) -> None:
        """A signal to a code this client was matched with (it may have left since)."""
        conn = sorted(self.partners)[client % len(self.partners)]
        codes = sorted(self.partners[conn])
        to = codes[partner % len(codes)]
        self.send(conn, {"type": kind, "target": to, "payload": payload})

    @precondition(lambda self: self.peers)
    @rule(client=clients)
    def disconnect(self, client: int) -> None:
        self.close(self.pick(client))

    @precondition(lambda self: self.registered_as)
    @rule(client=clients, same_ip=st.booleans(), key=st.sampled_from(KEYS))
    def reconnect(self, client: int, same_ip: bool, key: str) -> None:
        """Drop a registered connection and come back on a new one with the code's token."""
        conn = sorted(self.registered_as)[client % len(self.registered_as)]
        code, ip = self.registered_as[conn], self.ips[conn]
        self.close(conn)
        new = self.open(ip if same_ip else IPS[(IPS.index(ip) + 1) % len(IPS)])
        frame = {"type": "register", "pairingCode": code, "publicKey": key}
        if code in self.tokens:
            frame["reconnectToken"] = self.tokens[code]
        self.send(new, frame)

    @precondition(lambda self: self.partners)
    @rule(client=clients, seconds=st.sampled_from([29.0, 31.0]))
    def matched_client_leaves(self, client: int, seconds: float) -> None:
        """A matched client goes away, and its reconnect grace runs out (or nearly)."""
        self.close(sorted(self.partners)[client % len(self.partners)])
        self.time_passes(seconds)

    @rule(seconds=jumps)
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        if self.room.next_deadline() <= self.now:
            self.room.expire(self.now)

    def everyone_leaves(self) -> None:
        for conn in sorted(self.peers):
            self.close(conn)
        self.check_frames()
        self.now += 200.0  # past every timer: grace, pair requests, per-IP windows
        self.room.expire(self.now)
        sizes = self.room.state.sizes()
        assert sizes == dict.fromkeys(sizes, 0), sizes

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def check_frames(self) -> None:
        for conn, peer in self.peers.items():
            for frame in peer.take():
                check_frame(frame, SIGNALING)
                if frame["type"] == "pair_matched":
                    self.partners.setdefault(conn, set()).add(frame["peerCode"])
                if frame["type"] == "registered":
                    self.tokens[frame["pairingCode"]] = frame["reconnectToken"]
                    self.registered_as[conn] = frame["pairingCode"]
            assert peer.closed == []  # nobody is dropped: every queue here is unbounded

    @invariant()
    def state_is_consistent(self) -> None:
        state = self.room.state
        codes, conn_codes = state._codes, state._conn_codes
        assert set(state._connections) == set(self.peers)
        assert state.sizes()["connections"] == len(self.peers)
        for conn, code in conn_codes.items():
            assert conn in self.peers
            assert codes[code].conn == conn  # one code per connection, one connection per code
        for code, entry in codes.items():
            if entry.conn is not None:
                assert conn_codes[entry.conn] == code
            for partner in entry.matches:  # matches are symmetric
                assert partner in codes
                assert code in codes[partner].matches
        for requester, target in state._pending:  # pending only between live codes
            assert codes[requester].conn is not None
            assert codes[target].conn is not None

    def teardown(self) -> None:
        self.everyone_leaves()


SignalingMachine.TestCase.settings = machine_settings(examples=80, steps=40)
test_signaling_machine = SignalingMachine.TestCase
