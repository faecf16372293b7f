"""Channels on ``/signal`` over real sockets (docs/protocol/channels.md): every message a
client sends, with the exact frames that come back; a channel published in chunks and fetched
with one pull per chunk; a late subscriber served from the cache; upstream messages; live
streams; and chunks moving between ``/signal`` and ``/relay``."""

from __future__ import annotations

import json
from typing import Any

import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._channels import (
    CHANNEL_OWNED,
    INVALID_CHANNEL,
    NOT_A_SOURCE,
    NOT_OWNER_END,
    NOT_OWNER_START,
    NOT_REGISTERED,
    NOT_SUBSCRIBED,
    PEER_ID_MISMATCH,
    announce,
    available,
    chunk_data,
    chunk_error,
    own,
    peer,
    peers,
    push,
    push_ack,
    receive_text,
    request,
    subscribe,
    upstream_ack,
    upstream_frame,
)
from tests.integration._http import stats, wait_stats
from tests.integration._raw import RawClient, port_of
from tests.integration._signal import assert_quiet, expect
from tests.integration.test_relay_flow import relays
from zajel.client import connect_signal, generate_public_key

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

CHANNEL = "5f0c1e9a7b3d42e8a1c6f0d9b2e4a7c3"
OTHER = "channel-other"
DATA = {"sealed": "c2VhbGVk", "signature": "sig", "n": [1, 2, 3]}


def data(n: int) -> dict[str, Any]:
    return {**DATA, "n": [n]}


# -- the client → server table, row by row ------------------------------------------------


async def test_channel_owner_register_confirms_and_a_second_live_owner_is_refused(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, other):
            await own(owner, CHANNEL)
            await own(owner, CHANNEL)  # its own channel again: confirmed again
            await other.send({"type": "channel-owner-register", "channelId": CHANNEL})
            await expect(other, CHANNEL_OWNED)
            await assert_quiet(owner, other)
            assert (await stats(server.url))["channels"]["owned"] == 1


async def test_channel_subscribe_is_idempotent(server):
    with trio.fail_after(10):
        async with peers(server.url, 1) as (subscriber,):
            await subscribe(subscriber, CHANNEL)
            await subscribe(subscriber, CHANNEL)
            await assert_quiet(subscriber)
            assert (await stats(server.url))["channels"]["subscriptions"] == 1


async def test_channel_unsubscribe_leaves_the_channel(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, subscriber):
            await own(owner, CHANNEL)
            await subscribe(subscriber, CHANNEL)
            await subscriber.send({"type": "channel-unsubscribe", "channelId": CHANNEL})
            await expect(subscriber, {"type": "channel-unsubscribed", "channelId": CHANNEL})
            # Idempotent, like subscribing.
            await subscriber.send({"type": "channel-unsubscribe", "channelId": CHANNEL})
            await expect(subscriber, {"type": "channel-unsubscribed", "channelId": CHANNEL})
            assert (await stats(server.url))["channels"]["subscriptions"] == 0
            # No longer told of the owner's chunks, and no longer allowed upstream.
            await announce(owner, CHANNEL, ["c1"])
            await subscriber.send(upstream_frame(CHANNEL, {"id": "up_1"}, "eph"))
            await expect(subscriber, NOT_SUBSCRIBED)
            await assert_quiet(owner, subscriber)


async def test_upstream_message_reaches_the_online_owner_and_is_acknowledged(server):
    message = {"id": "up_0a1b2c3d", "type": "reply", "encrypted_payload": "ZW5j"}
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, subscriber):
            await own(owner, CHANNEL)
            await subscribe(subscriber, CHANNEL)
            await subscriber.send(upstream_frame(CHANNEL, message, "ephemeral-key"))
            await expect(owner, upstream_frame(CHANNEL, message, "ephemeral-key"))
            await expect(subscriber, upstream_ack(CHANNEL, "up_0a1b2c3d"))
            # A message without an id is acknowledged with a null messageId.
            await subscriber.send(upstream_frame(CHANNEL, {"type": "vote"}, "k2"))
            await expect(owner, upstream_frame(CHANNEL, {"type": "vote"}, "k2"))
            await expect(subscriber, upstream_ack(CHANNEL, None))
            await assert_quiet(owner, subscriber)
            assert (await stats(server.url))["channels"]["queuedUpstream"] == 0


