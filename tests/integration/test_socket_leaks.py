"""No socket or task left behind (docs/operations.md, "Limits and back-pressure"; transport in
docs/architecture.md): whatever a client does before it goes, once it is gone the server holds
nothing for it: no TCP socket (CLOSE_WAIT was the symptom), no task, no cap slot."""

from __future__ import annotations

import contextlib

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._raw import (
    RawClient,
    paired_sink,
    port_of,
    server_sockets,
    task_count,
    wait_until,
)
from tests.integration._signal import pair, registered
from zajel.client import connect_signal

FLOOD = [{"type": "ping"}] * 300


async def connections(url: str) -> int:
    response = await _http.get(url, "/stats")
    assert response.status == 200
    return response.json()["connections"]


async def flood_keep_sending_and_hang_up(port: int, path: str) -> None:
    """300 pings at once without reading, more for a while, then the TCP stream is closed."""
    client = await RawClient.connect(port, path)
    await client.send(*FLOOD)
    with trio.move_on_after(1.5):
        while True:  # the server soon stops reading; then this write blocks until the timeout
            await client.send({"type": "ping"})
    await client.hang_up()


@pytest.mark.parametrize("transport", ["hypercorn", "fast"])
async def test_clients_that_flood_and_keep_sending_leave_no_socket_behind(nursery, transport):
    running = await start_server(
        nursery, make_config(ws_idle_timeout=86_400.0, ws_transport=transport)
    )
    port = port_of(running.url)
    assert await connections(running.url) == 0
    baseline = task_count()
    with trio.fail_after(60):
        async with trio.open_nursery() as clients:
            for index in range(5):
                clients.start_soon(
                    flood_keep_sending_and_hang_up, port, ("/relay", "/signal")[index % 2]
                )
        # Each was closed with 1008 (a flood that went on) and its socket drained to the end.
        await wait_until(lambda: not server_sockets(port), within=10)
        await wait_until(lambda: task_count() <= baseline, within=10)
        assert await connections(running.url) == 0
        # The per-IP cap was released for real: a full cap's worth of connections still fits.
        async with connect_signal(running.url) as again:
            await again.ping()
    running.stop.set()


@pytest.mark.parametrize("transport", ["hypercorn", "fast"])
async def test_a_slow_consumer_that_keeps_sending_leaves_no_socket_behind(nursery, transport):
    running = await start_server(
        nursery,
        make_config(ws_idle_timeout=86_400.0, ws_slow_consumer_ms=200, ws_transport=transport),
    )
    port = port_of(running.url)
    baseline = task_count()
    offer = {"sdp": "o" * 60_000}
    with trio.fail_after(60):
        async with registered(running.url, "AAAAAA") as (sender,):
            sink = await paired_sink(port, sender, "AAAAAA", "SSSSSS")
            # The sink stops reading; the sender's offers clog its socket until it is dropped.
            heard: list[dict] = []
            for _ in range(2_000):
                await sender.signal("offer", "SSSSSS", offer)
                await sender.send({"type": "ping"})
                while (frame := await sender.receive()) != {"type": "pong"}:
                    heard.append(frame)
                if heard:
                    break
            assert heard[0] == {"type": "peer_left", "pairingCode": "SSSSSS"}
            # Dropped at once: its socket is closed by the server even while it keeps writing
            # (which the client may then see as a reset).
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
                while True:
                    await sink.send({"type": "ping"})
            await sink.hang_up()
            await wait_until(lambda: sum(server_sockets(port).values()) <= 2, within=10)
        await wait_until(lambda: not server_sockets(port), within=10)
        await wait_until(lambda: task_count() <= baseline, within=10)
        assert await connections(running.url) == 0
    running.stop.set()


@pytest.mark.parametrize("transport", ["hypercorn", "fast"])
async def test_closed_websockets_leave_no_tasks_behind(nursery, transport):
    running = await start_server(
        nursery, make_config(ws_idle_timeout=86_400.0, ws_transport=transport)
    )
    assert await connections(running.url) == 0
    baseline = task_count()
    with trio.fail_after(30):
        for _ in range(20):
            async with connect_signal(running.url) as client:
                await client.ping()
        async with registered(running.url, "AAAAAA", "BBBBBB") as (a, b):
            await pair(a, b)
        # hypercorn's ping loop of each closed connection used to sleep on for up to a ping
        # interval (30 s): the tasks are gone now, well within a second.
        await wait_until(lambda: task_count() <= baseline, within=1.5)
        await wait_until(lambda: not server_sockets(port_of(running.url)), within=1.5)
    running.stop.set()
