"""HTTP connections (docs/operations.md, "Limits and back-pressure"): a finished request's
connection is closed after the response (``Connection: close``) or after the keep-alive timeout,
and one address cannot hold more than ``HTTP_MAX_CONNECTIONS_PER_IP`` of them, so it cannot take
the server's file descriptors from everyone else."""

from __future__ import annotations

import resource

import trio
import trio.testing

from tests.conftest import make_config, start_server
from tests.integration._process import zajel_serve
from tests.integration._raw import RawClient, open_stream, port_of, server_sockets, wait_until

HEALTH = b"GET /health HTTP/1.1\r\nHost: zajel\r\n\r\n"
HEALTH_AND_CLOSE = b"GET /health HTTP/1.1\r\nHost: zajel\r\nConnection: close\r\n\r\n"


async def read_response(stream: trio.SocketStream) -> bytes:
    """One response head and its ``Content-Length`` body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def closed_by_server(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(65536) == b""
    except trio.BrokenResourceError:
        return True


async def get_health(port: int, source: str | None = None) -> bytes:
    stream = await open_stream(port, source)
    async with stream:
        await stream.send_all(HEALTH_AND_CLOSE)
        return await read_response(stream)


async def test_a_finished_request_with_connection_close_is_closed_at_once(server):
    port = port_of(server.url)
    with trio.fail_after(10):
        for _ in range(20):
            stream = await open_stream(port)
            async with stream:
                await stream.send_all(HEALTH_AND_CLOSE)
                assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
                # The server closes its side right after the response (it used to keep the
                # connection until its 120 s read timeout).
                with trio.fail_after(1):
                    assert await closed_by_server(stream)
        await wait_until(lambda: not server_sockets(port), within=2)


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(nursery, clock):
    running = await start_server(nursery, make_config(ws_idle_timeout=86_400.0))
    port = port_of(running.url)
    with trio.fail_after(10):
        stream = await open_stream(port)
        async with stream:
            for _ in range(3):  # one connection, several requests
                await stream.send_all(HEALTH)
                assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
            # The server starts its keep-alive timer after the response: let it get there.
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(4)  # hypercorn's keep-alive timeout is 5 s: still open
            with trio.move_on_after(0.3) as still_open:
                await closed_by_server(stream)
            assert still_open.cancelled_caught
            clock.jump(2)
            with trio.fail_after(2):
                assert await closed_by_server(stream)
    running.stop.set()


async def test_http_connections_per_address_are_capped(nursery):
    running = await start_server(
        nursery, make_config(http_max_connections_per_ip=5, ws_idle_timeout=86_400.0)
    )
    port = port_of(running.url)
    with trio.fail_after(20):
        held = [await open_stream(port) for _ in range(5)]
        for stream in held:  # each is a live connection the server has accepted
            await stream.send_all(HEALTH)
            assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
        # One more from the same address: 503, closed at once.
        extra = await open_stream(port)
        async with extra:
            refusal = await read_response(extra)
            assert refusal.startswith(b"HTTP/1.1 503")
            assert refusal.endswith(b'{"error":"Too many connections"}')
            assert await closed_by_server(extra)
        # Another address is served.
        assert (await get_health(port, source="127.0.0.2")).startswith(b"HTTP/1.1 200")
        # A WebSocket leaves the HTTP count: its own cap applies.
        for stream in held[:2]:
            await stream.aclose()
        # The server lets go of a connection its client has closed within 2 s.
        await wait_until(lambda: sum(server_sockets(port).values()) <= 3, within=4)
        sockets = [await RawClient.connect(port) for _ in range(4)]
        for stream in held[2:]:
            await stream.aclose()
        assert (await get_health(port)).startswith(b"HTTP/1.1 200")
        for client in sockets:
            await client.hang_up()
    running.stop.set()


def raise_own_fd_limit(need: int) -> int:
    """Raise this process's soft limit of open files towards ``need``; the limit it got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def test_1100_connections_from_one_address_do_not_stop_another_address(tmp_path):
    """The server has 512 files; one address opens 1100 connections and holds them after a
    request each. Before the cap the server ran out of files and stopped accepting anyone."""
    # 1100 connections where this process may open that many, else as many as it may: enough
    # either way to exhaust the server's 512 files many times over without the cap.
    connections = min(1100, raise_own_fd_limit(1400) - 300)
    assert connections > 700, "this test needs about 1,000 open files"
    held: list[trio.SocketStream] = []
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, fd_limits=(512, 512)) as (_, url):
            port = port_of(url)
            try:
                for _ in range(connections):
                    stream = await open_stream(port)
                    held.append(stream)
                    await stream.send_all(HEALTH)
                with trio.fail_after(5):
                    response = await get_health(port, source="127.0.0.2")
                assert response.startswith(b"HTTP/1.1 200")
                states = server_sockets(port)  # the refused ones are closed on the server's side
                assert states["ESTABLISHED"] + states["CLOSE_WAIT"] <= 60, states
            finally:
                for stream in held:
                    stream.socket.close()
    log = (tmp_path / "stderr.log").read_text()
    assert "connection refused: HTTP cap reached" in log
    assert "Traceback" not in log
