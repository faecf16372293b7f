"""Field rules (docs/protocol/conventions.md, "Identifiers and field checks")."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import json_values, near_pairing_codes, pairing_codes, public_keys
from zajel.protocol import fields
from zajel.protocol.errors import ProtocolError

KEY = base64.b64encode(bytes(range(32))).decode()


def test_pairing_code_alphabet_excludes_look_alike_characters():
    alphabet = fields.PAIRING_CODE_ALPHABET
    assert len(alphabet) == len(set(alphabet)) == 32
    for excluded in "0O1I":
        assert excluded not in alphabet
    assert set(alphabet) == set("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")


@pytest.mark.parametrize("code", ["ABCDEF", "234567", "ZZZZZZ", "A2B3C4", "HJKMNP"])
def test_valid_pairing_codes(code):
    assert fields.is_pairing_code(code)
    assert fields.require_pairing_code({"c": code}, "c", "pairing code") == code


@pytest.mark.parametrize(
    "value",
    [
        "ABCDE",  # 5
        "ABCDEFG",  # 7
        "",
        "abcdef",
        "ABCDE0",
        "ABCDEO",
        "ABCDE1",
        "ABCDEI",
        "ABC DE",
        "ABCDEF\n",
        "\uff21BCDEF",  # full-width A
        "ABCDE٣",  # Arabic-Indic digit three
        123456,
        None,
        ["ABCDEF"],
        True,
    ],
)
def test_invalid_pairing_codes(value):
    assert not fields.is_pairing_code(value)
    with pytest.raises(ProtocolError) as caught:
        fields.require_pairing_code({"c": value}, "c", "pairing code")
    assert caught.value.code == "invalid_field"
    assert caught.value.message == "Invalid pairing code format"


def test_missing_pairing_code_names_the_field_by_its_label():
    with pytest.raises(ProtocolError) as caught:
        fields.require_pairing_code({}, "targetCode", "target code")
    assert caught.value.message == "Invalid target code format"


@settings(deadline=None, max_examples=200)
@given(pairing_codes)
def test_every_code_of_the_alphabet_is_valid(code):
    assert fields.is_pairing_code(code)


@settings(deadline=None, max_examples=200)
@given(near_pairing_codes | json_values)
def test_pairing_code_rule_is_exactly_six_alphabet_characters(value):
    expected = (
        isinstance(value, str)
        and len(value) == 6
        and all(char in fields.PAIRING_CODE_ALPHABET for char in value)
    )
    assert fields.is_pairing_code(value) is expected


@pytest.mark.parametrize(
    "key",
    [
        KEY,
        base64.b64encode(bytes(32)).decode(),
        base64.b64encode(b"\xff" * 32).decode(),  # uses + and /
    ],
)
def test_valid_public_keys(key):
    assert fields.is_x25519_public_key(key)
    assert fields.optional_public_key({"publicKey": key}, "publicKey") == key


@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        base64.b64encode(bytes(64)).decode(),
        KEY.rstrip("="),  # padding missing
        base64.urlsafe_b64encode(b"\xff" * 32).decode(),  # URL-safe alphabet
        KEY[:-2] + "!=",
        " " + KEY[1:],
        KEY[:-1] + "\n",
        bytes(32).hex(),  # 64 hex characters
        "",
        32,
        ["AAAA"],
        {"key": KEY},
        True,
    ],
)
def test_invalid_public_keys(value):
    assert not fields.is_x25519_public_key(value)
    with pytest.raises(ProtocolError) as caught:
        fields.optional_public_key({"publicKey": value}, "publicKey")
    assert caught.value.code == "invalid_field"
    assert "publicKey" in caught.value.message


def test_absent_or_null_public_key_is_none():
    assert fields.optional_public_key({}, "publicKey") is None
    assert fields.optional_public_key({"publicKey": None}, "publicKey") is None


@settings(deadline=None, max_examples=200)
@given(public_keys)
def test_every_32_byte_key_in_standard_base64_is_valid(key):
    assert fields.is_x25519_public_key(key)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=48).filter(lambda raw: len(raw) != 32))
def test_keys_of_other_lengths_are_refused(raw):
    assert not fields.is_x25519_public_key(base64.b64encode(raw).decode())


def test_optional_string():
    assert fields.optional_string({}, "name", max_length=3) is None
    assert fields.optional_string({"name": None}, "name", max_length=3) is None
    assert fields.optional_string({"name": "abc"}, "name", max_length=3) == "abc"
    assert fields.optional_string({"name": "日本語"}, "name", max_length=3) == "日本語"
    for bad in ("abcd", 1, ["a"], False):
        with pytest.raises(ProtocolError) as caught:
            fields.optional_string({"name": bad}, "name", max_length=3)
        assert caught.value.code == "invalid_field"
        assert caught.value.message.startswith("Invalid name")


def test_require_bool():
    assert fields.require_bool({"accepted": True}, "accepted") is True
    assert fields.require_bool({"accepted": False}, "accepted") is False
    for bad in (None, 1, 0, "true", [], {}):
        with pytest.raises(ProtocolError) as caught:
            fields.require_bool({"accepted": bad}, "accepted")
        assert caught.value.message == "Invalid accepted: expected true or false"
    with pytest.raises(ProtocolError):
        fields.require_bool({}, "accepted")


def test_require_object():
    assert fields.require_object({"payload": {}}, "payload") == {}
    assert fields.require_object({"payload": {"a": 1}}, "payload") == {"a": 1}
    for bad in (None, [], "{}", 1, True):
        with pytest.raises(ProtocolError) as caught:
            fields.require_object({"payload": bad}, "payload")
        assert caught.value.message == "Invalid payload: expected a JSON object"
