"""``ChunkIndexState`` driven directly, with explicit ``now`` (docs/protocol/chunks.md)."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.services.fakes import NoScan
from zajel.protocol.frames import encode
from zajel.services import chunks as chunks_module
from zajel.services.chunks import (
    CACHE_BYTES,
    CACHE_MAX,
    CACHE_TTL_S,
    PENDING_TTL_S,
    PULL_HEDGE,
    PULL_TIMEOUT_S,
    SOURCE_TTL_S,
    Announced,
    ChunkError,
    ChunkIndexState,
    ChunkOut,
)

NOT_FOUND = "No online sources available. You will be notified when available."
TOO_MANY = "Too many pending chunk requests"
IP = "192.0.2.1"


def announce(state, peer, *chunk_ids, now=0.0, channel=None, ip=IP):
    return state.announce(peer, [Announced(c, f"rh-{c}") for c in chunk_ids], channel, now, ip=ip)


def request(state, peer, chunk_id, channel, now, ip=IP):
    return state.request(peer, chunk_id, channel, now, ip=ip)


def push(state, peer, chunk_id, data, now):
    """Push ``data`` as the decoder hands it on: its compact UTF-8 JSON."""
    return state.push(peer, chunk_id, encode(data).encode(), now)


def serve(state, chunk_id, data, now, source="s", asker="asker"):
    """``asker`` requests ``chunk_id``, ``source`` (pulled for it) pushes ``data``: cached."""
    assert pulls(request(state, asker, chunk_id, None, now)) == [(source, pull(chunk_id))]
    return push(state, source, chunk_id, data, now)


def delivered(result):
    """Each delivery as (decoded frame, peers); its text is checked to be the encoded frame."""
    decoded = []
    for delivery in result.deliveries:
        frame = json.loads(delivery.text)
        assert delivery.text == encode(frame)  # compact, raw UTF-8, the documented key order
        decoded.append((frame, delivery.peer_ids))
    return decoded


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


def check_invariants(state, now):
    """The module's invariants, checked on the internals."""
    for chunk_id, trusted in state._trusted.items():
        assert trusted, chunk_id
        assert trusted <= set(state._sources[chunk_id]), chunk_id
    for chunk_id, candidates in state._candidates.items():
        assert candidates, chunk_id
        for peer_id in candidates:
            source = state._sources[chunk_id][peer_id]
            assert not source.withheld
            assert peer_id not in state._pending.get(chunk_id, {})
            assert peer_id not in state._pulls.get(chunk_id, ())
    for chunk_id, sources in state._sources.items():
        for peer_id, source in sources.items():
            eligible = (
                not source.withheld
                and peer_id not in state._pending.get(chunk_id, {})
                and peer_id not in state._pulls.get(chunk_id, ())
            )
            # An expired source that is not yet swept may have been dropped as met.
            if eligible and now < source.expires_at:
                assert peer_id in state._candidates[chunk_id], (chunk_id, peer_id)
    assert state.sizes()["cache_bytes"] == sum(len(e.data_json) for e in state._cache.values())
    assert state.sizes()["source_count"] == state.sizes()["source_entries"]
    assert state.sizes()["pending_count"] == state.sizes()["pending_entries"]
    assert sum(state._ip_sources.values()) == state.sizes()["source_entries"]
    assert sum(state._ip_pending.values()) == state.sizes()["pending_entries"]
    for chunk_id in state._cache:
        if now < state._cache[chunk_id].expires_at:
            assert not any(now < e.expires_at for e in state._pending.get(chunk_id, {}).values())


@pytest.fixture
def state() -> ChunkIndexState:
    return ChunkIndexState()


def test_constants():
    assert SOURCE_TTL_S == 3600.0
    assert PENDING_TTL_S == 300.0
    assert PULL_TIMEOUT_S == 10.0
    assert CACHE_TTL_S == 1800.0
    assert CACHE_MAX == 1000
    assert CACHE_BYTES == 64 << 20
    assert PULL_HEDGE == 8


def test_announce_acks_the_count_and_needs_no_pull_without_requesters(state):
    result = announce(state, "s", "c1", "c2")
    assert result.outs == [ChunkOut("s", {"type": "chunk_announce_ack", "registered": 2})]
    assert delivered(result) == []
    stats = state.statistics()
    assert stats["trackedChunks"] == 2
    assert stats["totalSources"] == 2


