"""The node-to-node hop: PUBLISH to another node's inbox channel, SUBSCRIBE to our own.

Everything else in cluster mode talks to Redis through coredis; this hop does not, because it
carries every message between nodes, and a PUBLISH costs about 184 µs of CPU through coredis
against about 3 µs here (``bench/redis_publish.py``; docs/cluster.md, "Why pub/sub, and why its
own connection").
It speaks just enough RESP2 for two connections:

- ``Publisher``: ``publish_nowait`` appends the encoded command to a buffer and never waits;
  one task writes the buffer (many commands per write) and another reads the replies.
  ``publish_all_nowait`` wraps several PUBLISHes in MULTI/EXEC, so that Redis runs them as one
  step: no other client's command comes between them.
  The buffer is bounded: past ``MAX_BUFFER_BYTES`` the link is failed, never grown.
- ``Subscriber``: subscribes to one channel and hands every message's payload to a callback.

Either raises ``LinkError`` when the connection fails; the node then reports itself degraded
and opens new ones (``zajel.cluster.node``).
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

# What a publisher may hold unwritten before its link is declared failed (a Redis that stopped
# reading), rather than letting memory grow.
MAX_BUFFER_BYTES: Final = 64 << 20
CONNECT_TIMEOUT_S: Final = 5.0
_READ_BYTES: Final = 1 << 16
_MULTI: Final = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC: Final = b"*1\r\n$4\r\nEXEC\r\n"
_ACCEPTED: Final = (b":", b"+", b"*")


class LinkError(Exception):
    """The connection to Redis failed, or Redis refused a command."""


@attrs.frozen
class RedisAddress:
    """Where Redis is, from a ``redis://`` or ``rediss://`` URL (docs/cluster.md, "Settings")."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None = attrs.field(repr=False)
    tls: bool

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Raises ValueError with a message that never contains the password."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("must start with redis:// or rediss://")
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError("has an invalid port") from None
        path = parts.path.lstrip("/")
        if path and not path.isdigit():
            raise ValueError("database must be a number")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path) if path else 0,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}:***@" if self.username else ("***@" if self.password else "")
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