async def test_upstream_to_an_absent_owner_is_queued_and_delivered_before_its_confirmation(server):
    key = generate_public_key()
    first = {"id": "up_00000001", "type": "reply"}
    second = {"id": "up_00000002", "type": "reaction"}
    with trio.fail_after(10):
        async with peers(server.url, 1) as (subscriber,):
            async with peer(server.url, key=key) as owner:
                await own(owner, CHANNEL)
                await subscribe(subscriber, CHANNEL)
            await wait_stats(server.url, "channels", owned=0)
            await subscriber.send(upstream_frame(CHANNEL, first, "e1"))
            await expect(subscriber, upstream_ack(CHANNEL, "up_00000001"))
            await subscriber.send(upstream_frame(CHANNEL, second, "e2"))
            await expect(subscriber, upstream_ack(CHANNEL, "up_00000002"))
            assert (await stats(server.url))["channels"]["queuedUpstream"] == 2
            # The owner's device comes back (a new connection, the same public key): the queued
            # messages, oldest first, then the confirmation.
            async with peer(server.url, key=key) as device:
                await own(
                    device,
                    CHANNEL,
                    upstream_frame(CHANNEL, first, "e1"),
                    upstream_frame(CHANNEL, second, "e2"),
                )
                await assert_quiet(device)
                assert (await stats(server.url))["channels"]["queuedUpstream"] == 0


async def test_stream_start_frame_and_end(server):
    start = {"type": "stream-start", "streamId": "s1", "channelId": CHANNEL, "title": "Live"}
    with trio.fail_after(10):
        async with peers(server.url, 3) as (owner, alice, bob):
            await own(owner, CHANNEL)
            await subscribe(alice, CHANNEL)
            await subscribe(bob, CHANNEL)
            await owner.send(start)
            await expect(
                owner,
                {
                    "type": "stream-started",
                    "streamId": "s1",
                    "channelId": CHANNEL,
                    "subscriberCount": 2,
                },
            )
            await expect(alice, start)
            await expect(bob, start)
            assert (await stats(server.url))["channels"]["liveStreams"] == 1

            frame = {"type": "stream-frame", "streamId": "s1", "channelId": CHANNEL}
            await owner.send({**frame, "frame": {"seq": 1, "pcm": "AAEC"}})
            # Framed once for all: every subscriber gets the very same text.
            text = await receive_text(alice)
            assert await receive_text(bob) == text
            assert json.loads(text) == {**frame, "frame": {"seq": 1, "pcm": "AAEC"}}

            # A late subscriber is told of the live stream after its confirmation.
            async with peers(server.url, 1) as (late,):
                await subscribe(late, CHANNEL, start)
                await owner.send({"type": "stream-end", "streamId": "s1", "channelId": CHANNEL})
                end = {"type": "stream-end", "streamId": "s1", "channelId": CHANNEL}
                for subscriber in (alice, bob, late):
                    await expect(subscriber, end)
                await expect(
                    owner, {"type": "stream-ended", "streamId": "s1", "channelId": CHANNEL}
                )
                await assert_quiet(owner, alice, bob, late)
            assert (await stats(server.url))["channels"]["liveStreams"] == 0


async def test_stream_start_and_end_by_a_non_owner_are_refused(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, subscriber):
            await own(owner, CHANNEL)
            await subscribe(subscriber, CHANNEL)
            await subscriber.send(
                {"type": "stream-start", "streamId": "s", "channelId": CHANNEL, "title": "t"}
            )
            await expect(subscriber, NOT_OWNER_START)
            # No live stream: even the owner cannot end one.
            await owner.send({"type": "stream-end", "streamId": "s", "channelId": CHANNEL})
            await expect(owner, NOT_OWNER_END)
            await owner.send(
                {"type": "stream-start", "streamId": "s", "channelId": CHANNEL, "title": ""}
            )
            await owner.expect("stream-started")
            await subscriber.expect("stream-start")
            await subscriber.send({"type": "stream-end", "streamId": "s", "channelId": CHANNEL})
            await expect(subscriber, NOT_OWNER_END)
            await assert_quiet(owner, subscriber)


