"""Rate limiters as pure state: each call takes ``now`` in seconds (trio's clock), except
``KeyedSlidingWindow``, which takes any one unit (the attestation registry counts in epoch ms)."""

from __future__ import annotations

import bisect
import math
from array import array
from collections import OrderedDict, deque

import attrs


@attrs.define
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; each message takes one.

    Used per WebSocket connection: 100 per second, burst 200 by default
    (docs/protocol/conventions.md, "Limits").
    """

    rate: float
    burst: float
    tokens: float = attrs.field(init=False)
    updated: float = attrs.field(default=-math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Take one token at ``now``; False when the bucket is empty."""
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@attrs.define
class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds (e.g. 10 pair requests a minute).

    Keeps at most ``limit`` timestamps, so its memory is bounded whatever the caller does.
    """

    limit: int
    window: float
    _events: deque[float] = attrs.field(factory=deque, init=False)

    def allow(self, now: float) -> bool:
        """Record an event at ``now`` if allowed; False (and nothing recorded) when over."""
        events = self._events
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True


@attrs.define
class KeyedWindowLimiter:
    """Fixed one-window counters per key (client IP), for the HTTP rate limit.

    ``check`` answers ``None`` when the request may go on, else the seconds to wait
    (for ``Retry-After``). Keys whose window has ended are dropped as the map grows, so memory
    follows the number of clients active in the last window.
    """

    limit: int
    window: float
    _windows: dict[str, tuple[float, int]] = attrs.field(factory=dict, init=False)
    _next_prune: float = attrs.field(default=-math.inf, init=False)

    def check(self, key: str, now: float) -> float | None:
        if now >= self._next_prune:
            self._prune(now)
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            return max(start + self.window - now, 0.0)
        self._windows[key] = (start, count + 1)
        return None

    def _prune(self, now: float) -> None:
        self._windows = {
            key: value for key, value in self._windows.items() if now - value[0] < self.window
        }
        self._next_prune = now + self.window

    def __len__(self) -> int:
        return len(self._windows)


class KeyedSlidingWindow:
    """At most ``limit`` events per key (a client IP) in any ``window``, whatever the number of
    keys: the per-IP ``pair_request`` limit, new attestation devices per address.

    ``allows`` and ``record`` are apart, so that a caller checking several limits records an
    event only once all of them allow it. Times are numbers in one unit (seconds or epoch ms);
    an event at ``t`` counts while ``now - t < window``.

    Memory: per key, the times of its last ``limit`` events, as 8-byte floats; at most
    ``max_keys`` keys, the one whose last event is oldest forgotten first. Keys are kept in the
    order of their last event, so ``prune`` costs time proportional to the keys it forgets.
    """

    def __init__(self, limit: int, window: float, *, max_keys: int = 50_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._times: OrderedDict[str, array[float]] = OrderedDict()

    def allows(self, key: str, now: float) -> bool:
        """Whether ``key`` may have one more event at ``now`` (nothing is recorded)."""
        times = self._times.get(key)
        return times is None or self._live(times, now) < self.limit

    def record(self, key: str, now: float) -> None:
        """Count an event of ``key`` at ``now`` (times only grow)."""
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= self.max_keys:
                self._times.popitem(last=False)
            times = self._times[key] = array("d")
        else:
            self._times.move_to_end(key)
        times.append(now)
        del times[: len(times) - min(self._live(times, now), self.limit)]

    def prune(self, now: float) -> list[str]:
        """Forget the keys whose last event has left the window; returns them."""
        forgotten = []
        while self._times:
            key, times = next(iter(self._times.items()))
            if self._live(times, now):
                break
            del self._times[key]
            forgotten.append(key)
        return forgotten

    def __len__(self) -> int:
        return len(self._times)

    def __contains__(self, key: str) -> bool:
        return key in self._times

    def entries(self) -> int:
        """The times held, over every key (what the memory follows)."""
        return sum(len(times) for times in self._times.values())

    def _live(self, times: array[float], now: float) -> int:
        """How many of ``times`` (oldest first) are still inside the window at ``now``."""
        return len(times) - bisect.bisect_right(times, now - self.window)
