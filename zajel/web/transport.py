"""TCP for ``zajel serve``: our own accept loop in front of hypercorn's HTTP and WebSocket code.

hypercorn's trio worker accepts connections itself and gives the app no hold on them. Four
things a production server needs cannot be done from inside the ASGI app alone
(``docs/operations.md``, "Limits and back-pressure"; ``docs/architecture.md``, "Transport"):

- **Per-IP HTTP connection cap.** A connection is counted from accept to close, by the address
  of its peer (IPv6 by its /64), and one past ``http_max_connections_per_ip`` is answered 503
  and closed at once. A connection that becomes a WebSocket leaves the HTTP count (WebSockets
  have their own caps, by the client IP of the handshake). Trusted proxies are not capped.
- **Writes that cannot hang forever.** hypercorn writes inside a shielded cancel scope, so a
  client that stops reading can hold a task, and shutdown, forever. Every connection's stream
  is a ``GuardedStream``: a write that makes no progress for ``stall_timeout`` seconds, or a
  connection told to ``drop()``, closes the socket under the write, which ends it.
- **A finished connection ends its tasks.** When hypercorn closes a connection's stream, the
  connection's cancel scope is cancelled: hypercorn's WebSocket ping loop would otherwise live
  on for up to one ping interval per closed connection.
- **EMFILE on accept** is one rate-limited warning in the log format, and the loop backs off
  instead of spinning.
- **Close codes for bad frames.** When wsproto refuses a client's frame (invalid UTF-8 in a text
  frame: 1007; a protocol error: 1002), hypercorn drops the TCP connection without a close
  frame. ``zajel.web._hypercorn.ReportingWSStream`` answers with a close frame carrying
  wsproto's code first.

hypercorn has no public API for a connection accepted elsewhere: the internals used to hand it
one are all in ``zajel.web._hypercorn``, which says which and why, and the hypercorn versions
they were tested with.

Invariants:
- Every accepted socket belongs to exactly one ``Connection`` until it is closed, and is closed
  exactly once, whatever ends it (the client, hypercorn, a stall, a drop, shutdown).
- ``ConnectionTable`` holds exactly the open connections, and counts against each key's HTTP
  cap exactly those holding an ``http_slot``; an idle server holds no entries.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig

from zajel.config import Network
from zajel.logs import context
from zajel.web._hypercorn import HypercornWorker, install_close_codes, open_worker
from zajel.web.limits import ConnectionCaps, ip_key, is_trusted
from zajel.web.outbox import flusher

if TYPE_CHECKING:
    from zajel.metrics import Metrics

log = logging.getLogger("zajel.transport")

# Accept errors that mean "out of a resource": back off and try again (trio's own list).
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_S = 0.1
# At most one "cannot accept" warning per this many seconds; the next one says how many more.
ACCEPT_WARNING_EVERY_S = 10.0
# How often writes in progress are checked against their stall deadline.
STALL_CHECK_S = 0.5
# A refused connection gets this long to take its 503 before its socket is closed.
REFUSAL_TIMEOUT_S = 1.0
# A connection whose client has closed its side is dropped this long afterwards.
EOF_GRACE_S = 2.0

REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: 32\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b'{"error":"Too many connections"}'
)


class Connection:
    """One accepted TCP connection: its peer, how it is counted, and ways to end it."""

    def __init__(self, peer: tuple[str, int], key: str, http_slot: bool) -> None:
        self.peer = peer
        self.key = key
        # Counted against its key's HTTP cap: not from a trusted proxy, not yet a WebSocket.
        self.http_slot = http_slot
        self.scope = trio.CancelScope()
        self.stream: GuardedStream | None = None
        self.drop_at = math.inf  # ``drop()`` when trio's clock passes this
        # A WebSocket on our own transport pings and checks for silence here
        # (``zajel.web.fastws.FastWebSocket.keepalive``), called with ``check_deadlines``.
        self.keepalive: Callable[[float], None] | None = None

    def drop(self) -> None:
        """End the connection now: close its socket under any write in progress, and cancel
        hypercorn's tasks for it. The client sees the connection end."""
        self.drop_at = -math.inf
        if self.stream is not None:
            self.stream.close_socket()
        self.scope.cancel()

    def drop_after(self, seconds: float) -> None:
        """``drop()`` unless the connection has ended within ``seconds`` (a bounded goodbye:
        the close handshake and what is still queued)."""
        self.drop_at = min(self.drop_at, trio.current_time() + seconds)


