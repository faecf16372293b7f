"""Decoding of ``/signal`` frames (docs/protocol/signaling.md, "Client → server";
docs/protocol/conventions.md, "Frames")."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings

from tests.strategies import frames, signal_objects
from zajel.protocol.channels import CHANNEL_TYPES
from zajel.protocol.errors import ProtocolError
from zajel.protocol.frames import Invalid, encode
from zajel.protocol.signaling import (
    CALL_TYPES,
    KNOWN_TYPES,
    RELAY_TYPES,
    WEBRTC_TYPES,
    PairAnswer,
    PairRequest,
    Ping,
    Register,
    Relay,
    decode,
)

CODE = "ABC234"
OTHER = "XYZ789"
KEY = base64.b64encode(bytes(range(32))).decode()
TOKEN = "Q2hhbmdlLW1lOiBhIHNhbXBsZSByZWNvbm5lY3QgdG9rZW4"
MESSAGE_CLASSES = (Register, PairRequest, PairAnswer, Relay, Ping, Invalid)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def test_the_known_types_are_those_of_the_contract():
    assert sorted(WEBRTC_TYPES) == ["answer", "ice_candidate", "offer"]
    assert sorted(CALL_TYPES) == [
        "call_answer",
        "call_hangup",
        "call_ice",
        "call_offer",
        "call_reject",
    ]
    assert sorted(KNOWN_TYPES - RELAY_TYPES - CHANNEL_TYPES) == [
        "pair_accept",
        "pair_reject",
        "pair_request",
        "pair_response",
        "ping",
        "register",
    ]
    # docs/protocol/channels.md, "Client → server"
    assert sorted(CHANNEL_TYPES) == [
        "channel-owner-register",
        "channel-subscribe",
        "channel-unsubscribe",
        "chunk_announce",
        "chunk_push",
        "chunk_request",
        "stream-end",
        "stream-frame",
        "stream-start",
        "upstream-message",
    ]


VALID = [
    (frame(type="register", pairingCode=CODE, publicKey=KEY), Register(CODE, KEY)),
    (frame(type="register", pairingCode=CODE), Register(CODE, None)),
    (frame(type="register", pairingCode=CODE, publicKey=None), Register(CODE, None)),
    (frame(type="register", pairingCode=CODE, unknown=[1, 2]), Register(CODE, None)),
    (
        frame(type="register", pairingCode=CODE, publicKey=KEY, reconnectToken=TOKEN),
        Register(CODE, KEY, TOKEN),
    ),
    (frame(type="register", pairingCode=CODE, reconnectToken=None), Register(CODE, None, None)),
    (frame(type="register", pairingCode=CODE, reconnectToken="t"), Register(CODE, None, "t")),
    (
        frame(type="register", pairingCode=CODE, reconnectToken="t" * 128),
        Register(CODE, None, "t" * 128),
    ),
    (frame(type="pair_request", targetCode=OTHER), PairRequest(OTHER, None)),
    (frame(type="pair_request", targetCode=OTHER, proposedName=None), PairRequest(OTHER, None)),
    (
        frame(type="pair_request", targetCode=OTHER, proposedName="Alice"),
        PairRequest(OTHER, "Alice"),
    ),
    (
        frame(type="pair_request", targetCode=OTHER, proposedName="n" * 64),
        PairRequest(OTHER, "n" * 64),
    ),
    (frame(type="pair_request", targetCode=OTHER, proposedName=""), PairRequest(OTHER, "")),
    (frame(type="pair_response", targetCode=OTHER, accepted=True), PairAnswer(OTHER, True)),
    (frame(type="pair_response", targetCode=OTHER, accepted=False), PairAnswer(OTHER, False)),
    (frame(type="pair_accept", targetCode=OTHER), PairAnswer(OTHER, True)),
    (frame(type="pair_accept", targetCode=OTHER, accepted=False), PairAnswer(OTHER, True)),
    (frame(type="pair_reject", targetCode=OTHER), PairAnswer(OTHER, False)),
    (frame(type="ping"), Ping()),
    (frame(type="ping", payload="ignored"), Ping()),
    *[
        (
            frame(type=type_, target=OTHER, payload={"sdp": "v=0"}),
            Relay(type_, OTHER, {"sdp": "v=0"}),
        )
        for type_ in sorted(RELAY_TYPES)
    ],
    (frame(type="offer", target=OTHER, payload={}), Relay("offer", OTHER, {})),
    (
        frame(type="ice_candidate", target=OTHER, payload={"candidate": "c" * 10_000}),
        Relay("ice_candidate", OTHER, {"candidate": "c" * 10_000}),  # only call_* are bounded
    ),
    (
        frame(type="call_offer", target=OTHER, payload={"sdp": "s" * 65_536, "withVideo": True}),
        Relay("call_offer", OTHER, {"sdp": "s" * 65_536, "withVideo": True}),
    ),
    (
        frame(type="call_ice", target=OTHER, payload={"candidate": "c" * 4_096}),
        Relay("call_ice", OTHER, {"candidate": "c" * 4_096}),
    ),
    (
        frame(type="call_ice", target=OTHER, payload={"candidate": {"candidate": "c", "m": 0}}),
        Relay("call_ice", OTHER, {"candidate": {"candidate": "c", "m": 0}}),
    ),
    (
        frame(type="call_hangup", target=OTHER, payload={"sdp": None, "candidate": None}),
        Relay("call_hangup", OTHER, {"sdp": None, "candidate": None}),
    ),
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid_frames_decode_to_typed_messages(data, expected):
    message = decode(data)
    assert type(message) is type(expected)
    assert message == expected


def test_registration_need_of_each_message():
    assert decode(frame(type="register", pairingCode=CODE)).needs_registration is False
    assert decode(frame(type="ping")).needs_registration is False
    assert decode(frame(type="pair_request", targetCode=OTHER)).needs_registration is True
    assert decode(frame(type="pair_accept", targetCode=OTHER)).needs_registration is True
    assert decode(frame(type="offer", target=OTHER, payload={})).needs_registration is True


BAD_CODES = ["abc234", "ABC23", "ABC2345", "ABC230", "ABCO23", "ABC231", "ABCI23", 234567, [CODE]]

INVALID_FIELDS = [
    *[
        (frame(type="register", pairingCode=bad, publicKey=KEY), "Invalid pairing code format")
        for bad in [*BAD_CODES, None]
    ],
    (frame(type="register", publicKey=KEY), "Invalid pairing code format"),
    *[
        (frame(type="register", pairingCode=CODE, publicKey=bad), "publicKey")
        for bad in [
            "not base64!",
            base64.b64encode(bytes(31)).decode(),
            base64.b64encode(bytes(33)).decode(),
            KEY.rstrip("="),
            32,
            [KEY],
        ]
    ],
    *[
        (
            frame(type="register", pairingCode=CODE, publicKey=KEY, reconnectToken=bad),
            "Invalid reconnectToken: expected a string of 1 to 128 characters",
        )
        for bad in ["", "t" * 129, 12, True, [TOKEN], {"token": TOKEN}]
    ],
    *[
        (frame(type="pair_request", targetCode=bad), "Invalid target code format")
        for bad in [*BAD_CODES, None]
    ],
    (frame(type="pair_request"), "Invalid target code format"),
    (frame(type="pair_request", targetCode=OTHER, proposedName="n" * 65), "proposedName"),
    (frame(type="pair_request", targetCode=OTHER, proposedName=7), "proposedName"),
    (frame(type="pair_request", targetCode=OTHER, proposedName=["x"]), "proposedName"),
    (frame(type="pair_response", targetCode=OTHER), "accepted"),
    (frame(type="pair_response", targetCode=OTHER, accepted=None), "accepted"),
    (frame(type="pair_response", targetCode=OTHER, accepted="true"), "accepted"),
    (frame(type="pair_response", targetCode=OTHER, accepted=1), "accepted"),
    (frame(type="pair_response", targetCode="nope", accepted=True), "Invalid target code format"),
    (frame(type="pair_accept"), "Invalid target code format"),
    (frame(type="pair_reject", targetCode=12), "Invalid target code format"),
    *[
        (frame(type=type_, target=bad, payload={}), "Invalid target code format")
        for type_ in sorted(RELAY_TYPES)
        for bad in ("abc234", None, 1)
    ],
    *[
        (frame(type=type_, target=OTHER, payload=bad), "payload")
        for type_ in sorted(RELAY_TYPES)
        for bad in (None, [], "sdp", 3)
    ],
    (frame(type="offer", target=OTHER), "payload"),
    (frame(type="call_offer", target=OTHER, payload={"sdp": "s" * 65_537}), "sdp"),
    (frame(type="call_answer", target=OTHER, payload={"sdp": 12}), "sdp"),
    (frame(type="call_ice", target=OTHER, payload={"candidate": "c" * 4_097}), "candidate"),
    (frame(type="call_ice", target=OTHER, payload={"candidate": ["c"]}), "candidate"),
    (
        frame(type="call_ice", target=OTHER, payload={"candidate": {"candidate": "c" * 4_100}}),
        "candidate",
    ),
]


@pytest.mark.parametrize(("data", "names"), INVALID_FIELDS)
def test_bad_fields_are_invalid_field_values(data, names):
    message = decode(data)
    assert isinstance(message, Invalid)
    assert message.error.code == "invalid_field"
    assert names in message.error.message
    type_ = json.loads(data)["type"]
    assert message.needs_registration is (type_ != "register")


def test_the_reconnect_token_never_shows_in_a_repr():
    # Registration is logged and its failures may be too: the token must not ride along.
    assert TOKEN not in repr(decode(frame(type="register", pairingCode=CODE, reconnectToken=TOKEN)))


@pytest.mark.parametrize(
    ("type_", "shown"),
    [
        ("bogus", "bogus"),
        ("", ""),
        ("Register", "Register"),
        ("PING", "PING"),
        ("register_rendezvous", "register_rendezvous"),
        ("y" * 100, "y" * 64 + "…"),
    ],
)
def test_unknown_types_are_unknown_type(type_, shown):
    message = decode(frame(type=type_, pairingCode=CODE))
    assert isinstance(message, Invalid)
    assert message.error == ProtocolError("unknown_type", f"Unknown message type: {shown}")
    assert message.needs_registration is False


@pytest.mark.parametrize(
    "data",
    [b'{"type":"ping"}', "", "ping", "[]", '{"type":5}', "{}", '{"type":"ping","x":NaN}'],
)
def test_malformed_frames_are_invalid_message(data):
    message = decode(data)
    assert isinstance(message, Invalid)
    assert message.error == ProtocolError("invalid_message", "Invalid message format")
    assert message.needs_registration is False


@settings(deadline=None, max_examples=200)
@given(signal_objects)
def test_decode_of_any_signal_like_object_returns_a_message(obj):
    message = decode(json.dumps(obj))
    assert isinstance(message, MESSAGE_CLASSES)
    if isinstance(message, Invalid):
        assert message.error.code in {"invalid_field", "unknown_type"}
        if message.error.code == "unknown_type":
            assert obj["type"] not in KNOWN_TYPES
        else:
            assert message.needs_registration is (obj["type"] != "register")
    else:
        assert obj["type"] in KNOWN_TYPES


@settings(deadline=None, max_examples=150)
@given(frames)
def test_decode_never_raises(data):
    message = decode(data)
    assert isinstance(message, MESSAGE_CLASSES)
    if isinstance(message, Relay):
        assert json.loads(encode(message.payload)) == message.payload
