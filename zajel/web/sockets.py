"""The connection machinery every WebSocket endpoint shares, as a thin ASGI layer.

The WebSocket paths are served by ``SocketRouter``, an ASGI middleware in front of the Quart
app: it speaks the ASGI WebSocket messages directly, which spares every frame a task hop and
the per-frame signal dispatch of Quart's WebSocket wrapper (the relay path is the server's
hottest; see ``docs/architecture.md``). Everything else goes to Quart.

One connection = one handler task with two children: the reader rate-limits and decodes frames
and casts them to the endpoint's service (``HandOver``; on ``zajel serve``'s own transport the
transport's poller does this for reads with nothing to wait for); the writer drains the
connection's ``Outbox`` to the socket. After the handshake both drive the connection through a
``Link``: ``zajel serve``'s own transport offers one (``zajel.web.fastws``); under hypercorn's
stack ``AsgiLink`` wraps the ASGI messages. An endpoint may have a second service for some of
its messages (the ChunkIndex takes the channel and chunk messages of both endpoints): those
frames carry the ``Identity`` the endpoint's own service gave the connection, and before the
reader switches from one service to the other it waits until the frames it handed over are
handled, so each service sees the connection's frames in order and every frame sees the
identity its predecessors made (docs/architecture.md, "Identity").

The service never waits on the socket: answers to the client's own frames always go in
(the reader waits instead while the queue is full), and a push the outbox refuses makes the
client a slow consumer, closed with 1013 (``zajel.web.outbox``; docs/protocol/conventions.md,
"Back-pressure").

Keep-alive and the message size limit are the transport's (``zajel.web.fastws``, or hypercorn's
ping loop and read timeout). Under ``zajel serve`` the TCP connection is also a
``zajel.web.transport.Connection``, which bounds every close.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from zajel.config import Config
from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.frames import Invalid, encode
from zajel.protocol.limits import SlidingWindow, TokenBucket
from zajel.services import Address, _mailbox
from zajel.services._peers import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    Attach,
    ConnId,
    Detach,
    Identity,
    Inbound,
)
from zajel.services._runtime import ClusterView
from zajel.web.headers import SECURITY_HEADERS
from zajel.web.limits import ConnectionCaps, client_ip, ip_key
from zajel.web.outbox import DirectWrite, Outbox
from zajel.web.transport import Connection, ConnectionTable, GuardedStream, frame_text

if TYPE_CHECKING:
    from zajel.metrics import EndpointMetrics, Metrics

log = logging.getLogger("zajel.web")

# A flood that goes on past the rate limit is closed with 1008: more than FLOOD_REFUSALS refused
# frames within FLOOD_WINDOW_S seconds (docs/protocol/conventions.md, "Close codes").
FLOOD_REFUSALS = 50
FLOOD_WINDOW_S = 10.0
# How long a closing connection gets to take what was queued before the close, the close frame,
# and to answer it, before its socket is dropped.
CLOSE_TIMEOUT_S = 5.0

# A frame refused because its service's inbox stayed full (docs/operations.md, "Limits and
# back-pressure"); at most one log line per BUSY_LOG_INTERVAL_S says how many were refused.
BUSY_FRAME: Final = encode(errors.busy().to_frame())
BUSY_LOG_INTERVAL_S: Final = 10.0

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


def start_conn_ids(first: int) -> None:
    """Number this process's connections from ``first`` on: in a cluster every node numbers
    from its own range, so a connection id names one connection in the whole cluster."""
    global _conn_ids
    _conn_ids = itertools.count(first)


# The ASGI scope extension under which a WebSocket transport offers its connection as a
# ``Link`` (``zajel.web.fastws``); under any other server the ASGI messages are the link.
LINK_EXTENSION = "zajel.link"


class Link(Protocol):
    """One accepted WebSocket, as the connection machinery drives it."""

    # Called when the client's application went quiet though its socket answers pings (a
    # transport that watches for that; docs/operations.md, "Keep-alive").
    on_silent: Callable[[], None]
    # A write that never waits, for the outbox's direct writes (None: only ``write``).
    write_now: DirectWrite | None
    # What to do with the messages of a read (set by the front end): a transport that reads
    # outside the connection's task calls its ``take`` itself (None: not set yet).
    hand_over: HandOver | None

    def frame(self, text: str) -> Any:
        """What the outbox holds for a frame of ``text`` (``write`` takes a list of them)."""

    async def receive_messages(self) -> list[str | bytes]:
        """The next complete messages, in order; ``[]`` once the connection is closed."""

    async def write(self, frames: Sequence[Any]) -> None:
        """Write ``frames`` in order. Raises ``trio.BrokenResourceError`` or
        ``trio.ClosedResourceError`` when the connection is gone."""

    async def close(self, code: int) -> None:
        """Send a close frame with ``code``."""

    async def drain(self) -> None:
        """Take (and discard) what the client sends until its side is closed."""

    def close_code(self) -> int | None:
        """The close code the connection ended with, as far as the transport knows (``None``:
        no close frame)."""


class AsgiLink:
    """A ``Link`` over ASGI ``receive``/``send`` (hypercorn's WebSocket stack). Under
    ``zajel serve`` (``stream`` given), data frames skip ASGI: every frame queued when the
    writer wakes goes to the socket in one write."""

    def __init__(self, receive: ASGIReceive, send: ASGISend, stream: GuardedStream | None) -> None:
        self._receive = receive
        self._send = send
        self._stream = stream
        self.on_silent: Callable[[], None] = _nothing
        self.write_now: DirectWrite | None = None
        self.hand_over: HandOver | None = None  # hypercorn reads in its own task: unused
        self._close_code: int | None = None

    def frame(self, text: str) -> Any:
        return text if self._stream is None else frame_text(text)

    async def receive_messages(self) -> list[str | bytes]:
        event = await self._receive()
        if event["type"] != "websocket.receive":
            self._close_code = event.get("code")
            return []  # websocket.disconnect: the client or the transport closed
        data = event.get("text")
        return [data if data is not None else event.get("bytes") or b""]

    async def write(self, frames: Sequence[Any]) -> None:
        if self._stream is not None:
            await self._stream.write_frames(frames)
            return
        for text in frames:
            await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int) -> None:
        await self._send({"type": "websocket.close", "code": code})

    async def drain(self) -> None:
        # hypercorn hands over the next frame only once this one is taken: until the client's
        # side is closed, keep taking (and discarding) what it still sends.
        while (event := await self._receive())["type"] != "websocket.disconnect":
            pass
        self._close_code = event.get("code")

    def close_code(self) -> int | None:
        return self._close_code


def _nothing() -> None:
    pass


class SocketPeer:
    """The service-side handle of one connection: its outgoing queue and a way to close it."""

    def __init__(
        self,
        conn_id: ConnId,
        config: Config,
        frame: Callable[[str], Any] = str,
        direct: DirectWrite | None = None,
        metrics: EndpointMetrics | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.metrics = metrics
        # What the outbox holds for a frame's text: the text itself, or its bytes on the wire
        # where the writer writes to the socket itself (framed once for many, ``frame_text``).
        self.frame = frame
        self.outbox = Outbox(
            config.ws_outbound_queue,
            config.ws_outbound_bytes,
            config.ws_slow_consumer_ms / 1000,
            direct,
        )
        self.close_code: int | None = None
        self.scope = trio.CancelScope()
        self.identity: Identity | None = None

    def send_nowait(self, frame: str) -> bool:
        """Queue a frame pushed by others; False when this client is a slow consumer."""
        metrics, outbox = self.metrics, self.outbox
        if metrics is None:
            return outbox.push(self.frame(frame))
        if outbox.push(self.frame(frame)):
            if not outbox.closed:  # a closed queue takes nothing
                metrics.sent(frame)
            return True
        if self.close_code is None:  # counted once, however many services find it slow
            metrics.slow_consumer()
        return False

    def answer_nowait(self, frame: str) -> None:
        """Queue an answer to this client's own frame; never refused."""
        self.outbox.answer(self.frame(frame))
        if self.metrics is not None and not self.outbox.closed:
            self.metrics.sent(frame)

    def handled(self) -> None:
        self.outbox.handled()

    def identify(self, identity: Identity) -> None:
        self.identity = identity

    def close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        if code == CLOSE_TRY_AGAIN_LATER:
            # A slow consumer: what is queued would never be read; release it now.
            self.outbox.clear()
        self.outbox.close()
        self.scope.cancel()


@attrs.frozen
class Endpoint:
    """A WebSocket endpoint: the paths it serves, how frames decode, which service gets them.

    Decoded messages of the ``side_types`` go to ``side`` with the connection's identity;
    every other frame (invalid ones included) goes to ``service``, which owns the
    registrations of the endpoint.
    """

    name: str
    path: str
    decode: Callable[[str | bytes], Any]
    service: Address
    side: Address | None = None
    side_types: tuple[type, ...] = ()
    # Its counters (``zajel.metrics``), if counted.
    metrics: EndpointMetrics | None = None

    @property
    def services(self) -> tuple[Address, ...]:
        return (self.service,) if self.side is None else (self.service, self.side)

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
        connections: ConnectionTable | None = None,
        cluster: ClusterView | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.cluster = cluster
        self.endpoints = tuple(endpoints)
        self.config = config
        self.caps = caps
        self.shutdown = shutdown
        # The TCP connections of ``zajel serve`` (None under another ASGI server).
        self.connections = connections

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.app(scope, receive, _shield_last_body(send))
            return
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        for endpoint in self.endpoints:
            if endpoint.matches(scope["path"]):
                await self._serve(endpoint, scope, receive, send)
                return
        # docs/protocol/conventions.md, "Frames": a handshake on an unknown path is refused with
        # HTTP 404.
        if (await receive())["type"] == "websocket.connect":
            self._refused("unknown_path")
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
            self._refused("shutting_down")
            await _reject(scope, send, 503, {"error": "Server shutting down"})
            return
        if self.cluster is not None and not self.cluster.available:
            # docs/cluster.md, "What clients see": Redis is unreachable.
            log.warning(
                "connection refused: cluster unavailable", extra=context(endpoint=endpoint.name)
            )
            self._refused("cluster_unavailable")
            await _reject(scope, send, 503, {"error": "Cluster unavailable"})
            return
        if not self.caps.try_acquire(ip):
            log.warning("connection refused: cap reached", extra=context(endpoint=endpoint.name))
            self._refused("ws_connection_cap")
            await _reject(scope, send, 503, {"error": "Too many connections"})
            return
        conn = None
        if self.connections is not None:
            conn = self.connections.find(scope.get("client"))
            if conn is not None:
                self.connections.mark_websocket(conn)
        offered = scope.get("extensions", {}).get(LINK_EXTENSION)
        link: Link = (
            offered["link"]
            if offered is not None
            else AsgiLink(receive, send, conn.stream if conn is not None else None)
        )
        gauge = endpoint.metrics.connections if endpoint.metrics is not None else None
        if gauge is not None:
            gauge.inc()
        try:
            await send({"type": "websocket.accept"})
            await serve_connection(link, endpoint, self.config, self.shutdown, ip, conn)
        finally:
            self.caps.release(ip)
            if gauge is not None:
                gauge.dec()

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refused(reason)


def _shield_last_body(send: ASGISend) -> ASGISend:
    """``send`` with the response's last body message shielded from cancellation.

    Quart-trio cancels a request's tasks as soon as hypercorn reports the request done, and
    hypercorn reports it from inside that very send, before it has closed the connection or
    started the keep-alive timer; cancelled there, the connection would sit open until the
    read timeout. Under ``zajel serve`` the send cannot hang: a stalled write drops the socket
    (``zajel.web.transport``); under a plain hypercorn, hypercorn's own write is shielded the
    same way (docs/operations.md, "Under another ASGI server").
    """

    async def send_last_shielded(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)

    return send_last_shielded


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
    link: Link,
    endpoint: Endpoint,
    config: Config,
    shutdown: trio.Event,
    ip: str,
    conn: Connection | None = None,
) -> None:
    """Run one accepted connection until it closes, then run its cleanup exactly once.

    A close the server chooses (flood 1008, shutdown 1001) first sends what was queued, then
    the close frame, then keeps receiving and discarding until the client's side is closed,
    all within ``CLOSE_TIMEOUT_S``; past it, or at once for a slow consumer (1013), the socket
    is dropped. ``conn`` is the TCP connection under ``zajel serve``; under another ASGI
    server it is ``None`` and these bounds are that server's (docs/operations.md).
    """
    peer = SocketPeer(next(_conn_ids), config, link.frame, link.write_now, endpoint.metrics)
    link.on_silent = functools.partial(peer.close, CLOSE_GOING_AWAY)
    for service in endpoint.services:
        await service.cast(Attach(peer.conn_id, peer, ip))
    log.debug("connected", extra=context(endpoint=endpoint.name, conn=peer.conn_id))
    try:
        with peer.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write, link, peer)
                nursery.start_soon(_close_on_shutdown, peer, shutdown)
                await _read(link, peer, endpoint, config)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            peer.outbox.close()
            # The service may already be gone when the whole server is being torn down.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for service in endpoint.services:
                    await service.cast(Detach(peer.conn_id))
            if peer.close_code is not None:
                await _close(link, peer, conn)
        if endpoint.metrics is not None:
            code = peer.close_code
            endpoint.metrics.closed(code if code is not None else link.close_code())
        log.debug(
            "disconnected",
            extra=context(endpoint=endpoint.name, conn=peer.conn_id, code=peer.close_code),
        )


