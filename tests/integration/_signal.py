"""Helpers shared by the ``/signal`` integration tests (``docs/protocol/signaling.md``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
import trio_websocket

from zajel.client import JsonSocket, SignalClient, connect_signal, generate_public_key
from zajel.client import pair as pair  # re-exported for the tests


def error(code: str, message: str) -> dict[str, Any]:
    """The exact error frame of docs/protocol/conventions.md, "Errors"."""
    return {"type": "error", "code": code, "message": message}


async def assert_quiet(*clients: JsonSocket) -> None:
    """Assert that nothing is queued for ``clients``: the next frame of each is our pong.

    Two round trips each: a timer that fell due before the first ping may fire just after it
    (the service runs due timers after each batch of requests), so its frame would come after
    the first pong but always before the second one.
    """
    for client in clients:
        for _ in range(2):
            await client.send({"type": "ping"})
            assert await client.receive() == {"type": "pong"}


async def expect(client: JsonSocket, frame: dict[str, Any]) -> None:
    """The next frame of ``client`` is exactly ``frame``."""
    assert await client.receive() == frame


@asynccontextmanager
async def registered(url: str, *codes: str) -> AsyncIterator[list[SignalClient]]:
    """One connection per code, each registered with a fresh public key."""
    async with AsyncExitStack() as stack:
        clients = []
        for code in codes:
            client = await stack.enter_async_context(connect_signal(url))
            await client.register(code, generate_public_key())
            clients.append(client)
        yield clients


@asynccontextmanager
async def open_socket(
    url: str,
    path: str = "/signal",
    *,
    message_queue_size: int = 1,
    client_class: type[JsonSocket] = SignalClient,
) -> AsyncIterator[Any]:
    """A ``/signal`` connection over a TCP stream that this helper owns and always closes.

    For tests in which the server closes the connection: trio-websocket's own
    ``open_websocket_url`` leaves the client's socket open when the server closes first.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream, trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, parts.netloc, path, message_queue_size=message_queue_size
        )
        try:
            yield client_class(ws)
        finally:
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                await ws.aclose()
            nursery.cancel_scope.cancel()


async def read_until_closed(client: JsonSocket) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame the server still sends, and the close code it ends with."""
    frames = []
    while True:
        try:
            frames.append(await client.receive())
        except trio_websocket.ConnectionClosed as closed:
            return frames, None if closed.reason is None else closed.reason.code


async def refused_handshake(url: str, path: str) -> trio_websocket.ConnectionRejected:
    """Attempt a WebSocket handshake on ``path`` that the server must refuse; the refusal."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    refusal = None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(nursery, stream, parts.netloc, path)
                await ws.aclose()
                nursery.cancel_scope.cancel()
        except* trio_websocket.ConnectionRejected as group:
            refusal = group.exceptions[0]
    assert isinstance(refusal, trio_websocket.ConnectionRejected), f"{path} was accepted"
    return refusal
