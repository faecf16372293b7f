"""Messages of WebSocket ``/relay`` and their decoding (``docs/protocol/relay.md``).

Covers the relay registry (``register``, ``update_load``, ``get_relays``, ``heartbeat``,
``ping``) and the rendezvous (``register_rendezvous``). As in ``signaling``, ``decode`` never
raises: a field error travels as an ``Invalid`` value with ``needs_registration`` set, so the
service can answer ``not_registered`` before ``invalid_field``
(docs/protocol/conventions.md, "The order of checks").

``peerId`` is required on ``register`` and optional everywhere else: docs/protocol/relay.md,
"Identity", has a message that omits it act for the connection's bound peer, and one that names
another peer rejected by the service (``peer_id_mismatch``), not here.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from zajel.protocol import errors, fields
from zajel.protocol.chunks import (
    CHUNK_ID_MAX,
    ChunkAnnounce,
    ChunkPush,
    ChunkRequest,
    is_chunk_id,
)
from zajel.protocol.frames import Invalid, decode_message, encode

PEER_ID_MAX: Final = fields.PEER_ID_MAX_LENGTH
PUBLIC_KEY_MAX: Final = 1024
DEAD_DROP_MAX: Final = 4096
# Meeting points, hourly tokens and relay ids
# (docs/protocol/conventions.md, "Identifiers and field checks").
POINT_MAX: Final = 128
MAX_CONNECTIONS_DEFAULT: Final = 20
MAX_CONNECTIONS_RANGE: Final = (1, 1000)
RELAYS_DEFAULT: Final = 10
RELAYS_RANGE: Final = (1, 50)
# Ours: a bound on connectedCount keeps absurd values out of the statistics.
CONNECTED_COUNT_MAX: Final = 1_000_000
# Meeting points or hourly tokens per register_rendezvous
# (docs/protocol/relay.md, "Limits of rendezvous").
MAX_ITEMS_DEFAULT: Final = 50

CHUNK_ANNOUNCE_MAX_DEFAULT: Final = 100
CHUNK_MAX_BYTES_DEFAULT: Final = 65_536

CHUNK_TYPES: Final = frozenset({"chunk_announce", "chunk_request", "chunk_push"})
KNOWN_TYPES: Final = (
    frozenset({"register", "update_load", "get_relays", "heartbeat", "ping", "register_rendezvous"})
    | CHUNK_TYPES
)
# Types that an unregistered connection may send (docs/protocol/relay.md, "Client → server").
OPEN_TYPES: Final = frozenset({"register", "ping"})


@attrs.frozen
class Register:
    peer_id: str
    max_connections: int
    public_key: str | None
    needs_registration: bool = attrs.field(default=False, init=False)


@attrs.frozen
class UpdateLoad:
    peer_id: str | None
    connected_count: int
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class GetRelays:
    peer_id: str | None
    count: int
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class Heartbeat:
    peer_id: str | None
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class Ping:
    needs_registration: bool = attrs.field(default=False, init=False)


@attrs.frozen
class RegisterRendezvous:
    """A ``register_rendezvous``: points and tokens de-duplicated in first-seen order.

    ``dead_drop`` is ``""`` when absent; ``dead_drops`` maps a point to its own dead drop, which
    wins over ``dead_drop`` for that point (see ``dead_drop_for``).
    """

    peer_id: str | None
    daily_points: tuple[str, ...]
    hourly_tokens: tuple[str, ...]
    dead_drop: str
    # A dict is unhashable: compared, but left out of the hash of this frozen class.
    dead_drops: dict[str, str] = attrs.field(factory=dict, hash=False)
    relay_id: str | None = None
    needs_registration: bool = attrs.field(default=True, init=False)

    def dead_drop_for(self, point: str) -> str:
        """The dead drop the caller leaves at ``point``."""
        return self.dead_drops.get(point, self.dead_drop)


RelayMessage = (
    Register
    | UpdateLoad
    | GetRelays
    | Heartbeat
    | Ping
    | RegisterRendezvous
    | ChunkAnnounce
    | ChunkRequest
    | ChunkPush
    | Invalid
)


@attrs.frozen
class Limits:
    """The per-message limits of ``/relay``, all of them settings (docs/operations.md,
    "Settings in use")."""

    max_items: int = MAX_ITEMS_DEFAULT
    announce_max: int = CHUNK_ANNOUNCE_MAX_DEFAULT
    chunk_max_bytes: int = CHUNK_MAX_BYTES_DEFAULT


def decode(
    data: str | bytes, *, max_items: int = MAX_ITEMS_DEFAULT, limits: Limits | None = None
) -> RelayMessage:
    """Decode one ``/relay`` frame. Never raises: failures come back as ``Invalid``.

    ``max_items`` bounds the meeting points, hourly tokens and ``dead_drops`` entries of one
    ``register_rendezvous`` (each counted before de-duplication); ``limits``, when given, sets
    every limit (its ``max_items`` included).
    """
    limits = limits if limits is not None else Limits(max_items=max_items)
    return decode_message(
        data,
        known_types=KNOWN_TYPES,
        open_types=OPEN_TYPES,
        decode_fields=lambda type_, obj: _decode_fields(type_, obj, limits),
    )


def _decode_fields(type_: str, obj: dict[str, Any], limits: Limits) -> RelayMessage:
    if type_ == "ping":
        return Ping()
    if type_ == "register":
        low, high = MAX_CONNECTIONS_RANGE
        return Register(
            fields.require_peer_id(obj, "peerId"),
            fields.optional_int(
                obj, "maxConnections", minimum=low, maximum=high, default=MAX_CONNECTIONS_DEFAULT
            ),
            fields.optional_string(obj, "publicKey", max_length=PUBLIC_KEY_MAX),
        )
    peer_id = fields.optional_peer_id(obj, "peerId")
    if type_ == "update_load":
        count = fields.require_int(obj, "connectedCount", minimum=0, maximum=CONNECTED_COUNT_MAX)
        return UpdateLoad(peer_id, count)
    if type_ == "get_relays":
        low, high = RELAYS_RANGE
        return GetRelays(
            peer_id,
            fields.optional_int(obj, "count", minimum=low, maximum=high, default=RELAYS_DEFAULT),
        )
    if type_ == "heartbeat":
        return Heartbeat(peer_id)
    if type_ in CHUNK_TYPES:
        return _decode_chunk(type_, peer_id, obj, limits)
    return _decode_rendezvous(peer_id, obj, limits.max_items)


def _decode_chunk(
    type_: str, peer_id: str | None, obj: dict[str, Any], limits: Limits
) -> ChunkAnnounce | ChunkRequest | ChunkPush:
    channel_id = fields.optional_bounded_string(
        obj, "channelId", min_length=1, max_length=CHUNK_ID_MAX
    )
    if type_ == "chunk_announce":
        entries = obj.get("chunks")
        if not isinstance(entries, list) or not 1 <= len(entries) <= limits.announce_max:
            raise errors.invalid_field(
                f"Invalid chunks: expected a list of 1 to {limits.announce_max} entries"
            )
        valid = tuple(
            (entry["chunkId"], entry["routingHash"])
            for entry in entries
            if isinstance(entry, dict)
            and is_chunk_id(entry.get("chunkId"))
            and is_chunk_id(entry.get("routingHash"))
        )
        return ChunkAnnounce(peer_id, valid, channel_id)
    chunk_id = fields.optional_bounded_string(obj, "chunkId", min_length=1, max_length=CHUNK_ID_MAX)
    if chunk_id is None:
        raise errors.invalid_field(
            f"Invalid chunkId: expected a string of 1 to {CHUNK_ID_MAX} characters"
        )
    if type_ == "chunk_request":
        return ChunkRequest(peer_id, chunk_id, channel_id)
    if obj.get("data") is None:
        raise errors.invalid_field("Invalid data: expected a JSON value")
    # docs/protocol/chunks.md, "Size": compact JSON with raw UTF-8, at most chunk_max_bytes. Encoded
    # once here; only the bytes travel on (decoding refused lone surrogates, so UTF-8 holds it).
    data_json = encode(obj["data"]).encode("utf-8")
    if len(data_json) > limits.chunk_max_bytes:
        raise errors.chunk_too_large(len(data_json), limits.chunk_max_bytes)
    return ChunkPush(peer_id, chunk_id, data_json)


def _decode_rendezvous(
    peer_id: str | None, obj: dict[str, Any], max_items: int
) -> RegisterRendezvous:
    # docs/protocol/relay.md, "register_rendezvous": the snake_case spellings are accepted too;
    # the camelCase one wins when both are given (null counting as not given).
    daily = _points(obj, "dailyPoints", "daily_points", max_items)
    hourly = _points(obj, "hourlyTokens", "hourly_tokens", max_items)
    dead_drop = fields.optional_string(obj, "deadDrop", max_length=DEAD_DROP_MAX)
    dead_drops = fields.optional_string_map(
        obj,
        "dead_drops",
        key_max_length=POINT_MAX,
        value_max_length=DEAD_DROP_MAX,
        max_items=max_items,
    )
    relay_id = fields.optional_bounded_string(obj, "relayId", min_length=1, max_length=POINT_MAX)
    return RegisterRendezvous(peer_id, daily, hourly, dead_drop or "", dead_drops, relay_id)


def _points(obj: dict[str, Any], camel: str, snake: str, max_items: int) -> tuple[str, ...]:
    field = camel if obj.get(camel) is not None else snake
    items = fields.optional_string_list(obj, field, max_length=POINT_MAX, max_items=max_items)
    # dict keeps first-seen order; the limit was checked on the list as sent.
    return tuple(dict.fromkeys(items))
