"""Decoding of the ServerRegistry's HTTP bodies and path (docs/protocol/servers.md, "Requests")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import json_objects, json_scalars, json_values
from zajel.protocol import errors
from zajel.protocol.endpoints import check_endpoint
from zajel.protocol.errors import ProtocolError
from zajel.protocol.servers import (
    COUNTER_MAX,
    Counters,
    CounterUpdate,
    RegisterServer,
    ServerEntry,
    ServerHeartbeat,
    decode_heartbeat,
    decode_register,
    decode_server_id_path,
)

SERVER_ID = "vps-1.eu:a+b/c="
ENDPOINT = "wss://relay.example.com:8443/ws"
PUBLIC_KEY = "bXkgcHVibGljIGtleQ=="
MISSING = "Missing required fields: serverId, endpoint, publicKey"
COUNTER_NAMES = ("connections", "relayConnections", "signalingConnections", "activeCodes")
_ABSENT: Any = object()

T = TypeVar("T")


def body(**fields: Any) -> bytes:
    """A JSON body; a field given as ``_ABSENT`` is left out."""
    return json.dumps({k: v for k, v in fields.items() if v is not _ABSENT}).encode()


def register_body(**fields: Any) -> bytes:
    """A valid register body with ``fields`` replaced (``_ABSENT`` removes one)."""
    values: dict[str, Any] = {"serverId": SERVER_ID, "endpoint": ENDPOINT, "publicKey": PUBLIC_KEY}
    values.update(fields)
    return body(**values)


def register_error(data: bytes, *, allow_private: bool = False) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_register(data, allow_private=allow_private)
    return info.value


def heartbeat_error(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_heartbeat(data)
    return info.value


def counter_values(counters: Counters) -> list[int]:
    return [
        counters.connections,
        counters.relay_connections,
        counters.signaling_connections,
        counters.active_codes,
    ]


# -- POST /servers ---------------------------------------------------------------------------


@pytest.mark.parametrize("allow_private", [False, True])
def test_a_full_register_body_decodes_every_field(allow_private):
    data = register_body(
        region="eu-west-1",
        connections=5,
        relayConnections=3,
        signalingConnections=2,
        activeCodes=7,
        unknown={"ignored": [1, 2]},
    )
    assert decode_register(data, allow_private=allow_private) == RegisterServer(
        SERVER_ID, ENDPOINT, PUBLIC_KEY, "eu-west-1", Counters(5, 3, 2, 7)
    )


def test_a_minimal_register_body_has_zero_counters_and_an_unknown_region():
    assert decode_register(register_body(), allow_private=False) == RegisterServer(
        SERVER_ID, ENDPOINT, PUBLIC_KEY, "unknown", Counters(0, 0, 0, 0)
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (42, 42),
        (3.9, 3),
        (0.5, 0),
        (1e3, 1000),
        (-1, 0),
        (-0.5, 0),
        (-0.0, 0),
        (-1e300, 0),
        (2**53 - 1, COUNTER_MAX),
        (2**53, COUNTER_MAX),
        (10**100, COUNTER_MAX),
        (1e300, COUNTER_MAX),
        ("5", 0),
        ("", 0),
        (True, 0),
        (False, 0),
        (None, 0),
        ({}, 0),
        ({"n": 5}, 0),
        ([], 0),
        ([5], 0),
    ],
)
def test_register_counters_are_floored_finite_non_negative_numbers(value, expected):
    data = register_body(**dict.fromkeys(COUNTER_NAMES, value))
    decoded = decode_register(data, allow_private=False)
    assert decoded.counters == Counters(expected, expected, expected, expected)
    assert all(type(count) is int for count in counter_values(decoded.counters))


def test_register_counters_map_to_their_own_attributes():
    data = register_body(relayConnections=2, activeCodes=9)
    assert decode_register(data, allow_private=False).counters == Counters(
        connections=0, relay_connections=2, signaling_connections=0, active_codes=9
    )


@pytest.mark.parametrize("region", ["eu-west-1", "A.b_c-9", "r", "r" * 64, "unknown"])
def test_a_valid_region_is_kept(region):
    assert decode_register(register_body(region=region), allow_private=False).region == region


@pytest.mark.parametrize(
    "region",
    [
        _ABSENT,
        None,
        "",
        "r" * 65,
        "eu west",
        "eu/west",
        "eu:west",
        "région",
        "eu\n",
        "\neu",
        5,
        1.5,
        True,
        [],
        ["eu"],
        {},
    ],
)
def test_an_invalid_region_is_unknown(region):
    assert decode_register(register_body(region=region), allow_private=False).region == "unknown"


@pytest.mark.parametrize("field", ["serverId", "endpoint", "publicKey"])
@pytest.mark.parametrize("missing", [_ABSENT, None, ""])
@pytest.mark.parametrize("allow_private", [False, True])
def test_a_missing_required_field_is_named_in_one_message(field, missing, allow_private):
    error = register_error(register_body(**{field: missing}), allow_private=allow_private)
    assert error == ProtocolError(errors.INVALID_FIELD, MISSING)


def test_a_missing_field_is_reported_before_malformed_ones():
    data = register_body(serverId="bad id", endpoint=5, publicKey=None)
    assert register_error(data) == ProtocolError(errors.INVALID_FIELD, MISSING)
    assert register_error(body()) == ProtocolError(errors.INVALID_FIELD, MISSING)


BAD_SERVER_IDS = [
    "s" * 129,
    "has space",
    " lead",
    "a#b",
    "a%b",
    "a%2Fb",
    "a?b",
    "a@b",
    "a\\b",
    "a\nb",
    "abc\n",
    "a\x00b",
    "é",
    "١٢٣",  # Arabic-Indic digits are not 0-9
    5,
    1.5,
    True,
    [],
    ["a"],
    {},
    {"id": "a"},
]


@pytest.mark.parametrize("server_id", BAD_SERVER_IDS)
def test_a_malformed_server_id_is_invalid(server_id):
    error = register_error(register_body(serverId=server_id))
    assert error == ProtocolError(errors.INVALID_FIELD, "Invalid serverId format")


GOOD_SERVER_IDS = [
    "a",
    "s" * 128,
    "-",
    ".",
    "=",
    "A-Z_0.9:+/=",
    "vps.1_eu:443+key/abc=",
    "base64+/==",
]


@pytest.mark.parametrize("server_id", GOOD_SERVER_IDS)
def test_server_ids_may_use_dot_underscore_colon_plus_slash_equals_and_dash(server_id):
    assert decode_register(register_body(serverId=server_id), allow_private=False).server_id == (
        server_id
    )


@pytest.mark.parametrize("endpoint", [5, 1.5, True, [], ["https://relay.example.com"], {}])
@pytest.mark.parametrize("allow_private", [False, True])
def test_an_endpoint_that_is_not_a_string_is_not_a_url(endpoint, allow_private):
    error = register_error(register_body(endpoint=endpoint), allow_private=allow_private)
    assert error == ProtocolError(errors.INVALID_FIELD, "Invalid endpoint: must be a valid URL")


@pytest.mark.parametrize("endpoint", ["http://relay.example.com", "ws://relay.example.com/ws"])
def test_plain_http_and_ws_are_refused_in_production_and_allowed_in_development(endpoint):
    error = register_error(register_body(endpoint=endpoint), allow_private=False)
    assert error == ProtocolError(
        errors.INVALID_FIELD, "Invalid endpoint: must use HTTPS or WSS protocol"
    )
    assert decode_register(register_body(endpoint=endpoint), allow_private=True).endpoint == (
        endpoint
    )


@pytest.mark.parametrize(
    "endpoint",
    ["https://10.0.0.1", "wss://127.0.0.2:8443", "https://[fd00::1]/", "wss://localhost"],
)
def test_private_endpoints_are_refused_in_production_and_allowed_in_development(endpoint):
    error = register_error(register_body(endpoint=endpoint), allow_private=False)
    assert error == ProtocolError(
        errors.INVALID_FIELD, "Invalid endpoint: must not point to private or internal addresses"
    )
    assert decode_register(register_body(endpoint=endpoint), allow_private=True).endpoint == (
        endpoint
    )


@pytest.mark.parametrize("allow_private", [False, True])
def test_an_endpoint_that_is_not_a_url_is_refused_in_both_modes(allow_private):
    error = register_error(register_body(endpoint="not a url"), allow_private=allow_private)
    assert error == ProtocolError(errors.INVALID_FIELD, "Invalid endpoint: must be a valid URL")


@pytest.mark.parametrize("public_key", [5, 1.5, True, [], ["key"], {}])
def test_a_public_key_that_is_not_a_string_is_invalid(public_key):
    error = register_error(register_body(publicKey=public_key))
    assert error == ProtocolError(errors.INVALID_FIELD, "Invalid publicKey: must be a string")


def test_a_public_key_with_a_lone_surrogate_is_not_json_text():
    data = b'{"serverId":"a","endpoint":"https://relay.example.com","publicKey":"k\\ud800"}'
    error = register_error(data)
    assert error == ProtocolError(errors.INVALID_BODY, "Invalid JSON body")


def test_a_public_key_is_at_most_1024_characters():
    error = register_error(register_body(publicKey="k" * 1025))
    assert error == ProtocolError(errors.INVALID_FIELD, "Invalid publicKey: too long")
    decoded = decode_register(register_body(publicKey="k" * 1024), allow_private=False)
    assert decoded.public_key == "k" * 1024


NOT_JSON_OBJECTS = [
    b"",
    b"   ",
    b"\n\t\r ",
    b"[]",
    b"[{}]",
    b'"x"',
    b"1",
    b"1.5",
    b"null",
    b"true",
    b"\xff",
    b'{"serverId":"\xff"}',
    b"{",
    b'{"serverId": "a"',
    b'{"serverId": "a",}',
    b"{'serverId': 'a'}",
    b"NaN",
    b'{"connections": NaN}',
    b'{"connections": Infinity}',
    b'{"connections": -Infinity}',
    b'{"connections": 1e400}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"1" * 5000,
    b'{"connections": ' + b"1" * 5000 + b"}",
]


@pytest.mark.parametrize("data", NOT_JSON_OBJECTS)
def test_a_body_that_is_not_a_json_object_is_an_invalid_body(data):
    for allow_private in (False, True):
        assert register_error(data, allow_private=allow_private).code == errors.INVALID_BODY
    assert heartbeat_error(data).code == errors.INVALID_BODY


# -- POST /servers/heartbeat -----------------------------------------------------------------


def test_a_heartbeat_without_counters_updates_none():
    assert decode_heartbeat(body(serverId=SERVER_ID)) == ServerHeartbeat(
        SERVER_ID, CounterUpdate(None, None, None, None)
    )


def test_a_heartbeat_updates_only_the_counters_it_carries():
    data = body(serverId=SERVER_ID, relayConnections=4, activeCodes=None, unknown=1)
    assert decode_heartbeat(data) == ServerHeartbeat(
        SERVER_ID, CounterUpdate(connections=None, relay_connections=4)
    )
    data = body(
        serverId=SERVER_ID, connections=1, relayConnections=2, signalingConnections=3, activeCodes=4
    )
    assert decode_heartbeat(data).counters == CounterUpdate(1, 2, 3, 4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (_ABSENT, None),
        (0, 0),
        (3.9, 3),
        (-2, 0),
        (1e300, COUNTER_MAX),
        (2**60, COUNTER_MAX),
        ("7", 0),
        ("", 0),
        (True, 0),
        (False, 0),
        ([], 0),
        ({}, 0),
    ],
)
def test_heartbeat_counters_absent_or_null_are_none_and_invalid_are_zero(value, expected):
    data = body(serverId=SERVER_ID, **dict.fromkeys(COUNTER_NAMES, value))
    assert decode_heartbeat(data).counters == CounterUpdate(expected, expected, expected, expected)


@pytest.mark.parametrize("server_id", [_ABSENT, None, ""])
def test_a_heartbeat_without_server_id_is_refused(server_id):
    error = heartbeat_error(body(serverId=server_id, connections=1))
    assert error == ProtocolError(errors.INVALID_FIELD, "Missing serverId")


@pytest.mark.parametrize("server_id", BAD_SERVER_IDS)
def test_a_heartbeat_with_a_malformed_server_id_is_refused(server_id):
    error = heartbeat_error(body(serverId=server_id))
    assert error == ProtocolError(errors.INVALID_FIELD, "Invalid serverId format")


@pytest.mark.parametrize("server_id", GOOD_SERVER_IDS)
def test_a_heartbeat_accepts_every_valid_server_id(server_id):
    assert decode_heartbeat(body(serverId=server_id)).server_id == server_id


# -- DELETE /servers/{serverId} --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"abc", "abc"),
        (b"a%2Fb", "a/b"),
        (b"a%2fb%3D%2B", "a/b=+"),
        (b"a+b=", "a+b="),  # a path is not a form: "+" stays a plus
        (b"vps-1.eu:443_x", "vps-1.eu:443_x"),
        (b"%61%62%63", "abc"),
        (b"s" * 128, "s" * 128),
        (b"%61" * 128, "a" * 128),
    ],
)
def test_a_server_id_path_is_percent_decoded(raw, expected):
    assert decode_server_id_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"a/b",
        b"/",
        b"%ZZ",
        b"%4",
        b"%",
        b"a%",
        b"%%41",
        b"%+1",
        b"%FF",
        b"%C3%A9",
        b"a%20b",
        b"a b",
        b"%00",
        b"a%3Fb",
        b"a?b",
        b"a#b",
        b"s" * 129,
        b"%61" * 129,
        b"\xc3\xa9",
        b"\xff",
    ],
)
def test_a_bad_server_id_path_is_invalid(raw):
    with pytest.raises(ProtocolError) as info:
        decode_server_id_path(raw)
    assert info.value == ProtocolError(errors.INVALID_FIELD, "Invalid server ID")


# -- entries and counters --------------------------------------------------------------------


def test_counters_updated_keeps_the_counters_the_update_does_not_carry():
    counters = Counters(1, 2, 3, 4)
    assert counters.updated(CounterUpdate()) == counters
    assert counters.updated(CounterUpdate(relay_connections=9, active_codes=0)) == Counters(
        1, 9, 3, 0
    )
    assert counters.updated(CounterUpdate(5, 6, 7, 8)) == Counters(5, 6, 7, 8)
    assert counters == Counters(1, 2, 3, 4)  # a value: never changed in place


def test_an_entry_is_shown_with_the_contract_fields_in_order():
    entry = ServerEntry(
        SERVER_ID,
        ENDPOINT,
        PUBLIC_KEY,
        "eu",
        Counters(1, 2, 3, 4),
        1_700_000_000_000,
        1_700_000_300_000,
    )
    shown = entry.to_json()
    assert list(shown) == [
        "serverId",
        "endpoint",
        "publicKey",
        "region",
        "connections",
        "relayConnections",
        "signalingConnections",
        "activeCodes",
        "registeredAt",
        "lastSeen",
    ]
    assert shown == {
        "serverId": SERVER_ID,
        "endpoint": ENDPOINT,
        "publicKey": PUBLIC_KEY,
        "region": "eu",
        "connections": 1,
        "relayConnections": 2,
        "signalingConnections": 3,
        "activeCodes": 4,
        "registeredAt": 1_700_000_000_000,
        "lastSeen": 1_700_000_300_000,
    }


# -- no input crashes a decoder --------------------------------------------------------------

_SERVER_ID_RE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
_REGION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

server_id_like = st.text(alphabet="aZ9._:+/=- #%é\n", max_size=12) | st.text(
    alphabet="s", min_size=127, max_size=130
)
endpoint_like = st.builds(
    "{}://{}{}{}".format,
    st.sampled_from(["https", "wss", "http", "ws", "HTTPS", "ftp", "javascript", ""]),
    st.sampled_from(
        [
            "relay.example.com",
            "8.8.8.8",
            "10.0.0.1",
            "127.0.0.2",
            "2130706433",
            "0x7f.1",
            "[::1]",
            "[fd00::1]",
            "[::ffff:8.8.8.8]",
            "[2002:a00:1::1]",
            "[fe80::1%25eth0]",
            "localhost",
            "a.local",
            "例え.jp",
            "user@host.example",
            "",
        ]
    )
    | st.text(max_size=20),
    st.sampled_from(["", ":443", ":0", ":99999", ":", ":x"]),
    st.sampled_from(["", "/", "/ws", "?q=1", "#f"]) | st.text(max_size=10),
) | st.text(max_size=40)
counter_like = json_scalars | st.sampled_from([1e300, -1e300, 2**53, 2**64, -0.0, 3.9])
server_ids = st.sampled_from(GOOD_SERVER_IDS) | server_id_like | json_values
endpoints = (
    st.sampled_from(
        [
            "https://relay.example.com",
            "wss://8.8.8.8:443/ws",
            "http://10.0.0.1:80",
            "wss://[fd00::1]",
        ]
    )
    | endpoint_like
    | json_values
)
public_keys = (
    st.text(max_size=20) | st.text(alphabet="k", min_size=1023, max_size=1026) | json_values
)
optional_fields = {
    "region": st.text(alphabet="aZ9._- /", max_size=8)
    | st.text(alphabet="r", min_size=63, max_size=66)
    | json_values,
    **dict.fromkeys(COUNTER_NAMES, counter_like | json_values),
}
# Two shapes: any of the known fields, each maybe present; and the required ones always there
# (so that bodies get past the first checks and reach the endpoint, key, region and counters).
register_like = st.builds(
    lambda extra, known: {**extra, **known},
    json_objects,
    st.fixed_dictionaries(
        {},
        optional={
            "serverId": server_ids,
            "endpoint": endpoints,
            "publicKey": public_keys,
            **optional_fields,
        },
    )
    | st.fixed_dictionaries(
        {"serverId": server_ids, "endpoint": endpoints, "publicKey": public_keys},
        optional=optional_fields,
    ),
)


def encode_object(obj: dict[str, Any], ensure_ascii: bool) -> bytes:
    # surrogatepass: a lone surrogate becomes bytes that are not UTF-8, which the decoder
    # must refuse as well.
    return json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


register_bodies = st.builds(encode_object, register_like, st.booleans()) | st.binary(max_size=80)


def outcome(decode: Callable[[], T]) -> T | ProtocolError:
    """What ``decode`` returns, or the ``ProtocolError`` it raises; anything else escapes."""
    try:
        return decode()
    except ProtocolError as exc:
        return exc


def check_register(data: bytes, allow_private: bool) -> None:
    decoded = outcome(lambda: decode_register(data, allow_private=allow_private))
    if isinstance(decoded, ProtocolError):
        assert decoded.code in {errors.INVALID_BODY, errors.INVALID_FIELD}
        return
    assert _SERVER_ID_RE.fullmatch(decoded.server_id)
    assert check_endpoint(decoded.endpoint, allow_private=allow_private) is None
    assert isinstance(decoded.public_key, str)
    assert len(decoded.public_key) <= 1024
    assert decoded.region == "unknown" or _REGION_RE.fullmatch(decoded.region)
    assert all(0 <= count <= COUNTER_MAX for count in counter_values(decoded.counters))


@settings(deadline=None, max_examples=300)
@given(register_bodies)
def test_decode_register_raises_only_protocol_errors(data):
    check_register(data, allow_private=False)
    check_register(data, allow_private=True)


@settings(deadline=None, max_examples=300)
@given(register_bodies)
def test_decode_heartbeat_raises_only_protocol_errors(data):
    decoded = outcome(lambda: decode_heartbeat(data))
    if isinstance(decoded, ProtocolError):
        assert decoded.code in {errors.INVALID_BODY, errors.INVALID_FIELD}
        return
    assert _SERVER_ID_RE.fullmatch(decoded.server_id)
    update = decoded.counters
    for count in (
        update.connections,
        update.relay_connections,
        update.signaling_connections,
        update.active_codes,
    ):
        assert count is None or 0 <= count <= COUNTER_MAX


path_like = st.binary(max_size=40) | st.text(alphabet="aZ9._:+/=-%2FfCc3é ", max_size=20).map(
    lambda text: text.encode("utf-8")
)


@settings(deadline=None, max_examples=300)
@given(path_like)
def test_decode_server_id_path_raises_only_protocol_errors(raw):
    server_id = outcome(lambda: decode_server_id_path(raw))
    if isinstance(server_id, ProtocolError):
        assert server_id == ProtocolError(errors.INVALID_FIELD, "Invalid server ID")
        return
    assert _SERVER_ID_RE.fullmatch(server_id)
    assert b"/" not in raw
