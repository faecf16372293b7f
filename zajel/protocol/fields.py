"""Field rules shared by every endpoint (``../shared/spec/conventions.md``, Identifiers).

Each ``require_*``/``optional_*`` helper reads one field of a decoded JSON object and raises
``ProtocolError(invalid_field)`` naming the field when it breaks its rule. A field given as
``null`` counts as absent.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from zajel.protocol.errors import invalid_field

PAIRING_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PAIRING_CODE_LENGTH = 6
_PAIRING_CODE_RE = re.compile(f"[{PAIRING_CODE_ALPHABET}]{{{PAIRING_CODE_LENGTH}}}")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def is_pairing_code(value: object) -> bool:
    """True when ``value`` is exactly 6 characters of the pairing-code alphabet."""
    return isinstance(value, str) and _PAIRING_CODE_RE.fullmatch(value) is not None


def is_x25519_public_key(value: object) -> bool:
    """True when ``value`` is standard base64 (with padding) of exactly 32 bytes."""
    if not isinstance(value, str) or len(value) != 44 or not _BASE64_RE.fullmatch(value):
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def require_pairing_code(obj: dict[str, Any], field: str, label: str) -> str:
    """The pairing code in ``obj[field]``; ``label`` names it in the error text."""
    value = obj.get(field)
    if not is_pairing_code(value):
        raise invalid_field(f"Invalid {label} format")
    assert isinstance(value, str)
    return value


def optional_public_key(obj: dict[str, Any], field: str) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not is_x25519_public_key(value):
        raise invalid_field(f"Invalid {field}: expected base64 of a 32-byte X25519 key")
    assert isinstance(value, str)
    return value


def optional_string(obj: dict[str, Any], field: str, *, max_length: int) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise invalid_field(
            f"Invalid {field}: expected a string of at most {max_length} characters"
        )
    return value


def require_bool(obj: dict[str, Any], field: str) -> bool:
    value = obj.get(field)
    if not isinstance(value, bool):
        raise invalid_field(f"Invalid {field}: expected true or false")
    return value


def require_object(obj: dict[str, Any], field: str) -> dict[str, Any]:
    value = obj.get(field)
    if not isinstance(value, dict):
        raise invalid_field(f"Invalid {field}: expected a JSON object")
    return value
