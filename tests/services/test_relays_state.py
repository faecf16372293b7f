"""``RelayRegistryState`` driven directly, with explicit ``now`` (docs/protocol/relay.md,
"Availability")."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from tests.services.fakes import NoScan
from zajel.services.relays import AVAILABLE_BELOW, RelayRegistryState


@pytest.fixture
def state() -> RelayRegistryState:
    return RelayRegistryState(rng=random.Random(1234))


def ids(relays):
    return sorted(relay["peerId"] for relay in relays)


def test_register_new_peer(state):
    state.register("a", 20, "key-a", now=1.0)
    assert "a" in state
    assert "b" not in state
    assert len(state) == 1
    assert state.available(exclude="x", count=10) == [
        {"peerId": "a", "publicKey": "key-a", "capacity": 0.0}
    ]
    relay = state._relays["a"]
    assert (relay.connected_count, relay.registered_at, relay.last_update) == (0, 1.0, 1.0)


def test_reregister_keeps_load_and_registration_time(state):
    state.register("a", 20, "key-a", now=1.0)
    assert state.update_load("a", 4, now=2.0)
    state.register("a", 10, None, now=3.0)
    relay = state._relays["a"]
    assert relay.connected_count == 4
    assert relay.registered_at == 1.0
    assert relay.last_update == 3.0
    assert len(state) == 1
    # capacity and key replaced: 4 / 10
    assert state.available(exclude="x", count=10) == [
        {"peerId": "a", "publicKey": None, "capacity": 0.4}
    ]


def test_capacity_exactly_half_is_not_available(state):
    state.register("half", 10, None, now=0.0)
    state.update_load("half", 5, now=0.0)
    state.register("under", 1000, None, now=0.0)
    state.update_load("under", 499, now=0.0)
    state.register("full", 2, None, now=0.0)
    state.update_load("full", 2, now=0.0)
    assert AVAILABLE_BELOW == 0.5
    relays = state.available(exclude="x", count=10)
    assert relays == [{"peerId": "under", "publicKey": None, "capacity": 0.499}]
    assert isinstance(relays[0]["capacity"], float)


def test_exclude_and_count(state):
    for name in "abcdef":
        state.register(name, 20, None, now=0.0)
    assert ids(state.available(exclude="c", count=10)) == ["a", "b", "d", "e", "f"]
    assert len(state.available(exclude="c", count=3)) == 3
    assert "c" not in ids(state.available(exclude="c", count=3))
    assert state.available(exclude="c", count=0) == []


def test_statistics(state):
    assert state.statistics() == {
        "totalPeers": 0,
        "totalCapacity": 0,
        "totalConnected": 0,
        "availableRelays": 0,
    }
    state.register("a", 20, None, now=0.0)
    state.register("b", 10, None, now=0.0)
    state.update_load("b", 5, now=0.0)
    state.register("c", 4, None, now=0.0)
    state.update_load("c", 1, now=0.0)
    assert state.statistics() == {
        "totalPeers": 3,
        "totalCapacity": 34,
        "totalConnected": 6,
        "availableRelays": 2,
    }


def test_remove(state):
    state.register("a", 20, None, now=0.0)
    state.register("b", 20, None, now=0.0)
    state.remove("a")
    state.remove("a")  # twice, and unknown: harmless
    state.remove("never")
    assert "a" not in state
    assert len(state) == 1
    assert ids(state.available(exclude="x", count=10)) == ["b"]


def test_unknown_update_load_and_heartbeat(state):
    assert not state.update_load("ghost", 1, now=0.0)
    assert not state.heartbeat("ghost", now=0.0)
    assert len(state) == 0


def test_heartbeat_refreshes_last_update(state):
    state.register("a", 20, None, now=1.0)
    assert state.heartbeat("a", now=9.0)
    assert state._relays["a"].last_update == 9.0
    assert state._relays["a"].registered_at == 1.0


def test_default_rng_works():
    state = RelayRegistryState()
    for name in "abc":
        state.register(name, 20, None, now=0.0)
    assert ids(state.available(exclude="x", count=10)) == ["a", "b", "c"]


def test_shuffle_is_uniform_over_every_order():
    state = RelayRegistryState(rng=random.Random(20240601))
    for name in "abc":
        state.register(name, 20, None, now=0.0)
    draws = 6000
    counts = Counter(
        tuple(relay["peerId"] for relay in state.available(exclude="x", count=10))
        for _ in range(draws)
    )
    orders = set(itertools.permutations("abc"))
    assert set(counts) == orders
    expected = draws / len(orders)
    chi2 = sum((counts[order] - expected) ** 2 / expected for order in orders)
    # 5 degrees of freedom: P(chi2 > 30) is about 1.5e-5, and the seed is fixed anyway.
    assert chi2 < 30, counts


def test_shuffle_cut_picks_every_relay_evenly():
    state = RelayRegistryState(rng=random.Random(7))
    for name in "abcd":
        state.register(name, 20, None, now=0.0)
    draws = 4000
    counts = Counter(state.available(exclude="x", count=1)[0]["peerId"] for _ in range(draws))
    expected = draws / 4
    chi2 = sum((counts[name] - expected) ** 2 / expected for name in "abcd")
    assert chi2 < 25, counts  # 3 degrees of freedom


def test_a_cut_shuffle_that_excludes_an_available_relay_is_uniform():
    state = RelayRegistryState(rng=random.Random(99))
    for name in "abcd":
        state.register(name, 20, None, now=0.0)
    draws = 6000
    counts = Counter(
        tuple(relay["peerId"] for relay in state.available(exclude="a", count=2))
        for _ in range(draws)
    )
    pairs = set(itertools.permutations("bcd", 2))
    assert set(counts) == pairs
    expected = draws / len(pairs)
    chi2 = sum((counts[pair] - expected) ** 2 / expected for pair in pairs)
    assert chi2 < 30, counts  # 5 degrees of freedom


def test_statistics_follow_every_change_and_memory_is_released(state):
    for index, name in enumerate("abcdef"):
        state.register(name, 10, None, now=0.0)
        state.update_load(name, index, now=0.0)
    state.register("c", 4, "key", now=1.0)  # 2 of 4: not available any more
    state.update_load("a", 7, now=1.0)  # 7 of 10: not available
    state.update_load("f", 1, now=1.0)  # was 5 of 10: available again
    assert state.statistics() == {
        "totalPeers": 6,
        "totalCapacity": 54,
        "totalConnected": 7 + 1 + 2 + 3 + 4 + 1,
        "availableRelays": 4,
    }
    assert ids(state.available(exclude="x", count=50)) == ["b", "d", "e", "f"]
    assert ids(state.available(exclude="d", count=50)) == ["b", "e", "f"]
    for name in "abcdef":
        state.remove(name)
    assert state.statistics() == dict.fromkeys(state.statistics(), 0)
    assert set(state.sizes().values()) == {0}


def test_a_request_reads_only_what_it_returns():
    """``available`` costs O(count), not O(relays): it draws count + 1 random numbers."""
    draws = []

    class CountingRandom(random.Random):
        def randrange(self, *args):
            draws.append(args)
            return super().randrange(*args)

    state = RelayRegistryState(rng=CountingRandom(5))
    for index in range(2000):
        state.register(f"relay-{index}", 20, None, now=0.0)
    assert len(state.available(exclude="relay-0", count=5)) == 5
    assert len(draws) == 6


def test_statistics_read_counters_and_scan_nothing(state):
    for index in range(50):
        state.register(f"relay-{index}", 10, None, now=0.0)
        state.update_load(f"relay-{index}", index % 10, now=0.0)
    expected = state.statistics()
    state._relays = NoScan(state._relays)
    assert state.statistics() == expected
    assert expected["availableRelays"] == 25
