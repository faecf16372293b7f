"""Chunk distribution over real sockets (docs/protocol/chunks.md): announce, three
requests, one pull, one push, three deliveries, then a cache hit; channel ids echoed."""

from __future__ import annotations

import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments, make_config, start_server
from tests.integration import _http
from tests.integration._signal import assert_quiet, expect
from tests.integration.test_relay_flow import relays

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

DATA = {"sealed": "c2VhbGVk", "signature": "sig", "n": [1, 2, 3]}


async def chunk_stats(url: str) -> dict:
    return (await _http.get(url, "/stats")).json()["chunks"]


async def test_one_pull_serves_every_requester_and_then_the_cache(server):
    with trio.fail_after(10):
        async with relays(server.url, "source", "r1", "r2", "r3", "late") as clients:
            source, *requesters, late = clients
            await source.send(
                {
                    "type": "chunk_announce",
                    "channelId": "chan-1",
                    "chunks": [{"chunkId": "chunk-1", "routingHash": "route-1"}],
                }
            )
            await expect(source, {"type": "chunk_announce_ack", "registered": 1})
            for requester in requesters:
                await requester.send(
                    {"type": "chunk_request", "chunkId": "chunk-1", "channelId": "chan-1"}
                )
            # Exactly one pull however many wait.
            await expect(
                source, {"type": "chunk_pull", "chunkId": "chunk-1", "channelId": "chan-1"}
            )
            await assert_quiet(source)
            await source.send({"type": "chunk_push", "chunkId": "chunk-1", "data": DATA})
            await expect(source, {"type": "chunk_push_ack", "chunkId": "chunk-1"})
            for requester in requesters:
                await expect(
                    requester,
                    {
                        "type": "chunk_data",
                        "chunkId": "chunk-1",
                        "channelId": "chan-1",
                        "data": DATA,
                        "source": "relay",
                    },
                )
            # A fourth request is served from the cache at once, without a pull.
            await late.send({"type": "chunk_request", "chunkId": "chunk-1"})
            await expect(
                late, {"type": "chunk_data", "chunkId": "chunk-1", "data": DATA, "source": "cache"}
            )
            await assert_quiet(source, late, *requesters)
            stats = await chunk_stats(server.url)
            assert stats["pullsSent"] == 1
            assert stats["cacheHits"] == 1
            assert stats["cachedChunks"] == 1


async def test_no_source_online_then_an_announce_pulls(server):
    with trio.fail_after(10):
        async with relays(server.url, "asker", "holder") as (asker, holder):
            await asker.send({"type": "chunk_request", "chunkId": "rare"})
            await expect(
                asker,
                {
                    "type": "chunk_not_found",
                    "chunkId": "rare",
                    "message": "No online sources available. You will be notified when available.",
                },
            )
            await holder.send(
                {"type": "chunk_announce", "chunks": [{"chunkId": "rare", "routingHash": "h"}]}
            )
            await expect(holder, {"type": "chunk_announce_ack", "registered": 1})
            await expect(holder, {"type": "chunk_pull", "chunkId": "rare"})
            await holder.send({"type": "chunk_push", "chunkId": "rare", "data": "bytes"})
            await expect(holder, {"type": "chunk_push_ack", "chunkId": "rare"})
            await expect(
                asker, {"type": "chunk_data", "chunkId": "rare", "data": "bytes", "source": "relay"}
            )


async def test_a_push_from_a_non_source_is_refused_and_delivers_nothing(server):
    with trio.fail_after(10):
        async with relays(server.url, "asker", "holder", "mallory") as (asker, holder, mallory):
            await holder.send(
                {"type": "chunk_announce", "chunks": [{"chunkId": "c", "routingHash": "h"}]}
            )
            await holder.expect("chunk_announce_ack")
            await asker.send({"type": "chunk_request", "chunkId": "c"})
            await holder.expect("chunk_pull")
            await mallory.send({"type": "chunk_push", "chunkId": "c", "data": "forged"})
            await expect(
                mallory,
                {"type": "error", "code": "not_a_source", "message": "Not a source for this chunk"},
            )
            await assert_quiet(asker)


async def test_the_chunk_limits_are_settings(nursery):
    running = await start_server(
        nursery, make_config(chunk_max_bytes=2048, chunk_announce_max=2, ws_idle_timeout=3600.0)
    )
    with trio.fail_after(10):
        async with relays(running.url, "holder") as (holder,):
            entries = [{"chunkId": f"c{i}", "routingHash": "h"} for i in range(3)]
            await holder.send({"type": "chunk_announce", "chunks": entries})
            assert (await holder.expect("error"))["code"] == "invalid_field"
            await holder.send({"type": "chunk_announce", "chunks": entries[:2]})
            await expect(holder, {"type": "chunk_announce_ack", "registered": 2})
            await holder.send({"type": "chunk_push", "chunkId": "c0", "data": "x" * 2047})
            assert await holder.expect("error") == {
                "type": "error",
                "code": "chunk_too_large",
                "message": "Chunk payload too large: 2049 bytes exceeds 2048 byte limit",
            }
    running.stop.set()
