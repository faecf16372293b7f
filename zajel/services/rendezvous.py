"""The rendezvous registry: trusted peers find each other again through daily meeting points
and hourly tokens (``docs/protocol/relay.md``, "Rendezvous").

``RendezvousState`` is pure state: no I/O; every method that depends on time takes ``now``
(trio seconds). ``register`` returns the caller's reply and the pushes to the matched peers.

Invariants the state keeps:
- A peer holds at most one entry per meeting point and at most one per hourly token;
  registering again replaces it (new dead drop, relay id and expiry) and makes it the newest.
- Every ordered map keeps registration order, oldest first: the entries at a point or token,
  a peer's points and tokens (``_peer_keys``), a client address's entries (``_ip_keys``). So
  every bound below gives way oldest first in O(1) per entry dropped, and a lookup reads the
  entries at a point newest first without sorting.
- ``_peer_keys`` and ``_ip_keys`` are exact indexes of the entries, so ``remove_peer`` costs
  time proportional to that peer's entries. Every entry has exactly one deadline in
  ``_expiry``; no point, token or index is ever empty, so every map is empty once every peer is
  removed, or every entry expired and swept. ``_counts`` is the exact number of entries.
- An entry is live while ``now < expires_at``: lookups skip expired entries even before the
  sweep removes them.

Limits (docs/protocol/relay.md, "Limits of rendezvous"):
- One point or token holds at most ``drops_per_point`` entries: the newest; storing one more
  drops the oldest there.
- One peer holds at most ``max_entries_per_peer`` entries of each kind, one client address
  (``ip``, IPv6 by its /64) at most ``entries_per_ip`` entries of both kinds over all its
  connections; past either, the oldest registrations give way.
- A ``rendezvous_result`` carries at most ``reply_bytes`` of list items (compact UTF-8 JSON,
  commas counted): live matches first, then dead drops, each list newest first, each stopping
  at its first item that does not fit. Only the live matches listed are pushed to.
So the work of one ``register`` is bounded by what it brings (at most 50 points and 50 tokens,
docs/protocol/relay.md) times ``drops_per_point``, plus the reply budget; never by the size of
the state.

The journal (cluster mode: the entries live in Redis with their TTLs, so a dead drop outlives
the node that took it; docs/protocol/relay.md, "Rendezvous"). Once enabled, every entry stored
or replaced is recorded as a ``PutEntry`` and every entry removed for any reason but its expiry
(giving way to a bound, ``remove_peer``) as a ``DropEntry``, in the order they happened;
``take_journal`` hands them over with their expiry in epoch milliseconds. An expiry is never
recorded: the store drops the key at its own TTL. ``restore`` loads such entries back into an
empty state, oldest first, as if they were registered again in that order, with the expiry
they had (never later than a TTL from now); what a bound makes give way is journaled as dropped.

TTLs: a daily point entry lives ``DAILY_TTL_S`` (48 h), an hourly token entry
``HOURLY_TTL_S`` (3 h), both from its latest registration. A sweep runs every
``SWEEP_INTERVAL_S`` (5 min): the first is due ``SWEEP_INTERVAL_S`` after the first
``register`` (or the ``restore`` that loaded an entry), each later one ``SWEEP_INTERVAL_S``
after the previous sweep's ``now``; before any registration there is nothing to sweep and
``next_deadline()`` is ``inf``. ``statistics`` removes the entries already expired too, so its
counts are of live entries and cost no scan.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Literal, Protocol

import attrs

from zajel.protocol.frames import encode
from zajel.services._deadlines import Deadlines

DAILY_TTL_S: Final = 48 * 3600
HOURLY_TTL_S: Final = 3 * 3600
SWEEP_INTERVAL_S: Final = 300.0
MAX_ENTRIES_PER_PEER_DEFAULT: Final = 200
DROPS_PER_POINT_DEFAULT: Final = 20
REPLY_BYTES_DEFAULT: Final = 128 << 10
ENTRIES_PER_IP_DEFAULT: Final = 2_000

Kind = Literal["daily", "hourly"]
# An entry's key: (kind, point or token, peer id).
_Key = tuple[Kind, str, str]


@attrs.frozen
class PutEntry:
    """A journaled change: the entry of ``peer_id`` at point or token ``name`` was stored or
    replaced. Also what ``restore`` loads.

    ``expires_ms`` is its expiry in epoch milliseconds; ``ip`` the client address its per-IP
    budget counts by; ``dead_drop`` is always ``""`` at an hourly token.
    """

    kind: Kind
    name: str
    peer_id: str
    dead_drop: str
    relay_id: str | None
    expires_ms: int
    ip: str


@attrs.frozen
class DropEntry:
    """A journaled change: the entry of ``peer_id`` at ``name`` was removed before its expiry
    (it gave way to a bound, or the peer left)."""

    kind: Kind
    name: str
    peer_id: str


Change = PutEntry | DropEntry


class Mirror(Protocol):
    """Where the owner of the rendezvous state sends its journal (cluster mode): a copy of the
    entries kept elsewhere (``zajel.cluster.rendezvous.RendezvousMirror``)."""

    def record(self, changes: list[Change]) -> None:
        """Take ``changes`` (in the order they happened) to write later; never waits."""


@attrs.frozen
class RendezvousOutcome:
    """What one ``register`` produces.

    ``result`` is the caller's ``rendezvous_result`` frame; ``matches`` pairs each live match
    listed in it with the ``rendezvous_match`` frame to push to that peer.
    """

    result: dict[str, Any]
    matches: list[tuple[str, dict[str, Any]]]


@attrs.define
class _Entry:
    dead_drop: str  # always "" at an hourly token
    relay_id: str | None
    expires_at: float
    ip: str
    seq: int  # registration order over the whole state: newest first means highest first


class RendezvousState:
    """Meeting points and hourly tokens with their entries. No I/O."""

    def __init__(
        self,
        *,
        max_entries_per_peer: int = MAX_ENTRIES_PER_PEER_DEFAULT,
        drops_per_point: int = DROPS_PER_POINT_DEFAULT,
        reply_bytes: int = REPLY_BYTES_DEFAULT,
        entries_per_ip: int = ENTRIES_PER_IP_DEFAULT,
        journal: bool = False,
    ) -> None:
        self._max_entries_per_peer = max(max_entries_per_peer, 1)
        self._drops_per_point = max(drops_per_point, 1)
        self._reply_bytes = reply_bytes
        self._entries_per_ip = max(entries_per_ip, 1)
        # kind -> point or token -> peer -> entry
        self._tables: dict[Kind, dict[str, OrderedDict[str, _Entry]]] = {
            "daily": {},
            "hourly": {},
        }
        # kind -> peer -> its points or tokens
        self._peer_keys: dict[Kind, dict[str, OrderedDict[str, None]]] = {
            "daily": {},
            "hourly": {},
        }
        self._ip_keys: dict[str, OrderedDict[_Key, None]] = {}  # client address -> its entries
        self._counts: dict[Kind, int] = {"daily": 0, "hourly": 0}
        self._expiry: Deadlines[_Key] = Deadlines()
        self._next_sweep = math.inf
        self._seq = 0
        # The changes not yet taken, when journaling: the entry stored, or None when dropped.
        self._journal: list[tuple[_Key, _Entry | None]] | None = [] if journal else None

    def register(
        self,
        peer_id: str,
        *,
        daily_points: Sequence[str],
        hourly_tokens: Sequence[str],
        dead_drop_for: Callable[[str], str],
        relay_id: str | None,
        now: float,
        ip: str,
    ) -> RendezvousOutcome:
        """Look up, then record, ``peer_id``'s points and tokens (docs/protocol/relay.md,
        "Rendezvous").

        The reply lists other peers' live entries at the caller's hourly tokens (live matches)
        and their live, non-empty dead drops at its points, each peer once (its newest entry),
        newest first, within the reply's byte budget. Then the caller's entries are stored:
        ``dead_drop_for(point)`` at each point, and an entry at each token; ``ip`` is the
        caller's client address, which the per-IP budget counts by.
        """
        if self._next_sweep == math.inf:
            self._next_sweep = now + SWEEP_INTERVAL_S
        budget = _Budget(self._reply_bytes)
        live = budget.take(
            _with_relay({"peerId": other}, entry.relay_id)
            for other, entry in self._newest("hourly", hourly_tokens, peer_id, now)
        )
        dead_drops = budget.take(
            _with_relay({"peerId": other, "deadDrop": entry.dead_drop}, entry.relay_id)
            for other, entry in self._newest("daily", daily_points, peer_id, now)
            if entry.dead_drop
        )

        daily_until = now + DAILY_TTL_S
        for point in daily_points:
            self._store("daily", point, peer_id, dead_drop_for(point), relay_id, daily_until, ip)
        hourly_until = now + HOURLY_TTL_S
        for token in hourly_tokens:
            self._store("hourly", token, peer_id, "", relay_id, hourly_until, ip)
        self._give_way(peer_id, ip)

        push = {"type": "rendezvous_match", "match": _with_relay({"peerId": peer_id}, relay_id)}
        return RendezvousOutcome(
            result={"type": "rendezvous_result", "liveMatches": live, "deadDrops": dead_drops},
            matches=[(match["peerId"], push) for match in live],
        )

    def remove_peer(self, peer_id: str) -> None:
        """``peer_id`` leaves every point and token (docs/protocol/relay.md, "Disconnect");
        an unknown peer is a no-op."""
        for kind in ("daily", "hourly"):
            for name in list(self._peer_keys[kind].get(peer_id, ())):
                self._drop((kind, name, peer_id))

    # -- the journal ---------------------------------------------------------------------

    def enable_journal(self) -> None:
        """Record every change from now on (see the module docstring); idempotent."""
        if self._journal is None:
            self._journal = []

    @property
    def journal_size(self) -> int:
        """Changes recorded and not yet taken (0 when not journaling)."""
        return 0 if self._journal is None else len(self._journal)

    def take_journal(self, now: float, now_ms: int) -> list[Change]:
        """The changes recorded since the last call, oldest first, and forget them.

        ``now_ms`` is the epoch time, in milliseconds, at trio time ``now``: an entry's expiry
        is recorded as ``now_ms`` plus the time it has left.
        """
        journal = self._journal
        if not journal:
            return []
        self._journal = []
        return [
            DropEntry(*key)
            if entry is None
            else PutEntry(
                *key,
                dead_drop=entry.dead_drop,
                relay_id=entry.relay_id,
                expires_ms=now_ms + round((entry.expires_at - now) * 1000),
                ip=entry.ip,
            )
            for key, entry in journal
        ]

    def restore(self, entries: Iterable[PutEntry], now: float, now_ms: int) -> int:
        """Load ``entries`` (oldest first) into this empty state; returns how many are live.

        ``now_ms`` is the epoch time, in milliseconds, at trio time ``now``. An entry already
        expired at ``now_ms`` is skipped; every other one is stored as a registration at that
        point in the order given, expiring when it did (at most a TTL from ``now``), and every
        bound applies as on ``register``. The entries are not journaled (they come from the
        copy), but what gives way to a bound is, as dropped.
        """
        if self._counts["daily"] or self._counts["hourly"]:
            raise ValueError("restore needs an empty rendezvous state")
        loaded = 0
        for put in entries:
            if put.expires_ms <= now_ms:
                continue
            ttl = DAILY_TTL_S if put.kind == "daily" else HOURLY_TTL_S
            expires_at = now + min((put.expires_ms - now_ms) / 1000, ttl)
            dead_drop = put.dead_drop if put.kind == "daily" else ""
            self._store(
                put.kind,
                put.name,
                put.peer_id,
                dead_drop,
                put.relay_id,
                expires_at,
                put.ip,
                journal=False,
            )
            self._give_way(put.peer_id, put.ip)
            loaded += 1
        if loaded and self._next_sweep == math.inf:
            self._next_sweep = now + SWEEP_INTERVAL_S
        return loaded

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the next sweep is due (``inf`` before the first registration)."""
        return self._next_sweep

    def sweep(self, now: float) -> int:
        """Remove every entry expired at ``now``; returns how many. The next is due in 5 min."""
        removed = self._remove_expired(now)
        self._next_sweep = now + SWEEP_INTERVAL_S
        return removed

    # -- queries -------------------------------------------------------------------------

    def statistics(self, now: float) -> dict[str, int]:
        """Live points, tokens and entries at ``now``: what has expired is removed first (each
        entry once, so over time this costs nothing extra), then the counts are read."""
        self._remove_expired(now)
        daily, hourly = self._counts["daily"], self._counts["hourly"]
        return {
            "dailyPoints": len(self._tables["daily"]),
            "hourlyTokens": len(self._tables["hourly"]),
            "totalEntries": daily + hourly,
            "dailyEntries": daily,
            "hourlyEntries": hourly,
        }

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (memory-bound tests expect all zero when idle)."""
        return {
            "daily_points": len(self._tables["daily"]),
            "daily_entries": sum(len(entries) for entries in self._tables["daily"].values()),
            "hourly_tokens": len(self._tables["hourly"]),
            "hourly_entries": sum(len(entries) for entries in self._tables["hourly"].values()),
            "peer_points": len(self._peer_keys["daily"]),
            "peer_tokens": len(self._peer_keys["hourly"]),
            "ip_keys": len(self._ip_keys),
            "ip_entries": sum(len(keys) for keys in self._ip_keys.values()),
            "counted": self._counts["daily"] + self._counts["hourly"],
            "expiry": len(self._expiry),
            "journal": self.journal_size,
        }

    # -- internals -----------------------------------------------------------------------

    def _newest(
        self, kind: Kind, names: Sequence[str], peer_id: str, now: float
    ) -> Iterator[tuple[str, _Entry]]:
        """Other peers' live entries at ``names``, newest first, each peer once (its newest).

        A lazy merge of the newest-first lists of each point: it reads only as far as the
        caller consumes, and at most ``drops_per_point`` entries per point.
        """
        table = self._tables[kind]
        merged = heapq.merge(
            *(reversed(table[name].items()) for name in names if name in table),
            key=lambda item: item[1].seq,
            reverse=True,
        )
        seen: set[str] = set()
        for other, entry in merged:
            if other != peer_id and other not in seen and now < entry.expires_at:
                seen.add(other)
                yield other, entry

    def _store(
        self,
        kind: Kind,
        name: str,
        peer_id: str,
        dead_drop: str,
        relay_id: str | None,
        expires_at: float,
        ip: str,
        *,
        journal: bool = True,
    ) -> None:
        """Store (or replace) ``peer_id``'s entry at ``name`` as the newest, live until
        ``expires_at``; the oldest at ``name`` gives way past ``drops_per_point``. ``journal``:
        record the entry (when journaling)."""
        key = (kind, name, peer_id)
        self._seq += 1
        entries = self._tables[kind].setdefault(name, OrderedDict())
        old = entries.pop(peer_id, None)
        if old is None:
            self._counts[kind] += 1
        else:
            self._ip_keys[old.ip].pop(key)
        entry = entries[peer_id] = _Entry(dead_drop, relay_id, expires_at, ip, self._seq)
        if journal and self._journal is not None:
            self._journal.append((key, entry))
        _to_end(self._peer_keys[kind].setdefault(peer_id, OrderedDict()), name)
        _to_end(self._ip_keys.setdefault(ip, OrderedDict()), key)
        self._expiry.schedule(key, expires_at)
        while len(entries) > self._drops_per_point:
            self._drop((kind, name, next(iter(entries))))
        if old is not None and not self._ip_keys.get(old.ip, True):
            del self._ip_keys[old.ip]

    def _give_way(self, peer_id: str, ip: str) -> None:
        """Past the per-peer bound of either kind, or the per-IP bound, the oldest entries of
        ``peer_id`` or ``ip`` give way."""
        for kind in ("daily", "hourly"):
            keys = self._peer_keys[kind].get(peer_id)
            while keys is not None and len(keys) > self._max_entries_per_peer:
                self._drop((kind, next(iter(keys)), peer_id))
        held = self._ip_keys.get(ip)
        while held is not None and len(held) > self._entries_per_ip:
            self._drop(next(iter(held)))

    def _drop(self, key: _Key, *, journal: bool = True) -> None:
        """Remove one entry from every map that holds it; ``journal``: record the removal
        (when journaling; an expiry is not recorded)."""
        kind, name, peer_id = key
        entries = self._tables[kind][name]
        entry = entries.pop(peer_id)
        if not entries:
            del self._tables[kind][name]
        keys = self._peer_keys[kind][peer_id]
        del keys[name]
        if not keys:
            del self._peer_keys[kind][peer_id]
        held = self._ip_keys[entry.ip]
        del held[key]
        if not held:
            del self._ip_keys[entry.ip]
        self._counts[kind] -= 1
        self._expiry.cancel(key)
        if journal and self._journal is not None:
            self._journal.append((key, None))

    def _remove_expired(self, now: float) -> int:
        due = self._expiry.pop_due(now)
        for key in due:
            self._drop(key, journal=False)
        return len(due)


class _Budget:
    """The bytes a reply's list items may still take (compact UTF-8 JSON, commas counted)."""

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The leading ``items`` that fit, as one JSON list; stops at the first that does not."""
        taken: list[dict[str, Any]] = []
        for item in items:
            size = len(encode(item).encode("utf-8")) + (1 if taken else 0)
            if size > self.left:
                break
            self.left -= size
            taken.append(item)
        return taken


def _to_end(keys: OrderedDict[Any, None], key: Any) -> None:
    """Insert ``key``, or move it, to the newest end."""
    keys[key] = None
    keys.move_to_end(key)


def _with_relay(fields: dict[str, Any], relay_id: str | None) -> dict[str, Any]:
    """Add ``relayId`` when there is one: an absent value is omitted, not null."""
    if relay_id is not None:
        fields["relayId"] = relay_id
    return fields
