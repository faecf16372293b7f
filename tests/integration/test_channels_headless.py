"""The Python headless Zajel client's own channel messages over real sockets
(docs/protocol/channels.md): what it sends, exactly as it sends it, and every reply checked
against what that client reads from it.

The client is played here by ``Headless``: its frames are built as the client builds them (a
``register`` with ``pairingCode`` and ``publicKey``; ``peerId`` = its pairing code on the chunk
messages; channel ids of 32 hex characters; 32-hex routing hashes; chunk ids
``ch_<16 hex>_<index>``; pushes whose ``data`` is the snake_case chunk object, proactive after
each announce, and its answer to a ``chunk_pull``), and its reading rules are those of the
client (a ``chunk_data`` without ``channelId`` or ``data`` is dropped; a chunk of a lower
sequence than one already held is discarded as a replay; a message is put together once all
its chunks have come).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from nacl.signing import SigningKey, VerifyKey

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._channels import (
    available,
    chunk_data,
    push_ack,
    upstream_ack,
    upstream_frame,
)
from tests.integration._http import wait_stats
from tests.integration._signal import assert_quiet, expect
from zajel.client import SignalClient, connect_signal, generate_public_key
from zajel.client.signal import random_pairing_code

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

CHUNK_SIZE = 64 * 1024  # the client's ciphertext bytes per chunk
CHUNK_KEYS = {
    "chunk_id",
    "routing_hash",
    "sequence",
    "chunk_index",
    "total_chunks",
    "size",
    "signature",
    "author_pubkey",
    "encrypted_payload",
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@attrs.define
class Channel:
    """A channel as the client creates it: its id is derived from the owner's signing key."""

    signing_key: SigningKey = attrs.field(factory=SigningKey.generate)
    secret: bytes = attrs.field(factory=lambda: os.urandom(32))
    chunks: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    @property
    def id(self) -> str:
        return hashlib.sha256(bytes(self.signing_key.verify_key)).digest()[:16].hex()

    @property
    def author(self) -> str:
        return b64(bytes(self.signing_key.verify_key))

    def routing_hash(self) -> str:
        epoch = int(time.time() * 1000) // 3_600_000
        mac = hmac.new(self.secret, f"epoch:hourly:{epoch}".encode(), hashlib.sha256)
        return mac.digest()[:16].hex()

    def split(self, ciphertext: bytes, sequence: int) -> list[dict[str, Any]]:
        """The ``Chunk.to_dict()`` of each 64 KiB piece of one message."""
        pieces = [ciphertext[i : i + CHUNK_SIZE] for i in range(0, len(ciphertext), CHUNK_SIZE)]
        prefix = uuid.uuid4().hex[:16]
        routing = self.routing_hash()
        chunks = []
        for index, piece in enumerate(pieces):
            chunk = {
                "chunk_id": f"ch_{prefix}_{index:03d}",
                "routing_hash": routing,
                "sequence": sequence,
                "chunk_index": index,
                "total_chunks": len(pieces),
                "size": len(piece),
                "signature": b64(self.signing_key.sign(piece).signature),
                "author_pubkey": self.author,
                "encrypted_payload": b64(piece),
            }
            self.chunks[chunk["chunk_id"]] = chunk
            chunks.append(chunk)
        return chunks


