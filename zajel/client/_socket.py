"""What every endpoint's client shares: one WebSocket speaking JSON objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio_websocket


class ServerError(Exception):
    """The server answered with a frame other than the one expected."""

    def __init__(self, frame: dict[str, Any], expected: tuple[str, ...]) -> None:
        super().__init__(f"expected {'/'.join(expected)}, got {frame!r}")
        self.frame = frame


class JsonSocket:
    """One connection; frames are JSON objects and ``receive`` returns the next one."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame, separators=(",", ":")))

    async def receive(self) -> dict[str, Any]:
        message = await self.ws.get_message()
        frame = json.loads(message)
        if not isinstance(frame, dict):
            raise ValueError(f"not a JSON object: {message!r}")
        return frame

    async def expect(self, *types: str) -> dict[str, Any]:
        """The next frame, which must have one of ``types``; raises ``ServerError`` else."""
        frame = await self.receive()
        if frame.get("type") not in types:
            raise ServerError(frame, types)
        return frame

    async def ping(self) -> None:
        await self.send({"type": "ping"})
        await self.expect("pong")


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
