"""Back-pressure (docs/operations.md, "Limits and back-pressure"): a client is never dropped for a
burst of answers to its own frames, nor for a burst of pushes it reads promptly; a client that
stops reading is dropped as a slow consumer (1013), its socket, queue and cap slot released at
once, cleaned up like any disconnect, and nobody else waits for it."""

from __future__ import annotations

import json

import trio
import trio_websocket

from tests.conftest import ALL_DEPLOYMENTS, deployments, make_config, start_server
from tests.integration import _http
from tests.integration._process import zajel_serve
from tests.integration._raw import RawClient, paired_sink, port_of, rss_bytes
from tests.integration._signal import (
    expect,
    open_socket,
    pair,
    read_until_closed,
    registered,
)
from zajel.client import connect_signal

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

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

            # When S reads at last it finds offers the kernel had buffered, then the end of the
            # connection: its socket was released at once, with no room left for a close frame.
            frames, close_code = await read_until_closed(s)
            assert close_code in {1013, 1006}
            assert frames
            assert all(frame == {"type": "offer", "from": A, "payload": OFFER} for frame in frames)
    running.stop.set()


async def test_a_client_that_keeps_reading_is_not_dropped_when_its_peers_burst(server):
    """Default settings; the target reads every frame as soon as it arrives: it is not a slow
    client, whatever its queue holds for a moment."""
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


async def test_two_partners_bursts_of_190_offers_each_reach_a_prompt_reader(server):
    """380 offers arrive at once, more than the 256-frame queue: the target reads promptly, so
    it keeps taking frames from its socket, and every offer reaches it."""
    sdp = {"sdp": "v=0 " + "a=candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host " * 80}
    each = 190
    received, close_code = 0, None
    with trio.fail_after(30):
        async with (
            registered(server.url, "BAAAAA", "CAAAAA") as senders,
            open_socket(server.url, message_queue_size=10_000) as target,
        ):
            await target.register(S)
            for sender in senders:
                await pair(sender, target)

            async def burst(sender) -> None:
                # One write per burst: the server reads them as fast as its socket delivers.
                frames = [
                    json.dumps({"type": "offer", "target": S, "payload": sdp}) for _ in range(each)
                ]
                for frame in frames:
                    await sender.ws.send_message(frame)

            async with trio.open_nursery() as bursting:
                for sender in senders:
                    bursting.start_soon(burst, sender)
                try:
                    while received < 2 * each:
                        assert (await target.receive())["type"] == "offer"
                        received += 1
                except trio_websocket.ConnectionClosed as closed:
                    close_code = None if closed.reason is None else closed.reason.code
            for sender in senders:
                await sender.ping()  # nobody was closed
    assert (received, close_code) == (2 * each, None)


async def test_a_burst_of_pings_gets_answers_and_rate_limits_never_1013(nursery):
    """600 pings in one write, the answers read only afterwards: answers to a client's own frames
    never make it a slow consumer, even with a small queue; past the rate limit it gets
    ``rate_limited`` and, as the flood goes on, the 1008 close."""
    running = await start_server(
        nursery, make_config(ws_outbound_queue=8, ws_idle_timeout=86_400.0)
    )
    with trio.fail_after(30):
        client = await RawClient.connect(port_of(running.url), "/relay")
        await client.send(*([{"type": "ping"}] * 600))
        frames, close_code = await client.read_until_closed()
        await client.hang_up()
    pongs = [frame for frame in frames if frame == {"type": "pong"}]
    limited = [frame for frame in frames if frame.get("code") == "rate_limited"]
    assert 200 <= len(pongs) < 260  # the bucket's burst, and what it refills meanwhile
    assert limited
    assert len(pongs) + len(limited) == len(frames)
    assert close_code == 1008
    running.stop.set()


async def test_a_non_reading_connection_cannot_pin_more_than_its_byte_budget(tmp_path):
    """A client that stops reading while a partner relays big offers to it: offers made of
    4-byte characters cost 12 bytes each when escaped, so the queue used to hold ~190 MB; now
    the client is dropped as a slow consumer and the server's memory barely moves."""
    payload = {"sdp": "\U0001f600" * 60_000}  # 240 KB of UTF-8 in one frame
    env = {"ZAJEL_WS_MESSAGE_RATE": "1000", "ZAJEL_WS_MESSAGE_BURST": "1000"}
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=env) as (process, url), registered(url, A) as (a,):
            sink = await paired_sink(port_of(url), a, A, S)
            before = rss_bytes(process.pid)
            peak = before
            heard: list[dict] = []
            # Sent as raw UTF-8 (4 bytes a character), as the apps send it.
            offer = json.dumps(
                {"type": "offer", "target": S, "payload": payload}, ensure_ascii=False
            )
            for _ in range(200):  # 48 MB offered, at most
                for _ in range(4):
                    await a.ws.send_message(offer)
                await a.send({"type": "ping"})
                while (frame := await a.receive()) != {"type": "pong"}:
                    heard.append(frame)
                peak = max(peak, rss_bytes(process.pid))
                if heard:
                    break
            assert heard[0] == {"type": "peer_left", "pairingCode": S}
            await sink.hang_up()
    # The queue holds at most WS_OUTBOUND_BYTES (4 MiB); allow for the frames in transit and
    # the allocator, far below the ~190 MB the same load parked before.
    assert peak - before < 40 * 2**20, (before, peak)
