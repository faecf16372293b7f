"""The AttestationRegistry's HTTP bodies, records and version policy
(``docs/protocol/attestation.md``).

A release pipeline uploads the critical regions of a genuine build
(``POST /attest/upload-reference``) and sets the version policy (``POST /attest/versions``); a
device registers with a signed build token (``POST /attest/register``), asks for a challenge
(``POST /attest/challenge``) and answers it (``POST /attest/verify``).

This module turns request bodies into typed requests, raising ``ProtocolError`` with the
original server's messages, parses the build token's payload once its signature has been
checked elsewhere, and holds the values the service keeps (``Device``, ``Reference``,
``Challenge``, ``Policy``) with their wire and record forms. ``check_policy`` decides whether a
version may register, be challenged or be verified. It does no I/O and reads no clock: the size
limits are checked by the web layer before a body is read, and callers pass the date.

Rules marked *ours* or *hardened* are not in the original server; each says why.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

import attrs

from zajel.protocol import errors
from zajel.protocol.errors import ProtocolError
from zajel.protocol.fields import is_unicode
from zajel.protocol.frames import decode_body

# Body limits per route (docs/protocol/attestation.md, "Requests").
REGISTER_MAX_BYTES: Final = 8192
UPLOAD_MAX_BYTES: Final = 65536
CHALLENGE_MAX_BYTES: Final = 2048
VERIFY_MAX_BYTES: Final = 16384
VERSIONS_MAX_BYTES: Final = 4096

# Ours (the original server had no cap): 256 regions per reference is far more than a challenge
# draws from (3-5), and a 64 KiB body holds at most ~32 KiB of region data anyway. Any reference
# of at least one region is accepted, as the original accepted it: a challenge of a reference
# with fewer than 3 asks for all of them.
MAX_REGIONS: Final = 256
MAX_REGION_BYTES: Final = 4096
# Ours: a challenge has at most 5 regions; 16 leaves room for a client sending extra answers (the
# service answers "Wrong number of responses") without letting a body carry thousands.
MAX_RESPONSES: Final = 16
# Ours: the policy body is 4 KiB; these caps keep a policy small whatever the body limit.
MAX_BLOCKED_VERSIONS: Final = 100
MAX_SUNSET_DATES: Final = 100

WEB_PLATFORM: Final = "web"

# Ours: bounds of the build token and its fields. An Ed25519 signature is 64 bytes, 88
# characters of base64; a payload of four short fields fits many times in 4096 characters.
PAYLOAD_MAX_LENGTH: Final = 4096
SIGNATURE_MAX_LENGTH: Final = 200
BUILD_HASH_MAX_LENGTH: Final = 256
# An HMAC-SHA256 is 64 hex characters; twice that still fails as "HMAC mismatch", longer is
# refused before the service compares it.
HMAC_MAX_LENGTH: Final = 128
MAX_WEIGHT: Final = 1_000_000
# Ours: offsets and sizes stay integers a JavaScript client reads exactly (and SQLite stores).
MAX_OFFSET: Final = 2**53 - 1

DEFAULT_VERSION: Final = "1.0.0"

# PolicyVerdict.status: the first two are the register reply's ``version_status``; the others
# name why a version is refused (the reply shows only the reason).
STATUS_CURRENT: Final = "current"
STATUS_UPDATE_RECOMMENDED: Final = "update_recommended"
STATUS_BLOCKED: Final = "blocked"
STATUS_BELOW_MINIMUM: Final = "below_minimum"
STATUS_SUNSET: Final = "sunset"

# docs/protocol/conventions.md, "Identifiers and field checks": device id, version and platform are
# 1-128 characters of A-Za-z0-9._-. Versions are further held to strict X.Y.Z
# (docs/protocol/attestation.md, "Requests").
_IDENTIFIER_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# [0-9], not \d: \d also matches other scripts' digits (Arabic-Indic, full-width). At most 9 digits
# per part (ours) keeps every part below 2**31 for clients that read them as 32-bit integers.
_VERSION_PART = r"(0|[1-9][0-9]{0,8})"
_VERSION_RE = re.compile(rf"{_VERSION_PART}\.{_VERSION_PART}\.{_VERSION_PART}")
# date.fromisoformat also takes "20240101" and "2024-W01-1"; the wire form is YYYY-MM-DD only.
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HEX_RE = re.compile(r"[0-9a-fA-F]*")


def parse_version(text: object) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of a strict ``X.Y.Z`` version, else None.

    Each part is ASCII decimal digits, without sign, without a leading zero (except ``0``
    itself), and at most 9 digits. Versions compare numerically as these tuples.
    """
    if not isinstance(text, str):
        return None
    match = _VERSION_RE.fullmatch(text)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def is_version(text: object) -> bool:
    """True when ``text`` is a strict ``X.Y.Z`` version."""
    return parse_version(text) is not None


