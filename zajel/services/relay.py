"""RelayRegistry service: the router of WebSocket ``/relay`` (``docs/protocol/relay.md``).

One service task holds the parts of ``/relay`` and routes each connection's messages to them:
``RelayRegistryState`` (peers that relay for others) and ``RendezvousState`` (daily meeting
points with dead drops, hourly live-match tokens). The chunk messages of ``/relay`` go to the
``ChunkIndex`` service, which both WebSocket dialects share; this service tells the connection
who it registered as (``Identity``), and the front end quotes that on those messages
(docs/architecture.md, "Identity").

Invariants:
- Identity (hardened): ``register`` binds a connection to one ``peerId`` for its lifetime; a
  ``peerId`` belongs to at most one live connection; every later message acts for the bound
  peer, and one that names another ``peerId`` is refused with ``peer_id_mismatch``.
- Every attached connection has its client's per-IP key in ``_ips`` (from ``Attach``); the
  rendezvous budgets per client address count by it.
- Entries belong to the connection that made them: when it closes, its relay entry goes, then
  its meeting points and tokens, then its socket mapping. Cleanup never removes state that a
  newer connection holds for the same ``peerId``. One exception (cluster mode): a connection
  lost with its node (``Detach.lost``) keeps its meeting points and tokens, which outlive any
  node; they stay until they expire, or until the peer registers them again or a later
  connection of that peer closes.
- Cluster mode (``mirror`` set): every change of the rendezvous entries is handed to the mirror,
  which keeps them in Redis, at the end of the request or timer that made it; ``restore`` loads
  them back before the service task starts. The service itself still never waits or does I/O.

Work: every message costs time proportional to what it carries and the frames it causes
(the state classes keep their per-request work bounded: see their docstrings), and
``GetRelayStats`` (``/stats``, ``/health``) reads counters, never scans the state.

Timers (trio's clock): the rendezvous sweep every 5 minutes. Expired entries are invisible to
lookups even between sweeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from zajel import clock
from zajel.config import Config
from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.frames import Invalid
from zajel.protocol.relay import (
    RELAYS_DEFAULT,
    GetRelays,
    Heartbeat,
    Ping,
    Register,
    RegisterRendezvous,
    RelayMessage,
    UpdateLoad,
)
from zajel.services._peers import Attach, ConnId, Detach, Identity, Inbound, Out, PeerTable
from zajel.services.relays import RelayRegistryState
from zajel.services.rendezvous import Mirror, PutEntry, RendezvousState

log = logging.getLogger("zajel.relay")


@attrs.frozen
class GetRelayStats:
    """Request: reply with ``RelayStats``."""


@attrs.frozen
class RelayStats:
    relays: dict[str, int]
    rendezvous: dict[str, int]


class RelayService:
    """The ``/relay`` service: identity binding, relay registry and rendezvous."""

    name = "relay"

    def __init__(
        self,
        relays: RelayRegistryState,
        rendezvous: RendezvousState,
        *,
        epoch_ms: Callable[[], int] = clock.epoch_ms,
        mirror: Mirror | None = None,
    ) -> None:
        """``mirror``: where the changes of the rendezvous entries go (cluster mode); giving
        one enables ``rendezvous``'s journal."""
        self.relays = relays
        self.rendezvous = rendezvous
        self._epoch_ms = epoch_ms
        self._mirror = mirror
        if mirror is not None:
            rendezvous.enable_journal()
        self._peers = PeerTable(log)
        self._ips: dict[ConnId, str] = {}  # connection -> its client's per-IP key
        self._bound: dict[ConnId, str] = {}  # connection -> its peerId
        self._owners: dict[str, ConnId] = {}  # peerId -> the connection that holds it
        # The connection whose frame is being handled: frames to it are answers, never pushes.
        self._sender: ConnId | None = None

    @classmethod
    def from_config(cls, config: Config, *, mirror: Mirror | None = None) -> RelayService:
        # One peer may hold the points of a few days' rotations, not unbounded many.
        rendezvous = RendezvousState(
            max_entries_per_peer=4 * config.rendezvous_max_items,
            drops_per_point=config.rendezvous_drops_per_point,
            reply_bytes=config.rendezvous_reply_bytes,
            entries_per_ip=config.rendezvous_entries_per_ip,
        )
        return cls(RelayRegistryState(), rendezvous, mirror=mirror)

    def restore(self, entries: Iterable[PutEntry], now: float, now_ms: int | None = None) -> int:
        """Load the rendezvous entries kept by the mirror (oldest first) into the still empty
        state, before the service task starts; returns how many are live. ``now`` is trio's
        clock, ``now_ms`` the epoch milliseconds at it (read from ``epoch_ms`` when not
        given). What a bound makes give way goes to the mirror as dropped."""
        loaded = self.rendezvous.restore(
            entries, now, self._epoch_ms() if now_ms is None else now_ms
        )
        self._mirror_changes(now)
        return loaded

    # -- the service protocol --------------------------------------------------------------

    def handle(self, request: Any, now: float) -> Any:
        try:
            if type(request) is Inbound:
                self._sender = request.conn_id
                try:
                    outs = self._on_message(request.conn_id, request.message, now)
                except Exception:
                    log.exception("message failed", extra=context(conn=request.conn_id))
                    outs = [(request.conn_id, errors.internal_error().to_frame())]
                self._deliver(outs)
                self._peers.handled(request.conn_id)
                self._sender = None
            elif type(request) is Attach:
                self._peers.attach(request.conn_id, request.peer)
                self._ips[request.conn_id] = request.ip
            elif type(request) is Detach:
                self._disconnect(request.conn_id, lost=request.lost)
                self._peers.detach(request.conn_id)
                self._ips.pop(request.conn_id, None)
            elif type(request) is GetRelayStats:
                # Timers already due fire first, so the counts are of live entries; every count
                # is kept as entries come and go, so this costs no scan of the state.
                if self.next_deadline() <= now:
                    self.expire(now)
                return RelayStats(self.relays.statistics(), self.rendezvous.statistics(now))
            else:
                raise TypeError(f"unknown request {type(request).__name__}")
            return None
        finally:
            # Whatever the request changed goes to the mirror, even when it failed half way.
            if self._mirror is not None:
                self._mirror_changes(now)

    def next_deadline(self) -> float:
        return self.rendezvous.next_deadline()

    def expire(self, now: float) -> None:
        if self.rendezvous.next_deadline() <= now:
            removed = self.rendezvous.sweep(now)
            if removed:
                log.debug("rendezvous sweep", extra=context(removed=removed))
            self._mirror_changes(now)  # nothing, today: an expiry is not journaled

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
        self._peers.identify(conn, Identity("relay", peer_id, message.public_key))
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

    # -- connections -----------------------------------------------------------------------

    def _disconnect(self, conn: ConnId, *, lost: bool = False) -> None:
        """Clean up after ``conn`` in the order of docs/protocol/relay.md, "Disconnect" (its
        chunk sources and requests are the ChunkIndex's, which cleans them up itself).
        ``lost``: the connection was lost with its node, and its rendezvous entries stay
        (docs/cluster.md)."""
        peer_id = self._bound.pop(conn, None)
        if peer_id is None or self._owners.get(peer_id) != conn:
            return  # never registered, or a newer connection holds this peerId now
        self.relays.remove(peer_id)
        if not lost:
            self.rendezvous.remove_peer(peer_id)
        del self._owners[peer_id]
        log.debug("peer left", extra=context(conn=conn))

    def _drop(self, conn: ConnId) -> list[Out]:
        """The cleanup of a connection dropped as a slow consumer: it causes no frames."""
        self._disconnect(conn)
        return []

    def _deliver(self, outs: list[Out]) -> None:
        self._peers.deliver(outs, self._drop, self._sender)

    def _mirror_changes(self, now: float) -> None:
        """Hand the rendezvous journal to the mirror, if there is one and it holds anything."""
        if self._mirror is not None and self.rendezvous.journal_size:
            self._mirror.record(self.rendezvous.take_journal(now, self._epoch_ms()))
