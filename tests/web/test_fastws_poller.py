"""Reads made by the poller of our WebSocket transport (zajel/web/fastws.py ``Poller``): in the
steady state a read's messages are handed over from the poller's task, without a step of the
connection's task; whatever has to wait (a full inbox, the queue over its bound) goes back to
the connection's task, and the order of the messages never changes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from tests.conftest import make_config
from tests.integration._raw import TEXT, client_frame, handshake
from zajel.services._peers import Attach, Inbound
from zajel.web.fastws import FastWebSocket
from zajel.web.outbox import MAX_IN_FLIGHT
from zajel.web.sockets import Endpoint, HandOver, SocketPeer, _read
from zajel.web.transport import ConnectionTable, GuardedStream


class Service:
    """An address that records what it is given; its inbox is full until ``room`` is set."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.room = trio.Event()
        self.room.set()
        self._arrivals = trio.lowlevel.ParkingLot()

    def cast_nowait(self, request: Any) -> None:
        if not self.room.is_set():
            raise trio.WouldBlock
        self._take(request)

    async def cast(self, request: Any) -> None:
        await self.room.wait()
        self._take(request)

    async def call(self, request: Any) -> Any:
        raise NotImplementedError

    def _take(self, request: Any) -> None:
        self.received.append(request)
        self._arrivals.unpark_all()

    def numbers(self) -> list[int]:
        return [item.message["n"] for item in self.received if isinstance(item, Inbound)]

    async def until_numbered(self, count: int) -> list[int]:
        """The numbers received once there are ``count`` of them."""
        with trio.fail_after(5):
            while len(self.numbers()) < count:
                await self._arrivals.park()
        return self.numbers()


class TaskSteps(trio.abc.Instrument):
    """Steps taken by each task, by name."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


@asynccontextmanager
async def reading(service: Service) -> AsyncIterator[tuple[trio.SocketStream, SocketPeer]]:
    """A connection on our transport whose reader runs in a task named ``reader``: the
    client's end, past the 101, and the connection's peer; closed on exit."""
    left, right = trio.socket.socketpair()
    table = ConnectionTable(max_http_per_ip=10)
    conn = table.open(("192.0.2.1", 1))
    assert conn is not None
    conn.stream = GuardedStream(trio.SocketStream(left), conn)
    config = make_config()
    websocket = FastWebSocket(conn.stream, conn, config)
    client = trio.SocketStream(right)
    try:
        assert await websocket.handshake(handshake()) is not None
        await websocket.send({"type": "websocket.accept"})
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += await client.receive_some()
        peer = SocketPeer(1, config, websocket.frame, websocket.write_now)
        endpoint = Endpoint("test", "/signal", json.loads, service)  # type: ignore[arg-type]
        await service.cast(Attach(1, peer, "192.0.2.1"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read, websocket, peer, endpoint, config, name="reader")
            yield client, peer
            nursery.cancel_scope.cancel()
    finally:
        websocket._leave_poller()
        websocket.stream.close_socket()
        await client.aclose()


def frame(number: int) -> bytes:
    return client_frame(TEXT, json.dumps({"n": number}).encode())


async def test_lone_requests_are_handed_over_without_a_step_of_the_connections_task():
    steps = TaskSteps()
    service = Service()
    trio.lowlevel.add_instrument(steps)
    try:
        async with reading(service) as (client, peer):
            await client.send_all(frame(0))
            await service.until_numbered(1)
            peer.outbox.handled()
            await trio.testing.wait_all_tasks_blocked()
            before = steps.steps["reader"]
            for number in range(1, 21):
                await client.send_all(frame(number))
                await service.until_numbered(number + 1)
                peer.outbox.handled()
            assert steps.steps["reader"] == before
            assert service.numbers() == list(range(21))
    finally:
        trio.lowlevel.remove_instrument(steps)


async def test_a_full_inbox_leaves_the_cast_to_the_connections_task_in_order():
    service = Service()
    async with reading(service) as (client, peer):
        service.room = trio.Event()  # full
        await client.send_all(frame(0) + frame(1))
        await client.send_all(frame(2))
        await trio.testing.wait_all_tasks_blocked()
        assert service.numbers() == []
        service.room.set()
        assert await service.until_numbered(3) == [0, 1, 2]
        for _ in range(3):
            peer.outbox.handled()
        await client.send_all(frame(3))  # the poller's turn again
        assert await service.until_numbered(4) == [0, 1, 2, 3]


async def test_frames_past_those_in_flight_wait_for_the_service_then_come_in_order():
    """No more than ``MAX_IN_FLIGHT`` (8) frames are handed over before the service has handled
    them: the rest wait in the connection's task."""
    service = Service()
    async with reading(service) as (client, peer):
        await client.send_all(b"".join(frame(number) for number in range(20)))
        await service.until_numbered(MAX_IN_FLIGHT)
        await trio.testing.wait_all_tasks_blocked()
        assert service.numbers() == list(range(MAX_IN_FLIGHT))
        for handled in range(20):
            peer.outbox.handled()
            await service.until_numbered(min(20, MAX_IN_FLIGHT + handled + 1))
        assert service.numbers() == list(range(20))


async def test_a_closed_queue_never_makes_the_hand_over_wait():
    """A connection closed while its frames wait (a slow consumer's 1013, with frames still in
    flight) hands the rest over at once: ``resume`` returns at once for a closed queue, so a
    wait here would never end."""
    service = Service()
    config = make_config()
    peer = SocketPeer(1, config)
    hand_over = HandOver(peer, Endpoint("test", "/signal", json.loads, service), config)  # type: ignore[arg-type]
    peer.outbox.in_flight = MAX_IN_FLIGHT
    messages = [json.dumps({"n": 0}), json.dumps({"n": 1})]
    assert hand_over.take(messages, 0, trio.current_time()) == 0
    peer.close(1013)
    assert hand_over.take(messages, 0, trio.current_time()) == 2
    assert service.numbers() == [0, 1]
