"""Messages of WebSocket ``/relay`` and their decoding (``../shared/spec/relay.md``).

Covers the relay registry (``register``, ``update_load``, ``get_relays``, ``heartbeat``,
``ping``) and the rendezvous (``register_rendezvous``). As in ``signaling``, ``decode`` never
raises: a field error travels as an ``Invalid`` value with ``needs_registration`` set, so the
service can answer ``not_registered`` before ``invalid_field`` (conventions.md, "Checks run in
this order").

``peerId`` is required on ``register`` and optional everywhere else: relay.md, Identity, has a
message that omits it act for the connection's bound peer, and one that names another peer
rejected by the service (``peer_id_mismatch``), not here.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from zajel.protocol import fields
from zajel.protocol.frames import Invalid, decode_message

PEER_ID_MAX: Final = fields.PEER_ID_MAX_LENGTH
PUBLIC_KEY_MAX: Final = 1024
DEAD_DROP_MAX: Final = 4096
# Meeting points, hourly tokens and relay ids (conventions.md, Identifiers).
POINT_MAX: Final = 128
MAX_CONNECTIONS_DEFAULT: Final = 20
MAX_CONNECTIONS_RANGE: Final = (1, 1000)
RELAYS_DEFAULT: Final = 10
RELAYS_RANGE: Final = (1, 50)
# relay.md only says "integer ≥ 0"; a bound keeps absurd values out of the statistics.
CONNECTED_COUNT_MAX: Final = 1_000_000
# Meeting points or hourly tokens per register_rendezvous (conventions.md, Limits).
MAX_ITEMS_DEFAULT: Final = 50

KNOWN_TYPES: Final = frozenset(
    {"register", "update_load", "get_relays", "heartbeat", "ping", "register_rendezvous"}
)
# Types that an unregistered connection may send (relay.md, Identity).
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


RelayMessage = Register | UpdateLoad | GetRelays | Heartbeat | Ping | RegisterRendezvous | Invalid


def decode(data: str | bytes, *, max_items: int = MAX_ITEMS_DEFAULT) -> RelayMessage:
    """Decode one ``/relay`` frame. Never raises: failures come back as ``Invalid``.

    ``max_items`` bounds the meeting points, hourly tokens and ``dead_drops`` entries of one
    ``register_rendezvous`` (each counted before de-duplication).
    """
    return decode_message(
        data,
        known_types=KNOWN_TYPES,
        open_types=OPEN_TYPES,
        decode_fields=lambda type_, obj: _decode_fields(type_, obj, max_items),
    )


def _decode_fields(type_: str, obj: dict[str, Any], max_items: int) -> RelayMessage:
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
    return _decode_rendezvous(peer_id, obj, max_items)


def _decode_rendezvous(
    peer_id: str | None, obj: dict[str, Any], max_items: int
) -> RegisterRendezvous:
    # relay.md, Rendezvous: the snake_case spellings are accepted too; the camelCase one wins
    # when both are given (null counting as not given).
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
