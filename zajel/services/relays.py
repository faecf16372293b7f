"""The relay registry: peers that relay traffic for others (``docs/protocol/relay.md``, "register"
and "Availability").

``RelayRegistryState`` is pure state: no I/O, no clock of its own; methods that record a time
take ``now`` (trio seconds).

Invariants the state keeps:
- One entry per peer id; ``max_connections`` is at least 1 (the protocol layer checks 1-1000),
  so ``capacity = connected_count / max_connections`` is always defined.
- Re-registering keeps ``connected_count`` and ``registered_at``, replaces ``max_connections``
  and ``public_key``, and refreshes ``last_update``.
- A relay is available when its capacity is strictly below ``AVAILABLE_BELOW``; ``_available``
  holds exactly the available peer ids (in no meaningful order) and ``_slot`` each one's index
  in it, so a relay joins or leaves the list in O(1).
- ``_capacity_total`` and ``_connected_total`` are the exact sums over the relays.

Work: ``available`` costs O(count) whatever the number of relays (a partial Fisher-Yates
shuffle over ``_available``), and ``statistics`` O(1); no request scans the registry.

TTLs: none. An entry lives until ``remove`` (the connection's disconnect, docs/protocol/relay.md,
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
        self._available: list[str] = []  # the available relays' peer ids
        self._slot: dict[str, int] = {}  # peer id -> its index in _available
        self._capacity_total = 0
        self._connected_total = 0

    def register(
        self, peer_id: str, max_connections: int, public_key: str | None, now: float
    ) -> None:
        """Add ``peer_id``, or update it keeping its load and registration time."""
        relay = self._relays.get(peer_id)
        if relay is None:
            relay = self._relays[peer_id] = _Relay(max_connections, public_key, now, now)
        else:
            self._capacity_total -= relay.max_connections
            relay.max_connections = max_connections
            relay.public_key = public_key
            relay.last_update = now
        self._capacity_total += max_connections
        self._place(peer_id, relay)

    def update_load(self, peer_id: str, connected_count: int, now: float) -> bool:
        """Record ``peer_id``'s current load. Returns False if it is not registered."""
        relay = self._relays.get(peer_id)
        if relay is None:
            return False
        self._connected_total += connected_count - relay.connected_count
        relay.connected_count = connected_count
        relay.last_update = now
        self._place(peer_id, relay)
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
        # A partial Fisher-Yates shuffle, written out so the unbiased algorithm is visible
        # (docs/protocol/relay.md, "Availability"): each position i, from the front, takes a
        # uniformly chosen element of positions i..n-1, so the first k positions are a uniform
        # random k-permutation. One more than asked covers ``exclude``: the others' order among the
        # first k + 1 is the order of a uniform permutation of them all. The list is shuffled in
        # place; its order means nothing, and every call draws afresh.
        shuffled = self._available
        size = len(shuffled)
        randrange = self._rng.randrange
        for i in range(min(count + 1, size)):
            j = randrange(i, size)
            shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
            self._slot[shuffled[i]] = i
            self._slot[shuffled[j]] = j
        picked = [peer_id for peer_id in shuffled[: count + 1] if peer_id != exclude][:count]
        return [
            {
                "peerId": peer_id,
                "publicKey": self._relays[peer_id].public_key,
                "capacity": self._relays[peer_id].capacity,
            }
            for peer_id in picked
        ]

    def remove(self, peer_id: str) -> None:
        """Forget ``peer_id``; an unknown peer is ignored."""
        relay = self._relays.pop(peer_id, None)
        if relay is not None:
            self._capacity_total -= relay.max_connections
            self._connected_total -= relay.connected_count
            self._leave(peer_id)

    def __contains__(self, peer_id: str) -> bool:
        return peer_id in self._relays

    def __len__(self) -> int:
        return len(self._relays)

    def statistics(self) -> dict[str, int]:
        """The registry's ``/stats`` record (docs/protocol/relay.md, "GET /stats"); O(1)."""
        return {
            "totalPeers": len(self._relays),
            "totalCapacity": self._capacity_total,
            "totalConnected": self._connected_total,
            "availableRelays": len(self._available),
        }

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (memory-bound tests expect all zero when idle)."""
        return {
            "relays": len(self._relays),
            "available": len(self._available),
            "slots": len(self._slot),
        }

    def _place(self, peer_id: str, relay: _Relay) -> None:
        """Keep ``_available`` exact after ``relay``'s capacity may have changed."""
        if relay.capacity < AVAILABLE_BELOW:
            if peer_id not in self._slot:
                self._slot[peer_id] = len(self._available)
                self._available.append(peer_id)
        else:
            self._leave(peer_id)

    def _leave(self, peer_id: str) -> None:
        """Take ``peer_id`` out of ``_available`` (if there): the last id fills its slot."""
        index = self._slot.pop(peer_id, None)
        if index is None:
            return
        last = self._available.pop()
        if last != peer_id:
            self._available[index] = last
            self._slot[last] = index