def test_one_pull_for_many_requesters(state):
    announce(state, "s", "c")
    first = request(state, "r1", "c", None, 1.0)
    assert first.outs == [ChunkOut("s", pull("c"))]
    assert delivered(first) == []
    for requester in ("r2", "r3"):
        waiting = request(state, requester, "c", None, 2.0)
        assert waiting.outs == []  # a pull is already in flight: neither a pull nor not_found
        assert delivered(waiting) == []
    assert state.statistics()["pendingRequests"] == 3
    assert state.statistics()["pullsSent"] == 1

    pushed = push(state, "s", "c", {"x": 1}, 3.0)
    assert pushed.outs == [ChunkOut("s", ack("c"))]
    assert delivered(pushed) == [
        (data_frame("c", {"x": 1}, "relay"), ("r1", "r2", "r3")),
    ]
    stats = state.statistics()
    assert stats["pendingRequests"] == 0
    assert stats["cachedChunks"] == 1
    assert stats["cacheMisses"] == 3
    sizes = state.sizes()
    assert sizes["pending_entries"] == sizes["peer_pending"] == 0
    assert sizes["pulls"] == sizes["peer_pulls"] == 0


def test_request_with_no_source_gets_not_found_and_a_later_announce_pulls(state):
    result = request(state, "r", "c", "ch", 0.0)
    assert result.outs == [ChunkOut("r", not_found("c"))]
    assert state.statistics()["pendingRequests"] == 1
    later = announce(state, "s", "c", now=5.0)
    assert later.outs[1:] == [ChunkOut("s", pull("c", "ch"))]
    assert delivered(push(state, "s", "c", "d", 6.0)) == [
        (data_frame("c", "d", "relay", "ch"), ("r",))
    ]


def test_the_requester_is_never_pulled_itself(state):
    announce(state, "a", "c")
    assert request(state, "a", "c", None, 1.0).outs == [ChunkOut("a", not_found("c"))]


def test_most_recently_announced_source_is_pulled(state):
    announce(state, "old", "c", now=0.0)
    announce(state, "new", "c", now=1.0)
    assert pulls(request(state, "r", "c", None, 2.0)) == [("new", pull("c"))]


def test_reannounce_makes_a_source_the_most_recent(state):
    announce(state, "a", "c", now=0.0)
    announce(state, "b", "c", now=1.0)
    announce(state, "a", "c", now=2.0)
    assert pulls(request(state, "r", "c", None, 3.0)) == [("a", pull("c"))]


def test_after_a_time_out_the_other_sources_are_pulled_together(state):
    announce(state, "s1", "c", now=0.0)
    announce(state, "s2", "c", now=1.0)
    announce(state, "s3", "c", now=2.0)
    announce(state, "s4", "c", now=3.0)
    assert pulls(request(state, "r", "c", "ch", 100.0)) == [("s4", pull("c", "ch"))]
    assert state.next_deadline() == 110.0
    assert state.expire(109.9).outs == []
    # One time-out: the rest at once, alternately newest and longest-standing.
    assert state.expire(110.0).outs == [
        ChunkOut("s3", pull("c", "ch")),
        ChunkOut("s1", pull("c", "ch")),
        ChunkOut("s2", pull("c", "ch")),
    ]
    assert state._sources["c"]["s4"].withheld
    # The first push wins; the others' late pushes are acknowledged and change nothing.
    assert delivered(push(state, "s1", "c", "real", 111.0)) == [
        (data_frame("c", "real", "relay", "ch"), ("r",))
    ]
    late = push(state, "s2", "c", "junk", 112.0)
    assert late.outs == [ChunkOut("s2", ack("c"))]
    assert late.deliveries == []
    assert state.cached_data("c") == b'"real"'
    # s3 never pushes: its own pull times out and marks it too.
    assert state.expire(120.0).outs == []
    assert [p for p, source in state._sources["c"].items() if source.withheld] == ["s3", "s4"]
    assert state.statistics()["pullsSent"] == 4
    check_invariants(state, 120.0)


def test_a_source_that_let_a_pull_time_out_is_never_pulled_for_that_chunk_again(state):
    announce(state, "slow", "c", "d", now=0.0)
    assert pulls(request(state, "r", "c", None, 1.0)) == [("slow", pull("c"))]
    assert state.expire(11.0).outs == []  # nobody else to try: given up, r keeps waiting
    assert state.statistics()["pendingRequests"] == 1
    assert pulls(request(state, "r", "c", None, 12.0)) == []  # a new request: still not it
    assert announce(state, "slow", "c", now=13.0).outs[1:] == []  # re-announcing keeps the mark
    assert state._sources["c"]["slow"].withheld
    # For another chunk it is pulled as before, and it may still push what it announced.
    assert pulls(request(state, "r", "d", None, 14.0)) == [("slow", pull("d"))]
    assert delivered(push(state, "slow", "c", "late", 15.0)) == [
        (data_frame("c", "late", "relay"), ("r",))
    ]
    # The mark goes with the source entry: after leaving, a new announce is a fresh source.
    state.remove_peer("slow", 16.0)
    announce(state, "slow", "c", now=17.0)
    assert not state._sources["c"]["slow"].withheld
    check_invariants(state, 17.0)


