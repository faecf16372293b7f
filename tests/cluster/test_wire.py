"""The codec of messages between nodes (zajel.cluster.wire): every registered class round-trips
to a value of exactly the same types, plain JSON stays plain, and only the registry decodes."""

from __future__ import annotations

import base64
import enum
import json
import math
import re
import sys
import types
import typing
from collections import OrderedDict
from typing import Any, Literal

import attrs
import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import channel_objects, frames, relay_frames, signal_objects
from zajel.cluster import wire
from zajel.cluster.wire import WireError
from zajel.protocol import attestation, channels, chunks, errors, relay, servers, signaling
from zajel.protocol.errors import ProtocolError
from zajel.protocol.frames import Invalid
from zajel.protocol.signaling import Relay
from zajel.services import _durable, _mailbox
from zajel.services import attestation as attestation_service
from zajel.services import servers as servers_service
from zajel.services._peers import Attach, Detach, Identity, Inbound
from zajel.services.chunk_index import ChunkStats, GetChunkStats
from zajel.services.relay import GetRelayStats, RelayStats
from zajel.services.signaling import GetStats, SignalingStats
from zajel.storage import interface as storage

CODE = "ABC234"
OTHER = "XYZ789"
KEY = base64.b64encode(bytes(range(32))).decode()
SIGNAL = Identity("signal", CODE, KEY)


# -- comparing ---------------------------------------------------------------------------------


def assert_same(got: Any, expected: Any, path: str = "value") -> None:
    """``got`` is ``expected`` down to the types: a tuple is not a list, ``True`` is not ``1``,
    ``nan`` is ``nan``, ``-0.0`` is not ``0.0``, and fields left out of ``__eq__``
    (``Invalid.error``) are compared too."""
    assert type(got) is type(expected), f"{path}: {type(got)} is not {type(expected)}"
    if attrs.has(type(expected)):
        for field in attrs.fields(type(expected)):
            name = field.name
            assert_same(getattr(got, name), getattr(expected, name), f"{path}.{name}")
    elif isinstance(expected, dict):
        assert list(got) == list(expected), f"{path}: keys {list(got)} != {list(expected)}"
        for key in expected:
            assert_same(got[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), f"{path}: length"
        for index, (left, right) in enumerate(zip(got, expected, strict=True)):
            assert_same(left, right, f"{path}[{index}]")
    elif isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(got), path
        else:
            assert got == expected, path
            assert math.copysign(1, got) == math.copysign(1, expected), f"{path}: sign of zero"
    elif isinstance(expected, ProtocolError):
        assert (got.code, got.message) == (expected.code, expected.message), path
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"


def assert_round_trip(value: Any, codec: wire.Codec = wire.CODEC) -> bytes:
    """Both ways back (structure and bytes) give ``value``; the structure is JSON as orjson
    and the stdlib read it. Returns the bytes."""
    structure = codec.to_wire(value)
    assert_same(codec.from_wire(structure), value)
    data = codec.dumps(value)
    assert_same(codec.loads(data), value)
    # Plain JSON: any JSON reader takes it.
    json.loads(data)
    return data


# -- instances of every registered class, from the classes' own annotations --------------------

tricky_keys = st.sampled_from(["@", "@t", "@d", "@b", "@zz", "a", ""]) | st.text(max_size=4)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: also past 64 bits
    | st.floats()  # inf, -inf, nan and -0.0 too
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
# What an ``Any`` field may hold: JSON from frames, with keys that look like tags, and the
# Python values the codec carries besides.
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(tricky_keys, children, max_size=3)
    ),
    max_leaves=10,
)

_SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(max_size=12),
    int: st.integers(),
    float: st.floats(),
    bool: st.booleans(),
    bytes: st.binary(max_size=16),
    type(None): st.none(),
    ProtocolError: st.builds(ProtocolError, st.text(max_size=8), st.text(max_size=12)),
}


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    """Values of the annotation ``hint``, as the registered classes write them."""
    if hint is Any:
        return values
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and attrs.has(hint):
        return instances_of(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(arg) for arg in args])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy_for(arg) for arg in args))
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    raise NotImplementedError(f"no strategy for {hint!r}")


PROTOCOL_CLASSES = [
    cls for name, cls in sorted(wire.CODEC.classes.items()) if name.startswith("protocol.")
]
# A field typed ``Any`` that holds a registered value rather than JSON.
_FIELD_STRATEGIES: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (Inbound, "message"): st.deferred(
        lambda: st.one_of([instances_of(cls) for cls in PROTOCOL_CLASSES])
    ),
}


