"""Ed25519 keys and signatures, thin over pynacl.

Signing keys are given as a 32-byte seed in 64 hex characters, or ``@path`` to a file holding
them; public keys and signatures travel as standard base64 with padding
(``docs/operations.md``, "Settings in use"; ``docs/protocol/servers.md``, "The signing key"
and "The signed list").

Errors never echo secret material: a message says what is wrong with a seed, not what it was.
"""

from __future__ import annotations

import base64
import binascii

import nacl.exceptions
import nacl.utils
from nacl.signing import SigningKey, VerifyKey

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_SEED_EXPECTED = "expected 64 hex characters (a 32-byte Ed25519 seed)"
_PUBLIC_KEY_EXPECTED = "expected standard base64 of a 32-byte Ed25519 public key (44 characters)"
# A key file holds 64 characters and perhaps a newline; reading stops well before a mistaken
# path (a log, /dev/zero) could cost memory.
_KEY_FILE_LIMIT = 1024


class InvalidKey(ValueError):
    """A key or key setting is malformed; the message says what is wrong, never the secret."""


def parse_seed(text: str) -> bytes:
    """The 32-byte seed written as 64 hex characters (either case, surrounding space allowed).

    Raises:
        InvalidKey: ``text`` is not exactly 64 hex characters once stripped.
    """
    stripped = text.strip()
    if len(stripped) != 2 * SEED_BYTES or not _HEX_DIGITS.issuperset(stripped):
        raise InvalidKey(_SEED_EXPECTED)
    return bytes.fromhex(stripped)


def load_seed(value: str) -> bytes:
    """The seed from a key setting: 64 hex characters, or ``@path`` to a file holding them.

    Raises:
        InvalidKey: the file cannot be read (naming the path and the reason), or the text is
            not a seed.
    """
    value = value.strip()
    if not value.startswith("@"):
        return parse_seed(value)
    path = value[1:]
    if not path:
        raise InvalidKey("expected a key file path after '@'")
    try:
        with open(path, "rb") as file:
            raw = file.read(_KEY_FILE_LIMIT + 1)
    except OSError as exc:
        raise InvalidKey(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        if len(raw) > _KEY_FILE_LIMIT:
            raise InvalidKey(_SEED_EXPECTED)
        return parse_seed(raw.decode("ascii"))
    except (InvalidKey, UnicodeDecodeError):
        raise InvalidKey(f"key file {path}: {_SEED_EXPECTED}") from None


def generate_seed() -> bytes:
    """A new random 32-byte seed."""
    return nacl.utils.random(SEED_BYTES)


def signing_key(seed: bytes) -> SigningKey:
    """The signing key of a 32-byte seed.

    Raises:
        InvalidKey: ``seed`` is not 32 bytes.
    """
    if len(seed) != SEED_BYTES:
        raise InvalidKey(f"a seed is {SEED_BYTES} bytes; got {len(seed)}")
    return SigningKey(bytes(seed))


def public_key_b64(key: SigningKey | VerifyKey) -> str:
    """The 32 public-key bytes in standard base64 with padding (44 characters)."""
    verify_key = key.verify_key if isinstance(key, SigningKey) else key
    return base64.b64encode(bytes(verify_key)).decode("ascii")


def parse_public_key(text: str | bytes) -> VerifyKey:
    """A public key from its standard base64 form (surrounding space allowed) or its raw 32 bytes.

    Only the canonical encoding is accepted: padding is required and the base64 must be what
    ``public_key_b64`` would write.

    Raises:
        InvalidKey: anything else.
    """
    if isinstance(text, bytes | bytearray):
        if len(text) != PUBLIC_KEY_BYTES:
            raise InvalidKey(f"a public key is {PUBLIC_KEY_BYTES} bytes; got {len(text)}")
        return VerifyKey(bytes(text))
    if not isinstance(text, str):
        raise InvalidKey(_PUBLIC_KEY_EXPECTED)
    raw = _decode_b64(text.strip(), PUBLIC_KEY_BYTES)
    if raw is None:
        raise InvalidKey(_PUBLIC_KEY_EXPECTED)
    return VerifyKey(raw)


def sign_b64(key: SigningKey, data: bytes) -> str:
    """The detached signature of ``data`` (64 bytes) in standard base64 with padding (88 chars)."""
    return base64.b64encode(key.sign(data).signature).decode("ascii")


def verify_b64(key: VerifyKey, data: bytes, signature: object) -> bool:
    """Whether ``signature`` is the canonical standard base64 of a valid signature of ``data``.

    Never raises for a bad signature of any type or length: it is simply not valid.
    """
    if not isinstance(signature, str):
        return False
    raw = _decode_b64(signature, SIGNATURE_BYTES)
    if raw is None:
        return False
    try:
        key.verify(data, raw)
    except (nacl.exceptions.CryptoError, TypeError, ValueError):
        return False
    return True


def _decode_b64(text: str, size: int) -> bytes | None:
    """The ``size`` bytes that ``text`` canonically encodes in standard base64, else None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Re-encoding refuses missing padding and non-zero spare bits, so one key or signature has
    # exactly one accepted spelling.
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw
