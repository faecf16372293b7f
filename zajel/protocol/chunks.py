"""The chunk messages both WebSocket dialects share (docs/protocol/chunks.md for ``/relay``,
docs/protocol/channels.md for ``/signal``).

One chunk index serves both endpoints, so a ``chunk_announce``, ``chunk_request`` or
``chunk_push`` decodes to the same value on either; each endpoint's ``decode`` applies its own
field rules (``zajel.protocol.relay``, ``zajel.protocol.channels``).
"""

from __future__ import annotations

from typing import Final, TypeGuard

import attrs

# Chunk ids, routing hashes and channel ids
# (docs/protocol/chunks.md, "Identifiers and field rules").
CHUNK_ID_MAX: Final = 256


def is_chunk_id(value: object) -> TypeGuard[str]:
    """True for a string of 1 to 256 characters (a chunk id, routing hash or channel id)."""
    return isinstance(value, str) and 1 <= len(value) <= CHUNK_ID_MAX


@attrs.frozen
class ChunkAnnounce:
    """``chunk_announce``: the valid ``(chunkId, routingHash)`` entries; invalid ones are
    skipped and not counted (docs/protocol/chunks.md, "chunk_announce"). On ``/signal`` a
    missing ``routingHash`` is ``""``."""

    peer_id: str | None
    chunks: tuple[tuple[str, str], ...]
    channel_id: str | None
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class ChunkRequest:
    """``chunk_request``; ``channel_id`` is always set on ``/signal``."""

    peer_id: str | None
    chunk_id: str
    channel_id: str | None
    needs_registration: bool = attrs.field(default=True, init=False)


@attrs.frozen
class ChunkPush:
    """``chunk_push``: ``data_json`` is ``data`` as compact JSON with raw UTF-8, in bytes,
    already checked against the size limit.

    The decoded value is not kept: a small text of nested lists decodes to objects many times
    its size, so the cache and the ``chunk_data`` frames use these bytes as they are
    (docs/protocol/chunks.md, "Cache"). ``channel_id`` is always set on ``/signal`` and never
    on ``/relay``.
    """

    peer_id: str | None
    chunk_id: str
    data_json: bytes = attrs.field(repr=False)
    channel_id: str | None = None
    needs_registration: bool = attrs.field(default=True, init=False)


ChunkMessage = ChunkAnnounce | ChunkRequest | ChunkPush
# The same, for isinstance: on either endpoint these go to the ChunkIndex service.
CHUNK_MESSAGES: Final = (ChunkRequest, ChunkPush, ChunkAnnounce)  # the most frequent first
