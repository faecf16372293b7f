"""The channel dialect's hardened rules over real sockets (docs/protocol/channels.md): a left
owner's channel held for its public key, upstream refused to non-subscribers and rate limited,
only the owner's announces shown to subscribers, a cached chunk bound to its channel and never
replaced, streams only from their owner, full-size chunks, and what a closed connection
leaves behind. Timers are driven with the server's mock clock."""

from __future__ import annotations

import base64
import json
import os

import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._channels import (
    CHANNEL_HELD,
    CHANNEL_OWNED,
    NOT_SUBSCRIBED,
    UPSTREAM_LIMITED,
    announce,
    available,
    chunk_data,
    chunk_error,
    keyless_peer,
    own,
    peer,
    peers,
    push,
    push_ack,
    request,
    subscribe,
    too_large,
    upstream_ack,
    upstream_frame,
)
from tests.integration._http import stats, wait_stats
from tests.integration._signal import assert_quiet, expect
from tests.integration.test_relay_flow import relays
from zajel.client import generate_public_key

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

CHANNEL = "0d6f3b8e2a914c57b1e0a9f4c2d7e683"
OTHER = "6a1c9e0f4b2d8a735e1f0c9b8d2a4e61"
GRACE_S = 3600.0  # CHANNEL_OWNER_GRACE_S by default
OTHER_CHANNEL = "Chunk belongs to another channel"
DATA = {"sealed": "b3JpZ2luYWw=", "signature": "sig"}


# -- a left owner's channel -----------------------------------------------------------------


async def test_a_left_owners_channel_is_held_for_its_key_then_free(server, clock):
    key = generate_public_key()
    queued = upstream_frame(CHANNEL, {"id": "up_00000001"}, "eph")
    with trio.fail_after(GRACE_S + 10 + 10):  # GRACE_S + 10 of it are clock jumps
        async with peers(server.url, 2) as (subscriber, stranger):
            async with peer(server.url, key=key) as owner:
                await own(owner, CHANNEL)
                await subscribe(subscriber, CHANNEL)
                # While the owner is online, not even another device of its key takes over.
                async with peer(server.url, key=key) as device:
                    await device.send({"type": "channel-owner-register", "channelId": CHANNEL})
                    await expect(device, CHANNEL_OWNED)
            await wait_stats(server.url, "channels", owned=0)

            # Within the grace: a message for the owner is queued; a stranger may not take the
            # channel and so never reads it.
            await subscriber.send(queued)
            await expect(subscriber, upstream_ack(CHANNEL, "up_00000001"))
            await stranger.send({"type": "channel-owner-register", "channelId": CHANNEL})
            await expect(stranger, CHANNEL_HELD)
            await assert_quiet(stranger)
            assert (await stats(server.url))["channels"] == {
                "owned": 0,
                "subscriptions": 1,
                "queuedUpstream": 1,
                "liveStreams": 0,
            }
            # The owner's device (the same key, a new connection and code) takes it and gets
            # the queued message before its confirmation; then it leaves too.
            async with peer(server.url, key=key) as device:
                await own(device, CHANNEL, queued)
            await wait_stats(server.url, "channels", owned=0, queuedUpstream=0)

            clock.jump(GRACE_S - 10)
            await stranger.send({"type": "channel-owner-register", "channelId": CHANNEL})
            await expect(stranger, CHANNEL_HELD)
            await assert_quiet(stranger, subscriber)

            clock.jump(20)
            await stats(server.url)  # the service fires its due timers first
            # After the grace anyone may take it (and then holds it against the old key).
            await own(stranger, CHANNEL)
            async with peer(server.url, key=key) as device:
                await device.send({"type": "channel-owner-register", "channelId": CHANNEL})
                await expect(device, CHANNEL_OWNED)
            await assert_quiet(stranger, subscriber)
            assert (await stats(server.url))["channels"]["owned"] == 1


async def test_a_channel_whose_owner_gave_no_key_is_free_once_it_leaves(server):
    with trio.fail_after(10):
        async with peers(server.url, 1) as (stranger,):
            async with keyless_peer(server.url) as owner:
                await own(owner, CHANNEL)
            await wait_stats(server.url, "channels", owned=0)
            await own(stranger, CHANNEL)