async def _close(link: Link, peer: SocketPeer, conn: Connection | None) -> None:
    """Close with ``peer.close_code`` (see ``serve_connection``)."""
    assert peer.close_code is not None
    if peer.close_code == CLOSE_TRY_AGAIN_LATER:
        # A slow consumer: its socket is full, so neither the queue nor a close frame could
        # go out; the socket is released now (docs/protocol/conventions.md, "Close codes").
        if conn is not None:
            conn.drop()
            return
    elif conn is not None:
        conn.drop_after(CLOSE_TIMEOUT_S)
    deadline = trio.current_time() + CLOSE_TIMEOUT_S
    if conn is not None:
        deadline = min(deadline, conn.drop_at)  # already dropped (shutdown's end): nothing to do
    with trio.move_on_at(deadline) as goodbye:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            frames = []
            while (frame := peer.outbox.take()) is not None:
                frames.append(frame)
            if frames:
                await link.write(frames)
            await link.close(peer.close_code)
            await link.drain()
    if goodbye.cancelled_caught and conn is not None:
        conn.drop()


class HandOver:
    """What the reader does with each message it read, in order: the token bucket and the
    flood close, decoding, and the cast to the endpoint's service (docs/operations.md,
    "Limits and back-pressure").

    ``take`` never waits, so a transport can run it outside the connection's task, where the
    read was made (``zajel.web.fastws``); whatever has to wait (the queue over its bound, the
    other service still handling earlier frames, a full inbox) is left to ``resume``, which
    only the connection's task calls. A full inbox is waited for at most
    ``_mailbox.BUSY_WAIT_S``: then the frame is dropped and its sender gets the ``busy`` error.
    """

    def __init__(self, peer: SocketPeer, endpoint: Endpoint, config: Config) -> None:
        self.peer = peer
        self.outbox = peer.outbox
        self.bucket = TokenBucket(config.ws_message_rate, config.ws_message_burst)
        self.refusals = SlidingWindow(FLOOD_REFUSALS, FLOOD_WINDOW_S)
        self.decode = endpoint.decode
        self.main = endpoint.service
        self.side = endpoint.side
        self.side_types = endpoint.side_types
        self.last = endpoint.service  # the service the last frame went to
        # A message decoded but not handed over yet: its service, the message, and its
        # ``Inbound`` once built (then only the cast is left).
        self.held: tuple[Address, Any, Inbound | None] | None = None
        self.flooded = False
        counters = endpoint.metrics
        self.received = counters.received if counters is not None else None
        self.rate_limited = counters.rate_limited if counters is not None else None

    def take(self, messages: Sequence[str | bytes], index: int, now: float) -> int:
        """Hand over ``messages[index:]`` in order until one has to wait; the index of the
        first not taken (``len(messages)`` when every one was). ``held`` is then set, or the
        queue is over its bound. -1: a flood, and the connection is being closed (1008)."""
        if self.flooded:
            return -1
        outbox, peer = self.outbox, self.peer
        count = len(messages)
        while index < count:
            if self.held is not None or (outbox.reader_must_wait() and not outbox.closed):
                # Answers are never refused; instead this client's frames wait (and, the
                # connection no longer being read, TCP slows the client down). A closed
                # queue waits for nothing: the connection is ending.
                return index
            data = messages[index]
            index += 1
            if self.bucket.take(now):
                message = self.decode(data)
                if self.received is not None:
                    self.received(message)
            elif self.refusals.allow(now):
                message = Invalid(errors.rate_limited())
                if self.rate_limited is not None:
                    self.rate_limited.inc()
            else:
                log.warning("flood: connection closed", extra=context(conn=peer.conn_id))
                self.flooded = True
                peer.close(CLOSE_POLICY_VIOLATION)
                return -1
            side = self.side
            service = (
                side if side is not None and isinstance(message, self.side_types) else self.main
            )
            if service is not self.last:
                # The other service may still be handling frames that come before this one (a
                # register whose identity this frame needs): they finish first (``resume``).
                self.held = (service, message, None)
                return index
            inbound = self._inbound(service, message)
            outbox.handing_over()
            try:
                service.cast_nowait(inbound)  # no scheduler round trip when the inbox has room
            except trio.WouldBlock:
                self.held = (service, message, inbound)
                return index
        return count

    async def resume(self) -> None:
        """Wait for what ``take`` stopped at, and hand over the message it held, if any."""
        if self.held is None:
            await self.outbox.wait_until_readable()
            return
        service, message, inbound = self.held
        if inbound is None:
            self.last = service
            await self.outbox.wait_until_settled()
            inbound = self._inbound(service, message)
            self.outbox.handing_over()
        self.held = None
        with trio.move_on_after(_mailbox.BUSY_WAIT_S) as waited:
            await service.cast(inbound)
        if waited.cancelled_caught:
            # The service cannot keep up: shed this frame rather than queue without bound or
            # hold the connection for ever. Nothing of it was done; the client may resend.
            self.peer.answer_nowait(BUSY_FRAME)
            self.outbox.handled()
            _busy_log.refused(trio.current_time())

    def _inbound(self, service: Address, message: Any) -> Inbound:
        """``message`` as ``service`` gets it: the side service also gets the connection's
        identity, as it is when the message is handed over."""
        peer = self.peer
        return Inbound(peer.conn_id, message, peer.identity if service is self.side else None)


