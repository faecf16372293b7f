"""``RelayRegistryState`` driven directly, with explicit ``now`` (relay.md "Relay registry")."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

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
