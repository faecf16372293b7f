"""Session tokens as a VPS server checks them, build tokens
(docs/protocol/attestation.md, "The session token")."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import json_values
from zajel.attestation import (
    ExpiredToken,
    FutureToken,
    InvalidToken,
    SessionClaims,
    SessionTokenError,
    sign_build_token,
    verify_session_token,
)
from zajel.crypto import (
    InvalidKey,
    b64url_encode,
    generate_seed,
    parse_public_key,
    public_key_b64,
    sign_token,
    signing_key,
    verify_detached,
)

KEY = signing_key(bytes(range(32)))
PUBLIC_KEY = public_key_b64(KEY)
NOW = 1_700_000_000_000
HOUR_MS = 3_600_000
NATIVE = {
    "device_id": "device-1",
    "build_version": "1.2.3",
    "platform": "android",
    "issued_at": NOW,
    "expires_at": NOW + HOUR_MS,
}
WEB = {
    "device_id": "device-2",
    "build_version": "1.2.3",
    "platform": "web",
    "issued_at": NOW,
    "expires_at": NOW + 15 * 60_000,
    "trust_level": "web_fallback",
}


def token(**changes: object) -> str:
    return sign_token(KEY, {**NATIVE, **changes})


def without(field: str) -> str:
    return sign_token(KEY, {name: value for name, value in NATIVE.items() if name != field})


def test_a_native_token_verifies_as_attested():
    claims = verify_session_token(token(), PUBLIC_KEY, now_ms=NOW)
    assert claims == SessionClaims(
        device_id="device-1",
        build_version="1.2.3",
        platform="android",
        issued_at=NOW,
        expires_at=NOW + HOUR_MS,
        trust_level="attested",
    )


def test_a_web_fallback_token_keeps_its_trust_level():
    claims = verify_session_token(sign_token(KEY, WEB), PUBLIC_KEY, now_ms=NOW)
    assert claims.trust_level == "web_fallback"
    assert claims.platform == "web"
    assert claims.expires_at == NOW + 15 * 60_000


def test_unknown_fields_are_ignored():
    claims = verify_session_token(token(extra=[1, 2]), PUBLIC_KEY, now_ms=NOW)
    assert claims.device_id == "device-1"


def test_the_key_may_be_raw_bytes_or_a_verify_key():
    raw = bytes(KEY.verify_key)
    expected = verify_session_token(token(), PUBLIC_KEY, now_ms=NOW)
    assert verify_session_token(token(), raw, now_ms=NOW) == expected
    assert verify_session_token(token(), KEY.verify_key, now_ms=NOW) == expected
    assert verify_session_token(token(), parse_public_key(PUBLIC_KEY), now_ms=NOW) == expected


def test_claims_are_frozen():
    claims = verify_session_token(token(), PUBLIC_KEY, now_ms=NOW)
    with pytest.raises(AttributeError):
        claims.device_id = "other"


# -- time ----------------------------------------------------------------------------------


def test_a_token_is_valid_until_one_millisecond_before_it_expires():
    expires_at = NATIVE["expires_at"]
    assert verify_session_token(token(), PUBLIC_KEY, now_ms=expires_at - 1).device_id


def test_a_token_is_expired_at_its_expiry():
    with pytest.raises(ExpiredToken) as caught:
        verify_session_token(token(), PUBLIC_KEY, now_ms=NOW + HOUR_MS)
    assert str(caught.value) == "session token expired 0 ms ago"


def test_a_long_expired_token_is_expired():
    with pytest.raises(ExpiredToken, match="expired 86400000 ms ago"):
        verify_session_token(token(), PUBLIC_KEY, now_ms=NOW + HOUR_MS + 86_400_000)


def test_a_token_issued_sixty_one_seconds_ahead_is_from_the_future():
    with pytest.raises(FutureToken) as caught:
        verify_session_token(token(issued_at=NOW + 61_000), PUBLIC_KEY, now_ms=NOW)
    assert str(caught.value) == "session token is issued 61000 ms in the future (limit 60000 ms)"


@pytest.mark.parametrize("ahead_ms", [0, 1, 59_999, 60_000])
def test_a_token_issued_up_to_sixty_seconds_ahead_is_fine(ahead_ms):
    claims = verify_session_token(token(issued_at=NOW + ahead_ms), PUBLIC_KEY, now_ms=NOW)
    assert claims.issued_at == NOW + ahead_ms


def test_the_skew_can_be_changed():
    ahead = token(issued_at=NOW + 10_001)
    with pytest.raises(FutureToken):
        verify_session_token(ahead, PUBLIC_KEY, now_ms=NOW, max_skew_ms=10_000)
    assert verify_session_token(ahead, PUBLIC_KEY, now_ms=NOW, max_skew_ms=10_001).device_id


def test_a_token_issued_in_the_past_and_still_valid_is_fine():
    claims = verify_session_token(token(), PUBLIC_KEY, now_ms=NOW + HOUR_MS // 2)
    assert claims.issued_at == NOW


# -- invalid tokens ------------------------------------------------------------------------


def tamper(text: str) -> str:
    index = 5
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize(
    "bad_token",
    [
        pytest.param(sign_token(signing_key(bytes(32)), NATIVE), id="wrong key"),
        pytest.param(tamper(sign_token(KEY, NATIVE)), id="tampered"),
        pytest.param(sign_token(KEY, NATIVE).split(".")[0], id="one part"),
        pytest.param(sign_token(KEY, NATIVE) + ".x", id="three parts"),
        pytest.param("", id="empty"),
        pytest.param("not a token", id="garbage"),
        pytest.param(None, id="None"),
        pytest.param(b"a.b", id="bytes"),
    ],
)
def test_a_bad_or_foreign_token_is_invalid(bad_token):
    with pytest.raises(InvalidToken, match="malformed or its signature does not verify"):
        verify_session_token(bad_token, PUBLIC_KEY, now_ms=NOW)


@pytest.mark.parametrize(
    ("bad_token", "message"),
    [
        (sign_token(KEY, {}), "no string device_id"),
        (without("device_id"), "no string device_id"),
        (without("build_version"), "no string build_version"),
        (without("platform"), "no string platform"),
        (without("issued_at"), "no integer issued_at"),
        (without("expires_at"), "no integer expires_at"),
        (token(device_id=7), "no string device_id"),
        (token(device_id=None), "no string device_id"),
        (token(build_version=["1.2.3"]), "no string build_version"),
        (token(platform={"name": "android"}), "no string platform"),
        (token(issued_at=True), "no integer issued_at"),
        (token(issued_at=float(NOW)), "no integer issued_at"),
        (token(issued_at=str(NOW)), "no integer issued_at"),
        (token(expires_at=str(NOW + HOUR_MS)), "no integer expires_at"),
        (token(expires_at=False), "no integer expires_at"),
        (token(expires_at=None), "no integer expires_at"),
        (token(expires_at=NOW), "expires before it is issued"),
        (token(expires_at=NOW - 1), "expires before it is issued"),
        (token(trust_level=None), "trust_level is not a string"),
        (token(trust_level=1), "trust_level is not a string"),
    ],
    ids=lambda value: value if value and len(value) < 40 else "token",
)
def test_a_signed_token_without_the_documented_claims_is_invalid(bad_token, message):
    with pytest.raises(InvalidToken, match=message):
        verify_session_token(bad_token, PUBLIC_KEY, now_ms=NOW)


def test_a_signed_json_value_that_is_not_an_object_is_invalid():
    payload = b"[1,2]"
    array_token = f"{b64url_encode(payload)}.{b64url_encode(KEY.sign(payload).signature)}"
    with pytest.raises(InvalidToken):
        verify_session_token(array_token, PUBLIC_KEY, now_ms=NOW)


def test_error_messages_never_contain_the_token():
    for bad_token, now_ms in [
        (tamper(token()), NOW),
        (token(issued_at=True), NOW),
        (token(), NOW + HOUR_MS),
        (token(issued_at=NOW + 120_000, expires_at=NOW + HOUR_MS), NOW),
    ]:
        with pytest.raises(SessionTokenError) as caught:
            verify_session_token(bad_token, PUBLIC_KEY, now_ms=now_ms)
        message = str(caught.value)
        for part in bad_token.split("."):
            assert part[:16] not in message
        assert "." not in message  # one sentence, and no piece of a token


@pytest.mark.parametrize("key", ["", "short", PUBLIC_KEY[:-1], bytes(31), "x" * 44, 12, None])
def test_a_bad_public_key_is_a_caller_error(key):
    with pytest.raises(InvalidKey):
        verify_session_token(token(), key, now_ms=NOW)


def test_every_token_failure_is_a_session_token_error():
    for error in (InvalidToken, ExpiredToken, FutureToken):
        assert issubclass(error, SessionTokenError)
    assert not issubclass(InvalidKey, SessionTokenError)


claim_values = st.one_of(
    json_values, st.integers(NOW - 2 * HOUR_MS, NOW + 2 * HOUR_MS), st.sampled_from(["", "web"])
)


@settings(deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            name: claim_values
            for name in (*NATIVE, "trust_level")  # every field may be absent or of any type
        },
    )
)
def test_no_signed_payload_crashes_the_check(payload):
    try:
        claims = verify_session_token(sign_token(KEY, payload), PUBLIC_KEY, now_ms=NOW)
    except SessionTokenError:
        return
    assert claims.issued_at - NOW <= 60_000
    assert claims.issued_at < claims.expires_at
    assert claims.expires_at > NOW
    assert isinstance(claims.trust_level, str)


# -- build tokens --------------------------------------------------------------------------

SEED = bytes(range(100, 132))


def test_a_build_token_verifies_with_the_seeds_public_key():
    build_token = sign_build_token(
        SEED, version="1.2.3", platform="android", build_hash="ab" * 32, timestamp_ms=NOW
    )
    assert set(build_token) == {"payload", "signature"}
    signature = base64.b64decode(build_token["signature"], validate=True)
    assert len(signature) == 64
    assert build_token["signature"].endswith("==")
    public_key = parse_public_key(public_key_b64(signing_key(SEED)))
    public_key.verify(build_token["payload"].encode("utf-8"), signature)


def test_a_build_token_payload_is_the_four_fields_in_order():
    build_token = sign_build_token(
        SEED, version="1.2.3", platform="ios", build_hash="cafe", timestamp_ms=NOW
    )
    payload = json.loads(build_token["payload"])
    assert list(payload.items()) == [
        ("version", "1.2.3"),
        ("platform", "ios"),
        ("build_hash", "cafe"),
        ("timestamp", NOW),
    ]
    assert build_token["payload"] == (
        f'{{"version":"1.2.3","platform":"ios","build_hash":"cafe","timestamp":{NOW}}}'
    )


def test_a_build_token_is_not_valid_under_another_key():
    build_token = sign_build_token(
        SEED, version="1.2.3", platform="ios", build_hash="cafe", timestamp_ms=NOW
    )
    payload = build_token["payload"].encode("utf-8")
    signature = base64.b64decode(build_token["signature"])
    assert verify_detached(signing_key(SEED).verify_key, payload, signature)
    assert not verify_detached(signing_key(generate_seed()).verify_key, payload, signature)


def test_a_build_token_needs_a_32_byte_seed():
    with pytest.raises(InvalidKey):
        sign_build_token(
            bytes(31), version="1.2.3", platform="ios", build_hash="cafe", timestamp_ms=NOW
        )


@pytest.mark.parametrize(
    "fields",
    [
        {"version": 1, "platform": "ios", "build_hash": "cafe", "timestamp_ms": NOW},
        {"version": "1.2.3", "platform": None, "build_hash": "cafe", "timestamp_ms": NOW},
        {"version": "1.2.3", "platform": "ios", "build_hash": b"cafe", "timestamp_ms": NOW},
        {"version": "1.2.3", "platform": "ios", "build_hash": "cafe", "timestamp_ms": True},
        {"version": "1.2.3", "platform": "ios", "build_hash": "cafe", "timestamp_ms": 1.5},
    ],
)
def test_a_build_token_refuses_fields_of_the_wrong_type(fields):
    with pytest.raises(TypeError):
        sign_build_token(SEED, **fields)
