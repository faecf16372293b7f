"""Chunk distribution under abuse, over real sockets (docs/protocol/chunks.md: "Cache",
"Who may push", "Pull time-out", "Limits per client"): the cache is bounded in bytes, a push never
replaces a cached copy, withholding sources cost a requester one pull time-out, and one client
address holds a bounded share of sources and pending requests.

Every loopback connection comes from 127.0.0.1, so every connection of a test is one client IP.
"""

from __future__ import annotations

import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._signal import assert_quiet, expect
from tests.integration.test_relay_flow import relays

PULL_TIMEOUT = 10.0


async def chunk_stats(url: str) -> dict:
    return (await _http.get(url, "/stats")).json()["chunks"]


def announce(*chunk_ids: str) -> dict:
    return {
        "type": "chunk_announce",
        "chunks": [{"chunkId": c, "routingHash": "h"} for c in chunk_ids],
    }


async def test_the_cache_is_bounded_in_bytes(nursery):
    running = await start_server(
        nursery, make_config(chunk_cache_bytes=4 * 65_536, ws_idle_timeout=3600.0)
    )
    data = "x" * 60_000  # 60,002 bytes as JSON: four fit in 256 KiB, five do not
    chunk_ids = [f"chunk-{index}" for index in range(10)]
    with trio.fail_after(20):
        async with relays(running.url, "source", "asker") as (source, asker):
            await source.send(announce(*chunk_ids))
            await source.expect("chunk_announce_ack")
            for chunk_id in chunk_ids:
                await asker.send({"type": "chunk_request", "chunkId": chunk_id})
                await expect(source, {"type": "chunk_pull", "chunkId": chunk_id})
                await source.send({"type": "chunk_push", "chunkId": chunk_id, "data": data})
                await expect(source, {"type": "chunk_push_ack", "chunkId": chunk_id})
                assert (await asker.expect("chunk_data"))["chunkId"] == chunk_id
            assert (await chunk_stats(running.url))["cachedChunks"] == 4
            # The four most recently used stay; the oldest went first.
            await asker.send({"type": "chunk_request", "chunkId": "chunk-9"})
            assert (await asker.expect("chunk_data"))["source"] == "cache"
            await asker.send({"type": "chunk_request", "chunkId": "chunk-0"})
            await expect(source, {"type": "chunk_pull", "chunkId": "chunk-0"})
    running.stop.set()


