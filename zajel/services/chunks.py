"""The chunk index and cache: peers announce the chunks they hold, and many requests for one
chunk become one pull from one source and one multicast push (``../shared/spec/relay.md``,
"Chunk distribution" and "Disconnect").

``ChunkIndexState`` is pure state: no I/O; every method that depends on time takes ``now``
(trio seconds) and returns a ``ChunkResult``: single frames to single peers (``outs``) and
``chunk_data`` frames each shared by a group of peers (``deliveries``, encoded once).

Invariants the state keeps:
- A peer is a source of a chunk at most once; announcing again refreshes the expiry and makes
  it the most recently announced source (the one a new pull prefers).
- A peer has at most one pending request per chunk; requesting again refreshes the expiry and
  replaces the ``channelId`` but keeps its place in arrival order.
- At most one pull is in flight per chunk, to exactly one peer. Its ``tried`` set holds every
  peer pulled in the current round, so a timed-out or departed source is not pulled again
  until a later request starts a new round.
- A chunk with a live cached copy has no pending requests: a request for it is answered from
  the cache at once, and a push clears every pending request for the chunk.
- A pull is only sent to a live source that is not itself waiting for the chunk (an announce
  withdraws the announcer's own pending request for that chunk: it holds the chunk now).
- ``_peer_sources``, ``_peer_pending`` and ``_peer_pulls`` are exact per-peer indexes, so
  ``remove_peer`` costs time proportional to that peer's entries. No map or set is ever left
  empty, and every entry has exactly one deadline in ``_deadlines``, so every map is empty once
  every peer is removed and every entry has expired and been swept.
- Lookups treat an entry as live while ``now < expires_at``, even before ``expire`` sweeps it.

TTLs: a source lives ``SOURCE_TTL_S`` (1 h) from its latest announce; a pending request
``PENDING_TTL_S`` (5 min) from its latest request; a cached chunk ``CACHE_TTL_S`` (30 min) from
its latest push (a hit refreshes its LRU recency, not its expiry); a pull ``PULL_TIMEOUT_S``
(10 s), after which the next untried live source is pulled, or, with none left, the pull is
given up and the requesters keep waiting (a later announce or request pulls again).

Memory: the cache holds at most ``cache_max`` chunks (least recently used evicted first). The
other maps hold what live connections announced or requested within their TTLs, bounded by the
per-message limits and rate limits of conventions.md; ``remove_peer`` clears a peer at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final, Literal

import attrs

from zajel.services._deadlines import Deadlines
from zajel.services._index import discard as _discard
from zajel.services._index import remove as _remove

SOURCE_TTL_S: Final = 3600.0
PENDING_TTL_S: Final = 300.0
PULL_TIMEOUT_S: Final = 10.0
CACHE_TTL_S: Final = 1800.0
CACHE_MAX: Final = 1000
# What one peer may hold at once: without these, a client announcing or requesting new chunk
# ids at the message rate would grow the index for an hour (sources) or 5 minutes (requests).
MAX_SOURCES_PER_PEER: Final = 10_000
MAX_PENDING_PER_PEER: Final = 1_000
TOO_MANY_PENDING: Final = "Too many pending chunk requests"

NOT_FOUND_MESSAGE: Final = "No online sources available. You will be notified when available."


@attrs.frozen
class Announced:
    """One valid entry of a ``chunk_announce``."""

    chunk_id: str
    routing_hash: str


@attrs.frozen
class ChunkOut:
    """One frame to one peer."""

    peer_id: str
    frame: dict[str, Any]


@attrs.frozen
class Delivery:
    """One ``chunk_data`` frame to send, unchanged, to every peer in ``peer_ids``."""

    frame: dict[str, Any]
    peer_ids: tuple[str, ...]


@attrs.frozen
class ChunkResult:
    outs: list[ChunkOut] = attrs.field(factory=list)
    deliveries: list[Delivery] = attrs.field(factory=list)


class ChunkError(Exception):
    """A domain failure the caller renders as an error frame (code ``not_a_source``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.define
class _Source:
    routing_hash: str
    expires_at: float


@attrs.define
class _Pending:
    channel_id: str | None
    expires_at: float


@attrs.define
class _Pull:
    peer_id: str
    tried: set[str]


@attrs.define
class _Cached:
    data: Any
    expires_at: float
    hits: int = 0


# Deadline keys: ("source", chunk, peer), ("pending", chunk, peer), ("pull", chunk, ""),
# ("cache", chunk, "").
_Key = tuple[Literal["source", "pending", "pull", "cache"], str, str]


class ChunkIndexState:
    """Sources, pending requests, pulls in flight and the cache of chunks. No I/O."""

    def __init__(
        self,
        *,
        cache_max: int = CACHE_MAX,
        max_sources_per_peer: int = MAX_SOURCES_PER_PEER,
        max_pending_per_peer: int = MAX_PENDING_PER_PEER,
    ) -> None:
        self._cache_max = cache_max
        self._max_sources_per_peer = max_sources_per_peer
        self._max_pending_per_peer = max_pending_per_peer
        self._sources: dict[str, dict[str, _Source]] = {}  # chunk -> peer -> source (by announce)
        self._pending: dict[str, dict[str, _Pending]] = {}  # chunk -> peer -> request (by arrival)
        self._pulls: dict[str, _Pull] = {}  # chunk -> the pull in flight
        self._cache: OrderedDict[str, _Cached] = OrderedDict()  # least recently used first
        self._peer_sources: dict[str, set[str]] = {}  # peer -> chunks it is a source of
        self._peer_pending: dict[str, set[str]] = {}  # peer -> chunks it waits for
        self._peer_pulls: dict[str, set[str]] = {}  # peer -> chunks a pull in flight targets
        self._deadlines: Deadlines[_Key] = Deadlines()
        self._cache_hits = 0
        self._cache_misses = 0
        self._pulls_sent = 0

    # -- messages ------------------------------------------------------------------------

    def announce(
        self, peer_id: str, chunks: Sequence[Announced], channel_id: str | None, now: float
    ) -> ChunkResult:
        """``peer_id`` holds ``chunks`` (relay.md ``chunk_announce``).

        The ack comes first; then a ``chunk_pull`` to ``peer_id`` for each chunk that has
        waiting requesters, no cached copy and no pull in flight. ``channel_id`` is the
        announce's own and does not change which channel a pull echoes.
        """
        ack: dict[str, Any] = {"type": "chunk_announce_ack", "registered": 0}
        outs = [ChunkOut(peer_id, ack)]
        held = self._peer_sources.get(peer_id, set())
        for chunk in chunks:
            chunk_id = chunk.chunk_id
            if chunk_id not in held and len(held) >= self._max_sources_per_peer:
                continue  # over the per-peer cap: skipped and not counted, like an invalid entry
            ack["registered"] += 1
            sources = self._sources.setdefault(chunk_id, {})
            sources.pop(peer_id, None)  # re-insert: the latest announce is the most recent
            expires_at = now + SOURCE_TTL_S
            sources[peer_id] = _Source(chunk.routing_hash, expires_at)
            held = self._peer_sources.setdefault(peer_id, held)
            held.add(chunk_id)
            self._deadlines.schedule(("source", chunk_id, peer_id), expires_at)
            self._drop_pending(chunk_id, peer_id)  # it holds the chunk now
            if (
                chunk_id not in self._pulls
                and self._has_waiters(chunk_id, now)
                and self._live_cached(chunk_id, now) is None
            ):
                outs.append(self._start_pull(chunk_id, peer_id, {peer_id}, now))
        return ChunkResult(outs)

    def request(
        self, peer_id: str, chunk_id: str, channel_id: str | None, now: float
    ) -> ChunkResult:
        """``peer_id`` wants ``chunk_id`` (relay.md ``chunk_request``).

        A live cached copy is delivered at once. Otherwise the peer waits, and unless a pull is
        already in flight the most recently announced live source is pulled; with no source
        the peer is told ``chunk_not_found`` and keeps waiting.
        """
        cached = self._live_cached(chunk_id, now)
        if cached is not None:
            cached.hits += 1
            self._cache.move_to_end(chunk_id)
            self._cache_hits += 1
            frame = _chunk_data(chunk_id, cached.data, "cache", channel_id)
            return ChunkResult(deliveries=[Delivery(frame, (peer_id,))])

        waiting = self._peer_pending.get(peer_id, ())
        if chunk_id not in waiting and len(waiting) >= self._max_pending_per_peer:
            return ChunkResult(
                [
                    ChunkOut(
                        peer_id,
                        {"type": "error", "code": "rate_limited", "message": TOO_MANY_PENDING},
                    )
                ]
            )
        self._cache_misses += 1
        expires_at = now + PENDING_TTL_S
        pending = self._pending.setdefault(chunk_id, {})
        entry = pending.get(peer_id)
        if entry is None:
            pending[peer_id] = _Pending(channel_id, expires_at)
        else:  # keeps its place in arrival order
            entry.channel_id = channel_id
            entry.expires_at = expires_at
        self._peer_pending.setdefault(peer_id, set()).add(chunk_id)
        self._deadlines.schedule(("pending", chunk_id, peer_id), expires_at)

        if chunk_id in self._pulls:
            return ChunkResult()
        source = self._pick_source(chunk_id, set(), now)
        if source is None:
            not_found = {
                "type": "chunk_not_found",
                "chunkId": chunk_id,
                "message": NOT_FOUND_MESSAGE,
            }
            return ChunkResult([ChunkOut(peer_id, not_found)])
        return ChunkResult([self._start_pull(chunk_id, source, {source}, now)])

    def push(self, peer_id: str, chunk_id: str, data: Any, now: float) -> ChunkResult:
        """``peer_id`` sends ``chunk_id`` (relay.md ``chunk_push``); the caller checked its size.

        The chunk is cached, the pull in flight ends, and every waiting requester but the pusher
        gets ``chunk_data`` (one ``Delivery`` per distinct ``channelId``, in arrival order of
        each group's first requester). The pusher's own pending request, if any, is dropped.

        Raises:
            ChunkError: ``not_a_source`` unless ``peer_id`` is a live source of the chunk or
                the peer a pull for it is in flight to; nothing changes then.
        """
        source = self._sources.get(chunk_id, {}).get(peer_id)
        pull = self._pulls.get(chunk_id)
        if not (
            (source is not None and now < source.expires_at)
            or (pull is not None and pull.peer_id == peer_id)
        ):
            raise ChunkError("not_a_source", "Not a source for this chunk")

        self._store(chunk_id, data, now)
        if pull is not None:
            self._end_pull(chunk_id)

        groups: dict[str | None, list[str]] = {}
        for requester, pending in self._pending.pop(chunk_id, {}).items():
            self._deadlines.cancel(("pending", chunk_id, requester))
            _discard(self._peer_pending, requester, chunk_id)
            if requester != peer_id and now < pending.expires_at:
                groups.setdefault(pending.channel_id, []).append(requester)
        deliveries = [
            Delivery(_chunk_data(chunk_id, data, "relay", channel), tuple(peers))
            for channel, peers in groups.items()
        ]
        ack = ChunkOut(peer_id, {"type": "chunk_push_ack", "chunkId": chunk_id})
        return ChunkResult([ack], deliveries)

    def remove_peer(self, peer_id: str, now: float) -> ChunkResult:
        """``peer_id`` disconnected (relay.md "Disconnect"); unknown peer: no-op.

        Its sources and pending requests go; each pull in flight to it moves to the next live
        untried source (a ``chunk_pull`` in ``outs``) or, with none, is dropped while the
        requesters keep waiting until their TTL.
        """
        for chunk_id in self._peer_sources.pop(peer_id, ()):
            _remove(self._sources, chunk_id, peer_id)
            self._deadlines.cancel(("source", chunk_id, peer_id))
        for chunk_id in self._peer_pending.pop(peer_id, ()):
            _remove(self._pending, chunk_id, peer_id)
            self._deadlines.cancel(("pending", chunk_id, peer_id))
        outs: list[ChunkOut] = []
        for chunk_id in sorted(self._peer_pulls.get(peer_id, ())):
            out = self._retry_pull(chunk_id, now)
            if out is not None:
                outs.append(out)
        return ChunkResult(outs)

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """The earliest pull time-out or source, request or cache expiry (``inf`` if none)."""
        return self._deadlines.next_deadline()

    def expire(self, now: float) -> ChunkResult:
        """Fire every deadline at or before ``now``, earliest first.

        A timed-out pull moves to the next live untried source (a ``chunk_pull``) or is given
        up; expired sources, pending requests and cached chunks are removed.
        """
        outs: list[ChunkOut] = []
        for kind, chunk_id, peer_id in self._deadlines.pop_due(now):
            if kind == "source":
                _remove(self._sources, chunk_id, peer_id)
                _discard(self._peer_sources, peer_id, chunk_id)
            elif kind == "pending":
                _remove(self._pending, chunk_id, peer_id)
                _discard(self._peer_pending, peer_id, chunk_id)
            elif kind == "cache":
                del self._cache[chunk_id]
            else:
                out = self._retry_pull(chunk_id, now)
                if out is not None:
                    outs.append(out)
        return ChunkResult(outs)

    # -- queries -------------------------------------------------------------------------

    def statistics(self, now: float) -> dict[str, int]:
        """Live entries at ``now`` (expired but unswept ones not counted) and the counters."""
        tracked = total_sources = 0
        for sources in self._sources.values():
            live = sum(1 for source in sources.values() if now < source.expires_at)
            total_sources += live
            tracked += live > 0
        return {
            "trackedChunks": tracked,
            "totalSources": total_sources,
            "cachedChunks": sum(1 for entry in self._cache.values() if now < entry.expires_at),
            "pendingRequests": sum(
                1
                for pending in self._pending.values()
                for entry in pending.values()
                if now < entry.expires_at
            ),
            "cacheHits": self._cache_hits,
            "cacheMisses": self._cache_misses,
            "pullsSent": self._pulls_sent,
        }

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (memory-bound tests expect all zero when idle)."""
        return {
            "source_chunks": len(self._sources),
            "source_entries": sum(len(sources) for sources in self._sources.values()),
            "pending_chunks": len(self._pending),
            "pending_entries": sum(len(pending) for pending in self._pending.values()),
            "pulls": len(self._pulls),
            "pull_tried": sum(len(pull.tried) for pull in self._pulls.values()),
            "cache": len(self._cache),
            "peer_sources": len(self._peer_sources),
            "peer_pending": len(self._peer_pending),
            "peer_pulls": len(self._peer_pulls),
            "deadlines": len(self._deadlines),
        }

    def cached_hits(self, chunk_id: str) -> int | None:
        """The hit count of the cached copy of ``chunk_id``, or ``None`` if none is held."""
        entry = self._cache.get(chunk_id)
        return None if entry is None else entry.hits

    # -- internals -----------------------------------------------------------------------

    def _live_cached(self, chunk_id: str, now: float) -> _Cached | None:
        """The live cached copy; an expired one still waiting for the sweep is removed."""
        entry = self._cache.get(chunk_id)
        if entry is not None and now >= entry.expires_at:
            del self._cache[chunk_id]
            self._deadlines.cancel(("cache", chunk_id, ""))
            return None
        return entry

    def _store(self, chunk_id: str, data: Any, now: float) -> None:
        """Cache ``data`` for 30 min as the most recently used entry, keeping its hit count;
        evict the least recently used entries past ``cache_max``."""
        expires_at = now + CACHE_TTL_S
        entry = self._cache.get(chunk_id)
        if entry is None:
            self._cache[chunk_id] = _Cached(data, expires_at)
        else:
            entry.data = data
            entry.expires_at = expires_at
            self._cache.move_to_end(chunk_id)
        self._deadlines.schedule(("cache", chunk_id, ""), expires_at)
        while len(self._cache) > max(self._cache_max, 0):
            evicted, _ = self._cache.popitem(last=False)
            self._deadlines.cancel(("cache", evicted, ""))

    def _has_waiters(self, chunk_id: str, now: float) -> bool:
        return any(now < entry.expires_at for entry in self._pending.get(chunk_id, {}).values())

    def _pick_source(self, chunk_id: str, tried: set[str], now: float) -> str | None:
        """The most recently announced live source not in ``tried`` and not itself waiting."""
        waiting = self._pending.get(chunk_id, {})
        for peer_id in reversed(self._sources.get(chunk_id, {})):
            source = self._sources[chunk_id][peer_id]
            if now < source.expires_at and peer_id not in tried and peer_id not in waiting:
                return peer_id
        return None

    def _pull_frame(self, chunk_id: str, now: float) -> dict[str, Any]:
        """``chunk_pull``, echoing the ``channelId`` of the first live requester that had one."""
        frame: dict[str, Any] = {"type": "chunk_pull", "chunkId": chunk_id}
        for entry in self._pending.get(chunk_id, {}).values():
            if entry.channel_id is not None and now < entry.expires_at:
                frame["channelId"] = entry.channel_id
                break
        return frame

    def _start_pull(self, chunk_id: str, peer_id: str, tried: set[str], now: float) -> ChunkOut:
        """Record a pull of ``chunk_id`` in flight to ``peer_id`` (10 s) and return the frame."""
        self._pulls[chunk_id] = _Pull(peer_id, tried)
        self._peer_pulls.setdefault(peer_id, set()).add(chunk_id)
        self._deadlines.schedule(("pull", chunk_id, ""), now + PULL_TIMEOUT_S)
        self._pulls_sent += 1
        return ChunkOut(peer_id, self._pull_frame(chunk_id, now))

    def _end_pull(self, chunk_id: str) -> _Pull:
        pull = self._pulls.pop(chunk_id)
        _discard(self._peer_pulls, pull.peer_id, chunk_id)
        self._deadlines.cancel(("pull", chunk_id, ""))
        return pull

    def _retry_pull(self, chunk_id: str, now: float) -> ChunkOut | None:
        """End the pull in flight for ``chunk_id`` (timed out, or its peer left) and pull the
        next live untried source, if anyone still waits and such a source exists."""
        pull = self._end_pull(chunk_id)
        if not self._has_waiters(chunk_id, now):
            return None
        source = self._pick_source(chunk_id, pull.tried, now)
        if source is None:
            return None
        pull.tried.add(source)
        return self._start_pull(chunk_id, source, pull.tried, now)

    def _drop_pending(self, chunk_id: str, peer_id: str) -> None:
        if peer_id in self._pending.get(chunk_id, {}):
            _remove(self._pending, chunk_id, peer_id)
            _discard(self._peer_pending, peer_id, chunk_id)
            self._deadlines.cancel(("pending", chunk_id, peer_id))


def _chunk_data(
    chunk_id: str, data: Any, source: Literal["relay", "cache"], channel_id: str | None
) -> dict[str, Any]:
    """A ``chunk_data`` frame; ``channelId`` is omitted, not null, when there is none."""
    frame: dict[str, Any] = {
        "type": "chunk_data",
        "chunkId": chunk_id,
        "data": data,
        "source": source,
    }
    if channel_id is not None:
        frame["channelId"] = channel_id
    return frame
