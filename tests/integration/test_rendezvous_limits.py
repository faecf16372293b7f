"""Rendezvous under abuse, over real sockets (docs/protocol/relay.md, "Limits of rendezvous"): what
one point holds, what one reply carries, and what one client address holds.

Every loopback connection comes from 127.0.0.1, so every connection of a test is one client IP.
"""

from __future__ import annotations

import json

import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._process import zajel_serve
from tests.integration._raw import RawClient, port_of, rss_bytes
from tests.integration.test_relay_flow import relays

# The reply with both lists empty: what the byte budget does not cover.
ENVELOPE = len(b'{"type":"rendezvous_result","liveMatches":[],"deadDrops":[]}')
BIG_DROP = "d" * 4000


async def rendezvous_stats(url: str) -> dict:
    return (await _http.get(url, "/stats")).json()["rendezvous"]


async def test_a_reply_never_carries_more_than_its_byte_budget_newest_first(nursery):
    budget = 16_384
    running = await start_server(
        nursery, make_config(rendezvous_reply_bytes=budget, ws_idle_timeout=3600.0)
    )
    stuffers = [f"stuffer-{index:02}" for index in range(12)]
    with trio.fail_after(20):
        async with relays(running.url, *stuffers, "reader") as clients:
            *stuffing, reader = clients
            for client in stuffing:
                await client.register_rendezvous(daily_points=["p"], dead_drop=BIG_DROP)
            await reader.send({"type": "register_rendezvous", "dailyPoints": ["p"]})
            raw = await reader.ws.get_message()
            assert len(raw.encode()) <= budget + ENVELOPE
            reply = json.loads(raw)
            listed = [drop["peerId"] for drop in reply["deadDrops"]]
            # As many of the newest as fit: 4 items of about 4 KB in 16 KiB.
            assert listed == stuffers[::-1][:4]
    running.stop.set()


async def test_a_point_keeps_only_its_newest_dead_drops(nursery):
    running = await start_server(
        nursery, make_config(rendezvous_drops_per_point=5, ws_idle_timeout=3600.0)
    )
    peers = [f"peer-{index}" for index in range(8)]
    with trio.fail_after(20):
        async with relays(running.url, *peers, "reader") as clients:
            *holders, reader = clients
            for peer_id, client in zip(peers, holders, strict=True):
                await client.register_rendezvous(daily_points=["p"], dead_drop=f"for-{peer_id}")
            assert (await rendezvous_stats(running.url))["dailyEntries"] == 5
            result = await reader.register_rendezvous(daily_points=["p"])
            assert [drop["peerId"] for drop in result["deadDrops"]] == peers[::-1][:5]
            # The reader is the newest at the point now: the oldest of the five gave way.
            assert (await rendezvous_stats(running.url))["dailyEntries"] == 5
    running.stop.set()


async def test_one_address_holds_at_most_its_budget_of_entries(nursery):
    running = await start_server(
        nursery, make_config(rendezvous_entries_per_ip=30, ws_idle_timeout=3600.0)
    )
    with trio.fail_after(20):
        async with relays(running.url, "first", "second", "reader") as (first, second, reader):
            await first.register_rendezvous(
                daily_points=[f"first-{index}" for index in range(20)], dead_drop="f"
            )
            await second.register_rendezvous(
                daily_points=[f"second-{index}" for index in range(20)], dead_drop="s"
            )
            assert (await rendezvous_stats(running.url))["dailyEntries"] == 30
            # The address's oldest entries gave way: first's first ten points.
            result = await reader.register_rendezvous(daily_points=["first-9", "first-10"])
            assert result["deadDrops"] == [{"peerId": "first", "deadDrop": "f"}]
            found = await reader.register_rendezvous(daily_points=["first-0"])
            assert found["deadDrops"] == []
    running.stop.set()


async def test_readers_that_never_read_cannot_pin_more_than_their_byte_budgets(tmp_path):
    """Many connections of one address send small ``register_rendezvous`` frames at a point full
    of large dead drops and never read: each reply is bounded, and each connection stops being
    read once its queue is full, so the server's memory barely moves (one address used to park
    1.4 GB of replies this way)."""
    drop = "é" * 4000  # 8 KB of UTF-8 in each dead drop (24 KB once escaped)
    readers, frames = 10, 200
    env = {"ZAJEL_WS_MESSAGE_RATE": "1000000", "ZAJEL_WS_MESSAGE_BURST": "1000000"}
    clients: list[RawClient] = []
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=env) as (process, url):
            port = port_of(url)
            async with relays(url, *[f"stuffer-{index:02}" for index in range(30)]) as stuffing:
                for client in stuffing:
                    await client.register_rendezvous(daily_points=["p"], dead_drop=drop)
                before = rss_bytes(process.pid)
                try:
                    for index in range(readers):
                        reader = await RawClient.connect(port, "/relay")
                        clients.append(reader)
                        await reader.send({"type": "register", "peerId": f"reader-{index}"})
                    request = {"type": "register_rendezvous", "dailyPoints": ["p"]}
                    async with trio.open_nursery() as sending:
                        for reader in clients:
                            # The server stops reading each of them; its frames wait in TCP.
                            sending.start_soon(send_for_a_while, reader, request, frames)
                    after = before
                    for _ in range(20):  # the server works through what it has taken in
                        after = max(after, rss_bytes(process.pid))
                        await trio.sleep(0.1)
                    # The server still answers everyone else at once.
                    with trio.fail_after(2):
                        await stuffing[0].ping()
                finally:
                    for reader in clients:
                        reader.stream.socket.close()
    # 10 connections x (a 1 MiB soft bound + the answers to 8 frames in flight, 128 KiB each),
    # and the allocator's slack: far below the ~300 MB of 2,000 unbounded replies.
    assert after - before < 60 * 2**20, (before, after)


async def send_for_a_while(client: RawClient, request: dict, frames: int) -> None:
    with trio.move_on_after(3):
        for _ in range(frames):
            await client.send(request)
