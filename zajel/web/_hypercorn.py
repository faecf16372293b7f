"""Every internal of hypercorn that ``zajel serve`` uses, in one place.

hypercorn has no public API to serve a connection that was accepted elsewhere: its public entry
points (``hypercorn.trio.serve``, the ``hypercorn`` command) open their own listeners and accept
themselves, and take nothing but listening sockets. ``zajel serve`` accepts connections itself
(``zajel.web.transport``: per-IP caps, stall deadlines, our own WebSocket transport) and hands
each one to the per-connection server of hypercorn's trio worker. What it uses beyond the public
``hypercorn.config.Config``, and why:

- ``hypercorn.trio.tcp_server.TCPServer(app, config, context, state, stream)``, awaited: serves
  HTTP/1.1 and WebSockets on one connection's ``stream`` until the connection ends. A stream
  without ``do_handshake`` is plain TCP to it; it reads ``stream.socket`` for the peer and local
  addresses, and closes the stream with ``send_eof`` and ``aclose`` when done.
- ``hypercorn.trio.worker_context.WorkerContext(max_requests)``: what a worker's connections
  share. Setting its ``terminated`` event (an async ``set``) makes idle keep-alive connections
  close: the start of a shutdown.
- ``hypercorn.trio.lifespan.Lifespan(app, config, state)``: the ASGI lifespan as hypercorn's
  worker runs it (``handle_lifespan``, ``wait_for_startup``, ``wait_for_shutdown``), with
  ``state`` the lifespan state that every request's scope gets a copy of.
- ``hypercorn.utils.wrap_app(app, wsgi_max_body_size, mode)``: the ASGI app in the calling
  convention of the three above.
- ``hypercorn.protocol.ws_stream.WSStream``, subclassed (``ReportingWSStream``): its ``_accept``
  coroutine, after which its ``connection`` attribute holds the wsproto connection; and the name
  ``WSStream`` in ``hypercorn.protocol.h11``, which the HTTP/1.1 protocol instantiates for an
  upgrade and ``install_close_codes`` rebinds to the subclass (process-wide, idempotent).

Tested with hypercorn 0.18.0; pyproject.toml pins ``>=0.18,<0.19``. 0.17 has the same names
and signatures, but its ``TCPServer`` copies the lifespan state per connection where 0.18
copies it per request, and its lifespan handles cancellation differently: it is not in the
tested range. ``tests/web/test_hypercorn_glue.py`` checks that each internal exists with the
signature used here, and that a connection handed over serves an HTTP request and a WebSocket
on hypercorn's own stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import hypercorn.protocol.h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Event

# The reason sent with the close frame that answers a frame wsproto refused.
CLOSE_REASONS = {1002: "Protocol error", 1007: "Invalid UTF-8 in a text frame", 1009: "Too big"}


class HypercornWorker:
    """hypercorn's per-worker state for connections accepted by our own loop: the app in
    hypercorn's calling convention, the worker context and the lifespan state."""

    def __init__(self, app: Any, config: HypercornConfig) -> None:
        self.config = config
        self.app = wrap_app(app, config.wsgi_max_body_size, "asgi")
        self.context = WorkerContext(None)  # no max_requests: the worker never restarts
        self.state: dict[str, Any] = {}

    async def serve(self, stream: trio.abc.HalfCloseableStream) -> None:
        """Serve one accepted connection (plain TCP: ``stream`` has a ``socket`` attribute
        and no ``do_handshake``) until it ends."""
        await TCPServer(self.app, self.config, self.context, self.state, stream)  # type: ignore[arg-type]

    async def close_idle(self) -> None:
        """The shutdown has started: idle keep-alive connections close, and connections that
        become idle close too."""
        await self.context.terminated.set()


@asynccontextmanager
async def open_worker(app: Any, config: HypercornConfig) -> AsyncIterator[HypercornWorker]:
    """A ``HypercornWorker`` for ``app`` with its ASGI lifespan run as hypercorn runs it:
    startup completes before this yields, shutdown completes when the block ends.

    Raises:
        hypercorn.utils.LifespanFailureError: the app reported a failed startup or shutdown.
        hypercorn.utils.LifespanTimeoutError: it did not answer within hypercorn's timeout.
    """
    worker = HypercornWorker(app, config)
    lifespan = Lifespan(worker.app, config, worker.state)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        yield worker
        await lifespan.wait_for_shutdown()
        nursery.cancel_scope.cancel()


class _FailuresAnswered:
    """A wsproto connection that reports a failure it found in the client's data (a
    ``CloseConnection`` it yields while still open) as the client closing, so that hypercorn
    answers it with a close frame carrying the failure's code instead of just hanging up."""

    def __init__(self, connection: WSConnection) -> None:
        self._connection = connection
        self._failed = False
        # The code of the close frame the client sent, which hypercorn does not pass on.
        self.client_code: int | None = None

    @property
    def state(self) -> ConnectionState:
        state = self._connection.state
        if self._failed and state is ConnectionState.OPEN:
            return ConnectionState.REMOTE_CLOSING
        return state

    def send(self, event: Event) -> bytes:
        return self._connection.send(event)

    def receive_data(self, data: bytes | None) -> None:
        self._connection.receive_data(data)

    def events(self) -> Iterator[Event]:
        for event in self._connection.events():
            if (
                isinstance(event, CloseConnection)
                and self._connection.state is ConnectionState.OPEN
            ):
                self._failed = True
                event = CloseConnection(code=event.code, reason=CLOSE_REASONS.get(event.code, ""))
            elif isinstance(event, CloseConnection) and self.client_code is None:
                self.client_code = event.code
            yield event


class ReportingWSStream(WSStream):
    """hypercorn's WebSocket stream, with the client's bad frames answered with a close code
    (invalid UTF-8 in a text frame: 1007; a protocol error: 1002) where hypercorn itself drops
    the TCP connection without a close frame; and a close the client started reported to the
    app with the client's code, where hypercorn reports 1006 (the close metrics count it)."""

    async def _accept(self, message: Any) -> None:
        await super()._accept(message)
        self.connection = _FailuresAnswered(self.connection)  # type: ignore[assignment]

    async def handle(self, event: StreamEvent) -> None:
        # ``connection`` exists only once the handshake has begun.
        connection = getattr(self, "connection", None) if isinstance(event, StreamClosed) else None
        if (
            isinstance(connection, _FailuresAnswered)
            and connection.client_code is not None
            and self.state == ASGIWebsocketState.CONNECTED
            and self.app_put is not None
        ):
            self.closed = True
            await self.app_put({"type": "websocket.disconnect", "code": connection.client_code})
            return
        await super().handle(event)


def install_close_codes() -> None:
    """Make hypercorn's HTTP/1.1 protocol use ``ReportingWSStream``. ``zajel serve`` installs
    it; under the ``hypercorn`` command (``zajel.asgi``) a refused frame just ends the
    connection, as hypercorn does."""
    hypercorn.protocol.h11.WSStream = ReportingWSStream  # type: ignore[attr-defined]
