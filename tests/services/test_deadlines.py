"""``Deadlines``: TTL bookkeeping for the pure state classes (lazy deletion, compaction)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from zajel.services._deadlines import Deadlines


def test_empty():
    deadlines: Deadlines[str] = Deadlines()
    assert deadlines.next_deadline() == math.inf
    assert deadlines.pop_due(1e18) == []
    assert len(deadlines) == 0


def test_pop_due_returns_due_keys_earliest_first():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.schedule("c", 3.0)
    deadlines.schedule("a", 1.0)
    deadlines.schedule("b", 2.0)
    assert deadlines.next_deadline() == 1.0
    assert len(deadlines) == 3
    assert deadlines.pop_due(0.5) == []
    assert deadlines.pop_due(2.0) == ["a", "b"]  # a deadline equal to now is due
    assert len(deadlines) == 1
    assert deadlines.next_deadline() == 3.0
    assert deadlines.pop_due(10.0) == ["c"]
    assert deadlines.next_deadline() == math.inf
    assert deadlines.pop_due(10.0) == []


def test_equal_deadlines_fire_together():
    deadlines: Deadlines[int] = Deadlines()
    for key in range(5):
        deadlines.schedule(key, 7.0)
    assert deadlines.pop_due(7.0) == [0, 1, 2, 3, 4]


def test_cancel():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.schedule("a", 1.0)
    deadlines.schedule("b", 2.0)
    deadlines.cancel("a")
    deadlines.cancel("never scheduled")
    assert len(deadlines) == 1
    assert deadlines.next_deadline() == 2.0
    assert deadlines.pop_due(5.0) == ["b"]
    deadlines.cancel("b")  # already fired: harmless
    assert deadlines.next_deadline() == math.inf


def test_reschedule_later_replaces_the_earlier_deadline():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.schedule("a", 1.0)
    deadlines.schedule("a", 5.0)
    assert len(deadlines) == 1
    assert deadlines.next_deadline() == 5.0
    assert deadlines.pop_due(4.0) == []
    assert deadlines.pop_due(5.0) == ["a"]
    assert deadlines.pop_due(100.0) == []


def test_reschedule_earlier_and_to_the_same_time_fires_once():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.schedule("a", 5.0)
    deadlines.schedule("a", 2.0)
    deadlines.schedule("b", 3.0)
    deadlines.schedule("b", 3.0)
    assert deadlines.next_deadline() == 2.0
    assert deadlines.pop_due(10.0) == ["a", "b"]
    assert len(deadlines) == 0


def test_cancel_then_schedule_again():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.schedule("a", 1.0)
    deadlines.cancel("a")
    deadlines.schedule("a", 1.0)
    assert deadlines.pop_due(1.0) == ["a"]
    assert deadlines.next_deadline() == math.inf


def test_compaction_keeps_the_heap_proportional_to_live_timers():
    deadlines: Deadlines[int] = Deadlines()
    for round_ in range(1_000):
        for key in range(10):
            deadlines.schedule(key, 1_000.0 + round_ + key / 100)
        # Only 10 live timers, 10,000 schedules: stale entries are dropped on the way.
        assert len(deadlines._heap) <= 2 * len(deadlines) + 64 + 1
    assert len(deadlines) == 10
    assert deadlines.pop_due(1e18) == list(range(10))
    assert deadlines._heap == []


def test_cancelled_timers_at_the_top_are_dropped_by_next_deadline():
    deadlines: Deadlines[int] = Deadlines()
    for key in range(1_000):
        deadlines.schedule(key, float(key))
    for key in range(1_000):
        deadlines.cancel(key)
    assert len(deadlines) == 0
    assert deadlines.next_deadline() == math.inf
    assert deadlines._heap == []


operations = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 7), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("pop"), st.just(0), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(deadline=None, max_examples=200)
@given(operations)
def test_deadlines_agree_with_a_dictionary_model(ops):
    deadlines: Deadlines[int] = Deadlines()
    model: dict[int, float] = {}
    for op, key, time in ops:
        if op == "schedule":
            deadlines.schedule(key, float(time))
            model[key] = float(time)
        elif op == "cancel":
            deadlines.cancel(key)
            model.pop(key, None)
        else:
            fired = deadlines.pop_due(float(time))
            due = {k for k, d in model.items() if d <= time}
            assert set(fired) == due
            assert len(fired) == len(due)  # each key fires once
            assert [model[k] for k in fired] == sorted(model[k] for k in fired)
            for k in due:
                del model[k]
        assert len(deadlines) == len(model)
        assert deadlines.next_deadline() == min(model.values(), default=math.inf)


def test_pop_due_at_infinity_fires_everything_and_then_nothing():
    deadlines: Deadlines[str] = Deadlines()
    deadlines.schedule("a", 5.0)
    assert deadlines.pop_due(math.inf) == ["a"]
    assert deadlines.pop_due(math.inf) == []


def test_cancel_compacts_the_heap():
    deadlines: Deadlines[int] = Deadlines()
    for key in range(1000):
        deadlines.schedule(key, float(key))
    for key in range(1000):
        deadlines.cancel(key)
    assert len(deadlines) == 0
    assert len(deadlines._heap) <= 64 + 1
