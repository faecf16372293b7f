"""Rate limiters as pure state (docs/protocol/conventions.md, "Limits"): every call takes
``now``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zajel.protocol.limits import (
    KeyedSlidingWindow,
    KeyedWindowLimiter,
    SlidingWindow,
    TokenBucket,
)

# Increasing times, built from small non-negative steps (powers of two keep float sums exact).
time_steps = st.lists(
    st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 7.75, 30.0, 59.5, 60.0, 61.0]),
    max_size=80,
)


def times_from(steps: list[float]) -> list[float]:
    now, times = 0.0, []
    for step in steps:
        now += step
        times.append(now)
    return times


# -- TokenBucket ---------------------------------------------------------------------------


def test_token_bucket_starts_full_and_allows_a_burst():
    bucket = TokenBucket(rate=4.0, burst=5.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.0) is False


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=4.0, burst=5.0)
    for _ in range(5):
        assert bucket.take(10.0)
    assert bucket.take(10.125) is False  # half a token
    assert bucket.take(10.25) is True  # a whole token, now spent
    assert bucket.take(10.25) is False
    assert [bucket.take(11.25) for _ in range(5)] == [True] * 4 + [False]


def test_token_bucket_never_holds_more_than_its_burst():
    bucket = TokenBucket(rate=100.0, burst=3.0)
    assert bucket.take(0.0)
    assert bucket.take(1_000_000.0)
    assert bucket.tokens == 2.0
    assert [bucket.take(2_000_000.0) for _ in range(4)] == [True, True, True, False]


def test_token_bucket_gives_nothing_back_when_time_goes_backwards():
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.take(100.0)
    assert bucket.take(100.0)
    assert bucket.take(50.0) is False
    assert bucket.take(100.5) is False
    assert bucket.take(101.0) is True


def test_token_bucket_defaults_of_the_contract():
    bucket = TokenBucket(rate=100.0, burst=200.0)
    assert sum(bucket.take(0.0) for _ in range(300)) == 200
    assert sum(bucket.take(1.0) for _ in range(300)) == 100


@settings(deadline=None, max_examples=150)
@given(
    time_steps,
    st.sampled_from([0.5, 1.0, 4.0, 100.0]),
    st.integers(min_value=1, max_value=10),
)
def test_token_bucket_admits_at_most_burst_plus_rate_times_elapsed(steps, rate, burst):
    bucket = TokenBucket(rate=rate, burst=float(burst))
    taken = 0
    times = times_from(steps)
    for now in times:
        taken += bucket.take(now)
        assert 0.0 <= bucket.tokens <= burst
        assert taken <= burst + rate * (now - times[0]) + 1e-9


# -- SlidingWindow -------------------------------------------------------------------------


def test_sliding_window_allows_the_limit_per_window():
    window = SlidingWindow(limit=3, window=60.0)
    assert [window.allow(t) for t in (0.0, 1.0, 2.0, 3.0, 59.0)] == [True, True, True, False, False]
    assert window.allow(60.0) is True  # the event at 0 has left the window
    assert window.allow(60.5) is False
    assert window.allow(61.0) is True
    assert window.allow(62.0) is True
    assert window.allow(119.0) is False


def test_sliding_window_refusals_are_not_recorded():
    window = SlidingWindow(limit=1, window=10.0)
    assert window.allow(0.0)
    for t in range(1, 10):
        assert window.allow(float(t)) is False
    assert window.allow(10.0) is True


@settings(deadline=None, max_examples=150)
@given(time_steps, st.integers(min_value=1, max_value=5))
def test_sliding_window_memory_is_bounded_and_no_window_exceeds_the_limit(steps, limit):
    window = SlidingWindow(limit=limit, window=60.0)
    allowed: list[float] = []
    for now in times_from(steps):
        if window.allow(now):
            allowed.append(now)
        assert len(window._events) <= limit  # memory bound, whatever the caller does
        assert sum(1 for t in allowed if t > now - 60.0) <= limit


# -- KeyedWindowLimiter --------------------------------------------------------------------


def test_keyed_limiter_limits_each_key_and_says_how_long_to_wait():
    limiter = KeyedWindowLimiter(limit=2, window=60.0)
    assert limiter.check("1.1.1.1", 0.0) is None
    assert limiter.check("1.1.1.1", 10.0) is None
    assert limiter.check("1.1.1.1", 20.0) == pytest.approx(40.0)
    assert limiter.check("1.1.1.1", 59.0) == pytest.approx(1.0)
    assert limiter.check("2.2.2.2", 59.0) is None  # other keys have their own window


def test_keyed_limiter_resets_the_window():
    limiter = KeyedWindowLimiter(limit=1, window=60.0)
    assert limiter.check("a", 5.0) is None
    assert limiter.check("a", 64.9) == pytest.approx(0.1)
    assert limiter.check("a", 65.0) is None
    assert limiter.check("a", 100.0) == pytest.approx(25.0)


def test_keyed_limiter_prunes_keys_of_ended_windows():
    limiter = KeyedWindowLimiter(limit=5, window=60.0)
    for index in range(1_000):
        assert limiter.check(f"10.0.{index // 256}.{index % 256}", index / 1_000) is None
    assert len(limiter) == 1_000
    assert limiter.check("192.0.2.1", 61.0) is None
    assert len(limiter) == 1
    assert limiter.check("192.0.2.1", 500.0) is None
    assert len(limiter) == 1


@settings(deadline=None, max_examples=100)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from([0.0, 1.0, 30.0, 61.0]))))
def test_keyed_limiter_bounds_admissions_and_memory(events):
    limiter = KeyedWindowLimiter(limit=2, window=60.0)
    now = 0.0
    admitted: dict[str, list[float]] = {}
    for key, step in events:
        now += step
        retry = limiter.check(key, now)
        if retry is None:
            admitted.setdefault(key, []).append(now)
        else:
            assert 0.0 < retry <= 60.0
        assert len(limiter) <= 4
    # Fixed windows: any 60 s span overlaps at most two windows, so at most twice the limit.
    for times in admitted.values():
        for start in times:
            assert sum(1 for t in times if start <= t < start + 60.0) <= 4
        assert sum(1 for t in times if t < times[0] + 60.0) <= 2


# -- KeyedSlidingWindow --------------------------------------------------------------------


def test_keyed_sliding_window_allows_the_limit_per_key_and_window():
    windows = KeyedSlidingWindow(limit=2, window=60.0)
    assert windows.allows("a", 0.0)  # asking records nothing
    assert windows.allows("a", 0.0)
    windows.record("a", 0.0)
    windows.record("a", 30.0)
    assert not windows.allows("a", 59.999)
    assert windows.allows("b", 59.999)  # every key has its own window
    assert windows.allows("a", 60.0)  # the event at 0 has left the window
    windows.record("a", 60.0)
    assert not windows.allows("a", 89.999)
    assert windows.allows("a", 90.0)


def test_keyed_sliding_window_prunes_only_what_has_left_the_window():
    windows = KeyedSlidingWindow(limit=3, window=10.0)
    windows.record("a", 0.0)
    windows.record("b", 5.0)
    windows.record("a", 6.0)  # "a" moves behind "b": keys are kept by their last event
    assert windows.prune(14.999) == []
    assert windows.prune(15.0) == ["b"]
    assert windows.prune(16.0) == ["a"]
    assert (len(windows), windows.entries()) == (0, 0)
    assert "a" not in windows


@settings(deadline=None, max_examples=100)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.floats(0.0, 5.0)), max_size=300),
    st.integers(min_value=1, max_value=4),
)
def test_keyed_sliding_window_memory_is_bounded_and_no_key_exceeds_its_limit(events, limit):
    exact = KeyedSlidingWindow(limit=limit, window=60.0)  # room for every key
    bounded = KeyedSlidingWindow(limit=limit, window=60.0, max_keys=10)
    now = 0.0
    allowed: dict[str, list[float]] = {}
    for key_number, step in events:
        now += step
        key = f"10.0.0.{key_number}"
        if exact.allows(key, now):
            exact.record(key, now)
            allowed.setdefault(key, []).append(now)
        assert sum(1 for t in allowed.get(key, ()) if now - t < 60.0) <= limit
        if bounded.allows(key, now):
            bounded.record(key, now)
        # Past max_keys the key whose last event is oldest is forgotten (and starts afresh).
        assert len(bounded) <= 10
        assert bounded.entries() <= 10 * limit
