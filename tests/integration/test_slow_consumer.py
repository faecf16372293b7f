"""Back-pressure (conventions.md): a client that does not read is disconnected when its
outgoing queue is full, is cleaned up like any disconnect, and never delays anyone else."""

from __future__ import annotations

import trio
import trio_websocket

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._signal import (
    expect,
    open_socket,
    pair,
    read_until_closed,
    registered,
)
from zajel.client import connect_signal

A, C, D, S = "AAAAAA", "CCCCCC", "DDDDDD", "SSSSSS"
OFFER = {"sdp": "x" * 60_000}
BATCH = 4
# 4 x 60 KB x 500 = 120 MB, while the kernel's socket buffers on loopback hold a few MB at most.
MAX_BATCHES = 500
NOT_FOUND = {"type": "error", "code": "peer_not_found", "message": f"Peer not found: {S}"}


async def send_batch(a) -> None:
    for _ in range(BATCH):
        await a.signal("offer", S, OFFER)
    await a.send({"type": "ping"})


async def signaling_stats(url: str) -> dict[str, int]:
    response = await _http.get(url, "/stats")
    assert response.status == 200
    return response.json()["signaling"]


async def exchange(c, d) -> None:
    """One offer/answer round trip between the matched clients ``c`` and ``d``."""
    await c.signal("offer", D, {"sdp": "c"})
    await expect(d, {"type": "offer", "from": C, "payload": {"sdp": "c"}})
    await d.signal("answer", C, {"sdp": "d"})
    await expect(c, {"type": "answer", "from": D, "payload": {"sdp": "d"}})


async def test_a_client_too_slow_to_read_is_dropped_and_nobody_waits_for_it(nursery):
    running = await start_server(
        nursery,
        make_config(
            ws_outbound_queue=8,
            ws_message_rate=100_000,
            ws_message_burst=100_000,
            ws_idle_timeout=86_400.0,
        ),
    )
    url = running.url
    with trio.fail_after(30):
        # trio-websocket's reader stops reading the socket while its one-message queue is
        # full, so S stops reading TCP as soon as it stops calling receive().
        async with (
            registered(url, A, C, D) as (a, c, d),
            open_socket(url, message_queue_size=1) as s,
        ):
            await s.register(S)
            await pair(a, s)
            await pair(c, d)
            assert await signaling_stats(url) == {
                "connections": 4,
                "pairingCodes": 4,
                "pendingPairRequests": 0,
            }

            # While S reads, A's offers flow: four at a time, each batch closed by a ping round
            # trip, so that no queue on the server ever holds more than a few frames.
            for _ in range(5):
                await send_batch(a)
                for _ in range(BATCH):
                    await expect(s, {"type": "offer", "from": A, "payload": OFFER})
                await expect(a, {"type": "pong"})

            # S stops reading: its socket clogs, then its queue fills, and the server drops it.
            # C and D are served on time throughout.
            heard: list[dict] = []
            for _ in range(MAX_BATCHES):
                await send_batch(a)
                while (frame := await a.receive()) != {"type": "pong"}:
                    heard.append(frame)
                with trio.fail_after(2):
                    await exchange(c, d)
                if heard:
                    break
            assert heard[0] == {"type": "peer_left", "pairingCode": S}
            assert all(frame == NOT_FOUND for frame in heard[1:]), heard

            with trio.fail_after(2):
                await exchange(c, d)
            assert await signaling_stats(url) == {
                "connections": 3,
                "pairingCodes": 3,
                "pendingPairRequests": 0,
            }
            # A's relays to S find nobody now, and S's code is free again.
            await a.signal("offer", S, {"sdp": "late"})
            await expect(a, NOT_FOUND)
            async with connect_signal(url) as newcomer:
                await newcomer.register(S)

            # When S reads at last it finds offers the kernel had buffered, then the close.
            frames, close_code = await read_until_closed(s)
            assert close_code == 1013
            assert frames
            assert all(frame == {"type": "offer", "from": A, "payload": OFFER} for frame in frames)
    running.stop.set()


async def test_a_client_that_keeps_reading_is_not_dropped_when_its_peers_burst(server):
    """Default settings; the peers' bursts together fit the target's queue (256 frames), and the
    target reads every frame as soon as it arrives: it is not a slow client.

    A burst larger than the queue can drop even a reading client, because the server can take
    frames in from several sockets faster than it writes them to one: the queue bounds bursts.
    """
    peers, each = 3, 80
    codes = [f"{letter}AAAAA" for letter in "BCDEFG"[:peers]]
    received, close_code = 0, None
    with trio.fail_after(20):
        async with (
            registered(server.url, *codes) as senders,
            open_socket(server.url, message_queue_size=10_000) as target,
        ):
            await target.register(S)
            for sender in senders:
                await pair(sender, target)

            async def burst(sender) -> None:
                for index in range(each):
                    await sender.signal("offer", S, {"index": index})

            async with trio.open_nursery() as bursting:
                for sender in senders:
                    bursting.start_soon(burst, sender)
                try:
                    while received < peers * each:
                        assert (await target.receive())["type"] == "offer"
                        received += 1
                except trio_websocket.ConnectionClosed as closed:
                    close_code = None if closed.reason is None else closed.reason.code
    assert (received, close_code) == (peers * each, None)
