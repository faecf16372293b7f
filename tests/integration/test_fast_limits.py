"""Limits of ``zajel serve``'s own WebSocket transport that hypercorn's stack did not have
(zajel/web/fastws.py; docs/operations.md, "Keep-alive" and "Limits and back-pressure"):

- after a 1009 the server stops reading: a client that goes on sending cannot grow its memory;
- a connection whose socket answers pings but whose application sends nothing is closed with
  1001 after ``ZAJEL_WS_MESSAGE_IDLE_TIMEOUT``; a client that sends a message now and then stays.
"""

from __future__ import annotations

import struct

import trio

from tests.conftest import make_config, start_server
from tests.integration._process import zajel_serve
from tests.integration._raw import (
    MASK,
    TEXT,
    handshake,
    port_of,
    read_reply,
    rss_bytes,
    send_ignoring_close,
    server_frames,
)
from tests.integration._signal import open_socket, read_until_closed
from zajel.client import connect_signal

LIMIT = 64 * 1024


def too_big_head(size: int) -> bytes:
    """The head of a masked text frame announcing ``size`` bytes of payload."""
    return struct.pack("!BBQ", 0x80 | TEXT, 0x80 | 127, size) + MASK


async def test_a_client_that_keeps_sending_after_its_1009_does_not_grow_the_servers_memory(
    tmp_path,
):
    env = {"ZAJEL_WS_MAX_MESSAGE_BYTES": str(LIMIT)}
    junk = b"x" * (1 << 20)
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=env) as (process, url):
            port = port_of(url)
            # Warm up: one connection served and closed, so the baseline counts what the
            # server needs for a connection at all.
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(handshake())
                assert (await read_reply(stream)).status == 101
            baseline = rss_bytes(process.pid)
            streams = []
            for _ in range(5):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                streams.append(stream)
                await stream.send_all(handshake())
                reply = await read_reply(stream)
                assert reply.status == 101
                # 1 GiB announced; the server answers 1009 at the head and reads no more.
                await stream.send_all(too_big_head(1 << 30))
            sent = 0
            for stream in streams:
                with trio.move_on_after(1):
                    while sent < (200 << 20):
                        await send_ignoring_close(stream, junk)
                        sent += len(junk)
            for stream in streams:
                data = b""
                with trio.move_on_after(5):
                    while chunk := await _receive(stream):
                        data += chunk
                closes = [frame for frame in server_frames(data) if frame.opcode == 0x8]
                assert [frame.close_code for frame in closes] == [1009]
                await stream.aclose()
            growth = rss_bytes(process.pid) - baseline
            assert growth < 8 << 20, f"the server grew by {growth} bytes"


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return bytes(await stream.receive_some(65536))
    except trio.BrokenResourceError:
        return b""


async def test_an_application_that_sends_nothing_is_closed_1001_though_it_answers_pings(
    nursery, clock
):
    config = make_config(ws_message_idle_timeout=300.0)
    server = await start_server(nursery, config)
    with trio.fail_after(360):  # the jumps advance this deadline's clock too
        async with (
            open_socket(server.url) as quiet,  # the server closes it: a socket we close
            connect_signal(server.url) as talking,
        ):
            # 3 x 100 s; each jump wakes the keep-alive sweep, whose pings both clients'
            # library answers, so neither passes the 120 s rule.
            for _ in range(3):
                await talking.ping()
                await trio.testing.wait_all_tasks_blocked()
                clock.jump(100)
                await trio.testing.wait_all_tasks_blocked()
            assert await read_until_closed(quiet) == ([], 1001)
            await talking.ping()  # it sent a message every 100 s: still served
    server.stop.set()
