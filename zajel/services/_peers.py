"""Connection-level messages every WebSocket service understands, and the peer handle."""

from __future__ import annotations

from typing import Any, Protocol

import attrs

ConnId = int

# WebSocket close codes a service may ask for (RFC 6455 §7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class Peer(Protocol):
    """One client connection, as a service sees it: a bounded queue and a way to drop it."""

    def send_nowait(self, frame: str) -> bool:
        """Queue one encoded frame; False when the queue is full (a slow client)."""

    def close(self, code: int) -> None:
        """Close the connection with ``code``; the front end then sends ``Detach``."""


@attrs.frozen
class Attach:
    """A connection opened: frames for ``conn_id`` go to ``peer``."""

    conn_id: ConnId
    peer: Peer


@attrs.frozen
class Inbound:
    """A decoded frame from ``conn_id`` (possibly an ``Invalid`` one)."""

    conn_id: ConnId
    message: Any


@attrs.frozen
class Detach:
    """A connection closed, for any reason: run its cleanup."""

    conn_id: ConnId