class _BusyLog:
    """Refused frames, logged at most once per ``BUSY_LOG_INTERVAL_S`` with their count."""

    def __init__(self) -> None:
        self.count = 0
        self.logged_at = -BUSY_LOG_INTERVAL_S

    def refused(self, now: float) -> None:
        self.count += 1
        if not 0 <= now - self.logged_at < BUSY_LOG_INTERVAL_S:
            log.warning("service busy: frames refused", extra=context(refused=self.count))
            self.count = 0
            self.logged_at = now


_busy_log = _BusyLog()


async def _read(link: Link, peer: SocketPeer, endpoint: Endpoint, config: Config) -> None:
    hand_over = HandOver(peer, endpoint, config)
    # A transport that reads outside this task hands what it reads over itself, and leaves
    # this task what has to wait.
    link.hand_over = hand_over
    while messages := await link.receive_messages():
        index = hand_over.take(messages, 0, trio.current_time())  # they arrived together
        while index >= 0 and (index < len(messages) or hand_over.held is not None):
            await hand_over.resume()
            index = hand_over.take(messages, index, trio.current_time())
        if index < 0:
            return  # a flood: the connection is being closed


async def _write(link: Link, peer: SocketPeer) -> None:
    """Drain the outbox to the client: every frame queued when the writer wakes goes out in
    one write (up to ``WRITE_BATCH_BYTES``)."""
    outbox = peer.outbox
    while (frame := await outbox.next_frame()) is not None:
        try:
            await link.write(outbox.take_batch([frame]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the socket is gone: the reader's next read ends the connection
        outbox.wrote()


async def _close_on_shutdown(peer: SocketPeer, shutdown: trio.Event) -> None:
    await shutdown.wait()
    peer.close(CLOSE_GOING_AWAY)
