"""Stateful fuzzing of ``/relay`` on the in-process app (``tests/fuzz/_app_machine.py``).

Several clients connect to the whole app (``zajel.asgi.AsgiApp``) and use the relay registry
(register with and without a capacity, re-register, claim another's peer id, report loads, ask
for relays), rendezvous (daily points with dead drops, hourly tokens, live matches) and chunk
distribution (announce, request, push, answer pulls), with malformed, mistyped and unknown
frames between them. Clients flood past the rate limit, stop reading, leave with and without a
close frame, while the clock jumps over the pull, pending-request, cache and rendezvous timers.

Besides what every app machine checks, the model follows each client's peer id, capacity, load
and rendezvous entries from the frames it sent and got, and after every step:

- a peer id is bound to at most one open connection, and a bound connection's replies name
  its own peer id;
- every relay listed is another connected peer, with its capacity (load ÷ maximum) below one
  half; every live match, dead drop and ``rendezvous_match`` names another connected peer
  (entries belong to the connection: docs/protocol/relay.md);
- ``/stats`` counts exactly the registered peers, their capacity and load, and the live
  rendezvous entries at each kind of point.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from tests import strategies
from tests.fuzz._app_machine import Client, HostileClients, clients, drive
from tests.fuzz._frames import DEAD_DROP, LIVE_MATCH, RELAY, RELAY_INFO, Schema, check_fields
from tests.fuzz._settings import machine_settings

PEERS = ["alice-phone", "bob-laptop", "carol", "dave_2"]
IPS = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
POINTS = ["day-1", "day-2", "day-3"]
TOKENS = ["hour-1", "hour-2"]
CHUNKS = ["chunk-1", "chunk-2"]
DAILY_TTL_S = 48 * 3600.0
HOURLY_TTL_S = 3 * 3600.0
DEFAULT_MAX_CONNECTIONS = 20

peers = st.sampled_from(PEERS)
# Jumps that cross the timers: 10 s pulls, 5 min pending requests, 30 min cache, 1 h sources,
# 3 h hourly entries, 48 h daily entries (and the 5-minute rendezvous sweep).
jumps = st.sampled_from([0.5, 10.5, 301.0, 1801.0, 3601.0, 10_801.0, 172_801.0])
max_connections = st.none() | st.sampled_from([1, 2, 4, 20, 1000])
loads = st.sampled_from([0, 1, 2, 3, 10, 500, 1_000_000])


@attrs.define
class Peer:
    """What the model knows of one client of /relay."""

    peer_id: str | None = None  # bound by its first `registered`
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS  # None: set by a frame not modelled
    load: int = 0
    entries: dict[tuple[str, str], float] = attrs.Factory(dict)  # (kind, point) -> expiry
    entries_known: bool = True  # False once a rendezvous the model did not build succeeded


class RelayApp(HostileClients):
    SCHEMAS: ClassVar[dict[str, Schema]] = {"relay": RELAY}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.peers: dict[int, Peer] = {}
        # What the structured rule just sent, for the model to apply when the reply comes.
        self.registering: dict[int, int | None] = {}  # cid -> maxConnections given
        self.rendezvous: dict[int, list[tuple[str, str]]] = {}  # cid -> (kind, point)
        self.to_check: list[tuple[int, dict[str, Any]]] = []

    # -- the model -------------------------------------------------------------------------

    def on_frame(self, cid: int, client: Client, frame: dict[str, Any]) -> None:
        peer = self.peers[cid]
        kind = frame["type"]
        if kind == "registered":
            assert peer.peer_id in (None, frame["peerId"]), (peer, frame)
            peer.peer_id = frame["peerId"]
            if cid in self.registering:
                given = self.registering[cid]
                peer.max_connections = DEFAULT_MAX_CONNECTIONS if given is None else given
            else:
                peer.max_connections = None  # a frame of the garbage rules
        elif kind == "load_updated":
            assert frame["peerId"] == peer.peer_id, (peer, frame)
            peer.load = frame["connectedCount"]
        elif kind == "rendezvous_result":
            if cid in self.rendezvous:
                for key in self.rendezvous[cid]:
                    ttl = DAILY_TTL_S if key[0] == "daily" else HOURLY_TTL_S
                    peer.entries[key] = self.now + ttl
            else:
                peer.entries_known = False
        if not self.catching_up:
            self.to_check.append((cid, frame))

    def on_gone(self, cid: int, client: Client) -> None:
        self.peers.pop(cid, None)

    def sure(self) -> bool:
        """Every client reads: the model has seen every frame the server sent."""
        return all(client.open and not client.socket.paused for client in self.clients.values())

    def check_stats(self, stats: dict[str, Any]) -> None:
        bound = {cid: peer.peer_id for cid, peer in self.peers.items() if peer.peer_id}
        frames, self.to_check = self.to_check, []
        if not self.sure():
            return
        assert len(set(bound.values())) == len(bound), bound
        for cid, frame in frames:
            self.check_names(cid, frame, set(bound.values()))
        registered = [self.peers[cid] for cid in bound]
        relays = stats["relays"]
        assert relays["totalPeers"] == len(registered), (stats, self.peers)
        assert relays["totalConnected"] == sum(peer.load for peer in registered), stats
        if all(peer.max_connections is not None for peer in registered):
            capacity = sum(peer.max_connections or 0 for peer in registered)
            available = sum(
                1 for peer in registered if peer.load / (peer.max_connections or 1) < 0.5
            )
            assert relays["totalCapacity"] == capacity, stats
            assert relays["availableRelays"] == available, stats
        self.check_rendezvous(stats["rendezvous"])

    def check_names(self, cid: int, frame: dict[str, Any], connected: set[str]) -> None:
        """Every peer a frame names is another peer connected now."""
        own = self.peers[cid].peer_id if cid in self.peers else None
        others = connected - {own}
        kind = frame["type"]
        if kind in ("registered", "relays"):
            for info in frame["relays"]:
                check_fields(info, RELAY_INFO, frame)
                assert info["peerId"] in others, (frame, others)
                assert 0 <= info["capacity"] < 0.5, frame
        elif kind == "rendezvous_result":
            for match in frame["liveMatches"]:
                check_fields(match, LIVE_MATCH, frame)
                assert match["peerId"] in others, (frame, others)
            for drop in frame["deadDrops"]:
                check_fields(drop, DEAD_DROP, frame)
                assert drop["peerId"] in others, (frame, others)
                assert drop["deadDrop"] != "", frame
        elif kind == "rendezvous_match":
            check_fields(frame["match"], LIVE_MATCH, frame)
            assert frame["match"]["peerId"] in others, (frame, others)

    def check_rendezvous(self, counts: dict[str, int]) -> None:
        """The live entries of the connected peers, exactly, unless one of them is about to
        expire (within a second) or came from a frame the model did not build."""
        live: dict[tuple[str, str], int] = {}
        for peer in self.peers.values():
            if peer.peer_id is None:
                continue
            if not peer.entries_known:
                return
            for key, expiry in peer.entries.items():
                if abs(expiry - self.now) < 1.0:
                    return
                if expiry > self.now:
                    live[key] = live.get(key, 0) + 1
        daily = {key: n for key, n in live.items() if key[0] == "daily"}
        hourly = {key: n for key, n in live.items() if key[0] == "hourly"}
        expected = {
            "dailyPoints": len(daily),
            "hourlyTokens": len(hourly),
            "dailyEntries": sum(daily.values()),
            "hourlyEntries": sum(hourly.values()),
            "totalEntries": sum(live.values()),
        }
        assert counts == expected, (counts, expected)

    # -- helpers ---------------------------------------------------------------------------

    def open(self, ip: str) -> int:
        cid = self.connect("relay", ip)
        self.peers[cid] = Peer()
        return cid

    def register_as(self, cid: int, peer_id: str, max_conns: int | None, key: str | None) -> None:
        frame: dict[str, Any] = {"type": "register", "peerId": peer_id}
        if max_conns is not None:
            frame["maxConnections"] = max_conns
        if key is not None:
            frame["publicKey"] = key
        self.registering[cid] = max_conns
        try:
            self.send(cid, json.dumps(frame))
        finally:
            self.registering.pop(cid, None)

    def bound(self, index: int) -> int | None:
        cids = sorted(
            cid
            for cid, peer in self.peers.items()
            if peer.peer_id is not None and self.clients[cid].open
        )
        return cids[index % len(cids)] if cids else None

    # -- the registry ----------------------------------------------------------------------

    @initialize(ip=st.sampled_from(IPS))
    def first_clients(self, ip: str) -> None:
        """Two registered peers and a client that is not, to start from."""
        for peer_id in PEERS[:2]:
            self.register_as(self.open(ip), peer_id, None, None)
        self.open(ip)

    @precondition(lambda self: len(self.clients) < 6)
    @rule(ip=st.sampled_from(IPS), peer_id=st.none() | peers, max_conns=max_connections)
    def connect_client(self, ip: str, peer_id: str | None, max_conns: int | None) -> None:
        """A new client, which registers at once unless ``peer_id`` is None."""
        cid = self.open(ip)
        if peer_id is not None:
            self.register_as(cid, peer_id, max_conns, None)

    @rule(
        client=clients,
        peer_id=peers,
        max_conns=max_connections,
        key=st.none() | st.sampled_from(["a2V5", "k" * 1024]),
    )
    def register(self, client: int, peer_id: str, max_conns: int | None, key: str | None) -> None:
        cid = self.pick(client)
        if cid is not None:
            self.register_as(cid, peer_id, max_conns, key)

    @rule(client=clients, load=loads, name=st.sampled_from(["own", "other", "none"]))
    def update_load(self, client: int, load: int, name: str) -> None:
        frame: dict[str, Any] = {"type": "update_load", "connectedCount": load}
        cid = self.pick(client)
        if cid is None:
            return
        if name == "own" and self.peers[cid].peer_id is not None:
            frame["peerId"] = self.peers[cid].peer_id
        elif name == "other":
            frame["peerId"] = PEERS[client % len(PEERS)]
        self.send(cid, json.dumps(frame))

    @rule(client=clients, count=st.none() | st.sampled_from([1, 2, 10, 50]))
    def get_relays(self, client: int, count: int | None) -> None:
        frame: dict[str, Any] = {"type": "get_relays"}
        if count is not None:
            frame["count"] = count
        self.say(client, frame)

    @rule(client=clients, kind=st.sampled_from(["heartbeat", "ping"]))
    def keep_alive(self, client: int, kind: str) -> None:
        self.say(client, {"type": kind})

    # -- rendezvous ------------------------------------------------------------------------

    @rule(
        client=clients,
        points=st.lists(st.sampled_from(POINTS), max_size=3, unique=True),
        tokens=st.lists(st.sampled_from(TOKENS), max_size=2, unique=True),
        drop=st.sampled_from(["", "c2VhbGVk"]),
        relay_id=st.none() | st.just("relay-7"),
        spelling=st.sampled_from(["camel", "snake", "per-point", "drops-only"]),
    )
    def register_rendezvous(
        self,
        client: int,
        points: list[str],
        tokens: list[str],
        drop: str,
        relay_id: str | None,
        spelling: str,
    ) -> None:
        cid = self.bound(client)
        if cid is None:
            return
        frame: dict[str, Any] = {"type": "register_rendezvous"}
        if spelling == "camel":
            frame.update(dailyPoints=points, hourlyTokens=tokens, deadDrop=drop)
        elif spelling == "snake":
            frame.update(daily_points=points, hourly_tokens=tokens, deadDrop=drop)
        elif spelling == "per-point":
            drops = {point: drop for point in points}
            frame.update(dailyPoints=points, dead_drops=drops, hourlyTokens=tokens)
        else:
            # dead_drops names points the message does not list: they are ignored.
            frame.update(dead_drops={point: drop for point in points}, hourlyTokens=tokens)
            points = []
        if relay_id is not None:
            frame["relayId"] = relay_id
        self.rendezvous[cid] = [("daily", p) for p in points] + [("hourly", t) for t in tokens]
        try:
            self.send(cid, json.dumps(frame))
        finally:
            self.rendezvous.pop(cid, None)

    # -- chunks ----------------------------------------------------------------------------

    @rule(client=clients, chunks=st.lists(st.sampled_from(CHUNKS), min_size=1, max_size=2))
    def chunk_announce(self, client: int, chunks: list[str]) -> None:
        entries = [{"chunkId": chunk, "routingHash": "route"} for chunk in chunks]
        self.say(client, {"type": "chunk_announce", "chunks": entries})

    @rule(client=clients, chunk=st.sampled_from(CHUNKS), channel=st.none() | st.just("news"))
    def chunk_request(self, client: int, chunk: str, channel: str | None) -> None:
        frame = {"type": "chunk_request", "chunkId": chunk}
        if channel is not None:
            frame["channelId"] = channel
        self.say(client, frame)

    @rule(client=clients, chunk=st.sampled_from(CHUNKS), data=st.sampled_from([{"v": 1}, "x"]))
    def chunk_push(self, client: int, chunk: str, data: Any) -> None:
        self.say(client, {"type": "chunk_push", "chunkId": chunk, "data": data})

    @rule()
    def sources_answer_pulls(self) -> None:
        """Every client that was pulled for a chunk pushes it, as a real source does."""
        for cid, client in list(self.clients.items()):
            pulls = [frame["chunkId"] for frame in client.frames if frame["type"] == "chunk_pull"]
            client.frames.clear()
            for chunk in pulls:
                if cid in self.clients and self.clients[cid].open:
                    push = {"type": "chunk_push", "chunkId": chunk, "data": {"chunk": chunk}}
                    self.send(cid, json.dumps(push))

    # -- hostile clients (floods, stalls and departures: HostileClients) -------------------

    @rule(client=clients, data=strategies.relay_frames)
    def garbage(self, client: int, data: str | bytes) -> None:
        """Malformed JSON, binary, not an object, known and unknown types with fields of any
        value and type."""
        self.say(client, data)

    @rule(seconds=jumps)
    def time_passes(self, seconds: float) -> None:
        self.jump(seconds)


SETTINGS = machine_settings(examples=25, steps=30)


async def test_relay_on_the_app(mock_clock, tmp_path, restore_logging):
    await drive(RelayApp, mock_clock, tmp_path, SETTINGS)
