"""The check a VPS relay server makes of a device's session token, and build-token signing.

``docs/protocol/attestation.md``, "The session token": a session token is what the coordination
server gives a device that has proved it runs a genuine build. ``POST /attest/verify`` issues one
for 1 hour after a correct challenge response; web-fallback registration (``POST
/attest/register`` with ``platform:"web"``) issues one for 15 minutes, marked
``trust_level:"web_fallback"``. The token is ``base64url(payload JSON) + "." +
base64url(Ed25519 signature)``, signed with the seed in ``ZAJEL_ATTESTATION_SIGNING_KEY``.

A VPS server holds only the attestation public key, the ``public_key=`` line ``zajel keygen``
printed for that seed, and checks each token offline, without asking the coordination server:

    from zajel.attestation import SessionTokenError, verify_session_token
    from zajel.clock import epoch_ms
    try:
        claims = verify_session_token(token, public_key, now_ms=epoch_ms())
    except SessionTokenError as exc:
        return refuse(str(exc))  # one sentence; it never contains the token

``claims.trust_level`` is ``"attested"`` for a device that passed the binary challenge and
``"web_fallback"`` for a web client, which a server may trust less.

``sign_build_token`` is the release pipeline's half of registration: the ``build_token`` a
device sends to ``POST /attest/register``, signed with the seed whose public key the server has
as ``ZAJEL_BUILD_TOKEN_VERIFY_KEY`` (a different key from the attestation key).
``make_reference`` builds the pipeline's ``POST /attest/upload-reference`` body from the
release binary, ``region_hmacs`` is what a device computes to answer a challenge, and
``answer_challenge`` turns a challenge reply into the ``POST /attest/verify`` body with them.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from collections.abc import Sequence
from typing import Any, NoReturn, TypeGuard

import attrs
from nacl.signing import VerifyKey

from zajel.crypto import hmac_sha256_hex, open_token, parse_public_key, sign_b64, signing_key
from zajel.protocol.attestation import (
    BUILD_HASH_MAX_LENGTH,
    MAX_OFFSET,
    MAX_REGION_BYTES,
    MAX_REGIONS,
    UPLOAD_MAX_BYTES,
    is_identifier,
    is_version,
)

MAX_SKEW_MS = 60_000
# The trust level of a token without one: only native devices, which passed the binary
# challenge, get tokens without a trust_level (docs/protocol/attestation.md, "The session token").
ATTESTED = "attested"
WEB_FALLBACK = "web_fallback"
_STRING_FIELDS = ("device_id", "build_version", "platform")
_INTEGER_FIELDS = ("issued_at", "expires_at")
# A challenge draws 3-5 regions (docs/protocol/attestation.md): a reference should hold at
# least 3, and make_reference takes fewer only from a binary too small for 3. The server accepts
# any reference of at least one region; a challenge of one with fewer than 3 asks for them all.
MIN_REFERENCE_REGIONS = 3


class SessionTokenError(Exception):
    """The session token cannot be trusted; the message is one sentence, never the token."""


class InvalidToken(SessionTokenError):
    """The token is malformed, its signature does not verify, or its claims are not valid."""


class ExpiredToken(SessionTokenError):
    """The token's ``expires_at`` has been reached."""


class FutureToken(SessionTokenError):
    """The token's ``issued_at`` is further ahead of our clock than the skew allows."""


