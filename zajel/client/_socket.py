"""What every endpoint's client shares: one WebSocket speaking JSON objects.

- Every wait for a frame is bounded: the client's ``timeout`` seconds (``DEFAULT_TIMEOUT_S``
  unless set), or the ``timeout`` of an ``expect`` or ``wait_for`` call; past it,
  ``ReplyTimeout`` names what was awaited. ``receive`` alone, the raw read, waits for ever.
  (A timeout argument, against trio's habit of cancel scopes (ASYNC109): a wait that a test or
  a user forgot to bound must not hang.)
- Frames the server pushes on its own (``PUSHES`` of the endpoint's client, such as
  ``rendezvous_match`` on ``/relay``) may arrive while a request waits for its reply. They are
  never dropped: the wait sets them aside, in order, and ``receive``, ``expect`` and
  ``wait_for`` hand them out before reading the socket again. ``set_aside`` holds them until
  then.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Final

import trio
import trio_websocket

# How long a wait for a frame lasts unless the client or the call sets another.
DEFAULT_TIMEOUT_S: Final = 10.0


class ServerError(Exception):
    """The server answered with a frame other than the one expected."""

    def __init__(self, frame: dict[str, Any], expected: tuple[str, ...]) -> None:
        super().__init__(f"expected {'/'.join(expected)}, got {frame!r}")
        self.frame = frame


class ReplyTimeout(trio.TooSlowError):
    """No awaited frame arrived in time; ``awaited`` names it, ``timeout`` is the bound."""

    def __init__(self, awaited: str, timeout: float) -> None:
        super().__init__(f"no {awaited} within {timeout:g} s")
        self.awaited = awaited
        self.timeout = timeout


class JsonSocket:
    """One connection; frames are JSON objects.

    Args:
        ws: the open WebSocket.
        timeout: the bound of every wait in seconds (``math.inf`` for none); each call may
            give its own.
    """

    # Types of the frames the server sends unasked on this endpoint (see the module docstring).
    PUSHES: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.ws = ws
        self.timeout = timeout
        self.set_aside: deque[dict[str, Any]] = deque()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame, separators=(",", ":")))

    async def receive(self) -> dict[str, Any]:
        """The next frame: the oldest one set aside, else the next from the socket. Waits for
        ever; the waits below are bounded."""
        if self.set_aside:
            return self.set_aside.popleft()
        return await self._read()

    async def expect(
        self,
        *types: str,
        timeout: float | None = None,  # noqa: ASYNC109 (see the module docstring)
    ) -> dict[str, Any]:
        """The next frame (as ``receive`` has it), which must have one of ``types``.

        Raises:
            ServerError: the next frame has another type.
            ReplyTimeout: none came within ``timeout`` (the client's unless given).
        """
        limit = self._limit(timeout)
        with trio.move_on_after(limit):
            frame = await self.receive()
            if frame.get("type") not in types:
                raise ServerError(frame, types)
            return frame
        raise ReplyTimeout("/".join(types), limit)

    async def wait_for(
        self,
        frame_type: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (see the module docstring)
        **fields: Any,
    ) -> dict[str, Any]:
        """The first frame of ``frame_type`` whose ``fields`` have the given values: taken from
        the frames set aside, else read; pushes read meanwhile are set aside.

        Raises:
            ServerError: a frame that is neither the awaited one nor a push (an ``error``).
            ReplyTimeout: none came within ``timeout`` (the client's unless given).
        """
        return await self._wait((frame_type,), fields, timeout)

    async def ping(self) -> None:
        await self.send({"type": "ping"})
        await self._reply(("pong",))

    async def _wait(
        self,
        types: tuple[str, ...],
        fields: dict[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 (see the module docstring)
    ) -> dict[str, Any]:
        """``wait_for`` for a frame of any of ``types``: the oldest match set aside, else the
        next match read (pushes read meanwhile are set aside)."""
        for index, frame in enumerate(self.set_aside):
            if _matches(frame, types, fields):
                del self.set_aside[index]
                return frame
        return await self._reply(types, fields, self._limit(timeout))

    async def _reply(
        self,
        types: tuple[str, ...],
        fields: dict[str, Any] | None = None,
        limit: float | None = None,
    ) -> dict[str, Any]:
        """The next frame read of one of ``types`` with ``fields``; pushes read before it are
        set aside. Raises ``ServerError`` on any other frame, ``ReplyTimeout`` past ``limit``
        seconds (the client's ``timeout`` if not given)."""
        fields = fields or {}
        limit = self.timeout if limit is None else limit
        with trio.move_on_after(limit):
            while True:
                frame = await self._read()
                if _matches(frame, types, fields):
                    return frame
                if frame.get("type") in self.PUSHES:
                    self.set_aside.append(frame)
                    continue
                raise ServerError(frame, types)
        raise ReplyTimeout(_describe(types, fields), limit)

    async def _read(self) -> dict[str, Any]:
        message = await self.ws.get_message()
        frame = json.loads(message)
        if not isinstance(frame, dict):
            raise ValueError(f"not a JSON object: {message!r}")
        return frame

    def _limit(self, timeout: float | None) -> float:
        limit = self.timeout if timeout is None else timeout
        if not limit >= 0:  # NaN too
            raise ValueError(f"timeout must be a number of seconds >= 0, got {limit!r}")
        return limit


def _matches(frame: dict[str, Any], types: tuple[str, ...], fields: dict[str, Any]) -> bool:
    if frame.get("type") not in types:
        return False
    return all(frame.get(name) == value for name, value in fields.items())


def _describe(types: tuple[str, ...], fields: dict[str, Any]) -> str:
    """``chunk_data (chunkId='c1')``: what a wait was for, for its error."""
    what = "/".join(types)
    if fields:
        what += " (" + ", ".join(f"{name}={value!r}" for name, value in fields.items()) + ")"
    return what


@asynccontextmanager
async def open_json_socket(
    base_url: str, path: str, *, max_message_size: int = 1 << 20
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """Open ``path`` on ``base_url`` (``ws://host:port`` or ``http://…``)."""
    url = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    async with trio_websocket.open_websocket_url(
        url.rstrip("/") + path, max_message_size=max_message_size
    ) as ws:
        yield ws