def is_identifier(value: object) -> bool:
    """True when ``value`` is a device id or platform: 1-128 characters of ``A-Za-z0-9._-``."""
    return isinstance(value, str) and _IDENTIFIER_RE.fullmatch(value) is not None


def is_sunset_date(value: object) -> bool:
    """True when ``value`` is a real calendar date written ``YYYY-MM-DD``."""
    if not isinstance(value, str) or _DATE_RE.fullmatch(value) is None:
        return False
    try:
        datetime.date.fromisoformat(value)
    except ValueError:  # 2024-02-30, 0000-01-01
        return False
    return True


def utc_date(epoch_ms: int) -> datetime.date:
    """The UTC calendar date of an epoch-milliseconds time: the ``today`` of ``check_policy``.

    A sunset date applies from 00:00 UTC of that day.
    """
    return datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC).date()


# -- values ------------------------------------------------------------------------------------


@attrs.frozen
class Region:
    """One critical region of a reference binary: ``length`` bytes at ``offset``.

    ``data_hex`` is lowercase hex of exactly ``length`` bytes; ``weight`` is the region's
    relative chance of being drawn for a challenge.
    """

    offset: int
    length: int
    data_hex: str
    weight: float

    @property
    def data(self) -> bytes:
        """The region's bytes: the HMAC message of a challenge answer."""
        return bytes.fromhex(self.data_hex)

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "length": self.length,
            "data_hex": self.data_hex,
            "weight": self.weight,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Region:
        """Read back what ``to_json`` wrote."""
        return cls(obj["offset"], obj["length"], obj["data_hex"], float(obj["weight"]))


