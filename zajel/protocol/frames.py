"""JSON text frames and HTTP bodies: decoding with hard edges, and compact encoding.

Every WebSocket message is one JSON object with a string ``type``, and every HTTP request body
is one JSON object (``docs/protocol/conventions.md``, "Frames").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection
from typing import Any, NoReturn, TypeVar

import attrs
import orjson

from zajel.protocol.errors import ProtocolError, invalid_body, invalid_message, unknown_type

# Frames go out as compact JSON with raw UTF-8, so a relayed character costs what it cost the
# sender (an escaped 4-byte character would cost 12): queues and replies are bounded in bytes
# (docs/operations.md, "Limits and back-pressure"). That is safe because decoding refuses lone
# surrogates, the one thing JSON text can hold that UTF-8 cannot. Sizes (chunk payloads) are
# measured the same way.
#
# WebSocket frames are decoded and encoded by orjson, several times faster than the stdlib on the
# server's hottest path (docs/benchmarks.md, "JSON"). Text orjson refuses is tried again with
# the stdlib decoder below, so the hard edges stay exactly these: orjson refuses NaN, Infinity,
# lone surrogate escapes and numbers that overflow a double, and the stdlib then takes only an
# integer too large for a double (kept exact). An integer beyond 64 bits that fits a double is
# read as a double, as the JavaScript of the apps reads it. A value orjson cannot encode (nesting
# past 254 levels) is encoded by the stdlib.
_WIRE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The signed server list stays ASCII (docs/protocol/servers.md, "The signed list"): its bytes are
# what the signature covers, and every verifier has read them that way since the first release.
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _reject_constant(name: str) -> NoReturn:
    # NaN, Infinity and -Infinity are not JSON; Python's decoder accepts them by default.
    raise ValueError(f"non-JSON constant {name}")


def _parse_float(text: str) -> float:
    # 1e400 is valid JSON text but overflows to inf, which cannot be encoded again.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def _decode_frame(text: str) -> Any:
    """``_decode`` for WebSocket frames: orjson first (see above)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _decode(text)


def _encode_bytes(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return _WIRE_ENCODER.encode(obj).encode("utf-8", "surrogatepass")


def _decode(text: str) -> Any:
    """JSON text to a value; ``ValueError`` also for a lone surrogate escape (``"\\ud800"``),
    which would make the value impossible to send on as UTF-8."""
    obj = _DECODER.decode(text)
    # Surrogates can only come from ``\\u`` escapes: text that arrived as UTF-8 holds none.
    if "\\u" in text:
        _WIRE_ENCODER.encode(obj).encode("utf-8")  # UnicodeEncodeError is a ValueError
    return obj


def decode_object(data: str | bytes) -> dict[str, Any]:
    """Decode one frame into a JSON object that has a string ``type``.

    Raises:
        ProtocolError: ``invalid_message`` for a binary frame, text that is not JSON (including
            nesting too deep to decode, numbers too long to convert or too large for a
            float, and lone surrogate escapes), a JSON value that is not an object, or an
            object without a string ``type``.
    """
    if not isinstance(data, str):
        raise invalid_message()
    try:
        obj = _decode_frame(data)
    except (ValueError, RecursionError) as exc:
        raise invalid_message() from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise invalid_message()
    return obj


def decode_body(data: bytes) -> dict[str, Any]:
    """Decode an HTTP request body that must be one JSON object.

    Raises:
        ProtocolError: ``invalid_body`` for an empty body, bytes that are not UTF-8 JSON (the
            same hard edges as ``decode_object``), or a JSON value that is not an object.
    """
    if not data.strip():
        raise invalid_body("Request body is empty: expected a JSON object")
    try:
        obj = _decode(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise invalid_body() from exc
    if not isinstance(obj, dict):
        raise invalid_body("Request body must be a JSON object")
    return obj


def encode(obj: Any) -> str:
    """Encode a frame as compact JSON text, safe to send as a WebSocket text frame."""
    return _encode_bytes(obj).decode("utf-8", "surrogatepass")


def encode_ascii(obj: Any) -> str:
    """Encode as compact JSON with every non-ASCII character as a ``\\uXXXX`` escape."""
    return _ASCII_ENCODER.encode(obj)


def utf8_json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON with raw UTF-8 (how payload limits are measured)."""
    return len(_encode_bytes(value))


def error_frame(error: ProtocolError) -> str:
    """The encoded ``{"type":"error",…}`` frame for ``error``."""
    return encode(error.to_frame())


@attrs.frozen
class Invalid:
    """A frame that failed a check, carried to its service as a value.

    The service answers with ``error``, after its registration check when
    ``needs_registration`` is set: docs/protocol/conventions.md, "The order of checks", fixes the
    order (frame, then registration, then fields), and only the service knows whether a connection
    is registered.
    """

    error: ProtocolError = attrs.field(eq=False)
    needs_registration: bool = False


M = TypeVar("M")


def decode_message(
    data: str | bytes,
    *,
    known_types: Collection[str],
    open_types: Collection[str],
    decode_fields: Callable[[str, dict[str, Any]], M],
) -> M | Invalid:
    """Decode one frame of an endpoint. Never raises: failures come back as ``Invalid``.

    The frame itself is checked first (``invalid_message``, ``unknown_type``); a field error
    raised by ``decode_fields`` is carried with ``needs_registration`` set unless the type is
    one of ``open_types``, so the service answers ``not_registered`` before it.
    """
    try:
        obj = decode_object(data)
    except ProtocolError as exc:
        return Invalid(exc)
    type_ = obj["type"]
    if type_ not in known_types:
        return Invalid(unknown_type(type_))
    try:
        return decode_fields(type_, obj)
    except ProtocolError as exc:
        return Invalid(exc, needs_registration=type_ not in open_types)