def test_three_withholding_sybils_delay_a_requester_by_one_time_out_only(state):
    announce(state, "genuine", "c", now=0.0)
    for index, sybil in enumerate(("sybil-1", "sybil-2", "sybil-3")):
        announce(state, sybil, "c", now=1.0 + index)  # announced last: the first pulled
    assert pulls(request(state, "r", "c", None, 10.0)) == [("sybil-3", pull("c"))]
    hedge = state.expire(10.0 + PULL_TIMEOUT_S).outs
    assert {out.peer_id for out in hedge} == {"genuine", "sybil-1", "sybil-2"}
    assert delivered(push(state, "genuine", "c", "real", 10.0 + PULL_TIMEOUT_S + 1)) == [
        (data_frame("c", "real", "relay"), ("r",))
    ]
    state.expire(10.0 + 2 * PULL_TIMEOUT_S)  # the two others withheld too
    # Once the cached copy has expired, a new request pulls the genuine source alone.
    later = 10.0 + CACHE_TTL_S + 60
    state.expire(later)
    assert state.cached_hits("c") is None
    for peer in ("genuine", "sybil-1", "sybil-2", "sybil-3"):
        announce(state, peer, "c", now=later)
    assert pulls(request(state, "r2", "c", None, later + 1)) == [("genuine", pull("c"))]
    check_invariants(state, later + 1)


def test_a_hedge_is_bounded_and_takes_both_ends_of_the_announce_order():
    state = ChunkIndexState(pull_hedge=3)
    for index in range(10):
        announce(state, f"s{index}", "c", now=float(index))
    assert pulls(request(state, "r", "c", None, 20.0)) == [("s9", pull("c"))]
    assert [out.peer_id for out in state.expire(30.0).outs] == ["s8", "s0", "s7"]
    assert [out.peer_id for out in state.expire(40.0).outs] == ["s6", "s1", "s5"]
    # A pulled source that leaves fails its pull too: the next hedge goes out at once.
    state.remove_peer("s6", 41.0)
    state.remove_peer("s1", 41.0)
    assert [out.peer_id for out in state.remove_peer("s5", 41.0).outs] == ["s4", "s2", "s3"]
    assert state.expire(51.0).outs == []  # none left untried: given up
    assert state.statistics()["pendingRequests"] == 1
    check_invariants(state, 51.0)


def test_pull_given_up_when_every_requester_has_gone(state):
    announce(state, "s1", "c", now=0.0)
    announce(state, "s2", "c", now=1.0)
    request(state, "r", "c", None, 2.0)
    state.remove_peer("r", 3.0)
    assert state.expire(12.0).outs == []
    assert state.sizes()["pulls"] == 0


def test_departed_pulled_peer_may_not_push(state):
    announce(state, "s1", "c", now=0.0)
    request(state, "r", "c", None, 1.0)
    state.remove_peer("s1", 2.0)  # s1 leaves; no source left, the pull is dropped
    assert state.sizes()["pulls"] == 0
    with pytest.raises(ChunkError) as info:
        push(state, "s1", "c", "d", 3.0)
    assert info.value.code == "not_a_source"
    assert info.value.message == "Not a source for this chunk"


def test_pulled_peer_whose_source_entry_expired_may_still_push(state):
    announce(state, "s", "c", now=0.0)
    request(state, "r", "c", None, SOURCE_TTL_S - 1)  # pulls s one second before it expires
    state.expire(SOURCE_TTL_S)
    assert state.statistics()["totalSources"] == 0
    pushed = push(state, "s", "c", "d", SOURCE_TTL_S + 1)  # pulled, so allowed
    assert delivered(pushed) == [(data_frame("c", "d", "relay"), ("r",))]


def test_push_from_a_non_source_raises_and_changes_nothing(state):
    announce(state, "s", "c")
    request(state, "r", "c", None, 1.0)
    before = state.sizes()
    with pytest.raises(ChunkError) as info:
        push(state, "mallory", "c", "evil", 2.0)
    assert (info.value.code, info.value.message) == ("not_a_source", "Not a source for this chunk")
    assert state.sizes() == before
    assert state.cached_hits("c") is None


