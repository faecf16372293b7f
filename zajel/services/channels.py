"""Channels on ``/signal``: owners, subscribers, upstream messages and live streams
(docs/protocol/channels.md).

``ChannelState`` is pure state: no I/O; every method that depends on time takes ``now`` (trio
seconds) and returns a ``ChannelResult``: single frames to single connections (``outs``) and
frames encoded once for many (``multicasts``). The ``ChunkIndex`` service drives it beside the
chunk index, which holds the chunks themselves.

Invariants the state keeps:
- A channel has at most one owner, a live connection. When the owner leaves, a channel whose
  owner had a public key is *held* for ``owner_grace_s``: only a connection registered with
  that key may take it (hardened: a stranger cannot take it and read its queued upstream
  messages). ``owner_key`` is the key of the live or held owner, and an announce by any
  connection with that key tells the subscribers (as after a reconnect).
- Ownerships and subscriptions belong to a connection and end with it; upstream messages
  queued for an absent owner (at most ``upstream_queue_max`` per channel, each for 5 minutes)
  stay.
- A channel is kept exactly while it has an owner, a hold, a subscriber or a queued message;
  ``_owned`` and ``_subscribed`` index every connection's channels, so a disconnect costs time
  proportional to what that connection held. No map or set is ever left empty.
- Counts behind ``statistics`` are kept as entries come and go: no call scans the state.

Memory: a connection owns at most ``max_owned`` channels and subscribes to at most
``max_subscriptions``; one client address owns or holds at most ``channels_per_ip`` (holds
outlive connections); all channels together are at most ``max_channels``; queued upstream
messages take at most ``upstream_queue_bytes`` in all, past which new ones are dropped (still
acknowledged, as a full queue's are).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final, Literal

import attrs

from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.frames import encode
from zajel.protocol.limits import SlidingWindow
from zajel.services._deadlines import Deadlines
from zajel.services._index import discard as _discard
from zajel.services._peers import ConnId, Identity, Out

log = logging.getLogger("zajel.channels")

OWNER_GRACE_S: Final = 3600.0
UPSTREAM_TTL_S: Final = 300.0
UPSTREAM_QUEUE_MAX: Final = 100
UPSTREAM_PER_MINUTE: Final = 30
UPSTREAM_WINDOW_S: Final = 60.0
# Ours (docs/protocol/channels.md, "Limits"): what one connection, one address and everyone
# together may make the server hold.
MAX_OWNED: Final = 100
MAX_SUBSCRIPTIONS: Final = 1000
CHANNELS_PER_IP: Final = 1000
MAX_CHANNELS: Final = 100_000
UPSTREAM_QUEUE_BYTES: Final = 16 << 20

CHANNEL_OWNED: Final = "channel_owned"
NOT_SUBSCRIBED: Final = "not_subscribed"
NOT_OWNER: Final = "not_owner"


@attrs.frozen
class ChannelResult:
    """Frames to send: ``outs`` one each, ``multicasts`` one encoded text to many."""

    outs: list[Out] = attrs.field(factory=list)
    multicasts: list[tuple[str, list[ConnId]]] = attrs.field(factory=list)


@attrs.define
class _Queued:
    frame: dict[str, Any]  # the upstream-message as the owner will get it
    size: int  # its bytes as UTF-8 JSON, what the byte bound counts
    expires_at: float


@attrs.define
class _Stream:
    stream_id: str
    title: str


@attrs.define
class _Channel:
    owner: ConnId | None = None
    owner_key: str | None = None  # the live or held owner's public key
    owner_ip: str | None = None  # the address its ownership or hold counts against
    held_until: float | None = None
    subscribers: dict[ConnId, None] = attrs.field(factory=dict)  # in subscription order
    stream: _Stream | None = None
    queue: deque[_Queued] = attrs.field(factory=deque)

    def idle(self) -> bool:
        return (
            self.owner is None
            and self.held_until is None
            and not self.subscribers
            and not self.queue
        )


@attrs.define
class _Connection:
    ip: str
    upstream: SlidingWindow


# Timer keys: ("hold", channel) when a hold ends, ("queue", channel) when a queue's head expires.
_Key = tuple[Literal["hold", "queue"], str]


class ChannelState:
    """Owners, subscribers, upstream queues and live streams of every channel. No I/O."""

    def __init__(
        self,
        *,
        owner_grace_s: float = OWNER_GRACE_S,
        upstream_queue_max: int = UPSTREAM_QUEUE_MAX,
        upstream_per_minute: int = UPSTREAM_PER_MINUTE,
        upstream_queue_bytes: int = UPSTREAM_QUEUE_BYTES,
        max_owned: int = MAX_OWNED,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        channels_per_ip: int = CHANNELS_PER_IP,
        max_channels: int = MAX_CHANNELS,
    ) -> None:
        self._owner_grace_s = owner_grace_s
        self._upstream_queue_max = upstream_queue_max
        self._upstream_per_minute = upstream_per_minute
        self._upstream_queue_bytes = upstream_queue_bytes
        self._max_owned = max_owned
        self._max_subscriptions = max_subscriptions
        self._channels_per_ip = channels_per_ip
        self._max_channels = max_channels
        self._channels: dict[str, _Channel] = {}
        self._connections: dict[ConnId, _Connection] = {}
        self._owned: dict[ConnId, set[str]] = {}  # connection -> channels it owns
        self._subscribed: dict[ConnId, set[str]] = {}  # connection -> channels it follows
        self._ip_channels: dict[str, int] = {}  # address -> channels it owns or holds
        self._deadlines: Deadlines[_Key] = Deadlines()
        self._owned_count = 0
        self._subscription_count = 0
        self._queued_count = 0
        self._queued_bytes = 0
        self._stream_count = 0

    # -- connections ---------------------------------------------------------------------

    def connect(self, conn: ConnId, ip: str) -> None:
        """``conn`` opened from the client address key ``ip``."""
        window = SlidingWindow(self._upstream_per_minute, UPSTREAM_WINDOW_S)
        self._connections[conn] = _Connection(ip, window)

    def disconnect(self, conn: ConnId, now: float) -> ChannelResult:
        """``conn`` closed (docs/protocol/channels.md, "Rules"): its subscriptions end, then
        its ownerships (a live stream ends for the subscribers; a keyed owner's channel is
        held). Unknown connections are ignored."""
        self._connections.pop(conn, None)
        for channel_id in self._subscribed.pop(conn, set()):
            channel = self._channels[channel_id]
            del channel.subscribers[conn]
            self._subscription_count -= 1
            self._forget_if_idle(channel_id, channel)
        result = ChannelResult()
        for channel_id in sorted(self._owned.pop(conn, set())):
            channel = self._channels[channel_id]
            if channel.stream is not None:
                result.multicasts.append(self._end_stream(channel_id, channel))
            channel.owner = None
            self._owned_count -= 1
            if channel.owner_key is not None:
                channel.held_until = now + self._owner_grace_s
                self._deadlines.schedule(("hold", channel_id), channel.held_until)
            else:
                self._release_hold(channel)
            self._forget_if_idle(channel_id, channel)
        return result

    # -- messages ------------------------------------------------------------------------

    def own(self, conn: ConnId, identity: Identity, channel_id: str, now: float) -> ChannelResult:
        """``channel-owner-register``: the queued upstream messages (oldest first), then
        ``channel-owner-registered``; or ``channel_owned`` while another connection owns the
        channel or it is held for another key."""
        channel = self._live_channel(channel_id, now)
        if channel is not None and channel.owner is not None and channel.owner != conn:
            return _fail(conn, CHANNEL_OWNED, "Channel already has an active owner")
        if (
            channel is not None
            and channel.owner is None
            and channel.held_until is not None
            and channel.owner_key != identity.public_key
        ):
            log.info("held channel refused", extra=context(conn=conn))
            return _fail(conn, CHANNEL_OWNED, "Channel is held for its owner's return")
        ip = self._connections[conn].ip
        if channel is None or channel.owner != conn:
            refusal = self._ownership_refusal(conn, ip, channel)
            if refusal is not None:
                return _fail(conn, errors.RATE_LIMITED, refusal)
            if channel is None:
                channel = self._channels[channel_id] = _Channel()
            self._take(conn, ip, identity, channel_id, channel)
        outs: list[Out] = [
            (conn, queued.frame) for queued in channel.queue if now < queued.expires_at
        ]
        self._clear_queue(channel_id, channel)
        outs.append((conn, {"type": "channel-owner-registered", "channelId": channel_id}))
        return ChannelResult(outs)

    def subscribe(self, conn: ConnId, channel_id: str, cached: list[str]) -> ChannelResult:
        """``channel-subscribe`` (idempotent): ``channel-subscribed``, then ``stream-start`` if a
        stream is live, then ``chunk_available`` with ``cached``, the channel's cached chunks
        oldest first, if any."""
        channel = self._channels.get(channel_id)
        subscribed = self._subscribed.get(conn, set())
        if channel is None or conn not in channel.subscribers:
            if len(subscribed) >= self._max_subscriptions:
                return _fail(conn, errors.RATE_LIMITED, "Too many channel subscriptions")
            if channel is None:
                if len(self._channels) >= self._max_channels:
                    return _fail(conn, errors.RATE_LIMITED, "Too many channels")
                channel = self._channels[channel_id] = _Channel()
            channel.subscribers[conn] = None
            self._subscribed[conn] = subscribed
            subscribed.add(channel_id)
            self._subscription_count += 1
        outs: list[Out] = [(conn, {"type": "channel-subscribed", "channelId": channel_id})]
        if channel.stream is not None:
            outs.append((conn, _stream_start(channel_id, channel.stream)))
        if cached:
            outs.append((conn, _available(channel_id, cached)))
        return ChannelResult(outs)

    def unsubscribe(self, conn: ConnId, channel_id: str) -> ChannelResult:
        """``channel-unsubscribe`` (ours, idempotent): ``channel-unsubscribed``."""
        channel = self._channels.get(channel_id)
        if channel is not None and conn in channel.subscribers:
            del channel.subscribers[conn]
            _discard(self._subscribed, conn, channel_id)
            self._subscription_count -= 1
            self._forget_if_idle(channel_id, channel)
        return ChannelResult([(conn, {"type": "channel-unsubscribed", "channelId": channel_id})])

    def upstream(
        self,
        conn: ConnId,
        channel_id: str,
        message: dict[str, Any],
        ephemeral_public_key: str,
        now: float,
    ) -> ChannelResult:
        """``upstream-message`` from a subscriber: to the owner, or queued while none is
        online; the sender always gets ``upstream-ack`` (docs/protocol/channels.md)."""
        channel = self._channels.get(channel_id)
        if channel is None or conn not in channel.subscribers:
            return _fail(conn, NOT_SUBSCRIBED, "Not subscribed to this channel")
        if not self._connections[conn].upstream.allow(now):
            return _fail(
                conn, errors.RATE_LIMITED, "Upstream rate limit exceeded. Please slow down."
            )
        frame = {
            "type": "upstream-message",
            "channelId": channel_id,
            "message": message,
            "ephemeralPublicKey": ephemeral_public_key,
        }
        outs: list[Out] = []
        if channel.owner is not None:
            outs.append((channel.owner, frame))
        else:
            self._enqueue(channel_id, channel, frame, now)
        message_id = message.get("id") or None
        ack = {"type": "upstream-ack", "channelId": channel_id, "messageId": message_id}
        outs.append((conn, ack))
        return ChannelResult(outs)

    def stream_start(
        self, conn: ConnId, stream_id: str, channel_id: str, title: str
    ) -> ChannelResult:
        """``stream-start`` by the owner: every subscriber gets ``stream-start``, the owner
        ``stream-started``. A live stream is replaced."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.owner != conn:
            return _fail(conn, NOT_OWNER, "Only the channel owner can start a stream")
        if channel.stream is None:
            self._stream_count += 1
        channel.stream = _Stream(stream_id, title)
        result = ChannelResult()
        subscribers = list(channel.subscribers)
        if subscribers:
            result.multicasts.append(
                (encode(_stream_start(channel_id, channel.stream)), subscribers)
            )
        started = {
            "type": "stream-started",
            "streamId": stream_id,
            "channelId": channel_id,
            "subscriberCount": len(subscribers),
        }
        result.outs.append((conn, started))
        return result

    def stream_frame(
        self, conn: ConnId, stream_id: str, channel_id: str, frame: Any
    ) -> ChannelResult:
        """``stream-frame`` from the owner of the live stream, encoded once for every
        subscriber; from anyone else it is dropped without a word (as the original did)."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.owner != conn or channel.stream is None:
            return ChannelResult()
        subscribers = list(channel.subscribers)
        if not subscribers:
            return ChannelResult()
        text = encode(
            {"type": "stream-frame", "streamId": stream_id, "channelId": channel_id, "frame": frame}
        )
        return ChannelResult(multicasts=[(text, subscribers)])

    def stream_end(self, conn: ConnId, channel_id: str) -> ChannelResult:
        """``stream-end`` by the owner of the live stream: subscribers get ``stream-end``, the
        owner ``stream-ended``."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.owner != conn or channel.stream is None:
            return _fail(conn, NOT_OWNER, "Cannot end stream: not the owner or no active stream")
        stream_id = channel.stream.stream_id
        result = ChannelResult(multicasts=[self._end_stream(channel_id, channel)])
        ended = {"type": "stream-ended", "streamId": stream_id, "channelId": channel_id}
        result.outs.append((conn, ended))
        return result

    def speaks_for_owner(
        self, conn: ConnId, identity: Identity, channel_id: str, now: float
    ) -> bool:
        """Whether ``conn`` owns ``channel_id`` or has the public key of its live or held owner
        (the owner's device, as after a reconnect)."""
        channel = self._live_channel(channel_id, now)
        return channel is not None and (
            channel.owner == conn
            or (identity.public_key is not None and identity.public_key == channel.owner_key)
        )

    def announced(
        self,
        conn: ConnId,
        identity: Identity,
        channel_id: str,
        chunk_ids: list[str],
        now: float,
    ) -> ChannelResult:
        """A ``chunk_announce`` for ``channel_id`` registered ``chunk_ids``: if ``conn`` speaks
        for the owner (``speaks_for_owner``), every other subscriber gets ``chunk_available``
        (hardened: the original let anyone trigger it)."""
        if not chunk_ids or not self.speaks_for_owner(conn, identity, channel_id, now):
            return ChannelResult()
        channel = self._channels[channel_id]
        subscribers = [other for other in channel.subscribers if other != conn]
        if not subscribers:
            return ChannelResult()
        return ChannelResult(multicasts=[(encode(_available(channel_id, chunk_ids)), subscribers)])

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return self._deadlines.next_deadline()

    def expire(self, now: float) -> None:
        """End the holds and drop the queued upstream messages that are due."""
        for kind, channel_id in self._deadlines.pop_due(now):
            channel = self._channels.get(channel_id)
            if channel is None:
                continue
            if kind == "hold":
                if channel.owner is None:
                    log.debug("channel hold ended", extra=context())
                    self._release_hold(channel)
            else:
                while channel.queue and channel.queue[0].expires_at <= now:
                    self._unqueue(channel)
                if channel.queue:
                    self._deadlines.schedule(("queue", channel_id), channel.queue[0].expires_at)
            self._forget_if_idle(channel_id, channel)

    # -- queries -------------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """The ``channels`` section of ``/stats``; O(1)."""
        return {
            "owned": self._owned_count,
            "subscriptions": self._subscription_count,
            "queuedUpstream": self._queued_count,
            "liveStreams": self._stream_count,
        }

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (memory-bound tests expect all zero when idle)."""
        return {
            "channels": len(self._channels),
            "connections": len(self._connections),
            "owned": len(self._owned),
            "subscribed": len(self._subscribed),
            "ip_channels": len(self._ip_channels),
            "deadlines": len(self._deadlines),
            "queued_bytes": self._queued_bytes,
        }

    # -- internals -----------------------------------------------------------------------

    def _live_channel(self, channel_id: str, now: float) -> _Channel | None:
        """The channel, with a hold that has run out released even before its timer fires (the
        service may handle a frame past a deadline before it fires the timer)."""
        channel = self._channels.get(channel_id)
        if (
            channel is not None
            and channel.owner is None
            and channel.held_until is not None
            and now >= channel.held_until
        ):
            self._deadlines.cancel(("hold", channel_id))
            self._release_hold(channel)
            if channel.idle():
                del self._channels[channel_id]
                return None
        return channel

    def _ownership_refusal(self, conn: ConnId, ip: str, channel: _Channel | None) -> str | None:
        """Why ``conn`` (from ``ip``) may not own one more channel, or ``None``."""
        if len(self._owned.get(conn, ())) >= self._max_owned:
            return "Too many owned channels"
        if channel is None and len(self._channels) >= self._max_channels:
            return "Too many channels"
        already = channel is not None and channel.owner_ip == ip
        if not already and self._ip_channels.get(ip, 0) >= self._channels_per_ip:
            return "Too many channels from this address"
        return None

    def _take(
        self, conn: ConnId, ip: str, identity: Identity, channel_id: str, channel: _Channel
    ) -> None:
        """Make ``conn`` the owner of ``channel`` (free, or held for its key)."""
        if channel.held_until is not None:
            channel.held_until = None
            self._deadlines.cancel(("hold", channel_id))
        if channel.owner_ip != ip:
            self._uncount(channel)
            self._ip_channels[ip] = self._ip_channels.get(ip, 0) + 1
            channel.owner_ip = ip
        channel.owner = conn
        channel.owner_key = identity.public_key
        self._owned.setdefault(conn, set()).add(channel_id)
        self._owned_count += 1
        log.debug("channel owned", extra=context(conn=conn))

    def _release_hold(self, channel: _Channel) -> None:
        """No key holds the (ownerless) channel any more; its timer is gone or never was."""
        self._uncount(channel)
        channel.owner_key = None
        channel.held_until = None

    def _uncount(self, channel: _Channel) -> None:
        """The channel no longer counts against the address that owned or held it."""
        if channel.owner_ip is not None:
            left = self._ip_channels[channel.owner_ip] - 1
            if left:
                self._ip_channels[channel.owner_ip] = left
            else:
                del self._ip_channels[channel.owner_ip]
            channel.owner_ip = None

    def _enqueue(
        self, channel_id: str, channel: _Channel, frame: dict[str, Any], now: float
    ) -> None:
        """Queue an upstream message for the absent owner; a full queue (or a full byte
        budget) drops it, as the original dropped what a full queue could not take."""
        size = len(encode(frame).encode("utf-8"))
        if (
            len(channel.queue) >= self._upstream_queue_max
            or self._queued_bytes + size > self._upstream_queue_bytes
        ):
            log.info("upstream queue full: message dropped", extra=context())
            return
        expires_at = now + UPSTREAM_TTL_S
        if not channel.queue:
            self._deadlines.schedule(("queue", channel_id), expires_at)
        channel.queue.append(_Queued(frame, size, expires_at))
        self._queued_count += 1
        self._queued_bytes += size

    def _unqueue(self, channel: _Channel) -> None:
        queued = channel.queue.popleft()
        self._queued_count -= 1
        self._queued_bytes -= queued.size

    def _clear_queue(self, channel_id: str, channel: _Channel) -> None:
        if channel.queue:
            while channel.queue:
                self._unqueue(channel)
            self._deadlines.cancel(("queue", channel_id))

    def _end_stream(self, channel_id: str, channel: _Channel) -> tuple[str, list[ConnId]]:
        """End the live stream; the ``stream-end`` multicast for the subscribers."""
        assert channel.stream is not None
        frame = {
            "type": "stream-end",
            "streamId": channel.stream.stream_id,
            "channelId": channel_id,
        }
        channel.stream = None
        self._stream_count -= 1
        return encode(frame), list(channel.subscribers)

    def _forget_if_idle(self, channel_id: str, channel: _Channel) -> None:
        if channel.idle():
            del self._channels[channel_id]


def _fail(conn: ConnId, code: str, message: str) -> ChannelResult:
    return ChannelResult([(conn, {"type": "error", "code": code, "message": message})])


def _stream_start(channel_id: str, stream: _Stream) -> dict[str, Any]:
    return {
        "type": "stream-start",
        "streamId": stream.stream_id,
        "channelId": channel_id,
        "title": stream.title,
    }


def _available(channel_id: str, chunk_ids: list[str]) -> dict[str, Any]:
    return {"type": "chunk_available", "channelId": channel_id, "chunkIds": chunk_ids}