@attrs.frozen
class Reference:
    """The critical regions of the genuine build of one version on one platform."""

    version: str
    platform: str
    build_hash: str
    size: int
    regions: tuple[Region, ...]
    uploaded_at: int

    def to_json(self) -> dict[str, Any]:
        """The reference as the upload reply shows it (and as the store keeps it)."""
        return {
            "version": self.version,
            "platform": self.platform,
            "build_hash": self.build_hash,
            "size": self.size,
            "critical_regions": [region.to_json() for region in self.regions],
            "uploaded_at": self.uploaded_at,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Reference:
        """Read back what ``to_json`` wrote."""
        return cls(
            obj["version"],
            obj["platform"],
            obj["build_hash"],
            obj["size"],
            tuple(Region.from_json(region) for region in obj["critical_regions"]),
            obj["uploaded_at"],
        )


@attrs.frozen
class Device:
    """A registered device. Times are epoch milliseconds.

    ``challenge_times`` (the last challenges, for anomaly detection) and ``web_registrations``
    (for the hourly web limit) are bookkeeping: kept in the record, never shown on the wire.
    There is no ``from_json``: the wire form lacks them, so the store reads ``from_record``.
    """

    device_id: str
    build_version: str
    platform: str
    build_hash: str
    registered_at: int
    last_seen: int
    anomaly_flags: tuple[str, ...] = ()
    challenge_times: tuple[int, ...] = ()
    web_registrations: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The device as the register reply shows it."""
        return {
            "device_id": self.device_id,
            "build_version": self.build_version,
            "platform": self.platform,
            "build_hash": self.build_hash,
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "anomaly_flags": list(self.anomaly_flags),
        }

    def to_record(self) -> dict[str, Any]:
        """The full form the store keeps: the wire form plus the bookkeeping lists."""
        return {
            **self.to_json(),
            "challenge_times": list(self.challenge_times),
            "web_registrations": list(self.web_registrations),
        }

    @classmethod
    def from_record(cls, obj: Mapping[str, Any]) -> Device:
        """Read back what ``to_record`` wrote."""
        return cls(
            obj["device_id"],
            obj["build_version"],
            obj["platform"],
            obj["build_hash"],
            obj["registered_at"],
            obj["last_seen"],
            tuple(obj["anomaly_flags"]),
            tuple(obj["challenge_times"]),
            tuple(obj["web_registrations"]),
        )


@attrs.frozen
class Challenge:
    """An open challenge, keyed by its nonce (64 lowercase hex characters).

    ``regions`` holds the ``(offset, length)`` of each challenged region in challenge order: a
    response's ``region_index`` is a position in it.
    """

    nonce: str
    device_id: str
    build_version: str
    platform: str
    regions: tuple[tuple[int, int], ...]
    created_at: int

    def to_record(self) -> dict[str, Any]:
        return {
            "nonce": self.nonce,
            "device_id": self.device_id,
            "build_version": self.build_version,
            "platform": self.platform,
            "regions": [{"offset": offset, "length": length} for offset, length in self.regions],
            "created_at": self.created_at,
        }

    @classmethod
    def from_record(cls, obj: Mapping[str, Any]) -> Challenge:
        """Read back what ``to_record`` wrote."""
        return cls(
            obj["nonce"],
            obj["device_id"],
            obj["build_version"],
            obj["platform"],
            tuple((region["offset"], region["length"]) for region in obj["regions"]),
            obj["created_at"],
        )


@attrs.frozen
class Policy:
    """The version policy. Every version is strict ``X.Y.Z``; ``sunset_dates`` pairs a
    version with a ``YYYY-MM-DD`` date, in the order they were given."""

    minimum_version: str = DEFAULT_VERSION
    recommended_version: str = DEFAULT_VERSION
    blocked_versions: tuple[str, ...] = ()
    sunset_dates: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The policy as ``GET /attest/versions`` shows it (and as the store keeps it)."""
        return {
            "minimum_version": self.minimum_version,
            "recommended_version": self.recommended_version,
            "blocked_versions": list(self.blocked_versions),
            "sunset_dates": dict(self.sunset_dates),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Policy:
        """Read back what ``to_json`` wrote."""
        return cls(
            obj["minimum_version"],
            obj["recommended_version"],
            tuple(obj["blocked_versions"]),
            tuple(obj["sunset_dates"].items()),
        )


@attrs.frozen
class PolicyVerdict:
    """Whether a version may be used. ``reason`` is the 403 text when it may not."""

    allowed: bool
    status: str
    reason: str | None


def check_policy(policy: Policy, version: str, *, today: datetime.date) -> PolicyVerdict:
    """Judge ``version`` against ``policy`` on the UTC date ``today`` (see ``utc_date``).

    The first rule that applies answers: blocked list, below minimum, sunset date reached,
    below recommended (allowed, ``update_recommended``), else allowed and ``current``. A version
    that does not parse is treated as below minimum (callers validate versions first).
    """
    if version in policy.blocked_versions:
        return PolicyVerdict(False, STATUS_BLOCKED, f"Version {version} has been blocked")
    parsed = parse_version(version)
    minimum = parse_version(policy.minimum_version)
    if parsed is None or (minimum is not None and parsed < minimum):
        return PolicyVerdict(
            False,
            STATUS_BELOW_MINIMUM,
            f"Version {version} is below minimum required version {policy.minimum_version}",
        )
    # Ours: the original stored sunset dates but never enforced them (docs/protocol/attestation.md,
    # "GET and POST /attest/versions"). Versions are canonical (no leading zeros), so comparing the
    # text is comparing the version.
    for sunset_version, date in policy.sunset_dates:
        if sunset_version == version and datetime.date.fromisoformat(date) <= today:
            return PolicyVerdict(
                False, STATUS_SUNSET, f"Version {version} reached its sunset date {date}"
            )
    recommended = parse_version(policy.recommended_version)
    if recommended is not None and parsed < recommended:
        return PolicyVerdict(True, STATUS_UPDATE_RECOMMENDED, None)
    return PolicyVerdict(True, STATUS_CURRENT, None)


# -- requests ----------------------------------------------------------------------------------


@attrs.frozen
class RegisterDevice:
    """``POST /attest/register``: the build token, its signature still unchecked.

    ``ip`` is not in the body: the web layer sets the client's per-IP key (IPv6 by its /64),
    which the registry counts new device ids by.
    """

    device_id: str
    payload: str
    signature: str
    ip: str = ""


@attrs.frozen
class BuildClaims:
    """What a build token's payload claims; ``timestamp`` is epoch milliseconds."""

    version: str
    platform: str
    build_hash: str
    timestamp: int


@attrs.frozen
class UploadReference:
    """``POST /attest/upload-reference``: add or replace the reference of a version/platform.

    ``size`` 0 means the binary's size was not given.
    """

    version: str
    platform: str
    build_hash: str
    size: int
    regions: tuple[Region, ...]


@attrs.frozen
class RequestChallenge:
    """``POST /attest/challenge``."""

    device_id: str
    build_version: str


@attrs.frozen
class VerifyChallenge:
    """``POST /attest/verify``: ``(region_index, hmac)`` per response, in the order sent.

    Only types are checked here; the nonce's format, the indexes' range and uniqueness and the
    HMACs' hex are verification outcomes the service decides.
    """

    device_id: str
    nonce: str
    responses: tuple[tuple[int, str], ...]


def decode_register(body: bytes) -> RegisterDevice:
    """Decode a ``POST /attest/register`` body.

    Raises:
        ProtocolError: ``invalid_body`` for a body that is not a JSON object; ``invalid_field``
            with the original server's message for a missing or malformed field.
    """
    obj = decode_body(body)
    token, device_id = obj.get("build_token"), obj.get("device_id")
    if token is None or _is_missing(device_id):
        raise errors.invalid_field("Missing required fields: build_token, device_id")
    if not is_identifier(device_id):
        raise errors.invalid_field("Invalid device_id format")
    assert isinstance(device_id, str)
    bad_token = errors.invalid_field(
        "Invalid build_token format: must include payload and signature"
    )
    if not isinstance(token, dict):
        raise bad_token
    payload, signature = token.get("payload"), token.get("signature")
    # Hardened: the signature is checked over the payload's UTF-8 bytes, so a payload with a
    # lone surrogate (legal as a JSON escape, not encodable) is refused here, not mid-check. A
    # signature is base64: a non-ASCII one can never verify.
    if (
        not isinstance(payload, str)
        or not 1 <= len(payload) <= PAYLOAD_MAX_LENGTH
        or not is_unicode(payload)
    ):
        raise bad_token
    if (
        not isinstance(signature, str)
        or not 1 <= len(signature) <= SIGNATURE_MAX_LENGTH
        or not signature.isascii()
    ):
        raise bad_token
    return RegisterDevice(device_id, payload, signature)


def parse_build_token_payload(payload: str) -> BuildClaims:
    """Parse a build token's payload, once its signature has been verified.

    Raises:
        ProtocolError: ``invalid_field`` ``Invalid build token payload`` for text that is not
            a JSON object (decoded as strictly as a request body) or a field that breaks its
            rule; ``Build token missing required fields: …`` for a missing field.
    """
    invalid = errors.invalid_field("Invalid build token payload")
    try:
        # surrogatepass: a lone surrogate becomes bytes that are not UTF-8, which the decoder
        # refuses like any other text that is not JSON.
        claims = decode_body(payload.encode("utf-8", "surrogatepass"))
    except ProtocolError:
        raise invalid from None
    version, platform = claims.get("version"), claims.get("platform")
    build_hash, timestamp = claims.get("build_hash"), claims.get("timestamp")
    if any(_is_missing(value) for value in (version, platform, build_hash, timestamp)):
        raise errors.invalid_field(
            "Build token missing required fields: version, platform, build_hash, timestamp"
        )
    if (
        not is_version(version)
        or not is_identifier(platform)
        or not _is_build_hash(build_hash)
        or not _is_int(timestamp)
    ):
        raise invalid
    assert isinstance(version, str)
    assert isinstance(platform, str)
    assert isinstance(build_hash, str)
    return BuildClaims(version, platform, build_hash, timestamp)


def decode_upload_reference(body: bytes) -> UploadReference:
    """Decode a ``POST /attest/upload-reference`` body.

    Raises:
        ProtocolError: ``invalid_body`` for a body that is not a JSON object; ``invalid_field``
            with the original server's message for a missing or malformed field (the checks on
            each region's bounds, hex and weight are ours, so a stored reference can always be
            challenged).
    """
    obj = decode_body(body)
    version, platform, build_hash = obj.get("version"), obj.get("platform"), obj.get("build_hash")
    if any(_is_missing(value) for value in (version, platform, build_hash)):
        raise errors.invalid_field("Missing required fields: version, platform, build_hash")
    if not is_version(version) or not is_identifier(platform):
        raise errors.invalid_field("Invalid version or platform format")
    assert isinstance(version, str)
    assert isinstance(platform, str)
    if not _is_build_hash(build_hash):
        raise errors.invalid_field("Invalid build_hash")
    assert isinstance(build_hash, str)
    size = obj.get("size")
    if size is None:
        size = 0
    elif not _is_int(size) or not 0 <= size <= MAX_OFFSET:
        raise errors.invalid_field("Invalid size: must be a non-negative integer")
    items = obj.get("critical_regions")
    if not isinstance(items, list) or not items:
        raise errors.invalid_field(
            "critical_regions must be a non-empty array of { offset, length, data_hex } objects"
        )
    if len(items) > MAX_REGIONS:
        raise errors.invalid_field(f"Too many critical_regions (at most {MAX_REGIONS})")
    regions = tuple(_decode_region(item, size) for item in items)
    # Ours: a challenge draws distinct regions, so one place listed twice could be asked twice
    # and answered with one known region.
    if len({(region.offset, region.length) for region in regions}) != len(regions):
        raise errors.invalid_field("Each critical_region must be a distinct offset and length")
    return UploadReference(version, platform, build_hash, size, regions)


def _decode_region(item: object, size: int) -> Region:
    if not isinstance(item, dict):
        raise errors.invalid_field("Each critical_region must have numeric offset and length")
    offset, length = item.get("offset"), item.get("length")
    if (
        not _is_int(offset)
        or not 0 <= offset <= MAX_OFFSET
        or not _is_int(length)
        or not 1 <= length <= MAX_REGION_BYTES
    ):
        raise errors.invalid_field("Each critical_region must have numeric offset and length")
    data_hex = item.get("data_hex")
    # A regex, not bytes.fromhex alone: fromhex skips whitespace between pairs.
    if (
        not isinstance(data_hex, str)
        or len(data_hex) != 2 * length
        or _HEX_RE.fullmatch(data_hex) is None
    ):
        raise errors.invalid_field(
            "Each critical_region must have data_hex of exactly length bytes"
        )
    weight = item.get("weight")
    if weight is None:
        weight = 1.0
    elif (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        # isfinite only on floats: it raises OverflowError on an int too large for a float.
        or (isinstance(weight, float) and not math.isfinite(weight))
        or not 0 < weight <= MAX_WEIGHT
    ):
        raise errors.invalid_field("Each critical_region weight must be a positive number")
    if size > 0 and offset + length > size:
        raise errors.invalid_field("Each critical_region must lie within size")
    return Region(offset, length, data_hex.lower(), float(weight))


def decode_challenge(body: bytes) -> RequestChallenge:
    """Decode a ``POST /attest/challenge`` body.

    Raises:
        ProtocolError: ``invalid_body`` for a body that is not a JSON object; ``invalid_field``
            for a missing or malformed field.
    """
    obj = decode_body(body)
    device_id, build_version = obj.get("device_id"), obj.get("build_version")
    if _is_missing(device_id) or _is_missing(build_version):
        raise errors.invalid_field("Missing required fields: device_id, build_version")
    if not is_identifier(device_id):
        raise errors.invalid_field("Invalid device_id format")
    assert isinstance(device_id, str)
    # Hardened (docs/protocol/attestation.md, "POST /attest/challenge"): the original trusted any
    # build_version; the service then compares it with the registration and the policy.
    if not is_version(build_version):
        raise errors.invalid_field("Invalid build_version format")
    assert isinstance(build_version, str)
    return RequestChallenge(device_id, build_version)


def decode_verify(body: bytes) -> VerifyChallenge:
    """Decode a ``POST /attest/verify`` body.

    Raises:
        ProtocolError: ``invalid_body`` for a body that is not a JSON object; ``invalid_field``
            for a missing field, a response that is not an object, a ``region_index`` that is
            not an integer or an ``hmac`` that is not a string: these are 400, not
            ``{"valid":false}`` (docs/protocol/attestation.md, "POST /attest/verify").
    """
    obj = decode_body(body)
    device_id, nonce, items = obj.get("device_id"), obj.get("nonce"), obj.get("responses")
    missing = errors.invalid_field("Missing required fields: device_id, nonce, responses (array)")
    if _is_missing(device_id) or _is_missing(nonce) or not isinstance(items, list):
        raise missing
    if not is_identifier(device_id):
        raise errors.invalid_field("Invalid device_id format")
    assert isinstance(device_id, str)
    # A nonce with a lone surrogate is "not a string" here, as in the ServerRegistry: it could
    # never match a stored nonce, and it cannot be bound as SQLite text.
    if not isinstance(nonce, str) or not is_unicode(nonce):
        raise missing
    # Ours: a bound on the answers one body may carry.
    if len(items) > MAX_RESPONSES:
        raise errors.invalid_field("Too many responses")
    responses = tuple(_decode_response(item) for item in items)
    return VerifyChallenge(device_id, nonce, responses)


def _decode_response(item: object) -> tuple[int, str]:
    if not isinstance(item, dict):
        raise errors.invalid_field("Invalid response: expected an object")
    region_index, hmac = item.get("region_index"), item.get("hmac")
    if not _is_int(region_index):
        raise errors.invalid_field("Invalid region_index: must be an integer")
    # Ours: the length bound; a lone surrogate counts as not a string (see decode_verify).
    if not isinstance(hmac, str) or len(hmac) > HMAC_MAX_LENGTH or not is_unicode(hmac):
        raise errors.invalid_field("Invalid hmac: must be a string")
    return region_index, hmac


def decode_policy(body: bytes) -> Policy:
    """Decode a ``POST /attest/versions`` body: the whole new policy.

    Every field is optional (absent or null takes the default) and checked on its own.
    Duplicates in ``blocked_versions`` are dropped, first occurrence kept. A recommended version
    below the minimum is accepted: ``check_policy`` tests the minimum first, so it is harmless,
    and ``{"minimum_version": "1.1.0"}`` alone (whose recommended version is the default 1.0.0)
    must work.

    Raises:
        ProtocolError: ``invalid_body`` for a body that is not a JSON object; ``invalid_field``
            for a field that breaks its rule.
    """
    obj = decode_body(body)
    # docs/protocol/attestation.md, "GET and POST /attest/versions": POST replaces the whole policy
    # and validates every field; the caps and the date form are ours, so that check_policy never
    # meets a bad policy.
    minimum = _optional_version(obj, "minimum_version")
    recommended = _optional_version(obj, "recommended_version")
    blocked = obj.get("blocked_versions")
    if blocked is None:
        blocked = []
    elif (
        not isinstance(blocked, list)
        or len(blocked) > MAX_BLOCKED_VERSIONS
        or not all(is_version(version) for version in blocked)
    ):
        raise errors.invalid_field("Invalid blocked_versions: expected a list of X.Y.Z versions")
    sunset = obj.get("sunset_dates")
    if sunset is None:
        sunset = {}
    elif (
        not isinstance(sunset, dict)
        or len(sunset) > MAX_SUNSET_DATES
        or not all(is_version(version) and is_sunset_date(date) for version, date in sunset.items())
    ):
        raise errors.invalid_field('Invalid sunset_dates: expected {"X.Y.Z": "YYYY-MM-DD"}')
    return Policy(minimum, recommended, tuple(dict.fromkeys(blocked)), tuple(sunset.items()))


def _optional_version(obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if value is None:
        return DEFAULT_VERSION
    if not is_version(value):
        raise errors.invalid_field(f"Invalid {field}: expected X.Y.Z")
    assert isinstance(value, str)
    return value


def _is_missing(value: object) -> bool:
    # docs/protocol/attestation.md, "Requests": a missing field is absent, null or "" (as the
    # original had it).
    return value is None or value == ""


def _is_int(value: object) -> TypeGuard[int]:
    # JSON has no integer type of its own: 1.0 and 1e2 are floats here and rejected, and
    # Python's bool is an int subclass that must not pass for one.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_build_hash(value: object) -> bool:
    # Hardened: a lone surrogate would be stored and echoed back in replies as broken text.
    return isinstance(value, str) and 1 <= len(value) <= BUILD_HASH_MAX_LENGTH and is_unicode(value)
