"""Raw clients and resource counts for the hardening tests: a wsproto client that can send a
burst without reading and hang up without a close handshake, WebSocket frames built byte by byte
(to break any rule of RFC 6455) and read back from the server's bytes, and what the server holds
(its TCP sockets by state, its trio tasks)."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections import Counter
from typing import Any

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)

# /proc/net/tcp state codes (include/net/tcp_states.h).
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def server_sockets(port: int) -> Counter[str]:
    """The TCP sockets whose local address is 127.0.0.1:``port`` (the server's side), by
    state, listening socket and TIME_WAIT (which holds no file) left out. The address counts
    too: a client socket of another process may have the same port on another loopback
    address."""
    local = {f"0100007F:{port:04X}", f"0000000000000000FFFF00000100007F:{port:04X}"}
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    state = TCP_STATES.get(fields[3], fields[3])
                    if fields[1] in local and state not in {"LISTEN", "TIME_WAIT"}:
                        states[state] += 1
        except FileNotFoundError:
            continue
    return states


def open_files(pid: int | None = None) -> int:
    """Open file descriptors of process ``pid`` (this one by default)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def task_count() -> int:
    """Every task of the current trio run."""
    count = 0
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


async def wait_until(condition: Any, *, within: float, every: float = 0.05) -> None:
    """Poll ``condition()`` until it is true; fail after ``within`` seconds of real time.

    For what the server holds outside trio (sockets in /proc, its tasks): nothing signals it.
    """
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polling state that nothing signals
            await trio.sleep(every)


class RawClient:
    """A WebSocket client on a plain TCP stream: frames go out in one write, nothing is read
    unless asked, and ``hang_up`` closes the TCP stream without a close handshake."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/signal",
        *,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> RawClient:
        """Connect and complete the handshake (from ``source``, e.g. ``127.0.0.2``).

        Raises:
            AssertionError: the handshake was refused.
        """
        stream = await open_stream(port, source)
        client = cls(stream)
        extra = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
        try:
            await stream.send_all(
                client.ws.send(Request(host="127.0.0.1", target=path, extra_headers=extra))
            )
            while True:
                for event in await client._events():
                    if isinstance(event, AcceptConnection):
                        return client
                    if isinstance(event, RejectConnection):
                        raise AssertionError(f"handshake refused: {event.status_code}")
        except BaseException:
            stream.socket.close()
            raise

    async def _events(self) -> list[Any]:
        data = await self.stream.receive_some(1 << 16)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def frame(self, obj: Any) -> bytes:
        text = obj if isinstance(obj, str) else json.dumps(obj)
        return self.ws.send(TextMessage(data=text))

    async def send(self, *objs: Any) -> None:
        """Send every frame of ``objs`` in one write."""
        await self.stream.send_all(b"".join(self.frame(obj) for obj in objs))

    async def receive(self) -> dict[str, Any] | CloseConnection:
        """The next JSON frame, or the server's close."""
        while not self.pending:
            try:
                events = await self._events()
            except trio.BrokenResourceError:
                events = [CloseConnection(code=1006)]
            for event in events:
                if isinstance(event, TextMessage | BytesMessage | Message):
                    self.pending.append(json.loads(event.data))
                elif isinstance(event, CloseConnection):
                    self.pending.append(event)
            if not events and self.ws.state.name == "CLOSED":
                self.pending.append(CloseConnection(code=1006))
        return self.pending.pop(0)

    async def read_until_closed(self) -> tuple[list[dict[str, Any]], int]:
        """Every frame until the connection ends, and the close code (1006: no close frame)."""
        frames: list[dict[str, Any]] = []
        while True:
            try:
                data = await self.stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                return frames, 1006
            if not data:
                return frames, 1006
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    frames.append(json.loads(event.data))
                elif isinstance(event, CloseConnection):
                    return frames, event.code

    async def hang_up(self) -> None:
        """Close the TCP stream: no close handshake."""
        await self.stream.aclose()


async def open_stream(port: int, source: str | None = None) -> trio.SocketStream:
    """A TCP stream to 127.0.0.1:``port``, from the local address ``source`` when given (any
    127.x.y.z is this machine: a second "client address" for per-IP tests)."""
    if source is None:
        return await trio.open_tcp_stream("127.0.0.1", port)
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def paired_sink(port: int, partner: Any, partner_code: str, code: str) -> RawClient:
    """A raw ``/signal`` client registered as ``code`` and matched with ``partner`` (a registered
    ``zajel.client.SignalClient``): a target ``partner`` can push to, which reads only when told."""
    sink = await RawClient.connect(port)
    await sink.send({"type": "register", "pairingCode": code})
    assert (await sink.receive())["type"] == "registered"
    await partner.send({"type": "pair_request", "targetCode": code})
    assert (await sink.receive())["type"] == "pair_incoming"
    await sink.send({"type": "pair_response", "targetCode": partner_code, "accepted": True})
    assert (await partner.receive())["type"] == "pair_matched"
    return sink


# WebSocket opcodes (RFC 6455, section 5.2).
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"\x37\xfa\x21\x3d"


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
) -> bytes:
    """One client frame, built byte by byte so that it can break any rule: any opcode (0-15),
    reserved bits ``rsv`` (0-7), ``mask=None`` for an unmasked frame, any payload size."""
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F
    masked = 0x80 if mask is not None else 0
    size = len(payload)
    if size < 126:
        head = bytes((first, masked | size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, masked | 126, size)
    else:
        head = struct.pack("!BBQ", first, masked | 127, size)
    if mask is None:
        return head + payload
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@attrs.frozen
class ServerFrame:
    """A frame the server sent (servers never mask)."""

    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        """The code of a close frame (1005: it carries none)."""
        assert self.opcode == CLOSE, self
        return struct.unpack("!H", self.payload[:2])[0] if self.payload else 1005


def server_frames(data: bytes) -> list[ServerFrame]:
    """The frames in ``data``, which must hold only whole, unmasked frames with no reserved bit.

    Raises:
        AssertionError: ``data`` is not such a sequence of frames.
    """
    frames = []
    at = 0
    while at < len(data):
        assert len(data) >= at + 2, f"a truncated frame: {data[at:]!r}"
        first, second = data[at], data[at + 1]
        assert first & 0x70 == 0, f"reserved bits set: {data[at:]!r}"
        assert second & 0x80 == 0, f"a masked server frame: {data[at:]!r}"
        size, at = second & 0x7F, at + 2
        if size == 126:
            (size,), at = struct.unpack("!H", data[at : at + 2]), at + 2
        elif size == 127:
            (size,), at = struct.unpack("!Q", data[at : at + 8]), at + 8
        assert len(data) >= at + size, f"a truncated frame: {data!r}"
        frames.append(ServerFrame(bool(first & 0x80), first & 0x0F, data[at : at + size]))
        at += size
    return frames


# -- HTTP and handshakes, byte by byte ------------------------------------------------------

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the Sec-WebSocket-Key of RFC 6455's example


def handshake(
    target: str = "/signal",
    *extra: str,
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    version: str | None = "13",
    key: str | None = KEY,
) -> bytes:
    """A handshake request head; a header given as ``None`` is left out."""
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in [
        ("Upgrade", upgrade),
        ("Connection", connection),
        ("Sec-WebSocket-Version", version),
        ("Sec-WebSocket-Key", key),
    ]:
        if value is not None:
            lines.append(f"{name}: {value}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@attrs.frozen
class Reply:
    """What a server sent on a connection: one HTTP response and whatever followed it."""

    status: int | None  # None: no HTTP response at all
    head: bytes
    body: bytes
    rest: bytes  # bytes after the response (frames after a 101)


async def receive_or_end(stream: trio.SocketStream) -> bytes:
    """The next bytes, or ``b""`` at the end of the stream (a FIN or a reset alike)."""
    try:
        return bytes(await stream.receive_some(1 << 16))
    except trio.BrokenResourceError:
        return b""


async def read_reply(stream: trio.SocketStream) -> Reply:
    """One HTTP response (its body by ``Content-Length``; to the end without one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await receive_or_end(stream)
        if not chunk:
            return Reply(None, data, b"", b"")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if status == 101:
        length = 0
    if length is None:
        rest += await read_to_end(stream)
        return Reply(status, head, rest, b"")
    while len(rest) < length:
        chunk = await receive_or_end(stream)
        assert chunk, f"connection closed mid-body: {head!r} {rest!r}"
        rest += chunk
    return Reply(status, head, rest[:length], rest[length:])


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes the connection (the caller's ``fail_after`` bounds
    a server that does not)."""
    data = b""
    while chunk := await receive_or_end(stream):
        data += chunk
    return data


async def send_ignoring_close(stream: trio.SocketStream, data: bytes) -> None:
    """Send ``data``; the server may close the connection before it has read it all."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