def instances_of(cls: type) -> st.SearchStrategy[Any]:
    """Instances of the attrs class ``cls``, every ``__init__`` field drawn from its type."""
    hints = typing.get_type_hints(cls)
    arguments = {
        field.alias: (
            _FIELD_STRATEGIES[cls, field.name]
            if (cls, field.name) in _FIELD_STRATEGIES
            else strategy_for(hints[field.name])
        )
        for field in attrs.fields(cls)
        if field.init
    }
    return st.builds(cls, **arguments)


@pytest.mark.parametrize("name", sorted(wire.CODEC.classes))
@settings(deadline=None, max_examples=12)
@given(data=st.data())
def test_every_registered_class_round_trips(name, data):
    cls = wire.CODEC.classes[name]
    value = data.draw(instances_of(cls))
    assert_round_trip(value)
    assert wire.to_wire(value)["@"] == name


@settings(deadline=None, max_examples=200)
@given(values)
def test_any_value_of_the_supported_types_round_trips(value):
    assert_round_trip(value)


# -- the registry ------------------------------------------------------------------------------

# What the front end asks services (zajel.web.app, .servers, .attestation, .sockets) and what
# comes back; the store's writes and records.
FRONT_END = [
    # /stats and /health
    GetStats,
    GetRelayStats,
    GetChunkStats,
    servers_service.GetServerStats,
    attestation_service.GetAttestationStats,
    _durable.CheckStore,
    SignalingStats,
    RelayStats,
    ChunkStats,
    _durable.StoreOk,
    # every reply may be one of these instead
    _durable.StoreFailure,
    _mailbox.ServiceFailure,
    # the server registry
    servers.ListServers,
    servers.RegisterServer,
    servers.ServerHeartbeat,
    servers.UnregisterServer,
    servers_service.Registered,
    servers_service.HeartbeatAccepted,
    servers_service.Unregistered,
    servers_service.SignedList,
    # attestation
    attestation.RegisterDevice,
    attestation.UploadReference,
    attestation.RequestChallenge,
    attestation.VerifyChallenge,
    attestation.Policy,
    attestation_service.GetPolicy,
    attestation_service.Registered,
    attestation_service.Issued,
    attestation_service.Verified,
    attestation_service.ReferenceStored,
    attestation_service.PolicySet,
    # WebSocket connections
    Inbound,
    Identity,
    Detach,
    Invalid,
    # the store
    storage.PutServer,
    storage.DeleteServer,
    storage.PutDevice,
    storage.DeleteDevice,
    storage.PutReference,
    storage.PutChallenge,
    storage.DeleteChallenge,
    storage.PutPolicy,
    storage.AttestationRecords,
]


def test_every_request_and_reply_is_registered_under_its_module_and_name():
    registered = set(wire.CODEC.classes.values())
    assert [cls for cls in FRONT_END if cls not in registered] == []
    for name, cls in wire.CODEC.classes.items():
        assert name == f"{cls.__module__.removeprefix('zajel.')}.{cls.__qualname__}"
        assert not cls.__name__.startswith("_")
    # Every decoded client message, of both endpoints.
    for module in (signaling, relay, channels, chunks):
        for value in vars(module).values():
            if isinstance(value, type) and attrs.has(value) and value.__module__ == module.__name__:
                assert value in registered, value
    assert wire.wire_name(signaling.Register) != wire.wire_name(relay.Register)


def test_live_values_are_not_in_the_registry():
    assert Attach not in wire.CODEC.classes.values()
    assert _mailbox.Envelope not in wire.CODEC.classes.values()


def test_a_registry_with_two_classes_of_one_name_is_refused():
    module = sys.modules[__name__]
    with pytest.raises(AssertionError, match="two classes are named"):
        wire.Codec([module, module], local_only={})


# -- real messages, decoded by the protocol layer ----------------------------------------------

SDP = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" * 20
SIGNAL_FRAMES = [
    ({"type": "register", "pairingCode": CODE, "publicKey": KEY}, signaling.Register),
    ({"type": "register", "pairingCode": CODE, "reconnectToken": "t" * 43}, signaling.Register),
    ({"type": "pair_request", "targetCode": OTHER, "proposedName": "Bob"}, signaling.PairRequest),
    ({"type": "pair_response", "targetCode": OTHER, "accepted": True}, signaling.PairAnswer),
    ({"type": "pair_reject", "targetCode": OTHER}, signaling.PairAnswer),
    (
        {"type": "offer", "target": OTHER, "payload": {"sdp": SDP, "type": "offer"}},
        signaling.Relay,
    ),
    (
        {"type": "ice_candidate", "target": OTHER, "payload": {"candidate": {"sdpMid": "0"}}},
        signaling.Relay,
    ),
    (
        {"type": "call_offer", "target": OTHER, "payload": {"callId": "c1", "withVideo": True}},
        signaling.Relay,
    ),
    ({"type": "ping"}, signaling.Ping),
    ({"type": "channel-owner-register", "channelId": "ch"}, channels.OwnChannel),
    ({"type": "channel-subscribe", "channelId": "ch"}, channels.Subscribe),
    ({"type": "channel-unsubscribe", "channelId": "ch"}, channels.Unsubscribe),
    (
        {
            "type": "upstream-message",
            "channelId": "ch",
            "message": {"@": "x", "n": [1, 2.5, None]},
            "ephemeralPublicKey": KEY,
        },
        channels.Upstream,
    ),
    (
        {"type": "stream-start", "streamId": "s", "channelId": "ch", "title": "T"},
        channels.StreamStart,
    ),
    (
        {"type": "stream-frame", "streamId": "s", "channelId": "ch", "frame": [{"@t": 1}]},
        channels.StreamFrame,
    ),
    ({"type": "stream-end", "streamId": "s", "channelId": "ch"}, channels.StreamEnd),
    (
        {"type": "chunk_announce", "channelId": "ch", "chunks": [{"chunkId": "c1"}]},
        chunks.ChunkAnnounce,
    ),
    ({"type": "chunk_request", "chunkId": "c1", "channelId": "ch"}, chunks.ChunkRequest),
    (
        {"type": "chunk_push", "chunkId": "c1", "channelId": "ch", "data": {"b": "é😀"}},
        chunks.ChunkPush,
    ),
    ({"type": "offer", "target": "nope"}, Invalid),
    ({"type": "what"}, Invalid),
]
RELAY_FRAMES = [
    ({"type": "register", "peerId": "peer-1", "maxConnections": 5}, relay.Register),
    ({"type": "update_load", "connectedCount": 3}, relay.UpdateLoad),
    ({"type": "get_relays", "count": 2}, relay.GetRelays),
    ({"type": "heartbeat", "peerId": "peer-1"}, relay.Heartbeat),
    ({"type": "ping"}, relay.Ping),
    (
        {
            "type": "register_rendezvous",
            "dailyPoints": ["d1", "d2"],
            "hourlyTokens": ["h1"],
            "deadDrop": "drop",
            "dead_drops": {"d2": "other"},
            "relayId": "r1",
        },
        relay.RegisterRendezvous,
    ),
    (
        {"type": "chunk_announce", "chunks": [{"chunkId": "c1", "routingHash": "h"}]},
        chunks.ChunkAnnounce,
    ),
    ({"type": "chunk_request", "chunkId": "c1"}, chunks.ChunkRequest),
    ({"type": "chunk_push", "chunkId": "c1", "data": [1, "two", {"three": 3}]}, chunks.ChunkPush),
    ({"type": "get_relays", "count": 0}, Invalid),
]


@pytest.mark.parametrize(("obj", "kind"), SIGNAL_FRAMES)
def test_every_signal_message_round_trips_in_an_inbound(obj, kind):
    message = signaling.decode(json.dumps(obj))
    assert type(message) is kind
    assert_round_trip(Inbound(7, message, SIGNAL))
    assert_round_trip(Inbound(7, message))


@pytest.mark.parametrize(("obj", "kind"), RELAY_FRAMES)
def test_every_relay_message_round_trips_in_an_inbound(obj, kind):
    message = relay.decode(json.dumps(obj))
    assert type(message) is kind
    assert_round_trip(Inbound(9, message, Identity("relay", "peer-1", None)))


def test_an_invalid_message_keeps_its_error():
    message = signaling.decode(json.dumps({"type": "offer", "target": OTHER}))
    assert isinstance(message, Invalid)
    back = wire.loads(wire.dumps(Inbound(1, message)))
    assert back.message.error.code == errors.INVALID_FIELD
    assert back.message.error.message == message.error.message
    assert back.message.needs_registration is True