async def test_chunk_announce_by_the_owner_tells_the_other_subscribers(server):
    with trio.fail_after(10):
        async with peers(server.url, 3) as (owner, alice, bob):
            await own(owner, CHANNEL)
            await subscribe(owner, CHANNEL)  # the announcer itself is not told
            await subscribe(alice, CHANNEL)
            await subscribe(bob, CHANNEL)
            await announce(owner, CHANNEL, ["c1", "c2"])
            await expect(alice, available(CHANNEL, ["c1", "c2"]))
            await expect(bob, available(CHANNEL, ["c1", "c2"]))
            # Invalid entries are skipped and not counted; only the valid ones are announced.
            await owner.send(
                {
                    "type": "chunk_announce",
                    "channelId": CHANNEL,
                    "chunks": [{"chunkId": "c3"}, {"chunkId": ""}, {"routingHash": "r"}, 7],
                }
            )
            await expect(owner, {"type": "chunk_announce_ack", "registered": 1})
            await expect(alice, available(CHANNEL, ["c3"]))
            await expect(bob, available(CHANNEL, ["c3"]))
            # Without a channel: sources recorded, nobody told.
            await announce(owner, None, ["c4"])
            await assert_quiet(owner, alice, bob)
            assert (await stats(server.url))["chunks"]["totalSources"] == 4


async def test_chunk_request_with_no_source_gets_chunk_error(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (holder, asker):
            await request(asker, CHANNEL, "nowhere")
            await expect(asker, chunk_error("nowhere", "No source available for chunk"))
            # Its own announce does not make the requester a source for itself.
            await announce(holder, CHANNEL, ["mine"])
            await request(holder, CHANNEL, "mine")
            await expect(holder, chunk_error("mine", "No source available for chunk"))
            await assert_quiet(holder, asker)
            counts = (await stats(server.url))["chunks"]
            assert counts["pendingRequests"] == 0
            assert counts["pullsSent"] == 0


async def test_chunk_push_is_cached_when_unasked_and_refused_from_a_non_source(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, stranger):
            await stranger.send(
                {"type": "chunk_push", "chunkId": "c1", "channelId": CHANNEL, "data": DATA}
            )
            await expect(stranger, NOT_A_SOURCE)
            await announce(owner, CHANNEL, ["c1"])
            # A proactive push (nobody waits): cached, serving nobody.
            await push(owner, CHANNEL, "c1", DATA)
            await request(stranger, CHANNEL, "c1")
            await expect(stranger, chunk_data("c1", DATA, "cache", CHANNEL))
            # A JSON string is a valid payload too, sent on as it came.
            await announce(owner, CHANNEL, ["c2"])
            await push(owner, CHANNEL, "c2", '{"sealed":"x"}')
            await request(stranger, CHANNEL, "c2")
            await expect(stranger, chunk_data("c2", '{"sealed":"x"}', "cache", CHANNEL))
            await assert_quiet(owner, stranger)
            assert (await stats(server.url))["chunks"]["cachedChunks"] == 2


# -- a channel published and followed -----------------------------------------------------


async def test_three_chunks_reach_two_subscribers_with_one_pull_each(server):
    ids = ["ch_9f1e_000", "ch_9f1e_001", "ch_9f1e_002"]
    with trio.fail_after(10):
        async with peers(server.url, 3) as (owner, alice, bob):
            await own(owner, CHANNEL)
            await subscribe(alice, CHANNEL)
            await subscribe(bob, CHANNEL)
            await announce(owner, CHANNEL, ids, peerId=owner.code)
            for subscriber in (alice, bob):
                await expect(subscriber, available(CHANNEL, ids))

            # Both ask for every chunk before any arrives.
            for subscriber in (alice, bob):
                for chunk_id in ids:
                    await request(subscriber, CHANNEL, chunk_id)
            for subscriber in (alice, bob):
                for chunk_id in ids:
                    await expect(subscriber, {"type": "chunk_pulling", "chunkId": chunk_id})
            # One pull per chunk, however many wait.
            for chunk_id in ids:
                await expect(
                    owner, {"type": "chunk_pull", "chunkId": chunk_id, "channelId": CHANNEL}
                )
            await assert_quiet(owner)

            for n, chunk_id in enumerate(ids):
                await push(owner, CHANNEL, chunk_id, data(n), served=2)
            for n, chunk_id in enumerate(ids):
                # One frame encoded once for both.
                text = await receive_text(alice)
                assert await receive_text(bob) == text
                assert json.loads(text) == chunk_data(chunk_id, data(n), "relay", CHANNEL)
            await assert_quiet(owner, alice, bob)
            counts = (await stats(server.url))["chunks"]
            assert counts["pullsSent"] == 3
            assert counts["cachedChunks"] == 3
            assert counts["pendingRequests"] == 0


async def test_a_late_subscriber_gets_the_cached_ids_oldest_first_and_the_cache_serves_it(
    server,
):
    # Cached in this order, which is neither sorted nor reversed.
    ids = ["ch_m_000", "ch_z_001", "ch_a_002", "ch_q_003"]
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, early):
            await own(owner, CHANNEL)
            await announce(owner, CHANNEL, ids)
            for n, chunk_id in enumerate(ids):
                await push(owner, CHANNEL, chunk_id, data(n))
            # A cache hit on the oldest makes it the most recently used; the order stays.
            await request(early, CHANNEL, ids[0])
            await expect(early, chunk_data(ids[0], data(0), "cache", CHANNEL))

            async with peers(server.url, 1) as (late,):
                await subscribe(late, CHANNEL, available(CHANNEL, ids))
                for chunk_id in ids:
                    await request(late, CHANNEL, chunk_id)
                for n, chunk_id in enumerate(ids):
                    await expect(late, chunk_data(chunk_id, data(n), "cache", CHANNEL))
                await assert_quiet(owner, early, late)
            counts = (await stats(server.url))["chunks"]
            assert counts["pullsSent"] == 0
            assert counts["cacheHits"] == 5
            # Another channel's subscriber is shown none of them.
            async with peers(server.url, 1) as (elsewhere,):
                await subscribe(elsewhere, OTHER)
                await assert_quiet(elsewhere)


