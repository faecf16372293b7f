"""The ChunkIndex task with fake peers, on trio's mock clock (autojump): identity, routing of
both dialects to one index, multicast, cleanup on disconnect, and bounded memory."""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import attrs
import pytest
import trio

from tests.services.fakes import FakePeer
from zajel.protocol import relay, signaling
from zajel.services import LocalAddress
from zajel.services._mailbox import start_service
from zajel.services._peers import Attach, Detach, Identity, Inbound
from zajel.services.chunk_index import ChunkIndex, ChunkStats, GetChunkStats

IP = "192.0.2.1"


@attrs.define
class Index:
    address: LocalAddress
    service: ChunkIndex
    identities: dict[int, Identity] = attrs.field(factory=dict)

    async def send(self, conn: int, **frame: Any) -> None:
        """A frame from ``conn``, decoded by its endpoint and quoting its identity."""
        identity = self.identities.get(conn)
        decode = (
            relay.decode
            if identity is not None and identity.dialect == "relay"
            else signaling.decode
        )
        await self.address.cast(Inbound(conn, decode(json.dumps(frame)), identity))

    async def settle(self) -> ChunkStats:
        """Everything sent so far has been handled (the inbox is first in, first out)."""
        return await self.address.call(GetChunkStats())

    async def join(
        self,
        conn: int,
        peer_id: str,
        *,
        dialect: str = "signal",
        key: str | None = None,
        peer: Any = None,
    ) -> Any:
        peer = peer if peer is not None else FakePeer()
        await self.address.cast(Attach(conn, peer, IP))
        self.identities[conn] = Identity(dialect, peer_id, key)  # type: ignore[arg-type]
        return peer


@pytest.fixture
async def index(nursery) -> Index:
    service = ChunkIndex()
    return Index(start_service(nursery, service), service)


async def test_a_frame_without_identity_is_not_registered(autojump_clock, index):
    peer = FakePeer()
    await index.address.cast(Attach(1, peer, IP))
    await index.send(1, type="channel-subscribe", channelId="ch")
    await index.settle()
    assert peer.take() == [
        {
            "type": "error",
            "code": "not_registered",
            "message": "Not registered: send register first",
        }
    ]
    assert peer.handled_count == 1


async def test_peer_id_must_be_the_connections_own(autojump_clock, index):
    app = await index.join(1, "ABC234")
    bot = await index.join(2, "bot-1", dialect="relay")
    await index.send(1, type="chunk_request", chunkId="c", channelId="ch", peerId="XYZ234")
    await index.send(2, type="chunk_request", chunkId="c", peerId="bot-2")
    await index.settle()
    assert app.take() == [
        {
            "type": "error",
            "code": "peer_id_mismatch",
            "message": "peerId mismatch with registered identity",
        }
    ]
    assert bot.take()[0]["code"] == "peer_id_mismatch"


async def test_one_index_serves_both_dialects(autojump_clock, index):
    """A chunk announced on /signal is pulled for a /relay requester, and the cached copy is
    served to a /signal requester of its channel."""
    owner = await index.join(1, "ABC234", key="k")
    bot = await index.join(2, "bot-1", dialect="relay")
    reader = await index.join(3, "DEF234")
    await index.send(1, type="channel-owner-register", channelId="ch")
    await index.send(1, type="chunk_announce", channelId="ch", chunks=[{"chunkId": "c"}])
    await index.send(2, type="chunk_request", chunkId="c")
    await index.settle()
    assert owner.take()[-1] == {"type": "chunk_pull", "chunkId": "c", "channelId": "ch"}
    await index.send(1, type="chunk_push", chunkId="c", channelId="ch", data={"n": 1})
    await index.send(3, type="chunk_request", chunkId="c", channelId="ch")
    await index.settle()
    assert owner.take() == [
        {"type": "chunk_push_ack", "chunkId": "c", "cached": True, "servedCount": 1}
    ]
    assert bot.take()[-1] == {
        "type": "chunk_data",
        "chunkId": "c",
        "data": {"n": 1},
        "source": "relay",
    }
    assert reader.take() == [
        {
            "type": "chunk_data",
            "chunkId": "c",
            "data": {"n": 1},
            "source": "cache",
            "channelId": "ch",
        }
    ]


async def test_memory_is_bounded_every_map_empty_after_everyone_leaves(autojump_clock, index):
    peers = 100
    for conn in range(peers):
        await index.join(conn, f"C{conn:05d}", key=f"key-{conn}")
        await index.send(conn, type="channel-owner-register", channelId=f"own-{conn}")
        await index.send(conn, type="channel-subscribe", channelId=f"own-{(conn + 1) % peers}")
        await index.send(
            conn, type="stream-start", streamId="s", channelId=f"own-{conn}", title="t"
        )
        await index.send(
            conn, type="chunk_announce", channelId=f"own-{conn}", chunks=[{"chunkId": f"c-{conn}"}]
        )
        await index.send(
            conn,
            type="chunk_request",
            chunkId=f"c-{(conn + 1) % peers}",
            channelId=f"own-{(conn + 1) % peers}",
        )
    stats = await index.settle()
    assert stats.channels == {
        "owned": peers,
        "subscriptions": peers,
        "queuedUpstream": 0,
        "liveStreams": peers,
    }
    for conn in range(peers):
        await index.address.cast(Detach(conn))
    await index.settle()
    assert set(index.service.sizes().values()) == {0}
    assert index.service.chunks.sizes()["source_entries"] == 0
    assert index.service.chunks.sizes()["pending_entries"] == 0
    # Each owner had a key: its channel is held for an hour, then forgotten.
    assert index.service.channels.sizes()["channels"] == peers
    await trio.sleep(3601)
    await index.settle()
    assert set(index.service.channels.sizes().values()) == {0}


class Sink:
    """A connection that reads every frame at once and keeps only their count."""

    def __init__(self) -> None:
        self.frames = 0

    def send_nowait(self, frame: str) -> bool:
        self.frames += 1
        return True

    def answer_nowait(self, frame: str) -> None:
        self.frames += 1

    def handled(self) -> None:
        pass

    def identify(self, identity: Identity) -> None:
        pass

    def close(self, code: int) -> None:
        raise AssertionError(f"a sink is never closed (code {code})")


async def test_cached_chunks_hold_their_encoded_bytes_not_decoded_objects(autojump_clock, index):
    """A 64 KiB push of ``[[],[],…]`` decodes to ~1.5 MB of lists: the cache must keep the
    64 KiB of text, not the lists (what one push pins is about what it sent)."""
    source = await index.join(1, "source", dialect="relay")
    sink = await index.join(2, "asker", dialect="relay", peer=Sink())
    chunks = [f"chunk-{number}" for number in range(20)]
    entries = [{"chunkId": chunk_id, "routingHash": "h"} for chunk_id in chunks]
    await index.send(1, type="chunk_announce", chunks=entries)
    await index.settle()
    source.take()
    empty_lists = "[" + ",".join(["[]"] * 21_845) + "]"  # 65,536 bytes
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for chunk_id in chunks:
            await index.send(2, type="chunk_request", chunkId=chunk_id)
            push = f'{{"type":"chunk_push","chunkId":"{chunk_id}","data":{empty_lists}}}'
            await index.address.cast(Inbound(1, relay.decode(push), index.identities[1]))
            await index.settle()
            source.take()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert index.service.chunks.statistics()["cachedChunks"] == 20
    assert sink.frames == 20  # one chunk_data per chunk
    assert held < 20 * 65_536 * 1.5, held  # the text, plus small change
