"""Ed25519 keys and signatures (docs/operations.md, "Keys and secrets"; docs/protocol/servers.md,
"The signed list")."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from zajel.crypto import (
    InvalidKey,
    generate_seed,
    load_seed,
    parse_public_key,
    parse_seed,
    public_key_b64,
    sign_b64,
    signing_key,
    verify_b64,
)

SEED = bytes(range(32))
SEED_HEX = SEED.hex()
KEY = signing_key(SEED)
DATA = b'{"servers":[],"timestamp":1700000000000}'
SIGNATURE = sign_b64(KEY, DATA)


# -- seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [SEED_HEX, SEED_HEX.upper(), f"  {SEED_HEX}\n", f"\t{SEED_HEX.upper()}\r\n"],
)
def test_parse_seed_accepts_hex_in_either_case_with_surrounding_space(text):
    assert parse_seed(text) == SEED


@pytest.mark.parametrize(
    "text",
    [
        "",
        SEED_HEX[:-2],  # 31 bytes
        SEED_HEX + "00",  # 33 bytes
        SEED_HEX[:-1],  # odd length
        SEED_HEX[:-1] + "g",
        SEED_HEX[:32] + " " + SEED_HEX[32:-1],  # inner space, still 64 characters
        "0x" + SEED_HEX[2:],
        "\u0661" * 64,  # Arabic-Indic digits are digits, not hex
        base64.b64encode(SEED).decode(),
    ],
)
def test_parse_seed_refuses_anything_else_without_echoing_it(text):
    with pytest.raises(InvalidKey, match="64 hex characters") as caught:
        parse_seed(text)
    if text.strip():
        assert text.strip() not in str(caught.value)


def test_invalid_key_is_a_value_error():
    assert issubclass(InvalidKey, ValueError)


def test_load_seed_takes_hex_inline():
    assert load_seed(SEED_HEX) == SEED
    assert load_seed(f" {SEED_HEX.upper()} ") == SEED


@pytest.mark.parametrize("content", [SEED_HEX, SEED_HEX + "\n", f"\n  {SEED_HEX.upper()}\r\n"])
def test_load_seed_reads_a_key_file(tmp_path, content):
    path = tmp_path / "bootstrap.key"
    path.write_text(content)
    assert load_seed(f"@{path}") == SEED


def test_load_seed_names_a_missing_file_and_the_reason(tmp_path):
    path = tmp_path / "missing.key"
    with pytest.raises(InvalidKey) as caught:
        load_seed(f"@{path}")
    assert str(caught.value) == f"cannot read key file {path}: No such file or directory"


def test_load_seed_names_a_directory(tmp_path):
    with pytest.raises(InvalidKey, match=rf"^cannot read key file {tmp_path}: "):
        load_seed(f"@{tmp_path}")


def test_load_seed_needs_a_path_after_the_at_sign():
    with pytest.raises(InvalidKey, match="path"):
        load_seed("@")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        SEED_HEX[:-2].encode(),
        (SEED_HEX + "zz").encode(),
        b"\xff" * 64,
        SEED_HEX.encode() + b" " * 2000,  # too long to be a key file
        f"seed={SEED_HEX}".encode(),
    ],
)
def test_load_seed_refuses_bad_file_content_and_names_the_file(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(InvalidKey) as caught:
        load_seed(f"@{path}")
    message = str(caught.value)
    assert message == f"key file {path}: expected 64 hex characters (a 32-byte Ed25519 seed)"
    assert SEED_HEX not in message


def test_generate_seed_is_32_random_bytes():
    seeds = {generate_seed() for _ in range(8)}
    assert len(seeds) == 8
    assert all(len(seed) == 32 for seed in seeds)


def test_signing_key_is_determined_by_the_seed():
    assert isinstance(KEY, SigningKey)
    assert bytes(signing_key(SEED).verify_key) == bytes(KEY.verify_key)
    assert bytes(signing_key(generate_seed()).verify_key) != bytes(KEY.verify_key)


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_signing_key_needs_32_bytes(seed):
    with pytest.raises(InvalidKey, match="32 bytes"):
        signing_key(seed)


# -- public keys ---------------------------------------------------------------------------


def test_public_key_is_standard_base64_of_32_bytes():
    text = public_key_b64(KEY)
    assert len(text) == 44
    assert text.endswith("=")
    assert base64.b64decode(text, validate=True) == bytes(KEY.verify_key)
    assert public_key_b64(KEY.verify_key) == text


def test_public_key_round_trips():
    text = public_key_b64(KEY)
    parsed = parse_public_key(text)
    assert isinstance(parsed, VerifyKey)
    assert bytes(parsed) == bytes(KEY.verify_key)
    assert public_key_b64(parse_public_key(f"  {text}\n")) == text
    assert bytes(parse_public_key(bytes(KEY.verify_key))) == bytes(KEY.verify_key)


def _non_canonical(text: str) -> str:
    # The last character before the padding has spare low bits; setting one keeps the bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = text.rstrip("=")
    index = alphabet.index(body[-1])
    return body[:-1] + alphabet[index ^ 1] + text[len(body) :]


@pytest.mark.parametrize(
    "text",
    [
        "",
        public_key_b64(KEY)[:-1],  # padding missing
        public_key_b64(KEY).rstrip("="),
        _non_canonical(public_key_b64(KEY)),
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # base64url is not the documented form
        "not base64 at all!",
        "é" * 44,
        SEED_HEX,
        bytes(31),
        bytes(33),
        b"",
    ],
)
def test_parse_public_key_refuses_anything_else(text):
    with pytest.raises(InvalidKey):
        parse_public_key(text)


@pytest.mark.parametrize("text", [public_key_b64(KEY), SIGNATURE])
def test_non_canonical_helper_changes_the_text_not_the_bytes(text):
    assert _non_canonical(text) != text
    assert len(_non_canonical(text)) == len(text)
    assert base64.b64decode(_non_canonical(text)) == base64.b64decode(text)


# -- signatures ----------------------------------------------------------------------------


def test_sign_and_verify():
    assert len(SIGNATURE) == 88
    assert len(base64.b64decode(SIGNATURE, validate=True)) == 64
    assert verify_b64(KEY.verify_key, DATA, SIGNATURE)
    assert verify_b64(parse_public_key(public_key_b64(KEY)), DATA, SIGNATURE)


def test_signatures_are_deterministic_and_detached():
    assert sign_b64(KEY, DATA) == SIGNATURE
    assert DATA not in base64.b64decode(SIGNATURE)


def test_verify_fails_for_other_data_or_another_key():
    assert not verify_b64(KEY.verify_key, DATA + b" ", SIGNATURE)
    assert not verify_b64(KEY.verify_key, b"", SIGNATURE)
    assert not verify_b64(signing_key(generate_seed()).verify_key, DATA, SIGNATURE)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        SIGNATURE[:-2],  # padding missing
        SIGNATURE[:-4],  # 61 bytes
        SIGNATURE + "AAAA",  # 67 bytes
        _non_canonical(SIGNATURE),  # same bytes, a second spelling
        " " + SIGNATURE,
        SIGNATURE + "\n",
        "-" * 86 + "==",  # base64url characters
        "A" * 86 + "==",  # 64 zero bytes
        "!" * 88,
        "é" * 88,
        "\x00" * 88,
        None,
        88,
        base64.b64decode(SIGNATURE),  # raw bytes are not the documented form
        [SIGNATURE],
        object(),
    ],
)
def test_verify_returns_false_for_garbage(signature):
    assert verify_b64(KEY.verify_key, DATA, signature) is False


def test_verify_returns_false_when_the_data_is_not_bytes():
    assert verify_b64(KEY.verify_key, DATA.decode(), SIGNATURE) is False  # type: ignore[arg-type]


@settings(deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), st.none(), st.integers()))
def test_verify_never_raises(signature):
    assert verify_b64(KEY.verify_key, DATA, signature) is False


@settings(deadline=None)
@given(st.binary(min_size=64, max_size=64))
def test_verify_rejects_random_signatures_of_the_right_length(raw):
    signature = base64.b64encode(raw).decode()
    assert verify_b64(KEY.verify_key, DATA, signature) is (signature == SIGNATURE)


@settings(deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=512))
def test_sign_verify_round_trip(seed, data):
    key = signing_key(seed)
    signature = sign_b64(key, data)
    assert verify_b64(parse_public_key(public_key_b64(key)), data, signature)
    assert not verify_b64(key.verify_key, data + b"\x00", signature)
