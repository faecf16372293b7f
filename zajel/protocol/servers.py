"""The ServerRegistry's HTTP bodies and entries (``docs/protocol/servers.md``, "Requests").

VPS relay servers register (``POST /servers``), heartbeat (``POST /servers/heartbeat``) and
unregister (``DELETE /servers/{serverId}``); clients read the signed list (``GET /servers``).
This module turns request bodies into typed requests, raising ``ProtocolError`` with the
original server's messages, and turns entries back into JSON in the documented field order.
It does no I/O: the size limits are checked by the web layer before a body is read.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import attrs

from zajel.protocol import errors
from zajel.protocol.endpoints import check_endpoint
from zajel.protocol.errors import ProtocolError
from zajel.protocol.fields import is_unicode
from zajel.protocol.frames import decode_body

REGISTER_MAX_BYTES: Final = 4096
HEARTBEAT_MAX_BYTES: Final = 1024
MAX_SERVERS: Final = 1000
SERVER_TTL_MS: Final = 5 * 60 * 1000
PUBLIC_KEY_MAX: Final = 1024
# Counters are "finite numbers, floored, at least 0"; the ceiling is ours: the largest integer
# a JavaScript client reads exactly (and SQLite stores as an integer).
COUNTER_MAX: Final = 2**53 - 1

# docs/protocol/servers.md, "Fields": 1-128 characters of A-Za-z0-9._- plus :+/= for server ids.
_SERVER_ID_RE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
_REGION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
UNKNOWN_REGION: Final = "unknown"


def is_server_id(value: object) -> bool:
    """True when ``value`` is a valid server id."""
    return isinstance(value, str) and _SERVER_ID_RE.fullmatch(value) is not None


@attrs.frozen
class Counters:
    """A server's self-reported load, shown to clients choosing a server."""

    connections: int = 0
    relay_connections: int = 0
    signaling_connections: int = 0
    active_codes: int = 0

    def updated(self, update: CounterUpdate) -> Counters:
        """These counters with every counter that ``update`` carries replaced."""
        changes = {name: value for name, value in attrs.asdict(update).items() if value is not None}
        return attrs.evolve(self, **changes)


@attrs.frozen
class CounterUpdate:
    """The counters a heartbeat carries; ``None`` keeps the entry's value."""

    connections: int | None = None
    relay_connections: int | None = None
    signaling_connections: int | None = None
    active_codes: int | None = None


# Wire name -> attribute name, in the entry's field order.
_COUNTER_FIELDS: Final = (
    ("connections", "connections"),
    ("relayConnections", "relay_connections"),
    ("signalingConnections", "signaling_connections"),
    ("activeCodes", "active_codes"),
)


@attrs.frozen
class ServerEntry:
    """One registered VPS server. Times are epoch milliseconds."""

    server_id: str
    endpoint: str
    public_key: str
    region: str
    counters: Counters
    registered_at: int
    last_seen: int

    def to_json(self) -> dict[str, Any]:
        """The entry as the wire shows it, fields in the documented order (docs/protocol/servers.md,
        "Requests")."""
        entry: dict[str, Any] = {
            "serverId": self.server_id,
            "endpoint": self.endpoint,
            "publicKey": self.public_key,
            "region": self.region,
        }
        for wire, attribute in _COUNTER_FIELDS:
            entry[wire] = getattr(self.counters, attribute)
        entry["registeredAt"] = self.registered_at
        entry["lastSeen"] = self.last_seen
        return entry


@attrs.frozen
class RegisterServer:
    """``POST /servers``: add or replace an entry."""

    server_id: str
    endpoint: str
    public_key: str
    region: str
    counters: Counters


@attrs.frozen
class ServerHeartbeat:
    """``POST /servers/heartbeat``: the server is alive; ``counters`` update its load."""

    server_id: str
    counters: CounterUpdate


@attrs.frozen
class UnregisterServer:
    """``DELETE /servers/{serverId}``: remove the entry, if there is one."""

    server_id: str


@attrs.frozen
class ListServers:
    """``GET /servers``: every live entry."""


