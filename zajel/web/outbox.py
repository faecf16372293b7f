"""One WebSocket connection's outgoing queue, bounded in frames and in bytes, with the
back-pressure rules of ``docs/operations.md`` ("Limits and back-pressure").

Two kinds of frames go out, and they are bounded differently:

- **Answers** to the client's own frames (``pong``, errors, acknowledgements, results) are
  never refused: the client is never dropped for a burst of answers. Instead the connection's
  reader stops reading while the queue is over its *soft* bound or while ``MAX_IN_FLIGHT`` of
  its frames are still being handled, so TCP slows the sender down. What one client can make
  the server queue for it is therefore its soft bound plus the answers to ``MAX_IN_FLIGHT``
  frames.
- **Pushes** from others (relayed signals, matches, ``chunk_data``, ...) are never waited for.
  Past the soft bound a push is still queued while the writer is making progress, up to the
  *hard* bound; a push that finds the queue over its soft bound when nothing was written for
  ``slow_after`` seconds, or that would cross the hard bound, is refused: the client is a slow
  consumer (closed with 1013 by the caller).

Bounds: soft = ``max_frames`` frames or ``max_bytes / 4`` bytes, hard = ``4 * max_frames``
frames or ``max_bytes`` bytes, whichever is reached first. Bytes are the memory of the queued
text (``sys.getsizeof``), the quantity a client could otherwise pin.

Time is trio's clock; the writer and the reader wait on parking lots, never on real time.

Direct writes: a connection whose transport can write without waiting (``zajel serve``'s own,
``direct``) does not wake its writer task for every frame. A frame queued while the writer is
idle marks the outbox with the ``Flusher``, one task for the whole server that runs once the
services have yielded and writes every marked outbox's frames at once, without waiting; only
what the socket does not take whole goes to the connection's writer, which waits for room. That
saves one task switch per connection and wake-up (one per delivery of a multicast).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import trio

log = logging.getLogger("zajel.web")

# A direct write takes at most this much of the queue at once (the writer's batch bound too).
WRITE_BATCH_BYTES = 256 * 1024

# A transport's write that never waits: of ``frames``, how many it wrote (a frame begun counts:
# the transport finishes it first), and whether what it began is finished; ``None`` when it
# cannot write now (a write of its own in progress, the connection closing or gone).
DirectWrite = Callable[[Sequence[Any]], "tuple[int, bool] | None"]

# Frames of one connection handed to its service and not yet handled: the reader waits past
# this, so a burst of requests cannot make answers pile up beyond the queue's bounds.
MAX_IN_FLIGHT = 8


class Outbox:
    """The queue between the services (``answer``/``push``, never blocking) and the writer."""

    def __init__(
        self,
        max_frames: int,
        max_bytes: int,
        slow_after: float,
        direct: DirectWrite | None = None,
    ) -> None:
        self.direct = direct
        self._marked = False  # waiting in the flusher's list
        self.soft_frames = max_frames
        self.hard_frames = 4 * max_frames
        self.soft_bytes = max(max_bytes // 4, 1)
        self.hard_bytes = max_bytes
        self.slow_after = slow_after
        self._frames: deque[Any] = deque()
        self.bytes = 0
        self.in_flight = 0
        self.closed = False
        # When the writer last finished a write, or last found work after having none.
        self._progress = trio.current_time()
        self._writer = trio.lowlevel.ParkingLot()
        self._reader = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._frames)

    # -- the service side (never blocks) -------------------------------------------------

    def answer(self, text: str) -> None:
        """Queue an answer to the client's own frame; never refused."""
        if not self.closed:
            self._append(text)

    def push(self, text: str) -> bool:
        """Queue a frame pushed by others; False when the client is a slow consumer."""
        if self.closed:
            return True  # closing already: the frame would never be sent
        frames = len(self._frames)
        over_soft = frames >= self.soft_frames or self.bytes >= self.soft_bytes
        if over_soft and (
            frames >= self.hard_frames
            or self.bytes + sys.getsizeof(text) > self.hard_bytes
            or trio.current_time() - self._progress >= self.slow_after
        ):
            return False
        self._append(text)
        return True

    def handled(self) -> None:
        """One frame the reader handed over has been handled."""
        if self.in_flight:
            self.in_flight -= 1
        if self._reader and (not self.in_flight or not self.reader_must_wait()):
            self._reader.unpark_all()

    def _append(self, text: Any) -> None:
        if self._writer and not self._marked:  # the writer waits: there is work from now on
            self._progress = trio.current_time()
            if self.direct is not None:
                self._marked = True
                flusher().mark(self)
            else:
                self._writer.unpark_all()
        self._frames.append(text)
        self.bytes += sys.getsizeof(text)

    def flush(self) -> None:
        """Write what is queued without waiting (the ``Flusher`` calls it); what the socket
        does not take whole is left to the writer, woken for it."""
        self._marked = False
        if self.closed or not self._writer or self.direct is None:
            return  # closing, or the writer is already at work: it takes the frames itself
        while self._frames:
            batch = self.take_batch([])
            result = self.direct(batch)
            written, finished = result if result is not None else (0, True)
            for frame in reversed(batch[written:]):
                self._frames.appendleft(frame)
                self.bytes += sys.getsizeof(frame)
            if written:
                self.wrote()
            if not finished:
                self._frames.appendleft(b"")  # the writer finishes the frame begun
            if written < len(batch) or not finished:
                self._writer.unpark_all()
                break

    # -- the writer side -----------------------------------------------------------------

    async def next_frame(self) -> Any:
        """The next frame to write, waiting for one; ``None`` once closed and empty."""
        while (text := self.take()) is None:
            if self.closed:
                return None
            await self._writer.park()
        return text

    def take(self) -> Any:
        """The next frame to write, or ``None`` when the queue is empty (never waits)."""
        if not self._frames:
            return None
        text = self._frames.popleft()
        self.bytes -= sys.getsizeof(text)
        if self._reader and not self.reader_must_wait():
            self._reader.unpark_all()
        return text

    def take_batch(self, batch: list[Any]) -> list[Any]:
        """``batch`` with queued frames added, oldest first, while it holds under
        ``WRITE_BATCH_BYTES`` (never waits): what one write takes."""
        size = sum(len(frame) for frame in batch)
        while size < WRITE_BATCH_BYTES and (frame := self.take()) is not None:
            batch.append(frame)
            size += len(frame)
        return batch

    def wrote(self) -> None:
        """A frame went out to the socket."""
        self._progress = trio.current_time()

    # -- the reader side -----------------------------------------------------------------

    def reader_must_wait(self) -> bool:
        return (
            len(self._frames) >= self.soft_frames
            or self.bytes >= self.soft_bytes
            or self.in_flight >= MAX_IN_FLIGHT
        )

    async def wait_until_readable(self) -> None:
        """Return once the queue is under its soft bound and few frames are in flight."""
        while self.reader_must_wait() and not self.closed:
            await self._reader.park()

    async def wait_until_settled(self) -> None:
        """Return once every frame handed over has been handled (or the queue is closed)."""
        while self.in_flight and not self.closed:
            await self._reader.park()

    def handing_over(self) -> None:
        """The reader hands one frame to the service."""
        self.in_flight += 1

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more frames; wake the writer and the reader."""
        self.closed = True
        self._writer.unpark_all()
        self._reader.unpark_all()

    def clear(self) -> None:
        """Forget every queued frame at once (a slow consumer: they would never be read)."""
        self._frames.clear()
        self.bytes = 0


class Flusher:
    """Runs ``Outbox.flush`` for every outbox marked since it last ran, in one task."""

    def __init__(self) -> None:
        self._marked: list[Outbox] = []
        self._lot = trio.lowlevel.ParkingLot()

    def mark(self, outbox: Outbox) -> None:
        if not self._marked:
            self._lot.unpark_all()
        self._marked.append(outbox)

    async def run(self) -> None:
        while True:
            if not self._marked:
                await self._lot.park()
            marked, self._marked = self._marked, []
            for outbox in marked:
                try:
                    outbox.flush()
                except Exception:  # never: a failure here would end the whole server
                    log.exception("direct write failed")
            if self._marked:
                await trio.lowlevel.checkpoint()  # never hold the loop for more than one round


class ServerTask(Protocol):
    """An object whose ``run`` is one task for the whole server (``Flusher``, the transport's
    ``Poller``)."""

    async def run(self) -> None: ...


_Task = TypeVar("_Task", bound=ServerTask)


def server_task(var: trio.lowlevel.RunVar[_Task], make: Callable[[], _Task]) -> _Task:
    """This trio run's ``var``: made by ``make`` and its ``run`` started as a system task (named
    after its class) on first use."""
    try:
        return var.get()
    except LookupError:
        instance = make()
        var.set(instance)
        kind = type(instance)
        trio.lowlevel.spawn_system_task(instance.run, name=f"{kind.__module__}.{kind.__name__}")
        return instance


_FLUSHER: trio.lowlevel.RunVar[Flusher] = trio.lowlevel.RunVar("zajel_flusher")


def flusher() -> Flusher:
    """This trio run's ``Flusher``, started (as a system task) on first use."""
    return server_task(_FLUSHER, Flusher)
