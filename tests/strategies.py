"""Hypothesis strategies shared by the test suite.

Frames are built from three layers: arbitrary JSON values, JSON-ish objects that look like
``/signal`` messages (a known or random ``type`` with known or random fields), and arbitrary
text or bytes that may not be JSON at all.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

from zajel.protocol.channels import CHANNEL_TYPES
from zajel.protocol.fields import PAIRING_CODE_ALPHABET
from zajel.protocol.relay import KNOWN_TYPES as RELAY_KNOWN_TYPES
from zajel.protocol.signaling import KNOWN_TYPES

# -- JSON values ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)

json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

json_objects: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=8), json_values, max_size=5
)

# -- identifiers ---------------------------------------------------------------------------

pairing_codes = st.text(alphabet=PAIRING_CODE_ALPHABET, min_size=6, max_size=6)

# Strings that look almost like pairing codes: wrong length, lower case, excluded letters.
near_pairing_codes = st.text(
    alphabet=PAIRING_CODE_ALPHABET + PAIRING_CODE_ALPHABET.lower() + "01OI -",
    min_size=0,
    max_size=8,
)

public_keys = st.binary(min_size=32, max_size=32).map(lambda raw: base64.b64encode(raw).decode())

# -- /signal messages ----------------------------------------------------------------------

message_types = st.sampled_from(sorted(KNOWN_TYPES)) | st.text(max_size=12)

SIGNAL_FIELDS = (
    "pairingCode",
    "publicKey",
    "targetCode",
    "proposedName",
    "accepted",
    "target",
    "payload",
)

call_payloads = st.fixed_dictionaries(
    {},
    optional={
        "callId": st.text(max_size=10),
        "sdp": st.text(max_size=30) | json_scalars,
        "candidate": st.text(max_size=30) | json_objects | json_scalars,
        "withVideo": st.booleans(),
        "reason": st.text(max_size=10),
    },
)

field_values = (
    pairing_codes
    | near_pairing_codes
    | public_keys
    | json_values
    | call_payloads
    | st.text(max_size=70)
)

signal_objects: st.SearchStrategy[dict[str, Any]] = st.builds(
    lambda extra, known, type_: {**extra, **known, "type": type_},
    json_objects,
    st.fixed_dictionaries({}, optional={name: field_values for name in SIGNAL_FIELDS}),
    message_types,
)

# -- frames as received --------------------------------------------------------------------

_raw_fragments = st.sampled_from(
    [
        "",
        "{",
        "}",
        "[]",
        "null",
        '{"type":1}',
        '{"type":null}',
        '{"type":"ping"}',
        '{"type":"x","n":NaN}',
        '{"type":"x","n":Infinity}',
        '{"type":"x","n":-Infinity}',
        '"\\ud800"',
        '{"type":"\\udfff"}',
        "[" * 50,
    ]
)


def _dumps(value: Any, ensure_ascii: bool) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii)


frame_texts: st.SearchStrategy[str] = st.one_of(
    st.text(),
    _raw_fragments,
    st.builds(_dumps, json_values, st.booleans()),
    st.builds(_dumps, signal_objects, st.booleans()),
)

frames: st.SearchStrategy[str | bytes] = frame_texts | st.binary(max_size=64)

# -- /relay messages -----------------------------------------------------------------------

peer_ids = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
    min_size=1,
    max_size=128,
)

# Strings that look almost like peer ids: empty, too long, or with a forbidden character.
near_peer_ids = st.just("") | st.text(alphabet="aZ9_-. /:=\n", min_size=1, max_size=12)

relay_message_types = st.sampled_from(sorted(RELAY_KNOWN_TYPES)) | st.text(max_size=20)

# Integers near the bounds of maxConnections, count and connectedCount.
boundary_ints = st.sampled_from([-1, 0, 1, 10, 20, 50, 51, 1000, 1001, 1_000_000, 1_000_001])

point_strings = st.text(max_size=130)
point_lists = st.lists(point_strings | json_scalars, max_size=55)

relay_field_values = (
    peer_ids
    | near_peer_ids
    | boundary_ints
    | point_lists
    | st.dictionaries(st.text(max_size=130), st.text(max_size=20) | json_scalars, max_size=4)
    | json_values
)

RELAY_FIELDS = (
    "peerId",
    "maxConnections",
    "publicKey",
    "connectedCount",
    "count",
    "dailyPoints",
    "daily_points",
    "hourlyTokens",
    "hourly_tokens",
    "deadDrop",
    "dead_drops",
    "relayId",
)

relay_objects: st.SearchStrategy[dict[str, Any]] = st.builds(
    lambda extra, known, type_: {**extra, **known, "type": type_},
    json_objects,
    st.fixed_dictionaries({}, optional={name: relay_field_values for name in RELAY_FIELDS}),
    relay_message_types,
)

relay_frames: st.SearchStrategy[str | bytes] = (
    st.builds(_dumps, relay_objects, st.booleans()) | frame_texts | st.binary(max_size=64)
)

# -- the channel dialect of /signal --------------------------------------------------------

channel_message_types = st.sampled_from(sorted(CHANNEL_TYPES))

# Identifiers around their bounds (1 to 256 characters), multi-byte ones, and wrong types.
bounded_ids = (
    st.text(min_size=1, max_size=8)
    | st.sampled_from(["", "c" * 256, "c" * 257, "é" * 256, "😀" * 257])
    | json_scalars
)

chunk_entries = (
    st.fixed_dictionaries({}, optional={"chunkId": bounded_ids, "routingHash": bounded_ids})
    | json_values
)

channel_field_values = {
    "channelId": bounded_ids,
    "streamId": bounded_ids,
    "title": st.text(max_size=10) | st.just("t" * 1025) | json_values,
    "frame": json_values,
    "message": json_objects | json_values,
    "ephemeralPublicKey": public_keys | bounded_ids,
    "peerId": pairing_codes | bounded_ids,
    "chunkId": bounded_ids,
    "chunks": st.lists(chunk_entries, max_size=5) | json_values,
    "data": json_objects | st.text(max_size=40) | json_values,
}

# Every field of the dialect with a valid value, so that most draws decode to a message.
valid_channel_fields = st.fixed_dictionaries(
    {
        "channelId": st.text(min_size=1, max_size=8),
        "streamId": st.text(min_size=1, max_size=8),
        "frame": json_values.filter(lambda value: value is not None),
        "message": json_objects,
        "ephemeralPublicKey": public_keys,
        "chunkId": st.text(min_size=1, max_size=8),
        "chunks": st.lists(
            st.fixed_dictionaries(
                {"chunkId": st.text(min_size=1, max_size=8)},
                optional={"routingHash": st.text(min_size=1, max_size=8)},
            ),
            min_size=1,
            max_size=5,
        ),
        "data": json_objects | st.text(max_size=40),
    },
    optional={"title": st.text(max_size=10), "peerId": pairing_codes},
)

_some_channel_fields = st.fixed_dictionaries({}, optional=channel_field_values)

channel_objects: st.SearchStrategy[dict[str, Any]] = st.builds(
    lambda extra, known, type_: {**extra, **known, "type": type_},
    json_objects,
    _some_channel_fields
    | valid_channel_fields
    | st.builds(lambda valid, junk: {**valid, **junk}, valid_channel_fields, _some_channel_fields),
    channel_message_types,
)
