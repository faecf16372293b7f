"""The one error family of the protocol layer (``docs/protocol/conventions.md``, "Errors")."""

from __future__ import annotations

from typing import Any

# Machine codes sent in ``{"type":"error","code":…}`` frames. Clients of the original server read
# only ``message``; the codes are ours and stable.
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
INVALID_FIELD = "invalid_field"
NOT_REGISTERED = "not_registered"
RATE_LIMITED = "rate_limited"
PAIRING_CODE_IN_USE = "pairing_code_in_use"
PEER_NOT_FOUND = "peer_not_found"
PEER_ID_MISMATCH = "peer_id_mismatch"
PEER_ID_IN_USE = "peer_id_in_use"
CHUNK_TOO_LARGE = "chunk_too_large"
NOT_A_SOURCE = "not_a_source"
INTERNAL_ERROR = "internal_error"
# HTTP bodies and the HTTP services (docs/protocol/conventions.md, "Over HTTP"); the web layer maps
# each code to a status in one table (``zajel.web.http``).
INVALID_BODY = "invalid_body"
BODY_TOO_LARGE = "body_too_large"
UNAUTHORIZED = "unauthorized"
NOT_CONFIGURED = "not_configured"
REGISTRY_FULL = "registry_full"
NOT_FOUND = "not_found"
STORE_UNAVAILABLE = "store_unavailable"
# docs/cluster.md, "What clients see": a message that needs another node while Redis is down.
UNAVAILABLE = "unavailable"
# docs/operations.md, "Limits and back-pressure": a service's inbox stayed full; nothing was done.
BUSY = "busy"
# The AttestationRegistry (docs/protocol/attestation.md, "Requests"): 403 refusals and 429 limits.
FORBIDDEN = "forbidden"
TOO_MANY = "too_many"


class ProtocolError(Exception):
    """A client broke the protocol; rendered as an error frame, never as a crash.

    Attributes:
        code: the stable machine code (one of the constants of this module).
        message: the human text; it never carries secrets, tokens or another peer's data.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def to_frame(self) -> dict[str, Any]:
        """The WebSocket error frame for this error."""
        return {"type": "error", "code": self.code, "message": self.message}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProtocolError):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


def invalid_message() -> ProtocolError:
    return ProtocolError(INVALID_MESSAGE, "Invalid message format")


def unknown_type(type_: str) -> ProtocolError:
    # The type is echoed, but cut short so an attacker cannot make us echo megabytes.
    shown = type_ if len(type_) <= 64 else type_[:64] + "…"
    return ProtocolError(UNKNOWN_TYPE, f"Unknown message type: {shown}")


def invalid_field(message: str) -> ProtocolError:
    return ProtocolError(INVALID_FIELD, message)


def not_registered() -> ProtocolError:
    return ProtocolError(NOT_REGISTERED, "Not registered: send register first")


def rate_limited(message: str = "Rate limit exceeded") -> ProtocolError:
    return ProtocolError(RATE_LIMITED, message)


def internal_error() -> ProtocolError:
    return ProtocolError(INTERNAL_ERROR, "Internal server error")


def peer_id_mismatch(
    message: str = "peerId does not match this connection's registration",
) -> ProtocolError:
    return ProtocolError(PEER_ID_MISMATCH, message)


def peer_id_in_use() -> ProtocolError:
    return ProtocolError(PEER_ID_IN_USE, "Peer ID already in use")


def chunk_too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        CHUNK_TOO_LARGE, f"Chunk payload too large: {size} bytes exceeds {limit} byte limit"
    )


def not_a_source() -> ProtocolError:
    return ProtocolError(NOT_A_SOURCE, "Not a source for this chunk")


def invalid_body(message: str = "Invalid JSON body") -> ProtocolError:
    return ProtocolError(INVALID_BODY, message)


def body_too_large() -> ProtocolError:
    return ProtocolError(BODY_TOO_LARGE, "Request body too large")


def unauthorized() -> ProtocolError:
    return ProtocolError(UNAUTHORIZED, "Unauthorized")


def cluster_unavailable() -> ProtocolError:
    return ProtocolError(UNAVAILABLE, "Cluster unavailable")


def busy() -> ProtocolError:
    return ProtocolError(BUSY, "Server busy, try again")


def store_unavailable() -> ProtocolError:
    return ProtocolError(STORE_UNAVAILABLE, "Storage unavailable, try again")
