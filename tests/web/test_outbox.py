"""The outgoing queue's back-pressure rules (docs/operations.md, "Limits and back-pressure"), on
trio's mock clock: answers are never refused, pushes past the soft bound only while the writer
makes progress and below the hard bound, and the reader waits while the queue is full or too
many of its frames are in flight."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import trio

from zajel.web.outbox import MAX_IN_FLIGHT, Outbox

FRAME = "x" * 100
SIZE = sys.getsizeof(FRAME)


def fill(outbox: Outbox, frames: int) -> None:
    for _ in range(frames):
        outbox.answer(FRAME)


async def test_bounds_follow_the_settings(autojump_clock):
    outbox = Outbox(max_frames=256, max_bytes=4 << 20, slow_after=2.0)
    assert (outbox.soft_frames, outbox.hard_frames) == (256, 1024)
    assert (outbox.soft_bytes, outbox.hard_bytes) == (1 << 20, 4 << 20)


async def test_answers_are_never_refused(autojump_clock):
    outbox = Outbox(max_frames=4, max_bytes=1 << 16, slow_after=2.0)
    fill(outbox, 100)  # far past both bounds
    assert len(outbox) == 100
    assert outbox.bytes == 100 * SIZE
    assert outbox.reader_must_wait()


async def test_pushes_below_the_soft_bound_always_go_in(autojump_clock):
    outbox = Outbox(max_frames=4, max_bytes=1 << 20, slow_after=2.0)
    await trio.sleep(100)  # an idle connection is not a stalled one
    assert all(outbox.push(FRAME) for _ in range(4))


async def test_pushes_past_the_soft_bound_go_in_while_the_writer_makes_progress(autojump_clock):
    outbox = Outbox(max_frames=4, max_bytes=1 << 20, slow_after=2.0)
    fill(outbox, 4)  # full (soft bound)
    await trio.sleep(1.9)
    assert outbox.push(FRAME)  # nothing written for 1.9 s: not yet slow
    assert outbox.take() == FRAME
    outbox.wrote()
    await trio.sleep(1.9)
    assert outbox.push(FRAME)  # the writer wrote 1.9 s ago
    await trio.sleep(0.1)
    assert not outbox.push(FRAME)  # 2 s without a write, queue full: a slow consumer


async def test_the_hard_bound_refuses_pushes_even_while_writing(autojump_clock):
    outbox = Outbox(max_frames=4, max_bytes=1 << 20, slow_after=2.0)
    accepted = 0
    while outbox.push(FRAME):
        accepted += 1
        outbox.wrote()  # the writer keeps writing, but slower than the pushes come
    assert accepted == 16  # 4 x the queue
    assert len(outbox) == 16


async def test_bytes_bound_pushes_too(autojump_clock):
    outbox = Outbox(max_frames=1000, max_bytes=64 * 1024, slow_after=2.0)
    big = "b" * 10_000
    while outbox.push(big):
        outbox.wrote()
    # The hard bound is the setting itself: the queue never holds more text than it.
    assert outbox.bytes <= 64 * 1024
    assert outbox.bytes + sys.getsizeof(big) > 64 * 1024
    assert outbox.bytes >= outbox.soft_bytes


async def test_a_burst_of_pushes_into_an_idle_queue_is_not_a_stall(autojump_clock):
    outbox = Outbox(max_frames=4, max_bytes=1 << 20, slow_after=2.0)

    async def writer() -> None:
        await outbox.next_frame()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(60)  # the writer waits, idle, for a minute
        # A burst larger than the queue arrives in one go, before the writer runs again.
        assert all(outbox.push(FRAME) for _ in range(10))


async def test_the_writer_takes_frames_in_order_and_wakes_for_new_ones(autojump_clock):
    outbox = Outbox(max_frames=8, max_bytes=1 << 20, slow_after=2.0)
    taken: list[str] = []

    async def writer() -> None:
        while (frame := await outbox.next_frame()) is not None:
            taken.append(frame)
            outbox.wrote()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        outbox.answer("a")
        await trio.sleep(1)
        outbox.push("b")
        outbox.answer("c")
        await trio.sleep(1)
        outbox.close()
    assert taken == ["a", "b", "c"]
    assert outbox.bytes == 0


async def assert_reader_held_until(outbox: Outbox, release: Callable[[], object]) -> None:
    """A reader waiting on ``outbox`` stays held (5 s of the mock clock) until ``release()``."""
    resumed = trio.Event()

    async def reader() -> None:
        await outbox.wait_until_readable()
        resumed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(5)
        assert not resumed.is_set()
        release()
        await resumed.wait()


async def test_the_reader_waits_while_the_queue_is_full(autojump_clock):
    outbox = Outbox(max_frames=4, max_bytes=1 << 20, slow_after=2.0)
    fill(outbox, 4)
    await assert_reader_held_until(outbox, outbox.take)


async def test_the_reader_waits_while_too_many_frames_are_in_flight(autojump_clock):
    outbox = Outbox(max_frames=256, max_bytes=1 << 20, slow_after=2.0)
    for _ in range(MAX_IN_FLIGHT):
        outbox.handing_over()
    assert outbox.reader_must_wait()
    await assert_reader_held_until(outbox, outbox.handled)
    assert outbox.in_flight == MAX_IN_FLIGHT - 1


async def test_clear_releases_everything_and_close_wakes_both_sides(autojump_clock):
    outbox = Outbox(max_frames=4, max_bytes=1 << 20, slow_after=2.0)
    fill(outbox, 50)
    outbox.clear()
    assert (len(outbox), outbox.bytes) == (0, 0)
    woken = []

    async def writer() -> None:
        assert await outbox.next_frame() is None  # closed and empty
        woken.append("writer")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(1)
        outbox.close()
    assert woken == ["writer"]
    outbox.answer("late")
    assert outbox.push("late")  # accepted and dropped: the connection is closing
    assert len(outbox) == 0


@pytest.mark.parametrize("frames", [0, 1, 3])
async def test_handled_never_goes_below_zero(autojump_clock, frames):
    outbox = Outbox(max_frames=4, max_bytes=1 << 20, slow_after=2.0)
    for _ in range(frames):
        outbox.handing_over()
    for _ in range(frames + 5):
        outbox.handled()
    assert outbox.in_flight == 0
