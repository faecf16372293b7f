"""``RendezvousState`` driven directly, with explicit ``now`` (docs/protocol/relay.md,
"Rendezvous")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.services.fakes import NoScan
from zajel.protocol.frames import encode
from zajel.services.rendezvous import (
    DAILY_TTL_S,
    HOURLY_TTL_S,
    SWEEP_INTERVAL_S,
    DropEntry,
    PutEntry,
    RendezvousState,
)

IP = "192.0.2.1"


def hours(h: float) -> float:
    return 3600 * h


def register(state, peer, now=0.0, points=(), tokens=(), drop=None, relay=None, ip=IP):
    """Register ``peer``; its dead drop at each point is ``drop`` or ``"<peer>@<point>"``."""
    return state.register(
        peer,
        daily_points=list(points),
        hourly_tokens=list(tokens),
        dead_drop_for=(lambda point: f"{peer}@{point}") if drop is None else (lambda _: drop),
        relay_id=relay,
        now=now,
        ip=ip,
    )


def dead_drops(outcome):
    return outcome.result["deadDrops"]


def live(outcome):
    return outcome.result["liveMatches"]


@pytest.fixture
def state() -> RendezvousState:
    return RendezvousState()


def test_constants():
    assert DAILY_TTL_S == 172_800
    assert HOURLY_TTL_S == 10_800
    assert SWEEP_INTERVAL_S == 300.0


def test_no_points_no_tokens_is_an_empty_result(state):
    outcome = register(state, "a")
    assert outcome.result == {"type": "rendezvous_result", "liveMatches": [], "deadDrops": []}
    assert outcome.matches == []
    assert all(size == 0 for size in state.sizes().values())


def test_dead_drop_found_at_47h_gone_at_49h_before_any_sweep(state):
    register(state, "a", now=0.0, points=["p"], relay="r-a")
    found = register(state, "b", now=hours(47), points=["p"])
    assert dead_drops(found) == [{"peerId": "a", "deadDrop": "a@p", "relayId": "r-a"}]
    assert live(found) == []
    assert found.matches == []  # dead drops are not pushed
    state.remove_peer("b")
    gone = register(state, "c", now=hours(49), points=["p"])
    assert dead_drops(gone) == []


def test_hourly_match_at_2h_none_at_4h(state):
    register(state, "a", now=0.0, tokens=["t"], relay="r-a")
    found = register(state, "b", now=hours(2), tokens=["t"], relay="r-b")
    assert live(found) == [{"peerId": "a", "relayId": "r-a"}]
    assert found.matches == [
        ("a", {"type": "rendezvous_match", "match": {"peerId": "b", "relayId": "r-b"}})
    ]
    state.remove_peer("b")
    none = register(state, "c", now=hours(4), tokens=["t"])
    assert live(none) == []
    assert none.matches == []


def test_reregistration_replaces_own_entry(state):
    register(state, "a", now=0.0, points=["p"], drop="old", relay="r1")
    register(state, "a", now=hours(1), points=["p"], drop="new", relay="r2")
    assert state.statistics(hours(1))["dailyEntries"] == 1
    found = register(state, "b", now=hours(2), points=["p"])
    assert dead_drops(found) == [{"peerId": "a", "deadDrop": "new", "relayId": "r2"}]
    # the replacement also renewed the expiry: 48 h from the second registration
    state.remove_peer("b")
    assert dead_drops(register(state, "b", now=hours(48.5), points=["p"])) == [
        {"peerId": "a", "deadDrop": "new", "relayId": "r2"}
    ]


def test_own_entry_never_returned(state):
    register(state, "a", now=0.0, points=["p"], tokens=["t"])
    again = register(state, "a", now=1.0, points=["p"], tokens=["t"])
    assert dead_drops(again) == []
    assert live(again) == []
    assert again.matches == []


def test_each_peer_at_most_once_per_list_newest_first(state):
    points = [f"p{i}" for i in range(10)]
    tokens = [f"t{i}" for i in range(10)]
    register(state, "a", points=points, tokens=tokens, relay="r-a")
    register(state, "b", points=points[:5], tokens=tokens[:5])
    outcome = register(state, "c", now=1.0, points=[*points, "p0"], tokens=[*tokens, "t0"])
    # b registered last; each peer is listed with its newest entry among the caller's points.
    assert dead_drops(outcome) == [
        {"peerId": "b", "deadDrop": "b@p4"},
        {"peerId": "a", "deadDrop": "a@p9", "relayId": "r-a"},
    ]
    assert live(outcome) == [{"peerId": "b"}, {"peerId": "a", "relayId": "r-a"}]
    assert [peer for peer, _ in outcome.matches] == ["b", "a"]
    assert outcome.matches[0][1] == {"type": "rendezvous_match", "match": {"peerId": "c"}}


def test_empty_dead_drops_not_returned(state):
    register(state, "a", points=["p"], drop="")
    register(state, "b", points=["p"], drop="b-drop")
    outcome = register(state, "c", now=1.0, points=["p"])
    assert dead_drops(outcome) == [{"peerId": "b", "deadDrop": "b-drop"}]
    assert state.statistics(1.0)["dailyEntries"] == 3  # the empty one is still an entry


def test_dead_drop_for_each_point(state):
    seen = []

    def drop_for(point):
        seen.append(point)
        return f"drop-for-{point}"

    state.register(
        "a",
        daily_points=["p1", "p2"],
        hourly_tokens=[],
        dead_drop_for=drop_for,
        relay_id=None,
        now=0.0,
        ip=IP,
    )
    assert seen == ["p1", "p2"]
    assert dead_drops(register(state, "b", now=1.0, points=["p2"])) == [
        {"peerId": "a", "deadDrop": "drop-for-p2"}
    ]


def test_relay_id_omitted_when_none(state):
    register(state, "a", points=["p"], tokens=["t"])
    outcome = register(state, "b", now=1.0, points=["p"], tokens=["t"])
    assert dead_drops(outcome) == [{"peerId": "a", "deadDrop": "a@p"}]
    assert live(outcome) == [{"peerId": "a"}]
    assert outcome.matches == [("a", {"type": "rendezvous_match", "match": {"peerId": "b"}})]


def test_daily_points_are_looked_up_before_hourly_tokens_and_apart(state):
    # A point and a token with the same string are different namespaces.
    register(state, "a", points=["x"])
    outcome = register(state, "b", now=1.0, tokens=["x"])
    assert live(outcome) == []
    assert dead_drops(outcome) == []


def test_sweep_schedule(state):
    assert state.next_deadline() == math.inf
    register(state, "a", now=10.0, tokens=["t"])
    assert state.next_deadline() == 310.0
    register(state, "b", now=200.0, tokens=["t"])  # later registrations do not move it
    assert state.next_deadline() == 310.0
    assert state.sweep(310.0) == 0
    assert state.next_deadline() == 610.0
    assert state.sweep(610.0) == 0
    assert state.next_deadline() == 910.0


def test_sweep_removes_exactly_the_expired(state):
    register(state, "a", now=0.0, points=["p"], tokens=["t"])
    register(state, "b", now=hours(1), points=["p"], tokens=["t", "u"])
    register(state, "c", now=hours(2.5), tokens=["t"])
    before = state.statistics(hours(3.5))
    assert before == {
        "dailyPoints": 1,
        "hourlyTokens": 2,  # t (b, c) and u (b) are live; a's t entry has expired
        "totalEntries": 5,
        "dailyEntries": 2,
        "hourlyEntries": 3,
    }
    assert state.sizes()["hourly_entries"] == 3  # counting removed a's expired token entry
    assert state.sweep(hours(3.5)) == 0
    assert state.statistics(hours(3.5))["hourlyEntries"] == 3
    assert state.sizes()["hourly_entries"] == 3
    assert state.sweep(hours(4)) == 2  # b's t and u (expired at exactly 4 h)
    assert state.sweep(hours(5.5)) == 1  # c's token
    assert state.sizes()["hourly_tokens"] == 0
    assert state.sweep(hours(48)) == 1  # a's point
    assert state.sweep(hours(49)) == 1  # b's point
    assert all(size == 0 for size in state.sizes().values())


def test_remove_peer_leaves_every_point_and_token(state):
    register(state, "a", points=["p1", "p2"], tokens=["t1", "t2"])
    register(state, "b", points=["p1"], tokens=["t1"])
    state.remove_peer("a")
    state.remove_peer("a")  # twice, and unknown: harmless
    state.remove_peer("ghost")
    assert state.statistics(1.0) == {
        "dailyPoints": 1,
        "hourlyTokens": 1,
        "totalEntries": 2,
        "dailyEntries": 1,
        "hourlyEntries": 1,
    }
    outcome = register(state, "c", now=1.0, points=["p1", "p2"], tokens=["t1", "t2"])
    assert [d["peerId"] for d in dead_drops(outcome)] == ["b"]
    assert [m["peerId"] for m in live(outcome)] == ["b"]
    # a's deadlines went with it: the sweep finds only b's 2 entries and c's 4
    assert state.sweep(hours(100)) == 6
    assert all(size == 0 for size in state.sizes().values())


def many_peers(state, now=0.0):
    peers = [f"peer{i}" for i in range(40)]
    for i, peer in enumerate(peers):
        register(
            state,
            peer,
            now=now + i,
            points=[f"p{(i + k) % 25}" for k in range(12)],
            tokens=[f"t{(i * 3 + k) % 30}" for k in range(15)],
            relay=f"r{i % 3}" if i % 2 else None,
        )
    return peers


def test_memory_after_everyone_leaves():
    state = RendezvousState(drops_per_point=1000)
    peers = many_peers(state)
    sizes = state.sizes()
    assert sizes["daily_entries"] == 40 * 12
    assert sizes["hourly_entries"] == 40 * 15
    for peer in peers:
        state.remove_peer(peer)
    assert all(size == 0 for size in state.sizes().values()), state.sizes()
    assert state.statistics(100.0) == dict.fromkeys(
        ["dailyPoints", "hourlyTokens", "totalEntries", "dailyEntries", "hourlyEntries"], 0
    )


def test_memory_after_everything_expires_and_is_swept():
    state = RendezvousState(drops_per_point=1000)
    many_peers(state)
    many_peers(state, now=hours(1))  # re-registration replaces, never adds
    assert state.sizes()["daily_entries"] == 40 * 12
    assert state.sweep(hours(1) + HOURLY_TTL_S + 40) == 40 * 15
    assert state.sweep(hours(1) + DAILY_TTL_S + 40) == 40 * 12
    assert all(size == 0 for size in state.sizes().values()), state.sizes()


def test_one_peer_holds_a_bounded_number_of_entries_the_newest_kept():
    state = RendezvousState(max_entries_per_peer=100)
    for batch in range(10):
        state.register(
            "flooder",
            daily_points=[f"day-{batch}-{index}" for index in range(50)],
            hourly_tokens=[f"hour-{batch}-{index}" for index in range(50)],
            dead_drop_for=lambda point: "d",
            relay_id=None,
            now=float(batch),
            ip=IP,
        )
    sizes = state.sizes()
    assert sizes["daily_entries"] == 100
    assert sizes["hourly_entries"] == 100
    assert sizes["expiry"] == 200
    # The last two batches survive: a newcomer finds the newest points, not the oldest.
    found = state.register(
        "other",
        daily_points=["day-9-0", "day-0-0"],
        hourly_tokens=["hour-8-49", "hour-7-49"],
        dead_drop_for=lambda point: "",
        relay_id=None,
        now=10.0,
        ip=IP,
    )
    assert found.result["deadDrops"] == [{"peerId": "flooder", "deadDrop": "d"}]
    assert found.result["liveMatches"] == [{"peerId": "flooder"}]
    state.remove_peer("flooder")
    state.remove_peer("other")
    assert set(state.sizes().values()) == {0}


def size(item) -> int:
    """Bytes of one list item as the reply carries it."""
    return len(encode(item).encode())


def test_a_point_holds_its_newest_entries_and_the_oldest_gives_way():
    state = RendezvousState(drops_per_point=3)
    for index, peer in enumerate("abc"):
        register(state, peer, now=float(index), points=["p"])
    register(state, "a", now=3.0, points=["p"])  # re-registering: a is the newest, nobody goes
    assert state.statistics(3.0)["dailyEntries"] == 3
    register(state, "d", now=4.0, points=["p"])  # one more: b, now the oldest, gives way
    assert state.statistics(4.0)["dailyEntries"] == 3
    found = register(state, "e", now=5.0, points=["p"], drop="")
    assert [drop["peerId"] for drop in dead_drops(found)] == ["d", "a", "c"]
    assert state.sizes()["daily_entries"] == 3  # e is in, c gave way
    assert state.sizes()["peer_points"] == 3
    for peer in "abcde":
        state.remove_peer(peer)
    assert set(state.sizes().values()) == {0}


def test_a_token_holds_its_newest_entries_and_only_listed_matches_are_pushed():
    state = RendezvousState(drops_per_point=3)
    for index, peer in enumerate("abcde"):
        register(state, peer, now=float(index), tokens=["t"])
    outcome = register(state, "f", now=10.0, tokens=["t"])
    assert live(outcome) == [{"peerId": "e"}, {"peerId": "d"}, {"peerId": "c"}]
    assert [peer for peer, _ in outcome.matches] == ["e", "d", "c"]
    assert state.statistics(10.0)["hourlyEntries"] == 3


def test_the_reply_stops_before_its_byte_budget_live_matches_first():
    match = {"peerId": "m"}
    drops = [{"peerId": peer, "deadDrop": peer * 10} for peer in ("z", "y", "x")]  # newest first
    exact = size(match) + size(drops[0]) + 1 + size(drops[1])  # one comma between two drops
    for budget, listed in ((exact, 2), (exact - 1, 1), (size(match) - 1, 0)):
        state = RendezvousState(reply_bytes=budget)
        register(state, "m", tokens=["t"])
        for index, drop in enumerate(reversed(drops)):
            register(state, drop["peerId"], now=1.0 + index, points=["p"], drop=drop["deadDrop"])
        outcome = register(state, "reader", now=5.0, points=["p"], tokens=["t"])
        if listed:
            assert live(outcome) == [match]
            assert outcome.matches == [
                ("m", {"type": "rendezvous_match", "match": {"peerId": "reader"}})
            ]
        else:  # not even the live match fits: nobody is listed, so nobody is told
            assert live(outcome) == []
            assert outcome.matches == []
        assert dead_drops(outcome) == drops[:listed]
        listed_bytes = len(encode(outcome.result)) - len(
            encode({"type": "rendezvous_result", "liveMatches": [], "deadDrops": []})
        )
        assert listed_bytes <= budget


def test_a_reply_counts_utf8_bytes_not_characters():
    item = {"peerId": "a", "deadDrop": "é" * 10}  # 10 characters, 20 bytes
    state = RendezvousState(reply_bytes=size(item) - 1)
    register(state, "a", points=["p"], drop="é" * 10)
    assert dead_drops(register(state, "b", now=1.0, points=["p"])) == []
    state = RendezvousState(reply_bytes=size(item))
    register(state, "a", points=["p"], drop="é" * 10)
    assert dead_drops(register(state, "b", now=1.0, points=["p"])) == [item]


def test_dead_drops_are_newest_first_across_points(state):
    register(state, "old", now=0.0, points=["p1"])
    register(state, "mid", now=1.0, points=["p2"])
    register(state, "new", now=2.0, points=["p1"])
    register(state, "mid", now=3.0, points=["p3"])  # mid's newest entry is at p3 now
    outcome = register(state, "reader", now=4.0, points=["p1", "p2", "p3"])
    assert dead_drops(outcome) == [
        {"peerId": "mid", "deadDrop": "mid@p3"},
        {"peerId": "new", "deadDrop": "new@p1"},
        {"peerId": "old", "deadDrop": "old@p1"},
    ]


def test_one_address_holds_at_most_its_budget_oldest_first():
    state = RendezvousState(entries_per_ip=5)
    register(state, "a", now=0.0, points=["a1", "a2", "a3"], ip="ip-1")
    register(state, "other", now=0.5, points=["o1", "o2", "o3"], tokens=["o4"], ip="ip-2")
    register(state, "b", now=1.0, points=["b1"], tokens=["b2", "b3"], ip="ip-1")
    # ip-1 holds 6: its oldest, a1, gave way; ip-2 is untouched.
    assert state.statistics(1.0)["totalEntries"] == 5 + 4
    found = register(state, "q", now=2.0, points=["a1", "a2"], ip="ip-3")
    assert dead_drops(found) == [{"peerId": "a", "deadDrop": "a@a2"}]
    register(state, "a", now=3.0, points=["a2"], ip="ip-1")  # re-registering adds nothing
    assert state.statistics(3.0)["totalEntries"] == 5 + 4 + 2
    state.remove_peer("b")  # its share is free again
    register(state, "a", now=4.0, points=["a4", "a5", "a6"], ip="ip-1")
    assert state.statistics(4.0)["totalEntries"] == 5 + 4 + 2
    for peer in ("a", "other", "q"):
        state.remove_peer(peer)
    assert set(state.sizes().values()) == {0}


def test_statistics_count_live_entries_without_waiting_for_the_sweep(state):
    register(state, "a", now=0.0, points=["p"], tokens=["t"])
    register(state, "b", now=hours(1), tokens=["t"])
    assert state.statistics(HOURLY_TTL_S) == {
        "dailyPoints": 1,
        "hourlyTokens": 1,
        "totalEntries": 2,
        "dailyEntries": 1,
        "hourlyEntries": 1,
    }
    assert state.next_deadline() == SWEEP_INTERVAL_S  # the sweep schedule did not move
    assert state.statistics(DAILY_TTL_S)["totalEntries"] == 0
    assert set(state.sizes().values()) == {0}


points_or_tokens = st.lists(st.sampled_from(("x", "y", "z")), max_size=3, unique=True)
rendezvous_ops = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.sampled_from("abcd"), points_or_tokens, points_or_tokens),
        st.tuples(st.just("remove"), st.sampled_from("abcd")),
        st.tuples(st.just("wait"), st.sampled_from((1.0, 3600.0, HOURLY_TTL_S, DAILY_TTL_S))),
    ),
    max_size=40,
)


@settings(deadline=None, max_examples=200)
@given(rendezvous_ops)
def test_random_traffic_keeps_every_bound_and_leaves_nothing_behind(ops):
    state = RendezvousState(
        max_entries_per_peer=2, drops_per_point=2, reply_bytes=60, entries_per_ip=3
    )
    ip_of = {"a": "ip-1", "b": "ip-1", "c": "ip-1", "d": "ip-2"}
    now = 0.0
    for op, *args in ops:
        now += 1.0
        if op == "register":
            peer, points, tokens = args
            outcome = register(state, peer, now=now, points=points, tokens=tokens, ip=ip_of[peer])
            listed = len(encode(outcome.result)) - len(
                encode({"type": "rendezvous_result", "liveMatches": [], "deadDrops": []})
            )
            assert listed <= 60
            assert [p for p, _ in outcome.matches] == [m["peerId"] for m in live(outcome)]
            assert peer not in [m["peerId"] for m in live(outcome) + dead_drops(outcome)]
        elif op == "remove":
            state.remove_peer(args[0])
        else:
            now += args[0]
            state.sweep(now)
        for table in state._tables.values():
            assert all(1 <= len(entries) <= 2 for entries in table.values())
        for keys in state._peer_keys.values():
            assert all(1 <= len(names) <= 2 for names in keys.values())
        assert all(1 <= len(keys) <= 3 for keys in state._ip_keys.values())
        sizes = state.sizes()
        assert sizes["counted"] == sizes["daily_entries"] + sizes["hourly_entries"]
        assert sizes["counted"] == sizes["ip_entries"] == sizes["expiry"]
    for peer in "abcd":
        state.remove_peer(peer)
    assert set(state.sizes().values()) == {0}


def test_statistics_read_counters_and_scan_nothing(state):
    for index in range(50):
        register(state, f"p{index}", now=float(index), points=[f"d{index % 7}"], tokens=["t"])
    expected = state.statistics(100.0)
    for kind in ("daily", "hourly"):
        state._tables[kind] = NoScan(state._tables[kind])
    state._ip_keys = NoScan(state._ip_keys)
    assert state.statistics(100.0) == expected
    assert expected["totalEntries"] == 50 + 20  # every daily entry; the newest 20 at t


# -- the journal and restore (cluster mode) ----------------------------------------------------

EPOCH_MS = 1_700_000_000_000  # the epoch milliseconds at trio time 0 in these tests


def epoch(now: float) -> int:
    return EPOCH_MS + round(now * 1000)


def take(state, now):
    return state.take_journal(now, epoch(now))


def live_entries(state, now):
    """Every live entry, as the PutEntry a copy of the state would hold, in registration order."""
    found = []
    for kind, table in state._tables.items():
        for name, entries in table.items():
            for peer, entry in entries.items():
                if now < entry.expires_at:
                    put = PutEntry(
                        kind,
                        name,
                        peer,
                        entry.dead_drop,
                        entry.relay_id,
                        epoch(entry.expires_at),
                        entry.ip,
                    )
                    found.append((entry.seq, put))
    return [put for _, put in sorted(found, key=lambda item: item[0])]


def replay(copy, changes):
    """Apply journaled changes to ``copy`` (key -> PutEntry, oldest put first), as Redis would."""
    for change in changes:
        key = (change.kind, change.name, change.peer_id)
        copy.pop(key, None)
        if isinstance(change, PutEntry):
            copy[key] = change


def live_in(copy, now):
    """What a copy holds at ``now``: Redis drops a key at its own expiry."""
    return [put for put in copy.values() if put.expires_ms > epoch(now)]


def test_no_journal_unless_enabled(state):
    register(state, "a", points=["p"], tokens=["t"])
    state.remove_peer("a")
    assert state.journal_size == 0
    assert take(state, 1.0) == []
    assert state.sizes()["journal"] == 0


def test_the_journal_records_puts_with_epoch_expiry_and_forgets_what_it_hands_over():
    state = RendezvousState(journal=True)
    register(state, "a", now=10.0, points=["p"], tokens=["t"], relay="r", ip="ip-1")
    assert state.journal_size == 2
    assert state.sizes()["journal"] == 2
    # Taken later: the expiry is the time left, added to the epoch time of the taking.
    assert take(state, 15.0) == [
        PutEntry("daily", "p", "a", "a@p", "r", epoch(10.0 + DAILY_TTL_S), "ip-1"),
        PutEntry("hourly", "t", "a", "", "r", epoch(10.0 + HOURLY_TTL_S), "ip-1"),
    ]
    assert state.journal_size == 0
    assert take(state, 15.0) == []


def test_enable_journal_starts_recording_from_then_on(state):
    register(state, "a", points=["p"])
    state.enable_journal()
    state.enable_journal()  # idempotent
    register(state, "b", now=1.0, points=["p"], drop="x")
    assert take(state, 1.0) == [
        PutEntry("daily", "p", "b", "x", None, epoch(1.0 + DAILY_TTL_S), IP)
    ]


def test_replacing_is_one_put_and_every_removal_but_expiry_is_a_drop():
    state = RendezvousState(journal=True, drops_per_point=2)
    register(state, "a", now=0.0, points=["p"])
    register(state, "a", now=1.0, points=["p"], drop="new")  # a replacement: a put, no drop
    register(state, "b", now=2.0, points=["p"])
    register(state, "c", now=3.0, points=["p"])  # a, the oldest at p, gives way
    register(state, "c", now=4.0, tokens=["t"])
    state.remove_peer("c")
    changes = take(state, 4.0)
    assert [type(change).__name__ for change in changes] == [
        "PutEntry",
        "PutEntry",
        "PutEntry",
        "PutEntry",
        "DropEntry",
        "PutEntry",
        "DropEntry",
        "DropEntry",
    ]
    assert changes[1].dead_drop == "new"
    assert changes[4] == DropEntry("daily", "p", "a")
    assert set(changes[6:]) == {DropEntry("daily", "p", "c"), DropEntry("hourly", "t", "c")}
    # Expiry is never journaled: the copy drops a key at its own expiry.
    assert state.sweep(hours(49)) == 1
    assert state.statistics(hours(49))["totalEntries"] == 0
    assert take(state, hours(49)) == []


def test_the_per_peer_and_per_ip_bounds_journal_what_gives_way():
    state = RendezvousState(journal=True, max_entries_per_peer=2, entries_per_ip=3)
    register(state, "a", now=0.0, points=["p1", "p2", "p3"], ip="ip-1")
    changes = take(state, 0.0)
    assert [change for change in changes if isinstance(change, DropEntry)] == [
        DropEntry("daily", "p1", "a")
    ]
    register(state, "b", now=1.0, tokens=["t1", "t2"], ip="ip-1")  # ip-1 holds 4: p2 goes
    assert [change for change in take(state, 1.0) if isinstance(change, DropEntry)] == [
        DropEntry("daily", "p2", "a")
    ]


@settings(deadline=None, max_examples=150)
@given(rendezvous_ops)
def test_replaying_the_journal_gives_the_live_entries_and_restoring_it_the_same_state(ops):
    bounds = {"max_entries_per_peer": 2, "drops_per_point": 2, "entries_per_ip": 3}
    state = RendezvousState(journal=True, **bounds)
    ip_of = {"a": "ip-1", "b": "ip-1", "c": "ip-1", "d": "ip-2"}
    copy: dict = {}
    now = 0.0
    for op, *args in ops:
        now += 1.0
        if op == "register":
            peer, points, tokens = args
            register(state, peer, now=now, points=points, tokens=tokens, ip=ip_of[peer])
        elif op == "remove":
            state.remove_peer(args[0])
        else:
            now += args[0]
            state.sweep(now)
        replay(copy, take(state, now))
        assert live_in(copy, now) == live_entries(state, now)
    # A state restored from the copy, at another trio time, is the same state: the same
    # entries in the same order in every map, the same answers.
    later, offset = now + 0.5, 1000.0
    restored = RendezvousState(journal=True, **bounds)
    loaded = restored.restore(live_in(copy, later), later + offset, epoch(later))
    assert take(restored, later + offset) == []  # nothing gave way, nothing to write back
    state.statistics(later)  # the original forgets what has expired by then
    assert loaded == state.statistics(later)["totalEntries"]
    assert state.sizes() == restored.sizes()
    for kind in ("daily", "hourly"):
        assert _orders(restored._tables[kind]) == _orders(state._tables[kind])
        assert _orders(restored._peer_keys[kind]) == _orders(state._peer_keys[kind])
    assert _orders(restored._ip_keys) == _orders(state._ip_keys)
    reader = {"points": ["x", "y", "z"], "tokens": ["x", "y", "z"], "ip": "ip-3"}
    assert (
        register(restored, "reader", now=later + offset, **reader).result
        == register(state, "reader", now=later, **reader).result
    )


def _orders(maps):
    return {key: list(inner) for key, inner in maps.items()}


def test_restore_converts_expiry_to_trio_time_and_skips_what_has_expired():
    state = RendezvousState()
    now, now_ms = 500.0, EPOCH_MS
    loaded = state.restore(
        [
            PutEntry("daily", "p", "gone", "g", None, now_ms, IP),  # expires exactly now
            PutEntry("daily", "p", "a", "a-drop", "r", now_ms + 3_600_000, IP),
            PutEntry("hourly", "t", "b", "", None, now_ms + 60_000, IP),
        ],
        now,
        now_ms,
    )
    assert loaded == 2
    assert state.next_deadline() == now + SWEEP_INTERVAL_S
    found = register(state, "c", now=now + 59, points=["p"], tokens=["t"])
    assert dead_drops(found) == [{"peerId": "a", "deadDrop": "a-drop", "relayId": "r"}]
    assert live(found) == [{"peerId": "b"}]
    state.remove_peer("c")
    assert state.statistics(now + 60)["hourlyEntries"] == 0  # b's token: 60 s after now
    assert state.statistics(now + 3599)["dailyEntries"] == 1
    assert state.statistics(now + 3600)["dailyEntries"] == 0
    assert set(state.sizes().values()) == {0}


def test_restore_never_keeps_an_entry_longer_than_its_ttl_from_now():
    state = RendezvousState()
    far = EPOCH_MS + 10 * DAILY_TTL_S * 1000  # a clock far ahead wrote it
    state.restore(
        [
            PutEntry("daily", "p", "a", "d", None, far, IP),
            PutEntry("hourly", "t", "a", "not at a token", None, far, IP),
        ],
        0.0,
        EPOCH_MS,
    )
    assert state._tables["hourly"]["t"]["a"].dead_drop == ""
    assert state.statistics(HOURLY_TTL_S - 1)["hourlyEntries"] == 1
    assert state.statistics(HOURLY_TTL_S)["hourlyEntries"] == 0
    assert state.statistics(DAILY_TTL_S - 1)["dailyEntries"] == 1
    assert state.statistics(DAILY_TTL_S)["dailyEntries"] == 0


def test_restore_keeps_the_order_given_and_applies_the_bounds_journaling_what_gives_way():
    state = RendezvousState(journal=True, drops_per_point=3, max_entries_per_peer=2)
    until = EPOCH_MS + 3_600_000
    puts = [PutEntry("daily", "p", peer, f"{peer}-drop", None, until, IP) for peer in "abcde"]
    puts += [PutEntry("hourly", f"t{i}", "z", "", None, until, IP) for i in range(3)]
    assert state.restore(puts, 0.0, EPOCH_MS) == 8
    # The oldest at p, and z's oldest token, gave way; the rest is what the copy must drop.
    assert take(state, 0.0) == [
        DropEntry("daily", "p", "a"),
        DropEntry("daily", "p", "b"),
        DropEntry("hourly", "t0", "z"),
    ]
    found = register(state, "reader", now=1.0, points=["p"], drop="")
    assert [drop["peerId"] for drop in dead_drops(found)] == ["e", "d", "c"]


def test_restore_needs_an_empty_state_and_nothing_loaded_schedules_no_sweep(state):
    assert state.restore([PutEntry("daily", "p", "a", "", None, EPOCH_MS, IP)], 0.0, EPOCH_MS) == 0
    assert state.next_deadline() == math.inf
    register(state, "a", points=["p"])
    with pytest.raises(ValueError, match="empty"):
        state.restore([], 0.0, EPOCH_MS)
