"""``ChunkIndexState`` driven directly, with explicit ``now`` (relay.md "Chunk distribution")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zajel.services.chunks import (
    CACHE_MAX,
    CACHE_TTL_S,
    PENDING_TTL_S,
    PULL_TIMEOUT_S,
    SOURCE_TTL_S,
    Announced,
    ChunkError,
    ChunkIndexState,
    ChunkOut,
    Delivery,
)

NOT_FOUND = "No online sources available. You will be notified when available."


def announce(state, peer, *chunk_ids, now=0.0, channel=None):
    return state.announce(peer, [Announced(c, f"rh-{c}") for c in chunk_ids], channel, now)


def pull(chunk_id, channel=None):
    frame = {"type": "chunk_pull", "chunkId": chunk_id}
    if channel is not None:
        frame["channelId"] = channel
    return frame


def data_frame(chunk_id, data, source, channel=None):
    frame = {"type": "chunk_data", "chunkId": chunk_id, "data": data, "source": source}
    if channel is not None:
        frame["channelId"] = channel
    return frame


def not_found(chunk_id):
    return {"type": "chunk_not_found", "chunkId": chunk_id, "message": NOT_FOUND}


def ack(chunk_id):
    return {"type": "chunk_push_ack", "chunkId": chunk_id}


def pulls(result):
    return [(out.peer_id, out.frame) for out in result.outs if out.frame["type"] == "chunk_pull"]


def assert_idle(state):
    assert state.sizes() == dict.fromkeys(state.sizes(), 0)
    assert state.next_deadline() == math.inf


@pytest.fixture
def state() -> ChunkIndexState:
    return ChunkIndexState()


def test_constants():
    assert SOURCE_TTL_S == 3600.0
    assert PENDING_TTL_S == 300.0
    assert PULL_TIMEOUT_S == 10.0
    assert CACHE_TTL_S == 1800.0
    assert CACHE_MAX == 1000


def test_announce_acks_the_count_and_needs_no_pull_without_requesters(state):
    result = announce(state, "s", "c1", "c2")
    assert result.outs == [ChunkOut("s", {"type": "chunk_announce_ack", "registered": 2})]
    assert result.deliveries == []
    stats = state.statistics(0.0)
    assert stats["trackedChunks"] == 2
    assert stats["totalSources"] == 2


def test_one_pull_for_many_requesters(state):
    announce(state, "s", "c")
    first = state.request("r1", "c", None, 1.0)
    assert first.outs == [ChunkOut("s", pull("c"))]
    assert first.deliveries == []
    for requester in ("r2", "r3"):
        waiting = state.request(requester, "c", None, 2.0)
        assert waiting.outs == []  # a pull is already in flight: neither a pull nor not_found
        assert waiting.deliveries == []
    assert state.statistics(2.0)["pendingRequests"] == 3
    assert state.statistics(2.0)["pullsSent"] == 1

    pushed = state.push("s", "c", {"x": 1}, 3.0)
    assert pushed.outs == [ChunkOut("s", ack("c"))]
    assert pushed.deliveries == [
        Delivery(data_frame("c", {"x": 1}, "relay"), ("r1", "r2", "r3")),
    ]
    stats = state.statistics(3.0)
    assert stats["pendingRequests"] == 0
    assert stats["cachedChunks"] == 1
    assert stats["cacheMisses"] == 3
    sizes = state.sizes()
    assert sizes["pending_entries"] == sizes["peer_pending"] == 0
    assert sizes["pulls"] == sizes["peer_pulls"] == 0


def test_request_with_no_source_gets_not_found_and_a_later_announce_pulls(state):
    result = state.request("r", "c", "ch", 0.0)
    assert result.outs == [ChunkOut("r", not_found("c"))]
    assert state.statistics(0.0)["pendingRequests"] == 1
    later = announce(state, "s", "c", now=5.0)
    assert later.outs[1:] == [ChunkOut("s", pull("c", "ch"))]
    assert state.push("s", "c", "d", 6.0).deliveries == [
        Delivery(data_frame("c", "d", "relay", "ch"), ("r",))
    ]


def test_the_requester_is_never_pulled_itself(state):
    announce(state, "a", "c")
    assert state.request("a", "c", None, 1.0).outs == [ChunkOut("a", not_found("c"))]


def test_most_recently_announced_source_is_pulled(state):
    announce(state, "old", "c", now=0.0)
    announce(state, "new", "c", now=1.0)
    assert pulls(state.request("r", "c", None, 2.0)) == [("new", pull("c"))]


def test_reannounce_makes_a_source_the_most_recent(state):
    announce(state, "a", "c", now=0.0)
    announce(state, "b", "c", now=1.0)
    announce(state, "a", "c", now=2.0)
    assert pulls(state.request("r", "c", None, 3.0)) == [("a", pull("c"))]


def test_silent_source_is_replaced_every_10s_then_given_up(state):
    announce(state, "s1", "c", now=0.0)
    announce(state, "s2", "c", now=1.0)
    announce(state, "s3", "c", now=2.0)
    assert pulls(state.request("r", "c", None, 100.0)) == [("s3", pull("c"))]
    assert state.next_deadline() == 110.0
    assert state.expire(109.9).outs == []
    assert state.expire(110.0).outs == [ChunkOut("s2", pull("c"))]
    assert state.next_deadline() == 120.0
    assert state.expire(120.0).outs == [ChunkOut("s1", pull("c"))]
    assert state.expire(130.0).outs == []  # nobody left to try: the pull is given up
    assert state.sizes()["pulls"] == 0
    assert state.statistics(130.0)["pendingRequests"] == 1  # the requester still waits
    assert state.statistics(130.0)["pullsSent"] == 3
    # A new request starts a new round: the most recent source is tried again.
    assert pulls(state.request("r", "c", None, 131.0)) == [("s3", pull("c"))]


def test_pull_given_up_when_every_requester_has_gone(state):
    announce(state, "s1", "c", now=0.0)
    announce(state, "s2", "c", now=1.0)
    state.request("r", "c", None, 2.0)
    state.remove_peer("r", 3.0)
    assert state.expire(12.0).outs == []
    assert state.sizes()["pulls"] == 0


def test_departed_pulled_peer_may_not_push(state):
    announce(state, "s1", "c", now=0.0)
    state.request("r", "c", None, 1.0)
    state.remove_peer("s1", 2.0)  # s1 leaves; no source left, the pull is dropped
    assert state.sizes()["pulls"] == 0
    with pytest.raises(ChunkError) as info:
        state.push("s1", "c", "d", 3.0)
    assert info.value.code == "not_a_source"
    assert info.value.message == "Not a source for this chunk"


def test_pulled_peer_whose_source_entry_expired_may_still_push(state):
    announce(state, "s", "c", now=0.0)
    state.request("r", "c", None, SOURCE_TTL_S - 1)  # pulls s one second before it expires
    state.expire(SOURCE_TTL_S)
    assert state.statistics(SOURCE_TTL_S)["totalSources"] == 0
    pushed = state.push("s", "c", "d", SOURCE_TTL_S + 1)  # pulled, so allowed
    assert pushed.deliveries == [Delivery(data_frame("c", "d", "relay"), ("r",))]


def test_push_from_a_non_source_raises_and_changes_nothing(state):
    announce(state, "s", "c")
    state.request("r", "c", None, 1.0)
    before = state.sizes()
    with pytest.raises(ChunkError) as info:
        state.push("mallory", "c", "evil", 2.0)
    assert (info.value.code, info.value.message) == ("not_a_source", "Not a source for this chunk")
    assert state.sizes() == before
    assert state.cached_hits("c") is None


def test_any_announced_source_may_push_unasked(state):
    announce(state, "s", "c")
    pushed = state.push("s", "c", "d", 1.0)
    assert pushed.outs == [ChunkOut("s", ack("c"))]
    assert pushed.deliveries == []
    assert state.cached_hits("c") == 0


def test_cached_chunk_is_served_at_once_and_counts_a_hit(state):
    announce(state, "s", "c")
    state.push("s", "c", [1, 2], 1.0)
    result = state.request("r", "c", "ch", 2.0)
    assert result.outs == []
    assert result.deliveries == [Delivery(data_frame("c", [1, 2], "cache", "ch"), ("r",))]
    assert state.cached_hits("c") == 1
    state.request("r2", "c", None, 3.0)
    assert state.cached_hits("c") == 2
    stats = state.statistics(3.0)
    assert (stats["cacheHits"], stats["cacheMisses"], stats["pullsSent"]) == (2, 0, 0)
    assert stats["pendingRequests"] == 0


def test_cache_is_lru_not_fifo():
    state = ChunkIndexState(cache_max=3)
    announce(state, "s", "a", "b", "c", "d")
    for i, chunk in enumerate("abc"):
        state.push("s", chunk, chunk, float(i))
    state.request("r", "a", None, 5.0)  # "a" is now the most recently used
    state.push("s", "d", "d", 6.0)  # evicts "b", the least recently used (FIFO would evict "a")
    assert state.cached_hits("a") == 1
    assert state.cached_hits("b") is None
    assert state.cached_hits("c") == 0
    assert state.cached_hits("d") == 0
    assert state.sizes()["cache"] == 3
    assert state.request("r", "a", None, 7.0).deliveries[0].frame["source"] == "cache"


def test_cache_expires_after_30_minutes(state):
    announce(state, "s", "c")
    state.push("s", "c", "d", 0.0)
    assert state.request("r", "c", None, CACHE_TTL_S - 1).deliveries  # a hit, not a renewal
    miss = state.request("r2", "c", None, CACHE_TTL_S)  # expired even before the sweep
    assert miss.deliveries == []
    assert miss.outs == [ChunkOut("s", pull("c"))]
    assert state.cached_hits("c") is None
    assert state.statistics(CACHE_TTL_S)["cachedChunks"] == 0


def test_cache_entry_swept_by_expire(state):
    announce(state, "s", "c")
    state.push("s", "c", "d", 0.0)
    state.remove_peer("s", 1.0)
    assert state.next_deadline() == CACHE_TTL_S
    state.expire(CACHE_TTL_S)
    assert_idle(state)


def test_source_expires_after_1_hour(state):
    announce(state, "s", "c", now=0.0)
    assert state.statistics(SOURCE_TTL_S - 1)["totalSources"] == 1
    result = state.request("r", "c", None, SOURCE_TTL_S + 1)  # before any sweep
    assert result.outs == [ChunkOut("r", not_found("c"))]
    state.expire(SOURCE_TTL_S + 1)
    assert state.sizes()["source_entries"] == 0
    assert state.sizes()["peer_sources"] == 0


def test_reannounce_refreshes_the_source_ttl(state):
    announce(state, "s", "c", now=0.0)
    announce(state, "s", "c", now=1800.0)
    assert state.expire(SOURCE_TTL_S + 1).outs == []
    assert state.statistics(SOURCE_TTL_S + 1)["totalSources"] == 1
    assert pulls(state.request("r", "c", None, SOURCE_TTL_S + 2)) == [("s", pull("c"))]
    assert state.request("r2", "x", None, 0.0).outs == [ChunkOut("r2", not_found("x"))]
    state.remove_peer("r", 0.0)
    state.remove_peer("r2", 0.0)
    state.expire(1800.0 + SOURCE_TTL_S)
    assert_idle(state)


def test_pending_requests_dropped_after_5_minutes(state):
    state.request("r", "c", None, 0.0)
    assert state.statistics(PENDING_TTL_S - 1)["pendingRequests"] == 1
    state.expire(PENDING_TTL_S)
    assert state.statistics(PENDING_TTL_S)["pendingRequests"] == 0
    announced = announce(state, "s", "c", now=PENDING_TTL_S + 1)
    assert pulls(announced) == []  # nobody waits any more
    pushed = state.push("s", "c", "d", PENDING_TTL_S + 2)
    assert pushed.deliveries == []


def test_rerequest_refreshes_the_pending_ttl_and_channel(state):
    state.request("r", "c", "old", 0.0)
    state.request("r", "c", "new", 200.0)
    state.expire(PENDING_TTL_S)
    assert state.statistics(PENDING_TTL_S)["pendingRequests"] == 1
    assert pulls(announce(state, "s", "c", now=301.0)) == [("s", pull("c", "new"))]
    assert state.push("s", "c", "d", 302.0).deliveries == [
        Delivery(data_frame("c", "d", "relay", "new"), ("r",))
    ]


def test_channel_id_echoed_and_one_delivery_per_channel(state):
    state.request("r1", "c", None, 0.0)
    state.request("r2", "c", "ch-a", 0.0)
    state.request("r3", "c", "ch-b", 0.0)
    state.request("r4", "c", "ch-a", 0.0)
    state.request("r5", "c", None, 0.0)
    # the pull echoes the channel of the first requester that gave one
    assert pulls(announce(state, "s", "c", now=1.0)) == [("s", pull("c", "ch-a"))]
    pushed = state.push("s", "c", "d", 2.0)
    assert pushed.deliveries == [
        Delivery(data_frame("c", "d", "relay"), ("r1", "r5")),
        Delivery(data_frame("c", "d", "relay", "ch-a"), ("r2", "r4")),
        Delivery(data_frame("c", "d", "relay", "ch-b"), ("r3",)),
    ]
    assert "channelId" not in pushed.deliveries[0].frame


def test_request_pull_echoes_the_channel(state):
    announce(state, "s", "c")
    assert pulls(state.request("r", "c", "ch", 1.0)) == [("s", pull("c", "ch"))]


def test_pusher_is_not_delivered_to(state):
    announce(state, "s", "c")
    state.request("r", "c", None, 1.0)
    announce(state, "t", "c", now=1.5)  # a pull is in flight already: no second pull
    state.request("t", "c", None, 2.0)  # t waits too (it is not sent a pull)
    pushed = state.push("t", "c", "d", 3.0)  # t is a source: allowed
    assert pushed.deliveries == [Delivery(data_frame("c", "d", "relay"), ("r",))]
    assert state.sizes()["pending_entries"] == 0
    assert state.sizes()["pulls"] == 0


def test_announce_pulls_only_without_cache_or_pull_in_flight(state):
    announce(state, "s1", "c")
    state.request("r", "c", None, 1.0)
    assert pulls(announce(state, "s2", "c", now=2.0)) == []  # pull in flight to s1
    state.push("s1", "c", "d", 3.0)
    state.request("r2", "c", None, 4.0)  # served from the cache: nobody waits
    assert pulls(announce(state, "s3", "c", now=5.0)) == []


def test_announce_withdraws_the_announcers_own_request(state):
    state.request("a", "c", None, 0.0)
    announced = announce(state, "a", "c", now=1.0)
    assert pulls(announced) == []
    assert state.statistics(1.0)["pendingRequests"] == 0


def test_remove_peer_redirects_a_pull_in_flight(state):
    announce(state, "s1", "c", now=0.0)
    announce(state, "s2", "c", now=1.0)
    assert pulls(state.request("r", "c", "ch", 2.0)) == [("s2", pull("c", "ch"))]
    moved = state.remove_peer("s2", 3.0)
    assert moved.outs == [ChunkOut("s1", pull("c", "ch"))]
    assert state.next_deadline() == 13.0
    with pytest.raises(ChunkError):
        state.push("s2", "c", "d", 4.0)  # gone, and no longer pulled
    dropped = state.remove_peer("s1", 5.0)
    assert dropped.outs == []  # none left: the pull is dropped, the requester keeps waiting
    assert state.sizes()["pulls"] == 0
    assert state.statistics(5.0)["pendingRequests"] == 1
    assert pulls(announce(state, "s3", "c", now=6.0)) == [("s3", pull("c", "ch"))]


def test_remove_peer_removes_its_pending_requests_and_sources(state):
    announce(state, "s", "c")
    state.request("r", "c", None, 1.0)
    state.request("r", "x", None, 1.0)
    state.request("q", "c", None, 1.0)
    state.remove_peer("r", 2.0)
    assert state.statistics(2.0)["pendingRequests"] == 1
    assert state.push("s", "c", "d", 3.0).deliveries == [
        Delivery(data_frame("c", "d", "relay"), ("q",))
    ]
    state.remove_peer("s", 4.0)
    assert state.statistics(4.0)["totalSources"] == 0
    state.remove_peer("nobody", 5.0)  # unknown: no-op


def test_statistics(state):
    assert state.statistics(0.0) == {
        "trackedChunks": 0,
        "totalSources": 0,
        "cachedChunks": 0,
        "pendingRequests": 0,
        "cacheHits": 0,
        "cacheMisses": 0,
        "pullsSent": 0,
    }
    announce(state, "s1", "a", "b")
    announce(state, "s2", "a")
    state.request("r", "a", None, 1.0)  # miss, pull to s2
    state.request("r", "z", None, 1.0)  # miss, not found
    state.push("s2", "a", "d", 2.0)
    state.request("r", "a", None, 3.0)  # hit
    assert state.statistics(3.0) == {
        "trackedChunks": 2,
        "totalSources": 3,
        "cachedChunks": 1,
        "pendingRequests": 1,
        "cacheHits": 1,
        "cacheMisses": 2,
        "pullsSent": 1,
    }


def test_next_deadline_is_the_earliest(state):
    assert state.next_deadline() == math.inf
    announce(state, "s", "c", now=0.0)
    assert state.next_deadline() == SOURCE_TTL_S
    state.request("r", "x", None, 10.0)
    assert state.next_deadline() == 10.0 + PENDING_TTL_S
    state.request("r", "c", None, 20.0)
    assert state.next_deadline() == 20.0 + PULL_TIMEOUT_S


def test_memory_is_released_when_everyone_leaves(state):
    peers = [f"p{i}" for i in range(50)]
    for i, peer in enumerate(peers):
        now = float(i)
        announce(state, peer, *(f"c{(i + k) % 40}" for k in range(5)), now=now)
        for k in range(3):
            state.request(peer, f"c{(i * 7 + k) % 60}", f"ch{k % 2}", now)
        if i % 5 == 0:
            chunk = f"c{i % 40}"
            state.push(peer, chunk, {"i": i}, now)
            state.request(peers[0], chunk, None, now)
        state.expire(now)
    assert state.sizes()["source_entries"] > 0
    for peer in peers:
        state.remove_peer(peer, 60.0)
    state.expire(60.0 + max(SOURCE_TTL_S, CACHE_TTL_S, PENDING_TTL_S) + 1)
    assert_idle(state)


def test_memory_is_released_by_expiry_alone(state):
    for i in range(20):
        announce(state, f"s{i}", f"c{i}", now=float(i))
        state.request(f"r{i}", f"c{i}", None, float(i))
        state.request(f"r{i}", f"missing{i}", None, float(i))
    state.push("s0", "c0", "d", 30.0)
    state.expire(SOURCE_TTL_S + 100)
    assert_idle(state)


PEERS = ("a", "b", "c", "d")
CHUNKS = ("x", "y")
peer = st.sampled_from(PEERS)
chunk = st.sampled_from(CHUNKS)
channel = st.none() | st.sampled_from(("ch1", "ch2"))
chunk_ops = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), peer, st.lists(chunk, min_size=1, max_size=2)),
        st.tuples(st.just("request"), peer, chunk, channel),
        st.tuples(st.just("push"), peer, chunk),
        st.tuples(st.just("remove"), peer),
        st.tuples(st.just("wait"), st.sampled_from((1.0, 10.0, 300.0, 1800.0, 3600.0))),
    ),
    max_size=40,
)


@settings(deadline=None, max_examples=200)
@given(chunk_ops)
def test_random_traffic_pulls_sources_only_and_leaves_nothing_behind(ops):
    state = ChunkIndexState(cache_max=1)
    sources: dict[str, dict[str, float]] = {}  # chunk -> peer -> expiry (a model of the index)
    now = 0.0
    for op, *args in ops:
        now += 0.5
        if op == "wait":
            now += args[0]
            result = state.expire(now)
        elif op == "announce":
            result = announce(state, args[0], *args[1], now=now)
            for chunk_id in args[1]:
                sources.setdefault(chunk_id, {})[args[0]] = now + SOURCE_TTL_S
        elif op == "request":
            result = state.request(args[0], args[1], args[2], now)
            assert all(
                out.peer_id != args[0] for out in result.outs if out.frame["type"] == "chunk_pull"
            )
        elif op == "push":
            pusher, chunk_id = args
            held = sources.get(chunk_id, {}).get(pusher, 0.0) > now
            if not held and state.sizes()["pulls"] == 0:
                before = state.sizes()
                with pytest.raises(ChunkError, match="Not a source for this chunk"):
                    state.push(pusher, chunk_id, "d", now)
                assert state.sizes() == before
                continue
            try:
                result = state.push(pusher, chunk_id, "d", now)
            except ChunkError:  # neither announced nor pulled: rejected, as tested above
                assert not held
                continue
            assert result.outs[0] == ChunkOut(pusher, ack(chunk_id))
            assert all(pusher not in delivery.peer_ids for delivery in result.deliveries)
        else:
            result = state.remove_peer(args[0], now)
            for by_peer in sources.values():
                by_peer.pop(args[0], None)
            assert all(out.peer_id != args[0] for out in result.outs)
        for out in result.outs:
            if out.frame["type"] == "chunk_pull":  # only ever to a live, announced source
                assert sources[out.frame["chunkId"]][out.peer_id] > now
        stats = state.statistics(now)
        assert stats["cachedChunks"] <= 1
        sizes = state.sizes()
        assert sizes["pull_tried"] >= sizes["pulls"] >= sizes["peer_pulls"]
    for p in PEERS:
        state.remove_peer(p, now)
    state.expire(now + SOURCE_TTL_S + CACHE_TTL_S)
    assert_idle(state)


def test_one_peer_holds_a_bounded_number_of_sources_and_pending_requests():
    state = ChunkIndexState(max_sources_per_peer=3, max_pending_per_peer=2)
    announced = [Announced(f"c{index}", "h") for index in range(5)]
    result = state.announce("holder", announced, None, 0.0)
    assert result.outs[0].frame == {"type": "chunk_announce_ack", "registered": 3}
    # Re-announcing what it holds still counts; new ids past the cap do not.
    again = state.announce("holder", [Announced("c0", "h"), Announced("c9", "h")], None, 1.0)
    assert again.outs[0].frame == {"type": "chunk_announce_ack", "registered": 1}
    assert state.statistics(1.0)["totalSources"] == 3

    state.request("asker", "x1", None, 2.0)
    state.request("asker", "x2", None, 2.0)
    refused = state.request("asker", "x3", None, 2.0)
    assert [out.frame for out in refused.outs] == [
        {"type": "error", "code": "rate_limited", "message": "Too many pending chunk requests"}
    ]
    state.request("asker", "x1", None, 3.0)  # refreshing a pending request is fine
    assert state.statistics(3.0)["pendingRequests"] == 2
    state.remove_peer("holder", 4.0)
    state.remove_peer("asker", 4.0)
    state.expire(10_000.0)
    assert set(state.sizes().values()) == {0}
