"""The client-side check of the signed server list (``GET /servers``).

``docs/protocol/servers.md``, "The signed list": the body is compact JSON
``{"servers":[<entry>,...],"timestamp":<epoch ms>}`` and the header ``X-Bootstrap-Signature``
holds the Ed25519 signature of the exact body bytes in standard base64. An app that bootstraps
from the list holds the server's public key (``zajel keygen`` prints it) and:

1. verifies the signature over the raw body bytes, before parsing anything, so no byte an
   attacker chose reaches the JSON decoder;
2. rejects a ``timestamp`` more than 5 minutes old or more than 60 s in the future, so a
   recorded list cannot be replayed once the servers in it have gone;
3. only then uses the entries.

``verify_server_list`` does all three and returns the entries; ``zajel servers`` is the same
check as a command.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from nacl.signing import VerifyKey

from zajel.crypto import parse_public_key, verify_b64

SIGNATURE_HEADER = "X-Bootstrap-Signature"
MAX_AGE_MS = 300_000
MAX_SKEW_MS = 60_000
_REQUIRED_FIELDS = ("serverId", "endpoint", "publicKey")


class BootstrapError(Exception):
    """The server list cannot be trusted; the message is one sentence saying why."""


class BadSignature(BootstrapError):
    """The signature is missing, malformed, or does not match the body and the key."""


class StaleList(BootstrapError):
    """The list's timestamp is older than the age limit (a possible replay)."""


class FutureList(BootstrapError):
    """The list's timestamp is further ahead of our clock than the skew allows."""


class MalformedList(BootstrapError):
    """The list is correctly signed but is not the documented JSON shape."""


def verify_server_list(
    body: bytes,
    signature: object,
    public_key: str | bytes | VerifyKey,
    *,
    now_ms: int,
    max_age_ms: int = MAX_AGE_MS,
    max_skew_ms: int = MAX_SKEW_MS,
) -> list[dict[str, Any]]:
    """Check a ``GET /servers`` answer and return its server entries.

    Args:
        body: the raw response body, exactly as received.
        signature: the ``X-Bootstrap-Signature`` header (None when it was absent).
        public_key: the server's public key: standard base64, raw 32 bytes, or a ``VerifyKey``.
        now_ms: the caller's wall clock in epoch milliseconds.
        max_age_ms: the oldest timestamp accepted, inclusive.
        max_skew_ms: how far ahead of ``now_ms`` a timestamp may be, inclusive.

    Returns:
        The entries as dicts; every one has string ``serverId``, ``endpoint`` and
        ``publicKey``, and unknown fields are kept.

    Raises:
        InvalidKey: ``public_key`` cannot be parsed (a caller error, not a list error).
        BadSignature: the signature is missing, not base64 of 64 bytes, or does not verify.
        MalformedList: the signed body is not the documented JSON shape.
        StaleList: the list is more than ``max_age_ms`` old.
        FutureList: the list is more than ``max_skew_ms`` in the future.
    """
    key = public_key if isinstance(public_key, VerifyKey) else parse_public_key(public_key)
    body = bytes(body)
    if signature is None:
        raise BadSignature(f"list has no {SIGNATURE_HEADER} header")
    if not verify_b64(key, body, signature):
        raise BadSignature("list signature does not verify with this public key")

    document = _decode(body)
    if not isinstance(document, dict):
        _malformed("list is not a JSON object")
    timestamp = document.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        _malformed("list timestamp is not an integer")
    servers = document.get("servers")
    if not isinstance(servers, list):
        _malformed("list servers field is not a list")

    age = now_ms - timestamp
    if age > max_age_ms:
        raise StaleList(f"list is {age} ms old (limit {max_age_ms} ms)")
    if -age > max_skew_ms:
        raise FutureList(f"list is {-age} ms in the future (limit {max_skew_ms} ms)")

    entries: list[dict[str, Any]] = []
    for index, entry in enumerate(servers):
        if not isinstance(entry, dict):
            _malformed(f"server entry {index} is not a JSON object")
        for field in _REQUIRED_FIELDS:
            if not isinstance(entry.get(field), str):
                _malformed(f"server entry {index} has no string {field}")
        entries.append(entry)
    return entries


def _decode(body: bytes) -> Any:
    """The JSON value of ``body`` (UTF-8, no NaN or Infinity)."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        _malformed("list is not valid JSON")


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _malformed(message: str) -> NoReturn:
    raise MalformedList(message) from None
