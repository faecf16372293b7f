"""The client-side check of the signed server list (docs/protocol/servers.md, "Verifying")."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import json_values
from zajel.bootstrap import (
    BadSignature,
    BootstrapError,
    FutureList,
    MalformedList,
    StaleList,
    verify_server_list,
)
from zajel.crypto import InvalidKey, generate_seed, public_key_b64, sign_b64, signing_key

KEY = signing_key(bytes(range(32)))
PUBLIC_KEY = public_key_b64(KEY)
NOW = 1_700_000_000_000
ENTRY = {
    "serverId": "ed25519:abc",
    "endpoint": "wss://relay.example",
    "publicKey": "cHVibGlj",
    "region": "eu-west",
    "connections": 3,
    "relayConnections": 1,
    "signalingConnections": 2,
    "activeCodes": 4,
    "registeredAt": NOW - 60_000,
    "lastSeen": NOW - 5_000,
}


def compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def signed(body: bytes) -> tuple[bytes, str]:
    return body, sign_b64(KEY, body)


def signed_list(servers: list[object], timestamp: int = NOW) -> tuple[bytes, str]:
    return signed(compact({"servers": servers, "timestamp": timestamp}))


def test_a_signed_fresh_list_verifies_and_returns_its_entries():
    body, signature = signed_list([ENTRY])
    assert verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW) == [ENTRY]


def test_an_empty_list_verifies():
    body, signature = signed_list([])
    assert verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW) == []


def test_the_key_may_be_raw_bytes_or_a_verify_key():
    body, signature = signed_list([ENTRY])
    raw = bytes(KEY.verify_key)
    assert verify_server_list(body, signature, raw, now_ms=NOW) == [ENTRY]
    assert verify_server_list(body, signature, KEY.verify_key, now_ms=NOW) == [ENTRY]


def test_unknown_fields_are_kept_and_only_three_fields_are_required():
    entry = {"serverId": "s", "endpoint": "wss://e", "publicKey": "k", "extra": [1, 2]}
    body, signature = signed_list([entry])
    assert verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW) == [entry]


def test_any_changed_byte_fails():
    body, signature = signed_list([{"serverId": "s", "endpoint": "wss://e", "publicKey": "k"}])
    for position in range(len(body)):
        for flip in (0x01, 0x80):
            changed = bytearray(body)
            changed[position] ^= flip
            with pytest.raises(BadSignature):
                verify_server_list(bytes(changed), signature, PUBLIC_KEY, now_ms=NOW)


@settings(deadline=None)
@given(st.data())
def test_an_inserted_or_removed_byte_fails(data):
    body, signature = signed_list([ENTRY])
    position = data.draw(st.integers(0, len(body) - 1))
    removed = body[:position] + body[position + 1 :]
    inserted = body[:position] + data.draw(st.binary(min_size=1, max_size=4)) + body[position:]
    for changed in (removed, inserted, body + b" ", b" " + body):
        with pytest.raises(BadSignature):
            verify_server_list(changed, signature, PUBLIC_KEY, now_ms=NOW)


def test_a_wrong_key_fails():
    body, signature = signed_list([ENTRY])
    other = public_key_b64(signing_key(generate_seed()))
    with pytest.raises(BadSignature, match="does not verify"):
        verify_server_list(body, signature, other, now_ms=NOW)


@pytest.mark.parametrize(
    "signature",
    [None, "", "not base64", 12, b"bytes", "A" * 86 + "==", "A" * 88],
)
def test_a_missing_or_malformed_signature_fails(signature):
    body, _ = signed_list([ENTRY])
    with pytest.raises(BadSignature):
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW)


def test_a_missing_signature_names_the_header():
    body, _ = signed_list([ENTRY])
    with pytest.raises(BadSignature, match="X-Bootstrap-Signature"):
        verify_server_list(body, None, PUBLIC_KEY, now_ms=NOW)


@pytest.mark.parametrize("key", ["", "short", PUBLIC_KEY[:-1], bytes(31), "x" * 44])
def test_an_unparsable_public_key_is_a_caller_error(key):
    body, signature = signed_list([ENTRY])
    with pytest.raises(InvalidKey):
        verify_server_list(body, signature, key, now_ms=NOW)


def test_the_signature_is_checked_before_the_body_is_parsed():
    with pytest.raises(BadSignature):
        verify_server_list(b"not json", sign_b64(KEY, b"other"), PUBLIC_KEY, now_ms=NOW)


# -- freshness (replay protection) ---------------------------------------------------------


@pytest.mark.parametrize(
    "age_ms", [0, 1, 299_999, 300_000, -1, -59_999, -60_000], ids=lambda age: f"age={age}"
)
def test_fresh_lists_pass(age_ms):
    body, signature = signed_list([ENTRY], timestamp=NOW - age_ms)
    assert verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW) == [ENTRY]


def test_a_list_five_minutes_and_one_millisecond_old_is_stale():
    body, signature = signed_list([ENTRY], timestamp=NOW - 300_001)
    with pytest.raises(StaleList) as caught:
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW)
    assert str(caught.value) == "list is 300001 ms old (limit 300000 ms)"


def test_a_very_old_list_is_stale():
    body, signature = signed_list([ENTRY], timestamp=0)
    with pytest.raises(StaleList):
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW)


@pytest.mark.parametrize("ahead_ms", [60_001, 61_000, 10**15])
def test_a_list_more_than_sixty_seconds_ahead_is_from_the_future(ahead_ms):
    body, signature = signed_list([ENTRY], timestamp=NOW + ahead_ms)
    with pytest.raises(FutureList) as caught:
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW)
    assert str(caught.value) == f"list is {ahead_ms} ms in the future (limit 60000 ms)"


def test_the_limits_can_be_changed():
    body, signature = signed_list([ENTRY], timestamp=NOW - 10_000)
    with pytest.raises(StaleList):
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW, max_age_ms=9_999)
    with pytest.raises(FutureList):
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW - 20_001, max_skew_ms=10_000)


# -- shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"\xff\xfe{}",
        compact({"servers": [], "timestamp": NOW})[:-1],
        compact([ENTRY]),
        compact("servers"),
        compact(None),
        compact({"servers": []}),
        compact({"servers": [], "timestamp": True}),
        compact({"servers": [], "timestamp": float(NOW)}),
        compact({"servers": [], "timestamp": str(NOW)}),
        compact({"servers": [], "timestamp": None}),
        b'{"servers":[],"timestamp":NaN}',
        b'{"servers":[],"timestamp":Infinity}',
        b'{"servers":[],"timestamp":1700000000000,"x":-Infinity}',
        compact({"timestamp": NOW}),
        compact({"servers": {}, "timestamp": NOW}),
        compact({"servers": "a,b", "timestamp": NOW}),
        compact({"servers": None, "timestamp": NOW}),
        compact({"servers": [ENTRY, "s1"], "timestamp": NOW}),
        compact({"servers": [[ENTRY]], "timestamp": NOW}),
        compact({"servers": [{**ENTRY, "serverId": None}], "timestamp": NOW}),
        compact(
            {"servers": [{k: v for k, v in ENTRY.items() if k != "serverId"}], "timestamp": NOW}
        ),
        compact({"servers": [{**ENTRY, "endpoint": 7}], "timestamp": NOW}),
        compact(
            {"servers": [{k: v for k, v in ENTRY.items() if k != "publicKey"}], "timestamp": NOW}
        ),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=lambda body: body[:40].decode("utf-8", "replace"),
)
def test_malformed_lists_are_refused_even_when_signed(body):
    body, signature = signed(body)
    with pytest.raises(MalformedList):
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW)


def test_malformed_messages_say_which_entry():
    body, signature = signed_list([ENTRY, {"endpoint": "wss://e", "publicKey": "k"}])
    with pytest.raises(MalformedList, match=r"^server entry 1 has no string serverId$"):
        verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW)


def test_every_failure_is_a_bootstrap_error():
    for error in (BadSignature, StaleList, FutureList, MalformedList):
        assert issubclass(error, BootstrapError)
    assert not issubclass(InvalidKey, BootstrapError)


entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={"serverId": json_values, "endpoint": json_values, "publicKey": json_values},
    ),
    st.fixed_dictionaries({"serverId": st.text(), "endpoint": st.text(), "publicKey": st.text()}),
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(compact),
    st.fixed_dictionaries(
        {},
        optional={
            "servers": json_values | st.lists(entries, max_size=3),
            "timestamp": json_values | st.integers(NOW - 400_000, NOW + 100_000),
        },
    ).map(compact),
)


@settings(deadline=None)
@given(bodies)
def test_no_signed_body_crashes_the_check(body):
    body, signature = signed(body)
    try:
        servers = verify_server_list(body, signature, PUBLIC_KEY, now_ms=NOW)
    except BootstrapError:
        return
    for entry in servers:
        assert all(isinstance(entry[field], str) for field in ("serverId", "endpoint", "publicKey"))