def decode_register(body: bytes, *, allow_private: bool) -> RegisterServer:
    """Decode a ``POST /servers`` body.

    ``allow_private`` (development) accepts any endpoint host and ``http``/``ws``.

    Raises:
        ProtocolError: ``invalid_body`` for a body that is not a JSON object; ``invalid_field``
            with the original server's message for a missing or malformed field.
    """
    obj = decode_body(body)
    server_id, endpoint, public_key = obj.get("serverId"), obj.get("endpoint"), obj.get("publicKey")
    if any(value is None or value == "" for value in (server_id, endpoint, public_key)):
        raise errors.invalid_field("Missing required fields: serverId, endpoint, publicKey")
    if not is_server_id(server_id):
        raise errors.invalid_field("Invalid serverId format")
    assert isinstance(server_id, str)
    if not isinstance(endpoint, str):
        raise errors.invalid_field("Invalid endpoint: must be a valid URL")
    problem = check_endpoint(endpoint, allow_private=allow_private)
    if problem is not None:
        raise errors.invalid_field(problem)
    if not isinstance(public_key, str):
        raise errors.invalid_field("Invalid publicKey: must be a string")
    if len(public_key) > PUBLIC_KEY_MAX:
        raise errors.invalid_field("Invalid publicKey: too long")
    if not is_unicode(public_key):
        raise errors.invalid_field("Invalid publicKey: must be a string")
    region = obj.get("region")
    if not isinstance(region, str) or _REGION_RE.fullmatch(region) is None:
        region = UNKNOWN_REGION
    values = {attribute: counter(obj.get(wire)) for wire, attribute in _COUNTER_FIELDS}
    return RegisterServer(server_id, endpoint, public_key, region, Counters(**values))


def decode_heartbeat(body: bytes) -> ServerHeartbeat:
    """Decode a ``POST /servers/heartbeat`` body.

    Raises:
        ProtocolError: ``invalid_body`` for a body that is not a JSON object; ``invalid_field``
            for a missing or malformed ``serverId``.
    """
    obj = decode_body(body)
    server_id = obj.get("serverId")
    if server_id is None or server_id == "":
        raise errors.invalid_field("Missing serverId")
    if not is_server_id(server_id):
        raise errors.invalid_field("Invalid serverId format")
    assert isinstance(server_id, str)
    values = {
        attribute: None if obj.get(wire) is None else counter(obj[wire])
        for wire, attribute in _COUNTER_FIELDS
    }
    return ServerHeartbeat(server_id, CounterUpdate(**values))


def decode_server_id_path(raw: bytes) -> str:
    """The server id of ``DELETE /servers/{serverId}``, from the still percent-encoded path
    segment after ``/servers/``.

    The id may hold ``/`` and ``+`` and ``=``, so clients percent-encode it. Decoding is strict:
    a ``%`` not followed by two hex digits, bytes that are not UTF-8, a raw ``/`` (a deeper
    path) or an id that breaks its rule are all refused.

    Raises:
        ProtocolError: ``invalid_field`` ``Invalid server ID``.
    """
    try:
        text = raw.decode("ascii")
        decoded = _percent_decode(text).decode("utf-8")
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise _invalid_server_id() from None
    if "/" in text or not is_server_id(decoded):
        raise _invalid_server_id()
    return decoded


def counter(value: object) -> int:
    """A counter: a finite number, floored, at least 0; else 0 (docs/protocol/servers.md,
    "Fields")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return min(max(math.floor(value), 0), COUNTER_MAX)


def registry_full() -> ProtocolError:
    return ProtocolError(errors.REGISTRY_FULL, "Server registry full")


def not_registered() -> ProtocolError:
    return ProtocolError(errors.NOT_FOUND, "Server not registered")


def _invalid_server_id() -> ProtocolError:
    return errors.invalid_field("Invalid server ID")


_HEX = frozenset("0123456789abcdefABCDEF")


def _percent_decode(text: str) -> bytes:
    """``%XX`` escapes to bytes; raises ``ValueError`` for a malformed escape."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise ValueError("malformed percent-escape")
            out.append(int(pair, 16))
            i += 3
        else:
            out += char.encode("ascii")
            i += 1
    return bytes(out)