async def test_queued_upstream_messages_expire_after_five_minutes(server, clock):
    key = generate_public_key()
    old = upstream_frame(CHANNEL, {"id": "up_old"}, "e1")
    young = upstream_frame(CHANNEL, {"id": "up_young"}, "e2")
    with trio.fail_after(310 + 10):  # 310 s of it are clock jumps
        async with peers(server.url, 1) as (subscriber,):
            async with peer(server.url, key=key) as owner:
                await own(owner, CHANNEL)
                await subscribe(subscriber, CHANNEL)
            await wait_stats(server.url, "channels", owned=0)
            await subscriber.send(old)
            await expect(subscriber, upstream_ack(CHANNEL, "up_old"))
            clock.jump(200)
            await subscriber.send(young)
            await expect(subscriber, upstream_ack(CHANNEL, "up_young"))
            clock.jump(110)  # the first is 310 s old, the second 110 s
            assert (await stats(server.url))["channels"]["queuedUpstream"] == 1
            async with peer(server.url, key=key) as device:
                await own(device, CHANNEL, young)
                await assert_quiet(device)


# -- upstream messages ------------------------------------------------------------------------


async def test_upstream_from_a_connection_not_subscribed_is_refused(server):
    with trio.fail_after(10):
        async with peers(server.url, 3) as (owner, subscriber, outsider):
            await own(owner, CHANNEL)
            await subscribe(subscriber, CHANNEL)
            await subscribe(outsider, OTHER)
            await outsider.send(upstream_frame(CHANNEL, {"id": "up_x"}, "k"))
            await expect(outsider, NOT_SUBSCRIBED)
            # The owner itself is not a subscriber of its channel.
            await owner.send(upstream_frame(CHANNEL, {"id": "up_y"}, "k"))
            await expect(owner, NOT_SUBSCRIBED)
            # A channel nobody knows.
            await outsider.send(upstream_frame("nobody-knows", {"id": "up_z"}, "k"))
            await expect(outsider, NOT_SUBSCRIBED)
            await assert_quiet(owner, subscriber, outsider)
            assert (await stats(server.url))["channels"]["queuedUpstream"] == 0


async def test_the_31st_upstream_message_in_a_minute_is_rate_limited(server, clock):
    with trio.fail_after(61 + 10):  # 61 s of it are a clock jump
        async with peers(server.url, 3) as (owner, sender, other):
            await own(owner, CHANNEL)
            await subscribe(sender, CHANNEL)
            await subscribe(other, CHANNEL)
            for n in range(30):
                await sender.send(upstream_frame(CHANNEL, {"id": f"up_{n}"}, "k"))
                await expect(sender, upstream_ack(CHANNEL, f"up_{n}"))
            await sender.send(upstream_frame(CHANNEL, {"id": "up_30"}, "k"))
            await expect(sender, UPSTREAM_LIMITED)
            for n in range(30):
                await expect(owner, upstream_frame(CHANNEL, {"id": f"up_{n}"}, "k"))
            # The limit is per connection: another subscriber is not affected.
            await other.send(upstream_frame(CHANNEL, {"id": "up_other"}, "k"))
            await expect(other, upstream_ack(CHANNEL, "up_other"))
            await expect(owner, upstream_frame(CHANNEL, {"id": "up_other"}, "k"))
            await assert_quiet(owner, sender, other)
            # A minute later the sender may go on.
            clock.jump(61)
            await sender.send(upstream_frame(CHANNEL, {"id": "up_31"}, "k"))
            await expect(sender, upstream_ack(CHANNEL, "up_31"))
            await expect(owner, upstream_frame(CHANNEL, {"id": "up_31"}, "k"))


async def test_an_absent_owners_queue_holds_100_messages_and_drops_newer_ones(server):
    key = generate_public_key()
    senders = 4  # 30 a minute each: 101 messages take four connections
    with trio.fail_after(10):
        async with peers(server.url, senders) as subscribers:
            async with peer(server.url, key=key) as owner:
                await own(owner, CHANNEL)
                for subscriber in subscribers:
                    await subscribe(subscriber, CHANNEL)
            await wait_stats(server.url, "channels", owned=0)
            sent = []
            for n in range(101):
                subscriber = subscribers[n % senders]
                frame = upstream_frame(CHANNEL, {"id": f"up_{n:03d}"}, "k")
                await subscriber.send(frame)
                # Acknowledged, the dropped 101st too.
                await expect(subscriber, upstream_ack(CHANNEL, f"up_{n:03d}"))
                sent.append(frame)
            assert (await stats(server.url))["channels"]["queuedUpstream"] == 100
            async with peer(server.url, key=key) as device:
                await own(device, CHANNEL, *sent[:100])
                await assert_quiet(device)


# -- who may tell subscribers of new chunks ----------------------------------------------------


