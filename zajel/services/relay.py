"""RelayRegistry service: the router of WebSocket ``/relay`` (``docs/protocol/relay.md``).

One service task holds the parts of ``/relay`` and routes each connection's messages to them:
``RelayRegistryState`` (peers that relay for others), ``RendezvousState`` (daily meeting
points with dead drops, hourly live-match tokens) and ``ChunkIndexState`` (who holds which
chunk, the cache, one pull per chunk multicast to every waiting requester).

Invariants:
- Identity (hardened): ``register`` binds a connection to one ``peerId`` for its lifetime; a
  ``peerId`` belongs to at most one live connection; every later message acts for the bound
  peer, and one that names another ``peerId`` is refused with ``peer_id_mismatch``.
- Every attached connection has its client's per-IP key in ``_ips`` (from ``Attach``); the
  rendezvous and chunk budgets per client address count by it.
- Entries belong to the connection that made them: when it closes, its relay entry goes, then
  its meeting points and tokens, then its chunk sources and pending requests (a pull in flight
  to it fails, and other sources are pulled), then its socket mapping. Cleanup never removes
  state that a newer connection holds for the same ``peerId``.

Work: every message costs time proportional to what it carries and the frames it causes
(the state classes keep their per-request work bounded: see their docstrings), and
``GetRelayStats`` (``/stats``, ``/health``) reads counters, never scans the state.

Timers (trio's clock): the rendezvous sweep every 5 minutes, and the chunk index's own
deadlines (10 s pull time-outs, source, request and cache expiry). Expired entries are
invisible to lookups even between sweeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from zajel import clock
from zajel.config import Config
from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.frames import Invalid
from zajel.protocol.relay import (
    RELAYS_DEFAULT,
    ChunkAnnounce,
    ChunkPush,
    ChunkRequest,
    GetRelays,
    Heartbeat,
    Ping,
    Register,
    RegisterRendezvous,
    RelayMessage,
    UpdateLoad,
)
from zajel.services._peers import Attach, ConnId, Detach, Inbound, Out, PeerTable
from zajel.services.chunks import Announced, ChunkError, ChunkIndexState, ChunkResult
from zajel.services.relays import RelayRegistryState
from zajel.services.rendezvous import RendezvousState

log = logging.getLogger("zajel.relay")


@attrs.frozen
class GetRelayStats:
    """Request: reply with ``RelayStats``."""


@attrs.frozen
class RelayStats:
    relays: dict[str, int]
    rendezvous: dict[str, int]
    chunks: dict[str, int]


class RelayService:
    """The ``/relay`` service: identity binding, relay registry and rendezvous."""

    name = "relay"

    def __init__(
        self,
        relays: RelayRegistryState,
        rendezvous: RendezvousState,
        chunks: ChunkIndexState | None = None,
        *,
        epoch_ms: Callable[[], int] = clock.epoch_ms,
    ) -> None:
        self.relays = relays
        self.rendezvous = rendezvous
        self.chunks = chunks if chunks is not None else ChunkIndexState()
        self._epoch_ms = epoch_ms
        self._peers = PeerTable(log)
        self._ips: dict[ConnId, str] = {}  # connection -> its client's per-IP key
        self._bound: dict[ConnId, str] = {}  # connection -> its peerId
        self._owners: dict[str, ConnId] = {}  # peerId -> the connection that holds it
        self._now = 0.0  # the time of the request being handled, for cleanup on a drop
        # The connection whose frame is being handled: frames to it are answers, never pushes.
        self._sender: ConnId | None = None

    @classmethod
    def from_config(cls, config: Config) -> RelayService:
        # One peer may hold the points of a few days' rotations, not unbounded many.
        rendezvous = RendezvousState(
            max_entries_per_peer=4 * config.rendezvous_max_items,
            drops_per_point=config.rendezvous_drops_per_point,
            reply_bytes=config.rendezvous_reply_bytes,
            entries_per_ip=config.rendezvous_entries_per_ip,
        )
        chunks = ChunkIndexState(
            cache_bytes=config.chunk_cache_bytes,
            sources_per_ip=config.chunk_sources_per_ip,
            pending_per_ip=config.chunk_pending_per_ip,
        )
        return cls(RelayRegistryState(), rendezvous, chunks)

    # -- the service protocol --------------------------------------------------------------

    def handle(self, request: Any, now: float) -> Any:
        self._now = now
        if type(request) is Inbound:
            self._sender = request.conn_id
            try:
                outs = self._on_message(request.conn_id, request.message, now)
            except Exception:
                log.exception("message failed", extra=context(conn=request.conn_id))
                outs = [(request.conn_id, errors.internal_error().to_frame())]
            self._deliver(outs)
            self._sender = None
        elif type(request) is Attach:
            self._peers.attach(request.conn_id, request.peer)
            self._ips[request.conn_id] = request.ip
        elif type(request) is Detach:
            self._deliver(self._disconnect(request.conn_id, now))
            self._peers.detach(request.conn_id)
            self._ips.pop(request.conn_id, None)
        elif type(request) is GetRelayStats:
            # Timers already due fire first, so the counts are of live entries; every count is
            # kept as entries come and go, so this costs no scan of the state.
            if self.next_deadline() <= now:
                self.expire(now)
            return RelayStats(
                self.relays.statistics(),
                self.rendezvous.statistics(now),
                self.chunks.statistics(),
            )
        else:
            raise TypeError(f"unknown request {type(request).__name__}")
        return None

    def next_deadline(self) -> float:
        return min(self.rendezvous.next_deadline(), self.chunks.next_deadline())

    def expire(self, now: float) -> None:
        self._now = now
        if self.rendezvous.next_deadline() <= now:
            removed = self.rendezvous.sweep(now)
            if removed:
                log.debug("rendezvous sweep", extra=context(removed=removed))
        if self.chunks.next_deadline() <= now:
            self._deliver(self._chunk_outs(self.chunks.expire(now)))

    def sizes(self) -> dict[str, int]:
        """Entries of the routing maps (memory-bound tests expect all zero when idle)."""
        return {
            "peers": len(self._peers),
            "ips": len(self._ips),
            "bound": len(self._bound),
            "owners": len(self._owners),
        }

    # -- messages --------------------------------------------------------------------------

    def _on_message(self, conn: ConnId, message: RelayMessage, now: float) -> list[Out]:
        if conn not in self._peers:
            return []  # already disconnected (e.g. dropped as a slow consumer)
        bound = self._bound.get(conn)
        if message.needs_registration and bound is None:
            return [(conn, errors.not_registered().to_frame())]
        if isinstance(message, Invalid):
            return [(conn, message.error.to_frame())]
        if isinstance(message, Ping):
            return [(conn, {"type": "pong"})]
        if isinstance(message, Register):
            return self._register(conn, bound, message, now)
        assert bound is not None
        if message.peer_id is not None and message.peer_id != bound:
            return [(conn, errors.peer_id_mismatch().to_frame())]
        if isinstance(message, UpdateLoad):
            self.relays.update_load(bound, message.connected_count, now)
            frame: dict[str, Any] = {"type": "load_updated", "peerId": bound}
            frame["connectedCount"] = message.connected_count
            return [(conn, frame)]
        if isinstance(message, GetRelays):
            relays = self.relays.available(exclude=bound, count=message.count)
            return [(conn, {"type": "relays", "relays": relays})]
        if isinstance(message, Heartbeat):
            self.relays.heartbeat(bound, now)
            return [(conn, {"type": "heartbeat_ack", "timestamp": self._epoch_ms()})]
        if isinstance(message, RegisterRendezvous):
            return self._register_rendezvous(conn, bound, message, now)

        ip = self._ips[conn]
        if isinstance(message, ChunkRequest):
            result = self.chunks.request(bound, message.chunk_id, message.channel_id, now, ip=ip)
            return self._chunk_outs(result)
        if isinstance(message, ChunkAnnounce):
            announced = [Announced(chunk_id, routing) for chunk_id, routing in message.chunks]
            result = self.chunks.announce(bound, announced, message.channel_id, now, ip=ip)
            return self._chunk_outs(result)
        if isinstance(message, ChunkPush):
            try:
                result = self.chunks.push(bound, message.chunk_id, message.data_json, now)
            except ChunkError:
                return [(conn, errors.not_a_source().to_frame())]
            return self._chunk_outs(result)
        raise TypeError(f"not a relay message: {message!r}")

    def _register(
        self, conn: ConnId, bound: str | None, message: Register, now: float
    ) -> list[Out]:
        peer_id = message.peer_id
        if bound is not None and bound != peer_id:
            return [(conn, errors.peer_id_mismatch().to_frame())]
        owner = self._owners.get(peer_id)
        if owner is not None and owner != conn:
            log.info("peer id in use", extra=context(conn=conn))
            return [(conn, errors.peer_id_in_use().to_frame())]
        self._bound[conn] = peer_id
        self._owners[peer_id] = conn
        self.relays.register(peer_id, message.max_connections, message.public_key, now)
        relays = self.relays.available(exclude=peer_id, count=RELAYS_DEFAULT)
        return [(conn, {"type": "registered", "peerId": peer_id, "relays": relays})]

    def _register_rendezvous(
        self, conn: ConnId, peer_id: str, message: RegisterRendezvous, now: float
    ) -> list[Out]:
        outcome = self.rendezvous.register(
            peer_id,
            daily_points=message.daily_points,
            hourly_tokens=message.hourly_tokens,
            dead_drop_for=message.dead_drop_for,
            relay_id=message.relay_id,
            now=now,
            ip=self._ips[conn],
        )
        # Matched peers hear of the caller before the caller gets its result
        # (docs/protocol/relay.md, "What one register_rendezvous does").
        outs: list[Out] = [
            (self._owners[matched], frame)
            for matched, frame in outcome.matches
            if matched in self._owners
        ]
        outs.append((conn, outcome.result))
        return outs

    def _chunk_outs(self, result: ChunkResult) -> list[Out]:
        """Single frames become outputs; each multicast is encoded once and queued to every
        waiting requester right here (a slow one is dropped, never waited for)."""
        outs: list[Out] = [
            (self._owners[out.peer_id], out.frame)
            for out in result.outs
            if out.peer_id in self._owners
        ]
        for delivery in result.deliveries:
            conns = [self._owners[p] for p in delivery.peer_ids if p in self._owners]
            self._peers.multicast(conns, delivery.text, self._drop, self._sender)
        return outs

    # -- connections -----------------------------------------------------------------------

    def _disconnect(self, conn: ConnId, now: float) -> list[Out]:
        """Clean up after ``conn`` in the order of docs/protocol/relay.md, "Disconnect"; returns the
        frames that result (a pull in flight to it moves to the next source)."""
        peer_id = self._bound.pop(conn, None)
        if peer_id is None or self._owners.get(peer_id) != conn:
            return []  # never registered, or a newer connection holds this peerId now
        self.relays.remove(peer_id)
        self.rendezvous.remove_peer(peer_id)
        result = self.chunks.remove_peer(peer_id, now)
        del self._owners[peer_id]
        outs = self._chunk_outs(result)
        log.debug("peer left", extra=context(conn=conn))
        return outs

    def _drop(self, conn: ConnId) -> list[Out]:
        """The cleanup of a connection dropped as a slow consumer."""
        return self._disconnect(conn, self._now)

    def _deliver(self, outs: list[Out]) -> None:
        self._peers.deliver(outs, self._drop, self._sender)
