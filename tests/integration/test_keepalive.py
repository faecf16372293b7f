"""Keep-alive (docs/protocol/conventions.md, "Keep-alive"): the server pings, and a connection that
sends nothing, not even a pong, for the idle timeout is closed; any frame resets the timer. Driven
by jumps of the mock clock that the in-process server shares, never by waiting."""

from __future__ import annotations

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request

from tests.conftest import ALL_DEPLOYMENTS, deployments, make_config, start_server
from zajel.client import connect_signal
from zajel.server import hypercorn_config

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)


class SilentClient:
    """A raw WebSocket client that completes the handshake and then answers nothing."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> SilentClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.stream.send_all(client.ws.send(Request(host="127.0.0.1", target="/signal")))
        events = await client.events()
        assert any(isinstance(event, AcceptConnection) for event in events)
        return client

    async def events(self) -> list[object]:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    async def wait_closed(self) -> list[object]:
        """Read until the server ends the connection; returns every event seen."""
        seen: list[object] = []
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return seen
            if not data:
                return seen
            self.ws.receive_data(data)
            for event in self.ws.events():
                seen.append(event)
                if isinstance(event, CloseConnection):
                    return seen


@pytest.mark.parametrize("transport", ["hypercorn", "fast"])
async def test_server_pings_and_closes_a_silent_connection(nursery, clock, transport):
    server = await start_server(nursery, make_config(ws_transport=transport))
    port = int(server.url.rsplit(":", 1)[1])
    with trio.fail_after(200):
        silent = await SilentClient.connect(port)
        async with connect_signal(server.url) as busy:
            clock.jump(31)  # the ping interval has passed: the server pings
            events = await silent.events()
            assert any(isinstance(event, Ping) for event in events)
            await busy.ping()
            clock.jump(100)
            await busy.ping()  # busy has sent a frame; silent has not answered for 131 s
            # hypercorn closes the socket once the connection's pinger wakes (at most one ping
            # interval later): move the clock past it rather than wait.
            clock.jump(30)
            await silent.wait_closed()
            await busy.ping()
        await silent.stream.aclose()
    server.stop.set()


def test_transport_settings_follow_the_configuration():
    config = make_config(
        ws_ping_interval=15.0, ws_idle_timeout=60.0, ws_max_message_bytes=4096, port=9000
    )
    hc = hypercorn_config(config)
    assert hc.websocket_ping_interval == 15.0
    assert hc.read_timeout == 60.0
    assert hc.websocket_max_message_size == 4096