async def test_only_the_owners_announce_or_its_keys_tells_the_subscribers(server):
    key = generate_public_key()
    with trio.fail_after(10):
        async with peers(server.url, 3) as (alice, bob, stranger):
            async with peer(server.url, key=key) as owner:
                await own(owner, CHANNEL)
                await subscribe(alice, CHANNEL)
                await subscribe(bob, CHANNEL)
                # A subscriber's announce registers its sources and tells nobody.
                await announce(alice, CHANNEL, ["fake-1"])
                await announce(stranger, CHANNEL, ["fake-2"])
                await assert_quiet(alice, bob, owner)
                # The owner's.
                await announce(owner, CHANNEL, ["own-1"])
                await expect(alice, available(CHANNEL, ["own-1"]))
                await expect(bob, available(CHANNEL, ["own-1"]))
                # Another connection of the owner's key (a second device) while it owns.
                async with peer(server.url, key=key) as device:
                    await announce(device, CHANNEL, ["device-1"])
                    await expect(alice, available(CHANNEL, ["device-1"]))
                    await expect(bob, available(CHANNEL, ["device-1"]))
            await wait_stats(server.url, "channels", owned=0)
            # The owner reconnected, before it owns the channel again (it is held for its key).
            async with peer(server.url, key=key) as back:
                await announce(back, CHANNEL, ["back-1"])
                await expect(alice, available(CHANNEL, ["back-1"]))
                await expect(bob, available(CHANNEL, ["back-1"]))
            await announce(stranger, CHANNEL, ["fake-3"])
            await assert_quiet(alice, bob, stranger)


# -- a cached chunk belongs to its channel ---------------------------------------------------


async def test_a_cached_chunk_is_served_only_to_its_own_channel(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, asker):
            await own(owner, CHANNEL)
            await announce(owner, CHANNEL, ["c1", "c2"])
            await push(owner, CHANNEL, "c1", DATA)
            await request(asker, OTHER, "c1")
            await expect(asker, chunk_error("c1", OTHER_CHANNEL))
            await request(asker, CHANNEL, "c1")
            await expect(asker, chunk_data("c1", DATA, "cache", CHANNEL))
            # A requester waiting in another channel's name is refused when the push comes; the
            # pull names the channel the owner announced, not the one the requester made up.
            await request(asker, OTHER, "c2")
            await expect(asker, {"type": "chunk_pulling", "chunkId": "c2"})
            await expect(owner, {"type": "chunk_pull", "chunkId": "c2", "channelId": CHANNEL})
            await push(owner, CHANNEL, "c2", DATA)
            await expect(asker, chunk_error("c2", OTHER_CHANNEL))
            await assert_quiet(owner, asker)
            # Other channels' subscribers are not shown it.
            async with peers(server.url, 1) as (elsewhere,):
                await subscribe(elsewhere, OTHER)
                await assert_quiet(elsewhere)


async def test_a_push_never_replaces_a_cached_copy(server):
    forged = {"sealed": "Zm9yZ2Vk", "signature": "forged"}
    with trio.fail_after(10):
        async with peers(server.url, 3) as (owner, mallory, asker):
            await own(owner, CHANNEL)
            await announce(owner, CHANNEL, ["c1"])
            await push(owner, CHANNEL, "c1", DATA)
            # Another source of the same id, for its own channel or the same one.
            await announce(mallory, OTHER, ["c1"])
            await push(mallory, OTHER, "c1", forged)
            await announce(mallory, CHANNEL, ["c1"])
            await push(mallory, CHANNEL, "c1", forged)
            # The owner itself cannot replace it either.
            await push(owner, CHANNEL, "c1", forged)
            await request(asker, CHANNEL, "c1")
            await expect(asker, chunk_data("c1", DATA, "cache", CHANNEL))
            await request(asker, OTHER, "c1")
            await expect(asker, chunk_error("c1", OTHER_CHANNEL))
            await assert_quiet(owner, mallory, asker)
            assert (await stats(server.url))["chunks"]["cachedChunks"] == 1


