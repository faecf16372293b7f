"""Direct writes (zajel/web/outbox.py ``Outbox.flush`` and ``Flusher``): what is queued while
the writer is idle is written by the one flusher task without waking the writer; only what the
socket does not take whole goes to the writer, in order, and a frame begun is finished first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

from zajel.web.outbox import Outbox


class Socket:
    """A stand-in for the transport: takes ``room`` frames whole, then maybe part of one."""

    def __init__(self, room: int = 1000, partial: bool = False) -> None:
        self.room = room
        self.partial = partial
        self.direct: list[bytes] = []  # written by direct writes
        self.busy = False

    def write_now(self, frames: Sequence[Any]) -> tuple[int, bool] | None:
        if self.busy:
            return None
        taken = list(frames[: self.room])
        self.direct += taken
        self.room -= len(taken)
        if self.partial and len(taken) < len(frames):
            self.direct.append(frames[len(taken)][:1])
            return len(taken) + 1, False
        return len(taken), True


async def writer(outbox: Outbox, writes: list[list[Any]]) -> None:
    while (frame := await outbox.next_frame()) is not None:
        batch = [frame]
        while (more := outbox.take()) is not None:
            batch.append(more)
        writes.append(batch)
        outbox.wrote()


async def run(socket: Socket, frames: list[bytes]) -> list[list[Any]]:
    outbox = Outbox(max_frames=100, max_bytes=1 << 20, slow_after=2.0, direct=socket.write_now)
    writes: list[list[Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, outbox, writes)
        await trio.testing.wait_all_tasks_blocked()
        for frame in frames:
            assert outbox.push(frame)
        await trio.testing.wait_all_tasks_blocked()
        assert len(outbox) == 0
        outbox.close()
    return writes


async def test_frames_queued_while_the_writer_is_idle_are_written_without_it():
    socket = Socket()
    writes = await run(socket, [b"a", b"b", b"c"])
    assert socket.direct == [b"a", b"b", b"c"]
    assert writes == []


async def test_what_the_socket_does_not_take_goes_to_the_writer_in_order():
    socket = Socket(room=1)
    writes = await run(socket, [b"a", b"b", b"c"])
    assert socket.direct == [b"a"]
    assert writes == [[b"b", b"c"]]


async def test_a_frame_begun_is_finished_by_the_writer_before_the_next():
    socket = Socket(room=1, partial=True)
    writes = await run(socket, [b"aa", b"bb", b"cc"])
    assert socket.direct == [b"aa", b"b"]  # "bb" begun
    # The writer's first buffer is empty: its transport sends the rest of "bb" before it.
    assert writes == [[b"", b"cc"]]


async def test_a_transport_busy_with_its_own_write_leaves_everything_to_the_writer():
    socket = Socket()
    socket.busy = True
    writes = await run(socket, [b"a", b"b"])
    assert socket.direct == []
    assert writes == [[b"a", b"b"]]


async def test_a_closed_outbox_is_not_written():
    socket = Socket()
    outbox = Outbox(max_frames=100, max_bytes=1 << 20, slow_after=2.0, direct=socket.write_now)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, outbox, [])
        await trio.testing.wait_all_tasks_blocked()
        outbox.answer(b"a")  # marked for the flusher
        outbox.close()  # before it runs: the close path sends what was queued, not the flusher
        outbox.flush()
        assert socket.direct == []
        assert len(outbox) == 1
        nursery.cancel_scope.cancel()
