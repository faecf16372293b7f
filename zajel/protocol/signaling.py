"""Messages of WebSocket ``/signal`` and their decoding (docs/protocol/signaling.md).

``decode`` turns one text frame into one typed message and never raises: a frame that breaks
the protocol becomes an ``Invalid`` message carrying its error. The SignalingRoom then answers
in the documented order (docs/protocol/conventions.md, "The order of checks"): the frame itself,
then the connection's registration, then the fields. That is why a field error travels as a
value with ``needs_registration`` set instead of being raised here: an unregistered sender of a
malformed ``offer`` must hear ``not_registered`` first.
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs

from zajel.protocol import channels, errors, fields
from zajel.protocol.chunks import ChunkMessage
from zajel.protocol.frames import Invalid, decode_message

PROPOSED_NAME_MAX = 64
SDP_MAX = 65_536
CANDIDATE_MAX = 4_096
PAIR_REQUEST_LIFETIME_S: Final = 120.0
PAIR_EXPIRING_WARNING_S: Final = 90.0
RECONNECT_GRACE_S: Final = 30.0
# The server's tokens are 43 characters (``secrets.token_urlsafe(32)``); anything a client sends
# back is only compared, so the bound just keeps junk small.
RECONNECT_TOKEN_MAX: Final = 128

WEBRTC_TYPES: Final = frozenset({"offer", "answer", "ice_candidate"})
CALL_TYPES: Final = frozenset(
    {"call_offer", "call_answer", "call_reject", "call_hangup", "call_ice"}
)
RELAY_TYPES: Final = WEBRTC_TYPES | CALL_TYPES
PAIR_ANSWER_TYPES: Final = frozenset({"pair_response", "pair_accept", "pair_reject"})
KNOWN_TYPES: Final = (
    RELAY_TYPES | PAIR_ANSWER_TYPES | {"register", "pair_request", "ping"} | channels.CHANNEL_TYPES
)
# Types that an unregistered connection may send.
OPEN_TYPES: Final = frozenset({"register", "ping"})


@attrs.frozen
class Register:
    """``register``; ``reconnect_token`` is the one a previous ``registered`` gave, if any."""

    pairing_code: str
    public_key: str | None
    # A secret of the device: kept out of reprs so that no log line can carry it.
    reconnect_token: str | None = attrs.field(default=None, repr=False)
    needs_registration: bool = attrs.field(default=False, init=False)


@attrs.frozen
class PairRequest:
    target_code: str
    proposed_name: str | None
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class PairAnswer:
    """``pair_response``, ``pair_accept`` or ``pair_reject``: the answer to a pending request."""

    requester_code: str
    accepted: bool
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class Relay:
    """``offer``/``answer``/``ice_candidate`` or ``call_*``, relayed to a matched peer."""

    type: str
    target: str
    payload: dict[str, Any]
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class Ping:
    needs_registration: bool = attrs.field(default=False, init=False)


SignalMessage = (
    Register
    | PairRequest
    | PairAnswer
    | Relay
    | Ping
    | channels.ChannelMessage
    | ChunkMessage
    | Invalid
)


def decode(data: str | bytes, *, limits: channels.Limits | None = None) -> SignalMessage:
    """Decode one ``/signal`` frame. Never raises: failures come back as ``Invalid``.

    ``limits``: those of the channel dialect (docs/protocol/channels.md); the defaults if not
    given.
    """
    limits = limits if limits is not None else _DEFAULT_LIMITS
    return decode_message(
        data,
        known_types=KNOWN_TYPES,
        open_types=OPEN_TYPES,
        decode_fields=lambda type_, obj: _decode_fields(type_, obj, limits),
    )


_DEFAULT_LIMITS: Final = channels.Limits()


def _decode_fields(type_: str, obj: dict[str, Any], limits: channels.Limits) -> SignalMessage:
    if type_ in channels.CHANNEL_TYPES:
        return channels.decode_fields(type_, obj, limits)
    if type_ in RELAY_TYPES:
        target = fields.require_pairing_code(obj, "target", "target code")
        payload = fields.require_object(obj, "payload")
        if type_ in CALL_TYPES:
            _check_call_payload(payload)
        return Relay(type_, target, payload)
    if type_ == "register":
        return Register(
            fields.require_pairing_code(obj, "pairingCode", "pairing code"),
            fields.optional_public_key(obj, "publicKey"),
            fields.optional_bounded_string(
                obj, "reconnectToken", min_length=1, max_length=RECONNECT_TOKEN_MAX
            ),
        )
    if type_ == "pair_request":
        return PairRequest(
            fields.require_pairing_code(obj, "targetCode", "target code"),
            fields.optional_string(obj, "proposedName", max_length=PROPOSED_NAME_MAX),
        )
    if type_ in PAIR_ANSWER_TYPES:
        requester = fields.require_pairing_code(obj, "targetCode", "target code")
        if type_ == "pair_response":
            return PairAnswer(requester, fields.require_bool(obj, "accepted"))
        return PairAnswer(requester, type_ == "pair_accept")
    return Ping()


def _check_call_payload(payload: dict[str, Any]) -> None:
    # The payload belongs to the clients; only the two large fields are bounded
    # (`sdp` ≤ 65,536 chars, `candidate` ≤ 4,096: docs/protocol/signaling.md, the section of
    # "call_offer, call_answer, call_reject, call_hangup, call_ice").
    fields.optional_string(payload, "sdp", max_length=SDP_MAX)
    candidate = payload.get("candidate")
    if isinstance(candidate, dict):
        size = len(json.dumps(candidate, separators=(",", ":")))
        if size > CANDIDATE_MAX:
            raise errors.invalid_field(
                f"Invalid candidate: expected at most {CANDIDATE_MAX} characters"
            )
    else:
        fields.optional_string(payload, "candidate", max_length=CANDIDATE_MAX)
