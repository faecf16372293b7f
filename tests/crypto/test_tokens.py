"""Session tokens, detached signatures, HMAC and base64url
(docs/protocol/attestation.md, "The session token")."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import json_objects, json_values
from zajel.crypto import (
    b64url_decode,
    b64url_encode,
    decode_signature,
    generate_seed,
    hex_equal,
    hmac_sha256_hex,
    open_token,
    sign_token,
    signing_key,
    verify_detached,
)

KEY = signing_key(bytes(range(32)))
OTHER_KEY = signing_key(bytes(range(1, 33)))
CLAIMS = {
    "device_id": "device-1",
    "build_version": "1.2.3",
    "platform": "android",
    "issued_at": 1_700_000_000_000,
    "expires_at": 1_700_003_600_000,
}
# Chosen so that standard base64 of these bytes has both "+" and "/" in it.
SIGNATURE = bytes([0xFB, 0xEF, 0xFF]) * 21 + b"\x01"


def token_of(payload: bytes, key=KEY) -> str:
    return f"{b64url_encode(payload)}.{b64url_encode(key.sign(payload).signature)}"


# -- HMAC ----------------------------------------------------------------------------------


def test_hmac_matches_rfc_4231_test_case_2():
    digest = hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?")
    assert digest == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_hmac_is_64_lowercase_hex_characters():
    digest = hmac_sha256_hex(bytes(32), b"")
    assert len(digest) == 64
    assert digest == digest.lower()
    bytes.fromhex(digest)


def test_hex_equal_accepts_the_exact_value():
    digest = hmac_sha256_hex(b"key", b"region")
    assert hex_equal(digest, digest)
    assert hex_equal(digest, "".join(digest))  # an equal string, not the same object


@pytest.mark.parametrize(
    "given_value",
    [
        pytest.param(lambda digest: digest.upper(), id="uppercase"),
        pytest.param(lambda digest: digest[:-1], id="shorter"),
        pytest.param(lambda digest: digest + "0", id="longer"),
        pytest.param(lambda digest: "", id="empty"),
        pytest.param(lambda digest: digest[:-1] + ("1" if digest[-1] != "1" else "2"), id="other"),
        pytest.param(lambda digest: digest[:-1] + "\u00e9", id="non-ascii, same length"),
        pytest.param(lambda digest: "\u0661" * 64, id="arabic-indic digits"),
        pytest.param(lambda digest: digest.encode(), id="bytes"),
        pytest.param(lambda digest: None, id="None"),
        pytest.param(lambda digest: 0, id="int"),
        pytest.param(lambda digest: [digest], id="list"),
    ],
)
def test_hex_equal_refuses_anything_else(given_value):
    digest = hmac_sha256_hex(b"key", b"region")
    assert not hex_equal(digest, given_value(digest))


def test_hex_equal_is_false_for_a_non_ascii_expected_value():
    assert not hex_equal("\u00e9", "\u00e9")


# -- base64url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"\x00", "AA"),
        (b"\x00\x00", "AAA"),
        (b"\x00\x00\x00", "AAAA"),
        (b"\xfb\xff", "-_8"),
        (b'{"a":1}', "eyJhIjoxfQ"),
    ],
)
def test_b64url_known_values(data, text):
    assert b64url_encode(data) == text
    assert b64url_decode(text) == data


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_b64url_round_trips(data):
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "AA==",  # padding
        "AAA=",
        "eyJhIjoxfQ==",
        "+_8",  # the standard alphabet
        "-/8",
        "AB",  # non-zero spare bits: "AA" is the one spelling of b"\x00"
        "AAB",
        "A",  # 4n + 1 characters encode nothing
        "AAAAA",
        " AA",
        "AA\n",
        "A A",
        "AA.",
        "\u00c0A",
        "\u0661\u0662",
    ],
)
def test_b64url_decode_refuses_non_canonical_text(text):
    assert b64url_decode(text) is None


@pytest.mark.parametrize("value", [None, b"AA", 0, ["AA"]])
def test_b64url_decode_refuses_what_is_not_text(value):
    assert b64url_decode(value) is None


@settings(deadline=None)
@given(st.text(max_size=200))
def test_b64url_decode_never_raises_and_only_accepts_canonical_text(text):
    raw = b64url_decode(text)
    if raw is not None:
        assert b64url_encode(raw) == text


# -- signatures ----------------------------------------------------------------------------


def test_the_test_signature_uses_both_alphabets():
    standard = base64.b64encode(SIGNATURE).decode()
    assert "+" in standard
    assert "/" in standard


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(SIGNATURE).decode(),  # standard, padded
        base64.urlsafe_b64encode(SIGNATURE).decode(),  # url, padded
        base64.urlsafe_b64encode(SIGNATURE).decode().rstrip("="),  # url, unpadded
    ],
    ids=["standard", "url padded", "url unpadded"],
)
def test_decode_signature_accepts_every_documented_form(text):
    assert decode_signature(text) == SIGNATURE


def test_decode_signature_accepts_a_signature_whose_base64_needs_no_url_characters():
    signature = bytes(64)
    assert decode_signature(base64.b64encode(signature).decode()) == signature
    assert decode_signature(b64url_encode(signature)) == signature


def encodings(raw: bytes) -> list[str]:
    return [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        b64url_encode(raw),
    ]


@pytest.mark.parametrize(
    "text",
    [
        *encodings(SIGNATURE[:-1]),  # 63 bytes
        *encodings(SIGNATURE + b"\x00"),  # 65 bytes
        *encodings(b""),
        base64.b64encode(SIGNATURE).decode().rstrip("="),  # standard without padding
        base64.b64encode(SIGNATURE).decode()[:-1],  # one "=" of two
        base64.b64encode(SIGNATURE).decode() + "=",
        base64.b64encode(SIGNATURE).decode().replace("+", "-", 1),  # mixed alphabets
        base64.b64encode(SIGNATURE).decode()[:85] + "B==",  # non-zero spare bits
        b64url_encode(SIGNATURE)[:85] + "B",
        " " + base64.b64encode(SIGNATURE).decode(),
        base64.b64encode(SIGNATURE).decode() + "\n",
        "=" * 88,
        "A" * 86 + "=A",
        "not a signature",
        "",
        "\u00c0" * 86,
    ],
)
def test_decode_signature_refuses_anything_else(text):
    assert decode_signature(text) is None


@pytest.mark.parametrize("value", [None, SIGNATURE, 64, [SIGNATURE], {"signature": "x"}])
def test_decode_signature_refuses_what_is_not_text(value):
    assert decode_signature(value) is None


@settings(deadline=None)
@given(st.text(max_size=200))
def test_decode_signature_never_raises(text):
    raw = decode_signature(text)
    assert raw is None or len(raw) == 64


def test_verify_detached_accepts_a_valid_signature():
    signature = KEY.sign(b"payload").signature
    assert verify_detached(KEY.verify_key, b"payload", signature)


@pytest.mark.parametrize(
    ("key", "message", "signature"),
    [
        (KEY.verify_key, b"payload!", KEY.sign(b"payload").signature),
        (OTHER_KEY.verify_key, b"payload", KEY.sign(b"payload").signature),
        (KEY.verify_key, b"payload", KEY.sign(b"payload").signature[:-1]),
        (KEY.verify_key, b"payload", bytes(64)),
        (KEY.verify_key, b"payload", b""),
        (KEY.verify_key, "payload", KEY.sign(b"payload").signature),
        (KEY.verify_key, None, KEY.sign(b"payload").signature),
        (KEY.verify_key, b"payload", base64.b64encode(KEY.sign(b"payload").signature).decode()),
        (KEY, b"payload", KEY.sign(b"payload").signature),
        (None, b"payload", KEY.sign(b"payload").signature),
        # Without a signature pynacl would read the message as signature + message.
        (KEY.verify_key, bytes(KEY.sign(b"payload")), None),
    ],
    ids=[
        "other message",
        "other key",
        "short",
        "zero",
        "empty",
        "str message",
        "None message",
        "base64 signature",
        "signing key",
        "None key",
        "signed message, no signature",
    ],
)
def test_verify_detached_is_false_for_anything_else(key, message, signature):
    assert verify_detached(key, message, signature) is False


# -- session tokens ------------------------------------------------------------------------


def test_sign_token_writes_the_documented_format():
    token = sign_token(KEY, CLAIMS)
    payload_part, signature_part = token.split(".")
    payload = b64url_decode(payload_part)
    assert payload == json.dumps(CLAIMS, separators=(",", ":")).encode()
    signature = b64url_decode(signature_part)
    assert signature is not None
    assert verify_detached(KEY.verify_key, payload, signature)
    assert "=" not in token


def test_a_token_round_trips_with_its_keys_in_order():
    claims = {"z": 1, "a": [True, None], "m": {"nested": "\u00e9\u062a"}, **CLAIMS}
    token = sign_token(KEY, claims)
    assert token.isascii()
    opened = open_token(KEY.verify_key, token)
    assert opened == claims
    assert list(opened) == list(claims)


@settings(deadline=None)
@given(json_objects)
def test_any_json_object_round_trips(claims):
    assert open_token(KEY.verify_key, sign_token(KEY, claims)) == claims


def test_sign_token_refuses_values_that_are_not_json():
    with pytest.raises(ValueError, match="JSON"):
        sign_token(KEY, {"issued_at": float("nan")})
    with pytest.raises(TypeError):
        sign_token(KEY, {"key": b"bytes"})


def tamper(token: str) -> str:
    """The token with one character of its payload changed (still valid base64url)."""
    index = 5
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b64url_encode(b'{"a":1}'), id="one part"),
        pytest.param(sign_token(KEY, CLAIMS) + ".", id="three parts, last empty"),
        pytest.param(sign_token(KEY, CLAIMS) + "." + b64url_encode(b"x"), id="three parts"),
        pytest.param("." + sign_token(KEY, CLAIMS), id="three parts, first empty"),
        pytest.param("", id="empty"),
        pytest.param(".", id="two empty parts"),
        pytest.param("a+b." + sign_token(KEY, CLAIMS).split(".")[1], id="bad base64url"),
        pytest.param(sign_token(KEY, CLAIMS).split(".")[0] + ".a+b", id="bad base64url signature"),
        pytest.param(
            base64.urlsafe_b64encode(b'{"a":1}').decode()
            + "."
            + base64.urlsafe_b64encode(KEY.sign(b'{"a":1}').signature).decode(),
            id="padded",
        ),
        pytest.param(tamper(sign_token(KEY, CLAIMS)), id="tampered payload"),
        pytest.param(sign_token(OTHER_KEY, CLAIMS), id="signed by another key"),
        pytest.param(
            sign_token(KEY, CLAIMS).split(".")[0] + "." + b64url_encode(bytes(63)),
            id="short signature",
        ),
        pytest.param(token_of(b"not json"), id="payload not JSON"),
        pytest.param(token_of(b""), id="empty payload"),
        pytest.param(token_of(b'{"a":1'), id="truncated JSON"),
        pytest.param(token_of(b"\xff\xfe{}"), id="payload not UTF-8"),
        pytest.param(token_of(b'{"a":NaN}'), id="NaN"),
        pytest.param(token_of(b'{"a":-Infinity}'), id="Infinity"),
        pytest.param(token_of(b"[1,2]"), id="JSON array"),
        pytest.param(token_of(b'"text"'), id="JSON string"),
        pytest.param(token_of(b"null"), id="JSON null"),
        pytest.param(token_of(b"[" * 100_000 + b"]" * 100_000), id="deeply nested"),
        pytest.param(token_of(b'{"a":1' + b"0" * 5000 + b"}"), id="huge integer"),
    ],
)
def test_open_token_refuses_a_bad_token(token):
    assert open_token(KEY.verify_key, token) is None


def test_the_tampered_token_differs_only_in_its_payload():
    token = sign_token(KEY, CLAIMS)
    changed = tamper(token)
    assert changed != token
    assert changed.split(".")[1] == token.split(".")[1]
    assert b64url_decode(changed.split(".")[0]) is not None


@pytest.mark.parametrize("token", [None, b"a.b", 12, ["a", "b"], {"token": "a.b"}])
def test_open_token_refuses_what_is_not_text(token):
    assert open_token(KEY.verify_key, token) is None


def test_open_token_with_a_signing_key_instead_of_a_verify_key_is_none():
    assert open_token(KEY, sign_token(KEY, CLAIMS)) is None


def test_the_signature_is_checked_before_the_payload_is_parsed():
    forged = f"{b64url_encode(b'not json')}.{b64url_encode(KEY.sign(b'other').signature)}"
    assert open_token(KEY.verify_key, forged) is None


@settings(deadline=None)
@given(st.text(max_size=300))
def test_open_token_never_raises_for_arbitrary_text(token):
    assert open_token(KEY.verify_key, token) is None


@settings(deadline=None)
@given(
    st.one_of(st.binary(max_size=200), json_values.map(lambda value: json.dumps(value).encode()))
)
def test_open_token_of_any_signed_payload_is_an_object_or_none(payload):
    opened = open_token(KEY.verify_key, token_of(payload))
    assert opened is None or isinstance(opened, dict)


def test_a_random_key_does_not_open_a_token():
    other = signing_key(generate_seed())
    assert open_token(other.verify_key, sign_token(KEY, CLAIMS)) is None