def test_an_unasked_push_nobody_waits_for_is_acknowledged_and_not_stored(state):
    announce(state, "s", "c")
    pushed = push(state, "s", "c", "d", 1.0)
    assert pushed.outs == [ChunkOut("s", ack("c"))]
    assert delivered(pushed) == []
    assert state.cached_hits("c") is None
    assert_idle_but_sources(state)


def assert_idle_but_sources(state):
    sizes = state.sizes()
    assert sizes["cache"] == sizes["cache_bytes"] == sizes["pending_entries"] == 0
    assert sizes["pulls"] == 0


def test_an_announcing_source_may_push_unasked_while_others_wait(state):
    announce(state, "s1", "c", now=0.0)
    announce(state, "s2", "c", now=1.0)
    assert pulls(request(state, "r", "c", None, 2.0)) == [("s2", pull("c"))]
    pushed = push(state, "s1", "c", "d", 3.0)  # not pulled, but r waits: accepted
    assert pushed.outs == [ChunkOut("s1", ack("c"))]
    assert delivered(pushed) == [(data_frame("c", "d", "relay"), ("r",))]
    assert state.cached_data("c") == b'"d"'


def test_a_push_never_replaces_a_cached_copy(state):
    announce(state, "s", "c")
    serve(state, "c", {"genuine": True}, 1.0)
    announce(state, "mallory", "c", now=2.0)
    for now in (3.0, 4.0):
        for pusher in ("mallory", "s"):
            ignored = push(state, pusher, "c", "junk", now)
            assert ignored.outs == [ChunkOut(pusher, ack("c"))]
            assert ignored.deliveries == []
    assert state.cached_data("c") == b'{"genuine":true}'
    # Nor is its 30 minutes extended by a later push.
    push(state, "s", "c", {"genuine": True}, 100.0)
    state.expire(1.0 + CACHE_TTL_S)
    assert state.cached_hits("c") is None


def test_cached_chunk_is_served_at_once_and_counts_a_hit(state):
    announce(state, "s", "c")
    serve(state, "c", [1, 2], 1.0)
    result = request(state, "r", "c", "ch", 2.0)
    assert result.outs == []
    assert delivered(result) == [(data_frame("c", [1, 2], "cache", "ch"), ("r",))]
    assert state.cached_hits("c") == 1
    request(state, "r2", "c", None, 3.0)
    assert state.cached_hits("c") == 2
    stats = state.statistics()
    assert (stats["cacheHits"], stats["cacheMisses"], stats["pullsSent"]) == (2, 1, 1)
    assert stats["pendingRequests"] == 0


def test_cache_is_lru_not_fifo():
    state = ChunkIndexState(cache_max=3)
    announce(state, "s", "a", "b", "c", "d")
    for i, chunk in enumerate("abc"):
        serve(state, chunk, chunk, float(i))
    request(state, "r", "a", None, 5.0)  # "a" is now the most recently used
    serve(state, "d", "d", 6.0)  # evicts "b", the least recently used (FIFO would evict "a")
    assert state.cached_hits("a") == 1
    assert state.cached_hits("b") is None
    assert state.cached_hits("c") == 0
    assert state.cached_hits("d") == 0
    assert state.sizes()["cache"] == 3
    assert delivered(request(state, "r", "a", None, 7.0))[0][0]["source"] == "cache"


def test_cache_expires_after_30_minutes(state):
    announce(state, "s", "c")
    serve(state, "c", "d", 0.0)
    assert request(state, "r", "c", None, CACHE_TTL_S - 1).deliveries  # a hit, not a renewal
    miss = request(state, "r2", "c", None, CACHE_TTL_S)  # expired even before the sweep
    assert delivered(miss) == []
    assert miss.outs == [ChunkOut("s", pull("c"))]
    assert state.cached_hits("c") is None
    assert state.statistics()["cachedChunks"] == 0


def test_cache_entry_swept_by_expire(state):
    announce(state, "s", "c")
    serve(state, "c", "d", 0.0)
    state.remove_peer("s", 1.0)
    state.remove_peer("asker", 1.0)
    assert state.next_deadline() == CACHE_TTL_S
    state.expire(CACHE_TTL_S)
    assert_idle(state)


def test_source_expires_after_1_hour(state):
    announce(state, "s", "c", now=0.0)
    assert state.statistics()["totalSources"] == 1
    result = request(state, "r", "c", None, SOURCE_TTL_S + 1)  # before any sweep
    assert result.outs == [ChunkOut("r", not_found("c"))]
    state.expire(SOURCE_TTL_S + 1)
    assert state.sizes()["source_entries"] == 0
    assert state.sizes()["peer_sources"] == 0


