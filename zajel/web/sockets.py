"""The connection machinery every WebSocket endpoint shares.

One connection = one handler task with two children: a reader that rate-limits and decodes
frames and casts them to the endpoint's service, and a writer that drains the connection's
bounded outgoing queue to the socket. The service never waits on the socket: it queues with
``send_nowait`` and closes the connection (1013) when the queue is full.

Keep-alive is the transport's: hypercorn pings every ``ws_ping_interval`` and drops a
connection that sent nothing, not even a pong, for ``ws_idle_timeout`` (its read timeout).
Frames over ``ws_max_message_bytes`` are refused by hypercorn with close code 1009.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio
from quart import Websocket

from zajel.config import Config
from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.frames import Invalid
from zajel.protocol.limits import SlidingWindow, TokenBucket
from zajel.services import Address
from zajel.services._peers import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    Attach,
    ConnId,
    Detach,
    Inbound,
)

log = logging.getLogger("zajel.web")

# A flood that goes on past the rate limit is closed with 1008 (conventions.md, Limits): more
# than FLOOD_REFUSALS refused frames within FLOOD_WINDOW_S seconds.
FLOOD_REFUSALS = 50
FLOOD_WINDOW_S = 10.0
# How long a close frame may take to go out before the handler gives up on the socket.
CLOSE_TIMEOUT_S = 5.0

_conn_ids = itertools.count(1)


class SocketPeer:
    """The service-side handle of one connection: its bounded queue and a way to close it."""

    def __init__(self, conn_id: ConnId, queue_size: int) -> None:
        self.conn_id = conn_id
        self.outbox, self.outbox_receive = trio.open_memory_channel[str](queue_size)
        self.close_code: int | None = None
        self._scope: trio.CancelScope | None = None

    def send_nowait(self, frame: str) -> bool:
        try:
            self.outbox.send_nowait(frame)
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the connection is already closing; its Detach is on the way
        return True

    def close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        if self._scope is not None:
            self._scope.cancel()


@attrs.frozen
class Endpoint:
    """A WebSocket endpoint: how frames decode and which service gets them."""

    name: str
    decode: Callable[[str | bytes], Any]
    service: Address


async def serve_connection(
    websocket: Websocket, endpoint: Endpoint, config: Config, shutdown: trio.Event
) -> None:
    """Run one accepted connection until it closes, then run its cleanup exactly once."""
    peer = SocketPeer(next(_conn_ids), config.ws_outbound_queue)
    await endpoint.service.cast(Attach(peer.conn_id, peer))
    log.debug("connected", extra=context(endpoint=endpoint.name, conn=peer.conn_id))
    try:
        async with trio.open_nursery() as nursery:
            peer._scope = nursery.cancel_scope
            nursery.start_soon(_write, websocket, peer)
            nursery.start_soon(_close_on_shutdown, peer, shutdown)
            await _read(websocket, peer, endpoint, config)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            peer.outbox.close()
            # The service may already be gone when the whole server is being torn down.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await endpoint.service.cast(Detach(peer.conn_id))
            if peer.close_code is not None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await websocket.close(peer.close_code)
        log.debug(
            "disconnected",
            extra=context(endpoint=endpoint.name, conn=peer.conn_id, code=peer.close_code),
        )


async def _read(websocket: Websocket, peer: SocketPeer, endpoint: Endpoint, config: Config) -> None:
    bucket = TokenBucket(config.ws_message_rate, config.ws_message_burst)
    refusals = SlidingWindow(FLOOD_REFUSALS, FLOOD_WINDOW_S)
    decode, service, conn_id = endpoint.decode, endpoint.service, peer.conn_id
    while True:
        data = await websocket.receive()
        now = trio.current_time()
        if bucket.take(now):
            message = decode(data)
        elif refusals.allow(now):
            message = Invalid(errors.rate_limited())
        else:
            log.warning("flood: connection closed", extra=context(conn=conn_id))
            peer.close(CLOSE_POLICY_VIOLATION)
            return
        await service.cast(Inbound(conn_id, message))


async def _write(websocket: Websocket, peer: SocketPeer) -> None:
    async with peer.outbox_receive:
        async for frame in peer.outbox_receive:
            await websocket.send(frame)


async def _close_on_shutdown(peer: SocketPeer, shutdown: trio.Event) -> None:
    await shutdown.wait()
    peer.close(CLOSE_GOING_AWAY)
