"""Rate limiters as pure state: each call takes ``now`` in seconds (trio's clock)."""

from __future__ import annotations

import math
from collections import deque

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