async def test_a_subscriber_joining_a_live_stream_with_cached_chunks_is_told_both_in_order(
    server,
):
    start = {"type": "stream-start", "streamId": "s1", "channelId": CHANNEL, "title": "Live"}
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, late):
            await own(owner, CHANNEL)
            await announce(owner, CHANNEL, ["c1", "c2"])
            await push(owner, CHANNEL, "c2", data(2))
            await push(owner, CHANNEL, "c1", data(1))
            await owner.send(start)
            await owner.expect("stream-started")
            await subscribe(late, CHANNEL, start, available(CHANNEL, ["c2", "c1"]))
            await assert_quiet(owner, late)


async def test_a_pull_that_times_out_moves_to_the_next_source(server, clock):
    with trio.fail_after(11 + 10):  # 11 s of it are a clock jump
        async with peers(server.url, 3) as (first, second, asker):
            await announce(first, CHANNEL, ["c1"])
            await announce(second, CHANNEL, ["c1"])
            await request(asker, CHANNEL, "c1")
            await expect(asker, {"type": "chunk_pulling", "chunkId": "c1"})
            # The most recently announced source first.
            await expect(second, {"type": "chunk_pull", "chunkId": "c1", "channelId": CHANNEL})
            await assert_quiet(first)
            clock.jump(11)  # the pull time-out is 10 s
            await expect(first, {"type": "chunk_pull", "chunkId": "c1", "channelId": CHANNEL})
            await push(first, CHANNEL, "c1", DATA, served=1)
            await expect(asker, chunk_data("c1", DATA, "relay", CHANNEL))
            # The late push of the source that timed out changes nothing.
            await push(second, CHANNEL, "c1", data(9))
            await assert_quiet(first, second, asker)
            assert (await stats(server.url))["chunks"]["pullsSent"] == 2


# -- chunks between /signal and /relay ----------------------------------------------------


async def test_a_chunk_pushed_on_signal_is_served_on_relay_in_the_relay_shape(server):
    with trio.fail_after(10):
        async with peers(server.url, 1) as (owner,), relays(server.url, "reader") as (reader,):
            await own(owner, CHANNEL)
            await announce(owner, CHANNEL, ["cached", "pulled"])
            await push(owner, CHANNEL, "cached", DATA)
            # From the cache: no channelId unless the /relay request named one.
            await reader.send({"type": "chunk_request", "chunkId": "cached"})
            await expect(reader, chunk_data("cached", DATA, "cache", None))
            await reader.send({"type": "chunk_request", "chunkId": "cached", "channelId": CHANNEL})
            await expect(reader, chunk_data("cached", DATA, "cache", CHANNEL))
            # Pulled for a waiting /relay requester: the /signal source is asked with its
            # announce's channel; the /relay requester gets the /relay shape.
            await reader.send({"type": "chunk_request", "chunkId": "pulled"})
            await expect(owner, {"type": "chunk_pull", "chunkId": "pulled", "channelId": CHANNEL})
            await push(owner, CHANNEL, "pulled", data(2), served=1)
            await expect(reader, chunk_data("pulled", data(2), "relay", None))
            await assert_quiet(owner, reader)


