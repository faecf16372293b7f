"""Session tokens, detached signatures, HMAC and base64url: thin over pynacl and the stdlib.

``docs/protocol/attestation.md``:

- a session token is ``base64url(payload JSON) + "." + base64url(Ed25519 signature of exactly
  those JSON bytes)``, both parts unpadded;
- a build token's signature is 64 bytes in standard base64 or in base64url;
- a challenge response is HMAC-SHA256 in lowercase hex, compared in constant time.

Every decoder here takes untrusted text of any type and answers None (or False) for anything it
does not accept; none of them raises. Each accepts one spelling per value (canonical base64, no
spare bits), so a token or signature cannot be rewritten into a second accepted form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, NoReturn

import nacl.exceptions
from nacl.signing import SigningKey, VerifyKey

from zajel.crypto.keys import SIGNATURE_BYTES

_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_STANDARD_TO_URL = str.maketrans("+/", "-_")
# Standard base64 of 64 bytes is 88 characters ending in "=="; without the padding, 86.
_SIGNATURE_UNPADDED = 86


def hmac_sha256_hex(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 of ``message`` under ``key``, in lowercase hex (64 characters).

    Raises:
        TypeError: ``key`` or ``message`` is not bytes-like.
    """
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def hex_equal(expected: str, given: object) -> bool:
    """Whether ``given`` is exactly ``expected``, compared in constant time.

    The comparison is exact: an uppercase spelling of a lowercase digest is not equal. Never
    raises: a value that is not a string, not ASCII, or of another length is simply not equal.
    """
    if not isinstance(expected, str) or not isinstance(given, str):
        return False
    if not expected.isascii() or not given.isascii() or len(given) != len(expected):
        return False
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))


def b64url_encode(data: bytes) -> str:
    """``data`` in base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    """The bytes that ``text`` encodes in unpadded base64url, else None.

    Only the canonical spelling is accepted: no padding, no ``+`` or ``/``, no whitespace, and
    no non-zero spare bits (``b64url_encode`` of the result gives ``text`` back). Never raises.
    """
    if not isinstance(text, str) or not _B64URL_ALPHABET.issuperset(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):  # a length of 4n + 1 characters
        return None
    if b64url_encode(raw) != text:
        return None
    return raw


def decode_signature(text: object) -> bytes | None:
    """The 64-byte Ed25519 signature that ``text`` encodes, else None.

    Accepted spellings (docs/protocol/attestation.md, "POST /attest/register"): standard base64 with
    padding, or base64url with or without padding; canonical only, one alphabet per text.
    Never raises.
    """
    if not isinstance(text, str):
        return None
    padded = len(text) == _SIGNATURE_UNPADDED + 2 and text.endswith("==")
    body = text[:_SIGNATURE_UNPADDED] if padded else text
    if len(body) != _SIGNATURE_UNPADDED:
        return None
    if "+" in body or "/" in body:
        # Standard base64 is only accepted padded, and never mixed with the url alphabet.
        if not padded or "-" in body or "_" in body:
            return None
        body = body.translate(_STANDARD_TO_URL)
    raw = b64url_decode(body)
    if raw is None or len(raw) != SIGNATURE_BYTES:
        return None
    return raw


def verify_detached(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``key``.

    Never raises: arguments of the wrong type or length simply do not verify.
    """
    try:
        # Checked here, not left to pynacl: given None, pynacl reads ``message`` as signature +
        # message, and a whole signed message would verify without any signature.
        if len(signature) != SIGNATURE_BYTES:
            return False
        key.verify(message, signature)
    # AttributeError: ``key`` is not a VerifyKey (a SigningKey, say); TypeError: an argument of
    # the wrong type; pynacl's CryptoError covers the rest.
    except (nacl.exceptions.CryptoError, TypeError, ValueError, AttributeError):
        return False
    return True


def sign_token(key: SigningKey, claims: Mapping[str, Any]) -> str:
    """A session token carrying ``claims``, signed with ``key``.

    The format is that of docs/protocol/attestation.md, "The session token": the payload is
    compact ASCII JSON with the keys in the order given.

    Raises:
        TypeError: a claim value cannot be written as JSON.
        ValueError: a claim value is NaN or infinite (``open_token`` would refuse it).
    """
    payload = json.dumps(
        dict(claims), separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
    signature = key.sign(payload).signature
    return f"{b64url_encode(payload)}.{b64url_encode(signature)}"


def open_token(key: VerifyKey, token: object) -> dict[str, Any] | None:
    """The claims of a session token whose signature verifies with ``key``, else None.

    The signature is checked over the decoded payload bytes before any JSON is parsed; the
    payload must then be a JSON object (UTF-8, no NaN or Infinity). Never raises.
    """
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) != 2:
        return None
    payload = b64url_decode(parts[0])
    signature = b64url_decode(parts[1])
    if payload is None or signature is None or not verify_detached(key, payload, signature):
        return None
    try:
        claims = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return None
    if not isinstance(claims, dict):
        return None
    return claims


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")