@settings(deadline=None, max_examples=150)
@given(frame=frames | signal_objects.map(json.dumps) | channel_objects.map(json.dumps))
def test_whatever_the_signal_decoder_makes_round_trips(frame):
    assert_round_trip(Inbound(1, signaling.decode(frame), SIGNAL))


@settings(deadline=None, max_examples=100)
@given(frame=relay_frames)
def test_whatever_the_relay_decoder_makes_round_trips(frame):
    assert_round_trip(Inbound(1, relay.decode(frame)))


def test_the_http_requests_round_trip_as_decoded():
    register = servers.decode_register(
        json.dumps(
            {
                "serverId": "vps-1",
                "endpoint": "wss://relay.example.org/ws",
                "publicKey": KEY,
                "connections": 12,
            }
        ).encode(),
        allow_private=False,
    )
    heartbeat = servers.decode_heartbeat(b'{"serverId": "vps-1", "activeCodes": 4}')
    unregister = servers.UnregisterServer(servers.decode_server_id_path(b"a%2Fb%2B%3D"))
    device = attestation.decode_register(
        b'{"device_id": "d1", "build_token": {"payload": "p", "signature": "s"}}'
    )
    upload = attestation.decode_upload_reference(
        b'{"version": "1.2.3", "platform": "android", "build_hash": "h", "size": 100,'
        b' "critical_regions": [{"offset": 0, "length": 2, "data_hex": "abcd", "weight": 2.5}]}'
    )
    challenge = attestation.decode_challenge(b'{"device_id": "d1", "build_version": "1.2.3"}')
    verify = attestation.decode_verify(
        b'{"device_id": "d1", "nonce": "n", "responses": [{"region_index": 0, "hmac": "ff"}]}'
    )
    policy = attestation.decode_policy(
        b'{"minimum_version": "1.0.0", "blocked_versions": ["1.0.1"],'
        b' "sunset_dates": {"1.1.0": "2030-01-01"}}'
    )
    for request in (
        register,
        heartbeat,
        unregister,
        servers.ListServers(),
        attrs.evolve(device, ip="2001:db8::/64"),
        upload,
        challenge,
        verify,
        policy,
        attestation_service.GetPolicy(),
    ):
        assert_round_trip(request)


ENTRY = servers.ServerEntry(
    "vps-1", "wss://relay.example.org/ws", KEY, "eu", servers.Counters(1, 2, 3, 4), 10, 20
)
DEVICE = attestation.Device("d1", "1.2.3", "android", "h", 1, 2, ("fast",), (5, 6), ())
REFERENCE = attestation.Reference(
    "1.2.3", "android", "h", 100, (attestation.Region(0, 2, "abcd", 2.5),), 7
)
REPLIES = [
    None,
    {"totalServers": 3, "liveServers": 2},
    SignalingStats(1, 2, 3),
    RelayStats({"registered": 1}, {"dailyPoints": 2}),
    ChunkStats({"cached": 1}, {"owned": 0}),
    _durable.StoreOk(),
    _durable.StoreFailure("servers"),
    _mailbox.ServiceFailure("attestation"),
    servers.not_registered(),
    errors.store_unavailable(),
    servers_service.Registered(ENTRY),
    servers_service.HeartbeatAccepted('[{"serverId":"vps-2"}]'),
    servers_service.Unregistered(),
    servers_service.SignedList(b'{"servers":[],"timestamp":1}', "c2lnbmF0dXJl"),
    attestation_service.Registered(DEVICE, "current", None, {"sub": "d1", "exp": 3}, "token"),
    attestation_service.Issued("ab" * 32, ((0, 0, 2), (1, 4, 2))),
    attestation_service.Verified(None, "HMAC mismatch"),
    attestation_service.ReferenceStored(REFERENCE),
    attestation_service.PolicySet(attestation.Policy(sunset_dates=(("1.1.0", "2030-01-01"),))),
    attestation.Policy(),
    storage.PutServer(ENTRY),
    storage.PutDevice(DEVICE),
    storage.PutReference(REFERENCE),
    storage.AttestationRecords([DEVICE], [REFERENCE], [], None),
    Detach(3),
]


@pytest.mark.parametrize("reply", REPLIES, ids=lambda reply: type(reply).__name__)
def test_replies_round_trip(reply):
    assert_round_trip(reply)


