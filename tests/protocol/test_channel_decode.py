"""Decoding of the channel dialect of ``/signal`` through ``zajel.protocol.signaling.decode``
(docs/protocol/channels.md, "Identity" and "Client → server"): the typed values, the exact
``invalid_field`` message of each field rule, the order of checks, and the chunk payload limit
measured on compact UTF-8 JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import channel_objects
from zajel.protocol.channels import (
    CHANNEL_CHUNK_MAX_BYTES_DEFAULT,
    CHANNEL_TYPES,
    ROUTED,
    UPSTREAM_MAX_BYTES_DEFAULT,
    Limits,
    OwnChannel,
    StreamEnd,
    StreamFrame,
    StreamStart,
    Subscribe,
    Unsubscribe,
    Upstream,
)
from zajel.protocol.chunks import ChunkAnnounce, ChunkPush, ChunkRequest
from zajel.protocol.errors import ProtocolError
from zajel.protocol.frames import Invalid, encode
from zajel.protocol.signaling import decode

CODE = "ABC234"
CHANNEL = "0123456789abcdef0123456789abcdef"  # what the apps use: sha256(key)[:16], in hex
LIMIT = CHANNEL_CHUNK_MAX_BYTES_DEFAULT
KEY = "bm90IGEgcmVhbCBrZXkgYnV0IGEgc3RyaW5nIG9mIGJhc2U2NA=="


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_field", message)


def decoded_error(data: str, limits: Limits | None = None) -> ProtocolError:
    """The error of a frame that must decode to an ``Invalid`` awaiting the registration
    check (docs/protocol/conventions.md, "The order of checks")."""
    message = decode(data, limits=limits)
    assert isinstance(message, Invalid), message
    assert message.needs_registration is True
    return message.error


def string_of_bytes(size: int, char: str) -> str:
    """A string whose compact UTF-8 JSON (with its quotes) is exactly ``size`` bytes, made of
    ``char`` and padded with ASCII."""
    body = char * ((size - 2) // len(char.encode()))
    return body + "a" * (size - 2 - len(body.encode()))


def test_the_defaults():
    assert LIMIT == 131_072
    assert UPSTREAM_MAX_BYTES_DEFAULT == 65_536
    assert Limits() == Limits(announce_max=100, chunk_max_bytes=131_072, upstream_max_bytes=65_536)


MESSAGE = {"id": "up_0123abcd", "type": "reply", "encrypted_payload": "AAAA"}
CHUNK_DATA = {"chunk_id": "ch_1_000", "sequence": 1, "encrypted_payload": "QUJD"}

VALID = [
    (frame(type="channel-owner-register", channelId=CHANNEL), OwnChannel(CHANNEL)),
    (frame(type="channel-owner-register", channelId="c"), OwnChannel("c")),
    (frame(type="channel-owner-register", channelId="c" * 256), OwnChannel("c" * 256)),
    (frame(type="channel-owner-register", channelId="é" * 256), OwnChannel("é" * 256)),
    (frame(type="channel-subscribe", channelId=CHANNEL, extra=[1]), Subscribe(CHANNEL)),
    (frame(type="channel-unsubscribe", channelId=CHANNEL), Unsubscribe(CHANNEL)),
    (
        frame(type="upstream-message", channelId=CHANNEL, message=MESSAGE, ephemeralPublicKey=KEY),
        Upstream(CHANNEL, MESSAGE, KEY),
    ),
    (
        frame(type="upstream-message", channelId=CHANNEL, message={}, ephemeralPublicKey="k"),
        Upstream(CHANNEL, {}, "k"),
    ),
    (
        frame(type="upstream-message", channelId=CHANNEL, message={}, ephemeralPublicKey="k" * 256),
        Upstream(CHANNEL, {}, "k" * 256),
    ),
    (
        frame(type="stream-start", streamId="s1", channelId=CHANNEL, title="Live"),
        StreamStart("s1", CHANNEL, "Live"),
    ),
    (frame(type="stream-start", streamId="s1", channelId=CHANNEL), StreamStart("s1", CHANNEL, "")),
    (
        frame(type="stream-start", streamId="s1", channelId=CHANNEL, title=None),
        StreamStart("s1", CHANNEL, ""),
    ),
    (
        frame(type="stream-start", streamId="s" * 256, channelId=CHANNEL, title="t" * 1024),
        StreamStart("s" * 256, CHANNEL, "t" * 1024),
    ),
    (
        frame(type="stream-frame", streamId="s1", channelId=CHANNEL, frame={"seq": 1, "b": "x"}),
        StreamFrame("s1", CHANNEL, {"seq": 1, "b": "x"}),
    ),
    # frame is any JSON value but null: falsy ones included.
    *[
        (
            frame(type="stream-frame", streamId="s1", channelId=CHANNEL, frame=value),
            StreamFrame("s1", CHANNEL, value),
        )
        for value in (0, False, "", [], {}, "AAAA", 1.5)
    ],
    (frame(type="stream-end", streamId="s1", channelId=CHANNEL), StreamEnd("s1", CHANNEL)),
    # The shapes the headless client sends (peerId is its pairing code).
    (
        frame(
            type="chunk_announce",
            peerId=CODE,
            channelId=CHANNEL,
            chunks=[{"chunkId": "ch_1_000", "routingHash": "ab" * 16}],
        ),
        ChunkAnnounce(CODE, (("ch_1_000", "ab" * 16),), CHANNEL),
    ),
    (
        frame(type="chunk_request", peerId=CODE, chunkId="ch_1_000", channelId=CHANNEL),
        ChunkRequest(CODE, "ch_1_000", CHANNEL),
    ),
    (
        frame(type="chunk_request", chunkId="c" * 256, channelId="d" * 256),
        ChunkRequest(None, "c" * 256, "d" * 256),
    ),
    (
        frame(type="chunk_request", chunkId="c", channelId=CHANNEL, peerId=None),
        ChunkRequest(None, "c", CHANNEL),
    ),
    (
        frame(type="chunk_request", chunkId="c", channelId=CHANNEL, peerId="p" * 256),
        ChunkRequest("p" * 256, "c", CHANNEL),
    ),
    (
        frame(type="chunk_push", peerId=CODE, chunkId="c", channelId=CHANNEL, data=CHUNK_DATA),
        ChunkPush(CODE, "c", encode(CHUNK_DATA).encode(), CHANNEL),
    ),
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid_frames_decode_to_typed_values(data, expected):
    message = decode(data)
    assert type(message) is type(expected)
    assert message == expected
    assert message.needs_registration is True
    assert isinstance(message, ROUTED)


def test_upstream_and_stream_frame_keep_their_values_as_they_came():
    # Compared field by field: ``message`` and ``frame`` take no part in the values' hashes.
    message = {"id": "up_1", "nested": {"list": [1, "é", None]}, "n": 1.5}
    up = decode(
        frame(type="upstream-message", channelId="c", message=message, ephemeralPublicKey="k")
    )
    assert isinstance(up, Upstream)
    assert up.message == message
    stream = decode(frame(type="stream-frame", streamId="s", channelId="c", frame=[message]))
    assert isinstance(stream, StreamFrame)
    assert stream.frame == [message]


def test_announce_keeps_valid_entries_with_routing_hash_optional():
    message = decode(
        frame(
            type="chunk_announce",
            chunks=[
                {"chunkId": "c1", "routingHash": "h1"},
                {"chunkId": "c2"},  # optional on /signal: ""
                {"chunkId": "c3", "routingHash": None},
                {"chunkId": "c" * 256, "routingHash": "h" * 256},
                {"chunkId": "", "routingHash": "h"},
                {"chunkId": "c" * 257},
                {"chunkId": 7},
                {"chunkId": "c4", "routingHash": "h" * 257},
                {"chunkId": "c5", "routingHash": 5},
                {"routingHash": "h"},
                "c6",
                None,
            ],
        )
    )
    assert message == ChunkAnnounce(
        None, (("c1", "h1"), ("c2", ""), ("c3", ""), ("c" * 256, "h" * 256)), None
    )


def test_announce_channel_id_is_optional_and_checked_when_given():
    entries = [{"chunkId": "c1"}]
    for absent in ({}, {"channelId": None}):
        message = decode(frame(type="chunk_announce", chunks=entries, **absent))
        assert message == ChunkAnnounce(None, (("c1", ""),), None)
    for bad in ("", "c" * 257, 5, ["c"]):
        error = decoded_error(frame(type="chunk_announce", chunks=entries, channelId=bad))
        assert error == invalid("Invalid channel ID")


def test_an_announce_whose_entries_are_all_invalid_registers_none():
    message = decode(frame(type="chunk_announce", chunks=[{"chunkId": ""}, 3], channelId="c"))
    assert message == ChunkAnnounce(None, (), "c")


CHANNEL_ID_FRAMES = [
    {"type": "channel-owner-register"},
    {"type": "channel-subscribe"},
    {"type": "channel-unsubscribe"},
    {"type": "upstream-message", "message": {}, "ephemeralPublicKey": "k"},
    {"type": "stream-start", "streamId": "s", "title": "t"},
    {"type": "stream-frame", "streamId": "s", "frame": 1},
    {"type": "stream-end", "streamId": "s"},
    {"type": "chunk_request", "chunkId": "c"},
    {"type": "chunk_push", "chunkId": "c", "data": {}},
]


@pytest.mark.parametrize("fields", CHANNEL_ID_FRAMES, ids=lambda fields: fields["type"])
@pytest.mark.parametrize(
    "channel_id", [None, "", "c" * 257, "é" * 257, 5, 0, True, [CHANNEL], {"id": CHANNEL}]
)
def test_a_bad_channel_id_is_invalid_channel_id(fields, channel_id):
    sent = {**fields, "channelId": channel_id}
    assert decoded_error(json.dumps(sent)) == invalid("Invalid channel ID")


@pytest.mark.parametrize("fields", CHANNEL_ID_FRAMES, ids=lambda fields: fields["type"])
def test_a_missing_channel_id_is_invalid_channel_id(fields):
    assert decoded_error(json.dumps(fields)) == invalid("Invalid channel ID")


STREAM_ID = "Invalid streamId: expected a string of 1 to 256 characters"
EPHEMERAL = "Invalid ephemeralPublicKey: expected a string of 1 to 256 characters"
TITLE = "Invalid title: expected a string of at most 1024 characters"
CHUNK_ID = "Invalid chunkId: expected a string of 1 to 256 characters"
PEER_ID = "Invalid peerId: expected a string of at most 256 characters"
CHUNKS = "Invalid chunks: expected a list of 1 to 100 entries"
DATA = "Invalid data: expected a JSON object or a JSON string"

INVALID_FIELDS = [
    # streamId: 1 to 256 characters, on every stream message, checked before channelId
    *[
        (
            {"type": type_, "streamId": bad, "channelId": None, "frame": 1, "title": "t"},
            STREAM_ID,
        )
        for type_ in ("stream-start", "stream-frame", "stream-end")
        for bad in (None, "", "s" * 257, 1, ["s"], {})
    ],
    *[
        ({"type": type_, "channelId": CHANNEL, "frame": 1}, STREAM_ID)
        for type_ in ("stream-start", "stream-frame", "stream-end")
    ],
    # title: optional, a string of at most 1024 characters
    *[
        ({"type": "stream-start", "streamId": "s", "channelId": CHANNEL, "title": bad}, TITLE)
        for bad in ("t" * 1025, 1, False, ["t"], {"t": 1})
    ],
    # frame: required, any JSON value but null
    (
        {"type": "stream-frame", "streamId": "s", "channelId": CHANNEL},
        "Missing required field: frame",
    ),
    (
        {"type": "stream-frame", "streamId": "s", "channelId": CHANNEL, "frame": None},
        "Missing required field: frame",
    ),
    # upstream-message: message an object (checked before ephemeralPublicKey), then the key
    (
        {"type": "upstream-message", "channelId": CHANNEL, "ephemeralPublicKey": "k"},
        "Missing required field: message",
    ),
    (
        {"type": "upstream-message", "channelId": CHANNEL, "message": None},
        "Missing required field: message",
    ),
    *[
        (
            {"type": "upstream-message", "channelId": CHANNEL, "message": bad},
            "Invalid message: expected a JSON object",
        )
        for bad in ("text", 0, False, [], [{"id": "x"}], 1.5)
    ],
    *[
        (
            {"type": "upstream-message", "channelId": CHANNEL, "message": {}, **key},
            EPHEMERAL,
        )
        for key in (
            {},
            {"ephemeralPublicKey": None},
            {"ephemeralPublicKey": ""},
            {"ephemeralPublicKey": "k" * 257},
            {"ephemeralPublicKey": 5},
            {"ephemeralPublicKey": ["k"]},
        )
    ],
    # peerId: optional on every chunk message, checked first
    *[
        ({"type": type_, "peerId": bad}, PEER_ID)
        for type_ in ("chunk_announce", "chunk_request", "chunk_push")
        for bad in ("p" * 257, 5, True, [CODE], {"code": CODE})
    ],
    # chunks: a list of 1 to 100 entries
    *[
        ({"type": "chunk_announce", "channelId": CHANNEL, **chunks}, CHUNKS)
        for chunks in (
            {},
            {"chunks": None},
            {"chunks": []},
            {"chunks": "c1"},
            {"chunks": {"chunkId": "c1"}},
            {"chunks": [{"chunkId": "c"}] * 101},
        )
    ],
    # chunkId: 1 to 256 characters, checked before channelId
    *[
        ({"type": type_, "data": {}, **chunk}, CHUNK_ID)
        for type_ in ("chunk_request", "chunk_push")
        for chunk in (
            {},
            {"chunkId": None},
            {"chunkId": ""},
            {"chunkId": "c" * 257},
            {"chunkId": 7},
            {"chunkId": ["c"]},
        )
    ],
    # data: an object or a string, checked after channelId
    *[
        ({"type": "chunk_push", "chunkId": "c", "channelId": CHANNEL, **data}, DATA)
        for data in (
            {},
            {"data": None},
            {"data": 0},
            {"data": True},
            {"data": [1, 2]},
            {"data": 1.5},
        )
    ],
    ({"type": "chunk_push", "chunkId": "c", "data": "x"}, "Invalid channel ID"),
]


@pytest.mark.parametrize(("fields", "message"), INVALID_FIELDS)
def test_each_bad_field_is_invalid_field_with_its_message(fields, message):
    assert decoded_error(json.dumps(fields)) == invalid(message)


@pytest.mark.parametrize("type_", sorted(CHANNEL_TYPES))
def test_every_channel_message_waits_for_the_registration_check(type_):
    # A field error is carried, not raised: an unregistered sender hears not_registered first.
    message = decode(frame(type=type_))
    assert isinstance(message, Invalid)
    assert message.error.code == "invalid_field"
    assert message.needs_registration is True


@pytest.mark.parametrize("type_", sorted(CHANNEL_TYPES))
def test_frame_errors_come_before_the_registration_check(type_):
    for data in (f'{{"type":"{type_}"', f'{{"type":"{type_}","n":NaN}}', b'{"type":"x"}'):
        message = decode(data)
        assert isinstance(message, Invalid)
        assert message.error == ProtocolError("invalid_message", "Invalid message format")
        assert message.needs_registration is False


def test_the_type_names_are_exact():
    for type_ in ("channel_subscribe", "Channel-subscribe", "stream_start", "chunk-push"):
        message = decode(frame(type=type_, channelId=CHANNEL))
        assert isinstance(message, Invalid)
        assert message.error == ProtocolError("unknown_type", f"Unknown message type: {type_}")
        assert message.needs_registration is False


# -- chunk_push payloads -------------------------------------------------------------------


def push_frame(data: Any) -> str:
    return frame(type="chunk_push", chunkId="c", channelId=CHANNEL, data=data)


def too_large(size: int, limit: int = LIMIT) -> ProtocolError:
    return ProtocolError(
        "chunk_too_large", f"Chunk payload too large: {size} bytes exceeds {limit} byte limit"
    )


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])  # 1 to 4 bytes in UTF-8
def test_a_string_payload_of_exactly_the_limit_is_accepted_one_byte_more_refused(char):
    exact = string_of_bytes(LIMIT, char)
    message = decode(push_frame(exact))
    assert isinstance(message, ChunkPush)
    assert len(message.data_json) == LIMIT
    assert message.data_json == encode(exact).encode()
    over = string_of_bytes(LIMIT + 1, char)
    assert decoded_error(push_frame(over)) == too_large(LIMIT + 1)


@pytest.mark.parametrize("char", ["a", "é", "😀"])
def test_an_object_payload_is_measured_as_its_compact_utf8_json(char):
    # {"encrypted_payload":"…"}: 22 bytes of frame around the string.
    overhead = len(encode({"encrypted_payload": ""}).encode()) - 2
    exact = {"encrypted_payload": string_of_bytes(LIMIT - overhead, char)}
    assert len(encode(exact).encode()) == LIMIT
    # Sent spaced and with every non-ASCII character escaped: neither counts.
    spaced = json.dumps(
        {"type": "chunk_push", "chunkId": "c", "channelId": CHANNEL, "data": exact},
        indent=2,
        ensure_ascii=True,
    )
    assert len(spaced.encode()) > LIMIT
    message = decode(spaced)
    assert isinstance(message, ChunkPush)
    assert message.data_json == encode(exact).encode()
    over = {"encrypted_payload": exact["encrypted_payload"] + "a"}
    assert decoded_error(push_frame(over)) == too_large(LIMIT + 1)


def test_a_full_app_chunk_fits():
    # 64 KiB of ciphertext, base64 in the snake_case object the apps push.
    chunk = {
        "chunk_id": "ch_0123456789abcdef_000",
        "routing_hash": "ab" * 16,
        "sequence": 1,
        "chunk_index": 0,
        "total_chunks": 1,
        "size": 65_536,
        "signature": "s" * 88,
        "author_pubkey": "k" * 44,
        "encrypted_payload": "A" * (65_536 * 4 // 3 + 4),
    }
    assert isinstance(decode(push_frame(chunk)), ChunkPush)


def test_data_may_be_a_json_string_kept_as_a_string():
    # The string is the payload (the Python client parses a string it receives); it is neither
    # parsed here nor counted without its quotes and escapes.
    text = '{"chunk_id":"c","é":1}'
    message = decode(push_frame(text))
    assert isinstance(message, ChunkPush)
    assert message.data_json == encode(text).encode()
    assert json.loads(message.data_json) == text
    assert message.channel_id == CHANNEL


def test_the_payload_limit_counts_escapes_in_a_string():
    # Each quote in the string costs two bytes as JSON.
    quotes = '"' * ((LIMIT - 2) // 2)
    assert isinstance(decode(push_frame(quotes)), ChunkPush)
    assert decoded_error(push_frame(quotes + "a")) == too_large(LIMIT + 1)


def test_chunk_too_large_is_also_answered_after_the_registration_check():
    message = decode(push_frame("x" * LIMIT))
    assert isinstance(message, Invalid)
    assert message.error.code == "chunk_too_large"
    assert message.needs_registration is True


def test_the_field_rules_come_before_the_payload_size():
    big = "x" * (LIMIT + 10)
    assert decoded_error(frame(type="chunk_push", chunkId="c", data=big)) == invalid(
        "Invalid channel ID"
    )
    assert decoded_error(frame(type="chunk_push", channelId=CHANNEL, data=big)) == invalid(CHUNK_ID)


# -- upstream messages ---------------------------------------------------------------------


def upstream_frame(message: dict[str, Any]) -> str:
    return frame(
        type="upstream-message", channelId=CHANNEL, message=message, ephemeralPublicKey="k"
    )


@pytest.mark.parametrize("char", ["a", "€", "😀"])
def test_an_upstream_message_of_exactly_its_limit_is_accepted_one_byte_more_refused(char):
    overhead = len(encode({"p": ""}).encode()) - 2
    exact = {"p": string_of_bytes(UPSTREAM_MAX_BYTES_DEFAULT - overhead, char)}
    assert len(encode(exact).encode()) == UPSTREAM_MAX_BYTES_DEFAULT
    assert isinstance(decode(upstream_frame(exact)), Upstream)
    over = {"p": exact["p"] + "a"}
    assert decoded_error(upstream_frame(over)) == invalid(
        "Invalid message: 65537 bytes exceeds 65536 byte limit"
    )


# -- Limits are settings -------------------------------------------------------------------


def test_the_announce_limit_is_a_setting():
    entries = [{"chunkId": f"c{index}"} for index in range(3)]
    limits = Limits(announce_max=3)
    assert isinstance(
        decode(frame(type="chunk_announce", chunks=entries), limits=limits), (ChunkAnnounce)
    )
    error = decoded_error(
        frame(type="chunk_announce", chunks=entries), limits=Limits(announce_max=2)
    )
    assert error == invalid("Invalid chunks: expected a list of 1 to 2 entries")
    many = [{"chunkId": f"c{index}"} for index in range(150)]
    message = decode(frame(type="chunk_announce", chunks=many), limits=Limits(announce_max=150))
    assert isinstance(message, ChunkAnnounce)
    assert len(message.chunks) == 150


def test_the_chunk_limit_is_a_setting():
    limits = Limits(chunk_max_bytes=50)
    assert isinstance(decode(push_frame("x" * 48), limits=limits), ChunkPush)
    assert decoded_error(push_frame("x" * 49), limits=limits) == too_large(51, 50)
    # And raised: the default would refuse this.
    raised = Limits(chunk_max_bytes=LIMIT * 2)
    assert isinstance(decode(push_frame("x" * LIMIT), limits=raised), ChunkPush)


def test_the_upstream_limit_is_a_setting():
    limits = Limits(upstream_max_bytes=20)
    assert isinstance(decode(upstream_frame({"p": "x" * 12}), limits=limits), Upstream)
    assert decoded_error(upstream_frame({"p": "x" * 13}), limits=limits) == invalid(
        "Invalid message: 21 bytes exceeds 20 byte limit"
    )


def test_the_limits_of_one_setting_leave_the_others_at_their_default():
    limits = Limits(chunk_max_bytes=10)
    entries = [{"chunkId": f"c{index}"} for index in range(100)]
    assert isinstance(
        decode(frame(type="chunk_announce", chunks=entries), limits=limits), (ChunkAnnounce)
    )
    assert isinstance(decode(upstream_frame({"p": "x" * 1000}), limits=limits), Upstream)


# -- any input ----------------------------------------------------------------------------

small_limits = st.builds(
    Limits,
    announce_max=st.integers(1, 4),
    chunk_max_bytes=st.integers(0, 64),
    upstream_max_bytes=st.integers(0, 64),
)


@settings(deadline=None, max_examples=300)
@given(channel_objects, st.none() | small_limits, st.booleans())
def test_decoding_any_channel_like_object_never_raises(obj, limits, ascii_only):
    message = decode(json.dumps(obj, ensure_ascii=ascii_only), limits=limits)
    limits = limits if limits is not None else Limits()
    assert message.needs_registration is True
    if isinstance(message, Invalid):
        assert message.error.code in {"invalid_field", "chunk_too_large"}
        if message.error.code == "chunk_too_large":
            assert obj["type"] == "chunk_push"
        return
    assert isinstance(message, ROUTED)
    channel_id = message.channel_id
    if channel_id is not None or not isinstance(message, ChunkAnnounce):
        assert isinstance(channel_id, str)
        assert 1 <= len(channel_id) <= 256
    if isinstance(message, ChunkAnnounce):
        assert len(message.chunks) <= min(len(obj["chunks"]), limits.announce_max)
        for chunk_id, routing_hash in message.chunks:
            assert 1 <= len(chunk_id) <= 256
            assert len(routing_hash) <= 256
    if isinstance(message, ChunkPush):
        assert len(message.data_json) <= limits.chunk_max_bytes
        assert encode(json.loads(message.data_json)).encode() == message.data_json
    if isinstance(message, Upstream):
        assert len(encode(message.message).encode()) <= limits.upstream_max_bytes
