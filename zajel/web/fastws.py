"""``zajel serve``'s own WebSocket transport for ``/signal`` and ``/relay``
(docs/architecture.md, "Transport").

hypercorn serves every HTTP request; a WebSocket handshake on an endpoint's path is served here
instead, on the same port. The handshake and every frame but the commonest are ``websockets``'
sans-IO protocol (``ServerProtocol``); this module owns the I/O loop, and unmasks whole text and
binary frames itself (``FastWebSocket._feed``: ``websockets``' parser is a generator per frame,
three times the CPU; ``bench/frame_parse.py``). The handshake is presented to the app
as ASGI (the ``SocketRouter`` admits or refuses it); after it, the router drives the connection
as a ``zajel.web.sockets.Link``, offered through the ``zajel.link`` scope extension.

What it saves over hypercorn's stack: one non-blocking read takes every frame that has arrived,
and all of them are handed over in the task that read them (no ASGI message, queue, lock,
cancel scope or task hop per frame): in the ``Poller``'s, one task for every connection with
nothing to wait for, else in the connection's own. The writer writes every queued frame with
one ``writev``.

Invariants:
- The head of a request is read at most ``HEAD_MAX`` bytes and ``HEAD_TIMEOUT_S`` seconds; a
  request that is not a WebSocket handshake on an endpoint path goes to hypercorn with the bytes
  already read handed back first (``GuardedStream.unread``).
- ``permessage-deflate`` is declined (no extension is offered): a compressed frame could inflate
  without bound, and the frames are small JSON.
- A message larger than ``ws_max_message_bytes`` (fragments counted whole) closes the
  connection with 1009, invalid UTF-8 in a text message with 1007, a protocol error with 1002;
  nothing more is read after a close.
- Writes are whole and in order, one at a time; a write cancelled half-way closes the socket
  (no shield: the stall deadline and a drop always end a write).
- Keep-alive (``keepalive``, run by the connection table's sweep): a ping every
  ``ws_ping_interval``; a connection that sent nothing for ``ws_idle_timeout`` (data frames and
  pongs alike) is dropped; one whose application sent no message for
  ``ws_message_idle_timeout`` is closed with 1001 (``on_silent``).
- The socket's descriptor is looked up before every system call, with no checkpoint in between,
  so a dropped connection's number, reused by a new socket, is never read or written.
"""

from __future__ import annotations

import contextlib
import http
import logging
import math
import os
import select
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from websockets import http11
from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

try:  # websockets' C speed-up; its pure-Python twin where it was not built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from zajel.config import Config
from zajel.logs import context
from zajel.web.outbox import DirectWrite, server_task
from zajel.web.sockets import LINK_EXTENSION, HandOver
from zajel.web.transport import Connection, GuardedStream, frame_text

if TYPE_CHECKING:
    from zajel.metrics import Metrics

log = logging.getLogger("zajel.web")