def test_the_wire_form_is_plain_and_pinned():
    """Nodes of one cluster must agree on it: a change here is a change of the schema."""
    message = signaling.decode(
        json.dumps({"type": "offer", "target": OTHER, "payload": {"sdp": "v=0", "n": 1.5}})
    )
    assert wire.to_wire(Inbound(4, message, SIGNAL)) == {
        "@": "services._peers.Inbound",
        "conn_id": 4,
        "message": {
            "@": "protocol.signaling.Relay",
            "type": "offer",
            "target": OTHER,
            "payload": {"sdp": "v=0", "n": 1.5},
        },
        "identity": {
            "@": "services._peers.Identity",
            "dialect": "signal",
            "peer_id": CODE,
            "public_key": KEY,
        },
    }
    assert wire.dumps(servers.UnregisterServer("vps-1")) == (
        b'{"@":"protocol.servers.UnregisterServer","server_id":"vps-1"}'
    )
    # Fields made by the constructor (init=False) are not sent.
    assert "needs_registration" not in wire.to_wire(signaling.Ping())


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"@": "services._peers.Detach", "conn_id": 1},
        {"@": "nothing.Registered"},
        {"@t": [1, 2]},
        {"@d": {"@": 1}},
        {"@b": "AAAA"},
        {"@zz": 1, "a": 2},
        {"@": 1, "@t": 2, "@d": 3},
        {"a": 1, "@": "services._peers.Detach"},  # a tag only counts as the first key
        {"": {"@": {"@": []}}},
        [{"@t": []}, {"@d": {}}],
        {},
    ],
)
def test_dicts_whose_keys_look_like_tags_survive(value):
    assert_round_trip(value)
    message = channels.Upstream("ch", value if isinstance(value, dict) else {"v": value}, KEY)
    assert_round_trip(message)


def test_a_plain_dict_is_sent_as_itself():
    payload = {"sdp": "v=0", "candidates": [{"a": 1}], "x": None}
    assert wire.to_wire(payload) == payload


@pytest.mark.parametrize(
    "value",
    [
        (),
        (1,),
        ("a", ("b", ("c",)), [("d",)]),
        [(), [()]],
        {"k": (1, 2)},
        ((1, 2), (3, 4)),
    ],
)
def test_tuples_stay_tuples(value):
    assert_round_trip(value)


def test_frozen_values_come_back_hashable_and_equal():
    announce = chunks.ChunkAnnounce("peer", (("c1", "h1"), ("c2", "h2")), None)
    back = wire.loads(wire.dumps(announce))
    assert back == announce
    assert hash(back) == hash(announce)
    assert {back} == {announce}


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, -0.0, 0.0, 1e308, 5e-324, 2.5, -1.0]
)
def test_floats_survive_infinities_and_nan_included(value):
    assert_round_trip(value)
    assert_round_trip([value, {"deadline": value}])
    assert_round_trip(attestation.Region(0, 1, "00", value))


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**40, -(10**40), True, False],
)
def test_integers_survive_past_64_bits_and_bools_stay_bools(value):
    assert_round_trip(value)
    assert_round_trip({"n": [value]})


def test_a_payload_integer_too_large_for_a_double_crosses_exactly():
    big = 2**70 + 1
    message = signaling.decode(f'{{"type":"offer","target":"{OTHER}","payload":{{"n":{big}}}}}')
    assert isinstance(message, signaling.Relay)
    assert_round_trip(Inbound(1, message))


@pytest.mark.parametrize("value", [b"", bytes(range(256)), b"x" * 131_072])
def test_bytes_survive(value):
    assert_round_trip(value)
    assert_round_trip(chunks.ChunkPush(None, "c1", value, "ch"))


def test_sets_and_maps_with_keys_that_are_not_strings():
    assert_round_trip({1, "a", (2, 3)})
    assert_round_trip(frozenset({1, "a"}))
    assert_round_trip({1: "one", (2, 3): ["x"], None: {"@": 1}, "s": b"b"})


def test_protocol_errors_survive():
    assert_round_trip(errors.rate_limited("slow down"))
    assert_round_trip([ProtocolError("c", "m"), Invalid(errors.invalid_message())])


def test_strings_json_cannot_hold_as_utf8_survive():
    # A lone surrogate: orjson refuses it, the stdlib encoder escapes it.
    data = assert_round_trip({"text": "a\ud800b", "ok": "é😀"})
    assert data.isascii()


