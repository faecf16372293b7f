"""The rendezvous registry: trusted peers find each other again through daily meeting points
and hourly tokens (``../shared/spec/relay.md``, "Rendezvous").

``RendezvousState`` is pure state: no I/O; every method that depends on time takes ``now``
(trio seconds). ``register`` returns the caller's reply and the pushes to the matched peers.

Invariants the state keeps:
- A peer holds at most one entry per meeting point and at most one per hourly token;
  registering again replaces it (new dead drop, relay id and expiry).
- ``_peer_points[p]`` is exactly the set of points holding an entry of ``p`` (likewise
  ``_peer_tokens``), so ``remove_peer`` costs time proportional to that peer's entries.
- Every entry has exactly one deadline in ``_expiry``; no point, token or index set is ever
  empty, so every map is empty once every peer is removed, or every entry expired and swept.
- An entry is live while ``now < expires_at``: lookups skip expired entries even before the
  sweep removes them.

TTLs: a daily point entry lives ``DAILY_TTL_S`` (48 h), an hourly token entry
``HOURLY_TTL_S`` (3 h), both from its latest registration. A sweep runs every
``SWEEP_INTERVAL_S`` (5 min): the first is due ``SWEEP_INTERVAL_S`` after the first
``register``, each later one ``SWEEP_INTERVAL_S`` after the previous sweep's ``now``; before
any registration there is nothing to sweep and ``next_deadline()`` is ``inf``.

Memory: one call adds at most the protocol's per-message limit (50 points and 50 tokens,
conventions.md "Limits"), and one peer holds at most ``max_entries_per_peer`` entries of each
kind (4 x 50 by default: the points of a few days' rotations). Past that, the peer's entries
that expire first are dropped, so a client that keeps registering new points cannot grow the
state without bound. How many peers one point or token holds is bounded by the peers connected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import attrs

from zajel.services._deadlines import Deadlines
from zajel.services._index import discard as _discard
from zajel.services._index import remove as _remove

DAILY_TTL_S: Final = 48 * 3600
HOURLY_TTL_S: Final = 3 * 3600
SWEEP_INTERVAL_S: Final = 300.0
MAX_ENTRIES_PER_PEER_DEFAULT: Final = 200


@attrs.frozen
class RendezvousOutcome:
    """What one ``register`` produces.

    ``result`` is the caller's ``rendezvous_result`` frame; ``matches`` pairs each matched
    peer (at most once, in first-match order) with the ``rendezvous_match`` frame to push to it.
    """

    result: dict[str, Any]
    matches: list[tuple[str, dict[str, Any]]]


@attrs.define
class _DailyEntry:
    dead_drop: str
    relay_id: str | None
    expires_at: float


@attrs.define
class _HourlyEntry:
    relay_id: str | None
    expires_at: float


# Deadline keys: ("daily", point, peer_id) or ("hourly", token, peer_id).
_ExpiryKey = tuple[Literal["daily", "hourly"], str, str]


class RendezvousState:
    """Meeting points and hourly tokens with their entries. No I/O."""

    def __init__(self, *, max_entries_per_peer: int = MAX_ENTRIES_PER_PEER_DEFAULT) -> None:
        self._max_entries_per_peer = max_entries_per_peer
        self._daily: dict[str, dict[str, _DailyEntry]] = {}  # point -> peer -> entry
        self._hourly: dict[str, dict[str, _HourlyEntry]] = {}  # token -> peer -> entry
        self._peer_points: dict[str, set[str]] = {}  # peer -> points it holds an entry at
        self._peer_tokens: dict[str, set[str]] = {}  # peer -> tokens it holds an entry at
        self._expiry: Deadlines[_ExpiryKey] = Deadlines()
        self._next_sweep = math.inf

    def register(
        self,
        peer_id: str,
        *,
        daily_points: Sequence[str],
        hourly_tokens: Sequence[str],
        dead_drop_for: Callable[[str], str],
        relay_id: str | None,
        now: float,
    ) -> RendezvousOutcome:
        """Look up and record ``peer_id``'s points and tokens (relay.md "Rendezvous").

        Daily points first: collect other peers' live, non-empty dead drops at each point, then
        store the caller's ``dead_drop_for(point)``. Then hourly tokens: every other peer with
        a live entry is a live match, then the caller's entry is stored.
        """
        if self._next_sweep == math.inf:
            self._next_sweep = now + SWEEP_INTERVAL_S
        dead_drops: dict[str, dict[str, Any]] = {}  # insertion order = first occurrence
        for point in daily_points:
            entries = self._daily.get(point)
            if entries is not None:
                for other, entry in entries.items():
                    if (
                        other != peer_id
                        and other not in dead_drops
                        and entry.dead_drop
                        and now < entry.expires_at
                    ):
                        dead_drops[other] = _with_relay(
                            {"peerId": other, "deadDrop": entry.dead_drop}, entry.relay_id
                        )
            else:
                entries = self._daily[point] = {}
            expires_at = now + DAILY_TTL_S
            entries[peer_id] = _DailyEntry(dead_drop_for(point), relay_id, expires_at)
            self._peer_points.setdefault(peer_id, set()).add(point)
            self._expiry.schedule(("daily", point, peer_id), expires_at)

        live: dict[str, dict[str, Any]] = {}
        for token in hourly_tokens:
            hourly = self._hourly.get(token)
            if hourly is not None:
                for other, hourly_entry in hourly.items():
                    if other != peer_id and other not in live and now < hourly_entry.expires_at:
                        live[other] = _with_relay({"peerId": other}, hourly_entry.relay_id)
            else:
                hourly = self._hourly[token] = {}
            expires_at = now + HOURLY_TTL_S
            hourly[peer_id] = _HourlyEntry(relay_id, expires_at)
            self._peer_tokens.setdefault(peer_id, set()).add(token)
            self._expiry.schedule(("hourly", token, peer_id), expires_at)

        self._trim(peer_id, "daily", self._daily, self._peer_points)
        self._trim(peer_id, "hourly", self._hourly, self._peer_tokens)
        push = {"type": "rendezvous_match", "match": _with_relay({"peerId": peer_id}, relay_id)}
        return RendezvousOutcome(
            result={
                "type": "rendezvous_result",
                "liveMatches": list(live.values()),
                "deadDrops": list(dead_drops.values()),
            },
            matches=[(other, push) for other in live],
        )

    def _trim(
        self,
        peer_id: str,
        kind: Literal["daily", "hourly"],
        table: dict[str, dict[str, Any]],
        index: dict[str, set[str]],
    ) -> None:
        """Keep at most ``max_entries_per_peer`` of ``peer_id``'s entries of one kind,
        dropping those that expire first (the newest registrations expire last)."""
        keys = index.get(peer_id)
        if keys is None or len(keys) <= self._max_entries_per_peer:
            return
        by_expiry = sorted(keys, key=lambda key: table[key][peer_id].expires_at)
        for key in by_expiry[: len(keys) - self._max_entries_per_peer]:
            _remove(table, key, peer_id)
            keys.discard(key)
            self._expiry.cancel((kind, key, peer_id))

    def remove_peer(self, peer_id: str) -> None:
        """``peer_id`` leaves every point and token (relay.md "Disconnect"); unknown: no-op."""
        for point in self._peer_points.pop(peer_id, ()):
            _remove(self._daily, point, peer_id)
            self._expiry.cancel(("daily", point, peer_id))
        for token in self._peer_tokens.pop(peer_id, ()):
            _remove(self._hourly, token, peer_id)
            self._expiry.cancel(("hourly", token, peer_id))

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the next sweep is due (``inf`` before the first registration)."""
        return self._next_sweep

    def sweep(self, now: float) -> int:
        """Remove every entry expired at ``now``; returns how many. The next is due in 5 min."""
        removed = 0
        for kind, key, peer_id in self._expiry.pop_due(now):
            if kind == "daily":
                _remove(self._daily, key, peer_id)
                _discard(self._peer_points, peer_id, key)
            else:
                _remove(self._hourly, key, peer_id)
                _discard(self._peer_tokens, peer_id, key)
            removed += 1
        self._next_sweep = now + SWEEP_INTERVAL_S
        return removed

    # -- queries -------------------------------------------------------------------------

    def statistics(self, now: float) -> dict[str, int]:
        """Live points, tokens and entries at ``now`` (expired but unswept ones not counted)."""
        daily_points = daily_entries = hourly_tokens = hourly_entries = 0
        for daily in self._daily.values():
            live = sum(1 for entry in daily.values() if now < entry.expires_at)
            daily_entries += live
            daily_points += live > 0
        for hourly in self._hourly.values():
            live = sum(1 for entry in hourly.values() if now < entry.expires_at)
            hourly_entries += live
            hourly_tokens += live > 0
        return {
            "dailyPoints": daily_points,
            "hourlyTokens": hourly_tokens,
            "totalEntries": daily_entries + hourly_entries,
            "dailyEntries": daily_entries,
            "hourlyEntries": hourly_entries,
        }

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (memory-bound tests expect all zero when idle)."""
        return {
            "daily_points": len(self._daily),
            "daily_entries": sum(len(entries) for entries in self._daily.values()),
            "hourly_tokens": len(self._hourly),
            "hourly_entries": sum(len(entries) for entries in self._hourly.values()),
            "peer_points": len(self._peer_points),
            "peer_tokens": len(self._peer_tokens),
            "expiry": len(self._expiry),
        }


def _with_relay(fields: dict[str, Any], relay_id: str | None) -> dict[str, Any]:
    """Add ``relayId`` when there is one: an absent value is omitted, not null."""
    if relay_id is not None:
        fields["relayId"] = relay_id
    return fields
