"""TTL bookkeeping for pure state classes: a heap of (deadline, key) with lazy deletion.

A state class schedules ``key`` at a time; rescheduling or cancelling just records the new
truth in ``_due`` and leaves the old heap entry to be skipped when it surfaces. The heap is
rebuilt when stale entries outnumber live ones, so memory stays proportional to live timers.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = 0

    def schedule(self, key: K, deadline: float) -> None:
        """Fire ``key`` at ``deadline`` (replacing any earlier schedule of it)."""
        self._due[key] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._compact()

    def cancel(self, key: K) -> None:
        self._due.pop(key, None)
        if len(self._heap) > 2 * len(self._due) + 64:
            self._compact()

    def next_deadline(self) -> float:
        """The earliest live deadline, or ``inf`` when nothing is scheduled."""
        heap = self._heap
        while heap and self._due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        fired: list[K] = []
        while self._due and self.next_deadline() <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._due[key]
            fired.append(key)
        return fired

    def __len__(self) -> int:
        return len(self._due)

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._due.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)
