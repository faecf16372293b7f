"""The channel dialect of WebSocket ``/signal`` and its decoding (docs/protocol/channels.md).

Zajel's apps own and follow channels, send upstream messages, run live streams and move
channel chunks over the socket they pair on. ``decode_fields`` turns one such frame into a
typed value; ``zajel.protocol.signaling.decode`` calls it for the types in ``CHANNEL_TYPES``, so
these frames get the same frame checks and order of checks as every other ``/signal`` frame.
The chunk messages decode to the values ``/relay`` uses (``zajel.protocol.chunks``), with the
rules of this dialect: ``channelId`` required on requests and pushes, ``routingHash`` optional,
``data`` an object or a JSON string of up to ``CHANNEL_CHUNK_MAX_BYTES``.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from zajel.protocol import errors
from zajel.protocol.chunks import (
    CHUNK_ID_MAX,
    CHUNK_MESSAGES,
    ChunkAnnounce,
    ChunkPush,
    ChunkRequest,
    is_chunk_id,
)
from zajel.protocol.frames import encode

CHANNEL_ID_MAX: Final = 256
STREAM_ID_MAX: Final = 256
TITLE_MAX: Final = 1024
EPHEMERAL_KEY_MAX: Final = 256
PEER_ID_MAX: Final = 256
# Ours: an upstream message is a small encrypted reply, reaction or vote; this keeps one
# connection's queued messages small (docs/protocol/channels.md, "Limits").
UPSTREAM_MAX_BYTES_DEFAULT: Final = 65_536
ANNOUNCE_MAX_DEFAULT: Final = 100
# The apps cut 64 KiB chunks and send them base64 in JSON, about 88 KB.
CHANNEL_CHUNK_MAX_BYTES_DEFAULT: Final = 131_072

CHANNEL_TYPES: Final = frozenset(
    {
        "channel-owner-register",
        "channel-subscribe",
        "channel-unsubscribe",
        "upstream-message",
        "stream-start",
        "stream-frame",
        "stream-end",
        "chunk_announce",
        "chunk_request",
        "chunk_push",
    }
)


@attrs.frozen
class OwnChannel:
    """``channel-owner-register``."""

    channel_id: str
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class Subscribe:
    """``channel-subscribe``."""

    channel_id: str
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class Unsubscribe:
    """``channel-unsubscribe`` (ours, additive)."""

    channel_id: str
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class Upstream:
    """``upstream-message``: ``message`` is relayed to the owner as it came."""

    channel_id: str
    message: dict[str, Any] = attrs.field(hash=False)
    ephemeral_public_key: str
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class StreamStart:
    stream_id: str
    channel_id: str
    title: str
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class StreamFrame:
    """``stream-frame``: ``frame`` is any JSON value, relayed as it came."""

    stream_id: str
    channel_id: str
    frame: Any = attrs.field(hash=False)
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class StreamEnd:
    stream_id: str
    channel_id: str
    needs_registration: bool = attrs.field(default=True, init=False)


ChannelMessage = (
    OwnChannel | Subscribe | Unsubscribe | Upstream | StreamStart | StreamFrame | StreamEnd
)
# Every message of this dialect goes to the ChunkIndex service (docs/architecture.md); the
# most frequent first, since the front end tests each frame against them in order.
ROUTED: Final = (
    *CHUNK_MESSAGES,
    StreamFrame,
    Upstream,
    Subscribe,
    Unsubscribe,
    OwnChannel,
    StreamStart,
    StreamEnd,
)


@attrs.frozen
class Limits:
    """The per-message limits of this dialect: ``announce_max`` and ``chunk_max_bytes`` are
    settings (docs/operations.md), ``upstream_max_bytes`` a fixed value."""

    announce_max: int = ANNOUNCE_MAX_DEFAULT
    chunk_max_bytes: int = CHANNEL_CHUNK_MAX_BYTES_DEFAULT
    upstream_max_bytes: int = UPSTREAM_MAX_BYTES_DEFAULT


def decode_fields(
    type_: str, obj: dict[str, Any], limits: Limits
) -> ChannelMessage | ChunkAnnounce | ChunkRequest | ChunkPush:
    """The typed message for one frame of a type in ``CHANNEL_TYPES``.

    Raises:
        ProtocolError: ``invalid_field`` naming the first field that breaks its rule, or
            ``chunk_too_large`` for a ``chunk_push`` over ``limits.chunk_max_bytes``.
    """
    if type_.startswith("chunk_"):
        return _decode_chunk(type_, obj, limits)
    if type_.startswith("stream-"):
        stream_id = _string(obj, "streamId", STREAM_ID_MAX)
        channel_id = _channel_id(obj)
        if type_ == "stream-start":
            title = obj.get("title")
            if title is None:
                title = ""
            if not isinstance(title, str) or len(title) > TITLE_MAX:
                raise errors.invalid_field(
                    f"Invalid title: expected a string of at most {TITLE_MAX} characters"
                )
            return StreamStart(stream_id, channel_id, title)
        if type_ == "stream-frame":
            if obj.get("frame") is None:
                raise errors.invalid_field("Missing required field: frame")
            return StreamFrame(stream_id, channel_id, obj["frame"])
        return StreamEnd(stream_id, channel_id)
    channel_id = _channel_id(obj)
    if type_ == "channel-owner-register":
        return OwnChannel(channel_id)
    if type_ == "channel-subscribe":
        return Subscribe(channel_id)
    if type_ == "channel-unsubscribe":
        return Unsubscribe(channel_id)
    message = obj.get("message")
    if message is None:
        raise errors.invalid_field("Missing required field: message")
    if not isinstance(message, dict):
        raise errors.invalid_field("Invalid message: expected a JSON object")
    size = len(encode(message).encode("utf-8"))
    if size > limits.upstream_max_bytes:
        raise errors.invalid_field(
            f"Invalid message: {size} bytes exceeds {limits.upstream_max_bytes} byte limit"
        )
    return Upstream(channel_id, message, _string(obj, "ephemeralPublicKey", EPHEMERAL_KEY_MAX))


def _decode_chunk(
    type_: str, obj: dict[str, Any], limits: Limits
) -> ChunkAnnounce | ChunkRequest | ChunkPush:
    peer_id = obj.get("peerId")
    if peer_id is not None and (not isinstance(peer_id, str) or len(peer_id) > PEER_ID_MAX):
        raise errors.invalid_field(
            f"Invalid peerId: expected a string of at most {PEER_ID_MAX} characters"
        )
    if type_ == "chunk_announce":
        entries = obj.get("chunks")
        if not isinstance(entries, list) or not 1 <= len(entries) <= limits.announce_max:
            raise errors.invalid_field(
                f"Invalid chunks: expected a list of 1 to {limits.announce_max} entries"
            )
        channel_id = _channel_id(obj) if obj.get("channelId") is not None else None
        valid = tuple(
            (entry["chunkId"], entry.get("routingHash") or "")
            for entry in entries
            if isinstance(entry, dict)
            and is_chunk_id(entry.get("chunkId"))
            and (entry.get("routingHash") is None or is_chunk_id(entry.get("routingHash")))
        )
        return ChunkAnnounce(peer_id, valid, channel_id)
    chunk_id = obj.get("chunkId")
    if not is_chunk_id(chunk_id):
        raise errors.invalid_field(
            f"Invalid chunkId: expected a string of 1 to {CHUNK_ID_MAX} characters"
        )
    channel_id = _channel_id(obj)
    if type_ == "chunk_request":
        return ChunkRequest(peer_id, chunk_id, channel_id)
    data = obj.get("data")
    if not isinstance(data, dict | str):
        raise errors.invalid_field("Invalid data: expected a JSON object or a JSON string")
    # docs/protocol/channels.md, "chunk_push": compact JSON with raw UTF-8. Encoded once here;
    # only the bytes travel on.
    data_json = encode(data).encode("utf-8")
    if len(data_json) > limits.chunk_max_bytes:
        raise errors.chunk_too_large(len(data_json), limits.chunk_max_bytes)
    return ChunkPush(peer_id, chunk_id, data_json, channel_id)


def _channel_id(obj: dict[str, Any]) -> str:
    value = obj.get("channelId")
    if not isinstance(value, str) or not 1 <= len(value) <= CHANNEL_ID_MAX:
        raise errors.invalid_field("Invalid channel ID")
    return value


def _string(obj: dict[str, Any], field: str, max_length: int) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise errors.invalid_field(
            f"Invalid {field}: expected a string of 1 to {max_length} characters"
        )
    return value
