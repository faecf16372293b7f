"""Client for WebSocket ``/relay``: relay registry and rendezvous.

Example::

    async with connect_relay("ws://127.0.0.1:8080") as alice:
        await alice.register("alice-device-1", max_connections=20)
        relays = await alice.get_relays(5)
        result = await alice.register_rendezvous(daily_points=["p1"], dead_drop="sealed")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio_websocket

from zajel.client._socket import JsonSocket, open_json_socket


class RelayClient(JsonSocket):
    """One ``/relay`` connection, bound to a ``peerId`` once registered."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        super().__init__(ws)
        self.peer_id: str | None = None

    async def register(
        self, peer_id: str, *, max_connections: int = 20, public_key: str | None = None
    ) -> dict[str, Any]:
        """Bind this connection to ``peer_id``; returns the ``registered`` frame."""
        frame: dict[str, Any] = {
            "type": "register",
            "peerId": peer_id,
            "maxConnections": max_connections,
        }
        if public_key is not None:
            frame["publicKey"] = public_key
        await self.send(frame)
        reply = await self.expect("registered")
        self.peer_id = peer_id
        return reply

    async def update_load(self, connected_count: int) -> dict[str, Any]:
        await self.send({"type": "update_load", "connectedCount": connected_count})
        return await self.expect("load_updated")

    async def get_relays(self, count: int = 10) -> list[dict[str, Any]]:
        await self.send({"type": "get_relays", "count": count})
        relays: list[dict[str, Any]] = (await self.expect("relays"))["relays"]
        return relays

    async def heartbeat(self) -> int:
        """Refresh this relay's entry; returns the server's timestamp (epoch ms)."""
        await self.send({"type": "heartbeat"})
        timestamp: int = (await self.expect("heartbeat_ack"))["timestamp"]
        return timestamp

    async def register_rendezvous(
        self,
        *,
        daily_points: Sequence[str] = (),
        hourly_tokens: Sequence[str] = (),
        dead_drop: str | None = None,
        relay_id: str | None = None,
    ) -> dict[str, Any]:
        """Register meeting points and tokens; returns the ``rendezvous_result`` frame.

        ``rendezvous_match`` pushes that arrive first (for other peers' calls) are skipped;
        read them with ``receive`` when they matter.
        """
        frame: dict[str, Any] = {
            "type": "register_rendezvous",
            "dailyPoints": list(daily_points),
            "hourlyTokens": list(hourly_tokens),
        }
        if dead_drop is not None:
            frame["deadDrop"] = dead_drop
        if relay_id is not None:
            frame["relayId"] = relay_id
        await self.send(frame)
        while True:
            reply = await self.expect("rendezvous_result", "rendezvous_match")
            if reply["type"] == "rendezvous_result":
                return reply


@asynccontextmanager
async def connect_relay(
    base_url: str, *, path: str = "/relay", max_message_size: int = 1 << 20
) -> AsyncIterator[RelayClient]:
    """Open a ``/relay`` connection to ``base_url`` (``ws://host:port`` or ``http://…``)."""
    async with open_json_socket(base_url, path, max_message_size=max_message_size) as ws:
        yield RelayClient(ws)