def test_a_payload_as_deep_as_a_node_relays_crosses():
    # orjson writes 254 levels at most; past that the stdlib writes it. A node itself relays a
    # payload about this deep (zajel.protocol.frames.encode stops at the recursion limit).
    depth = 900
    nested = "[" * depth + "]" * depth
    message = signaling.decode(f'{{"type":"offer","target":"{OTHER}","payload":{{"x":{nested}}}}}')
    assert isinstance(message, signaling.Relay)
    assert_round_trip(Inbound(1, message))


def test_values_nested_past_the_recursion_limit_are_refused_cleanly():
    deep: list[Any] = []
    for _ in range(sys.getrecursionlimit() + 100):
        deep = [deep]
    with pytest.raises(WireError, match="nested too deeply"):
        wire.to_wire(deep)
    with pytest.raises(WireError, match="nested too deeply"):
        wire.dumps(deep)
    with pytest.raises(WireError, match="nested too deeply"):
        wire.from_wire(deep)


# -- refusals ----------------------------------------------------------------------------------


def test_attach_is_refused_with_the_reason():
    attach = Attach(1, typing.cast(Any, object()), "192.0.2.1")
    with pytest.raises(WireError, match=r"Attach cannot be sent between nodes: .*live Peer"):
        wire.to_wire(attach)
    with pytest.raises(WireError, match="Attach"):
        wire.dumps([{"request": attach}])
    with pytest.raises(WireError, match=re.escape("unknown class 'services._peers.Attach'")):
        wire.from_wire({"@": "services._peers.Attach", "conn_id": 1, "peer": None, "ip": "x"})


def test_an_envelope_is_refused_with_the_reason():
    send, receive = trio.open_memory_channel[Any](1)
    with send, receive, pytest.raises(WireError, match="reply channel"):
        wire.to_wire(_mailbox.Envelope(GetStats(), send))


@attrs.frozen
class Unregistered:
    """An attrs class of no registered module (the default codec's view)."""

    x: int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Unregistered(1), "tests.cluster.test_wire.Unregistered is not registered"),
        (object(), "a builtins.object cannot be sent"),
        (OrderedDict(a=1), "a collections.OrderedDict cannot be sent"),
        ([len], "builtin_function_or_method cannot be sent"),
        (bytearray(b"x"), "bytearray cannot be sent"),
    ],
)
def test_other_values_are_refused(value, message):
    with pytest.raises(WireError, match=message):
        wire.to_wire(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"@":"builtins.eval","x":1}', "unknown class 'builtins.eval'"),
        (b'{"@":["x"]}', "unknown class"),
        (b'{"@":"services._peers.Detach"}', r"fields do not match \(missing \['conn_id', 'lost'\]"),
        (b'{"@":"services._peers.Detach","conn_id":1,"x":2}', r"unknown \['x'\]"),
        (
            b'{"@":"services._peers.Detach","x":2}',
            r"missing \['conn_id', 'lost'\], unknown \['x'\]",
        ),
        (b'{"@pickle":"gASV"}', "unknown tag '@pickle'"),
        (b'{"@t":5}', "malformed '@t'"),
        (b'{"@t":[],"x":1}', "malformed '@t'"),
        (b'{"@d":[]}', "malformed '@d'"),
        (b'{"@m":[[1]]}', "malformed '@m'"),
        (b'{"@b":"***"}', "malformed '@b'"),
        (b'{"@f":"Infinity"}', "malformed '@f'"),
        (b'{"@i":"12a"}', "malformed message"),
        (b'{"@x":["code"]}', "malformed '@x'"),
        (b'{"@e":"nothing","v":"X"}', "unknown enum 'nothing'"),
        (b'{"@m":[[[1],2]]}', "malformed message"),  # an unhashable key
        (b"\xff", "not a JSON message"),
        (b"{", "not a JSON message"),
        (b'{"x":NaN}', "not a JSON message"),
    ],
)
def test_what_is_not_a_message_of_the_schema_is_refused(data, message):
    with pytest.raises(WireError, match=message):
        wire.loads(data)


def test_wire_errors_are_value_errors():
    assert issubclass(WireError, ValueError)


# -- the registry's rules, on classes of every shape ----------------------------------------------


class Color(enum.Enum):
    RED = "r"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    LOW = 1


