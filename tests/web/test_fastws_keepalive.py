"""The keep-alive of our WebSocket transport (zajel/web/fastws.py ``FastWebSocket.keepalive``),
run by the connection table's sweep: a ping that cannot be written (the client is gone) never
ends the sweep, so every other connection still gets its ping."""

from __future__ import annotations

import trio
import trio.testing

from tests.conftest import make_config
from tests.integration._raw import handshake
from zajel.web.fastws import PING, FastWebSocket
from zajel.web.transport import ConnectionTable, GuardedStream


async def open_websocket(
    table: ConnectionTable, port: int
) -> tuple[FastWebSocket, trio.SocketStream]:
    """A WebSocket accepted on our transport over a socket pair; the client's end, past the 101."""
    left, right = trio.socket.socketpair()
    conn = table.open(("192.0.2.1", port))
    assert conn is not None
    conn.stream = GuardedStream(trio.SocketStream(left), conn)
    websocket = FastWebSocket(conn.stream, conn, make_config())
    assert await websocket.handshake(handshake()) is not None
    await websocket.send({"type": "websocket.accept"})
    client = trio.SocketStream(right)
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += await client.receive_some()
    assert reply.startswith(b"HTTP/1.1 101")
    return websocket, client


async def test_a_ping_to_a_client_that_is_gone_does_not_end_the_sweep(autojump_clock):
    table = ConnectionTable(max_http_per_ip=10)
    gone, gone_client = await open_websocket(table, 1)
    alive, alive_client = await open_websocket(table, 2)
    await gone_client.aclose()  # its socket now refuses every write
    table.check_deadlines(trio.current_time() + make_config().ws_ping_interval)
    assert await alive_client.receive_some() == PING
    await alive_client.aclose()
    for websocket in (gone, alive):
        websocket.stream.close_socket()