def test_reannounce_refreshes_the_source_ttl(state):
    announce(state, "s", "c", now=0.0)
    announce(state, "s", "c", now=1800.0)
    assert state.expire(SOURCE_TTL_S + 1).outs == []
    assert state.statistics()["totalSources"] == 1
    assert pulls(request(state, "r", "c", None, SOURCE_TTL_S + 2)) == [("s", pull("c"))]
    assert request(state, "r2", "x", None, 0.0).outs == [ChunkOut("r2", not_found("x"))]
    state.remove_peer("r", 0.0)
    state.remove_peer("r2", 0.0)
    state.expire(1800.0 + SOURCE_TTL_S)
    assert_idle(state)


def test_pending_requests_dropped_after_5_minutes(state):
    request(state, "r", "c", None, 0.0)
    assert state.statistics()["pendingRequests"] == 1
    state.expire(PENDING_TTL_S)
    assert state.statistics()["pendingRequests"] == 0
    announced = announce(state, "s", "c", now=PENDING_TTL_S + 1)
    assert pulls(announced) == []  # nobody waits any more
    pushed = push(state, "s", "c", "d", PENDING_TTL_S + 2)
    assert delivered(pushed) == []


def test_rerequest_refreshes_the_pending_ttl_and_channel(state):
    request(state, "r", "c", "old", 0.0)
    request(state, "r", "c", "new", 200.0)
    state.expire(PENDING_TTL_S)
    assert state.statistics()["pendingRequests"] == 1
    assert pulls(announce(state, "s", "c", now=301.0)) == [("s", pull("c", "new"))]
    assert delivered(push(state, "s", "c", "d", 302.0)) == [
        (data_frame("c", "d", "relay", "new"), ("r",))
    ]


def test_channel_id_echoed_and_one_delivery_per_channel(state):
    request(state, "r1", "c", None, 0.0)
    request(state, "r2", "c", "ch-a", 0.0)
    request(state, "r3", "c", "ch-b", 0.0)
    request(state, "r4", "c", "ch-a", 0.0)
    request(state, "r5", "c", None, 0.0)
    # the pull echoes the channel of the first requester that gave one
    assert pulls(announce(state, "s", "c", now=1.0)) == [("s", pull("c", "ch-a"))]
    pushed = push(state, "s", "c", "d", 2.0)
    assert delivered(pushed) == [
        (data_frame("c", "d", "relay"), ("r1", "r5")),
        (data_frame("c", "d", "relay", "ch-a"), ("r2", "r4")),
        (data_frame("c", "d", "relay", "ch-b"), ("r3",)),
    ]
    assert "channelId" not in pushed.deliveries[0].text


def test_request_pull_echoes_the_channel(state):
    announce(state, "s", "c")
    assert pulls(request(state, "r", "c", "ch", 1.0)) == [("s", pull("c", "ch"))]


def test_pusher_is_not_delivered_to(state):
    announce(state, "s", "c")
    request(state, "r", "c", None, 1.0)
    announce(state, "t", "c", now=1.5)  # a pull is in flight already: no second pull
    request(state, "t", "c", None, 2.0)  # t waits too (it is not sent a pull)
    pushed = push(state, "t", "c", "d", 3.0)  # t is a source and r waits: accepted
    assert delivered(pushed) == [(data_frame("c", "d", "relay"), ("r",))]
    assert state.sizes()["pending_entries"] == 0
    assert state.sizes()["pulls"] == 1  # s's pull stays until s pushes or times out
    state.expire(1.0 + PULL_TIMEOUT_S)
    assert state.sizes()["pulls"] == 0
    assert state._sources["c"]["s"].withheld


def test_announce_pulls_only_without_cache_or_pull_in_flight(state):
    announce(state, "s1", "c")
    request(state, "r", "c", None, 1.0)
    assert pulls(announce(state, "s2", "c", now=2.0)) == []  # pull in flight to s1
    push(state, "s1", "c", "d", 3.0)
    request(state, "r2", "c", None, 4.0)  # served from the cache: nobody waits
    assert pulls(announce(state, "s3", "c", now=5.0)) == []


def test_announce_withdraws_the_announcers_own_request(state):
    request(state, "a", "c", None, 0.0)
    announced = announce(state, "a", "c", now=1.0)
    assert pulls(announced) == []
    assert state.statistics()["pendingRequests"] == 0