@attrs.define
class Headless:
    """One headless client's signaling connection and what it does with its frames."""

    ws: SignalClient
    code: str
    public_key: str

    async def register(self) -> None:
        await self.ws.send(
            {"type": "register", "pairingCode": self.code, "publicKey": self.public_key}
        )
        reply = await self.ws.expect("registered")
        # The client reads only ``redirects[].endpoint``, when there are any.
        assert all("endpoint" in redirect for redirect in reply.get("redirects", []))

    async def create_channel(self, channel: Channel) -> None:
        await self.ws.send({"type": "channel-owner-register", "channelId": channel.id})

    async def subscribe(self, channel_id: str) -> None:
        await self.ws.send({"type": "channel-subscribe", "channelId": channel_id})

    async def publish(self, channel: Channel, chunks: list[dict[str, Any]], *, push: bool) -> None:
        """One announce for the message's chunks, then (proactively) one push per chunk,
        without waiting for any reply, as the client does."""
        await self.ws.send(
            {
                "type": "chunk_announce",
                "peerId": self.code,
                "channelId": channel.id,
                "chunks": [
                    {"chunkId": chunk["chunk_id"], "routingHash": chunk["routing_hash"]}
                    for chunk in chunks
                ],
            }
        )
        if push:
            for chunk in chunks:
                await self.push(chunk["chunk_id"], channel.id, chunk)

    async def push(self, chunk_id: str, channel_id: str, data: dict[str, Any]) -> None:
        await self.ws.send(
            {
                "type": "chunk_push",
                "peerId": self.code,
                "chunkId": chunk_id,
                "channelId": channel_id,
                "data": data,
            }
        )

    async def answer_pull(self, pull: dict[str, Any], owned: list[Channel]) -> None:
        """The client's ``chunk_pull`` handler: the chunk from any owned channel, pushed with
        the pull's ``channelId``; an unknown chunk is only logged."""
        for channel in owned:
            chunk = channel.chunks.get(pull["chunkId"])
            if chunk is not None:
                await self.push(pull["chunkId"], pull["channelId"], chunk)
                return

    async def on_available(self, frame: dict[str, Any], reader: Reader) -> list[str]:
        """The client's ``chunk_available`` handler: a request for each id it lacks."""
        if frame["channelId"] != reader.channel_id:
            return []  # not subscribed
        wanted = [chunk_id for chunk_id in frame["chunkIds"] if chunk_id not in reader.chunks]
        for chunk_id in wanted:
            await self.ws.send(
                {
                    "type": "chunk_request",
                    "peerId": self.code,
                    "chunkId": chunk_id,
                    "channelId": frame["channelId"],
                }
            )
        return wanted


@attrs.define
class Reader:
    """The client's reading of ``chunk_data`` for one subscribed channel."""

    channel_id: str
    owner: str  # the channel owner's Ed25519 key, base64
    chunks: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    messages: list[bytes] = attrs.field(factory=list)

    def on_chunk_data(self, frame: dict[str, Any]) -> None:
        data, channel_id = frame.get("data"), frame.get("channelId")
        assert data, f"the client drops a chunk_data without data: {frame!r}"
        assert channel_id, f"the client drops a chunk_data without channelId: {frame!r}"
        if isinstance(data, str):
            data = json.loads(data)
        assert channel_id == self.channel_id, "the client raises: not subscribed"
        assert set(data) >= CHUNK_KEYS, "Chunk.from_dict fails"
        payload = base64.b64decode(data["encrypted_payload"])
        VerifyKey(base64.b64decode(data["author_pubkey"])).verify(
            payload, base64.b64decode(data["signature"])
        )
        assert data["author_pubkey"] == self.owner
        latest = max((chunk["sequence"] for chunk in self.chunks.values()), default=0)
        assert data["sequence"] >= latest, "the client discards it as a replay"
        self.chunks[data["chunk_id"]] = data
        parts = sorted(
            (chunk for chunk in self.chunks.values() if chunk["sequence"] == data["sequence"]),
            key=lambda chunk: chunk["chunk_index"],
        )
        if len(parts) == data["total_chunks"]:
            self.messages.append(
                b"".join(base64.b64decode(chunk["encrypted_payload"]) for chunk in parts)
            )


@asynccontextmanager
async def headless(
    url: str, *, code: str | None = None, key: str | None = None
) -> AsyncIterator[Headless]:
    """A connected and registered ``Headless``."""
    async with connect_signal(url) as ws:
        client = Headless(ws, code or random_pairing_code(), key or generate_public_key())
        await client.register()
        yield client


def ciphertext(size: int) -> bytes:
    return os.urandom(size)


