"""The chunk index and cache: peers announce the chunks they hold, and many requests for one
chunk become one pull and one multicast push (``docs/protocol/chunks.md``).

``ChunkIndexState`` is pure state: no I/O; every method that depends on time takes ``now``
(trio seconds) and returns a ``ChunkResult``: single frames to single peers (``outs``) and
``chunk_data`` frames each shared by a group of peers (``deliveries``, encoded once).

Invariants the state keeps:
- A peer is a source of a chunk at most once; announcing again refreshes the expiry and makes
  it the most recently announced source. A source that let a pull of the chunk time out is
  marked ``withheld`` and is never pulled for that chunk again; the mark lives as long as the
  source entry (re-announcing keeps it).
- A peer has at most one pending request per chunk; requesting again refreshes the expiry and
  replaces the ``channelId`` but keeps its place in arrival order.
- ``_candidates[c]`` holds, in announce order, exactly the sources of ``c`` that a pull may go
  to: not withheld, not waiting for ``c`` themselves, and without an outstanding pull of ``c``.
  Picking a source is therefore O(1) (expired entries not yet swept are dropped as met).
- ``_trusted[c]`` holds the sources of ``c`` whose latest announce spoke for the owner of the
  channel it named; a pull round takes them first.
- ``_pulls[c]`` holds the peers asked to push ``c`` that have neither pushed, left nor timed out
  (each with its own ``PULL_TIMEOUT_S`` deadline). A new pull starts only when none is
  outstanding: a round's first pull goes to one source; after a failure (a time-out or the
  pulled peer leaving) up to ``PULL_HEDGE`` sources are pulled together, and the first push wins.
- A chunk with a live cached copy has no pending requests: a request for it is answered from
  the cache at once, and an accepted push clears every pending request for the chunk. A push
  never replaces a live cached copy.
- The cache holds at most ``cache_max`` entries and ``cache_bytes`` bytes of data, kept as the
  compact UTF-8 JSON the pusher's ``data`` encodes to (never the decoded value); least recently
  used goes first. ``_cache_bytes`` is the exact sum of the cached texts' lengths.
- ``_hit_texts`` keeps, for cached chunks only, the ``chunk_data`` text that answered the last
  cache hit (with its channel), at most ``HIT_TEXTS_BYTES`` in all, least recently used first:
  every requester of a chunk gets the same text, which the front end frames once.
- Per-peer indexes (``_peer_sources``, ``_peer_pending``, ``_peer_pulls``) and per-IP counters
  (``_ip_sources``, ``_ip_pending``) are exact, so ``remove_peer`` costs time proportional to
  that peer's entries and the budgets cost O(1). No map or set is ever left empty, and every
  entry has exactly one deadline in ``_deadlines`` (a ``/signal`` request still owed its
  ``chunk_pulling`` has a second, its notice), so every map is empty once every peer is
  removed and every entry has expired and been swept.
- The counts behind ``statistics`` are kept as entries come and go: no call scans the index.

TTLs: a source lives ``SOURCE_TTL_S`` (1 h) from its latest announce; a pending request
``PENDING_TTL_S`` (5 min) from its latest request, and a ``/signal`` one's ``chunk_pulling``
notice is due ``PULLING_NOTICE_S`` (1 s) after it unless the chunk comes sooner; a cached
chunk ``CACHE_TTL_S`` (30 min) from the push that stored it (a hit refreshes its LRU recency,
not its expiry); a pull ``PULL_TIMEOUT_S`` (10 s). Lookups treat an entry as live while
``now < expires_at``, even before ``expire`` sweeps it.

Memory: the cache is bounded in entries and bytes. A peer is a source of at most
``max_sources_per_peer`` chunks and waits for at most ``max_pending_per_peer``; one client
address (``ip``, IPv6 by its /64) holds at most ``sources_per_ip`` sources and
``pending_per_ip`` pending requests over all its connections. ``remove_peer`` clears a peer at
once. Work per message is proportional to the message (and to the frames it causes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, Final, Generic, Literal, TypeVar

import attrs

from zajel.protocol.frames import encode
from zajel.services._deadlines import Deadlines
from zajel.services._index import discard as _discard
from zajel.services._index import remove as _remove

SOURCE_TTL_S: Final = 3600.0
PENDING_TTL_S: Final = 300.0
PULL_TIMEOUT_S: Final = 10.0
CACHE_TTL_S: Final = 1800.0
CACHE_MAX: Final = 1000
CACHE_BYTES: Final = 64 << 20
# The answers to recent cache hits kept ready beside the cache (docs/architecture.md, "The
# ChunkIndex"): about 350 chunks of 16 KiB, the ones being fetched at the moment.
HIT_TEXTS_BYTES: Final = 8 << 20
# How many sources are pulled together after a pull fails. Bounded, so one time-out never sends
# more than this many frames; taken from both ends of the announce order (see _pull_round).
PULL_HEDGE: Final = 8
# What one peer may hold at once: without these, a client announcing or requesting new chunk
# ids at the message rate would grow the index for an hour (sources) or 5 minutes (requests).
MAX_SOURCES_PER_PEER: Final = 10_000
MAX_PENDING_PER_PEER: Final = 1_000
# What one client address may hold over all its connections
# (docs/protocol/chunks.md, "Limits per client").
SOURCES_PER_IP: Final = 20_000
PENDING_PER_IP: Final = 2_000
TOO_MANY_PENDING: Final = "Too many pending chunk requests"

NOT_FOUND_MESSAGE: Final = "No online sources available. You will be notified when available."
# A waiting /signal requester is told chunk_pulling with the chunk, or this long after its
# request if the chunk has not come by then (docs/protocol/channels.md, "chunk_request"): the
# two frames then leave in one write, not two.
PULLING_NOTICE_S: Final = 1.0
# The channel dialect of /signal (docs/protocol/channels.md, "chunk_request" and "Rules").
NO_SOURCE_MESSAGE: Final = "No source available for chunk"
OTHER_CHANNEL_MESSAGE: Final = "Chunk belongs to another channel"

# A peer as the index knows it: the service's connection id (any hashable key in tests).
P = TypeVar("P", bound=Hashable)


@attrs.frozen
class Announced:
    """One valid entry of a ``chunk_announce``."""

    chunk_id: str
    routing_hash: str


@attrs.frozen
class ChunkOut(Generic[P]):
    """One frame to one peer."""

    peer_id: P
    frame: dict[str, Any]


@attrs.frozen
class Delivery(Generic[P]):
    """One encoded ``chunk_data`` frame to send, unchanged, to every peer in ``peer_ids``."""

    text: str
    peer_ids: tuple[P, ...]


@attrs.frozen
class ChunkResult(Generic[P]):
    outs: list[ChunkOut[P]] = attrs.field(factory=list)
    deliveries: list[Delivery[P]] = attrs.field(factory=list)
    # The chunk ids a ``chunk_announce`` registered, in its order (for ``chunk_available``).
    registered: list[str] = attrs.field(factory=list)


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
    ip: str
    withheld: bool = False  # let a pull of this chunk time out: never pulled for it again
    # The channel a /signal announce named: what a pull to this source names.
    channel_id: str | None = None


@attrs.define
class _Pending:
    channel_id: str | None
    expires_at: float
    ip: str
    # A /signal request: served only a chunk of its own channel (docs/protocol/channels.md).
    strict: bool = False
    # A /signal request still owed its chunk_pulling (a "notice" deadline is set for it).
    owed_notice: bool = False


@attrs.define
class _Cached:
    data_json: bytes  # compact JSON, raw UTF-8: what the byte bound counts
    expires_at: float
    channel_id: str | None  # the channel it was first pushed for, if known
    hits: int = 0


# Deadline keys: ("source", chunk, peer), ("pending", chunk, peer), ("pull", chunk, peer),
# ("notice", chunk, peer), ("cache", chunk, None).
_Key = tuple[Literal["source", "pending", "pull", "notice", "cache"], str, Any]


class ChunkIndexState(Generic[P]):
    """Sources, pending requests, pulls in flight and the cache of chunks. No I/O.

    Both WebSocket dialects share it. A call with ``signal=True`` follows the channel dialect
    of ``/signal`` (docs/protocol/channels.md): a request with no source is refused at once
    (``chunk_error``) instead of waiting, a waiting request is told ``chunk_pulling``, a cached
    chunk is served only to requests naming its channel, an unasked push is cached, and the
    push's acknowledgement says whether the chunk is cached and how many it served.
    """

    def __init__(
        self,
        *,
        cache_max: int = CACHE_MAX,
        cache_bytes: int = CACHE_BYTES,
        max_sources_per_peer: int = MAX_SOURCES_PER_PEER,
        max_pending_per_peer: int = MAX_PENDING_PER_PEER,
        sources_per_ip: int = SOURCES_PER_IP,
        pending_per_ip: int = PENDING_PER_IP,
        pull_hedge: int = PULL_HEDGE,
    ) -> None:
        self._cache_max = cache_max
        self._cache_limit = cache_bytes
        self._max_sources_per_peer = max_sources_per_peer
        self._max_pending_per_peer = max_pending_per_peer
        self._sources_per_ip = sources_per_ip
        self._pending_per_ip = pending_per_ip
        self._pull_hedge = max(pull_hedge, 1)
        self._sources: dict[str, dict[P, _Source]] = {}  # chunk -> peer -> source (by announce)
        self._candidates: dict[str, OrderedDict[P, None]] = {}  # chunk -> pullable sources
        # chunk -> its sources whose latest announce spoke for the channel's owner
        self._trusted: dict[str, set[P]] = {}
        self._pending: dict[str, dict[P, _Pending]] = {}  # chunk -> peer -> request (by arrival)
        self._pulls: dict[str, set[P]] = {}  # chunk -> peers with an outstanding pull
        self._cache: OrderedDict[str, _Cached] = OrderedDict()  # least recently used first
        self._cache_bytes = 0
        # chunk -> (channel, the chunk_data text of its last cache hit); ``_hit_bytes`` their size
        self._hit_texts: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._hit_bytes = 0
        # channel -> its cached chunks, in the order they were cached (oldest first)
        self._channel_cache: dict[str, dict[str, None]] = {}
        self._peer_sources: dict[P, set[str]] = {}  # peer -> chunks it is a source of
        self._peer_pending: dict[P, set[str]] = {}  # peer -> chunks it waits for
        self._peer_pulls: dict[P, set[str]] = {}  # peer -> chunks it was pulled for
        self._ip_sources: dict[str, int] = {}  # client address -> its sources
        self._ip_pending: dict[str, int] = {}  # client address -> its pending requests
        self._deadlines: Deadlines[_Key] = Deadlines()
        self._source_count = 0
        self._pending_count = 0
        self._cache_hits = 0
        self._cache_misses = 0
        self._pulls_sent = 0

    # -- messages ------------------------------------------------------------------------

    def announce(
        self,
        peer_id: P,
        chunks: Sequence[Announced],
        channel_id: str | None,
        now: float,
        *,
        ip: str,
        signal: bool = False,
        trusted: bool = False,
    ) -> ChunkResult[P]:
        """``peer_id`` (from client address ``ip``) holds ``chunks`` (docs/protocol/chunks.md,
        ``chunk_announce``); ``trusted`` when it speaks for the owner of the announce's channel
        (such sources are pulled first: docs/protocol/channels.md, "Rules").

        The ack comes first; then a ``chunk_pull`` to ``peer_id`` for each chunk that has
        waiting requesters, no cached copy and no outstanding pull, unless ``peer_id`` let a pull
        of it time out before. Entries past the per-peer or per-IP budget (for chunks the peer
        does not already hold) are skipped and not counted; the result's ``registered`` lists
        the others. On ``/relay`` ``channel_id`` does not change which channel a pull echoes;
        a pull to a ``/signal`` announcer names the channel of its announce.
        """
        ack: dict[str, Any] = {"type": "chunk_announce_ack", "registered": 0}
        outs = [ChunkOut(peer_id, ack)]
        registered: list[str] = []
        source_channel = channel_id if signal else None
        held = self._peer_sources.get(peer_id, set())
        for chunk in chunks:
            chunk_id = chunk.chunk_id
            sources = self._sources.get(chunk_id)
            old = sources.pop(peer_id, None) if sources is not None else None
            if old is None and (
                len(held) >= self._max_sources_per_peer
                or self._ip_sources.get(ip, 0) >= self._sources_per_ip
            ):
                continue  # over a budget: skipped and not counted, like an invalid entry
            ack["registered"] += 1
            registered.append(chunk_id)
            expires_at = now + SOURCE_TTL_S
            if old is not None:  # the withheld mark outlives a re-announce
                source = _Source(
                    chunk.routing_hash, expires_at, old.ip, old.withheld, source_channel
                )
            else:
                source = _Source(chunk.routing_hash, expires_at, ip, channel_id=source_channel)
                self._source_count += 1
                self._ip_sources[ip] = self._ip_sources.get(ip, 0) + 1
            # Re-inserted: the latest announce is the most recent.
            self._sources.setdefault(chunk_id, {})[peer_id] = source
            if trusted:
                self._trusted.setdefault(chunk_id, set()).add(peer_id)
            else:
                _discard(self._trusted, chunk_id, peer_id)
            held = self._peer_sources.setdefault(peer_id, held)
            held.add(chunk_id)
            self._deadlines.schedule(("source", chunk_id, peer_id), expires_at)
            self._drop_pending(chunk_id, peer_id)  # it holds the chunk now
            self._refresh_candidate(chunk_id, peer_id)
            candidates = self._candidates.get(chunk_id)
            if (
                candidates is not None
                and peer_id in candidates
                and chunk_id not in self._pulls
                and self._has_waiters(chunk_id, now)
                and self._live_cached(chunk_id, now) is None
            ):
                del candidates[peer_id]
                if not candidates:
                    del self._candidates[chunk_id]
                outs.append(
                    self._start_pull(chunk_id, peer_id, self._pull_frame(chunk_id, now), now)
                )
        return ChunkResult(outs, registered=registered)

    def request(
        self,
        peer_id: P,
        chunk_id: str,
        channel_id: str | None,
        now: float,
        *,
        ip: str,
        signal: bool = False,
    ) -> ChunkResult[P]:
        """``peer_id`` (from client address ``ip``) wants ``chunk_id`` (docs/protocol/chunks.md,
        ``chunk_request``; docs/protocol/channels.md for ``signal``).

        A live cached copy is delivered at once (on ``/signal`` only to a request naming the
        chunk's channel; another channel gets ``chunk_error``). Otherwise the peer waits, and
        unless a pull is outstanding the most recently announced source it may go to is pulled.
        With no such source a ``/relay`` peer is told ``chunk_not_found`` and keeps waiting; a
        ``/signal`` peer gets ``chunk_error`` and does not wait. A waiting ``/signal`` peer is
        owed ``chunk_pulling``: it goes just before the chunk, or ``PULLING_NOTICE_S`` after
        the request if the chunk has not come by then (``expire``). A request for a new chunk
        past the per-peer or per-IP budget gets ``rate_limited`` and changes nothing.
        """
        cached = self._live_cached(chunk_id, now)
        if cached is not None:
            if signal and cached.channel_id not in (None, channel_id):
                return ChunkResult(
                    [ChunkOut(peer_id, _chunk_error(chunk_id, OTHER_CHANNEL_MESSAGE))]
                )
            cached.hits += 1
            self._cache.move_to_end(chunk_id)
            self._cache_hits += 1
            text = self._hit_text(chunk_id, cached, channel_id)
            return ChunkResult(deliveries=[Delivery(text, (peer_id,))])

        pending = self._pending.get(chunk_id, {})
        entry = pending.get(peer_id)
        if entry is None and (
            len(self._peer_pending.get(peer_id, ())) >= self._max_pending_per_peer
            or self._ip_pending.get(ip, 0) >= self._pending_per_ip
        ):
            error = {"type": "error", "code": "rate_limited", "message": TOO_MANY_PENDING}
            return ChunkResult([ChunkOut(peer_id, error)])
        self._cache_misses += 1
        expires_at = now + PENDING_TTL_S
        if entry is None:
            self._pending[chunk_id] = pending
            pending[peer_id] = _Pending(channel_id, expires_at, ip, signal)
            self._peer_pending.setdefault(peer_id, set()).add(chunk_id)
            self._pending_count += 1
            self._ip_pending[ip] = self._ip_pending.get(ip, 0) + 1
            self._refresh_candidate(chunk_id, peer_id)  # a waiting source is not pulled
        else:  # keeps its place in arrival order
            entry.channel_id = channel_id
            entry.expires_at = expires_at
            entry.strict = signal
        self._deadlines.schedule(("pending", chunk_id, peer_id), expires_at)

        if chunk_id in self._pulls:
            self._owe_notice(chunk_id, peer_id, signal, now)
            return ChunkResult()
        pulls = self._pull_round(chunk_id, 1, now)
        if pulls:
            self._owe_notice(chunk_id, peer_id, signal, now)
            return ChunkResult(pulls)
        if signal:
            self._drop_pending(chunk_id, peer_id)
            return ChunkResult([ChunkOut(peer_id, _chunk_error(chunk_id, NO_SOURCE_MESSAGE))])
        not_found = {"type": "chunk_not_found", "chunkId": chunk_id, "message": NOT_FOUND_MESSAGE}
        return ChunkResult([ChunkOut(peer_id, not_found)])

    def push(
        self,
        peer_id: P,
        chunk_id: str,
        data_json: bytes,
        now: float,
        *,
        channel_id: str | None = None,
        signal: bool = False,
    ) -> ChunkResult[P]:
        """``peer_id`` sends ``chunk_id`` (docs/protocol/chunks.md, ``chunk_push``;
        docs/protocol/channels.md for ``signal``); ``data_json`` is the compact UTF-8 JSON of
        ``data``, whose size the caller checked.

        Always acknowledged. The push is *accepted* when no live copy is cached and either a
        pull of the chunk to ``peer_id`` is outstanding, or ``peer_id`` is a live source and
        other peers wait for the chunk, or (on ``/signal``) ``peer_id`` is a live source at
        all. Then the chunk is cached (if it fits the byte bound) for ``channel_id``, or else
        for the channel its requesters named, and every waiting requester but the pusher gets
        ``chunk_data`` (one ``Delivery`` per distinct ``channelId``, in arrival order of each
        group's first requester); a ``/signal`` requester that named another channel than the
        chunk's gets ``chunk_error`` instead; the pusher's own pending request, if any, is
        dropped. Otherwise it changes nothing but the pusher's own outstanding pull: a cached
        copy is never replaced, and on ``/relay`` a push nobody asked for is not stored.

        Raises:
            ChunkError: ``not_a_source`` unless ``peer_id`` is a live source of the chunk or
                has an outstanding pull of it; nothing changes then.
        """
        source = self._sources.get(chunk_id, {}).get(peer_id)
        pulled = peer_id in self._pulls.get(chunk_id, ())
        if not (pulled or (source is not None and now < source.expires_at)):
            raise ChunkError("not_a_source", "Not a source for this chunk")
        if pulled:
            self._end_pull(chunk_id, peer_id)
            self._refresh_candidate(chunk_id, peer_id)
        if self._live_cached(chunk_id, now) is not None:
            return ChunkResult([_push_ack(peer_id, chunk_id, signal, True, 0)])  # never replaced
        pending = self._pending.get(chunk_id, {})
        waiting = any(
            requester != peer_id and now < entry.expires_at for requester, entry in pending.items()
        )
        if not (pulled or waiting or signal):
            return ChunkResult([_push_ack(peer_id, chunk_id, False, False, 0)])  # not stored

        if channel_id is None:
            channel_id = self._requested_channel(chunk_id, now)
        cached = self._store(chunk_id, data_json, channel_id, now)
        groups: dict[str | None, list[P]] = {}
        owed: list[P] = []  # told chunk_pulling now, just before what ends their wait
        refused: list[P] = []
        for requester, entry in list(pending.items()):
            live = now < entry.expires_at
            self._drop_pending(chunk_id, requester)
            if requester == peer_id or not live:
                continue
            if entry.owed_notice:
                owed.append(requester)
            if entry.strict and channel_id not in (None, entry.channel_id):
                refused.append(requester)
            else:
                groups.setdefault(entry.channel_id, []).append(requester)
        deliveries: list[Delivery[P]] = []
        if owed:
            deliveries.append(Delivery(encode(_pulling(chunk_id)), tuple(owed)))
        if refused:
            error = encode(_chunk_error(chunk_id, OTHER_CHANNEL_MESSAGE))
            deliveries.append(Delivery(error, tuple(refused)))
        deliveries += [
            Delivery(_chunk_data(chunk_id, data_json, "relay", channel), tuple(peers))
            for channel, peers in groups.items()
        ]
        served = sum(len(peers) for peers in groups.values())
        return ChunkResult([_push_ack(peer_id, chunk_id, signal, cached, served)], deliveries)

    def remove_peer(self, peer_id: P, now: float) -> ChunkResult[P]:
        """``peer_id`` disconnected (docs/protocol/chunks.md, "Disconnect"); unknown peer: no-op.

        Its sources and pending requests go; a chunk left with no outstanding pull by its
        departure, whose requesters still wait, is pulled from up to ``PULL_HEDGE`` sources at
        once (``chunk_pull`` frames in ``outs``); with no source left, its ``/signal``
        requesters get ``chunk_error``.
        """
        for chunk_id in list(self._peer_sources.get(peer_id, ())):
            self._drop_source(chunk_id, peer_id)
        for chunk_id in list(self._peer_pending.get(peer_id, ())):
            self._drop_pending(chunk_id, peer_id)
        outs: list[ChunkOut[P]] = []
        for chunk_id in sorted(self._peer_pulls.get(peer_id, ())):
            self._end_pull(chunk_id, peer_id)
            if chunk_id not in self._pulls:
                outs.extend(self._retry(chunk_id, now))
        return ChunkResult(outs)

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """The earliest pull time-out or source, request or cache expiry (``inf`` if none)."""
        return self._deadlines.next_deadline()

    def expire(self, now: float) -> ChunkResult[P]:
        """Fire every deadline at or before ``now``, earliest first.

        A timed-out pull marks its peer ``withheld`` for that chunk; once no pull of the chunk
        is outstanding and requesters still wait, up to ``PULL_HEDGE`` sources are pulled at
        once (with none, ``/signal`` requesters get ``chunk_error``). Expired sources, pending
        requests and cached chunks are removed.
        """
        outs: list[ChunkOut[P]] = []
        for kind, chunk_id, peer_id in self._deadlines.pop_due(now):
            if kind == "notice":
                entry = self._pending.get(chunk_id, {}).get(peer_id)
                if entry is not None and entry.owed_notice:
                    entry.owed_notice = False
                    outs.append(ChunkOut(peer_id, _pulling(chunk_id)))
            elif kind == "source":
                self._drop_source(chunk_id, peer_id, scheduled=False)
            elif kind == "pending":
                self._drop_pending(chunk_id, peer_id, scheduled=False)
            elif kind == "cache":
                self._uncache(chunk_id, scheduled=False)
            else:
                self._end_pull(chunk_id, peer_id, scheduled=False)
                source = self._sources.get(chunk_id, {}).get(peer_id)
                if source is not None:
                    source.withheld = True  # and it is not a candidate: it was pulled
                if chunk_id not in self._pulls:
                    outs.extend(self._retry(chunk_id, now))
        return ChunkResult(outs)

    # -- queries -------------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """The ``/stats`` counts: entries held (the service fires due timers first, so these
        are the live ones) and the counters. O(1): kept as entries come and go."""
        return {
            "trackedChunks": len(self._sources),
            "totalSources": self._source_count,
            "cachedChunks": len(self._cache),
            "pendingRequests": self._pending_count,
            "cacheHits": self._cache_hits,
            "cacheMisses": self._cache_misses,
            "pullsSent": self._pulls_sent,
        }

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (memory-bound tests expect all zero when idle)."""
        return {
            "source_chunks": len(self._sources),
            "source_entries": sum(len(sources) for sources in self._sources.values()),
            "candidate_chunks": len(self._candidates),
            "candidate_entries": sum(len(peers) for peers in self._candidates.values()),
            "trusted": len(self._trusted),
            "pending_chunks": len(self._pending),
            "pending_entries": sum(len(pending) for pending in self._pending.values()),
            "pulls": len(self._pulls),
            "pull_entries": sum(len(peers) for peers in self._pulls.values()),
            "cache": len(self._cache),
            "cache_bytes": self._cache_bytes,
            "hit_texts": len(self._hit_texts),
            "hit_bytes": self._hit_bytes,
            "channel_cache": len(self._channel_cache),
            "peer_sources": len(self._peer_sources),
            "peer_pending": len(self._peer_pending),
            "peer_pulls": len(self._peer_pulls),
            "ip_sources": len(self._ip_sources),
            "ip_pending": len(self._ip_pending),
            "source_count": self._source_count,
            "pending_count": self._pending_count,
            "deadlines": len(self._deadlines),
        }

    def cached_hits(self, chunk_id: str) -> int | None:
        """The hit count of the cached copy of ``chunk_id``, or ``None`` if none is held."""
        entry = self._cache.get(chunk_id)
        return None if entry is None else entry.hits

    def cached_data(self, chunk_id: str) -> bytes | None:
        """The cached compact JSON of ``chunk_id``, or ``None`` if none is held."""
        entry = self._cache.get(chunk_id)
        return None if entry is None else entry.data_json

    def cached_ids(self, channel_id: str, now: float) -> list[str]:
        """The live cached chunks of ``channel_id``, oldest first (in the order they were
        cached; docs/protocol/channels.md, ``channel-subscribe``)."""
        return [
            chunk_id
            for chunk_id in self._channel_cache.get(channel_id, ())
            if now < self._cache[chunk_id].expires_at
        ]

    # -- internals -----------------------------------------------------------------------

    def _live_cached(self, chunk_id: str, now: float) -> _Cached | None:
        """The live cached copy; an expired one still waiting for the sweep is removed."""
        entry = self._cache.get(chunk_id)
        if entry is not None and now >= entry.expires_at:
            self._uncache(chunk_id)
            return None
        return entry

    def _store(self, chunk_id: str, data_json: bytes, channel_id: str | None, now: float) -> bool:
        """Cache ``data_json`` of ``channel_id`` for 30 min as the most recently used entry (no
        live copy is held), evicting the least recently used past either bound. A text larger
        than the whole byte bound is not cached. True when it was cached."""
        size = len(data_json)
        if size > self._cache_limit or self._cache_max <= 0:
            return False
        expires_at = now + CACHE_TTL_S
        self._cache[chunk_id] = _Cached(data_json, expires_at, channel_id)
        self._cache_bytes += size
        if channel_id is not None:
            self._channel_cache.setdefault(channel_id, {})[chunk_id] = None
        self._deadlines.schedule(("cache", chunk_id, None), expires_at)
        while len(self._cache) > self._cache_max or self._cache_bytes > self._cache_limit:
            self._uncache(next(iter(self._cache)))
        return True

    def _hit_text(self, chunk_id: str, cached: _Cached, channel_id: str | None) -> str:
        """The ``chunk_data`` text answering a cache hit of ``chunk_id`` for ``channel_id``:
        built once and kept (``_hit_texts``), so a chunk many ask for is encoded, and framed,
        once rather than once per request."""
        memo = self._hit_texts.get(chunk_id)
        if memo is not None and memo[0] == channel_id:
            self._hit_texts.move_to_end(chunk_id)
            return memo[1]
        text = _chunk_data(chunk_id, cached.data_json, "cache", channel_id)
        self._forget_hit_text(chunk_id)
        self._hit_texts[chunk_id] = (channel_id, text)
        self._hit_bytes += len(text)
        while self._hit_bytes > HIT_TEXTS_BYTES:
            self._forget_hit_text(next(iter(self._hit_texts)))
        return text

    def _forget_hit_text(self, chunk_id: str) -> None:
        memo = self._hit_texts.pop(chunk_id, None)
        if memo is not None:
            self._hit_bytes -= len(memo[1])

    def _uncache(self, chunk_id: str, *, scheduled: bool = True) -> None:
        entry = self._cache.pop(chunk_id)
        self._forget_hit_text(chunk_id)
        self._cache_bytes -= len(entry.data_json)
        if entry.channel_id is not None:
            _remove(self._channel_cache, entry.channel_id, chunk_id)
        if scheduled:
            self._deadlines.cancel(("cache", chunk_id, None))

    def _has_waiters(self, chunk_id: str, now: float) -> bool:
        # Expired requests are swept when they expire, so this stops at the first entry but
        # for those few still due.
        return any(now < entry.expires_at for entry in self._pending.get(chunk_id, {}).values())

    def _refresh_candidate(self, chunk_id: str, peer_id: P) -> None:
        """Keep ``_candidates`` exact for one (chunk, peer) after its state changed: a source
        that may be pulled is (re-)inserted as the most recent; any other is taken out."""
        source = self._sources.get(chunk_id, {}).get(peer_id)
        eligible = (
            source is not None
            and not source.withheld
            and peer_id not in self._pending.get(chunk_id, ())
            and peer_id not in self._pulls.get(chunk_id, ())
        )
        candidates = self._candidates.get(chunk_id)
        if candidates is not None:
            candidates.pop(peer_id, None)
        if eligible:
            self._candidates.setdefault(chunk_id, OrderedDict())[peer_id] = None
        elif candidates is not None and not candidates:
            del self._candidates[chunk_id]

    def _pull_round(self, chunk_id: str, count: int, now: float) -> list[ChunkOut[P]]:
        """Pull ``chunk_id`` from up to ``count`` candidates, if requesters wait for it.

        Sources that speak for the channel's owner come first: anyone may announce a chunk id
        it saw in a ``chunk_available``, and the first push of a chunk is the one cached. The
        others are taken alternately from the most recently announced end (the likeliest to be
        online) and the longest-standing end (which sources that leave and announce again
        cannot hold): withholding sources pay one time-out each, and churning ones cannot keep
        the others from being pulled.
        """
        if not self._has_waiters(chunk_id, now):
            return []
        candidates = self._candidates.get(chunk_id)
        chosen: list[P] = []
        for peer_id in self._trusted.get(chunk_id, ()):
            if len(chosen) >= count or not candidates:
                break
            if peer_id in candidates and now < self._sources[chunk_id][peer_id].expires_at:
                del candidates[peer_id]
                chosen.append(peer_id)
        while candidates and len(chosen) < count:
            peer_id, _ = candidates.popitem(last=len(chosen) % 2 == 0)
            if now < self._sources[chunk_id][peer_id].expires_at:
                chosen.append(peer_id)
            # else: expired, its sweep is due; it is never pulled again anyway.
        if candidates is not None and not candidates:
            del self._candidates[chunk_id]
        frame = self._pull_frame(chunk_id, now) if chosen else {}
        return [self._start_pull(chunk_id, peer_id, frame, now) for peer_id in chosen]

    def _retry(self, chunk_id: str, now: float) -> list[ChunkOut[P]]:
        """After a failed pull: pull up to ``PULL_HEDGE`` sources at once; with none left, the
        ``/signal`` requesters are told ``chunk_error`` and stop waiting, as they would have
        been had no source been online when they asked (``/relay`` ones keep waiting)."""
        outs = self._pull_round(chunk_id, self._pull_hedge, now)
        if outs:
            return outs
        for requester, entry in list(self._pending.get(chunk_id, {}).items()):
            if entry.strict:
                self._drop_pending(chunk_id, requester)
                if now < entry.expires_at:
                    if entry.owed_notice:
                        outs.append(ChunkOut(requester, _pulling(chunk_id)))
                    outs.append(ChunkOut(requester, _chunk_error(chunk_id, NO_SOURCE_MESSAGE)))
        return outs

    def _owe_notice(self, chunk_id: str, peer_id: P, signal: bool, now: float) -> None:
        """A waiting ``/signal`` requester is owed ``chunk_pulling`` (see ``request``)."""
        if signal:
            entry = self._pending[chunk_id][peer_id]
            if not entry.owed_notice:
                entry.owed_notice = True
                self._deadlines.schedule(("notice", chunk_id, peer_id), now + PULLING_NOTICE_S)

    def _requested_channel(self, chunk_id: str, now: float) -> str | None:
        """The ``channelId`` of the first live requester of ``chunk_id`` that named one."""
        for entry in self._pending.get(chunk_id, {}).values():
            if entry.channel_id is not None and now < entry.expires_at:
                return entry.channel_id
        return None

    def _pull_frame(self, chunk_id: str, now: float) -> dict[str, Any]:
        """``chunk_pull``, echoing the ``channelId`` of the first live requester that had one."""
        frame: dict[str, Any] = {"type": "chunk_pull", "chunkId": chunk_id}
        channel_id = self._requested_channel(chunk_id, now)
        if channel_id is not None:
            frame["channelId"] = channel_id
        return frame

    def _start_pull(
        self, chunk_id: str, peer_id: P, frame: dict[str, Any], now: float
    ) -> ChunkOut[P]:
        """Record an outstanding pull of ``chunk_id`` to ``peer_id`` (already taken out of the
        candidates) and return its ``frame``. A pull to a ``/signal`` source that announced the
        chunk for a channel names that channel, whatever a requester named: the apps push
        what they are pulled for under the pull's channel, and a request naming another
        channel must not move the chunk out of its own (docs/protocol/channels.md, "Rules")."""
        announced = self._sources[chunk_id][peer_id].channel_id
        if announced is not None and frame.get("channelId") != announced:
            frame = {**frame, "channelId": announced}
        self._pulls.setdefault(chunk_id, set()).add(peer_id)
        self._peer_pulls.setdefault(peer_id, set()).add(chunk_id)
        self._deadlines.schedule(("pull", chunk_id, peer_id), now + PULL_TIMEOUT_S)
        self._pulls_sent += 1
        return ChunkOut(peer_id, frame)

    def _end_pull(self, chunk_id: str, peer_id: P, *, scheduled: bool = True) -> None:
        _discard(self._pulls, chunk_id, peer_id)
        _discard(self._peer_pulls, peer_id, chunk_id)
        if scheduled:
            self._deadlines.cancel(("pull", chunk_id, peer_id))

    def _drop_source(self, chunk_id: str, peer_id: P, *, scheduled: bool = True) -> None:
        source = self._sources[chunk_id][peer_id]
        _remove(self._sources, chunk_id, peer_id)
        _discard(self._trusted, chunk_id, peer_id)
        _discard(self._peer_sources, peer_id, chunk_id)
        self._source_count -= 1
        _decrement(self._ip_sources, source.ip)
        self._refresh_candidate(chunk_id, peer_id)
        if scheduled:
            self._deadlines.cancel(("source", chunk_id, peer_id))

    def _drop_pending(self, chunk_id: str, peer_id: P, *, scheduled: bool = True) -> None:
        """Remove ``peer_id``'s request for ``chunk_id``, if any; a source that waited for its
        own chunk may be pulled again."""
        entry = self._pending.get(chunk_id, {}).get(peer_id)
        if entry is None:
            return
        _remove(self._pending, chunk_id, peer_id)
        _discard(self._peer_pending, peer_id, chunk_id)
        self._pending_count -= 1
        _decrement(self._ip_pending, entry.ip)
        self._refresh_candidate(chunk_id, peer_id)
        if entry.owed_notice:
            self._deadlines.cancel(("notice", chunk_id, peer_id))
        if scheduled:
            self._deadlines.cancel(("pending", chunk_id, peer_id))


def _decrement(counts: dict[str, int], key: str) -> None:
    """Count one entry of ``key`` less; a key whose count reaches zero goes."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def _pulling(chunk_id: str) -> dict[str, Any]:
    return {"type": "chunk_pulling", "chunkId": chunk_id}


def _chunk_error(chunk_id: str, message: str) -> dict[str, Any]:
    return {"type": "chunk_error", "chunkId": chunk_id, "error": message}


def _push_ack(peer_id: P, chunk_id: str, signal: bool, cached: bool, served: int) -> ChunkOut[P]:
    """``chunk_push_ack``; on ``/signal`` with ``cached`` and ``servedCount``."""
    frame: dict[str, Any] = {"type": "chunk_push_ack", "chunkId": chunk_id}
    if signal:
        frame.update(cached=cached, servedCount=served)
    return ChunkOut(peer_id, frame)


def _chunk_data(
    chunk_id: str, data_json: bytes, source: Literal["relay", "cache"], channel_id: str | None
) -> str:
    """The encoded ``chunk_data`` frame, with the cached text spliced in as it is (never
    decoded again); ``channelId`` is omitted, not null, when there is none."""
    head = encode({"type": "chunk_data", "chunkId": chunk_id})[:-1]  # without its "}"
    tail: dict[str, Any] = {"source": source}
    if channel_id is not None:
        tail["channelId"] = channel_id
    return f'{head},"data":{data_json.decode("utf-8")},{encode(tail)[1:]}'