@attrs.frozen
class SessionClaims:
    """The claims of a verified session token.

    Attributes:
        device_id: the device the token was issued to.
        build_version: the app version the device registered with.
        platform: the platform of that build (``"android"``, ``"web"``, ...).
        issued_at: when the token was issued, epoch milliseconds.
        expires_at: when it stops being valid, epoch milliseconds (exclusive).
        trust_level: ``"attested"`` for a device that passed the binary challenge, else the
            token's own ``trust_level`` (``"web_fallback"``).
    """

    device_id: str
    build_version: str
    platform: str
    issued_at: int
    expires_at: int
    trust_level: str

    @classmethod
    def from_payload(cls, payload: object) -> SessionClaims:
        """The claims of a decoded token payload; unknown fields are ignored.

        Raises:
            InvalidToken: ``payload`` is not an object with string ``device_id``,
                ``build_version`` and ``platform``, integer ``issued_at`` and ``expires_at``
                with ``expires_at > issued_at``, and, when present, a string ``trust_level``.
        """
        if not isinstance(payload, dict):
            _invalid("session token payload is not a JSON object")
        for field in _STRING_FIELDS:
            if not isinstance(payload.get(field), str):
                _invalid(f"session token has no string {field}")
        for field in _INTEGER_FIELDS:
            value = payload.get(field)
            if not isinstance(value, int) or isinstance(value, bool):
                _invalid(f"session token has no integer {field}")
        if payload["expires_at"] <= payload["issued_at"]:
            _invalid("session token expires before it is issued")
        trust_level = payload.get("trust_level", ATTESTED)
        if not isinstance(trust_level, str):
            _invalid("session token trust_level is not a string")
        return cls(
            device_id=payload["device_id"],
            build_version=payload["build_version"],
            platform=payload["platform"],
            issued_at=payload["issued_at"],
            expires_at=payload["expires_at"],
            trust_level=trust_level,
        )


def verify_session_token(
    token: str,
    public_key: str | bytes | VerifyKey,
    *,
    now_ms: int,
    max_skew_ms: int = MAX_SKEW_MS,
) -> SessionClaims:
    """Check a session token and return its claims.

    Args:
        token: the token exactly as the device presented it.
        public_key: the attestation public key: standard base64, raw 32 bytes, or a
            ``VerifyKey``.
        now_ms: the caller's wall clock in epoch milliseconds.
        max_skew_ms: how far ahead of ``now_ms`` ``issued_at`` may be, inclusive.

    Raises:
        InvalidKey: ``public_key`` cannot be parsed (a caller error, not a token error).
        InvalidToken: the token is not a string of two base64url parts, its signature does not
            verify with the key, or its payload is not the documented claims.
        ExpiredToken: ``now_ms`` is at or past ``expires_at``.
        FutureToken: ``issued_at`` is more than ``max_skew_ms`` ahead of ``now_ms``.
    """
    key = public_key if isinstance(public_key, VerifyKey) else parse_public_key(public_key)
    payload = open_token(key, token)
    if payload is None:
        _invalid("session token is malformed or its signature does not verify with this key")
    claims = SessionClaims.from_payload(payload)
    if now_ms >= claims.expires_at:
        raise ExpiredToken(f"session token expired {now_ms - claims.expires_at} ms ago")
    ahead = claims.issued_at - now_ms
    if ahead > max_skew_ms:
        raise FutureToken(
            f"session token is issued {ahead} ms in the future (limit {max_skew_ms} ms)"
        )
    return claims


def sign_build_token(
    seed: bytes, *, version: str, platform: str, build_hash: str, timestamp_ms: int
) -> dict[str, str]:
    """The ``build_token`` of a release, as a device sends it to ``POST /attest/register``.

    docs/protocol/attestation.md, "POST /attest/register": ``payload`` is the compact JSON string
    ``{"version", "platform", "build_hash", "timestamp"}`` in that order; ``signature`` is the
    Ed25519 signature of the payload's UTF-8 bytes in standard base64 with padding.

    Args:
        seed: the 32-byte seed of the build-token signing key.
        version: the release version, ``X.Y.Z``.
        platform: the platform of the build.
        build_hash: the hash of the build, as the pipeline records it.
        timestamp_ms: when the build was signed, epoch milliseconds.

    Raises:
        InvalidKey: ``seed`` is not 32 bytes.
        TypeError: a field has the wrong type (a bool is not a timestamp).
    """
    key = signing_key(seed)
    for name, text in (("version", version), ("platform", platform), ("build_hash", build_hash)):
        if not isinstance(text, str):
            raise TypeError(f"build token {name} must be a string")
    if not isinstance(timestamp_ms, int) or isinstance(timestamp_ms, bool):
        raise TypeError("build token timestamp must be an integer")
    claims: dict[str, Any] = {
        "version": version,
        "platform": platform,
        "build_hash": build_hash,
        "timestamp": timestamp_ms,
    }
    payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=True)
    return {"payload": payload, "signature": sign_b64(key, payload.encode("utf-8"))}


