"""``ChannelState`` driven directly, with explicit ``now`` (docs/protocol/channels.md):
ownership and holds, subscriptions, upstream messages and their queue, live streams, the
announce rule, the limits, and memory that returns to nothing once everyone has left."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.services.fakes import NoScan
from zajel.protocol.frames import encode
from zajel.services._peers import Identity
from zajel.services.channels import (
    OWNER_GRACE_S,
    UPSTREAM_PER_MINUTE,
    UPSTREAM_QUEUE_MAX,
    UPSTREAM_TTL_S,
    UPSTREAM_WINDOW_S,
    ChannelResult,
    ChannelState,
)

IP = "192.0.2.1"
KEY = "owner-key"  # the state compares public keys, it never decodes them
OTHER_KEY = "other-key"
CH = "channel-1"

OWNED = "Channel already has an active owner"
HELD = "Channel is held for its owner's return"
NOT_SUBSCRIBED = "Not subscribed to this channel"
UPSTREAM_LIMITED = "Upstream rate limit exceeded. Please slow down."
NOT_OWNER_START = "Only the channel owner can start a stream"
NOT_OWNER_END = "Cannot end stream: not the owner or no active stream"


def who(key: str | None = KEY, code: str = "ABC234") -> Identity:
    return Identity("signal", code, key)


STRANGER = who(OTHER_KEY, "XYZ789")
KEYLESS = who(None, "KEY234")


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def registered(channel: str = CH) -> dict[str, Any]:
    return {"type": "channel-owner-registered", "channelId": channel}


def subscribed(channel: str = CH) -> dict[str, Any]:
    return {"type": "channel-subscribed", "channelId": channel}


def forwarded(message: dict[str, Any], key: str = "eph", channel: str = CH) -> dict[str, Any]:
    return {
        "type": "upstream-message",
        "channelId": channel,
        "message": message,
        "ephemeralPublicKey": key,
    }


def upstream_ack(message_id: Any, channel: str = CH) -> dict[str, Any]:
    return {"type": "upstream-ack", "channelId": channel, "messageId": message_id}


def stream_start(stream_id: str, title: str, channel: str = CH) -> dict[str, Any]:
    return {"type": "stream-start", "streamId": stream_id, "channelId": channel, "title": title}


def stream_end(stream_id: str, channel: str = CH) -> dict[str, Any]:
    return {"type": "stream-end", "streamId": stream_id, "channelId": channel}


def available(chunk_ids: list[str], channel: str = CH) -> dict[str, Any]:
    return {"type": "chunk_available", "channelId": channel, "chunkIds": chunk_ids}


def multicasts(result: ChannelResult) -> list[tuple[dict[str, Any], list[int]]]:
    """Each multicast as (decoded frame, connections); its text is checked to be compact."""
    decoded = []
    for text, conns in result.multicasts:
        frame = json.loads(text)
        assert text == encode(frame)
        decoded.append((frame, conns))
    return decoded


def up(state, conn, message, now, channel=CH, key="eph"):
    return state.upstream(conn, channel, message, key, now)


def assert_idle(state: ChannelState) -> None:
    assert state.sizes() == dict.fromkeys(state.sizes(), 0)
    assert state.statistics() == dict.fromkeys(state.statistics(), 0)
    assert state.next_deadline() == math.inf


def connected(*conns: int, ip: str = IP, **settings: Any) -> ChannelState:
    state = ChannelState(**settings)
    for conn in conns:
        state.connect(conn, ip)
    return state


def leave_all(state: ChannelState, now: float) -> None:
    """Every connection leaves, then every hold and queued message expires."""
    for conn in list(state._connections):
        state.disconnect(conn, now)
    state.expire(now + OWNER_GRACE_S + UPSTREAM_TTL_S)


@pytest.fixture
def state() -> ChannelState:
    return connected(1, 2, 3, 4, 5)


def test_constants():
    assert OWNER_GRACE_S == 3600.0
    assert UPSTREAM_TTL_S == 300.0
    assert UPSTREAM_QUEUE_MAX == 100
    assert UPSTREAM_PER_MINUTE == 30
    assert UPSTREAM_WINDOW_S == 60.0


# -- ownership -----------------------------------------------------------------------------


def test_the_first_connection_owns_the_channel_and_another_is_refused(state):
    assert state.own(1, who(), CH, 0.0).outs == [(1, registered())]
    assert state.statistics()["owned"] == 1
    for conn, identity in ((2, STRANGER), (3, KEYLESS), (4, who(KEY, "SAM234"))):
        # The owner's own key on another connection is refused too while the owner is live.
        refused = state.own(conn, identity, CH, 1.0)
        assert refused.outs == [(conn, error("channel_owned", OWNED))]
        assert refused.multicasts == []
    assert state.statistics()["owned"] == 1
    assert state.own(2, STRANGER, "channel-2", 2.0).outs == [(2, registered("channel-2"))]


def test_registering_again_is_idempotent(state):
    state.own(1, who(), CH, 0.0)
    sizes = state.sizes()
    for now in (1.0, 2.0):
        assert state.own(1, who(), CH, now).outs == [(1, registered())]
    assert state.sizes() == sizes
    assert state.statistics()["owned"] == 1
    leave_all(state, 3.0)
    assert_idle(state)


def test_queued_messages_reach_the_owner_oldest_first_then_registered(state):
    state.subscribe(2, CH, [])
    state.subscribe(3, CH, [])
    sent = [(2, {"id": "m0"}), (3, {"id": "m1"}), (2, {"id": "m2", "é": "😀"})]
    for now, (conn, message) in enumerate(sent):
        assert up(state, conn, message, float(now)).outs == [(conn, upstream_ack(message["id"]))]
    assert state.statistics()["queuedUpstream"] == 3
    result = state.own(1, who(), CH, 10.0)
    assert result.outs == [*((1, forwarded(message)) for _, message in sent), (1, registered())]
    assert state.statistics()["queuedUpstream"] == 0
    assert state.sizes()["queued_bytes"] == 0
    # Delivered once: registering again brings none of them back.
    assert state.own(1, who(), CH, 11.0).outs == [(1, registered())]


def test_expired_queued_messages_are_not_delivered(state):
    state.subscribe(2, CH, [])
    up(state, 2, {"id": "old"}, 0.0)
    up(state, 2, {"id": "young"}, 200.0)
    # At exactly 5 minutes the first has expired, swept or not.
    result = state.own(1, who(), CH, UPSTREAM_TTL_S)
    assert result.outs == [(1, forwarded({"id": "young"})), (1, registered())]
    assert state.statistics()["queuedUpstream"] == 0
    assert state.next_deadline() == math.inf


def test_the_sweep_drops_expired_messages_and_the_channel_they_kept(state):
    state.subscribe(2, CH, [])
    up(state, 2, {"id": "a"}, 0.0)
    up(state, 2, {"id": "b"}, 100.0)
    state.disconnect(2, 101.0)  # the queue outlives its sender
    assert state.statistics() == {
        "owned": 0,
        "subscriptions": 0,
        "queuedUpstream": 2,
        "liveStreams": 0,
    }
    assert state.next_deadline() == UPSTREAM_TTL_S
    state.expire(UPSTREAM_TTL_S)
    assert state.statistics()["queuedUpstream"] == 1
    assert state.next_deadline() == 100.0 + UPSTREAM_TTL_S
    state.expire(100.0 + UPSTREAM_TTL_S)
    assert_idle_but_connected(state)


# -- holds ---------------------------------------------------------------------------------


def test_an_owner_with_a_key_holds_its_channel_for_the_grace(state):
    state.own(1, who(), CH, 0.0)
    assert state.disconnect(1, 100.0) == ChannelResult()
    assert state.statistics()["owned"] == 0
    for conn, identity in ((2, STRANGER), (3, KEYLESS)):
        assert state.own(conn, identity, CH, 101.0).outs == [(conn, error("channel_owned", HELD))]
    # The same key, on another connection with another pairing code, within the grace.
    assert state.own(4, who(KEY, "NEW234"), CH, 100.0 + OWNER_GRACE_S - 1).outs == [
        (4, registered())
    ]
    assert state.statistics()["owned"] == 1
    assert state.next_deadline() == math.inf  # the hold's timer is gone
    # Its leaving holds the channel again, for a new grace.
    state.disconnect(4, 5000.0)
    assert state.own(2, STRANGER, CH, 5000.0 + OWNER_GRACE_S - 1).outs[0][1]["code"] == (
        "channel_owned"
    )
    state.expire(5000.0 + OWNER_GRACE_S)
    assert state.own(2, STRANGER, CH, 5000.0 + OWNER_GRACE_S).outs == [(2, registered())]
    leave_all(state, 9000.0)
    assert_idle(state)


def test_a_stranger_may_take_the_channel_once_the_grace_is_over(state):
    state.own(1, who(), CH, 0.0)
    state.disconnect(1, 100.0)
    assert state.next_deadline() == 100.0 + OWNER_GRACE_S
    state.expire(100.0 + OWNER_GRACE_S)
    assert state.sizes()["channels"] == 0
    assert state.own(2, STRANGER, CH, 100.0 + OWNER_GRACE_S).outs == [(2, registered())]


def test_a_hold_ends_at_its_deadline_even_before_the_sweep(state):
    # The service may handle a frame past a deadline before it fires the timer (it drains its
    # inbox first), as the queued messages and the chunk cache already allow for.
    state.own(1, who(), CH, 0.0)
    state.disconnect(1, 100.0)
    assert state.own(2, STRANGER, CH, 100.0 + OWNER_GRACE_S).outs == [(2, registered())]


def test_a_stranger_refused_by_a_hold_gets_none_of_the_queued_messages(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    state.disconnect(1, 1.0)
    up(state, 2, {"id": "secret"}, 2.0)
    assert state.own(3, STRANGER, CH, 3.0).outs == [(3, error("channel_owned", HELD))]
    assert state.statistics()["queuedUpstream"] == 1
    assert state.own(4, who(), CH, 4.0).outs == [
        (4, forwarded({"id": "secret"})),
        (4, registered()),
    ]


def test_an_owner_without_a_key_leaves_no_hold(state):
    state.own(1, KEYLESS, CH, 0.0)
    state.disconnect(1, 1.0)
    assert state.sizes()["channels"] == 0
    assert state.next_deadline() == math.inf
    # Anyone may take it at once: keyless or not.
    assert state.own(2, who(None, "ZZZ234"), CH, 1.0).outs == [(2, registered())]
    state.disconnect(2, 2.0)
    assert state.own(3, STRANGER, CH, 2.0).outs == [(3, registered())]
    leave_all(state, 3.0)
    assert_idle(state)


# -- subscriptions -------------------------------------------------------------------------


def test_subscribe_is_idempotent(state):
    for _ in range(3):
        assert state.subscribe(2, CH, []).outs == [(2, subscribed())]
    assert state.statistics()["subscriptions"] == 1
    assert state.sizes()["channels"] == 1


def test_subscribe_answers_subscribed_then_the_live_stream_then_the_cached_chunks(state):
    state.own(1, who(), CH, 0.0)
    assert state.subscribe(2, CH, ["c1", "c2"]).outs == [
        (2, subscribed()),
        (2, available(["c1", "c2"])),
    ]
    state.stream_start(1, "s1", CH, "Live")
    assert state.subscribe(3, CH, ["c3", "c1"]).outs == [
        (3, subscribed()),
        (3, stream_start("s1", "Live")),
        (3, available(["c3", "c1"])),  # as given: the chunk index lists them oldest first
    ]
    assert state.subscribe(4, CH, []).outs == [(4, subscribed()), (4, stream_start("s1", "Live"))]
    # Subscribing again shows the same, and counts once.
    assert state.subscribe(4, CH, ["c9"]).outs == [
        (4, subscribed()),
        (4, stream_start("s1", "Live")),
        (4, available(["c9"])),
    ]
    assert state.statistics()["subscriptions"] == 3


def test_unsubscribe_ends_the_subscription_and_is_idempotent(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    state.subscribe(3, CH, [])
    state.stream_start(1, "s1", CH, "t")
    for _ in range(2):
        assert state.unsubscribe(2, CH).outs == [
            (2, {"type": "channel-unsubscribed", "channelId": CH})
        ]
    assert state.statistics()["subscriptions"] == 1
    assert up(state, 2, {}, 1.0).outs == [(2, error("not_subscribed", NOT_SUBSCRIBED))]
    assert multicasts(state.stream_frame(1, "s1", CH, "f")) == [
        ({"type": "stream-frame", "streamId": "s1", "channelId": CH, "frame": "f"}, [3])
    ]
    # An unknown channel, or one never followed, is answered the same and changes nothing.
    assert state.unsubscribe(4, "nowhere").outs == [
        (4, {"type": "channel-unsubscribed", "channelId": "nowhere"})
    ]
    assert state.sizes()["channels"] == 1


def test_the_last_unsubscribe_forgets_the_channel(state):
    state.subscribe(2, CH, [])
    state.unsubscribe(2, CH)
    assert_idle_but_connected(state)


def assert_idle_but_connected(state: ChannelState) -> None:
    sizes = state.sizes()
    assert sizes.pop("connections") > 0
    assert sizes == dict.fromkeys(sizes, 0)


# -- upstream messages ---------------------------------------------------------------------


def test_upstream_needs_a_subscription(state):
    state.own(1, who(), CH, 0.0)
    for conn, channel in ((2, CH), (1, CH), (2, "nowhere")):  # the owner is no subscriber
        result = up(state, conn, {"id": "x"}, 1.0, channel=channel)
        assert result.outs == [(conn, error("not_subscribed", NOT_SUBSCRIBED))]
    assert state.sizes()["channels"] == 1


def test_upstream_goes_to_the_online_owner_with_an_ack(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    message = {"id": "up_1", "type": "reply", "encrypted_payload": "QUJD"}
    result = state.upstream(2, CH, message, "eph-key", 1.0)
    assert result.outs == [(1, forwarded(message, "eph-key")), (2, upstream_ack("up_1"))]
    assert state.statistics()["queuedUpstream"] == 0


@pytest.mark.parametrize(
    ("message", "message_id"),
    [
        ({"id": "up_1"}, "up_1"),
        ({"id": 7}, 7),
        ({}, None),
        ({"id": None}, None),
        ({"id": ""}, None),  # ``message.id || null``, as the apps' server answered
    ],
)
def test_the_ack_names_the_message_id_or_null(state, message, message_id):
    state.subscribe(2, CH, [])
    assert up(state, 2, message, 0.0).outs == [(2, upstream_ack(message_id))]


def test_upstream_is_limited_to_30_a_minute_per_connection_in_a_sliding_window(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    state.subscribe(3, CH, [])
    # Refusals for want of a subscription use none of the allowance.
    for _ in range(5):
        up(state, 4, {}, 0.0)
    state.subscribe(4, CH, [])
    for index in range(30):
        result = up(state, 2, {"id": f"m{index}"}, float(index))
        assert result.outs == [(1, forwarded({"id": f"m{index}"})), (2, upstream_ack(f"m{index}"))]
    limited = up(state, 2, {"id": "over"}, 59.0)
    assert limited.outs == [(2, error("rate_limited", UPSTREAM_LIMITED))]
    # Other connections have their own allowance.
    assert up(state, 3, {"id": "three"}, 59.0).outs[1] == (3, upstream_ack("three"))
    assert up(state, 4, {"id": "four"}, 59.0).outs[1] == (4, upstream_ack("four"))
    # A minute after the first one, one more fits; the next does not.
    assert up(state, 2, {"id": "again"}, 60.0).outs[1] == (2, upstream_ack("again"))
    assert up(state, 2, {"id": "no"}, 60.5).outs == [(2, error("rate_limited", UPSTREAM_LIMITED))]
    assert up(state, 2, {"id": "yes"}, 61.0).outs[1] == (2, upstream_ack("yes"))


def test_a_refused_upstream_is_neither_queued_nor_forwarded(state):
    state.subscribe(2, CH, [])
    for index in range(31):
        up(state, 2, {"id": index}, 0.0)
    assert state.statistics()["queuedUpstream"] == 30


def test_the_queue_holds_100_and_drops_the_newest(state):
    state = connected(1, 2, upstream_per_minute=1000)
    state.subscribe(2, CH, [])
    for index in range(1, 102):
        assert up(state, 2, {"id": index}, index * 0.01).outs == [(2, upstream_ack(index))]
    assert state.statistics()["queuedUpstream"] == 100
    result = state.own(1, who(), CH, 2.0)
    assert [frame["message"]["id"] for _, frame in result.outs[:-1]] == list(range(1, 101))
    assert result.outs[-1] == (1, registered())


def test_the_queue_limit_is_a_setting_and_counts_per_channel():
    state = connected(1, 2, upstream_queue_max=2)
    for channel in ("a", "b"):
        state.subscribe(2, channel, [])
        for index in range(3):
            up(state, 2, {"id": index}, 0.0, channel=channel)
    assert state.statistics()["queuedUpstream"] == 4


def frame_size(message: dict[str, Any], channel: str = CH) -> int:
    """The bytes one queued message takes: its frame as compact UTF-8 JSON."""
    return len(encode(forwarded(message, channel=channel)).encode())


def test_the_queued_messages_of_all_channels_share_one_byte_budget():
    one = frame_size({"id": "0"}, "a")
    state = connected(1, 2, upstream_queue_bytes=2 * one)
    for channel in ("a", "b"):
        state.subscribe(2, channel, [])
    up(state, 2, {"id": "0"}, 0.0, channel="a")
    up(state, 2, {"id": "1"}, 0.0, channel="b")
    assert state.sizes()["queued_bytes"] == 2 * one
    dropped = up(state, 2, {"id": "2"}, 0.0, channel="a")
    assert dropped.outs == [(2, upstream_ack("2", "a"))]  # acknowledged all the same
    assert state.statistics()["queuedUpstream"] == 2
    # Delivering a queue frees its share.
    assert len(state.own(1, who(), "b", 1.0).outs) == 2
    assert state.sizes()["queued_bytes"] == one
    up(state, 2, {"id": "3"}, 1.0, channel="a")
    assert state.statistics()["queuedUpstream"] == 2


def test_the_byte_budget_counts_utf8_bytes():
    message = {"id": "emoji", "text": "😀" * 100}  # 400 bytes of text in 100 characters
    size = frame_size(message)
    state = connected(1, 2, upstream_queue_bytes=size)
    state.subscribe(2, CH, [])
    up(state, 2, message, 0.0)
    assert state.sizes()["queued_bytes"] == size
    up(state, 2, message, 1.0)  # one more would take twice the budget
    assert state.statistics()["queuedUpstream"] == 1


def test_a_held_channel_queues_for_its_returning_owner(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    state.disconnect(1, 1.0)
    assert up(state, 2, {"id": "q"}, 2.0).outs == [(2, upstream_ack("q"))]
    assert state.statistics()["queuedUpstream"] == 1


# -- streams -------------------------------------------------------------------------------


def test_only_the_owner_starts_a_stream(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    for conn, channel in ((2, CH), (3, CH), (1, "nowhere")):
        result = state.stream_start(conn, "s1", channel, "t")
        assert result.outs == [(conn, error("not_owner", NOT_OWNER_START))]
        assert result.multicasts == []
    assert state.statistics()["liveStreams"] == 0


def test_a_stream_starts_for_every_subscriber_and_the_owner_hears_the_count(state):
    state.own(1, who(), CH, 0.0)
    assert state.stream_start(1, "s0", CH, "alone").outs == [
        (1, {"type": "stream-started", "streamId": "s0", "channelId": CH, "subscriberCount": 0})
    ]
    for conn in (3, 2, 1):  # an owner that follows its own channel counts, as on the original
        state.subscribe(conn, CH, [])
    result = state.stream_start(1, "s1", CH, "Live")
    assert multicasts(result) == [(stream_start("s1", "Live"), [3, 2, 1])]
    assert result.outs == [
        (1, {"type": "stream-started", "streamId": "s1", "channelId": CH, "subscriberCount": 3})
    ]


def test_a_new_stream_replaces_the_live_one(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    state.stream_start(1, "s1", CH, "first")
    result = state.stream_start(1, "s2", CH, "second")
    assert multicasts(result) == [(stream_start("s2", "second"), [2])]  # no stream-end for s1
    assert state.statistics()["liveStreams"] == 1
    assert state.subscribe(3, CH, []).outs[1] == (3, stream_start("s2", "second"))
    ended = state.stream_end(1, CH)
    assert multicasts(ended) == [(stream_end("s2"), [2, 3])]
    assert state.statistics()["liveStreams"] == 0


def test_frames_of_the_owner_go_to_every_subscriber_encoded_once(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    state.subscribe(3, CH, [])
    assert state.stream_frame(1, "s1", CH, {"seq": 0}) == ChannelResult()  # no live stream
    state.stream_start(1, "s1", CH, "t")
    result = state.stream_frame(1, "s1", CH, {"seq": 1, "b": "é😀"})
    assert result.outs == []
    frame = {
        "type": "stream-frame",
        "streamId": "s1",
        "channelId": CH,
        "frame": {"seq": 1, "b": "é😀"},
    }
    assert multicasts(result) == [(frame, [2, 3])]
    assert len(result.multicasts) == 1


def test_frames_of_anyone_else_are_dropped_without_a_word(state):
    state.own(1, who(), CH, 0.0)
    state.own(4, STRANGER, "channel-2", 0.0)
    state.subscribe(2, CH, [])
    state.stream_start(1, "s1", CH, "t")
    for conn, channel in ((2, CH), (3, CH), (4, CH), (2, "nowhere"), (4, "channel-2")):
        assert state.stream_frame(conn, "s1", channel, "f") == ChannelResult()


def test_frames_with_no_subscriber_go_nowhere(state):
    state.own(1, who(), CH, 0.0)
    state.stream_start(1, "s1", CH, "t")
    assert state.stream_frame(1, "s1", CH, "f") == ChannelResult()


def test_only_the_owner_of_a_live_stream_ends_it(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    for conn in (1, 2, 3):  # no live stream, or not the owner
        assert state.stream_end(conn, CH).outs == [(conn, error("not_owner", NOT_OWNER_END))]
    state.stream_start(1, "s1", CH, "t")
    for conn in (2, 3):
        result = state.stream_end(conn, CH)
        assert result.outs == [(conn, error("not_owner", NOT_OWNER_END))]
        assert result.multicasts == []
    assert state.statistics()["liveStreams"] == 1
    result = state.stream_end(1, CH)
    assert multicasts(result) == [(stream_end("s1"), [2])]
    assert result.outs == [(1, {"type": "stream-ended", "streamId": "s1", "channelId": CH})]
    assert state.statistics()["liveStreams"] == 0
    assert state.stream_end(1, CH).outs == [(1, error("not_owner", NOT_OWNER_END))]


def test_the_owner_leaving_ends_its_streams(state):
    for channel in ("b", "a"):
        state.own(1, who(), channel, 0.0)
        state.subscribe(2, channel, [])
        state.subscribe(3, channel, [])
        state.stream_start(1, f"s-{channel}", channel, "t")
    state.subscribe(1, "a", [])  # the owner's own subscription ends first: it hears nothing
    result = state.disconnect(1, 1.0)
    assert multicasts(result) == [
        (stream_end("s-a", "a"), [2, 3]),
        (stream_end("s-b", "b"), [2, 3]),
    ]
    assert result.outs == []
    assert state.statistics() == {
        "owned": 0,
        "subscriptions": 4,
        "queuedUpstream": 0,
        "liveStreams": 0,
    }
    # The returning owner starts afresh: no stream is live.
    assert state.subscribe(4, "a", []).outs == [(4, subscribed("a"))]


# -- announces -----------------------------------------------------------------------------


def test_an_announce_by_the_owner_tells_the_other_subscribers(state):
    state.own(1, who(), CH, 0.0)
    for conn in (1, 2, 3):
        state.subscribe(conn, CH, [])
    result = state.announced(1, who(), CH, ["c1", "c2"], 0.0)
    assert multicasts(result) == [(available(["c1", "c2"]), [2, 3])]
    assert result.outs == []


def test_an_announce_by_anyone_else_tells_nobody(state):
    state.own(1, who(), CH, 0.0)
    for conn in (2, 3):
        state.subscribe(conn, CH, [])
    for identity in (STRANGER, KEYLESS):
        assert state.announced(2, identity, CH, ["c1"], 0.0) == ChannelResult()
        assert state.announced(4, identity, CH, ["c1"], 0.0) == ChannelResult()
    assert state.announced(1, who(), "nowhere", ["c1"], 0.0) == ChannelResult()
    assert state.announced(1, who(), CH, [], 0.0) == ChannelResult()


def test_a_keyless_owner_is_recognised_by_its_connection_only(state):
    state.own(1, KEYLESS, CH, 0.0)
    state.subscribe(2, CH, [])
    assert multicasts(state.announced(1, KEYLESS, CH, ["c1"], 0.0)) == [(available(["c1"]), [2])]
    assert state.announced(3, who(None, "ZZZ234"), CH, ["c1"], 0.0) == ChannelResult()


def test_an_announce_with_the_owners_key_tells_the_subscribers(state):
    state.own(1, who(), CH, 0.0)
    state.subscribe(2, CH, [])
    # Another connection with the owner's key (another device, or the owner back before it
    # registers the channel again), while the owner is live and while the channel is held.
    assert multicasts(state.announced(3, who(KEY, "NEW234"), CH, ["c1"], 0.0)) == [
        (available(["c1"]), [2])
    ]
    state.disconnect(1, 10.0)
    assert multicasts(state.announced(3, who(KEY, "NEW234"), CH, ["c2"], 11.0)) == [
        (available(["c2"]), [2])
    ]
    # Once the hold is over, the key is nobody's, even before the timer fires.
    assert state.announced(3, who(KEY, "NEW234"), CH, ["c3"], 10.0 + OWNER_GRACE_S) == (
        ChannelResult()
    )


def test_an_announce_with_no_other_subscriber_tells_nobody(state):
    state.own(1, who(), CH, 0.0)
    assert state.announced(1, who(), CH, ["c1"], 0.0) == ChannelResult()
    state.subscribe(1, CH, [])
    assert state.announced(1, who(), CH, ["c1"], 0.0) == ChannelResult()


# -- limits --------------------------------------------------------------------------------


def test_a_connection_owns_at_most_max_owned_channels():
    state = connected(1, 2, max_owned=2)
    for channel in ("a", "b"):
        assert state.own(1, who(), channel, 0.0).outs == [(1, registered(channel))]
    assert state.own(1, who(), "c", 0.0).outs == [
        (1, error("rate_limited", "Too many owned channels"))
    ]
    assert state.own(1, who(), "a", 1.0).outs == [(1, registered("a"))]  # owned already
    assert state.own(2, STRANGER, "c", 1.0).outs == [(2, registered("c"))]
    assert state.sizes()["channels"] == 3


def test_a_connection_follows_at_most_max_subscriptions_channels():
    state = connected(1, 2, max_subscriptions=2)
    for channel in ("a", "b"):
        state.subscribe(1, channel, [])
    refused = state.subscribe(1, "c", ["x"])
    assert refused.outs == [(1, error("rate_limited", "Too many channel subscriptions"))]
    assert state.subscribe(1, "a", []).outs == [(1, subscribed("a"))]
    assert state.sizes()["channels"] == 2
    state.unsubscribe(1, "a")
    assert state.subscribe(1, "c", []).outs == [(1, subscribed("c"))]
    assert state.subscribe(2, "d", []).outs == [(2, subscribed("d"))]


def test_one_address_owns_or_holds_at_most_channels_per_ip():
    state = ChannelState(channels_per_ip=2)
    for conn, ip in ((1, "ip-1"), (2, "ip-1"), (3, "ip-2"), (4, "ip-1"), (5, "ip-2")):
        state.connect(conn, ip)
    too_many = error("rate_limited", "Too many channels from this address")
    state.own(1, who(), "a", 0.0)
    state.own(1, who(), "b", 0.0)
    assert state.own(2, STRANGER, "c", 0.0).outs == [(2, too_many)]
    assert state.own(3, STRANGER, "c", 0.0).outs == [(3, registered("c"))]  # another address
    # The holds of a departed owner still count against its address...
    state.disconnect(1, 1.0)
    assert state.own(2, STRANGER, "d", 2.0).outs == [(2, too_many)]
    # ...and its return from that address takes them back without counting twice.
    assert state.own(4, who(), "a", 3.0).outs == [(4, registered("a"))]
    assert state.own(4, who(), "b", 3.0).outs == [(4, registered("b"))]
    assert state.sizes()["ip_channels"] == 2
    # Returning from another address moves the count there.
    state.disconnect(4, 4.0)
    assert state.own(5, who(), "a", 5.0).outs == [(5, registered("a"))]
    assert state._ip_channels == {"ip-1": 1, "ip-2": 2}
    assert state.own(2, STRANGER, "d", 6.0).outs == [(2, registered("d"))]
    assert state._ip_channels == {"ip-1": 2, "ip-2": 2}
    # A hold that ends frees its place.
    state.expire(4.0 + OWNER_GRACE_S)
    assert state._ip_channels == {"ip-1": 1, "ip-2": 2}
    state.disconnect(2, 7.0 + OWNER_GRACE_S)
    state.disconnect(3, 7.0 + OWNER_GRACE_S)
    state.disconnect(5, 7.0 + OWNER_GRACE_S)
    state.expire(8.0 + 2 * OWNER_GRACE_S)
    assert_idle(state)


def test_all_channels_together_are_at_most_max_channels():
    state = connected(1, 2, max_channels=2)
    state.subscribe(1, "a", [])
    state.own(2, STRANGER, "b", 0.0)
    too_many = error("rate_limited", "Too many channels")
    assert state.subscribe(1, "c", []).outs == [(1, too_many)]
    assert state.own(2, STRANGER, "c", 0.0).outs == [(2, too_many)]
    # Existing channels are still open to everyone.
    assert state.subscribe(2, "a", []).outs == [(2, subscribed("a"))]
    assert state.subscribe(1, "b", []).outs == [(1, subscribed("b"))]
    assert state.sizes()["channels"] == 2
    state.unsubscribe(1, "a")
    state.unsubscribe(2, "a")
    assert state.own(1, who(), "c", 1.0).outs == [(1, registered("c"))]


# -- connections ---------------------------------------------------------------------------


def test_a_subscriber_leaving_ends_its_subscriptions_and_leaves_its_messages(state):
    state.own(1, who(), "other", 0.0)
    state.subscribe(2, CH, [])
    state.subscribe(2, "other", [])
    up(state, 2, {"id": "kept"}, 1.0)
    assert state.disconnect(2, 2.0) == ChannelResult()
    assert state.statistics() == {
        "owned": 1,
        "subscriptions": 0,
        "queuedUpstream": 1,
        "liveStreams": 0,
    }
    assert state.own(3, STRANGER, CH, 3.0).outs == [
        (3, forwarded({"id": "kept"})),
        (3, registered()),
    ]


def test_an_unknown_connection_leaving_changes_nothing(state):
    state.own(1, who(), CH, 0.0)
    sizes = state.sizes()
    assert state.disconnect(99, 1.0) == ChannelResult()
    state.disconnect(2, 1.0)
    state.disconnect(2, 1.0)  # twice
    assert state.sizes()["channels"] == sizes["channels"]
    assert state.statistics()["owned"] == 1


def test_statistics_follow_the_state_and_scan_nothing():
    state = connected(*range(1, 21))
    for conn in range(1, 11):
        state.own(conn, who(f"key-{conn}"), f"ch-{conn}", 0.0)
        state.stream_start(conn, "s", f"ch-{conn}", "t")
    for conn in range(11, 21):
        for channel in range(1, 6):
            state.subscribe(conn, f"ch-{channel}", [])
        state.subscribe(conn, "ownerless", [])
        up(state, conn, {"id": conn}, 0.0, channel="ownerless")
    expected = {"owned": 10, "subscriptions": 60, "queuedUpstream": 10, "liveStreams": 10}
    assert state.statistics() == expected
    state._channels = NoScan(state._channels)
    state._owned, state._subscribed = NoScan(state._owned), NoScan(state._subscribed)
    assert state.statistics() == expected


# -- memory --------------------------------------------------------------------------------


def test_memory_returns_to_nothing_once_everyone_left_and_every_timer_fired():
    state = ChannelState()
    conns = range(1, 41)
    for conn in conns:
        state.connect(conn, f"ip-{conn % 3}")
    for conn in range(1, 11):
        state.own(conn, who(f"key-{conn % 4}" if conn % 2 else None), f"ch-{conn}", 0.0)
        state.stream_start(conn, "s", f"ch-{conn}", "t")
    for conn in range(11, 41):
        for channel in (conn % 10 + 1, 99):
            state.subscribe(conn, f"ch-{channel}", ["c"])
            up(state, conn, {"id": conn}, float(conn), channel=f"ch-{channel}")
        state.announced(conn, who(), f"ch-{conn % 10 + 1}", ["c"], float(conn))
    for conn in conns:
        state.disconnect(conn, 100.0)
    assert state.statistics()["queuedUpstream"] > 0
    assert state.sizes()["channels"] > 0
    state.expire(100.0 + OWNER_GRACE_S)
    assert_idle(state)


CONNS = (1, 2, 3, 4)
IDENTITIES = {1: who(KEY, "AAA234"), 2: who(KEY, "BBB234"), 3: STRANGER, 4: KEYLESS}
IPS = {1: "ip-1", 2: "ip-1", 3: "ip-2", 4: "ip-2"}
channel_ids = st.sampled_from(("a", "b"))
conn_ids = st.sampled_from(CONNS)
# The owner's messages are what matters for streams and announces: "owner" stands for the
# channel's owner at the time, if it has one.
actors = st.sampled_from(("owner", "owner", *CONNS))
channel_ops = st.lists(
    st.one_of(
        st.tuples(st.just("own"), conn_ids, channel_ids),
        st.tuples(st.just("subscribe"), conn_ids, channel_ids),
        st.tuples(st.just("unsubscribe"), conn_ids, channel_ids),
        st.tuples(st.just("upstream"), conn_ids, channel_ids),
        st.tuples(st.just("start"), actors, channel_ids),
        st.tuples(st.just("frame"), actors, channel_ids),
        st.tuples(st.just("end"), actors, channel_ids),
        st.tuples(st.just("announce"), actors, channel_ids),
        st.tuples(st.just("reconnect"), conn_ids),
        st.tuples(st.just("wait"), st.sampled_from((1.0, 60.0, 300.0, 3600.0))),
    ),
    min_size=20,
    max_size=80,
)


def check_invariants(state: ChannelState, live: dict[int, int]) -> None:
    """The module's invariants, checked on the internals; ``live`` maps a slot to the id of
    its connection."""
    stats = state.statistics()
    owned = {(conn, cid) for cid, ch in state._channels.items() if (conn := ch.owner) is not None}
    assert owned == {(conn, cid) for conn, cids in state._owned.items() for cid in cids}
    assert stats["owned"] == len(owned)
    follows = {(conn, cid) for cid, ch in state._channels.items() for conn in ch.subscribers}
    assert follows == {(conn, cid) for conn, cids in state._subscribed.items() for cid in cids}
    assert stats["subscriptions"] == len(follows)
    queues = [q for ch in state._channels.values() for q in ch.queue]
    assert stats["queuedUpstream"] == len(queues)
    assert state.sizes()["queued_bytes"] == sum(q.size for q in queues)
    assert stats["liveStreams"] == sum(ch.stream is not None for ch in state._channels.values())
    counted: dict[str, int] = {}
    for ch in state._channels.values():
        assert not ch.idle()
        assert ch.stream is None or ch.owner is not None
        assert ch.held_until is None or (ch.owner is None and ch.owner_key is not None)
        assert (ch.owner_ip is not None) == (ch.owner is not None or ch.held_until is not None)
        if ch.owner_ip is not None:
            counted[ch.owner_ip] = counted.get(ch.owner_ip, 0) + 1
    assert state._ip_channels == counted
    assert all(state._owned.values())
    assert all(state._subscribed.values())
    assert set(state._owned) | set(state._subscribed) <= set(live.values())
    assert set(state._connections) == set(live.values())


@settings(deadline=None, max_examples=300)
@given(channel_ops)
def test_random_traffic_keeps_every_invariant_and_leaves_nothing_behind(ops):
    state = ChannelState(upstream_queue_max=3, upstream_per_minute=4, channels_per_ip=1)
    live = dict.fromkeys(CONNS, 0)  # slot -> its connection id (a new one on reconnect)
    for slot in CONNS:
        live[slot] = slot * 100
        state.connect(live[slot], IPS[slot])
    now = 0.0
    for op, *args in ops:
        now += 0.5
        state.expire(now)  # as the service does: due timers fire before the next message
        if op == "wait":
            now += args[0]
            state.expire(now)
            check_invariants(state, live)
            continue
        slot = args[0]
        if slot == "owner":
            channel = state._channels.get(args[1])
            owner = channel.owner if channel is not None else None
            slot = next((k for k, v in live.items() if v == owner), 1)
        conn = live[slot]
        if op == "reconnect":
            result = state.disconnect(conn, now)
            live[slot] = conn + 1
            state.connect(live[slot], IPS[slot])
        elif op == "own":
            result = state.own(conn, IDENTITIES[slot], args[1], now)
        elif op == "subscribe":
            result = state.subscribe(conn, args[1], [])
        elif op == "unsubscribe":
            result = state.unsubscribe(conn, args[1])
        elif op == "upstream":
            result = up(state, conn, {"id": now}, now, channel=args[1])
        elif op == "start":
            result = state.stream_start(conn, f"s{now}", args[1], "t")
        elif op == "frame":
            result = state.stream_frame(conn, "s", args[1], now)
        elif op == "end":
            result = state.stream_end(conn, args[1])
        else:
            result = state.announced(conn, IDENTITIES[slot], args[1], ["x"], now)
        for target, frame in result.outs:
            assert target in live.values()
            assert frame["type"] != "error" or frame["code"] in {
                "channel_owned",
                "not_subscribed",
                "not_owner",
                "rate_limited",
            }
        for _, targets in result.multicasts:
            assert set(targets) <= set(live.values())
        check_invariants(state, live)
    for conn in live.values():
        state.disconnect(conn, now)
    state.expire(now + OWNER_GRACE_S + UPSTREAM_TTL_S)
    assert_idle(state)