async def test_a_published_message_reaches_a_subscriber_in_the_shapes_the_client_reads(server):
    channel = Channel()
    message = ciphertext(2 * CHUNK_SIZE + 5000)  # three chunks, two of them full size
    with trio.fail_after(10):
        async with headless(server.url) as owner, headless(server.url) as subscriber:
            await owner.create_channel(channel)
            await expect(owner.ws, {"type": "channel-owner-registered", "channelId": channel.id})
            await subscriber.subscribe(channel.id)
            await expect(subscriber.ws, {"type": "channel-subscribed", "channelId": channel.id})
            reader = Reader(channel.id, channel.author)

            chunks = channel.split(message, sequence=1)
            assert len(chunks) == 3
            await owner.publish(channel, chunks, push=True)
            await expect(owner.ws, {"type": "chunk_announce_ack", "registered": 3})
            for chunk in chunks:
                # Proactive: cached for later subscribers, nobody served yet.
                await expect(owner.ws, push_ack(chunk["chunk_id"], 0))

            ids = [chunk["chunk_id"] for chunk in chunks]
            frame = await subscriber.ws.receive()
            assert frame == available(channel.id, ids)
            assert await subscriber.on_available(frame, reader) == ids
            for chunk in chunks:
                reply = await subscriber.ws.receive()
                assert reply == chunk_data(chunk["chunk_id"], chunk, "cache", channel.id)
                reader.on_chunk_data(reply)
            assert reader.messages == [message]
            await assert_quiet(owner.ws, subscriber.ws)


async def test_the_clients_answer_to_a_pull_serves_the_waiting_subscriber(server):
    channel = Channel()
    message = ciphertext(CHUNK_SIZE)  # exactly one full chunk
    with trio.fail_after(10):
        async with headless(server.url) as owner, headless(server.url) as subscriber:
            await owner.create_channel(channel)
            await owner.ws.expect("channel-owner-registered")
            await subscriber.subscribe(channel.id)
            await subscriber.ws.expect("channel-subscribed")
            reader = Reader(channel.id, channel.author)
            (chunk,) = channel.split(message, sequence=1)
            chunk_id = chunk["chunk_id"]

            # Announced but not pushed (its proactive push failed, or the cache let it go).
            await owner.publish(channel, [chunk], push=False)
            await expect(owner.ws, {"type": "chunk_announce_ack", "registered": 1})
            await subscriber.on_available(await subscriber.ws.expect("chunk_available"), reader)
            await expect(subscriber.ws, {"type": "chunk_pulling", "chunkId": chunk_id})
            pull = await owner.ws.receive()
            assert pull == {"type": "chunk_pull", "chunkId": chunk_id, "channelId": channel.id}
            await owner.answer_pull(pull, [channel])
            await expect(owner.ws, push_ack(chunk_id, 1))
            reply = await subscriber.ws.receive()
            assert reply == chunk_data(chunk_id, chunk, "relay", channel.id)
            reader.on_chunk_data(reply)
            assert reader.messages == [message]
            await assert_quiet(owner.ws, subscriber.ws)


async def test_a_late_subscriber_gets_every_message_oldest_first(server):
    channel = Channel()
    # Three messages of increasing sequence: two chunks, one, then three.
    messages = [
        ciphertext(CHUNK_SIZE + 100),
        ciphertext(300),
        ciphertext(2 * CHUNK_SIZE + 1),
    ]
    with trio.fail_after(10):
        async with headless(server.url) as owner:
            await owner.create_channel(channel)
            await owner.ws.expect("channel-owner-registered")
            ids = []
            for sequence, message in enumerate(messages, start=1):
                chunks = channel.split(message, sequence)
                await owner.publish(channel, chunks, push=True)
                await expect(owner.ws, {"type": "chunk_announce_ack", "registered": len(chunks)})
                for chunk in chunks:
                    await expect(owner.ws, push_ack(chunk["chunk_id"], 0))
                ids += [chunk["chunk_id"] for chunk in chunks]
            assert len(ids) == 6

            async with headless(server.url) as late:
                reader = Reader(channel.id, channel.author)
                await late.subscribe(channel.id)
                await expect(late.ws, {"type": "channel-subscribed", "channelId": channel.id})
                frame = await late.ws.receive()
                assert frame == available(channel.id, ids)  # oldest first
                await late.on_available(frame, reader)
                for chunk_id in ids:
                    reply = await late.ws.receive()
                    assert reply == chunk_data(
                        chunk_id, channel.chunks[chunk_id], "cache", channel.id
                    )
                    reader.on_chunk_data(reply)  # never a replay
                assert reader.messages == messages
                await assert_quiet(owner.ws, late.ws)


def upstream_message(channel: Channel, kind: str) -> dict[str, Any]:
    """``UpstreamMessage.to_dict()``."""
    return {
        "id": f"up_{uuid.uuid4().hex[:8]}",
        "channel_id": channel.id,
        "type": kind,
        "encrypted_payload": b64(os.urandom(48)),
        "signature": b64(os.urandom(64)),
        "sender_ephemeral_key": b64(bytes(SigningKey.generate().verify_key)),
        "timestamp": "2026-03-01T12:00:00.000000+00:00",
    }


