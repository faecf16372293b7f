"""Helpers shared by the channel integration tests (docs/protocol/channels.md).

Every helper sends the raw frame and checks the exact reply, so a test reads as the wire: one
frame out, the frames that must come back. The frames the server sends are built here once
(``available``, ``chunk_data``, ...), so a test compares whole frames, never a field or two.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from tests.integration._signal import error, expect
from zajel.client import SignalClient, connect_signal, generate_public_key
from zajel.client.signal import random_pairing_code

# The errors of docs/protocol/channels.md, exactly as the server sends them.
NOT_REGISTERED = error("not_registered", "Not registered: send register first")
INVALID_CHANNEL = error("invalid_field", "Invalid channel ID")
PEER_ID_MISMATCH = error("peer_id_mismatch", "peerId mismatch with registered identity")
NOT_SUBSCRIBED = error("not_subscribed", "Not subscribed to this channel")
UPSTREAM_LIMITED = error("rate_limited", "Upstream rate limit exceeded. Please slow down.")
CHANNEL_OWNED = error("channel_owned", "Channel already has an active owner")
CHANNEL_HELD = error("channel_owned", "Channel is held for its owner's return")
NOT_OWNER_START = error("not_owner", "Only the channel owner can start a stream")
NOT_OWNER_END = error("not_owner", "Cannot end stream: not the owner or no active stream")
NOT_A_SOURCE = error("not_a_source", "Not a source for this chunk")


def too_large(size: int, limit: int) -> dict[str, Any]:
    return error(
        "chunk_too_large", f"Chunk payload too large: {size} bytes exceeds {limit} byte limit"
    )


def available(channel: str, chunk_ids: Sequence[str]) -> dict[str, Any]:
    return {"type": "chunk_available", "channelId": channel, "chunkIds": list(chunk_ids)}


def chunk_data(chunk_id: str, data: Any, source: str, channel: str | None) -> dict[str, Any]:
    """``chunk_data`` as the server sends it; ``channelId`` left out when ``channel`` is None."""
    frame = {"type": "chunk_data", "chunkId": chunk_id, "data": data, "source": source}
    if channel is not None:
        frame["channelId"] = channel
    return frame


def chunk_error(chunk_id: str, message: str) -> dict[str, Any]:
    return {"type": "chunk_error", "chunkId": chunk_id, "error": message}


def push_ack(chunk_id: str, served: int) -> dict[str, Any]:
    """The ``/signal`` push acknowledgement of an accepted (or already cached) chunk."""
    return {"type": "chunk_push_ack", "chunkId": chunk_id, "cached": True, "servedCount": served}


def upstream_frame(channel: str, message: dict[str, Any], key: str) -> dict[str, Any]:
    """``upstream-message``: what a subscriber sends and, unchanged, what the owner gets."""
    return {
        "type": "upstream-message",
        "channelId": channel,
        "message": message,
        "ephemeralPublicKey": key,
    }


def upstream_ack(channel: str, message_id: str | None) -> dict[str, Any]:
    return {"type": "upstream-ack", "channelId": channel, "messageId": message_id}


@asynccontextmanager
async def peer(
    url: str, *, key: str | None = None, code: str | None = None
) -> AsyncIterator[SignalClient]:
    """A ``/signal`` connection registered with ``code`` and ``key`` (fresh ones if not given)."""
    async with connect_signal(url) as client:
        await client.register(code or random_pairing_code(), key or generate_public_key())
        yield client


@asynccontextmanager
async def keyless_peer(url: str) -> AsyncIterator[SignalClient]:
    """A ``/signal`` connection registered without a public key (an older client)."""
    async with connect_signal(url) as client:
        await client.register(random_pairing_code())
        yield client


@asynccontextmanager
async def peers(url: str, count: int) -> AsyncIterator[list[SignalClient]]:
    """``count`` registered ``/signal`` connections, each with its own code and key."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(peer(url)) for _ in range(count)]


async def own(client: SignalClient, channel: str, *queued: dict[str, Any]) -> None:
    """``channel-owner-register``: the ``queued`` upstream messages, then the confirmation."""
    await client.send({"type": "channel-owner-register", "channelId": channel})
    for frame in queued:
        await expect(client, frame)
    await expect(client, {"type": "channel-owner-registered", "channelId": channel})


async def subscribe(client: SignalClient, channel: str, *then: dict[str, Any]) -> None:
    """``channel-subscribe``: the confirmation, then the frames ``then`` (a live stream's
    ``stream-start``, the cache's ``chunk_available``)."""
    await client.send({"type": "channel-subscribe", "channelId": channel})
    await expect(client, {"type": "channel-subscribed", "channelId": channel})
    for frame in then:
        await expect(client, frame)


async def announce(
    client: SignalClient, channel: str | None, chunk_ids: Sequence[str], **extra: Any
) -> None:
    """``chunk_announce`` of ``chunk_ids`` (each with a routing hash); every one registered."""
    frame: dict[str, Any] = {
        "type": "chunk_announce",
        "chunks": [{"chunkId": chunk_id, "routingHash": "route-1"} for chunk_id in chunk_ids],
        **extra,
    }
    if channel is not None:
        frame["channelId"] = channel
    await client.send(frame)
    await expect(client, {"type": "chunk_announce_ack", "registered": len(chunk_ids)})


async def push(
    client: SignalClient, channel: str, chunk_id: str, data: Any, *, served: int = 0
) -> None:
    """``chunk_push``, acknowledged as cached and serving ``served`` requesters."""
    await client.send(
        {"type": "chunk_push", "chunkId": chunk_id, "channelId": channel, "data": data}
    )
    await expect(client, push_ack(chunk_id, served))


async def request(client: SignalClient, channel: str, chunk_id: str) -> None:
    await client.send({"type": "chunk_request", "chunkId": chunk_id, "channelId": channel})


async def receive_text(client: SignalClient) -> str:
    """The next frame as the server encoded it (to compare what two clients got)."""
    assert not client.set_aside
    text = await client.ws.get_message()
    assert isinstance(text, str)
    return text
