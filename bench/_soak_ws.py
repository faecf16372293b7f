"""A lean WebSocket client for the soak (``bench/soak.py``): a raw trio socket bound to a chosen
loopback source address, a hand-written handshake and RFC 6455 framing, and nothing else.

Thousands of idle connections and the misbehaving clients need it: it costs one socket, a small
object and the bytes in flight per connection (no library protocol object, no background task),
and it can send what a well-behaved library refuses to (garbage, oversized or invalid frames,
a handshake cut short, a socket reset instead of a close).

Invariants: every wait is bounded by its caller; server frames are unmasked and whole frames are
handed out in order; a server ``ping`` is answered with a ``pong`` at once by ``frames``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from collections.abc import Iterator
from typing import Final

import trio

try:  # websockets' C speed-up; its pure-Python twin where it was not built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD_MAX: Final = 16 * 1024
RECEIVE_MAX: Final = 65536


def source_addresses(count: int = 249) -> list[str]:
    """Loopback source addresses 127.0.0.2, 127.0.0.3, ... (``count`` of them, at most 249):
    each is a client address of its own for the server's per-IP caps."""
    return [f"127.0.0.{2 + index}" for index in range(min(count, 249))]


class HandshakeRefused(Exception):
    """The server answered the handshake with ``status`` (503 at a connection cap, ...)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"handshake refused: {status} {body[:200]!r}")
        self.status = status
        self.body = body


async def open_socket(
    host: str, port: int, source: str, *, rcvbuf: int | None = None
) -> trio.socket.SocketType:
    """A TCP socket from ``source`` (port chosen by the kernel) connected to ``host:port``;
    ``rcvbuf`` shrinks the receive buffer before the connection (a client that reads nothing
    fills it soon)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def handshake_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The upgrade request for ``path`` and the ``Sec-WebSocket-Accept`` it must get back."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of clients, unless ``masked`` is False:
    a protocol error the server must close with 1002)."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


def close_payload(code: int) -> bytes:
    return struct.pack("!H", code)


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload (1005: none given)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


class FrameReader:
    """Whole server frames out of the bytes fed in (server frames are never masked)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self.buffer += data
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1]
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < offset + length:
                return
            payload = self.buffer[offset : offset + length]
            self.buffer = self.buffer[offset + length :]
            yield first & 0x0F, payload


class RawWebSocket:
    """An open client WebSocket on a raw socket.

    ``frames`` reads and returns the next whole frames (pings answered on the way);
    ``send_frame`` writes one; ``close`` runs the closing handshake; ``abort`` resets the
    connection (``SO_LINGER`` 0: an RST, no close frame); ``drop`` closes the socket without a
    close frame (a FIN).
    """

    def __init__(self, sock: trio.socket.SocketType, leftover: bytes = b"") -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.leftover = leftover
        self.pings = 0
        self.closed = False

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def send_frame(self, opcode: int, payload: bytes, **options: bool) -> None:
        await self.send_all(encode_frame(opcode, payload, **options))

    async def send_text(self, text: str | bytes) -> None:
        await self.send_frame(TEXT, text.encode() if isinstance(text, str) else text)

    async def frames(self) -> list[tuple[int, bytes]]:
        """The next whole frames, in order (pings among them already answered); ``[]`` at
        the end of the stream. Raises ``OSError`` on a reset."""
        while True:
            if self.leftover:
                data, self.leftover = self.leftover, b""
            else:
                data = await self.sock.recv(RECEIVE_MAX)
                if not data:
                    return []
            out = list(self.reader.feed(data))
            for opcode, payload in out:
                if opcode == PING:
                    self.pings += 1
                    await self.send_frame(PONG, payload)
            out = [frame for frame in out if frame[0] != PING]
            if out:
                return out

    async def close(self, code: int = 1000, wait_s: float = 5.0) -> int | None:
        """Send a close frame, wait (at most ``wait_s``) for the server's and the end of the
        stream; the server's close code, or ``None`` if none came. Closes the socket."""
        reply: int | None = None
        try:
            await self.send_frame(CLOSE, close_payload(code))
            with trio.move_on_after(wait_s):
                while frames := await self.frames():
                    for opcode, payload in frames:
                        if opcode == CLOSE:
                            reply = close_code(payload)
        except OSError:
            pass
        finally:
            self.drop()
        return reply

    def abort(self) -> None:
        """Reset the connection: an RST instead of a close frame."""
        if not self.closed:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.drop()

    def drop(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


async def read_head(sock: trio.socket.SocketType) -> tuple[bytes, bytes]:
    """The response head (up to the blank line) and the bytes that came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_MAX:
            raise OSError("response head too long")
        chunk = await sock.recv(RECEIVE_MAX)
        if not chunk:
            raise OSError(f"connection closed during the handshake after {data[:100]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def connect_ws(
    host: str, port: int, path: str, source: str, *, rcvbuf: int | None = None
) -> RawWebSocket:
    """Open a WebSocket on ``path`` from ``source``.

    Raises:
        HandshakeRefused: the server answered with an HTTP status (its body read, bounded).
        OSError: the connection failed or broke during the handshake.
    """
    sock = await open_socket(host, port, source, rcvbuf=rcvbuf)
    try:
        request, accept = handshake_request(host, port, path)
        await RawWebSocket(sock).send_all(request)
        head, rest = await read_head(sock)
        status_line = head.split(b"\r\n", 1)[0].split(b" ")
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if status != 101:
            with trio.move_on_after(1):
                while len(rest) < 4096 and (chunk := await sock.recv(4096)):
                    rest += chunk
            raise HandshakeRefused(status, rest)
        if b"sec-websocket-accept: " + accept.lower() not in head.lower():
            raise OSError("handshake answered without the right Sec-WebSocket-Accept")
    except BaseException:
        sock.close()
        raise
    return RawWebSocket(sock, rest)
