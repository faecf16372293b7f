"""``ChunkIndexState`` in the channel dialect of ``/signal`` (``signal=True``), alone and mixed
with ``/relay`` peers in one index (docs/protocol/channels.md, ``chunk_announce``,
``chunk_request``, ``chunk_push`` and "Rules")."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.services.test_chunks_state import assert_idle, check_invariants, delivered
from zajel.protocol.frames import encode
from zajel.services.chunks import (
    CACHE_TTL_S,
    PULL_TIMEOUT_S,
    PULLING_NOTICE_S,
    SOURCE_TTL_S,
    Announced,
    ChunkError,
    ChunkIndexState,
    ChunkOut,
    ChunkResult,
)

IP = "192.0.2.1"
CH = "channel-1"
NO_SOURCE = "No source available for chunk"
OTHER_CHANNEL = "Chunk belongs to another channel"
DATA = {"chunk_id": "c1", "sequence": 1, "encrypted_payload": "QUJD"}


def announce(state, peer, *chunk_ids, channel=CH, now=0.0, ip=IP, signal=True):
    chunks = [Announced(chunk_id, f"rh-{chunk_id}") for chunk_id in chunk_ids]
    return state.announce(peer, chunks, channel, now, ip=ip, signal=signal)


def request(state, peer, chunk_id, channel=CH, now=0.0, ip=IP, signal=True):
    return state.request(peer, chunk_id, channel, now, ip=ip, signal=signal)


def push(state, peer, chunk_id, data=DATA, channel=CH, now=0.0, signal=True):
    """Push ``data`` as the decoder hands it on: its compact UTF-8 JSON."""
    data_json = encode(data).encode()
    return state.push(peer, chunk_id, data_json, now, channel_id=channel, signal=signal)


def pulling(peer, chunk_id):
    return ChunkOut(peer, {"type": "chunk_pulling", "chunkId": chunk_id})


def pull(peer, chunk_id, channel=CH):
    frame = {"type": "chunk_pull", "chunkId": chunk_id}
    if channel is not None:
        frame["channelId"] = channel
    return ChunkOut(peer, frame)


def chunk_error(peer, chunk_id, message):
    return ChunkOut(peer, {"type": "chunk_error", "chunkId": chunk_id, "error": message})


def push_ack(peer, chunk_id, cached, served):
    frame = {"type": "chunk_push_ack", "chunkId": chunk_id, "cached": cached, "servedCount": served}
    return ChunkOut(peer, frame)


def relay_ack(peer, chunk_id):
    return ChunkOut(peer, {"type": "chunk_push_ack", "chunkId": chunk_id})


def data_frame(chunk_id, source, channel=CH, data=DATA):
    frame = {"type": "chunk_data", "chunkId": chunk_id, "data": data, "source": source}
    if channel is not None:
        frame["channelId"] = channel
    return frame


@pytest.fixture
def state() -> ChunkIndexState:
    return ChunkIndexState()


# -- requests ------------------------------------------------------------------------------


def test_a_request_with_a_source_is_owed_chunk_pulling_and_one_pull_goes_out(state):
    announce(state, "s", "c1")
    result = request(state, "r", "c1")
    assert result.outs == [pull("s", "c1")]
    assert result.deliveries == []
    stats = state.statistics()
    assert (stats["pendingRequests"], stats["pullsSent"], stats["cacheMisses"]) == (1, 1, 1)
    # The chunk has not come within PULLING_NOTICE_S: the requester is told it waits.
    assert state.next_deadline() == PULLING_NOTICE_S
    assert state.expire(PULLING_NOTICE_S).outs == [pulling("r", "c1")]
    # Told once: the push then brings the chunk alone.
    result = push(state, "s", "c1", now=2.0)
    assert delivered(result) == [(data_frame("c1", "relay"), ("r",))]


def test_chunk_pulling_goes_just_before_a_chunk_that_comes_in_time(state):
    announce(state, "s1", "c1")
    announce(state, "s2", "c1")
    request(state, "r1", "c1")
    assert request(state, "r2", "c1").outs == []  # a pull is in flight: it waits too
    assert request(state, "r1", "c1").outs == []  # asking again: still owed one notice
    assert state.statistics()["pullsSent"] == 1
    assert state.statistics()["pendingRequests"] == 2
    # One push serves both, framed once, each told chunk_pulling first (in the same turn, so
    # both frames leave in one write).
    result = push(state, "s2", "c1", now=PULLING_NOTICE_S / 2)
    assert result.outs == [push_ack("s2", "c1", True, 2)]
    assert delivered(result) == [
        ({"type": "chunk_pulling", "chunkId": "c1"}, ("r1", "r2")),
        (data_frame("c1", "relay"), ("r1", "r2")),
    ]
    assert state.statistics()["pendingRequests"] == 0
    assert state.expire(PULLING_NOTICE_S).outs == []  # no notice is left over


def test_no_source_is_chunk_error_and_the_request_is_not_kept(state):
    result = request(state, "r", "c1")
    assert result.outs == [chunk_error("r", "c1", NO_SOURCE)]
    assert result.deliveries == []
    assert_idle(state)
    # So a later announce pulls nothing: nobody waits.
    assert announce(state, "s", "c1", now=1.0).outs == [
        ChunkOut("s", {"type": "chunk_announce_ack", "registered": 1})
    ]


def test_a_source_whose_announce_expired_is_no_source(state):
    announce(state, "s", "c1")
    result = request(state, "r", "c1", now=SOURCE_TTL_S)  # not yet swept
    assert result.outs == [chunk_error("r", "c1", NO_SOURCE)]
    assert state.statistics()["pendingRequests"] == 0


def test_a_source_that_speaks_for_the_owner_is_pulled_first(state):
    # The owner announced first; a stranger who saw the ids announces them after it and would
    # be the most recent source: the owner is pulled all the same.
    state.announce("owner", [Announced("c1", "")], CH, 0.0, ip=IP, signal=True, trusted=True)
    announce(state, "stranger", "c1", now=1.0)
    assert request(state, "r", "c1", now=2.0).outs == [pull("owner", "c1")]
    # Its pull timed out: the next round takes the others.
    assert state.expire(2.0 + PULL_TIMEOUT_S).outs == [
        pulling("r", "c1"),
        pull("stranger", "c1"),
    ]
    # Announcing again without speaking for the owner takes the mark away.
    state.announce("owner", [Announced("c2", "")], CH, 20.0, ip=IP, signal=True, trusted=True)
    assert state.sizes()["trusted"] == 2
    announce(state, "owner", "c2", now=21.0)
    assert state.sizes()["trusted"] == 1  # c1 only
    check_invariants(state, 21.0)


def test_the_requester_itself_is_never_pulled(state):
    announce(state, "s", "c1")
    assert request(state, "s", "c1").outs == [chunk_error("s", "c1", NO_SOURCE)]
    # Still a source for the others.
    assert request(state, "r", "c1", now=1.0).outs == [pull("s", "c1")]
    state.remove_peer("r", 2.0)
    state.expire(2.0 + PULL_TIMEOUT_S)
    # With another source, that one is pulled, never the requester.
    announce(state, "s2", "c2", now=20.0)
    announce(state, "s", "c2", now=21.0)  # the most recent source
    assert request(state, "s", "c2", now=22.0).outs == [pull("s2", "c2")]


def test_a_pull_timed_out_with_no_other_source_ends_the_wait_with_chunk_error(state):
    announce(state, "s", "c1")
    request(state, "r", "c1")
    request(state, "old", "c1", channel=None, signal=False)  # a /relay requester keeps waiting
    assert state.expire(PULLING_NOTICE_S).outs == [pulling("r", "c1")]
    # s withheld it and nobody else holds it: the /signal requester is told at once, as it
    # would have been had no source been online when it asked.
    assert state.expire(PULL_TIMEOUT_S).outs == [chunk_error("r", "c1", NO_SOURCE)]
    assert state.statistics()["pendingRequests"] == 1
    assert request(state, "r", "c1", now=PULL_TIMEOUT_S + 1).outs == [
        chunk_error("r", "c1", NO_SOURCE)
    ]
    assert state.statistics()["pendingRequests"] == 1


def test_the_only_source_leaving_mid_pull_ends_the_wait_with_chunk_error(state):
    announce(state, "s", "c1")
    request(state, "r", "c1")
    # Told it waits, then that the wait is over (the notice was still owed).
    assert state.remove_peer("s", PULLING_NOTICE_S / 2).outs == [
        pulling("r", "c1"),
        chunk_error("r", "c1", NO_SOURCE),
    ]
    assert state.statistics()["pendingRequests"] == 0
    assert_idle(state)


# -- pushes --------------------------------------------------------------------------------


def test_an_unasked_push_from_a_source_is_cached(state):
    announce(state, "s", "c1")
    result = push(state, "s", "c1", now=1.0)
    assert result.outs == [push_ack("s", "c1", True, 0)]
    assert result.deliveries == []
    assert state.cached_data("c1") == encode(DATA).encode()
    assert state.cached_ids(CH, 1.0) == ["c1"]
    hit = request(state, "r", "c1", now=2.0)
    assert hit.outs == []
    assert delivered(hit) == [(data_frame("c1", "cache"), ("r",))]
    assert state.statistics()["cacheHits"] == 1


def test_a_push_of_a_json_string_is_served_as_that_string(state):
    announce(state, "s", "c1")
    push(state, "s", "c1", data='{"a":1}')
    hit = request(state, "r", "c1", now=1.0)
    assert delivered(hit) == [(data_frame("c1", "cache", data='{"a":1}'), ("r",))]


def test_a_push_from_neither_a_source_nor_a_pulled_peer_is_refused(state):
    announce(state, "s", "c1")
    request(state, "r", "c1")
    for peer in ("r", "stranger"):
        with pytest.raises(ChunkError) as raised:
            push(state, peer, "c1")
        assert (raised.value.code, raised.value.message) == (
            "not_a_source",
            "Not a source for this chunk",
        )
    assert state.cached_data("c1") is None
    assert state.statistics()["pendingRequests"] == 1


def test_a_relay_push_nobody_asked_for_is_still_not_stored(state):
    # The /relay rule is unchanged beside the /signal one.
    announce(state, "s", "c1", channel=None, signal=False)
    result = push(state, "s", "c1", channel=None, signal=False)
    assert result.outs == [relay_ack("s", "c1")]
    assert state.cached_data("c1") is None


def test_the_ack_counts_the_requesters_served_and_says_whether_it_cached(state):
    small = ChunkIndexState(cache_bytes=10)
    announce(small, "s", "c1")
    request(small, "r1", "c1")
    request(small, "r2", "c1")
    result = push(small, "s", "c1", now=2.0)  # larger than the whole cache: served, not cached
    assert result.outs == [push_ack("s", "c1", False, 2)]
    assert delivered(result) == [
        ({"type": "chunk_pulling", "chunkId": "c1"}, ("r1", "r2")),  # its timer never ran
        (data_frame("c1", "relay"), ("r1", "r2")),
    ]
    assert small.cached_data("c1") is None
    assert small.cached_ids(CH, 1.0) == []
    # The pusher's own request is dropped, not served.
    announce(state, "s", "c2")
    announce(state, "t", "c2")
    request(state, "s", "c2")  # s waits: t is pulled
    result = push(state, "s", "c2", now=1.0)  # s is a source: accepted
    assert result.outs == [push_ack("s", "c2", True, 0)]
    assert result.deliveries == []
    assert state.statistics()["pendingRequests"] == 0


def test_a_cached_copy_is_never_replaced(state):
    announce(state, "s1", "c1")
    announce(state, "s2", "c1", channel="channel-2")
    push(state, "s1", "c1", data={"first": 1})
    for peer, channel in (("s2", "channel-2"), ("s1", CH)):
        result = push(state, peer, "c1", data={"second": 2}, channel=channel, now=1.0)
        assert result.outs == [push_ack(peer, "c1", True, 0)]
        assert result.deliveries == []
    assert state.cached_data("c1") == b'{"first":1}'
    assert state.cached_ids(CH, 1.0) == ["c1"]
    assert state.cached_ids("channel-2", 1.0) == []


def test_a_pulled_push_after_another_source_cached_the_chunk_ends_the_pull(state):
    announce(state, "s1", "c1")
    announce(state, "s2", "c1")
    assert request(state, "r", "c1").outs == [pull("s2", "c1")]
    early = push(state, "s1", "c1", data={"from": "s1"}, now=0.5)  # unasked, first
    assert early.outs == [push_ack("s1", "c1", True, 1)]
    late = push(state, "s2", "c1", data={"from": "s2"}, now=2.0)
    assert late.outs == [push_ack("s2", "c1", True, 0)]
    assert state.cached_data("c1") == b'{"from":"s1"}'
    assert state.sizes()["pulls"] == 0
    assert state.expire(2.0 + PULL_TIMEOUT_S).outs == []


# -- channels ------------------------------------------------------------------------------


def test_a_cached_chunk_is_served_only_to_signal_requests_of_its_channel(state):
    announce(state, "s", "c1")
    push(state, "s", "c1")
    refused = request(state, "r", "c1", channel="channel-2", now=1.0)
    assert refused.outs == [chunk_error("r", "c1", OTHER_CHANNEL)]
    assert refused.deliveries == []
    assert state.cached_hits("c1") == 0
    assert state.statistics()["pendingRequests"] == 0
    # A /relay request is served whatever channel it names, echoing its own.
    for channel in ("channel-2", None):
        hit = request(state, "q", "c1", channel=channel, now=2.0, signal=False)
        assert delivered(hit) == [(data_frame("c1", "cache", channel), ("q",))]
    assert state.cached_hits("c1") == 2


def test_a_chunk_cached_with_no_channel_is_served_to_any_signal_request(state):
    announce(state, "s", "c1", channel=None, signal=False)
    request(state, "q", "c1", channel=None, signal=False)  # a /relay requester without one
    push(state, "s", "c1", channel=None, signal=False)
    assert state.cached_data("c1") is not None
    hit = request(state, "r", "c1", channel="any", now=1.0)
    assert delivered(hit) == [(data_frame("c1", "cache", "any"), ("r",))]


def test_waiting_signal_requesters_of_another_channel_get_chunk_error_at_push_time(state):
    announce(state, "s", "c1")
    request(state, "r1", "c1")
    request(state, "r2", "c1", channel="channel-2")
    request(state, "q", "c1", channel="channel-3", signal=False)  # /relay: not bound to one
    request(state, "r3", "c1", now=0.5)
    result = push(state, "s", "c1", now=0.75)  # before any notice was due: each goes now
    assert result.outs == [push_ack("s", "c1", True, 3)]
    assert delivered(result) == [
        ({"type": "chunk_pulling", "chunkId": "c1"}, ("r1", "r2", "r3")),
        ({"type": "chunk_error", "chunkId": "c1", "error": OTHER_CHANNEL}, ("r2",)),
        (data_frame("c1", "relay"), ("r1", "r3")),
        (data_frame("c1", "relay", "channel-3"), ("q",)),
    ]
    assert state.statistics()["pendingRequests"] == 0
    assert state.cached_ids(CH, 2.0) == ["c1"]


def test_a_push_with_no_channel_takes_the_first_requesters_and_refuses_the_others(state):
    # A /relay source pushes without a channel: the chunk is cached for the channel the first
    # waiting requester named, and a /signal requester of another channel is refused.
    announce(state, "s", "c1", channel=None, signal=False)
    assert request(state, "r1", "c1").outs == [pull("s", "c1")]
    request(state, "r2", "c1", channel="channel-2")
    assert state.expire(PULLING_NOTICE_S).outs == [pulling("r1", "c1"), pulling("r2", "c1")]
    result = push(state, "s", "c1", channel=None, signal=False, now=2.0)
    assert result.outs == [relay_ack("s", "c1")]
    assert delivered(result) == [
        ({"type": "chunk_error", "chunkId": "c1", "error": OTHER_CHANNEL}, ("r2",)),
        (data_frame("c1", "relay"), ("r1",)),
    ]
    assert state.cached_ids(CH, 1.0) == ["c1"]


def test_cached_ids_lists_a_channels_chunks_oldest_first(state):
    announce(state, "s", "c3", "c1", "c2", "x")
    announce(state, "t", "y", channel="channel-2")
    for now, chunk_id in enumerate(("c3", "c1", "x", "c2")):
        push(state, "s", chunk_id, now=float(now))
    push(state, "t", "y", channel="channel-2", now=4.0)
    assert state.cached_ids(CH, 5.0) == ["c3", "c1", "x", "c2"]
    assert state.cached_ids("channel-2", 5.0) == ["y"]
    assert state.cached_ids("nowhere", 5.0) == []
    # A hit makes a chunk recently used, not younger.
    request(state, "r", "c3", now=6.0)
    assert state.cached_ids(CH, 6.0) == ["c3", "c1", "x", "c2"]


def test_cached_ids_drops_evicted_chunks(state):
    small = ChunkIndexState(cache_max=3)
    announce(small, "s", "c1", "c2", "c3", "c4")
    for now, chunk_id in enumerate(("c1", "c2", "c3")):
        push(small, "s", chunk_id, now=float(now))
    request(small, "r", "c1", now=3.0)  # c2 is now the least recently used
    push(small, "s", "c4", now=4.0)
    assert small.cached_ids(CH, 4.0) == ["c1", "c3", "c4"]


def test_cached_ids_drops_expired_chunks_swept_or_not(state):
    announce(state, "s", "c1", "c2")
    push(state, "s", "c1", now=0.0)
    push(state, "s", "c2", now=100.0)
    assert state.cached_ids(CH, CACHE_TTL_S - 1) == ["c1", "c2"]
    assert state.cached_ids(CH, CACHE_TTL_S) == ["c2"]  # before the sweep
    state.expire(CACHE_TTL_S)
    assert state.cached_ids(CH, CACHE_TTL_S) == ["c2"]
    state.expire(100.0 + CACHE_TTL_S)
    assert state.cached_ids(CH, 100.0 + CACHE_TTL_S) == []
    assert state.sizes()["channel_cache"] == 0


def test_a_pull_to_a_signal_source_always_names_a_channel(state):
    # A /relay requester names no channel: the pull names the one the source announced.
    announce(state, "s", "c1")
    result = request(state, "q", "c1", channel=None, signal=False)
    assert result.outs == [pull("s", "c1", CH)]
    # The announced channel wins over a requester's: a request naming another channel must not
    # move the chunk out of its own (the apps push under the pull's channel).
    announce(state, "s", "c2")
    assert request(state, "q", "c2", channel="asked", signal=False).outs == [pull("s", "c2", CH)]
    # A /relay source's pull stays as it was: no channel unless a requester named one.
    announce(state, "t", "c3", channel="announced", signal=False)
    assert request(state, "q", "c3", channel=None, signal=False).outs == [pull("t", "c3", None)]


def test_an_announce_pulls_for_waiting_requesters_naming_the_announced_channel(state):
    request(state, "q", "c1", channel=None, signal=False)  # waits on /relay
    result = announce(state, "s", "c1", now=1.0)
    assert result.outs == [
        ChunkOut("s", {"type": "chunk_announce_ack", "registered": 1}),
        pull("s", "c1", CH),
    ]


def test_after_a_time_out_each_signal_source_is_pulled_with_its_own_channel(state):
    request(state, "q", "c1", channel=None, signal=False)
    announce(state, "s1", "c1", channel="ch-a", now=1.0)  # pulled at once
    announce(state, "s2", "c1", channel="ch-b", now=2.0)
    announce(state, "s3", "c1", channel=None, now=3.0)  # a /signal announce may omit it
    result = state.expire(1.0 + PULL_TIMEOUT_S)
    assert sorted(result.outs, key=lambda out: out.peer_id) == [
        pull("s2", "c1", "ch-b"),
        pull("s3", "c1", None),
    ]


# -- both dialects in one index ------------------------------------------------------------


def test_a_relay_source_serves_a_signal_requester(state):
    announce(state, "relay-src", "c1", channel=None, signal=False)
    result = request(state, "r", "c1")
    assert result.outs == [pull("relay-src", "c1", CH)]
    pushed = push(state, "relay-src", "c1", channel=None, signal=False, now=1.0)
    assert pushed.outs == [relay_ack("relay-src", "c1")]
    assert delivered(pushed) == [
        ({"type": "chunk_pulling", "chunkId": "c1"}, ("r",)),
        (data_frame("c1", "relay"), ("r",)),
    ]
    assert state.cached_ids(CH, 1.0) == ["c1"]
    # Both dialects read the one cached copy.
    assert delivered(request(state, "q", "c1", channel=None, now=2.0, signal=False)) == [
        (data_frame("c1", "cache", None), ("q",))
    ]
    assert delivered(request(state, "r2", "c1", now=3.0)) == [(data_frame("c1", "cache"), ("r2",))]
    assert state.cached_hits("c1") == 2


def test_a_signal_source_serves_relay_and_signal_requesters_with_one_pull(state):
    announce(state, "s", "c1")
    assert request(state, "q", "c1", channel=None, signal=False).outs == [pull("s", "c1", CH)]
    assert request(state, "r", "c1", now=1.0).outs == []  # owed chunk_pulling
    result = push(state, "s", "c1", now=1.5)
    assert result.outs == [push_ack("s", "c1", True, 2)]
    assert delivered(result) == [
        ({"type": "chunk_pulling", "chunkId": "c1"}, ("r",)),
        (data_frame("c1", "relay", None), ("q",)),
        (data_frame("c1", "relay"), ("r",)),
    ]
    assert state.statistics()["pullsSent"] == 1


def test_a_relay_requester_keeps_waiting_where_a_signal_one_is_refused(state):
    relay = request(state, "q", "c1", channel=None, signal=False)
    assert [out.frame["type"] for out in relay.outs] == ["chunk_not_found"]
    signal = request(state, "r", "c1")
    assert signal.outs == [chunk_error("r", "c1", NO_SOURCE)]
    assert state.statistics()["pendingRequests"] == 1


def test_the_pull_follows_a_departed_source_for_both_dialects(state):
    announce(state, "s1", "c1", channel="ch-a")
    announce(state, "s2", "c1", channel="ch-b")
    request(state, "r", "c1", channel="ch-a")  # pulls s2, the most recent
    request(state, "q", "c1", channel=None, signal=False)
    result = state.remove_peer("s2", 1.0)
    assert result.outs == [pull("s1", "c1", "ch-a")]  # the first requester's channel
    pushed = push(state, "s1", "c1", channel="ch-a", now=2.0)
    assert pushed.outs == [push_ack("s1", "c1", True, 2)]


# -- any traffic ---------------------------------------------------------------------------

SIGNAL_PEERS = ("a", "b")
RELAY_PEERS = ("c", "d")
peer = st.sampled_from(SIGNAL_PEERS + RELAY_PEERS)
chunk = st.sampled_from(("x", "y"))
channel = st.sampled_from(("ch1", "ch2"))
mixed_ops = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), peer, st.lists(chunk, min_size=1, max_size=2), channel),
        st.tuples(st.just("request"), peer, chunk, channel),
        st.tuples(st.just("push"), peer, chunk, channel),
        st.tuples(st.just("remove"), peer),
        st.tuples(st.just("wait"), st.sampled_from((1.0, 10.0, 300.0, 1800.0, 3600.0))),
    ),
    min_size=10,
    max_size=60,
)


@settings(deadline=None, max_examples=300)
@given(mixed_ops)
def test_mixed_traffic_keeps_each_dialects_rules_and_leaves_nothing_behind(ops):
    state = ChunkIndexState(cache_max=2, pull_hedge=2)
    asked: dict[tuple[str, str], str] = {}  # (/signal peer, chunk) -> the channel it named
    now = 0.0
    for op, *args in ops:
        now += 0.5
        results = [state.expire(now)]  # as the service does: due timers fire first
        signal = op != "wait" and args[0] in SIGNAL_PEERS
        result = ChunkResult()
        if op == "wait":
            now += args[0]
            result = state.expire(now)
        elif op == "announce":
            peer_id, chunk_ids, channel_id = args
            result = announce(
                state, peer_id, *chunk_ids, channel=channel_id, now=now, signal=signal
            )
        elif op == "request":
            peer_id, chunk_id, channel_id = args
            if signal:
                asked[peer_id, chunk_id] = channel_id
            result = request(state, peer_id, chunk_id, channel=channel_id, now=now, signal=signal)
            kinds = [out.frame["type"] for out in result.outs if out.peer_id == peer_id]
            if signal:  # at most one answer now: data or an error; else a notice is owed
                assert len(kinds) + len(result.deliveries) <= 1
                assert kinds in ([], ["chunk_error"], ["error"])
        elif op == "push":
            peer_id, chunk_id, channel_id = args
            pushed_channel = channel_id if signal else None
            with contextlib.suppress(ChunkError):
                result = push(
                    state, peer_id, chunk_id, channel=pushed_channel, now=now, signal=signal
                )
                assert result.outs[0].frame["type"] == "chunk_push_ack"
                assert ("cached" in result.outs[0].frame) is signal
        else:
            result = state.remove_peer(args[0], now)
        results.append(result)
        for out in (out for each in results for out in each.outs):
            if out.frame["type"] == "chunk_pull" and out.peer_id in SIGNAL_PEERS:
                # Every /signal announce here names a channel: so does every pull to it.
                assert "channelId" in out.frame
        for delivery in (delivery for each in results for delivery in each.deliveries):
            frame = json.loads(delivery.text)
            if frame["type"] != "chunk_data":
                continue
            for target in delivery.peer_ids:
                if target in SIGNAL_PEERS:  # served only its own channel's chunk
                    assert frame["channelId"] == asked[target, frame["chunkId"]]
        check_invariants(state, now)
    for peer_id in SIGNAL_PEERS + RELAY_PEERS:
        state.remove_peer(peer_id, now)
    state.expire(now + SOURCE_TTL_S + CACHE_TTL_S)
    assert_idle(state)
