"""The connection machinery every WebSocket endpoint shares, as a thin ASGI layer.

The WebSocket paths are served by ``SocketRouter``, an ASGI middleware in front of the Quart
app: it speaks the ASGI WebSocket messages directly, which spares every frame a task hop and
the per-frame signal dispatch of Quart's WebSocket wrapper (the relay path is the server's
hottest; see ``docs/architecture.md``). Everything else goes to Quart.

One connection = one handler task with two children: the reader rate-limits and decodes frames
and casts them to the endpoint's service; the writer drains the connection's bounded outgoing
queue to the socket. The service never waits on the socket: it queues with ``send_nowait`` and
closes the connection (1013) when the queue is full.

Keep-alive is the transport's: hypercorn pings every ``ws_ping_interval`` and drops a
connection that sent nothing, not even a pong, for ``ws_idle_timeout`` (its read timeout).
Frames over ``ws_max_message_bytes`` are refused by hypercorn with close code 1009.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

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
from zajel.web.headers import SECURITY_HEADERS
from zajel.web.limits import ConnectionCaps, client_ip, ip_key

log = logging.getLogger("zajel.web")

# A flood that goes on past the rate limit is closed with 1008 (conventions.md, Limits): more
# than FLOOD_REFUSALS refused frames within FLOOD_WINDOW_S seconds.
FLOOD_REFUSALS = 50
FLOOD_WINDOW_S = 10.0
# How long a close frame may take to go out before the handler gives up on the socket.
CLOSE_TIMEOUT_S = 5.0

# ASGI callables, kept loose: hypercorn's precise event unions add nothing at this layer.
ASGIReceive = Callable[[], Awaitable[Any]]
ASGISend = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

# Refused handshakes are HTTP responses too: they carry the same security headers.
REJECTION_HEADERS = [
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in SECURITY_HEADERS.items()
]

_conn_ids = itertools.count(1)


class SocketPeer:
    """The service-side handle of one connection: its bounded queue and a way to close it."""

    def __init__(self, conn_id: ConnId, queue_size: int) -> None:
        self.conn_id = conn_id
        self.outbox, self.outbox_receive = trio.open_memory_channel[str](queue_size)
        self.close_code: int | None = None
        self.scope = trio.CancelScope()

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
        self.scope.cancel()


@attrs.frozen
class Endpoint:
    """A WebSocket endpoint: the paths it serves, how frames decode, which service gets them."""

    name: str
    path: str
    decode: Callable[[str | bytes], Any]
    service: Address

    def matches(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path + "/")


class SocketRouter:
    """ASGI middleware: WebSocket handshakes on an endpoint's paths are served here."""

    def __init__(
        self,
        app: ASGIApp,
        endpoints: Sequence[Endpoint],
        *,
        config: Config,
        caps: ConnectionCaps,
        shutdown: trio.Event,
    ) -> None:
        self.app = app
        self.endpoints = tuple(endpoints)
        self.config = config
        self.caps = caps
        self.shutdown = shutdown

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        for endpoint in self.endpoints:
            if endpoint.matches(scope["path"]):
                await self._serve(endpoint, scope, receive, send)
                return
        # conventions.md: a handshake on an unknown path is refused with HTTP 404.
        if (await receive())["type"] == "websocket.connect":
            await _reject(scope, send, 404, {"error": "Not Found"})

    async def _serve(
        self, endpoint: Endpoint, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        ]
        peer_address = (scope.get("client") or ("unknown",))[0]
        ip = ip_key(
            client_ip(peer_address, headers, self.config.trust_proxy, self.config.trusted_proxies)
        )
        if self.shutdown.is_set():
            await _reject(scope, send, 503, {"error": "Server shutting down"})
            return
        if not self.caps.try_acquire(ip):
            log.warning("connection refused: cap reached", extra=context(endpoint=endpoint.name))
            await _reject(scope, send, 503, {"error": "Too many connections"})
            return
        try:
            await send({"type": "websocket.accept"})
            await serve_connection(receive, send, endpoint, self.config, self.shutdown, ip)
        finally:
            self.caps.release(ip)


async def _reject(scope: dict[str, Any], send: ASGISend, status: int, body: Any) -> None:
    """Refuse a handshake with an HTTP response (or a bare close where unsupported)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1013})
        return
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *REJECTION_HEADERS,
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": payload})


async def serve_connection(
    receive: ASGIReceive,
    send: ASGISend,
    endpoint: Endpoint,
    config: Config,
    shutdown: trio.Event,
    ip: str,
) -> None:
    """Run one accepted connection until it closes, then run its cleanup exactly once."""
    peer = SocketPeer(next(_conn_ids), config.ws_outbound_queue)
    await endpoint.service.cast(Attach(peer.conn_id, peer, ip))
    log.debug("connected", extra=context(endpoint=endpoint.name, conn=peer.conn_id))
    try:
        with peer.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write, send, peer)
                nursery.start_soon(_close_on_shutdown, peer, shutdown)
                await _read(receive, peer, endpoint, config)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            peer.outbox.close()
            # The service may already be gone when the whole server is being torn down.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await endpoint.service.cast(Detach(peer.conn_id))
            if peer.close_code is not None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await send({"type": "websocket.close", "code": peer.close_code})
        log.debug(
            "disconnected",
            extra=context(endpoint=endpoint.name, conn=peer.conn_id, code=peer.close_code),
        )


async def _read(receive: ASGIReceive, peer: SocketPeer, endpoint: Endpoint, config: Config) -> None:
    bucket = TokenBucket(config.ws_message_rate, config.ws_message_burst)
    refusals = SlidingWindow(FLOOD_REFUSALS, FLOOD_WINDOW_S)
    decode, service, conn_id = endpoint.decode, endpoint.service, peer.conn_id
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            return  # websocket.disconnect: the client or the transport closed
        data = event.get("text")
        if data is None:
            data = event.get("bytes") or b""
        now = trio.current_time()
        if bucket.take(now):
            message = decode(data)
        elif refusals.allow(now):
            message = Invalid(errors.rate_limited())
        else:
            log.warning("flood: connection closed", extra=context(conn=conn_id))
            peer.close(CLOSE_POLICY_VIOLATION)
            return
        inbound = Inbound(conn_id, message)
        try:
            service.cast_nowait(inbound)  # no scheduler round trip when the inbox has room
        except trio.WouldBlock:
            await service.cast(inbound)


async def _write(send: ASGISend, peer: SocketPeer) -> None:
    outbox = peer.outbox_receive
    async with outbox:
        while True:
            try:
                frame = await outbox.receive()
            except trio.EndOfChannel:
                return
            await send({"type": "websocket.send", "text": frame})
            # Drain what is queued without a scheduler round trip per frame.
            while True:
                try:
                    frame = outbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await send({"type": "websocket.send", "text": frame})


async def _close_on_shutdown(peer: SocketPeer, shutdown: trio.Event) -> None:
    await shutdown.wait()
    peer.close(CLOSE_GOING_AWAY)