def test_remove_peer_redirects_a_pull_in_flight(state):
    announce(state, "s1", "c", now=0.0)
    announce(state, "s2", "c", now=1.0)
    assert pulls(request(state, "r", "c", "ch", 2.0)) == [("s2", pull("c", "ch"))]
    moved = state.remove_peer("s2", 3.0)
    assert moved.outs == [ChunkOut("s1", pull("c", "ch"))]
    assert state.next_deadline() == 13.0
    with pytest.raises(ChunkError):
        push(state, "s2", "c", "d", 4.0)  # gone, and no longer pulled
    dropped = state.remove_peer("s1", 5.0)
    assert dropped.outs == []  # none left: the pull is dropped, the requester keeps waiting
    assert state.sizes()["pulls"] == 0
    assert state.statistics()["pendingRequests"] == 1
    assert pulls(announce(state, "s3", "c", now=6.0)) == [("s3", pull("c", "ch"))]


def test_remove_peer_removes_its_pending_requests_and_sources(state):
    announce(state, "s", "c")
    request(state, "r", "c", None, 1.0)
    request(state, "r", "x", None, 1.0)
    request(state, "q", "c", None, 1.0)
    state.remove_peer("r", 2.0)
    assert state.statistics()["pendingRequests"] == 1
    assert delivered(push(state, "s", "c", "d", 3.0)) == [(data_frame("c", "d", "relay"), ("q",))]
    state.remove_peer("s", 4.0)
    assert state.statistics()["totalSources"] == 0
    state.remove_peer("nobody", 5.0)  # unknown: no-op


