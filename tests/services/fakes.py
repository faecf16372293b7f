"""Fakes for service tests: a peer connection with a bounded queue that records frames."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class FakePeer:
    """A connection as a service sees it: ``send_nowait`` (a push) fails once ``capacity``
    frames wait; ``answer_nowait`` never does."""

    def __init__(self, capacity: float = math.inf) -> None:
        self.capacity = capacity
        self.frames: list[dict[str, Any]] = []
        self.closed: list[int] = []
        self.handled_count = 0
        self.answers = 0
        self.identity = None

    def send_nowait(self, frame: str) -> bool:
        if len(self.frames) >= self.capacity:
            return False
        frame.encode("utf-8")  # a text frame must be valid UTF-8
        self.frames.append(json.loads(frame))
        return True

    def answer_nowait(self, frame: str) -> None:
        """Answers are never refused (docs/protocol/conventions.md, "Back-pressure")."""
        frame.encode("utf-8")
        self.frames.append(json.loads(frame))
        self.answers += 1

    def handled(self) -> None:
        self.handled_count += 1

    def close(self, code: int) -> None:
        self.closed.append(code)

    def identify(self, identity: Any) -> None:
        self.identity = identity

    def types(self) -> list[str]:
        return [frame["type"] for frame in self.frames]

    def take(self) -> list[dict[str, Any]]:
        """The frames received so far; the queue is empty afterwards."""
        frames, self.frames = self.frames, []
        return frames


@contextmanager
def captured_log(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of logger ``name`` while the block runs, whatever the logging set-up."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


class NoScan(dict):
    """A map that may be sized and looked up but not walked: it stands in for a state's
    per-entry maps to show that a query reads counters instead of scanning the state."""

    def _refuse(self, *args: Any) -> Any:
        raise AssertionError("scanned a per-entry map")

    __iter__ = values = items = keys = _refuse  # type: ignore[assignment]