def command(*parts: bytes) -> bytes:
    """One RESP2 command."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(b"\r\n")
    return b"".join(out)


class Reader:
    """Incremental RESP2 reply parser: ``feed`` bytes, ``next`` returns a reply or ``None``.

    Replies: ``int``, ``bytes`` (bulk or simple strings), ``list``, ``None``; an error reply
    is returned as a ``LinkError`` value, not raised.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def messages(self) -> list[bytes]:
        """The payloads of the complete pub/sub ``message`` replies at the front of the buffer
        (the common case, parsed without the general parser); what follows is left to
        ``next``."""
        buffer, pos = self._buffer, self._pos
        found = []
        head = _MESSAGE_HEAD
        while buffer.startswith(head, pos):
            start = pos + len(head)
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            dollar = end + 2 + int(buffer[start:end]) + 2  # past the channel and its CRLF
            if buffer[dollar : dollar + 1] != b"$":
                break
            size_end = buffer.find(b"\r\n", dollar + 1)
            if size_end < 0:
                break
            payload_start = size_end + 2
            payload_end = payload_start + int(buffer[dollar + 1 : size_end])
            if len(buffer) < payload_end + 2:
                break
            found.append(bytes(buffer[payload_start:payload_end]))
            pos = payload_end + 2
        self._pos = pos
        return found

    def next(self) -> object:
        """The next complete reply, or ``None`` when more bytes are needed."""
        parsed = self._parse(self._pos)
        if parsed is None:
            return None
        value, self._pos = parsed
        return value

    def _line(self, pos: int) -> tuple[bytes, int] | None:
        end = self._buffer.find(b"\r\n", pos)
        if end < 0:
            return None
        return bytes(self._buffer[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[object, int] | None:
        if pos >= len(self._buffer):
            return None
        kind = self._buffer[pos]
        line = self._line(pos + 1)
        if line is None:
            return None
        text, pos = line
        if kind == 0x3A:  # ':'
            return int(text), pos
        if kind == 0x2B:  # '+'
            return text, pos
        if kind == 0x2D:  # '-'
            return LinkError(text.decode(errors="replace")), pos
        if kind == 0x24:  # '$'
            size = int(text)
            if size < 0:
                return _NIL, pos
            if len(self._buffer) < pos + size + 2:
                return None
            return bytes(self._buffer[pos : pos + size]), pos + size + 2
        if kind == 0x2A:  # '*'
            count = int(text)
            items: list[object] = []
            for _ in range(max(count, 0)):
                parsed = self._parse(pos)
                if parsed is None:
                    return None
                item, pos = parsed
                items.append(None if item is _NIL else item)
            return items, pos
        raise LinkError(f"unexpected RESP type byte {kind!r}")


_NIL: Final = object()
# The start of every pub/sub message: a 3-element array whose first element is "message",
# then the channel's length.
_MESSAGE_HEAD: Final = b"*3\r\n$7\r\nmessage\r\n$"


async def connect(address: RedisAddress) -> trio.abc.Stream:
    """A connection to Redis, authenticated. Raises ``LinkError``."""
    stream: trio.abc.Stream
    try:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            stream = await trio.open_tcp_stream(address.host, address.port)
            if address.tls:
                stream = trio.SSLStream(
                    stream, ssl.create_default_context(), server_hostname=address.host
                )
            if address.password is not None:
                parts = [b"AUTH"]
                if address.username is not None:
                    parts.append(address.username.encode())
                parts.append(address.password.encode())
                await stream.send_all(command(*parts))
                reply = await _one_reply(stream)
                if isinstance(reply, LinkError):
                    await stream.aclose()
                    raise LinkError("Redis refused the credentials")
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as error:
        raise LinkError(f"cannot connect to Redis: {error}") from None
    return stream


async def _one_reply(stream: trio.abc.Stream) -> object:
    reader = Reader()
    while (reply := reader.next()) is None:
        data = await stream.receive_some(_READ_BYTES)
        if not data:
            raise LinkError("Redis closed the connection")
        reader.feed(data)
    return reply


class Publisher:
    """Publishes to other nodes' channels; see the module docstring."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._wake = trio.Event()
        self.failed: LinkError | None = None
        self.sent = 0  # commands written
        self.bytes = 0  # payload bytes published
        self.unheard = 0  # messages no node was subscribed to (its node is gone)

    def publish_nowait(self, channel: bytes, payload: bytes) -> None:
        """Queue one PUBLISH. Raises ``LinkError`` when the link has failed or is full."""
        if self.failed is not None:
            raise self.failed
        if len(self._buffer) > MAX_BUFFER_BYTES:
            self.failed = LinkError("Redis is not reading: publish buffer full")
            self._wake.set()
            raise self.failed
        self._buffer += command(b"PUBLISH", channel, payload)
        self.bytes += len(payload)
        self.sent += 1
        self._wake.set()

    def publish_all_nowait(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Queue the PUBLISH of every ``(channel, payload)`` as one atomic step (MULTI/EXEC
        when there are several). Raises ``LinkError`` like ``publish_nowait``."""
        if len(messages) == 1:
            self.publish_nowait(*messages[0])
            return
        if self.failed is not None:
            raise self.failed
        self._buffer += _MULTI
        for channel, payload in messages:
            self.publish_nowait(channel, payload)
        self._buffer += _EXEC

    async def run(self) -> None:
        """Write and read until the connection fails; raises ``LinkError``."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read)
                await self._write()
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            self.failed = LinkError(f"Redis connection lost: {group.exceptions[0]}")
        except* LinkError as group:
            failure = group.exceptions[0]
            assert isinstance(failure, LinkError)
            self.failed = failure
        finally:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
        assert self.failed is not None
        raise self.failed

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.failed is not None:
                raise self.failed
            data, self._buffer = self._buffer, bytearray()
            if data:
                await self._stream.send_all(data)

    async def _read(self) -> None:
        # Every reply on this connection is made of lines: ``:N`` (the subscribers that got
        # the message), ``+OK`` (MULTI), ``+QUEUED`` (a PUBLISH in MULTI), ``*N`` (EXEC, then
        # its N ``:N`` lines) or ``-ERR ...``.
        pending = b""
        while True:
            data = await self._stream.receive_some(_READ_BYTES)
            if not data:
                raise LinkError("Redis closed the connection")
            lines = (pending + data).split(b"\r\n")
            pending = lines.pop()
            for line in lines:
                if line == b":0":
                    self.unheard += 1
                elif line[:1] not in _ACCEPTED:
                    raise LinkError(f"Redis refused a PUBLISH: {line[:200]!r}")


class Subscriber:
    """Receives the messages of one channel; see the module docstring."""

    def __init__(self, stream: trio.abc.Stream, channel: bytes) -> None:
        self._stream = stream
        self.channel = channel
        self.received = 0
        self.bytes = 0

    async def run(
        self,
        on_message: Callable[[bytes], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe, report started once Redis confirmed, then await ``on_message(payload)``
        for every message until the connection fails (raises ``LinkError``)."""
        reader = Reader()
        try:
            await self._stream.send_all(command(b"SUBSCRIBE", self.channel))
            subscribed = False
            while True:
                data = await self._stream.receive_some(_READ_BYTES)
                if not data:
                    raise LinkError("Redis closed the connection")
                reader.feed(data)
                while True:
                    # Messages by the fast path; any other reply (the subscription's
                    # confirmation, an error) by the general parser, then messages again.
                    for payload in reader.messages():
                        self.received += 1
                        self.bytes += len(payload)
                        await on_message(payload)
                    reply = reader.next()
                    if reply is None:
                        break
                    if isinstance(reply, LinkError):
                        raise reply
                    if isinstance(reply, list) and reply[:1] == [b"subscribe"] and not subscribed:
                        subscribed = True
                        task_status.started()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise LinkError(f"Redis connection lost: {error}") from None
        finally:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