def test_statistics(state):
    assert state.statistics() == {
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
    request(state, "r", "a", None, 1.0)  # miss, pull to s2
    request(state, "r", "z", None, 1.0)  # miss, not found
    push(state, "s2", "a", "d", 2.0)
    request(state, "r", "a", None, 3.0)  # hit
    assert state.statistics() == {
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
    request(state, "r", "x", None, 10.0)
    assert state.next_deadline() == 10.0 + PENDING_TTL_S
    request(state, "r", "c", None, 20.0)
    assert state.next_deadline() == 20.0 + PULL_TIMEOUT_S


def test_memory_is_released_when_everyone_leaves(state):
    peers = [f"p{i}" for i in range(50)]
    for i, peer in enumerate(peers):
        now = float(i)
        announce(state, peer, *(f"c{(i + k) % 40}" for k in range(5)), now=now)
        for k in range(3):
            request(state, peer, f"c{(i * 7 + k) % 60}", f"ch{k % 2}", now)
        if i % 5 == 0:
            chunk = f"c{i % 40}"
            push(state, peer, chunk, {"i": i}, now)
            request(state, peers[0], chunk, None, now)
        state.expire(now)
    assert state.sizes()["source_entries"] > 0
    for peer in peers:
        state.remove_peer(peer, 60.0)
    state.expire(60.0 + max(SOURCE_TTL_S, CACHE_TTL_S, PENDING_TTL_S) + 1)
    assert_idle(state)


def test_memory_is_released_by_expiry_alone(state):
    for i in range(20):
        announce(state, f"s{i}", f"c{i}", now=float(i))
        request(state, f"r{i}", f"c{i}", None, float(i))
        request(state, f"r{i}", f"missing{i}", None, float(i))
    push(state, "s0", "c0", "d", 30.0)
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
            result = request(state, args[0], args[1], args[2], now)
            assert all(
                out.peer_id != args[0] for out in result.outs if out.frame["type"] == "chunk_pull"
            )
        elif op == "push":
            pusher, chunk_id = args
            held = sources.get(chunk_id, {}).get(pusher, 0.0) > now
            if not held and state.sizes()["pulls"] == 0:
                before = state.sizes()
                with pytest.raises(ChunkError, match="Not a source for this chunk"):
                    push(state, pusher, chunk_id, "d", now)
                assert state.sizes() == before
                continue
            try:
                result = push(state, pusher, chunk_id, "d", now)
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
        stats = state.statistics()
        assert stats["cachedChunks"] <= 1
        sizes = state.sizes()
        assert sizes["pull_entries"] >= sizes["pulls"]
        assert sizes["pull_entries"] >= sizes["peer_pulls"]
        check_invariants(state, now)
    for p in PEERS:
        state.remove_peer(p, now)
    state.expire(now + SOURCE_TTL_S + CACHE_TTL_S)
    assert_idle(state)


def test_one_peer_holds_a_bounded_number_of_sources_and_pending_requests():
    state = ChunkIndexState(max_sources_per_peer=3, max_pending_per_peer=2)
    announced = [Announced(f"c{index}", "h") for index in range(5)]
    result = state.announce("holder", announced, None, 0.0, ip=IP)
    assert result.outs[0].frame == {"type": "chunk_announce_ack", "registered": 3}
    # Re-announcing what it holds still counts; new ids past the cap do not.
    again = state.announce("holder", [Announced("c0", "h"), Announced("c9", "h")], None, 1.0, ip=IP)
    assert again.outs[0].frame == {"type": "chunk_announce_ack", "registered": 1}
    assert state.statistics()["totalSources"] == 3

    request(state, "asker", "x1", None, 2.0)
    request(state, "asker", "x2", None, 2.0)
    refused = request(state, "asker", "x3", None, 2.0)
    assert [out.frame for out in refused.outs] == [
        {"type": "error", "code": "rate_limited", "message": "Too many pending chunk requests"}
    ]
    request(state, "asker", "x1", None, 3.0)  # refreshing a pending request is fine
    assert state.statistics()["pendingRequests"] == 2
    state.remove_peer("holder", 4.0)
    state.remove_peer("asker", 4.0)
    state.expire(10_000.0)
    assert set(state.sizes().values()) == {0}


def test_the_cache_is_bounded_in_bytes_exactly_least_recently_used_first():
    state = ChunkIndexState(cache_bytes=10)
    announce(state, "s", "a", "b", "c", "big")
    serve(state, "a", "abc", 1.0)  # '"abc"': 5 bytes
    serve(state, "b", "xyz", 2.0)  # 10 bytes in all: exactly the bound, both stay
    assert (state.cached_hits("a"), state.cached_hits("b")) == (0, 0)
    assert state.sizes()["cache_bytes"] == 10
    request(state, "r", "a", None, 3.0)  # "a" is now the most recently used
    serve(state, "c", "é", 4.0)  # '"é"': 4 bytes in UTF-8 (not 3 characters): "b" goes
    assert state.cached_hits("b") is None
    assert state.sizes()["cache_bytes"] == 9
    # A chunk larger than the whole bound is delivered, and not cached.
    pushed = serve(state, "big", "x" * 9, 5.0)  # 11 bytes
    assert delivered(pushed) == [(data_frame("big", "x" * 9, "relay"), ("asker",))]
    assert state.cached_hits("big") is None
    assert state.sizes()["cache_bytes"] == 9
    check_invariants(state, 5.0)
    state.remove_peer("s", 6.0)
    state.remove_peer("asker", 6.0)
    state.remove_peer("r", 6.0)
    state.expire(6.0 + CACHE_TTL_S)
    assert_idle(state)


def test_the_cache_holds_the_pushed_text_and_frames_splice_it_unchanged(state):
    chunk_id, channel = 'c"\\é', "ch\u2028"
    data = {"k": ["é", "😀", 1.5, None, "\"'"], "n": [[], {}]}
    announce(state, "s", chunk_id)
    request(state, "r", chunk_id, channel, 1.0)
    pushed = push(state, "s", chunk_id, data, 2.0)
    assert delivered(pushed) == [(data_frame(chunk_id, data, "relay", channel), ("r",))]
    assert state.cached_data(chunk_id) == encode(data).encode()
    hit = request(state, "q", chunk_id, None, 3.0)
    assert delivered(hit) == [(data_frame(chunk_id, data, "cache"), ("q",))]


def test_one_address_holds_at_most_its_budget_of_sources():
    state = ChunkIndexState(sources_per_ip=3)
    ack = {"type": "chunk_announce_ack", "registered": 2}
    assert announce(state, "a", "a1", "a2", ip="ip-1").outs[0].frame == ack
    assert announce(state, "b", "b1", "b2", ip="ip-1").outs[0].frame["registered"] == 1
    assert announce(state, "c", "c1", "c2", ip="ip-2").outs[0].frame == ack  # another address
    assert announce(state, "b", "b1", ip="ip-1").outs[0].frame["registered"] == 1  # held already
    assert state.statistics()["totalSources"] == 5
    state.remove_peer("a", 1.0)
    assert announce(state, "b", "b2", "b3", "b4", ip="ip-1").outs[0].frame["registered"] == 2
    state.expire(1.0 + SOURCE_TTL_S)  # every source expires: the budget is free again
    assert announce(state, "b", "x", "y", "z", "w", ip="ip-1").outs[0].frame["registered"] == 3
    for peer in ("b", "c"):
        state.remove_peer(peer, 2.0)
    assert_idle(state)


def test_one_address_holds_at_most_its_budget_of_pending_requests():
    state = ChunkIndexState(pending_per_ip=2)
    refused = [ChunkOut("b", {"type": "error", "code": "rate_limited", "message": TOO_MANY})]
    assert request(state, "a", "x", None, 0.0, ip="ip-1").outs == [ChunkOut("a", not_found("x"))]
    assert request(state, "b", "y", None, 1.0, ip="ip-1").outs == [ChunkOut("b", not_found("y"))]
    assert request(state, "b", "z", None, 2.0, ip="ip-1").outs == refused
    assert request(state, "b", "y", None, 3.0, ip="ip-1").outs == [ChunkOut("b", not_found("y"))]
    assert request(state, "c", "z", None, 4.0, ip="ip-2").outs == [ChunkOut("c", not_found("z"))]
    assert state.statistics()["pendingRequests"] == 3
    assert state.statistics()["cacheMisses"] == 4  # the refused request changed nothing
    state.expire(PENDING_TTL_S)  # a's request expires: one slot is free again
    assert request(state, "b", "z", None, PENDING_TTL_S, ip="ip-1").outs[0].frame["type"] == (
        "chunk_not_found"
    )
    assert request(state, "b", "w", None, PENDING_TTL_S, ip="ip-1").outs == refused
    for peer in ("b", "c"):
        state.remove_peer(peer, 400.0)
    assert_idle(state)


IP_OF = {"a": "ip-1", "b": "ip-1", "c": "ip-2", "d": "ip-2"}


@settings(deadline=None, max_examples=200)
@given(chunk_ops)
def test_random_traffic_never_exceeds_a_budget_and_keeps_every_invariant(ops):
    state = ChunkIndexState(cache_bytes=8, sources_per_ip=2, pending_per_ip=1, pull_hedge=2)
    now = 0.0
    for op, *args in ops:
        now += 0.5
        state.expire(now)  # as the service does: due timers fire before the next message
        if op == "wait":
            now += args[0]
            state.expire(now)
        elif op == "announce":
            announce(state, args[0], *args[1], now=now, ip=IP_OF[args[0]])
        elif op == "request":
            request(state, args[0], args[1], args[2], now, ip=IP_OF[args[0]])
        elif op == "push":
            with contextlib.suppress(ChunkError):
                push(state, args[0], args[1], "dd", now)
        else:
            state.remove_peer(args[0], now)
        assert all(count <= 2 for count in state._ip_sources.values())
        assert all(count <= 1 for count in state._ip_pending.values())
        assert state.sizes()["cache_bytes"] <= 8
        check_invariants(state, now)
    for p in PEERS:
        state.remove_peer(p, now)
    state.expire(now + SOURCE_TTL_S + CACHE_TTL_S)
    assert_idle(state)


def test_statistics_read_counters_and_scan_nothing(state):
    for index in range(50):
        announce(state, f"s{index}", *(f"c{k}" for k in range(index, index + 3)), now=0.0)
        request(state, f"r{index}", f"want-{index}", None, 0.0)
    serve(state, "c0", "d", 1.0, source="s0")
    expected = state.statistics()
    state._sources, state._pending = NoScan(state._sources), NoScan(state._pending)
    state._cache = NoScan(state._cache)
    assert state.statistics() == expected
    assert expected["totalSources"] == 150
    assert expected["pendingRequests"] == 50


def test_the_answer_to_a_cache_hit_is_built_once_per_chunk_and_channel(state):
    announce(state, "s", "c")
    serve(state, "c", ["x" * 100], 1.0)
    first = request(state, "r1", "c", "ch", 2.0).deliveries[0].text
    again = request(state, "r2", "c", "ch", 3.0).deliveries[0].text
    assert again is first  # one text for every requester: framed once by the front end
    other = request(state, "r3", "c", "other", 4.0).deliveries[0].text
    assert other is not first
    assert json.loads(other)["channelId"] == "other"
    assert state.sizes()["hit_texts"] == 1
    assert state.sizes()["hit_bytes"] == len(other)


def test_kept_answers_are_bounded_in_bytes_and_go_with_their_chunk(state, monkeypatch):
    monkeypatch.setattr(chunks_module, "HIT_TEXTS_BYTES", 1_000)
    for name in ("a", "b", "c"):
        announce(state, "s", name)
        serve(state, name, ["x" * 300], 1.0)
        request(state, "r", name, None, 2.0)
    sizes = state.sizes()
    assert sizes["hit_texts"] == 2  # three of about 370 bytes: the oldest went
    assert sizes["hit_bytes"] <= 1_000
    state.expire(1.0 + CACHE_TTL_S)  # the cache empties, and its kept answers with it
    assert state.sizes()["hit_texts"] == 0
    assert state.sizes()["hit_bytes"] == 0