async def test_the_owner_is_pulled_before_a_stranger_who_announced_its_chunk_later(server):
    """A stranger who saw the ids in ``chunk_available`` announces them too, and is then the
    most recently announced source: the owner is pulled all the same, and its data cached."""
    forged = {"sealed": "Zm9yZ2Vk", "signature": "forged"}
    with trio.fail_after(10):
        async with peers(server.url, 3) as (owner, mallory, asker):
            await own(owner, CHANNEL)
            await subscribe(mallory, CHANNEL)
            await announce(owner, CHANNEL, ["c1"])
            await expect(mallory, available(CHANNEL, ["c1"]))
            await announce(mallory, CHANNEL, ["c1"])
            await request(asker, CHANNEL, "c1")
            await expect(owner, {"type": "chunk_pull", "chunkId": "c1", "channelId": CHANNEL})
            await push(owner, CHANNEL, "c1", DATA, served=1)
            await expect(asker, {"type": "chunk_pulling", "chunkId": "c1"})
            await expect(asker, chunk_data("c1", DATA, "relay", CHANNEL))
            await mallory.send(
                {"type": "chunk_push", "chunkId": "c1", "channelId": CHANNEL, "data": forged}
            )
            await expect(mallory, push_ack("c1", 0))
            await assert_quiet(owner, mallory, asker)
            await request(asker, CHANNEL, "c1")
            await expect(asker, chunk_data("c1", DATA, "cache", CHANNEL))


# -- streams ----------------------------------------------------------------------------------


async def test_a_stream_frame_from_anyone_but_the_streams_owner_is_dropped_silently(server):
    key = generate_public_key()
    frame = {"type": "stream-frame", "streamId": "s1", "channelId": CHANNEL, "frame": "AAEC"}
    with trio.fail_after(10):
        async with (
            peer(server.url, key=key) as owner,
            peer(server.url, key=key) as device,
            peers(server.url, 3) as (alice, bob, stranger),
        ):
            await own(owner, CHANNEL)
            await subscribe(alice, CHANNEL)
            await subscribe(bob, CHANNEL)
            await owner.send(frame)  # no live stream yet
            await assert_quiet(owner, alice, bob)
            await owner.send(
                {"type": "stream-start", "streamId": "s1", "channelId": CHANNEL, "title": "t"}
            )
            await owner.expect("stream-started")
            await alice.expect("stream-start")
            await bob.expect("stream-start")
            for sender in (alice, stranger, device):
                await sender.send(frame)
            await assert_quiet(owner, device, alice, bob, stranger)
            await owner.send(frame)
            await expect(alice, frame)
            await expect(bob, frame)
            await assert_quiet(owner, alice, bob)


