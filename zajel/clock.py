"""The one place wall-clock time is read.

Every TTL and timer runs on ``trio.current_time()`` so tests drive it with a mock clock; epoch
milliseconds exist only where the wire or the store carries them (``heartbeat_ack``'s
``timestamp``, a server entry's ``lastSeen``, the signed list's ``timestamp``).

``WallClock`` turns trio's clock into epoch milliseconds: it reads the wall clock once, when it
is made, and from then on follows trio's clock. Under a mock clock a jump of one hour is one hour
of epoch time too, so state that is stored in epoch milliseconds (it must survive a restart,
when trio's clock starts again from an arbitrary value) still expires in tests without waiting.
trio's clock is monotonic and the wall clock may be stepped (an NTP correction, a restored
virtual machine), so a long-running service calls ``resynced`` now and then: past a step of
``MAX_STEP_MS`` it anchors again, and epoch times on the wire stay close to the clients' clocks.
Under trio's ``MockClock`` the mock clock is the only time there is, and it is never re-anchored.
"""

from __future__ import annotations

import math
import time
from typing import Final

import attrs
import trio
import trio.testing

# How far the wall clock may move away from trio's clock before a WallClock anchors again.
MAX_STEP_MS: Final = 1000


def epoch_ms() -> int:
    """Milliseconds since the Unix epoch, for wire fields."""
    return time.time_ns() // 1_000_000


@attrs.frozen
class WallClock:
    """Epoch milliseconds derived from trio's clock, anchored once.

    Attributes:
        anchor_ms: the wall clock, in epoch milliseconds, at trio time ``anchor``.
        anchor: trio's clock (seconds) when ``anchor_ms`` was read.
    """

    anchor_ms: int
    anchor: float
    follows_wall_clock: bool = True

    @classmethod
    def start(cls) -> WallClock:
        """Anchor to the wall clock now. Must run inside ``trio.run``."""
        virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
        return cls(epoch_ms(), trio.current_time(), follows_wall_clock=not virtual)

    def epoch_ms(self, now: float) -> int:
        """Epoch milliseconds at trio time ``now`` (seconds)."""
        return self.anchor_ms + math.floor((now - self.anchor) * 1000)

    def resynced(self, now: float, *, wall_ms: int | None = None) -> WallClock:
        """This clock, or one anchored at ``now`` again when the wall clock (``wall_ms``, read
        here when not given) is more than ``MAX_STEP_MS`` away from it."""
        if not self.follows_wall_clock:
            return self
        wall = epoch_ms() if wall_ms is None else wall_ms
        if abs(wall - self.epoch_ms(now)) <= MAX_STEP_MS:
            return self
        return WallClock(wall, now)
