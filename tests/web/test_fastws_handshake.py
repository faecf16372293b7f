"""``FastWebSocket.handshake`` (zajel/web/fastws.py) takes a whole request head, as the accept
loop hands it; frames behind it are tested in test_fastws_frames.py."""

from __future__ import annotations

import trio

from tests.conftest import make_config
from tests.integration._raw import handshake
from zajel.web.fastws import FastWebSocket
from zajel.web.transport import ConnectionTable, GuardedStream


async def test_a_head_cut_short_is_refused_400():
    left, right = trio.socket.socketpair()
    conn = ConnectionTable(max_http_per_ip=10).open(("192.0.2.1", 1))
    assert conn is not None
    conn.stream = GuardedStream(trio.SocketStream(left), conn)
    websocket = FastWebSocket(conn.stream, conn, make_config())
    async with trio.SocketStream(right) as client:
        assert await websocket.handshake(handshake()[:-2]) is None
        conn.stream.close_socket()
        reply = b""
        while chunk := await client.receive_some():
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")