async def test_a_chunk_pushed_on_relay_after_a_pull_is_served_on_signal_with_its_channel(server):
    with trio.fail_after(10):
        async with (
            peers(server.url, 2) as (asker, late),
            relays(server.url, "relay-source") as (source,),
        ):
            await source.send(
                {"type": "chunk_announce", "chunks": [{"chunkId": "r1", "routingHash": "h"}]}
            )
            await expect(source, {"type": "chunk_announce_ack", "registered": 1})
            await request(asker, CHANNEL, "r1")
            await expect(asker, {"type": "chunk_pulling", "chunkId": "r1"})
            await expect(source, {"type": "chunk_pull", "chunkId": "r1", "channelId": CHANNEL})
            await source.send({"type": "chunk_push", "chunkId": "r1", "data": DATA})
            await expect(source, {"type": "chunk_push_ack", "chunkId": "r1"})
            await expect(asker, chunk_data("r1", DATA, "relay", CHANNEL))
            # Cached for the channel it was asked for: shown to a subscriber, served to it, and
            # refused to a request naming another channel.
            await subscribe(late, CHANNEL, available(CHANNEL, ["r1"]))
            await request(late, CHANNEL, "r1")
            await expect(late, chunk_data("r1", DATA, "cache", CHANNEL))
            await request(late, OTHER, "r1")
            await expect(late, chunk_error("r1", "Chunk belongs to another channel"))
            await assert_quiet(asker, late, source)


# -- errors common to every message -------------------------------------------------------

VALID: list[dict[str, Any]] = [
    {"type": "channel-owner-register", "channelId": CHANNEL},
    {"type": "channel-subscribe", "channelId": CHANNEL},
    {"type": "channel-unsubscribe", "channelId": CHANNEL},
    {
        "type": "upstream-message",
        "channelId": CHANNEL,
        "message": {"id": "up_1"},
        "ephemeralPublicKey": "k",
    },
    {"type": "stream-start", "streamId": "s", "channelId": CHANNEL, "title": "t"},
    {"type": "stream-frame", "streamId": "s", "channelId": CHANNEL, "frame": {"f": 1}},
    {"type": "stream-end", "streamId": "s", "channelId": CHANNEL},
    {"type": "chunk_announce", "channelId": CHANNEL, "chunks": [{"chunkId": "c"}]},
    {"type": "chunk_request", "chunkId": "c", "channelId": CHANNEL},
    {"type": "chunk_push", "chunkId": "c", "channelId": CHANNEL, "data": DATA},
]


async def test_every_channel_message_needs_a_registered_pairing_code(server):
    with trio.fail_after(10):
        async with connect_signal(server.url) as anonymous:
            for frame in VALID:
                await anonymous.send(frame)
                await expect(anonymous, NOT_REGISTERED)
                # Registration is checked before the fields.
                await anonymous.send({**frame, "channelId": ""})
                await expect(anonymous, NOT_REGISTERED)
            await assert_quiet(anonymous)
            channels = (await stats(server.url))["channels"]
            assert channels == {
                "owned": 0,
                "subscriptions": 0,
                "queuedUpstream": 0,
                "liveStreams": 0,
            }


async def test_an_invalid_channel_id_is_refused_by_every_message(server):
    with trio.fail_after(10):
        async with peers(server.url, 1) as (client,):
            for frame in VALID:
                for bad in ("", "x" * 257, 42, ["c"], {"id": "c"}):
                    await client.send({**frame, "channelId": bad})
                    await expect(client, INVALID_CHANNEL)
                if frame["type"] != "chunk_announce":  # where it is optional
                    await client.send({k: v for k, v in frame.items() if k != "channelId"})
                    await expect(client, INVALID_CHANNEL)
                    await client.send({**frame, "channelId": None})
                    await expect(client, INVALID_CHANNEL)
            await assert_quiet(client)
            assert (await stats(server.url))["channels"]["subscriptions"] == 0
            # 256 characters is a channel id.
            await subscribe(client, "x" * 256)