def receive_upstream_message(upstream_data: dict[str, Any]) -> tuple[Any, Any]:
    """What the owner's ``receive_upstream_message`` reads from the forwarded frame."""
    return upstream_data["message"], upstream_data["ephemeralPublicKey"]


async def test_upstream_messages_reach_the_owner_in_the_shape_it_reads(server):
    channel = Channel()
    reply = upstream_message(channel, "reply")
    vote = upstream_message(channel, "vote")
    ephemeral = [generate_public_key(), generate_public_key()]
    with trio.fail_after(10):
        async with headless(server.url) as subscriber:
            async with headless(server.url) as owner:
                await owner.create_channel(channel)
                await owner.ws.expect("channel-owner-registered")
                await subscriber.subscribe(channel.id)
                await subscriber.ws.expect("channel-subscribed")
                await subscriber.ws.send(upstream_frame(channel.id, reply, ephemeral[0]))
                await expect(subscriber.ws, upstream_ack(channel.id, reply["id"]))
                forwarded = await owner.ws.expect("upstream-message")
                assert forwarded == upstream_frame(channel.id, reply, ephemeral[0])
                assert receive_upstream_message(forwarded) == (reply, ephemeral[0])
                owner_code, owner_key = owner.code, owner.public_key
            await wait_stats(server.url, "channels", owned=0)

            # The owner is away: queued, still acknowledged.
            await subscriber.ws.send(upstream_frame(channel.id, vote, ephemeral[1]))
            await expect(subscriber.ws, upstream_ack(channel.id, vote["id"]))
            # The client reconnects as it does (the same code and key, no reconnect token,
            # from the same address), then owns the channel again.
            async with headless(server.url, code=owner_code, key=owner_key) as back:
                await back.create_channel(channel)
                forwarded = await back.ws.expect("upstream-message")
                assert receive_upstream_message(forwarded) == (vote, ephemeral[1])
                await expect(back.ws, {"type": "channel-owner-registered", "channelId": channel.id})
                await assert_quiet(back.ws, subscriber.ws)


async def test_a_request_naming_another_channel_cannot_take_the_owners_chunk_from_its_channel(
    server,
):
    """The client answers a ``chunk_pull`` with a push naming the pull's ``channelId``. A
    stranger's request naming another channel must not make the chunk that channel's: the
    channel's own subscribers must still be served it (docs/protocol/channels.md, "Rules": a
    cached chunk belongs to one channel)."""
    channel = Channel()
    with trio.fail_after(10):
        async with (
            headless(server.url) as owner,
            headless(server.url) as subscriber,
            headless(server.url) as stranger,
        ):
            await owner.create_channel(channel)
            await owner.ws.expect("channel-owner-registered")
            await subscriber.subscribe(channel.id)
            await subscriber.ws.expect("channel-subscribed")
            reader = Reader(channel.id, channel.author)
            (chunk,) = channel.split(ciphertext(4000), sequence=1)
            chunk_id = chunk["chunk_id"]
            await owner.publish(channel, [chunk], push=False)
            await expect(owner.ws, {"type": "chunk_announce_ack", "registered": 1})
            available_frame = await subscriber.ws.expect("chunk_available")

            # The stranger asks first, in the name of a channel of its own.
            await stranger.ws.send(
                {
                    "type": "chunk_request",
                    "peerId": stranger.code,
                    "chunkId": chunk_id,
                    "channelId": "a-channel-of-its-own",
                }
            )
            await expect(stranger.ws, {"type": "chunk_pulling", "chunkId": chunk_id})
            pull = await owner.ws.expect("chunk_pull")
            await owner.answer_pull(pull, [channel])
            await owner.ws.expect("chunk_push_ack")
            # Whatever the stranger gets, the channel's subscriber is served its chunk.
            await stranger.ws.expect("chunk_data", "chunk_error")
            await subscriber.on_available(available_frame, reader)
            reply = await subscriber.ws.receive()
            assert reply["type"] == "chunk_data", reply
            reader.on_chunk_data(reply)
            assert reader.messages == [base64.b64decode(chunk["encrypted_payload"])]
