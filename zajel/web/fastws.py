"""``zajel serve``'s own WebSocket transport for ``/signal`` and ``/relay``
(docs/architecture.md, "Transport").

hypercorn serves every HTTP request; a WebSocket handshake on an endpoint's path is served here
instead, on the same port. The handshake and the frames are ``websockets``' sans-IO protocol
(``ServerProtocol``); this module owns only the I/O loop, and hands the app the ASGI WebSocket
messages it already speaks, so the ``SocketRouter`` serves both transports unchanged.

What it saves over hypercorn's stack: the reader decodes every complete frame of one
``receive_some`` in the reader's own task (no queue and no task hop per frame), and the writer
(``zajel.web.sockets``) writes everything queued with one ``send_all``.

Invariants:
- The head of a request is read at most ``HEAD_MAX`` bytes and ``HEAD_TIMEOUT_S`` seconds; a
  request that is not a WebSocket handshake on an endpoint path goes to hypercorn with the bytes
  already read handed back first (``GuardedStream.unread``).
- ``permessage-deflate`` is declined (no extension is offered): a compressed frame could inflate
  without bound, and the frames are small JSON.
- A message larger than ``ws_max_message_bytes`` (fragments counted whole) closes the
  connection with 1009, invalid UTF-8 in a text message with 1007, a protocol error with 1002;
  nothing more is read after a close.
- Keep-alive as hypercorn's: a ping every ``ws_ping_interval``; a connection that sent nothing
  for ``ws_idle_timeout`` (data frames and pongs alike) is dropped.
"""

from __future__ import annotations

import http
import logging
from collections import deque
from typing import Any, Final

import attrs
import trio
from websockets import http11
from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from zajel.config import Config
from zajel.web.transport import Connection, GuardedStream

log = logging.getLogger("zajel.web")

HEAD_MAX: Final = 16 * 1024
HEAD_TIMEOUT_S: Final = 10.0
RECEIVE_MAX: Final = 256 * 1024
# The answer to a head that is no HTTP request at all (websockets itself would only close).
BAD_REQUEST: Final = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n"
    b"connection: close\r\n\r\nBad Request\n"
)
# A header line may be as long as the head we read (websockets' default is 8 KiB, less than
# hypercorn takes: a browser's cookies can exceed it). Its documented knob is an environment
# variable read once at import; the head is bounded by HEAD_MAX either way.
http11.MAX_LINE_LENGTH = max(http11.MAX_LINE_LENGTH, HEAD_MAX)
# websockets logs every connection at INFO; ours are logged by the front end.
_QUIET = logging.getLogger("zajel.web.websockets")
_QUIET.setLevel(logging.WARNING)