async def test_poison_pushes_leave_the_genuine_copy_and_the_cache_bound(nursery):
    running = await start_server(
        nursery,
        make_config(
            chunk_cache_bytes=65_536,
            ws_message_rate=100_000.0,
            ws_message_burst=100_000,
            ws_idle_timeout=3600.0,
        ),
    )
    genuine = {"sealed": "Z2VudWluZQ", "sig": "c2ln"}
    junk = "j" * 4000
    decoys = [f"decoy-{index}" for index in range(500)]
    with trio.fail_after(60):
        async with relays(running.url, "owner", "asker", "mallory", "late") as clients:
            owner, asker, mallory, late = clients
            await owner.send(announce("x"))
            await owner.expect("chunk_announce_ack")
            await asker.send({"type": "chunk_request", "chunkId": "x"})
            await expect(owner, {"type": "chunk_pull", "chunkId": "x"})
            await owner.send({"type": "chunk_push", "chunkId": "x", "data": genuine})
            await owner.expect("chunk_push_ack")
            assert (await asker.expect("chunk_data"))["data"] == genuine

            # Mallory announces the chunk and 500 others, then pushes junk 1000 times: 500 over
            # the genuine copy, 500 into chunks nobody asked for.
            for start in range(0, len(decoys), 100):
                await mallory.send(announce(*decoys[start : start + 100]))
                await mallory.expect("chunk_announce_ack")
            await mallory.send(announce("x"))
            await mallory.expect("chunk_announce_ack")
            for start in range(0, 1000, 100):
                for index in range(start, start + 100):
                    chunk_id = "x" if index % 2 else decoys[index // 2]
                    await mallory.send({"type": "chunk_push", "chunkId": chunk_id, "data": junk})
                for _ in range(100):
                    # Acknowledged, as before (wire compatibility), and ignored.
                    assert (await mallory.expect("chunk_push_ack"))["chunkId"] in {"x", *decoys}

            await late.send({"type": "chunk_request", "chunkId": "x"})
            await expect(
                late, {"type": "chunk_data", "chunkId": "x", "data": genuine, "source": "cache"}
            )
            stats = await chunk_stats(running.url)
            assert stats["cachedChunks"] == 1
    running.stop.set()


async def test_withholding_sources_cost_one_pull_time_out_and_are_not_pulled_again(nursery, clock):
    running = await start_server(nursery, make_config(ws_idle_timeout=10.0**7))
    data = {"sealed": "cmVhbA"}
    with trio.fail_after(60 + 3600):  # the jumps advance this deadline's clock too
        async with relays(
            running.url, "genuine", "sybil-1", "sybil-2", "sybil-3", "asker", "later"
        ) as clients:
            genuine, *sybils, asker, later = clients
            for client in (genuine, *sybils):  # the sybils announced last: pulled first
                await client.send(announce("x"))
                await client.expect("chunk_announce_ack")
            start = trio.current_time()
            await asker.send({"type": "chunk_request", "chunkId": "x"})
            await expect(sybils[2], {"type": "chunk_pull", "chunkId": "x"})
            clock.jump(PULL_TIMEOUT)  # sybil-3 withholds
            # The genuine source is pulled after this one time-out, not after three.
            with trio.fail_after(5):
                await expect(genuine, {"type": "chunk_pull", "chunkId": "x"})
            await genuine.send({"type": "chunk_push", "chunkId": "x", "data": data})
            await genuine.expect("chunk_push_ack")
            await expect(
                asker, {"type": "chunk_data", "chunkId": "x", "data": data, "source": "relay"}
            )
            assert trio.current_time() - start < PULL_TIMEOUT + 5
            for sybil in sybils[:2]:  # pulled together with the genuine source; they withhold
                await expect(sybil, {"type": "chunk_pull", "chunkId": "x"})

            # Past the cache's 30 minutes (the sources re-announce to stay), a later request
            # pulls the genuine source and never a sybil again.
            clock.jump(PULL_TIMEOUT)
            await assert_quiet(genuine, *sybils)
            clock.jump(1800.0)
            for client in (genuine, *sybils):
                await client.send(announce("x"))
                await client.expect("chunk_announce_ack")
            await later.send({"type": "chunk_request", "chunkId": "x"})
            await expect(genuine, {"type": "chunk_pull", "chunkId": "x"})
            await assert_quiet(*sybils)
    running.stop.set()


async def test_one_address_holds_a_bounded_number_of_sources(nursery):
    running = await start_server(
        nursery, make_config(chunk_sources_per_ip=150, ws_idle_timeout=3600.0)
    )
    with trio.fail_after(20):
        async with relays(running.url, "first", "third") as (first, third):
            async with relays(running.url, "second") as (second,):
                await first.send(announce(*(f"a{index}" for index in range(100))))
                await expect(first, {"type": "chunk_announce_ack", "registered": 100})
                await second.send(announce(*(f"b{index}" for index in range(100))))
                await expect(second, {"type": "chunk_announce_ack", "registered": 50})
                assert (await chunk_stats(running.url))["totalSources"] == 150
            # When a connection leaves, its share is free again.
            await _http.wait_stats(running.url, "chunks", totalSources=100)
            await third.send(announce(*(f"c{index}" for index in range(100))))
            await expect(third, {"type": "chunk_announce_ack", "registered": 50})
    running.stop.set()


async def test_one_address_holds_a_bounded_number_of_pending_requests(nursery):
    running = await start_server(
        nursery, make_config(chunk_pending_per_ip=3, ws_idle_timeout=3600.0)
    )
    with trio.fail_after(20):
        async with relays(running.url, "first", "second") as (first, second):
            for chunk_id in ("a", "b"):
                await first.send({"type": "chunk_request", "chunkId": chunk_id})
                await first.expect("chunk_not_found")
            await second.send({"type": "chunk_request", "chunkId": "c"})
            await second.expect("chunk_not_found")
            await second.send({"type": "chunk_request", "chunkId": "d"})
            await expect(
                second,
                {
                    "type": "error",
                    "code": "rate_limited",
                    "message": "Too many pending chunk requests",
                },
            )
            # Asking again for a chunk one already waits for is not a new entry.
            await second.send({"type": "chunk_request", "chunkId": "c"})
            await second.expect("chunk_not_found")
            assert (await chunk_stats(running.url))["pendingRequests"] == 3
    running.stop.set()
