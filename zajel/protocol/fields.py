"""Field rules shared by every endpoint.

The rules are those of ``docs/protocol/conventions.md``, "Identifiers and field checks", and of
each endpoint's guide.

Each ``require_*``/``optional_*`` helper reads one field of a decoded JSON object and raises
``ProtocolError(invalid_field)`` naming the field when it breaks its rule. A field given as
``null`` counts as absent.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, TypeGuard

from zajel.protocol.errors import invalid_field

PAIRING_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PAIRING_CODE_LENGTH = 6
_PAIRING_CODE_RE = re.compile(f"[{PAIRING_CODE_ALPHABET}]{{{PAIRING_CODE_LENGTH}}}")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def is_unicode(text: str) -> bool:
    """False for text that cannot be encoded as UTF-8: JSON may escape a lone surrogate
    (``"\\ud800"``), which is valid JSON but not text that can be stored or sent on."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


PEER_ID_MAX_LENGTH = 128
_PEER_ID_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{PEER_ID_MAX_LENGTH}}}")


def is_peer_id(value: object) -> bool:
    """True when ``value`` is 1 to 128 characters of ``A-Za-z0-9_-``."""
    return isinstance(value, str) and _PEER_ID_RE.fullmatch(value) is not None


def require_peer_id(obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if not is_peer_id(value):
        raise invalid_field(f"Invalid {field} format")
    assert isinstance(value, str)
    return value


def optional_peer_id(obj: dict[str, Any], field: str) -> str | None:
    if obj.get(field) is None:
        return None
    return require_peer_id(obj, field)


def _is_int(value: object) -> TypeGuard[int]:
    # JSON has no integer type of its own: 1.0 and 1e2 are floats here and rejected, and
    # Python's bool is an int subclass that must not pass for one.
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(obj: dict[str, Any], field: str, *, minimum: int, maximum: int) -> int:
    """The integer in ``obj[field]``, within ``minimum``..``maximum`` inclusive."""
    value = obj.get(field)
    if not _is_int(value) or not minimum <= value <= maximum:
        raise invalid_field(f"Invalid {field}: expected an integer from {minimum} to {maximum}")
    return value


def optional_int(
    obj: dict[str, Any], field: str, *, minimum: int, maximum: int, default: int
) -> int:
    """Like ``require_int``, but ``default`` when the field is absent or null."""
    if obj.get(field) is None:
        return default
    return require_int(obj, field, minimum=minimum, maximum=maximum)


def optional_bounded_string(
    obj: dict[str, Any], field: str, *, min_length: int, max_length: int
) -> str | None:
    """A string of ``min_length``..``max_length`` characters, or None when absent or null."""
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not min_length <= len(value) <= max_length:
        raise invalid_field(
            f"Invalid {field}: expected a string of {min_length} to {max_length} characters"
        )
    return value


def optional_string_list(
    obj: dict[str, Any], field: str, *, max_length: int, max_items: int
) -> list[str]:
    """A JSON array of at most ``max_items`` strings of 1..``max_length`` characters.

    Absent or null is the empty list. Duplicates are kept (and counted against ``max_items``).
    """
    value = obj.get(field)
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > max_items
        or not all(isinstance(item, str) and 1 <= len(item) <= max_length for item in value)
    ):
        raise invalid_field(
            f"Invalid {field}: expected a list of at most {max_items} strings"
            f" of 1 to {max_length} characters"
        )
    return value


def optional_string_map(
    obj: dict[str, Any], field: str, *, key_max_length: int, value_max_length: int, max_items: int
) -> dict[str, str]:
    """A JSON object of at most ``max_items`` entries, each key a string of
    1..``key_max_length`` characters and each value a string of at most ``value_max_length``.

    Absent or null is the empty mapping.
    """
    value = obj.get(field)
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > max_items
        or not all(
            1 <= len(key) <= key_max_length
            and isinstance(item, str)
            and len(item) <= value_max_length
            for key, item in value.items()
        )
    ):
        raise invalid_field(
            f"Invalid {field}: expected an object of at most {max_items} entries, each key"
            f" a string of 1 to {key_max_length} characters and each value a string of at"
            f" most {value_max_length} characters"
        )
    return dict(value)
