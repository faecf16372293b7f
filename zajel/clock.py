"""The one place wall-clock time is read.

Every TTL and timer runs on ``trio.current_time()`` so tests drive it with a mock clock; epoch
milliseconds exist only where the wire or the store carries them (``heartbeat_ack``'s
``timestamp``, a server entry's ``lastSeen``, the signed list's ``timestamp``).

``WallClock`` turns trio's clock into epoch milliseconds: it reads the wall clock once, when it
is made, and from then on follows trio's clock. Under a mock clock a jump of one hour is one hour
of epoch time too, so state that is stored in epoch milliseconds (it must survive a restart,
when trio's clock starts again from an arbitrary value) still expires in tests without waiting.
"""

from __future__ import annotations

import math
import time

import attrs
import trio


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

    @classmethod
    def start(cls) -> WallClock:
        """Anchor to the wall clock now. Must run inside ``trio.run``."""
        return cls(anchor_ms=epoch_ms(), anchor=trio.current_time())

    def epoch_ms(self, now: float) -> int:
        """Epoch milliseconds at trio time ``now`` (seconds)."""
        return self.anchor_ms + math.floor((now - self.anchor) * 1000)