async def test_the_owner_leaving_ends_its_stream(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (alice, bob):
            async with peers(server.url, 1) as (owner,):
                await own(owner, CHANNEL)
                await subscribe(alice, CHANNEL)
                await subscribe(bob, CHANNEL)
                await owner.send(
                    {"type": "stream-start", "streamId": "s9", "channelId": CHANNEL, "title": ""}
                )
                await owner.expect("stream-started")
                await alice.expect("stream-start")
                await bob.expect("stream-start")
                assert (await stats(server.url))["channels"]["liveStreams"] == 1
            end = {"type": "stream-end", "streamId": "s9", "channelId": CHANNEL}
            await expect(alice, end)
            await expect(bob, end)
            await assert_quiet(alice, bob)
            assert (await stats(server.url))["channels"]["liveStreams"] == 0
            async with peers(server.url, 1) as (late,):
                await subscribe(late, CHANNEL)  # no stream-start: none is live
                await assert_quiet(late)


# -- full-size chunks -------------------------------------------------------------------------


def full_chunk() -> dict[str, object]:
    """A chunk as the apps cut it: 64 KiB of ciphertext, base64 in a JSON object (~88 KB)."""
    return {
        "chunk_id": "ch_0123456789abcdef_000",
        "routing_hash": "9c1d0e4f2a7b3c6d8e0f1a2b3c4d5e6f",
        "sequence": 1,
        "chunk_index": 0,
        "total_chunks": 1,
        "size": 65536,
        "signature": base64.b64encode(os.urandom(64)).decode(),
        "author_pubkey": base64.b64encode(os.urandom(32)).decode(),
        "encrypted_payload": base64.b64encode(os.urandom(65536)).decode(),
    }


def compact_size(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


async def test_a_full_size_chunk_fits_on_signal_and_the_limit_is_exact(server):
    chunk = full_chunk()
    size = compact_size(chunk)
    assert 65536 < size < 131072
    at_limit = {"p": "x" * (131072 - 8)}
    over = {"p": "x" * (131073 - 8)}
    assert (compact_size(at_limit), compact_size(over)) == (131072, 131073)
    with trio.fail_after(10):
        async with peers(server.url, 2) as (owner, subscriber):
            await own(owner, CHANNEL)
            await subscribe(subscriber, CHANNEL)
            await announce(owner, CHANNEL, ["full", "edge", "over"])
            await subscriber.expect("chunk_available")
            await push(owner, CHANNEL, "full", chunk)
            await request(subscriber, CHANNEL, "full")
            await expect(subscriber, chunk_data("full", chunk, "cache", CHANNEL))
            await push(owner, CHANNEL, "edge", at_limit)
            await owner.send(
                {"type": "chunk_push", "chunkId": "over", "channelId": CHANNEL, "data": over}
            )
            await expect(owner, too_large(131073, 131072))
            # Refused before anything else: it was not cached.
            await request(subscriber, CHANNEL, "over")
            await expect(subscriber, {"type": "chunk_pulling", "chunkId": "over"})
            await expect(owner, {"type": "chunk_pull", "chunkId": "over", "channelId": CHANNEL})
            await assert_quiet(owner, subscriber)


async def test_the_relay_chunk_limit_stays_65536(server):
    chunk = full_chunk()
    with trio.fail_after(10):
        async with relays(server.url, "holder") as (holder,):
            await holder.send(
                {"type": "chunk_announce", "chunks": [{"chunkId": "c", "routingHash": "h"}]}
            )
            await expect(holder, {"type": "chunk_announce_ack", "registered": 1})
            await holder.send({"type": "chunk_push", "chunkId": "c", "data": chunk})
            await expect(holder, too_large(compact_size(chunk), 65536))
            await holder.send({"type": "chunk_push", "chunkId": "c", "data": "x" * 65535})
            await expect(holder, too_large(65537, 65536))
            await holder.send({"type": "chunk_push", "chunkId": "c", "data": "x" * 65534})
            await expect(holder, {"type": "chunk_push_ack", "chunkId": "c"})


# -- a closed connection ----------------------------------------------------------------------


async def test_a_closed_connection_ends_its_subscriptions_and_ownerships_only(server):
    zero = {"owned": 0, "subscriptions": 0, "queuedUpstream": 0, "liveStreams": 0}
    with trio.fail_after(10):
        async with peers(server.url, 1) as (watcher,):
            async with peers(server.url, 2) as (owner, subscriber):
                await own(owner, CHANNEL)
                await subscribe(subscriber, CHANNEL)
                await subscribe(subscriber, OTHER)  # nobody owns it: upstream is queued
                await subscriber.send(upstream_frame(OTHER, {"id": "up_1"}, "k"))
                await expect(subscriber, upstream_ack(OTHER, "up_1"))
                await announce(owner, CHANNEL, ["c1"])
                await expect(subscriber, available(CHANNEL, ["c1"]))
                await push(owner, CHANNEL, "c1", DATA)
                await owner.send(
                    {"type": "stream-start", "streamId": "s", "channelId": CHANNEL, "title": ""}
                )
                await owner.expect("stream-started")
                await subscriber.expect("stream-start")
                assert (await stats(server.url))["channels"] == {
                    "owned": 1,
                    "subscriptions": 2,
                    "queuedUpstream": 1,
                    "liveStreams": 1,
                }
            channels = await wait_stats(server.url, "channels", owned=0, subscriptions=0)
            assert channels == {**zero, "queuedUpstream": 1}
            counts = (await stats(server.url))["chunks"]
            assert (counts["cachedChunks"], counts["totalSources"]) == (1, 0)
            # The cache still serves the channel.
            await subscribe(watcher, CHANNEL, available(CHANNEL, ["c1"]))
            await request(watcher, CHANNEL, "c1")
            await expect(watcher, chunk_data("c1", DATA, "cache", CHANNEL))
            # And the queued message waits for OTHER's first owner.
            async with peers(server.url, 1) as (first,):
                await own(first, OTHER, upstream_frame(OTHER, {"id": "up_1"}, "k"))
            await assert_quiet(watcher)
        assert (await wait_stats(server.url, "channels", owned=0, subscriptions=0)) == zero


async def test_a_pull_in_flight_to_a_source_that_leaves_moves_to_the_next_source(server):
    with trio.fail_after(10):
        async with peers(server.url, 2) as (first, asker):
            async with peers(server.url, 1) as (second,):
                await announce(first, CHANNEL, ["c1"])
                await announce(second, CHANNEL, ["c1"])
                await request(asker, CHANNEL, "c1")
                await expect(asker, {"type": "chunk_pulling", "chunkId": "c1"})
                await expect(second, {"type": "chunk_pull", "chunkId": "c1", "channelId": CHANNEL})
            await expect(first, {"type": "chunk_pull", "chunkId": "c1", "channelId": CHANNEL})
            await push(first, CHANNEL, "c1", DATA, served=1)
            await expect(asker, chunk_data("c1", DATA, "relay", CHANNEL))
            await assert_quiet(first, asker)
