"""``zajel.client.SignalClient``'s channel calls against the real server
(docs/protocol/channels.md): an owner publishes, subscribers fetch, upstream messages and live
streams; pushes that cross a call are kept, refusals raise, every wait is bounded."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._http import get
from tests.integration._signal import assert_quiet, registered
from zajel.client import ChunkUnavailable, ReplyTimeout, ServerError, SignalClient, connect_signal
from zajel.client import generate_public_key as new_key

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

CHANNEL = "c0ffee00c0ffee00c0ffee00c0ffee00"
ONE = {"chunk_id": "ch_1", "encrypted_payload": "b25l", "sequence": 1}
TWO = {"chunk_id": "ch_2", "encrypted_payload": "dHdv", "sequence": 1}


def data(chunk_id: str, payload: Any, source: str) -> dict[str, Any]:
    return {
        "type": "chunk_data",
        "chunkId": chunk_id,
        "data": payload,
        "source": source,
        "channelId": CHANNEL,
    }


async def pulls_sent(url: str) -> int:
    count: int = (await get(url, "/stats")).json()["chunks"]["pullsSent"]
    return count


async def test_an_owner_publishes_and_two_subscribers_fetch_with_one_pull(server):
    with trio.fail_after(15):
        async with registered(server.url, "PUBLS2", "READR2", "READR3", "LATE22") as clients:
            owner, first, second, late = clients
            assert await owner.own_channel(CHANNEL) == {
                "type": "channel-owner-registered",
                "channelId": CHANNEL,
            }
            for reader in (first, second):
                assert await reader.subscribe(CHANNEL) == {
                    "type": "channel-subscribed",
                    "channelId": CHANNEL,
                }
            chunks = {"ch_1": ONE, "ch_2": TWO}
            assert await owner.publish(CHANNEL, chunks) == 2
            available = {"type": "chunk_available", "channelId": CHANNEL, "chunkIds": list(chunks)}
            assert await first.wait_chunk_available(CHANNEL) == available
            assert await second.wait_chunk_available() == available

            # Both ask for ch_1: one pull, and one push serves both.
            pulling = {"type": "chunk_pulling", "chunkId": "ch_1"}
            assert await first.request_chunk("ch_1", CHANNEL) == pulling
            assert await second.request_chunk("ch_1", CHANNEL) == pulling
            assert await owner.wait_chunk_pull("ch_1") == {
                "type": "chunk_pull",
                "chunkId": "ch_1",
                "channelId": CHANNEL,
            }
            await assert_quiet(owner)
            assert await owner.push_chunk("ch_1", CHANNEL, ONE) == {
                "type": "chunk_push_ack",
                "chunkId": "ch_1",
                "cached": True,
                "servedCount": 2,
            }
            assert await first.wait_chunk_data("ch_1") == data("ch_1", ONE, "relay")
            assert await second.wait_chunk_data() == data("ch_1", ONE, "relay")

            # ch_2 through serve_pulls, while a subscriber fetches it.
            pulled: Counter[str] = Counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: owner.serve_pulls(chunks, count=1, pulled=pulled))
                assert await second.fetch_chunk("ch_2", CHANNEL) == data("ch_2", TWO, "relay")
            assert pulled == Counter({"ch_2": 1})
            assert await first.fetch_chunk("ch_2", CHANNEL) == data("ch_2", TWO, "cache")
            assert await pulls_sent(server.url) == 2

            # A late subscriber is shown the cached chunks, oldest first, and fetches from the
            # cache without a pull.
            await late.subscribe(CHANNEL)
            late_available = await late.wait_chunk_available(CHANNEL)
            assert late_available["chunkIds"] == ["ch_1", "ch_2"]
            assert await late.fetch_chunk("ch_1", CHANNEL) == data("ch_1", ONE, "cache")
            assert await pulls_sent(server.url) == 2
            await assert_quiet(owner, first, second, late)
            assert not any(client.set_aside for client in clients)


async def test_a_proactive_publish_caches_every_chunk_and_needs_no_pull(server):
    with trio.fail_after(10):
        async with registered(server.url, "PUBLS3", "READR4") as (owner, reader):
            await owner.own_channel(CHANNEL)
            await reader.subscribe(CHANNEL)
            assert await owner.publish(CHANNEL, {"ch_1": ONE, "ch_2": TWO}, proactive=True) == 2
            assert (await reader.wait_chunk_available(CHANNEL))["chunkIds"] == ["ch_1", "ch_2"]
            assert await reader.fetch_chunk("ch_2", CHANNEL) == data("ch_2", TWO, "cache")
            assert await reader.fetch_chunk("ch_1", CHANNEL) == data("ch_1", ONE, "cache")
            assert await pulls_sent(server.url) == 0
            await assert_quiet(owner, reader)
            assert not owner.set_aside


async def test_a_pull_that_crosses_a_proactive_push_is_answered_by_it(server):
    with trio.fail_after(10):
        async with registered(server.url, "PUBLS4", "READR5") as (owner, reader):
            await owner.own_channel(CHANNEL)
            await reader.subscribe(CHANNEL)
            # The reader asks between the announce and the push: the server pulls.
            assert await owner.announce_chunks(CHANNEL, [("ch_1", "route-1")]) == {
                "type": "chunk_announce_ack",
                "registered": 1,
            }
            await reader.wait_chunk_available(CHANNEL)
            assert (await reader.request_chunk("ch_1", CHANNEL))["type"] == "chunk_pulling"
            await owner.ping()  # the pull is in, and set aside
            assert [frame["type"] for frame in owner.set_aside] == ["chunk_pull"]
            assert await owner.publish(CHANNEL, {"ch_1": ONE}, proactive=True) == 1
            assert not owner.set_aside  # the push answered the pull
            assert await reader.wait_chunk_data("ch_1") == data("ch_1", ONE, "relay")
            # publish announced ch_1 again: subscribers hear of it again.
            assert (await reader.wait_chunk_available())["chunkIds"] == ["ch_1"]
            assert await pulls_sent(server.url) == 1
            await assert_quiet(owner, reader)


async def test_a_request_no_source_can_serve_raises_chunk_unavailable(server):
    with trio.fail_after(10):
        async with registered(server.url, "READR6", "PUBLS5") as (reader, owner):
            await reader.subscribe(CHANNEL)
            with pytest.raises(ChunkUnavailable, match="'missing' unavailable: No source") as e:
                await reader.fetch_chunk("missing", CHANNEL)
            assert (e.value.chunk_id, e.value.reason) == (
                "missing",
                "No source available for chunk",
            )
            assert e.value.frame == {
                "type": "chunk_error",
                "chunkId": "missing",
                "error": "No source available for chunk",
            }
            assert isinstance(e.value, ServerError)
            # A cached chunk asked for under another channel is refused the same way.
            await owner.own_channel(CHANNEL)
            await owner.publish(CHANNEL, {"ch_1": ONE}, proactive=True)
            await reader.wait_chunk_available(CHANNEL)
            with pytest.raises(ChunkUnavailable, match="another channel"):
                await reader.request_chunk("ch_1", "other-channel")
            await assert_quiet(reader, owner)


async def test_upstream_messages_reach_the_owner_or_wait_for_it(server):
    with trio.fail_after(10):
        async with registered(server.url, "READR7", "PUBLS6") as (reader, owner):
            key = new_key()
            await reader.subscribe(CHANNEL)
            queued = {"id": "up_1", "type": "reply", "encrypted_payload": "cXVldWVk"}
            # No owner online: the message is queued, and still acknowledged.
            assert await reader.upstream(CHANNEL, queued, key) == {
                "type": "upstream-ack",
                "channelId": CHANNEL,
                "messageId": "up_1",
            }
            # The owner gets it before its registration reply: own_channel sets it aside.
            assert (await owner.own_channel(CHANNEL))["type"] == "channel-owner-registered"
            forwarded = {
                "type": "upstream-message",
                "channelId": CHANNEL,
                "message": queued,
                "ephemeralPublicKey": key,
            }
            assert list(owner.set_aside) == [forwarded]
            assert await owner.wait_upstream(CHANNEL) == forwarded
            live = {"id": "up_2", "type": "vote", "encrypted_payload": "bGl2ZQ"}
            assert (await reader.upstream(CHANNEL, live, key))["messageId"] == "up_2"
            assert await owner.wait_upstream() == {**forwarded, "message": live}
            await assert_quiet(reader, owner)


async def test_a_live_stream_reaches_every_subscriber_in_order(server):
    with trio.fail_after(10):
        async with registered(server.url, "PUBLS7", "READR8", "READR9", "LATE33") as clients:
            owner, first, second, late = clients
            await owner.own_channel(CHANNEL)
            await first.subscribe(CHANNEL)
            await second.subscribe(CHANNEL)
            assert await owner.start_stream("s1", CHANNEL, "Live") == {
                "type": "stream-started",
                "streamId": "s1",
                "channelId": CHANNEL,
                "subscriberCount": 2,
            }
            for seq in range(3):
                await owner.send_stream_frame("s1", CHANNEL, {"seq": seq})
            start = {"type": "stream-start", "streamId": "s1", "channelId": CHANNEL}
            for reader in (first, second):
                assert await reader.wait_stream_event(CHANNEL) == {**start, "title": "Live"}
                for seq in range(3):
                    assert await reader.wait_stream_event() == {
                        "type": "stream-frame",
                        "streamId": "s1",
                        "channelId": CHANNEL,
                        "frame": {"seq": seq},
                    }
            # A subscriber who joins a live stream is told of it after its reply.
            await late.subscribe(CHANNEL)
            assert await late.wait_stream_event(CHANNEL) == {**start, "title": "Live"}
            assert await owner.end_stream("s1", CHANNEL) == {
                "type": "stream-ended",
                "streamId": "s1",
                "channelId": CHANNEL,
            }
            end = {"type": "stream-end", "streamId": "s1", "channelId": CHANNEL}
            for reader in (first, second, late):
                assert await reader.wait_stream_event(CHANNEL) == end
            await assert_quiet(*clients)


async def test_pushes_that_cross_a_call_are_set_aside_in_order(server):
    with trio.fail_after(10):
        async with registered(server.url, "PUBLS8", "READRA") as (owner, reader):
            key = new_key()
            await owner.own_channel(CHANNEL)
            await reader.subscribe(CHANNEL)
            await owner.publish(CHANNEL, {"ch_1": ONE})
            await owner.start_stream("s1", CHANNEL, "")
            # Both pushes reach the reader before the reply to its next call.
            await reader.upstream(CHANNEL, {"id": "up_1"}, key)
            assert [frame["type"] for frame in reader.set_aside] == [
                "chunk_available",
                "stream-start",
            ]
            assert (await reader.wait_stream_event())["type"] == "stream-start"
            assert (await reader.wait_chunk_available())["chunkIds"] == ["ch_1"]
            assert (await owner.wait_upstream())["message"] == {"id": "up_1"}
            assert await reader.unsubscribe(CHANNEL) == {
                "type": "channel-unsubscribed",
                "channelId": CHANNEL,
            }
            await owner.send_stream_frame("s1", CHANNEL, "no one hears this")
            await assert_quiet(owner, reader)


async def test_refusals_raise_server_error_with_the_error_frame(server):
    with trio.fail_after(10):
        async with registered(server.url, "PUBLS9", "THERB2") as (owner, other):
            await owner.own_channel(CHANNEL)
            with pytest.raises(ServerError) as caught:
                await other.own_channel(CHANNEL)
            assert caught.value.frame["code"] == "channel_owned"
            with pytest.raises(ServerError) as caught:
                await other.upstream(CHANNEL, {"id": "x"}, new_key())
            assert caught.value.frame["code"] == "not_subscribed"
            with pytest.raises(ServerError) as caught:
                await other.start_stream("s", CHANNEL, "")
            assert caught.value.frame["code"] == "not_owner"
            with pytest.raises(ServerError) as caught:
                await other.push_chunk("forged", CHANNEL, {"x": 1})
            assert caught.value.frame["code"] == "not_a_source"
            await assert_quiet(owner, other)


async def test_peer_id_is_sent_only_when_the_client_asks(server):
    with trio.fail_after(10):
        async with (
            connect_signal(server.url, send_peer_id=True) as app,
            connect_signal(server.url) as plain,
        ):
            sent: list[dict[str, Any]] = []
            for client, code in ((app, "APPAPP"), (plain, "PLAN22")):
                await client.register(code, new_key())
                record(client, sent)
            await app.own_channel(CHANNEL)
            await app.publish(CHANNEL, {"ch_1": ONE}, proactive=True)
            await plain.subscribe(CHANNEL)
            await plain.fetch_chunk("ch_1", CHANNEL)
            chunk_frames = [frame for frame in sent if frame["type"].startswith("chunk_")]
            assert [(frame["type"], frame.get("peerId")) for frame in chunk_frames] == [
                ("chunk_announce", "APPAPP"),
                ("chunk_push", "APPAPP"),
                ("chunk_request", None),
            ]
            assert "peerId" not in next(f for f in sent if f["type"] == "channel-owner-register")


def record(client: SignalClient, sent: list[dict[str, Any]]) -> None:
    """Make ``client`` append every frame it sends to ``sent``."""
    send = client.send

    async def recording(frame: dict[str, Any]) -> None:
        sent.append(frame)
        await send(frame)

    client.send = recording  # type: ignore[method-assign]


async def test_every_channel_wait_is_bounded(server):
    with trio.fail_after(10):
        async with connect_signal(server.url, timeout=0.2) as quiet:
            await quiet.register("QUTEQ2", new_key())
            await quiet.own_channel(CHANNEL)
            for wait, awaited in (
                (quiet.wait_chunk_available, "chunk_available"),
                (quiet.wait_chunk_pull, "chunk_pull"),
                (quiet.wait_chunk_data, "chunk_data/chunk_error"),
                (quiet.wait_upstream, "upstream-message"),
                (quiet.wait_stream_event, "stream-start/stream-frame/stream-end"),
            ):
                with pytest.raises(ReplyTimeout, match=rf"^no {awaited} within 0\.2 s$"):
                    await wait()
            with pytest.raises(ReplyTimeout, match=r"no chunk_pull/chunk_push_ack within 0\.2"):
                await quiet.serve_pulls({"ch_1": ONE}, count=1)
            await quiet.ping()  # still usable


def test_the_signal_client_knows_the_channel_pushes():
    assert {
        "upstream-message",
        "stream-start",
        "stream-frame",
        "stream-end",
        "chunk_available",
        "chunk_pull",
        "chunk_pulling",
        "chunk_data",
        "chunk_error",
    } <= SignalClient.PUSHES