def check_release(version: str, platform: str, build_hash: str | None = None) -> None:
    """Check the fields a release pipeline puts in a reference or a build token.

    They are the server's rules (docs/protocol/attestation.md, "Requests"), checked before anything
    is uploaded or signed: a token the server would refuse is better refused at build time.

    Raises:
        ValueError: ``version`` is not strict ``X.Y.Z``, ``platform`` is not 1-128 characters
            of ``A-Za-z0-9._-``, or ``build_hash`` (when given) is not 1-256 characters of
            text.
    """
    if not is_version(version):
        raise ValueError(f"version must be X.Y.Z (digits, no leading zeros), not {_shown(version)}")
    if not is_identifier(platform):
        raise ValueError(
            f"platform must be 1-128 characters of A-Za-z0-9._-, not {_shown(platform)}"
        )
    if build_hash is not None and not (
        isinstance(build_hash, str)
        and 1 <= len(build_hash) <= BUILD_HASH_MAX_LENGTH
        and _is_text(build_hash)
    ):
        raise ValueError(f"build hash must be 1-{BUILD_HASH_MAX_LENGTH} characters of text")


def make_reference(
    data: bytes,
    *,
    version: str,
    platform: str,
    build_hash: str | None = None,
    regions: int = 16,
    region_bytes: int = 256,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """The ``POST /attest/upload-reference`` body for the release binary ``data``.

    The file is cut into ``regions`` equal slices and one region of ``region_bytes`` bytes is
    taken at a random offset inside each slice, so the regions are spread over the whole file,
    never overlap, and every one is exactly ``region_bytes`` long. A file too small for
    ``regions`` of them gets as many as fit, down to one: every challenge of a reference of
    fewer than 3 regions asks for all of them. Each region has weight 1.

    Args:
        data: the exact bytes of the binary devices will run.
        version: the release version, strict ``X.Y.Z``.
        platform: the platform of the build (``android``, ``ios``, ...).
        build_hash: the hash the pipeline records; default the SHA-256 of ``data`` in hex.
        regions: how many regions to take, 3-256.
        region_bytes: the length of each region, 1-4096.
        rng: where offsets come from; default ``secrets.SystemRandom()``, so the regions
            cannot be predicted from the binary.

    Returns:
        ``{"version", "platform", "build_hash", "size", "critical_regions": [{"offset",
        "length", "data_hex", "weight"}]}`` with lowercase ``data_hex``, regions in file order.

    Raises:
        ValueError: a field breaks the server's rules (see ``check_release``), ``regions`` or
            ``region_bytes`` is out of range, ``data`` is shorter than one region, or the body
            would exceed the server's 65,536-byte upload limit.
    """
    check_release(version, platform, build_hash)
    if not MIN_REFERENCE_REGIONS <= regions <= MAX_REGIONS:
        raise ValueError(f"regions must be {MIN_REFERENCE_REGIONS}-{MAX_REGIONS}, not {regions}")
    if not 1 <= region_bytes <= MAX_REGION_BYTES:
        raise ValueError(f"region bytes must be 1-{MAX_REGION_BYTES}, not {region_bytes}")
    size = len(data)
    if size < region_bytes:
        raise ValueError(
            f"the binary is {size} bytes: smaller than one region of {region_bytes} bytes"
        )
    if size > MAX_OFFSET:
        raise ValueError(f"the binary is {size} bytes: larger than the server accepts")
    rng = rng if rng is not None else secrets.SystemRandom()
    count = min(regions, size // region_bytes)
    critical_regions = []
    for i in range(count):
        # Slice i is [i*size//count, (i+1)*size//count): at least size//count >= region_bytes
        # bytes, so the region fits inside it and slices never overlap.
        start, end = i * size // count, (i + 1) * size // count
        offset = rng.randint(start, end - region_bytes)
        critical_regions.append(
            {
                "offset": offset,
                "length": region_bytes,
                "data_hex": data[offset : offset + region_bytes].hex(),
                "weight": 1,
            }
        )
    body: dict[str, Any] = {
        "version": version,
        "platform": platform,
        "build_hash": build_hash if build_hash is not None else hashlib.sha256(data).hexdigest(),
        "size": size,
        "critical_regions": critical_regions,
    }
    length = len(json.dumps(body, separators=(",", ":")).encode("utf-8"))
    if length > UPLOAD_MAX_BYTES:
        raise ValueError(
            f"{count} regions of {region_bytes} bytes make a {length}-byte body, over the "
            f"server's {UPLOAD_MAX_BYTES}-byte upload limit; use fewer or smaller regions"
        )
    return body


def region_hmacs(data: bytes, nonce_hex: str, regions: Sequence[tuple[int, int]]) -> list[str]:
    """A device's answers to a challenge: one HMAC per challenged region, in challenge order.

    docs/protocol/attestation.md, "POST /attest/verify": HMAC-SHA256 with the nonce's bytes as the
    key and the region's bytes of the device's own binary as the message, in lowercase hex. Send
    answer ``i`` as ``{"region_index": i, "hmac": answers[i]}``.

    Args:
        data: the bytes of the binary the device runs.
        nonce_hex: the challenge's ``nonce`` (hex).
        regions: the ``(offset, length)`` of each region of the challenge, in the order of
            their ``index``.

    Raises:
        ValueError: ``nonce_hex`` is not an even number of hex digits, or a region does not
            lie inside ``data``.
    """
    if (
        not isinstance(nonce_hex, str)
        or not nonce_hex
        or len(nonce_hex) % 2
        or not nonce_hex.isascii()
        or not all(char in "0123456789abcdefABCDEF" for char in nonce_hex)
    ):
        raise ValueError("nonce must be an even number of hex digits")
    key = bytes.fromhex(nonce_hex)
    answers = []
    for offset, length in regions:
        if offset < 0 or length < 1 or offset + length > len(data):
            raise ValueError(
                f"region at offset {offset} of length {length} is not inside the "
                f"{len(data)}-byte binary"
            )
        answers.append(hmac_sha256_hex(key, data[offset : offset + length]))
    return answers


def answer_challenge(data: bytes, challenge: object, *, device_id: str) -> dict[str, Any]:
    """The ``POST /attest/verify`` body answering ``challenge`` with the binary ``data``.

    Args:
        data: the bytes of the binary the device runs.
        challenge: the decoded JSON reply of ``POST /attest/challenge``:
            ``{"nonce": <hex>, "regions": [{"index", "offset", "length"}, ...]}``.
        device_id: the device the challenge was issued to (the reply does not name it).

    Returns:
        ``{"device_id", "nonce", "responses": [{"region_index", "hmac"}, ...]}``, one response
        per region in the challenge's order, each HMAC from ``region_hmacs``.

    Raises:
        ValueError: ``device_id`` breaks the server's rule, ``challenge`` is not a challenge
            reply (an error reply says so, with its error), its nonce is not hex, or a region
            does not lie inside ``data``.
    """
    if not is_identifier(device_id):
        raise ValueError(
            f"device id must be 1-128 characters of A-Za-z0-9._-, not {_shown(device_id)}"
        )
    if not isinstance(challenge, dict):
        raise ValueError("the challenge is not a JSON object")
    if "nonce" not in challenge and isinstance(challenge.get("error"), str):
        raise ValueError(f"the challenge is an error reply: {_shown(challenge['error'], 200)}")
    nonce, items = challenge.get("nonce"), challenge.get("regions")
    if not isinstance(nonce, str) or not isinstance(items, list) or not items:
        raise ValueError(
            "the challenge has no nonce or no regions: expected the reply of POST /attest/challenge"
        )
    regions = [_challenge_region(item) for item in items]
    places = [(offset, length) for _, offset, length in regions]
    hmacs = region_hmacs(data, nonce, places)
    return {
        "device_id": device_id,
        "nonce": nonce,
        "responses": [
            {"region_index": index, "hmac": hmac}
            for (index, _, _), hmac in zip(regions, hmacs, strict=True)
        ],
    }


def _challenge_region(item: object) -> tuple[int, int, int]:
    """``(index, offset, length)`` of one region of a challenge reply."""
    if isinstance(item, dict):
        index, offset, length = item.get("index"), item.get("offset"), item.get("length")
        if _is_integer(index) and _is_integer(offset) and _is_integer(length):
            return index, offset, length
    raise ValueError("each challenge region must have an integer index, offset and length")


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object, limit: int = 40) -> str:
    """``value`` for an error message: quoted (control characters escaped), and cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_text(text: str) -> bool:
    # A lone surrogate is legal in a Python str but not in the UTF-8 a request carries.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(message: str) -> NoReturn:
    raise InvalidToken(message) from None
