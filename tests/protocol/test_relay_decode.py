"""Decoding of ``/relay`` frames (docs/protocol/relay.md, "Identity", "Client → server")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings

from tests.strategies import relay_frames, relay_objects
from zajel.protocol.errors import ProtocolError
from zajel.protocol.frames import Invalid
from zajel.protocol.relay import (
    KNOWN_TYPES,
    MAX_CONNECTIONS_DEFAULT,
    MAX_CONNECTIONS_RANGE,
    OPEN_TYPES,
    RELAYS_DEFAULT,
    RELAYS_RANGE,
    GetRelays,
    Heartbeat,
    Ping,
    Register,
    RegisterRendezvous,
    UpdateLoad,
    decode,
)

PEER = "peer-1_A"
MESSAGE_CLASSES = (Register, UpdateLoad, GetRelays, Heartbeat, Ping, RegisterRendezvous, Invalid)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def rendezvous(
    *,
    peer_id: str | None = None,
    daily: tuple[str, ...] = (),
    hourly: tuple[str, ...] = (),
    dead_drop: str = "",
    dead_drops: dict[str, str] | None = None,
    relay_id: str | None = None,
) -> RegisterRendezvous:
    return RegisterRendezvous(peer_id, daily, hourly, dead_drop, dead_drops or {}, relay_id)


def test_the_known_types_are_those_of_the_contract():
    assert sorted(KNOWN_TYPES) == [
        "chunk_announce",
        "chunk_push",
        "chunk_request",
        "get_relays",
        "heartbeat",
        "ping",
        "register",
        "register_rendezvous",
        "update_load",
    ]
    assert sorted(OPEN_TYPES) == ["ping", "register"]
    assert (MAX_CONNECTIONS_DEFAULT, MAX_CONNECTIONS_RANGE) == (20, (1, 1000))
    assert (RELAYS_DEFAULT, RELAYS_RANGE) == (10, (1, 50))


VALID = [
    # register
    (frame(type="register", peerId=PEER), Register(PEER, 20, None)),
    (
        frame(type="register", peerId=PEER, maxConnections=5, publicKey="key"),
        Register(PEER, 5, "key"),
    ),
    (
        frame(type="register", peerId=PEER, maxConnections=None, publicKey=None),
        Register(PEER, 20, None),
    ),
    (frame(type="register", peerId=PEER, publicKey=""), Register(PEER, 20, "")),
    (frame(type="register", peerId=PEER, publicKey="k" * 1024), Register(PEER, 20, "k" * 1024)),
    (frame(type="register", peerId=PEER, maxConnections=1), Register(PEER, 1, None)),
    (frame(type="register", peerId=PEER, maxConnections=1000), Register(PEER, 1000, None)),
    (frame(type="register", peerId="p" * 128), Register("p" * 128, 20, None)),
    (frame(type="register", peerId="a"), Register("a", 20, None)),
    (frame(type="register", peerId="-_09azAZ"), Register("-_09azAZ", 20, None)),
    (frame(type="register", peerId=PEER, unknown=[1, {}]), Register(PEER, 20, None)),
    # update_load
    (frame(type="update_load", peerId=PEER, connectedCount=3), UpdateLoad(PEER, 3)),
    (frame(type="update_load", connectedCount=0), UpdateLoad(None, 0)),
    (frame(type="update_load", peerId=None, connectedCount=7), UpdateLoad(None, 7)),
    (frame(type="update_load", connectedCount=1_000_000), UpdateLoad(None, 1_000_000)),
    # get_relays
    (frame(type="get_relays"), GetRelays(None, 10)),
    (frame(type="get_relays", count=None), GetRelays(None, 10)),
    (frame(type="get_relays", peerId=PEER, count=1), GetRelays(PEER, 1)),
    (frame(type="get_relays", count=50), GetRelays(None, 50)),
    # heartbeat, ping
    (frame(type="heartbeat"), Heartbeat(None)),
    (frame(type="heartbeat", peerId=PEER), Heartbeat(PEER)),
    (frame(type="heartbeat", peerId=None), Heartbeat(None)),
    (frame(type="ping"), Ping()),
    (frame(type="ping", peerId="not a peer id!"), Ping()),
    # register_rendezvous
    (frame(type="register_rendezvous"), rendezvous()),
    (
        frame(
            type="register_rendezvous",
            peerId=PEER,
            dailyPoints=["d1", "d2"],
            hourlyTokens=["h1"],
            deadDrop="drop",
            relayId="relay-9",
        ),
        rendezvous(
            peer_id=PEER, daily=("d1", "d2"), hourly=("h1",), dead_drop="drop", relay_id="relay-9"
        ),
    ),
    (
        frame(
            type="register_rendezvous",
            dailyPoints=None,
            hourlyTokens=None,
            deadDrop=None,
            dead_drops=None,
            relayId=None,
            peerId=None,
        ),
        rendezvous(),
    ),
    (frame(type="register_rendezvous", dailyPoints=[], hourlyTokens=[]), rendezvous()),
    (frame(type="register_rendezvous", deadDrop=""), rendezvous()),
    (
        frame(type="register_rendezvous", deadDrop="x" * 4096),
        rendezvous(dead_drop="x" * 4096),
    ),
    # snake_case spellings
    (
        frame(type="register_rendezvous", daily_points=["d"], hourly_tokens=["h"]),
        rendezvous(daily=("d",), hourly=("h",)),
    ),
    (
        frame(type="register_rendezvous", daily_points=["d"], dead_drops={"d": "mine"}),
        rendezvous(daily=("d",), dead_drops={"d": "mine"}),
    ),
    (
        frame(type="register_rendezvous", dead_drops={"p": "", "q": "y" * 4096}),
        rendezvous(dead_drops={"p": "", "q": "y" * 4096}),
    ),
    # camelCase wins over snake_case; a null camelCase counts as absent
    (
        frame(type="register_rendezvous", dailyPoints=["camel"], daily_points=["snake"]),
        rendezvous(daily=("camel",)),
    ),
    (
        frame(type="register_rendezvous", hourlyTokens=["camel"], hourly_tokens=["snake"]),
        rendezvous(hourly=("camel",)),
    ),
    (
        frame(type="register_rendezvous", dailyPoints=[], daily_points=["snake"]),
        rendezvous(),
    ),
    (
        frame(type="register_rendezvous", dailyPoints=None, daily_points=["snake"]),
        rendezvous(daily=("snake",)),
    ),
    (
        frame(type="register_rendezvous", dailyPoints=["camel"], daily_points=[1]),
        rendezvous(daily=("camel",)),  # the losing spelling is not checked
    ),
    # de-duplication keeps first-seen order
    (
        frame(
            type="register_rendezvous",
            dailyPoints=["b", "a", "b", "c", "a"],
            hourlyTokens=["t", "t"],
        ),
        rendezvous(daily=("b", "a", "c"), hourly=("t",)),
    ),
    (
        frame(type="register_rendezvous", dailyPoints=["p" * 128], relayId="r" * 128),
        rendezvous(daily=("p" * 128,), relay_id="r" * 128),
    ),
    (
        frame(type="register_rendezvous", relayId="any string: not a peer id"),
        rendezvous(relay_id="any string: not a peer id"),
    ),
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid_frames_decode_to_typed_messages(data, expected):
    message = decode(data)
    assert type(message) is type(expected)
    assert message == expected


def test_registration_need_of_each_message():
    assert decode(frame(type="register", peerId=PEER)).needs_registration is False
    assert decode(frame(type="ping")).needs_registration is False
    assert decode(frame(type="update_load", connectedCount=1)).needs_registration is True
    assert decode(frame(type="get_relays")).needs_registration is True
    assert decode(frame(type="heartbeat")).needs_registration is True
    assert decode(frame(type="register_rendezvous")).needs_registration is True


def test_dead_drop_for_prefers_the_points_own_dead_drop():
    message = decode(
        frame(
            type="register_rendezvous",
            dailyPoints=["a", "b"],
            deadDrop="general",
            dead_drops={"a": "for a", "elsewhere": "x"},
        )
    )
    assert isinstance(message, RegisterRendezvous)
    assert message.dead_drop_for("a") == "for a"
    assert message.dead_drop_for("b") == "general"
    assert message.dead_drop_for("elsewhere") == "x"
    assert rendezvous().dead_drop_for("a") == ""


def test_rendezvous_messages_are_hashable_values():
    one = decode(frame(type="register_rendezvous", dailyPoints=["a"], dead_drops={"a": "x"}))
    two = decode(frame(type="register_rendezvous", dailyPoints=["a"], dead_drops={"a": "x"}))
    other = decode(frame(type="register_rendezvous", dailyPoints=["a"], dead_drops={"a": "y"}))
    assert one == two
    assert one != other
    assert hash(one) == hash(two)


BAD_PEER_IDS = ["", "p" * 129, "has space", "dot.ted", "slash/", "ümlaut", "new\n", 12, ["p"], True]
NOT_INTEGERS = [True, False, 1.5, 2.0, "3", [3], {"n": 3}]

INVALID_FIELDS = [
    # peerId: required on register, optional (but checked) elsewhere
    (frame(type="register"), "Invalid peerId format"),
    (frame(type="register", peerId=None), "Invalid peerId format"),
    *[
        (frame(type=type_, peerId=bad, connectedCount=1), "Invalid peerId format")
        for type_ in ("register", "update_load", "get_relays", "heartbeat", "register_rendezvous")
        for bad in BAD_PEER_IDS
    ],
    # register.maxConnections and publicKey
    *[
        (frame(type="register", peerId=PEER, maxConnections=bad), "maxConnections")
        for bad in [0, -1, 1001, 10**30, *NOT_INTEGERS]
    ],
    (frame(type="register", peerId=PEER, publicKey="k" * 1025), "publicKey"),
    (frame(type="register", peerId=PEER, publicKey=12), "publicKey"),
    (frame(type="register", peerId=PEER, publicKey=["k"]), "publicKey"),
    # update_load.connectedCount: required
    (frame(type="update_load"), "connectedCount"),
    (frame(type="update_load", connectedCount=None), "connectedCount"),
    *[
        (frame(type="update_load", connectedCount=bad), "connectedCount")
        for bad in [-1, 1_000_001, *NOT_INTEGERS]
    ],
    # get_relays.count
    *[(frame(type="get_relays", count=bad), "count") for bad in [0, -5, 51, *NOT_INTEGERS]],
    # register_rendezvous lists, in either spelling
    *[
        (frame(type="register_rendezvous", **{name: bad}), name)
        for name in ("dailyPoints", "daily_points", "hourlyTokens", "hourly_tokens")
        for bad in [
            "point",
            {"p": 1},
            5,
            True,
            [""],
            ["p" * 129],
            ["ok", 3],
            ["ok", None],
            [["nested"]],
            ["p"] * 51,
        ]
    ],
    # the winning camelCase spelling is the one checked
    (
        frame(type="register_rendezvous", dailyPoints=[""], daily_points=["fine"]),
        "dailyPoints",
    ),
    # deadDrop, dead_drops, relayId
    (frame(type="register_rendezvous", deadDrop="x" * 4097), "deadDrop"),
    (frame(type="register_rendezvous", deadDrop=7), "deadDrop"),
    (frame(type="register_rendezvous", deadDrop=["x"]), "deadDrop"),
    *[
        (frame(type="register_rendezvous", dead_drops=bad), "dead_drops")
        for bad in [
            "drop",
            ["drop"],
            3,
            {"": "x"},
            {"p" * 129: "x"},
            {"p": "x" * 4097},
            {"p": 1},
            {"p": None},
            {"p": {"nested": "x"}},
            {f"p{i}": "x" for i in range(51)},
        ]
    ],
    *[
        (frame(type="register_rendezvous", relayId=bad), "relayId")
        for bad in ["", "r" * 129, 5, ["r"], False]
    ],
]


@pytest.mark.parametrize(("data", "names"), INVALID_FIELDS)
def test_bad_fields_are_invalid_field_values(data, names):
    message = decode(data)
    assert isinstance(message, Invalid)
    assert message.error.code == "invalid_field"
    assert names in message.error.message
    type_ = json.loads(data)["type"]
    assert message.needs_registration is (type_ != "register")


@pytest.mark.parametrize(
    "name", ["dailyPoints", "daily_points", "hourlyTokens", "hourly_tokens", "dead_drops"]
)
def test_max_items_bounds_points_tokens_and_dead_drops(name):
    def items(n: int) -> Any:
        if name == "dead_drops":
            return {f"p{i}": "x" for i in range(n)}
        return [f"p{i}" for i in range(n)]

    assert isinstance(
        decode(frame(type="register_rendezvous", **{name: items(50)})), RegisterRendezvous
    )
    assert isinstance(decode(frame(type="register_rendezvous", **{name: items(51)})), Invalid)
    custom = frame(type="register_rendezvous", **{name: items(3)})
    assert isinstance(decode(custom, max_items=3), RegisterRendezvous)
    assert isinstance(decode(custom, max_items=2), Invalid)
    assert isinstance(decode(custom, max_items=100), RegisterRendezvous)


def test_max_items_counts_entries_before_de_duplication():
    data = frame(type="register_rendezvous", dailyPoints=["same"] * 4)
    message = decode(data, max_items=4)
    assert isinstance(message, RegisterRendezvous)
    assert message.daily_points == ("same",)
    refused = decode(data, max_items=3)
    assert isinstance(refused, Invalid)
    assert "dailyPoints" in refused.error.message


@pytest.mark.parametrize(
    ("type_", "shown"),
    [
        ("bogus", "bogus"),
        ("", ""),
        ("Register", "Register"),
        ("PING", "PING"),
        ("pair_request", "pair_request"),
        ("offer", "offer"),
        ("z" * 100, "z" * 64 + "…"),
    ],
)
def test_unknown_types_are_unknown_type(type_, shown):
    message = decode(frame(type=type_, peerId=PEER))
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


def _has_lone_surrogate(text: str) -> bool:
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@settings(deadline=None, max_examples=300)
@given(relay_objects)
def test_decode_of_any_relay_like_object_returns_a_message(obj):
    text = json.dumps(obj)
    message = decode(text)
    assert isinstance(message, MESSAGE_CLASSES)
    if _has_lone_surrogate(text):
        # Text that could never be sent on as UTF-8 is refused as a whole.
        assert isinstance(message, Invalid)
        assert message.error.code == "invalid_message"
        return
    if isinstance(message, Invalid):
        assert message.error.code in {"invalid_field", "unknown_type"}
        if message.error.code == "unknown_type":
            assert obj["type"] not in KNOWN_TYPES
            assert message.needs_registration is False
        else:
            assert message.needs_registration is (obj["type"] not in OPEN_TYPES)
    else:
        assert obj["type"] in KNOWN_TYPES
    if isinstance(message, RegisterRendezvous):
        assert len(set(message.daily_points)) == len(message.daily_points) <= 50
        assert len(set(message.hourly_tokens)) == len(message.hourly_tokens) <= 50
        assert len(message.dead_drops) <= 50


@settings(deadline=None, max_examples=200)
@given(relay_frames)
def test_decode_never_raises(data):
    assert isinstance(decode(data), MESSAGE_CLASSES)