async def read_head(stream: GuardedStream) -> bytes:
    """The bytes of the request head (and whatever came with it): up to ``b"\\r\\n\\r\\n"``,
    ``HEAD_MAX`` bytes, the end of the stream or ``HEAD_TIMEOUT_S``, whichever comes first."""
    data = b""
    with trio.move_on_after(HEAD_TIMEOUT_S):
        while b"\r\n\r\n" not in data and len(data) < HEAD_MAX:
            try:
                chunk = await stream.receive_some(HEAD_MAX - len(data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not chunk:
                break
            data += chunk
    return data


def is_endpoint_handshake(head: bytes, paths: tuple[str, ...]) -> bool:
    """Whether ``head`` starts a ``GET`` with ``Upgrade: websocket`` on one of ``paths`` (or a
    path below one)."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return False
    lines = head[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET":
        return False
    path = parts[1].split(b"?", 1)[0].decode("latin-1")
    if not any(path == base or path.startswith(base + "/") for base in paths):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and value.strip().lower() == b"websocket":
            return True
    return False


class FastWebSocket:
    """One WebSocket connection on our transport, as ASGI ``receive``/``send`` callables."""

    def __init__(self, stream: GuardedStream, conn: Connection, config: Config) -> None:
        self.stream = stream
        self.conn = conn
        self.config = config
        self.protocol = ServerProtocol(max_size=config.ws_max_message_bytes, logger=_QUIET)
        self.request: Request | None = None
        self._accepting: Response | None = None  # the 101 to send when the app accepts
        self._response: dict[str, Any] = {}  # a refusal's start, until its body comes
        self.events: deque[dict[str, Any]] = deque()
        self.connected = False
        self.disconnected = False
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        now = trio.current_time()
        self._last_data = now
        self._next_ping = now + config.ws_ping_interval

    async def handshake(self, head: bytes) -> dict[str, Any] | None:
        """Parse the handshake request; its ASGI scope, or ``None`` if it was refused (the
        refusal is written)."""
        self.protocol.receive_data(head)
        while self.request is None:
            for event in self.protocol.events_received():
                if isinstance(event, Request):
                    self.request = event
                else:  # a frame the client sent right behind its handshake
                    self._take(event)
            if self.request is not None:
                break
            if self.protocol.state is not State.CONNECTING or self.protocol.handshake_exc:
                await self._refuse_unparsed()
                return None
            data = await read_head(self.stream)
            if not data:
                self.protocol.receive_eof()
                await self._refuse_unparsed()
                return None
            self.protocol.receive_data(data)
        # A request that is no valid handshake is refused here, before the app sees it: it never
        # becomes a WebSocket (websockets' answer: 400, or 426 without an upgrade).
        response = self.protocol.accept(self.request)
        if response.status_code != 101:
            self.protocol.send_response(response)
            await self._flush()
            return None
        self._accepting = response
        path, _, query = self.request.path.partition("?")
        peer = self.conn.peer
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": path,
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in self.request.headers.raw_items()
            ],
            "client": (peer[0], peer[1]),
            "server": None,
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
        }

    # -- ASGI ------------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        while not self.events:
            if self.disconnected:
                return {"type": "websocket.disconnect", "code": self._close_code()}
            await self._read()
        return self.events.popleft()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        protocol = self.protocol
        if kind == "websocket.accept":
            # No extension, no subprotocol: the handshake response as websockets built it.
            assert self._accepting is not None
            protocol.send_response(self._accepting)
        elif kind == "websocket.send":
            if protocol.state is State.OPEN:
                text = message.get("text")
                if text is not None:
                    protocol.send_text(text.encode("utf-8"))
                else:
                    protocol.send_binary(message.get("bytes") or b"")
        elif kind == "websocket.close":
            if protocol.state is State.CONNECTING:
                protocol.send_response(protocol.reject(403, "Forbidden\n"))
            elif protocol.state is State.OPEN:
                protocol.send_close(int(message.get("code", 1000)), message.get("reason") or "")
        elif kind == "websocket.http.response.start":
            self._response = message
            return
        elif kind == "websocket.http.response.body":
            start = self._response
            headers = Headers(
                [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in start.get("headers", ())
                ]
            )
            status = http.HTTPStatus(int(start["status"]))
            body = message.get("body", b"")
            protocol.send_response(Response(status.value, status.phrase, headers, body))
        await self._flush()

    # -- I/O -------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Read once (or send a due ping, or drop an idle connection) and turn what came into
        ASGI events."""
        data = b""
        with trio.move_on_at(self._next_ping) as timer:
            try:
                data = bytes(await self.stream.receive_some(RECEIVE_MAX))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.disconnected = True
                return
        now = trio.current_time()
        if timer.cancelled_caught:
            if now - self._last_data >= self.config.ws_idle_timeout:
                log.debug("idle connection dropped")
                self.disconnected = True
                self.conn.drop()
                return
            if self.protocol.state is State.OPEN:
                self.protocol.send_ping(b"")
                await self._flush()
            self._next_ping = now + self.config.ws_ping_interval
            return
        self._last_data = now
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for frame in self.protocol.events_received():
            if self.disconnected:
                break  # nothing after a close, or after a frame that failed the connection
            self._take(frame)
        await self._flush()
        if self.protocol.state is State.CLOSED or self.protocol.parser_exc is not None:
            self.disconnected = True
        if not data:
            self.disconnected = True

    def _take(self, frame: Any) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(opcode is Opcode.TEXT, bytes(frame.data))
            else:
                self._fragments = [bytes(frame.data)]
                self._fragments_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._message(self._fragments_text, data)
        elif opcode is Opcode.CLOSE:
            self.disconnected = True

    def _message(self, text: bool, data: bytes) -> None:
        if not text:
            self.events.append({"type": "websocket.receive", "bytes": data})
            return
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError:
            self.protocol.fail(1007, "invalid UTF-8")
            self.disconnected = True
            return
        self.events.append({"type": "websocket.receive", "text": decoded})

    async def _refuse_unparsed(self) -> None:
        """A head websockets could not take as a request: its answer (414 or 431 for lines too
        long or too many), or else 400 where it would only close."""
        await self._write(b"".join(self.protocol.data_to_send()) or BAD_REQUEST, eof=True)

    async def _flush(self) -> None:
        """Write what the protocol has to send, in one write; half-close when it says so."""
        writes = self.protocol.data_to_send()
        if writes:
            if self.protocol.close_sent is not None:
                self.stream.close_sent = True
            await self._write(b"".join(writes), eof=writes[-1] == b"")

    async def _write(self, data: bytes, *, eof: bool) -> None:
        """Write ``data`` whole (shielded like every write of the stream), then half-close if
        ``eof``; a connection gone meanwhile is disconnected."""
        try:
            with trio.CancelScope(shield=True):
                if data:
                    await self.stream.send_all(data)
                if eof:
                    await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.disconnected = True

    def _close_code(self) -> int:
        close = self.protocol.close_rcvd or self.protocol.close_sent
        return close.code if close is not None else 1006


@attrs.frozen
class FastTransport:
    """This transport as ``serve_tcp`` takes it: the endpoint paths it serves, its settings."""

    paths: tuple[str, ...]
    config: Config

    async def serve(self, app: Any, stream: GuardedStream, conn: Connection) -> bool:
        """Serve the connection if its first request is a handshake on one of ``paths``;
        otherwise give the bytes read back to the stream and return False."""
        head = await read_head(stream)
        if not is_endpoint_handshake(head, self.paths):
            stream.unread(head)
            return False
        await serve_websocket(app, stream, conn, head, self.config)
        return True


async def serve_websocket(
    app: Any, stream: GuardedStream, conn: Connection, head: bytes, config: Config
) -> None:
    """Serve one WebSocket connection whose handshake starts with ``head`` to the ASGI ``app``."""
    socket = FastWebSocket(stream, conn, config)
    scope = await socket.handshake(head)
    if scope is None:
        return
    await app(scope, socket.receive, socket.send)
    # The app is done: say goodbye if it did not (its close path bounds the handshake).
    if socket.protocol.state is State.OPEN:
        await socket.send({"type": "websocket.close", "code": 1000})