async def test_a_peer_id_other_than_the_pairing_code_is_refused(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (holder, other):
            assert other.code is not None
            for frame in VALID[-3:]:
                await holder.send({**frame, "peerId": other.code})
                await expect(holder, PEER_ID_MISMATCH)
            await assert_quiet(holder)
            # Nothing was recorded: no source, no request, nothing cached.
            counts = (await stats(server.url))["chunks"]
            assert (counts["totalSources"], counts["pendingRequests"], counts["cachedChunks"]) == (
                0,
                0,
                0,
            )
            # Its own code is accepted.
            await holder.send({**VALID[-3], "peerId": holder.code})
            await expect(holder, {"type": "chunk_announce_ack", "registered": 1})
            await holder.send({**VALID[-1], "peerId": holder.code})
            await expect(holder, push_ack("c", 0))


async def test_the_field_rules_of_the_channel_messages(server):
    with trio.fail_after(10):
        async with peers(server.url, 1) as (client,):
            bad_frames = [
                {"type": "chunk_announce", "channelId": CHANNEL, "chunks": []},
                {
                    "type": "chunk_announce",
                    "channelId": CHANNEL,
                    "chunks": [{"chunkId": f"c{n}"} for n in range(101)],
                },
                {"type": "chunk_announce", "channelId": CHANNEL, "chunks": "c1"},
                {"type": "chunk_request", "chunkId": "", "channelId": CHANNEL},
                {"type": "chunk_request", "chunkId": "c" * 257, "channelId": CHANNEL},
                {"type": "chunk_push", "chunkId": "c", "channelId": CHANNEL, "data": 5},
                {"type": "chunk_push", "chunkId": "c", "channelId": CHANNEL, "data": None},
                {"type": "chunk_push", "chunkId": "c", "channelId": CHANNEL},
                {"type": "upstream-message", "channelId": CHANNEL, "ephemeralPublicKey": "k"},
                {
                    "type": "upstream-message",
                    "channelId": CHANNEL,
                    "message": "text",
                    "ephemeralPublicKey": "k",
                },
                {"type": "upstream-message", "channelId": CHANNEL, "message": {"id": "u"}},
                {"type": "stream-start", "channelId": CHANNEL, "title": "t"},
                {"type": "stream-frame", "streamId": "s", "channelId": CHANNEL},
                {"type": "stream-end", "streamId": 7, "channelId": CHANNEL},
                {"type": "chunk_request", "chunkId": "c", "channelId": CHANNEL, "peerId": 5},
            ]
            for frame in bad_frames:
                await client.send(frame)
                reply = await client.receive()
                assert reply["type"] == "error", (frame, reply)
                assert reply["code"] == "invalid_field", (frame, reply)
            await assert_quiet(client)
            counts = await stats(server.url)
            assert counts["chunks"]["totalSources"] == 0
            assert counts["channels"]["liveStreams"] == 0


async def test_frames_in_one_write_are_handled_in_order_across_both_services(server):
    """``register`` goes to the SignalingRoom and the channel frames behind it to the
    ChunkIndex; sent in one write, each still sees the registration before it, and the replies
    come in the order of the frames (docs/architecture.md, "Identity")."""
    with trio.fail_after(10):
        client = await RawClient.connect(port_of(server.url))
        await client.send(
            {"type": "register", "pairingCode": "QQQ234"},
            {"type": "channel-owner-register", "channelId": "order"},
            {"type": "ping"},
            {"type": "channel-subscribe", "channelId": "order"},
            {"type": "register", "pairingCode": "RRR234"},
            {"type": "chunk_request", "peerId": "RRR234", "chunkId": "c", "channelId": "order"},
        )
        replies = [await client.receive() for _ in range(6)]
        await client.hang_up()
    assert [reply["type"] for reply in replies] == [
        "registered",
        "channel-owner-registered",
        "pong",
        "channel-subscribed",
        "registered",
        "chunk_error",  # no source: and not peer_id_mismatch, the new code is already known
    ]
    assert replies[4]["pairingCode"] == "RRR234"
