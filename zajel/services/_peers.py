"""Connection-level messages every WebSocket service understands, and the peer handle."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from zajel.logs import context
from zajel.protocol.frames import encode

ConnId = int
Out = tuple[ConnId, dict[str, Any]]

# WebSocket close codes a service may ask for (RFC 6455 §7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class Peer(Protocol):
    """One client connection, as a service sees it: a bounded queue and a way to drop it.

    Frames pushed by others and answers to the client's own frames are queued apart
    (docs/operations.md, "Limits and back-pressure"): a push can find the client too slow, an
    answer never does (the front end stops reading that client instead).
    """

    def send_nowait(self, frame: str) -> bool:
        """Queue one encoded frame pushed by others; False when the client is a slow
        consumer."""

    def answer_nowait(self, frame: str) -> None:
        """Queue one encoded answer to the client's own frame; never refused."""

    def handled(self) -> None:
        """One frame of this client's has been handled (its answers, if any, are queued)."""

    def close(self, code: int) -> None:
        """Close the connection with ``code``; the front end then sends ``Detach``."""

    def identify(self, identity: Identity) -> None:
        """The connection registered as ``identity``: the front end quotes it on the frames it
        hands to the other service of its endpoint (docs/architecture.md, "Identity")."""


@runtime_checkable
class RoutedPeer(Peer, Protocol):
    """A peer that relays its client's signaling frames itself, by the routes the room gives
    it: a connection of a cluster edge (docs/cluster.md, "Direct relay")."""

    def relay_routes(self, code: str | None, targets: dict[str, Peer]) -> None:
        """The client holds ``code`` and may relay to each code of ``targets``."""


@attrs.frozen
class Identity:
    """Who a connection registered as, set by the service that owns its endpoint's identity.

    ``dialect`` is the endpoint: ``signal`` (``peer_id`` is the pairing code) or ``relay``
    (``peer_id`` is the bound ``peerId``); ``public_key`` is the one the registration gave.
    """

    dialect: Literal["signal", "relay"]
    peer_id: str
    public_key: str | None


@attrs.frozen
class Attach:
    """A connection opened: frames for ``conn_id`` go to ``peer``.

    ``ip`` is the key the per-IP budgets count by (the client's address, IPv6 by its /64;
    ``zajel.web.limits.ip_key``).
    """

    conn_id: ConnId
    peer: Peer
    ip: str


@attrs.frozen
class Inbound:
    """A decoded frame from ``conn_id`` (possibly an ``Invalid`` one); ``identity`` is what the
    connection had registered as when the frame was read, for a service that does not own the
    registration itself (``None`` before any)."""

    conn_id: ConnId
    message: Any
    identity: Identity | None = None


@attrs.frozen
class Detach:
    """A connection closed, for any reason: run its cleanup.

    ``lost``: the connection was lost with its node (docs/cluster.md): state that outlives a
    node is kept. A service that keeps no such state treats it as any other ``Detach``.
    """

    conn_id: ConnId
    lost: bool = False


class PeerTable:
    """The connections a service pushes frames to, with the slow-consumer rule.

    A frame for ``sender`` (the connection whose frame is being handled) is an answer and always
    queued. Any other frame is a push; a push the peer refuses means a slow client: it is closed
    with 1013 and forgotten, and the frames its cleanup produces (``drop(conn)``) are delivered
    too (docs/operations.md, "Limits and back-pressure").
    """

    def __init__(self, log: logging.Logger) -> None:
        self._peers: dict[ConnId, Peer] = {}
        self._log = log

    def attach(self, conn: ConnId, peer: Peer) -> None:
        self._peers[conn] = peer

    def detach(self, conn: ConnId) -> None:
        self._peers.pop(conn, None)

    def identify(self, conn: ConnId, identity: Identity) -> None:
        """Tell ``conn``'s front end who it registered as."""
        peer = self._peers.get(conn)
        if peer is not None:
            peer.identify(identity)

    def __contains__(self, conn: ConnId) -> bool:
        return conn in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def deliver(
        self,
        outs: list[Out],
        drop: Callable[[ConnId], list[Out]],
        sender: ConnId | None = None,
    ) -> None:
        """Queue every frame of ``outs``; never waits. ``sender``: the connection whose frame
        produced them (``None`` for timers): frames to it are answers."""
        index = 0
        while index < len(outs):
            conn, frame = outs[index]
            index += 1
            if not self._send(conn, encode(frame), sender):
                outs.extend(drop(conn))

    def relays_by_routes(self, conn: ConnId) -> bool:
        """Whether ``conn``'s peer relays frames itself once told its routes (a connection of a
        cluster edge, ``RoutedPeer``)."""
        return isinstance(self._peers.get(conn), RoutedPeer)

    def relay_routes(self, conn: ConnId, code: str | None, routes: dict[str, ConnId]) -> None:
        """Tell ``conn``'s peer that it holds ``code`` and may relay to each code of ``routes``,
        whose connection is given (docs/cluster.md, "Direct relay")."""
        peer = self._peers.get(conn)
        if isinstance(peer, RoutedPeer):
            targets = {target: self._peers.get(other) for target, other in routes.items()}
            peer.relay_routes(
                code, {target: other for target, other in targets.items() if other is not None}
            )

    def handled(self, sender: ConnId) -> None:
        """Tell ``sender`` that its frame has been handled: every answer to it is queued."""
        peer = self._peers.get(sender)
        if peer is not None:
            peer.handled()

    def multicast(
        self,
        conns: Sequence[ConnId],
        text: str,
        drop: Callable[[ConnId], list[Out]],
        sender: ConnId | None = None,
    ) -> None:
        """Queue one already encoded frame to every connection of ``conns``: the frame is
        encoded once however many wait for it, and a slow one never delays the others."""
        dropped = [conn for conn in conns if not self._send(conn, text, sender)]
        for conn in dropped:
            self.deliver(drop(conn), drop)

    def _send(self, conn: ConnId, text: str, sender: ConnId | None) -> bool:
        """Queue ``text`` to ``conn``; False when ``conn`` was just dropped as slow."""
        peer = self._peers.get(conn)
        if peer is None:
            return True
        if conn == sender:
            peer.answer_nowait(text)
            return True
        if peer.send_nowait(text):
            return True
        self._log.warning("slow consumer disconnected", extra=context(conn=conn))
        del self._peers[conn]
        peer.close(CLOSE_TRY_AGAIN_LATER)
        return False
