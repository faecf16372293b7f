"""The service runtime (``_mailbox``): request/reply, failures, callers gone, timers."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from tests.services.fakes import captured_log
from zajel.services import Envelope, LocalAddress, run_service
from zajel.services._mailbox import Batch, ServiceFailure, start_service


class Recorder:
    """A service that answers ``("echo", request)`` and runs timers set by requests."""

    name = "recorder"

    def __init__(self) -> None:
        self.handled: list[tuple[Any, float]] = []
        self.timers: list[float] = []
        self.fired: list[float] = []
        self.failing_timers = 0

    def handle(self, request: Any, now: float) -> Any:
        if request == "boom":
            raise RuntimeError("handler exploded")
        if isinstance(request, tuple) and request[0] == "timer":
            self.timers.append(now + request[1])
        self.handled.append((request, now))
        return ("echo", request)

    def next_deadline(self) -> float:
        return min(self.timers, default=math.inf)

    def expire(self, now: float) -> None:
        due = [t for t in self.timers if t <= now]
        self.timers = [t for t in self.timers if t > now]
        self.fired.extend(due)
        if self.failing_timers:
            self.failing_timers -= 1
            raise RuntimeError("timer exploded")


@pytest.fixture
def service_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the service's logger, whatever the logging configuration of the session."""
    with captured_log("zajel.recorder") as records:
        yield records


async def test_call_returns_the_reply_and_requests_run_in_order(autojump_clock):
    service = Recorder()
    async with trio.open_nursery() as nursery:
        address = start_service(nursery, service)
        assert address.name == "recorder"
        assert await address.call("hello") == ("echo", "hello")
        await address.cast("one")
        address.cast_nowait("two")
        assert await address.call("three") == ("echo", "three")
        assert [request for request, _ in service.handled] == ["hello", "one", "two", "three"]
        nursery.cancel_scope.cancel()


async def test_requests_are_handled_at_trio_time(autojump_clock):
    service = Recorder()
    async with trio.open_nursery() as nursery:
        address = start_service(nursery, service)
        await trio.sleep(42)
        start = trio.current_time()
        await address.call("now")
        assert service.handled == [("now", start)]
        nursery.cancel_scope.cancel()


async def test_a_failing_handler_is_logged_answered_and_survived(autojump_clock, service_log):
    service = Recorder()
    async with trio.open_nursery() as nursery:
        address = start_service(nursery, service)
        assert await address.call("boom") == ServiceFailure("recorder")
        await address.cast("boom")  # a cast failure has nobody to answer
        assert await address.call("after") == ("echo", "after")
        nursery.cancel_scope.cancel()
    failures = [r for r in service_log if r.getMessage() == "request failed"]
    assert len(failures) == 2
    assert all(r.levelno == logging.ERROR for r in failures)
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)
    assert failures[0].context == {"request": "str"}


async def test_a_caller_that_went_away_does_not_break_the_service(autojump_clock):
    service = Recorder()
    send, receive = trio.open_memory_channel[Envelope](10)
    address = LocalAddress("recorder", send)
    async with trio.open_nursery() as nursery:
        gone = trio.CancelScope()

        async def impatient() -> None:
            with gone:
                await address.call("orphan")
            outcome.append("cancelled" if gone.cancelled_caught else "answered")

        outcome: list[str] = []
        nursery.start_soon(impatient)
        await trio.testing.wait_all_tasks_blocked()
        gone.cancel()  # the caller leaves with its request still in the inbox
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(run_service, service, receive)
        assert await address.call("next") == ("echo", "next")
        assert [request for request, _ in service.handled] == ["orphan", "next"]
        assert outcome == ["cancelled"]
        nursery.cancel_scope.cancel()


async def test_a_reply_channel_closed_before_the_answer_is_ignored(autojump_clock):
    service = Recorder()
    send, receive = trio.open_memory_channel[Envelope](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_service, service, receive)
        reply_send, reply_receive = trio.open_memory_channel[Any](1)
        reply_receive.close()
        await send.send(Envelope("orphan", reply_send))
        assert await LocalAddress("recorder", send).call("next") == ("echo", "next")
        with pytest.raises(trio.ClosedResourceError):
            reply_send.send_nowait("the service closed its reply side")
        nursery.cancel_scope.cancel()


async def test_cast_nowait_raises_would_block_when_the_inbox_is_full():
    send, _receive = trio.open_memory_channel[Envelope](1)
    address = LocalAddress("recorder", send)
    address.cast_nowait("first")
    with pytest.raises(trio.WouldBlock):
        address.cast_nowait("second")


async def test_the_service_ends_when_its_inbox_is_closed(autojump_clock):
    service = Recorder()
    send, receive = trio.open_memory_channel[Envelope](10)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_service, service, receive)
            await send.send(Envelope("last"))
            await send.aclose()
    assert service.handled[0][0] == "last"


async def test_timers_fire_on_trio_time_while_requests_are_served(autojump_clock):
    service = Recorder()
    async with trio.open_nursery() as nursery:
        address = start_service(nursery, service)
        start = trio.current_time()
        await address.call(("timer", 10.0))
        await address.call(("timer", 25.0))
        await trio.sleep(9.5)
        assert service.fired == []
        assert await address.call("meanwhile") == ("echo", "meanwhile")
        await trio.sleep(0.5)
        await address.call("sync")
        assert service.fired == [start + 10.0]
        await trio.sleep(100)
        assert service.fired == [start + 10.0, start + 25.0]
        nursery.cancel_scope.cancel()


async def test_a_failing_timer_is_logged_and_the_service_goes_on(autojump_clock, service_log):
    service = Recorder()
    service.failing_timers = 1
    async with trio.open_nursery() as nursery:
        address = start_service(nursery, service)
        await address.call(("timer", 5.0))
        await trio.sleep(6)
        assert await address.call("after") == ("echo", "after")
        await address.call(("timer", 5.0))
        await trio.sleep(6)
        assert len(service.fired) == 2
        nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in service_log] == ["timer failed"]
    assert service_log[0].context == {"service": "recorder"}


class StuckTimer(Recorder):
    """A timer that fails every time without ever moving its deadline."""

    def next_deadline(self) -> float:
        return 0.0

    def expire(self, now: float) -> None:
        raise RuntimeError("timer stuck")


async def test_a_timer_that_keeps_failing_does_not_starve_the_inbox(autojump_clock, service_log):
    logging.getLogger("zajel.recorder").propagate = False
    try:
        async with trio.open_nursery() as nursery:
            address = start_service(nursery, StuckTimer())
            with trio.fail_after(5):
                assert await address.call("still served") == ("echo", "still served")
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger("zajel.recorder").propagate = True
    assert service_log
    assert {r.getMessage() for r in service_log} == {"timer failed"}


async def test_a_batch_is_its_requests_one_by_one_and_a_failing_one_stops_none(
    autojump_clock, service_log
):
    service = Recorder()
    async with trio.open_nursery() as nursery:
        address = start_service(nursery, service)
        await address.send(Envelope(Batch(("a", "boom", "b"))))
        await address.cast("c")
        assert await address.call("d") == ("echo", "d")
        assert [request for request, _ in service.handled] == ["a", "b", "c", "d"]
        assert [record.getMessage() for record in service_log] == ["request failed"]
        nursery.cancel_scope.cancel()