HEAD_MAX: Final = 16 * 1024
HEAD_TIMEOUT_S: Final = 10.0
# The most one read takes.
RECEIVE_MAX: Final = 256 * 1024
# The most buffers one writev takes (Linux's IOV_MAX).
IOV_MAX: Final = 1024
# An empty, unmasked ping frame (RFC 6455, section 5.5.2).
PING: Final = b"\x89\x00"
# The first byte of an unfragmented text or binary frame with no reserved bit set: the frames
# ``FastWebSocket._feed`` takes itself.
_WHOLE_TEXT: Final = 0x81
_WHOLE_FRAMES: Final = (_WHOLE_TEXT, 0x82)
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
    """One WebSocket connection on our transport.

    The handshake is ASGI (``receive``/``send``: the ``SocketRouter`` checks the caps and
    accepts or refuses); once accepted, the connection is driven as a ``zajel.web.sockets.Link``
    (``receive_messages``, ``frame``, ``write``, ``close``, ``drain``): no ASGI message, lock,
    cancel scope or task hop per frame. Reads and writes are non-blocking system calls on the
    socket; the task waits (``trio.lowlevel.wait_readable``/``wait_writable``) only when the
    socket has nothing to give or no room to take.
    """

    def __init__(self, stream: GuardedStream, conn: Connection, config: Config) -> None:
        self.stream = stream
        self.conn = conn
        self.config = config
        self.protocol = ServerProtocol(max_size=config.ws_max_message_bytes, logger=_QUIET)
        self.request: Request | None = None
        self._accepting: Response | None = None  # the 101 to send when the app accepts
        self._response: dict[str, Any] = {}  # a refusal's start, until its body comes
        self.messages: list[str | bytes] = []  # complete messages not yet handed over
        self.connected = False
        self.disconnected = False
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        # Frames: the start of a frame not complete yet, and how many bytes of the frame being
        # handed to websockets are still to come (see ``_feed``).
        self._unparsed = bytearray()
        self._to_protocol = 0
        # Writes: one at a time, each whole; ``_pending`` is the rest of a frame that a write
        # without waiting (``_write_now``) began, which the next write sends first.
        self._writing = False
        self._write_done = trio.lowlevel.ParkingLot()
        self._pending = b""
        self._ping_due = False
        self._closing = False  # a close frame is on its way: no data frame may follow it
        # What happens to an application that went quiet (set by the front end).
        self.on_silent: Callable[[], None] = conn.drop
        self.write_now: DirectWrite | None = self._write_now
        # Reads outside the connection's task (``Poller``), once the front end has said what
        # to do with messages: ``_polled`` while registered with the poller, ``_task_reads``
        # while the connection's task reads (it always reads before it parks, so the poller
        # leaves the socket alone then), ``_writes`` what the protocol had to send from a
        # read the poller made, for the task to write.
        self.hand_over: HandOver | None = None
        self._polled = -1  # the descriptor registered with the poller, or -1
        self._task_reads = True
        self._task_wakes = trio.lowlevel.ParkingLot()
        self._writes: list[bytes] = []
        now = trio.current_time()
        self.last_heard = now  # any frame, a pong included
        self.last_message = now  # data frames only
        self.next_ping = now + config.ws_ping_interval

    async def handshake(self, head: bytes) -> dict[str, Any] | None:
        """Parse the handshake request; its ASGI scope, or ``None`` if it was refused (the
        refusal is written). ``head`` is a whole request head, as ``is_endpoint_handshake``
        found it, and whatever came with it; a head cut short is refused with 400."""
        # The protocol gets the head alone: frames that came right behind it wait for the
        # accept, and go through ``_feed`` like every other frame.
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            self._unparsed += head[end + 4 :]
            head = head[: end + 4]
        self.protocol.receive_data(head)
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self.request = event
        if self.request is None:
            await self._refuse_unparsed()
            return None
        # A request that is no valid handshake is refused here, before the app sees it: it never
        # becomes a WebSocket (websockets' answer: 400, or 426 without an upgrade).
        response = self.protocol.accept(self.request)
        if response.status_code != 101:
            self.protocol.send_response(response)
            await self._flush(self.protocol.data_to_send())
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
            "extensions": {"websocket.http.response": {}, LINK_EXTENSION: {"link": self}},
        }

    # -- ASGI, for the handshake -------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        messages = await self.receive_messages()
        if not messages:
            return {"type": "websocket.disconnect", "code": self._close_code()}
        text = messages.pop(0)
        self.messages[:0] = messages  # the rest comes next
        if isinstance(text, str):
            return {"type": "websocket.receive", "text": text}
        return {"type": "websocket.receive", "bytes": text}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        protocol = self.protocol
        if kind == "websocket.accept":
            # No extension, no subprotocol: the handshake response as websockets built it.
            assert self._accepting is not None
            protocol.send_response(self._accepting)
            self.conn.keepalive = self.keepalive
            if self._unparsed:
                self._feed(b"")
        elif kind == "websocket.send":
            text = message.get("text")
            if text is not None:
                await self.write([frame_text(text)])
            elif protocol.state is State.OPEN:
                protocol.send_binary(message.get("bytes") or b"")
        elif kind == "websocket.close":
            if protocol.state is State.CONNECTING:
                protocol.send_response(protocol.reject(403, "Forbidden\n"))
            else:
                await self.close(int(message.get("code", 1000)), message.get("reason") or "")
                return
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
        await self._flush(self.protocol.data_to_send())

    # -- the link the front end drives (zajel.web.sockets.Link) --------------------------------

    def frame(self, text: str) -> bytes:
        return frame_text(text)

    async def receive_messages(self) -> list[str | bytes]:
        """The complete messages of the next read (every frame one ``receive`` brought), in
        order; ``[]`` once the connection is closed. Control frames are answered here."""
        while True:
            if self._writes:  # what the protocol answered to a read the poller made
                writes, self._writes = self._writes, []
                await self._flush(writes)
            if self.messages:
                messages, self.messages = self.messages, []
                return messages
            if self.disconnected:
                self._leave_poller()
                return []
            if self._polled < 0 and self.hand_over is not None:
                self._join_poller()
            if self._polled >= 0:
                data = self._read_now()
                if data is None:
                    await self._wait_for_poller()
                    continue
            else:
                data = await self._receive()
            self._take_read(data)
            if writes := self.protocol.data_to_send():
                await self._flush(writes)

    async def _wait_for_poller(self) -> None:
        """Leave the reads to the poller until it wakes this task: for what has to wait, what
        it could not write, or the end. A message it held is handed over here."""
        self._task_reads = False
        try:
            await self._task_wakes.park()
        finally:
            self._task_reads = True  # cancelled too: the poller must not read for a task gone
        hand_over = self.hand_over
        if hand_over is not None and hand_over.held is not None and not self.messages:
            await hand_over.resume()

    def _take_read(self, data: bytes) -> None:
        """Take what one read brought: its frames, or the end of the stream (``b""``)."""
        if data:
            self._feed(data)
        else:
            self.protocol.receive_eof()
            self.disconnected = True
        if self.messages:
            self.last_message = self.last_heard

    def _read_now(self) -> bytes | None:
        """One non-blocking read: its bytes, ``b""`` at the end of the stream or when the
        connection is gone, ``None`` when nothing has arrived."""
        try:
            data = os.read(self._fileno(), RECEIVE_MAX)
        except BlockingIOError:
            return None
        except (OSError, trio.ClosedResourceError):
            return b""
        self.last_heard = trio.current_time()
        return data

    # -- reads made by the poller --------------------------------------------------------------

    def _join_poller(self) -> None:
        try:
            fd = self._fileno()
        except trio.ClosedResourceError:
            return
        poller().register(fd, self)
        self._polled = fd

    def _leave_poller(self) -> None:
        """From now on this connection's task reads, until the end (a close, the end of the
        stream, the connection served)."""
        self.hand_over = None
        if self._polled >= 0:
            poller().unregister(self._polled, self)
            self._polled = -1

    def on_readable(self) -> None:
        """The socket has something to read (the ``Poller``, in its own task): read it and hand
        its messages over, until the socket has nothing more; whatever needs the connection's
        task (an answer to write, a message that has to wait, the end) wakes it instead."""
        hand_over = self.hand_over
        if self._task_reads or hand_over is None:
            return  # the task reads before it parks again
        while True:
            data = self._read_now()
            if data is None:
                return
            self._take_read(data)
            writes = self.protocol.data_to_send()
            messages = self.messages
            if messages and not writes and not self.disconnected:
                index = hand_over.take(messages, 0, trio.current_time())
                if index < 0:
                    messages.clear()  # a flood: the connection is being closed
                    return
                del messages[:index]
            if messages or writes or self.disconnected or hand_over.held is not None:
                self._writes += writes
                self._task_reads = True
                self._task_wakes.unpark_all()
                return
            if len(data) < RECEIVE_MAX:
                return  # all there was (a new arrival is a new event)

    def _feed(self, data: bytes) -> None:
        """Take the frames of ``data`` (after what ``_unparsed`` holds), in order.

        An unfragmented text or binary frame, masked, with no reserved bit and within
        ``ws_max_message_bytes``, is unmasked and taken here: the frames the apps send, and the
        common case. Every other frame (control frames, fragments, anything RFC 6455 refuses)
        goes to websockets' protocol whole, which answers pings, enforces the rules and closes
        with the right code; between two frames it is always at a frame boundary. A frame
        begun waits in ``_unparsed``; one too large to take is handed over from its header,
        so that websockets refuses it (1009) before its payload arrives.
        """
        if self._unparsed:
            self._unparsed += data
            buffer: bytes | bytearray = self._unparsed
        else:
            buffer = data
        protocol, max_size = self.protocol, self.protocol.max_message_size
        position, end = 0, len(buffer)
        while position < end and not self.disconnected:
            if self._to_protocol:
                stop = min(end, position + self._to_protocol)
                self._to_protocol -= stop - position
                protocol.receive_data(buffer[position:stop])
                position = stop
                for frame in protocol.events_received():
                    if self._take(frame):
                        break  # nothing after a close or a frame that failed the connection
                if protocol.state is State.CLOSED or protocol.parser_exc is not None:
                    self.disconnected = True
                continue
            if end - position < 2:
                break
            first, second = buffer[position], buffer[position + 1]
            size, masked = second & 0x7F, second & 0x80
            head = 6 if masked else 2  # with or without the masking key
            if size == 126:
                head += 2
                if end - position < 4:
                    break
                size = int.from_bytes(buffer[position + 2 : position + 4], "big")
            elif size == 127:
                head += 8
                if end - position < 10:
                    break
                size = int.from_bytes(buffer[position + 2 : position + 10], "big")
            if (
                first in _WHOLE_FRAMES
                and masked
                and (max_size is None or size <= max_size)
                and self._fragments is None
                and protocol.state is State.OPEN
            ):
                stop = position + head + size
                if stop > end:
                    break  # the rest of the frame comes with a later read
                key = buffer[position + head - 4 : position + head]
                self._message(first == _WHOLE_TEXT, apply_mask(buffer[position + head : stop], key))
                position = stop
            else:
                self._to_protocol = head + size
        if position == end:
            self._unparsed.clear()
        elif buffer is self._unparsed:
            del self._unparsed[:position]
        else:
            self._unparsed += buffer[position:]

    async def write(self, frames: Sequence[bytes | memoryview], *, control: bool = False) -> None:
        """Write ``frames`` whole and in order, in as few system calls as the socket allows;
        data frames (not ``control``) are dropped once a close frame is on its way.

        A write that cannot finish waits for room, without a shield: cancelled there (the
        connection is being dropped), the socket is closed, since the client could never
        make sense of half a frame.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: the connection is gone.
        """
        while self._writing:
            await self._write_done.park()
        if self._closing and not control:
            return
        buffers = list(frames)
        if self._pending:
            buffers.insert(0, self._pending)
            self._pending = b""
        if self._ping_due and self.protocol.state is State.OPEN:
            self._ping_due = False
            buffers.append(PING)
        self._writing = True
        try:
            await self._send_all(buffers)
        finally:
            self._writing = False
            self._write_done.unpark_all()

    def _write_now(self, frames: Sequence[bytes]) -> tuple[int, bool] | None:
        """Write ``frames`` without waiting (``zajel.web.outbox.DirectWrite``): how many were
        written (one begun counts: ``_pending`` holds its rest, for the writer to finish), and
        whether nothing is left begun; ``None`` when a write is in progress or due (its own
        order comes first), the connection is closing, or it is gone. Never raises."""
        if self._writing or self._pending or self._ping_due or self._closing:
            return None
        batch: list[bytes | memoryview] = list(frames[:IOV_MAX])
        try:
            sent = self._try_send(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        count = len(batch)
        if _drop_sent(batch, sent):
            self._pending = bytes(batch[0])
            return count - len(batch) + 1, False
        return count - len(batch), True

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame with ``code`` after whatever is being written."""
        self._leave_poller()  # from now on the task reads, until the client closes too
        if self.protocol.state is State.OPEN:
            self._closing = True
            self.protocol.send_close(code, reason)
        await self._flush(self.protocol.data_to_send())

    async def drain(self) -> None:
        """Read (and discard) until the client's side is closed."""
        while await self.receive_messages():
            pass

    def keepalive(self, now: float) -> None:
        """Called about twice a second (``ConnectionTable.check_deadlines``): drop a connection
        that sent nothing for ``ws_idle_timeout``, call ``on_silent`` for one whose
        application sent no message for ``ws_message_idle_timeout`` (pongs alone do not keep
        it), and ping when a ping is due."""
        if now - self.last_heard >= self.config.ws_idle_timeout:
            log.debug("idle connection dropped")
            self.conn.drop()
            return
        if now - self.last_message >= self.config.ws_message_idle_timeout:
            self.last_message = math.inf  # once
            log.info(
                "silent connection closed",
                extra=context(seconds=self.config.ws_message_idle_timeout),
            )
            self.on_silent()
        if now < self.next_ping:
            return
        self.next_ping = now + self.config.ws_ping_interval
        if self.protocol.state is not State.OPEN or self._closing:
            return
        if self._write_now([PING]) is None:
            # A write in progress takes it along; a client gone is the reader's to notice.
            self._ping_due = True

    # -- I/O -------------------------------------------------------------------------------

    def _fileno(self) -> int:
        """The socket's descriptor, or ``ClosedResourceError`` once it is closed (checked before
        every system call, with no checkpoint in between, so a number reused by another socket
        is never touched)."""
        fd = self.stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the connection was dropped")
        return fd

    async def _receive(self) -> bytes:
        """The bytes of one read; ``b""`` at the end of the stream or when the connection is
        gone. It always waits until the socket is readable first: that lets the other tasks run
        (and more of the client's frames arrive) between two reads."""
        while True:
            try:
                await trio.lowlevel.wait_readable(self._fileno())
                data = os.read(self._fileno(), RECEIVE_MAX)
            except BlockingIOError:
                continue  # woken without data after all
            except (OSError, trio.ClosedResourceError):
                return b""
            self.last_heard = trio.current_time()
            return data

    def _try_send(self, buffers: list[bytes | memoryview]) -> int:
        """Send what the socket takes now; the bytes sent."""
        try:
            return os.writev(self._fileno(), buffers[:IOV_MAX])
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def _send_all(self, buffers: list[bytes | memoryview]) -> None:
        started = False
        try:
            while buffers:
                sent = self._try_send(buffers)
                started = started or sent > 0
                _drop_sent(buffers, sent)
                if buffers:
                    if self.stream.write_started == math.inf:
                        self.stream.write_started = trio.current_time()
                    await trio.lowlevel.wait_writable(self._fileno())
        except trio.Cancelled:
            if started and buffers:
                self.conn.drop()
            raise
        finally:
            self.stream.write_started = math.inf

    def _take(self, frame: Any) -> bool:
        """Take one frame the client sent; whether the connection is over."""
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(opcode is Opcode.TEXT, frame.data)
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
        return self.disconnected

    def _message(self, text: bool, data: bytes) -> None:
        if not text:
            self.messages.append(bytes(data))
            return
        try:
            decoded = str(data, "utf-8")
        except UnicodeDecodeError:
            self.protocol.fail(1007, "invalid UTF-8")
            self.disconnected = True
            return
        self.messages.append(decoded)

    async def _refuse_unparsed(self) -> None:
        """A head websockets could not take as a request: its answer (414 or 431 for lines too
        long or too many), or else 400 where it would only close."""
        await self._write(b"".join(self.protocol.data_to_send()) or BAD_REQUEST, eof=True)

    async def _flush(self, writes: list[bytes]) -> None:
        """Write ``writes``, what the protocol had to send (handshake answers, pongs, close
        frames), in one write; half-close when it says so."""
        if writes:
            if self.protocol.close_sent is not None:
                self._closing = True
                self.stream.close_sent = True
            await self._write(b"".join(writes), eof=writes[-1] == b"")

    async def _write(self, data: bytes, *, eof: bool) -> None:
        """Write ``data`` whole, then half-close if ``eof``; a connection gone meanwhile is
        disconnected."""
        try:
            if data:
                await self.write([data], control=True)
            if eof:
                await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.disconnected = True

    def _close_code(self) -> int:
        close = self.protocol.close_rcvd or self.protocol.close_sent
        return close.code if close is not None else 1006

    def close_code(self) -> int | None:
        """The code of the close frame of whichever side closed first (ours: 1009, 1007, 1002
        for a bad frame); ``None`` when no close frame was sent or received."""
        protocol = self.protocol
        if protocol.close_sent is not None and not protocol.close_rcvd_then_sent:
            return protocol.close_sent.code
        return protocol.close_rcvd.code if protocol.close_rcvd is not None else None


class Poller:
    """One epoll set, edge-triggered, for the reads of every connection in their steady state
    (docs/architecture.md, "Transport"): one task waits on it and, for each socket with
    something to read, reads it and hands the messages over (``FastWebSocket.on_readable``),
    so a request that arrives alone costs no wake-up of its connection's task and no
    ``epoll_ctl``. A connection's task reads itself whenever it has to wait or write.
    """

    # Events taken per wake-up at most (the rest come with the next).
    MAX_EVENTS: Final = 1024

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._links: dict[int, FastWebSocket] = {}

    def register(self, fd: int, link: FastWebSocket) -> None:
        self._links[fd] = link
        try:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        except FileExistsError:  # a closed socket's number, reused before its end was noticed
            self._epoll.modify(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)

    def unregister(self, fd: int, link: FastWebSocket) -> None:
        if self._links.get(fd) is not link:
            return  # closed and reused by another connection meanwhile: not ours any more
        del self._links[fd]
        with contextlib.suppress(OSError, ValueError):  # closed: the kernel forgot it already
            self._epoll.unregister(fd)

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in self._epoll.poll(0, self.MAX_EVENTS):
                    link = self._links.get(fd)
                    if link is None:
                        continue
                    try:
                        link.on_readable()
                    except Exception:  # never: a failure here would end every connection
                        log.exception("read failed", extra=context(fd=fd))
        finally:
            self._epoll.close()


_POLLER: trio.lowlevel.RunVar[Poller] = trio.lowlevel.RunVar("zajel_poller")


def poller() -> Poller:
    """This trio run's ``Poller``, started (as a system task) on first use."""
    return server_task(_POLLER, Poller)


def _drop_sent(buffers: list[bytes | memoryview], sent: int) -> bool:
    """Take what ``sent`` bytes covered off the front of ``buffers`` (empty buffers go too);
    whether the first one left was begun (it is then the view of its rest)."""
    while buffers and sent >= len(buffers[0]):
        sent -= len(buffers[0])
        del buffers[0]
    if sent:
        buffers[0] = memoryview(buffers[0])[sent:]
        return True
    return False


@attrs.frozen
class FastTransport:
    """This transport as ``serve_tcp`` takes it: the endpoint paths it serves, its settings."""

    paths: tuple[str, ...]
    config: Config
    metrics: Metrics | None = None

    def start(self) -> None:
        poller()

    async def serve(self, app: Any, stream: GuardedStream, conn: Connection) -> bool:
        """Serve the connection if its first request is a handshake on one of ``paths``;
        otherwise give the bytes read back to the stream and return False."""
        head = await read_head(stream)
        if not is_endpoint_handshake(head, self.paths):
            stream.unread(head)
            return False
        await serve_websocket(app, stream, conn, head, self.config, self.metrics)
        return True


async def serve_websocket(
    app: Any,
    stream: GuardedStream,
    conn: Connection,
    head: bytes,
    config: Config,
    metrics: Metrics | None = None,
) -> None:
    """Serve one WebSocket connection whose handshake starts with ``head`` to the ASGI ``app``."""
    socket = FastWebSocket(stream, conn, config)
    scope = await socket.handshake(head)
    if scope is None:
        if metrics is not None:
            metrics.refused("bad_handshake")
        return
    try:
        await app(scope, socket.receive, socket.send)
        # The app is done: say goodbye if it did not (its close path bounds the handshake).
        if socket.protocol.state is State.OPEN:
            await socket.send({"type": "websocket.close", "code": 1000})
    finally:
        socket._leave_poller()  # before the socket is closed and its number reused