class ConnectionTable:
    """The open TCP connections, the per-IP HTTP cap, and the stall and drop deadlines.

    Shared by the accept loop (which opens and closes entries) and the WebSocket front end
    (which finds a connection by its ASGI ``client`` address to move it out of the HTTP count
    or to drop it).
    """

    def __init__(
        self,
        max_http_per_ip: int,
        trusted_proxies: Sequence[Network] = (),
        *,
        stall_timeout: float = 120.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.trusted_proxies = tuple(trusted_proxies)
        self.metrics = metrics
        self.stall_timeout = stall_timeout
        self._by_peer: dict[tuple[str, int], Connection] = {}
        # HTTP connections per key: no cap in total (the WebSocket caps and the fd limit are).
        self._http = ConnectionCaps(sys.maxsize, max_http_per_ip)
        self._emptied = trio.lowlevel.ParkingLot()

    def open(self, peer: tuple[str, int]) -> Connection | None:
        """Count a new connection from ``peer``; ``None`` (nothing counted) when its key is at
        the HTTP cap."""
        key = ip_key(peer[0])
        capped = not is_trusted(peer[0], self.trusted_proxies)
        if capped and not self._http.try_acquire(key):
            if self.metrics is not None:
                self.metrics.refused("http_connection_cap")
            return None
        conn = Connection(peer, key, http_slot=capped)
        self._by_peer[peer] = conn
        return conn

    def close(self, conn: Connection) -> None:
        if self._by_peer.get(conn.peer) is conn:
            del self._by_peer[conn.peer]
        self._leave_http(conn)
        if not self._by_peer:
            self._emptied.unpark_all()

    async def wait_empty(self) -> None:
        """Return once no connection is open."""
        while self._by_peer:
            await self._emptied.park()

    def find(self, client: Sequence[Any] | None) -> Connection | None:
        """The connection of an ASGI ``scope["client"]`` (host, port), if it is ours."""
        if not client or len(client) < 2:
            return None
        return self._by_peer.get((str(client[0]), int(client[1])))

    def mark_websocket(self, conn: Connection) -> None:
        """``conn`` was upgraded to a WebSocket: it leaves the HTTP count."""
        self._leave_http(conn)

    def __len__(self) -> int:
        return len(self._by_peer)

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (all zero when no connection is open)."""
        return {"connections": len(self._by_peer), "http_keys": self._http.ips()}

    def drop_all(self) -> None:
        for conn in list(self._by_peer.values()):
            conn.drop()

    def check_deadlines(self, now: float) -> None:
        """Drop every connection whose write has stalled or whose drop time has come, and run
        the keep-alive of the others."""
        for conn in list(self._by_peer.values()):
            stream = conn.stream
            if conn.drop_at <= now:
                conn.drop()
            elif stream is not None and stream.write_started <= now - self.stall_timeout:
                log.info(
                    "write stalled: connection dropped",
                    extra=context(seconds=self.stall_timeout),
                )
                conn.drop()
            elif conn.keepalive is not None:
                conn.keepalive(now)

    def _leave_http(self, conn: Connection) -> None:
        """``conn`` stops counting against its key's HTTP cap (once)."""
        if conn.http_slot:
            self._http.release(conn.key)
            conn.http_slot = False


class GuardedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose writes are watched: ``write_started`` is the trio time of the
    write in progress (``inf`` when none), which ``ConnectionTable.check_deadlines`` compares
    with the stall timeout. Closing the stream ends the connection's tasks.

    hypercorn reads ``socket`` for the peer and local addresses; it has no ``do_handshake``, so
    hypercorn treats it as plain TCP.
    """

    def __init__(self, stream: trio.SocketStream, conn: Connection) -> None:
        self._stream = stream
        self._conn = conn
        self.socket = stream.socket
        self.write_started = math.inf
        # hypercorn (its own lock held) and the WebSocket writer (``write_frames``) both write
        # here: one write at a time, each whole.
        self._write_lock = trio.Lock()
        # hypercorn has written a WebSocket close frame: no data frame may follow it.
        self.close_sent = False
        # Bytes read to choose the transport, handed back to hypercorn first.
        self._unread = b""

    def unread(self, data: bytes) -> None:
        """Give ``data`` back: the next ``receive_some`` returns it first."""
        self._unread = data + self._unread

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data[:1] == CLOSE_FRAME_FIRST_BYTE:
            self.close_sent = True
        async with self._write_lock:
            self.write_started = trio.current_time()
            try:
                await self._stream.send_all(data)
            finally:
                self.write_started = math.inf

    async def write_frames(self, frames: Sequence[bytes]) -> None:
        """Write ``frames`` (WebSocket frames, ``frame_text``) in one write, whole: shielded
        like hypercorn's own writes (a cancelled write would leave half a frame on the wire); a
        stalled one is ended by the stall deadline, which closes the socket under it. Nothing
        is written once hypercorn has sent a close frame.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: the connection is gone.
        """
        data = b"".join(frames)
        with trio.CancelScope(shield=True):
            if not self.close_sent:
                await self.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._unread:
            data, self._unread = self._unread, b""
            return data
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self._conn.drop_after(EOF_GRACE_S)
            raise
        if not data:
            # The client is gone (or half-closed): what is left is a response it may still
            # read. hypercorn would otherwise keep the socket until its keep-alive timer or
            # ping loop next wakes (up to 5 s, or 30 s for a WebSocket).
            self._conn.drop_after(EOF_GRACE_S)
        return data

    async def send_eof(self) -> None:
        async with self._write_lock:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        # hypercorn is done with the connection: end whatever it still runs for it (its
        # WebSocket ping loop sleeps up to a ping interval otherwise).
        self._conn.scope.cancel()
        await self._stream.aclose()

    def close_socket(self) -> None:
        """Close the socket now; a write blocked on it fails with ``ClosedResourceError``."""
        self._stream.socket.close()


# A WebSocket close frame (FIN and opcode 8) starts with this byte (RFC 6455, section 5.2).
CLOSE_FRAME_FIRST_BYTE = b"\x88"


# Texts framed lately, by identity, with their frames: the same ``str`` sent to many (a
# multicast, or a cache hit's answer kept by the ChunkIndex) is framed once while it stays
# among the last ``FRAME_MEMO_SIZE`` framed. What the memo holds (texts and frames) stays under
# ``FRAME_MEMO_BYTES`` but for the newest entry: chunks can be configured up to 16 MiB.
FRAME_MEMO_SIZE = 32
FRAME_MEMO_BYTES = 4 << 20
_framed: dict[int, tuple[str, bytes]] = {}
_framed_bytes = 0


def frame_text(text: str) -> bytes:
    """``text`` as one WebSocket text frame; a text framed lately costs nothing again."""
    global _framed_bytes
    memo = _framed.get(id(text))
    if memo is not None and memo[0] is text:
        return memo[1]
    frame = text_frame(text.encode("utf-8"))
    size = len(text) + len(frame)
    while _framed and (len(_framed) >= FRAME_MEMO_SIZE or _framed_bytes + size > FRAME_MEMO_BYTES):
        old_text, old_frame = _framed.pop(next(iter(_framed)))
        _framed_bytes -= len(old_text) + len(old_frame)
    _framed[id(text)] = (text, frame)  # holding ``text`` keeps its id from being reused
    _framed_bytes += size
    return frame


def frame_memo_bytes() -> int:
    """What the memo of ``frame_text`` holds, in bytes of texts and frames."""
    return _framed_bytes


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455, section 5.2) carrying ``payload``:
    what a server sends, valid whatever extension was agreed (RSV1 clear: not compressed)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class WebSocketTransport(Protocol):
    """A WebSocket stack that ``serve_tcp`` offers every new connection first
    (``zajel.web.fastws.FastTransport``)."""

    def start(self) -> None:
        """Start what the transport runs for the whole server (once, in the server's run)."""

    async def serve(self, app: Any, stream: GuardedStream, conn: Connection) -> bool:
        """Serve the connection to ``app`` if it opens with a handshake this transport takes
        and return True; else give back what was read (``stream.unread``) and return False."""


class AcceptWarnings:
    """One warning line per ``ACCEPT_WARNING_EVERY_S`` for accept failures, not one per try."""

    def __init__(self) -> None:
        self._next = -math.inf
        self._suppressed = 0

    def failed(self, exc: OSError, now: float) -> None:
        if now < self._next:
            self._suppressed += 1
            return
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        log.warning(
            "cannot accept connections: out of resources",
            extra=context(error=name, suppressed=self._suppressed, hint=_hint(exc)),
        )
        self._next = now + ACCEPT_WARNING_EVERY_S
        self._suppressed = 0


def _hint(exc: OSError) -> str:
    if exc.errno == errno.EMFILE:
        return "raise the file descriptor limit (LimitNOFILE)"
    return "the system is out of sockets or memory"


def open_listener(
    host: str, port: int, backlog: int, *, reuse_port: bool = False
) -> trio.SocketListener:
    """A listening TCP socket on ``host:port`` (port 0: a free one). ``reuse_port``: bound
    with ``SO_REUSEPORT``, so several nodes on one machine share the port and the kernel
    spreads new connections over them (docs/cluster.md, "Deployment").

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """
    family, type_, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def bound_url(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_tcp(
    app: Callable[..., Awaitable[None]],
    hypercorn_config: HypercornConfig,
    table: ConnectionTable,
    listener: trio.SocketListener,
    *,
    shutdown: trio.Event,
    grace: float,
    websockets: WebSocketTransport | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listener`` until ``shutdown`` is set, then wind down within ``grace``.

    ``websockets``: the WebSocket stack offered each connection before hypercorn
    (``zajel.web.fastws``); hypercorn's serves every WebSocket when it is ``None``.

    Shutdown stops accepting, tells hypercorn to close idle keep-alive connections, lets open
    connections finish (the app closes its WebSockets itself), and drops whatever is still open
    when ``grace`` seconds have passed, so no client can hold the server.
    """
    install_close_codes()
    if websockets is not None:
        flusher()  # started with the server: tasks for the server's whole life
        websockets.start()
    async with open_worker(app, hypercorn_config) as worker, trio.open_nursery() as connections:
        connections.start_soon(_watch_deadlines, table)

        async def handle(stream: trio.SocketStream) -> None:
            await _serve_connection(stream, worker, table, websockets, app)

        async with trio.open_nursery() as acceptor:
            acceptor.start_soon(_accept_loop, listener, handle, connections)
            task_status.started()
            await shutdown.wait()
            acceptor.cancel_scope.cancel()
        await listener.aclose()
        await worker.close_idle()
        # Whatever is still open when the grace time ends is dropped: a client that does not
        # read cannot hold the shutdown.
        with trio.move_on_after(grace):
            await table.wait_empty()
        table.drop_all()
        connections.cancel_scope.cancel()


async def _accept_loop(
    listener: trio.SocketListener,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    warnings = AcceptWarnings()
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            warnings.failed(exc, trio.current_time())
            await trio.sleep(ACCEPT_BACKOFF_S)
            continue
        nursery.start_soon(handle, stream)


async def _serve_connection(
    stream: trio.SocketStream,
    worker: HypercornWorker,
    table: ConnectionTable,
    websockets: WebSocketTransport | None = None,
    asgi_app: Any = None,
) -> None:
    try:
        peer = stream.socket.getpeername()
    except OSError:  # gone before we looked
        await stream.aclose()
        return
    conn = table.open((str(peer[0]), int(peer[1])))
    if conn is None:
        log.info("connection refused: HTTP cap reached")  # client addresses are never logged
        await _refuse(stream)
        return
    guarded = GuardedStream(stream, conn)
    conn.stream = guarded
    try:
        with conn.scope:
            if websockets is not None and await websockets.serve(asgi_app, guarded, conn):
                return
            await worker.serve(guarded)
    finally:
        table.close(conn)
        stream.socket.close()


async def _refuse(stream: trio.SocketStream) -> None:
    """Answer 503 without reading the request, and close."""
    with trio.move_on_after(REFUSAL_TIMEOUT_S):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(REFUSAL)
    stream.socket.close()


async def _watch_deadlines(table: ConnectionTable) -> None:
    while True:
        await trio.sleep(STALL_CHECK_S)
        table.check_deadlines(trio.current_time())