@attrs.define
class Mutable:
    """attrs.define: slots, mutable, a factory."""

    a: int
    items: list[int] = attrs.field(factory=list)


@attrs.frozen(slots=False)
class WithDict:
    x: str


@attrs.frozen
class Derived:
    """A field made by the constructor: not sent, made again."""

    base: int
    doubled: int = attrs.field(init=False)
    flag: bool = attrs.field(default=True, init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "doubled", self.base * 2)


@attrs.frozen(kw_only=True)
class KeywordsOnly:
    a: int
    b: str = "b"


@attrs.frozen
class Private:
    """A private field: its ``__init__`` parameter is ``secret``; one keyword-only field."""

    _secret: str
    visible: int = attrs.field(kw_only=True, default=0)


@attrs.frozen
class Holder:
    color: Color
    level: Level
    inner: Private | None = None


@attrs.frozen
class Checked:
    n: int = attrs.field(validator=attrs.validators.instance_of(int))


SAMPLES = wire.Codec([sys.modules[__name__]], local_only={})


@pytest.mark.parametrize(
    "value",
    [
        Mutable(1, [2, 3]),
        WithDict("x"),
        Derived(21),
        KeywordsOnly(a=1),
        Private("s", visible=3),
        Holder(Color.PAIR, Level.LOW, Private("t")),
        [Color.RED, Level.LOW],
        Unregistered(5),
    ],
    ids=lambda value: type(value).__name__,
)
def test_attrs_classes_of_every_shape_round_trip(value):
    assert_round_trip(value, SAMPLES)


def test_the_sample_registry_holds_the_module_s_public_classes():
    assert set(SAMPLES.classes) >= {
        "tests.cluster.test_wire.Mutable",
        "tests.cluster.test_wire.Private",
        "tests.cluster.test_wire.Derived",
    }
    assert set(SAMPLES.enums) == {"tests.cluster.test_wire.Color", "tests.cluster.test_wire.Level"}


def test_private_fields_go_by_their_name_and_are_built_by_their_alias():
    assert SAMPLES.to_wire(Private("s", visible=3)) == {
        "@": "tests.cluster.test_wire.Private",
        "_secret": "s",
        "visible": 3,
    }


def test_enum_members_go_by_name():
    assert SAMPLES.to_wire(Color.PAIR) == {"@e": "tests.cluster.test_wire.Color", "v": "PAIR"}
    with pytest.raises(WireError, match="no member 'BLUE'"):
        SAMPLES.from_wire({"@e": "tests.cluster.test_wire.Color", "v": "BLUE"})
    # Not registered in the default codec: refused, never sent as its value.
    with pytest.raises(WireError, match="cannot be sent"):
        wire.to_wire(Level.LOW)


def test_a_constructor_that_refuses_its_fields_gives_a_wire_error():
    with pytest.raises(WireError, match=re.escape("tests.cluster.test_wire.Checked: 'n' must be")):
        SAMPLES.from_wire({"@": "tests.cluster.test_wire.Checked", "n": "1"})


def test_the_bytes_are_what_orjson_reads():
    data = wire.dumps(Inbound(1, signaling.Ping(), None))
    assert orjson.loads(data) == {
        "@": "services._peers.Inbound",
        "conn_id": 1,
        "message": {"@": "protocol.signaling.Ping"},
        "identity": None,
    }


def test_the_text_memo_decodes_alike_texts_once_and_keeps_only_what_is_safe_to_share():
    memo = wire.TextMemo(wire.CODEC, size=3)
    request = signaling.decode('{"type":"chunk_request","chunkId":"ch_1","channelId":"c"}')
    text = wire.dumps(request).decode()
    first = memo.decode(text)
    assert first == request
    assert memo.decode(str(text)) is first  # the same text again: the kept value
    # A relay holds its payload, a dict: each text decodes afresh, so no two share it.
    relay = Relay("offer", "ABCDEF", {"sdp": "v=0"})
    relay_text = wire.dumps(relay).decode()
    assert memo.decode(relay_text) == relay
    assert memo.decode(relay_text) is not memo.decode(relay_text)
    assert len(memo) == 1
    # Bounded: past its size the memo starts again.
    for code in ("AAAAAA", "BBBBBB", "CCCCCC"):
        assert memo.decode(wire.dumps(Identity("signal", code, None)).decode()).peer_id == code
    assert len(memo) == 1
    with pytest.raises(WireError):
        memo.decode('{"@": "nope"}')
