"""What a well-formed frame from the server looks like, endpoint by endpoint, for the state
machines' checks: each type the endpoint may send with the fields it must carry and their types
(docs/protocol/signaling.md, channels.md, relay.md and chunks.md, "Server → client"), and the
error codes a WebSocket error frame may name."""

from __future__ import annotations

import json
from typing import Any

from zajel.protocol import errors
from zajel.protocol.fields import PAIRING_CODE_ALPHABET
from zajel.protocol.signaling import RELAY_TYPES
from zajel.services.channels import CHANNEL_OWNED, NOT_OWNER, NOT_SUBSCRIBED

Schema = dict[str, dict[str, Any]]

# The error codes of WebSocket error frames (docs/protocol/conventions.md, "On a WebSocket");
# the HTTP-only codes never appear in a frame. ``internal_error`` is left out on purpose: the
# server never failed.
WS_ERROR_CODES = frozenset(
    {
        errors.INVALID_MESSAGE,
        errors.UNKNOWN_TYPE,
        errors.INVALID_FIELD,
        errors.NOT_REGISTERED,
        errors.RATE_LIMITED,
        errors.PAIRING_CODE_IN_USE,
        errors.PEER_NOT_FOUND,
        errors.PEER_ID_MISMATCH,
        errors.PEER_ID_IN_USE,
        errors.CHUNK_TOO_LARGE,
        errors.NOT_A_SOURCE,
        errors.UNAVAILABLE,
        errors.BUSY,
        CHANNEL_OWNED,
        NOT_SUBSCRIBED,
        NOT_OWNER,
    }
)


def optional(*kinds: type) -> tuple[type, ...]:
    return (*kinds, type(None))


ANY = object  # the field must be there, with any value

ERROR: Schema = {"error": {"code": str, "message": str}}

SIGNALING: Schema = {
    **ERROR,
    "registered": {"pairingCode": str, "reconnectToken": str},
    "pong": {},
    "pair_error": {"error": str},
    "pair_incoming": {"fromCode": str, "fromPublicKey": optional(str), "expiresIn": int},
    "pair_matched": {"peerCode": str, "peerPublicKey": optional(str), "isInitiator": bool},
    "pair_rejected": {"peerCode": str},
    "pair_timeout": {"peerCode": str},
    "pair_expiring": {"peerCode": str, "remainingSeconds": int},
    "peer_joined": {"pairingCode": str},
    "peer_left": {"pairingCode": str},
    **{kind: {"from": str, "payload": dict} for kind in RELAY_TYPES},
}

# The channel dialect of /signal (docs/protocol/channels.md).
CHANNELS: Schema = {
    "channel-owner-registered": {"channelId": str},
    "channel-subscribed": {"channelId": str},
    "channel-unsubscribed": {"channelId": str},
    "upstream-message": {"channelId": str, "message": dict},
    # ``message.id`` as it was sent, any JSON value, or null (docs/protocol/channels.md).
    "upstream-ack": {"channelId": str, "messageId": ANY},
    "stream-start": {"streamId": str, "channelId": str, "title": str},
    "stream-started": {"streamId": str, "channelId": str, "subscriberCount": int},
    "stream-frame": {"streamId": str, "channelId": str, "frame": ANY},
    "stream-end": {"streamId": str, "channelId": str},
    "stream-ended": {"streamId": str, "channelId": str},
    "chunk_announce_ack": {"registered": int},
    "chunk_available": {"channelId": str, "chunkIds": list},
    "chunk_pull": {"chunkId": str},
    "chunk_pulling": {"chunkId": str},
    "chunk_data": {"chunkId": str, "data": ANY, "source": str, "channelId": str},
    "chunk_error": {"chunkId": str, "error": str},
    "chunk_push_ack": {"chunkId": str, "cached": bool, "servedCount": int},
}

SIGNAL: Schema = {**SIGNALING, **CHANNELS}

RELAY: Schema = {
    **ERROR,
    "registered": {"peerId": str, "relays": list},
    "load_updated": {"peerId": str, "connectedCount": int},
    "relays": {"relays": list},
    "heartbeat_ack": {"timestamp": int},
    "pong": {},
    "rendezvous_result": {"liveMatches": list, "deadDrops": list},
    "rendezvous_match": {"match": dict},
    # docs/protocol/chunks.md
    "chunk_announce_ack": {"registered": int},
    "chunk_pull": {"chunkId": str},
    "chunk_data": {"chunkId": str, "data": ANY, "source": str},
    "chunk_not_found": {"chunkId": str, "message": str},
    "chunk_push_ack": {"chunkId": str},
}

RELAY_INFO = {"peerId": str, "publicKey": optional(str), "capacity": (int, float)}
LIVE_MATCH = {"peerId": str}
DEAD_DROP = {"peerId": str, "deadDrop": str}
CODE_FIELDS = ("pairingCode", "fromCode", "peerCode", "from")


def is_code(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 6
        and all(c in PAIRING_CODE_ALPHABET for c in value)
    )


def check_fields(item: Any, fields: dict[str, Any], what: Any) -> None:
    assert isinstance(item, dict), what
    for field, types in fields.items():
        assert field in item, (field, what)
        assert isinstance(item[field], types), (field, what)
        # JSON's true is not a number (a field of any value may be a boolean)
        allowed = _as_tuple(types)
        assert not (isinstance(item[field], bool) and bool not in allowed and ANY not in allowed), (
            field,
            what,
        )


def _as_tuple(types: Any) -> tuple[Any, ...]:
    return types if isinstance(types, tuple) else (types,)


def check_frame(frame: Any, schema: Schema) -> None:
    """``frame`` (decoded) is of a type in ``schema``, with its fields; an error names a code
    of the protocol's (never ``internal_error``); pairing codes are valid."""
    assert isinstance(frame, dict), frame
    kind = frame.get("type")
    assert kind in schema, frame
    check_fields(frame, schema[kind], frame)
    for field in CODE_FIELDS:
        if field in frame and schema is not RELAY:
            assert is_code(frame[field]), (field, frame)
    if kind == "error":
        assert frame["code"] in WS_ERROR_CODES, frame


def decode_frame(data: str | bytes, schema: Schema) -> dict[str, Any]:
    """A frame as the server sent it: compact JSON text, checked against ``schema``."""
    assert isinstance(data, str), data  # the server sends text frames only
    frame = json.loads(data)
    check_frame(frame, schema)
    return frame  # type: ignore[no-any-return]
