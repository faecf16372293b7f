"""The relay registry: peers that relay traffic for others (``../shared/spec/relay.md``,
"Relay registry").

``RelayRegistryState`` is pure state: no I/O, no clock of its own; methods that record a time
take ``now`` (trio seconds).

Invariants the state keeps:
- One entry per peer id; ``max_connections`` is at least 1 (the protocol layer checks 1-1000),
  so ``capacity = connected_count / max_connections`` is always defined.
- Re-registering keeps ``connected_count`` and ``registered_at``, replaces ``max_connections``
  and ``public_key``, and refreshes ``last_update``.
- A relay is available when its capacity is strictly below ``AVAILABLE_BELOW``.

TTLs: none. An entry lives until ``remove`` (the connection's disconnect, relay.md
"Disconnect"); ``last_update`` is recorded for liveness reporting only.
"""

from __future__ import annotations

import random
from typing import Any, Final

import attrs

AVAILABLE_BELOW: Final = 0.5


@attrs.define
class _Relay:
    max_connections: int
    public_key: str | None
    registered_at: float
    last_update: float
    connected_count: int = 0

    @property
    def capacity(self) -> float:
        return self.connected_count / self.max_connections


class RelayRegistryState:
    """Registered relays by peer id. No I/O."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng: random.Random = rng if rng is not None else random.SystemRandom()
        self._relays: dict[str, _Relay] = {}

    def register(
        self, peer_id: str, max_connections: int, public_key: str | None, now: float
    ) -> None:
        """Add ``peer_id``, or update it keeping its load and registration time."""
        relay = self._relays.get(peer_id)
        if relay is None:
            self._relays[peer_id] = _Relay(max_connections, public_key, now, now)
            return
        relay.max_connections = max_connections
        relay.public_key = public_key
        relay.last_update = now

    def update_load(self, peer_id: str, connected_count: int, now: float) -> bool:
        """Record ``peer_id``'s current load. Returns False if it is not registered."""
        relay = self._relays.get(peer_id)
        if relay is None:
            return False
        relay.connected_count = connected_count
        relay.last_update = now
        return True

    def heartbeat(self, peer_id: str, now: float) -> bool:
        """Refresh ``peer_id``'s ``last_update``. Returns False if it is not registered."""
        relay = self._relays.get(peer_id)
        if relay is None:
            return False
        relay.last_update = now
        return True

    def available(self, *, exclude: str, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` available relays other than ``exclude``, in a fresh random order.

        Each is a RelayInfo ``{"peerId", "publicKey", "capacity"}``.
        """
        if count <= 0:
            return []
        candidates = [
            (peer_id, relay)
            for peer_id, relay in self._relays.items()
            if peer_id != exclude and relay.capacity < AVAILABLE_BELOW
        ]
        # Fisher-Yates, written out so the unbiased algorithm is visible (relay.md): each
        # position i, from the end, takes a uniformly chosen element of positions 0..i.
        randrange = self._rng.randrange
        for i in range(len(candidates) - 1, 0, -1):
            j = randrange(i + 1)
            candidates[i], candidates[j] = candidates[j], candidates[i]
        return [
            {"peerId": peer_id, "publicKey": relay.public_key, "capacity": relay.capacity}
            for peer_id, relay in candidates[:count]
        ]

    def remove(self, peer_id: str) -> None:
        """Forget ``peer_id``; an unknown peer is ignored."""
        self._relays.pop(peer_id, None)

    def __contains__(self, peer_id: str) -> bool:
        return peer_id in self._relays

    def __len__(self) -> int:
        return len(self._relays)

    def statistics(self) -> dict[str, int]:
        """The registry's ``/stats`` record (relay.md "Relay registry")."""
        return {
            "totalPeers": len(self._relays),
            "totalCapacity": sum(relay.max_connections for relay in self._relays.values()),
            "totalConnected": sum(relay.connected_count for relay in self._relays.values()),
            "availableRelays": sum(
                1 for relay in self._relays.values() if relay.capacity < AVAILABLE_BELOW
            ),
        }
