"""ChunkIndex: channel content for both WebSocket dialects (docs/protocol/chunks.md for
``/relay``, docs/protocol/channels.md for ``/signal``).

One service task owns two pure states and routes each connection's messages to them:
``ChunkIndexState`` (who holds which chunk, the cache, one pull per chunk multicast to every
waiting requester) and ``ChannelState`` (channel owners, subscribers, upstream queues and live
streams). They are one service because their rules meet in every message: an announce by a
channel's owner tells that channel's subscribers, a subscriber is shown the channel's cached
chunks, a cached chunk belongs to one channel (docs/architecture.md, "The ChunkIndex").

The front end routes a connection's channel and chunk frames here and everything else to the
service that owns the endpoint's registrations (the SignalingRoom for ``/signal``, the
RelayService for ``/relay``); each such frame carries the ``Identity`` that service gave the
connection. This service keys everything by connection, so a ``/relay`` ``peerId`` and a
``/signal`` pairing code never collide.

Invariants:
- Every attached connection (both endpoints) has its per-IP key in ``_ips``; the chunk and
  channel budgets per client address count by it.
- A message without an identity is answered ``not_registered``; one whose ``peerId`` differs
  from the identity's gets ``peer_id_mismatch`` (hardened: the original trusted it).
- When a connection closes, its subscriptions and ownerships end (a live stream ends), then
  its chunk sources and waiting requests go (a pull in flight to it moves to the next source);
  queued upstream messages and cached chunks stay.

Timers (trio's clock): the chunk index's deadlines (10 s pull time-outs, source, request and
cache expiry) and the channels' (owner holds, queued upstream messages).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import attrs

from zajel.config import Config
from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.channels import (
    OwnChannel,
    StreamEnd,
    StreamFrame,
    StreamStart,
    Subscribe,
    Unsubscribe,
    Upstream,
)
from zajel.protocol.chunks import ChunkAnnounce, ChunkPush, ChunkRequest
from zajel.services._peers import Attach, ConnId, Detach, Identity, Inbound, Out, PeerTable
from zajel.services.channels import ChannelResult, ChannelState
from zajel.services.chunks import Announced, ChunkError, ChunkIndexState, ChunkResult

log = logging.getLogger("zajel.chunks")

# docs/protocol/channels.md, "Identity": the /signal wording of peer_id_mismatch.
SIGNAL_PEER_ID_MISMATCH: Final = "peerId mismatch with registered identity"


@attrs.frozen
class GetChunkStats:
    """Request: reply with ``ChunkStats``."""


@attrs.frozen
class ChunkStats:
    chunks: dict[str, int]
    channels: dict[str, int]


class ChunkIndex:
    """The service: owns a ``ChunkIndexState`` and a ``ChannelState``."""

    name = "chunks"

    def __init__(
        self, chunks: ChunkIndexState[ConnId] | None = None, channels: ChannelState | None = None
    ) -> None:
        self.chunks: ChunkIndexState[ConnId] = chunks if chunks is not None else ChunkIndexState()
        self.channels = channels if channels is not None else ChannelState()
        self._peers = PeerTable(log)
        self._ips: dict[ConnId, str] = {}  # connection -> its client's per-IP key
        self._now = 0.0  # the time of the request being handled, for cleanup on a drop
        # The connection whose frame is being handled: frames to it are answers, never pushes.
        self._sender: ConnId | None = None

    @classmethod
    def from_config(cls, config: Config) -> ChunkIndex:
        chunks: ChunkIndexState[ConnId] = ChunkIndexState(
            cache_bytes=config.chunk_cache_bytes,
            sources_per_ip=config.chunk_sources_per_ip,
            pending_per_ip=config.chunk_pending_per_ip,
        )
        return cls(chunks, ChannelState(owner_grace_s=config.channel_owner_grace_s))

    # -- the service protocol --------------------------------------------------------------

    def handle(self, request: Any, now: float) -> Any:
        self._now = now
        if type(request) is Inbound:
            conn = request.conn_id
            self._sender = conn
            try:
                self._on_message(conn, request.identity, request.message, now)
            except Exception:
                log.exception("message failed", extra=context(conn=conn))
                self._deliver([(conn, errors.internal_error().to_frame())])
            self._peers.handled(conn)
            self._sender = None
        elif type(request) is Attach:
            self._peers.attach(request.conn_id, request.peer)
            self._ips[request.conn_id] = request.ip
            self.channels.connect(request.conn_id, request.ip)
        elif type(request) is Detach:
            self._peers.deliver(self._disconnect(request.conn_id, now), self._drop)
            self._peers.detach(request.conn_id)
        elif type(request) is GetChunkStats:
            # Timers already due fire first, so the counts are of live entries; every count is
            # kept as entries come and go, so this costs no scan of the state.
            if self.next_deadline() <= now:
                self.expire(now)
            return ChunkStats(self.chunks.statistics(), self.channels.statistics())
        else:
            raise TypeError(f"unknown request {type(request).__name__}")
        return None

    def next_deadline(self) -> float:
        return min(self.chunks.next_deadline(), self.channels.next_deadline())

    def expire(self, now: float) -> None:
        self._now = now
        if self.chunks.next_deadline() <= now:
            self._deliver_chunks(self.chunks.expire(now))
        if self.channels.next_deadline() <= now:
            self.channels.expire(now)

    def sizes(self) -> dict[str, int]:
        """Entries of the routing maps (memory-bound tests expect all zero when idle)."""
        return {"peers": len(self._peers), "ips": len(self._ips)}

    # -- messages --------------------------------------------------------------------------

    def _on_message(
        self, conn: ConnId, identity: Identity | None, message: Any, now: float
    ) -> None:
        if conn not in self._peers:
            return  # already disconnected (e.g. dropped as a slow consumer)
        if identity is None:
            self._deliver([(conn, errors.not_registered().to_frame())])
            return
        signal = identity.dialect == "signal"
        peer_id = getattr(message, "peer_id", None)
        if peer_id is not None and peer_id != identity.peer_id:
            if signal:
                error = errors.peer_id_mismatch(SIGNAL_PEER_ID_MISMATCH)
            else:
                error = errors.peer_id_mismatch()
            self._deliver([(conn, error.to_frame())])
            return
        ip = self._ips[conn]
        if isinstance(message, ChunkRequest):
            result = self.chunks.request(
                conn, message.chunk_id, message.channel_id, now, ip=ip, signal=signal
            )
            self._deliver_chunks(result)
        elif isinstance(message, ChunkAnnounce):
            announced = [Announced(chunk_id, routing) for chunk_id, routing in message.chunks]
            channel_id = message.channel_id
            trusted = channel_id is not None and self.channels.speaks_for_owner(
                conn, identity, channel_id, now
            )
            result = self.chunks.announce(
                conn, announced, channel_id, now, ip=ip, signal=signal, trusted=trusted
            )
            self._deliver_chunks(result)
            if channel_id is not None and trusted and result.registered:
                self._deliver_channels(
                    self.channels.announced(conn, identity, channel_id, result.registered, now)
                )
        elif isinstance(message, ChunkPush):
            try:
                result = self.chunks.push(
                    conn,
                    message.chunk_id,
                    message.data_json,
                    now,
                    channel_id=message.channel_id,
                    signal=signal,
                )
            except ChunkError:
                self._deliver([(conn, errors.not_a_source().to_frame())])
                return
            self._deliver_chunks(result)
        else:
            self._deliver_channels(self._on_channel_message(conn, identity, message, now))

    def _on_channel_message(
        self, conn: ConnId, identity: Identity, message: Any, now: float
    ) -> ChannelResult:
        channels = self.channels
        if isinstance(message, StreamFrame):  # the most frequent of them
            return channels.stream_frame(conn, message.stream_id, message.channel_id, message.frame)
        if isinstance(message, Subscribe):
            cached = self.chunks.cached_ids(message.channel_id, now)
            return channels.subscribe(conn, message.channel_id, cached)
        if isinstance(message, Unsubscribe):
            return channels.unsubscribe(conn, message.channel_id)
        if isinstance(message, OwnChannel):
            return channels.own(conn, identity, message.channel_id, now)
        if isinstance(message, Upstream):
            return channels.upstream(
                conn, message.channel_id, message.message, message.ephemeral_public_key, now
            )
        if isinstance(message, StreamStart):
            return channels.stream_start(conn, message.stream_id, message.channel_id, message.title)
        if isinstance(message, StreamEnd):
            return channels.stream_end(conn, message.channel_id)
        raise TypeError(f"not a channel or chunk message: {message!r}")

    # -- delivery ----------------------------------------------------------------------------

    def _deliver(self, outs: list[Out]) -> None:
        self._peers.deliver(outs, self._drop, self._sender)

    def _deliver_chunks(self, result: ChunkResult[ConnId]) -> None:
        """Single frames, then each ``chunk_data`` encoded once for all its requesters (a slow
        one is dropped, never waited for)."""
        self._deliver([(out.peer_id, out.frame) for out in result.outs])
        for delivery in result.deliveries:
            self._peers.multicast(delivery.peer_ids, delivery.text, self._drop, self._sender)

    def _deliver_channels(self, result: ChannelResult) -> None:
        """Each multicast encoded once, then the single frames."""
        for text, conns in result.multicasts:
            self._peers.multicast(conns, text, self._drop, self._sender)
        self._deliver(result.outs)

    # -- connections -----------------------------------------------------------------------

    def _disconnect(self, conn: ConnId, now: float) -> list[Out]:
        """Clean up after ``conn`` (docs/protocol/channels.md, "Rules"); the stream-end
        multicasts are sent here, the frames for single connections returned."""
        if self._ips.pop(conn, None) is None:
            return []
        for text, conns in self.channels.disconnect(conn, now).multicasts:
            self._peers.multicast(conns, text, self._drop)
        result = self.chunks.remove_peer(conn, now)
        for delivery in result.deliveries:
            self._peers.multicast(delivery.peer_ids, delivery.text, self._drop)
        return [(out.peer_id, out.frame) for out in result.outs]

    def _drop(self, conn: ConnId) -> list[Out]:
        """The cleanup of a connection dropped as a slow consumer."""
        return self._disconnect(conn, self._now)
