"""The one place wall-clock time is read.

Every TTL and timer runs on ``trio.current_time()`` so tests drive it with a mock clock; epoch
milliseconds exist only where the wire carries them (``heartbeat_ack``'s ``timestamp``).
"""

from __future__ import annotations

import time


def epoch_ms() -> int:
    """Milliseconds since the Unix epoch, for wire fields."""
    return time.time_ns() // 1_000_000
