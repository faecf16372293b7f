"""``zajel.client`` against the real server: every wait is bounded and names what it awaited,
pushes that arrive while a request waits for its reply are kept, and the chunk helpers follow
docs/protocol/chunks.md."""

from __future__ import annotations

import math

import pytest
import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._signal import assert_quiet
from tests.integration.test_relay_flow import relays
from zajel.client import (
    DEFAULT_TIMEOUT_S,
    RelayClient,
    ReplyTimeout,
    ServerError,
    connect_relay,
    connect_signal,
)

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

DATA = {"v": 1, "payload": "ZW5jcnlwdGVk", "sig": "c2lnbmF0dXJl"}


async def test_register_rendezvous_keeps_a_match_that_arrives_before_its_result(server):
    with trio.fail_after(10):
        async with relays(server.url, "alice", "bob") as (alice, bob):
            await alice.register_rendezvous(hourly_tokens=["token-1"])
            # The server queues Alice's match before Bob's result ("matched peers hear first").
            result = await bob.register_rendezvous(hourly_tokens=["token-1"], relay_id="relay-b")
            assert result["liveMatches"] == [{"peerId": "alice"}]
            # Alice's next request reads the match before its own result, and keeps it.
            result = await alice.register_rendezvous(daily_points=["point-1"])
            assert result == {"type": "rendezvous_result", "liveMatches": [], "deadDrops": []}
            assert await alice.expect("rendezvous_match") == {
                "type": "rendezvous_match",
                "match": {"peerId": "bob", "relayId": "relay-b"},
            }
            await assert_quiet(alice, bob)


async def test_wait_rendezvous_match_takes_a_match_set_aside_or_the_next_one(server):
    with trio.fail_after(10):
        async with relays(server.url, "alice", "bob", "carol") as (alice, bob, carol):
            await alice.register_rendezvous(hourly_tokens=["t"])
            await bob.register_rendezvous(hourly_tokens=["t"])
            assert await alice.heartbeat() > 0  # a request helper sets the match aside
            assert list(alice.set_aside) == [
                {"type": "rendezvous_match", "match": {"peerId": "bob"}}
            ]
            assert await alice.wait_rendezvous_match() == {
                "type": "rendezvous_match",
                "match": {"peerId": "bob"},
            }
            assert not alice.set_aside
            await carol.register_rendezvous(hourly_tokens=["t"])
            assert (await alice.wait_rendezvous_match())["match"] == {"peerId": "carol"}


async def test_every_wait_is_bounded_and_names_what_it_awaited(server):
    with trio.fail_after(10):
        async with connect_relay(server.url, timeout=0.3) as quiet:
            assert quiet.timeout == 0.3
            with pytest.raises(ReplyTimeout, match=r"^no pong within 0\.3 s$") as caught:
                await quiet.expect("pong")
            assert isinstance(caught.value, trio.TooSlowError)
            assert (caught.value.awaited, caught.value.timeout) == ("pong", 0.3)
            with pytest.raises(ReplyTimeout, match=r"no chunk_data \(chunkId='c1'\) within"):
                await quiet.wait_for("chunk_data", chunkId="c1", timeout=0.1)
            await quiet.register("quiet")
            with pytest.raises(ReplyTimeout, match=r"no chunk_data \(chunkId='c1'\) within 0\.3"):
                await quiet.wait_chunk_data("c1")
            with pytest.raises(ReplyTimeout, match=r"no chunk_pull within 0\.3 s"):
                await quiet.wait_chunk_pull()
            with pytest.raises(ReplyTimeout, match=r"no rendezvous_match within 0\.3 s"):
                await quiet.wait_rendezvous_match()
            await quiet.ping()  # the connection is still usable after a timed-out wait
        async with connect_relay(server.url) as default, connect_signal(server.url) as signal:
            assert default.timeout == signal.timeout == DEFAULT_TIMEOUT_S
            with pytest.raises(ReplyTimeout, match=r"no registered within 0\.2 s"):
                await signal.expect("registered", timeout=0.2)
            with pytest.raises(ValueError, match="timeout"):
                await default.expect("pong", timeout=math.nan)


async def test_chunk_helpers_announce_pull_push_and_deliver(server):
    with trio.fail_after(10):
        async with relays(server.url, "source", "r1", "r2", "late") as clients:
            source, r1, r2, late = clients
            assert await source.announce_chunks({"c1": "route-1"}, channel_id="news") == 1
            await r1.request_chunk("c1", channel_id="news")
            assert await source.wait_chunk_pull("c1") == {
                "type": "chunk_pull",
                "chunkId": "c1",
                "channelId": "news",
            }
            await r2.request_chunk("c1")
            await assert_quiet(source)  # one pull, however many wait
            assert await source.push_chunk("c1", DATA) == {
                "type": "chunk_push_ack",
                "chunkId": "c1",
            }
            delivered = {"type": "chunk_data", "chunkId": "c1", "data": DATA, "source": "relay"}
            assert await r1.wait_chunk_data("c1") == {**delivered, "channelId": "news"}
            assert await r2.wait_chunk_data() == delivered
            assert await late.fetch_chunk("c1", channel_id="news") == {
                **delivered,
                "source": "cache",
                "channelId": "news",
            }
            await assert_quiet(source, r1, r2, late)


async def test_chunk_helpers_keep_the_pushes_that_cross_a_request(server):
    with trio.fail_after(10):
        async with relays(server.url, "source", "asker") as (source, asker):
            assert await source.announce_chunks({"c1": "h", "c2": "h"}) == 2
            await asker.request_chunk("c1")
            await source.wait_for("chunk_pull", chunkId="c1")
            await asker.request_chunk("c2")
            # The pull of c2 arrives while the push of c1 waits for its ack: it is set aside.
            await assert_quiet(asker)
            await source.push_chunk("c1", "one")
            assert await source.wait_chunk_pull("c2") == {"type": "chunk_pull", "chunkId": "c2"}
            await source.push_chunk("c2", "two")
            # Both deliveries; the wait for c2 sets c1's aside and the next wait takes it.
            assert (await asker.wait_chunk_data("c2"))["data"] == "two"
            assert (await asker.wait_chunk_data("c1"))["data"] == "one"
            assert not asker.set_aside


async def test_a_request_that_waits_for_a_source_is_served_once_one_announces(server):
    with trio.fail_after(10):
        async with relays(server.url, "asker", "holder") as (asker, holder):
            await asker.request_chunk("rare")
            await asker.ping()  # the request is handled: chunk_not_found came before the pong
            assert [frame["type"] for frame in asker.set_aside] == ["chunk_not_found"]
            assert await holder.announce_chunks({"rare": "h"}) == 1
            await holder.push_chunk((await holder.wait_chunk_pull("rare"))["chunkId"], "bytes")
            frame = await asker.wait_chunk_data("rare")
            assert (frame["data"], frame["source"]) == ("bytes", "relay")
            # The chunk_not_found that came first is still kept, not lost.
            assert [frame["type"] for frame in asker.set_aside] == ["chunk_not_found"]


async def test_a_refused_push_raises_server_error_with_the_error_frame(server):
    with trio.fail_after(10):
        async with relays(server.url, "mallory") as (mallory,):
            with pytest.raises(ServerError) as caught:
                await mallory.push_chunk("c", "forged")
            assert caught.value.frame == {
                "type": "error",
                "code": "not_a_source",
                "message": "Not a source for this chunk",
            }


def test_the_relay_client_knows_the_relay_pushes():
    assert {"rendezvous_match", "chunk_pull", "chunk_data", "chunk_not_found"} == set(
        RelayClient.PUSHES
    )
