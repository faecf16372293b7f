"""Client for WebSocket ``/relay``: relay registry, rendezvous and chunk distribution
(``docs/protocol/relay.md``, ``docs/protocol/chunks.md``).

The server pushes ``rendezvous_match``, ``chunk_pull``, ``chunk_data`` and ``chunk_not_found``
whenever other peers cause them, so they may arrive while a request waits for its reply. The
request helpers set them aside instead of dropping them; the ``wait_*`` helpers take them from
there first (see ``zajel.client._socket``). Every wait is bounded by the client's ``timeout``;
``wait_for`` and ``expect`` take one of their own.

Example::

    async with connect_relay("ws://127.0.0.1:8080") as alice:
        await alice.register("alice-device-1", max_connections=20)
        relays = await alice.get_relays(5)
        result = await alice.register_rendezvous(daily_points=["p1"], dead_drop="sealed")
        await alice.announce_chunks({"chunk-7f3a": "route-19c2"}, channel_id="channel-news")
        pull = await alice.wait_chunk_pull()
        await alice.push_chunk(pull["chunkId"], {"v": 1, "payload": "…"})

    async with connect_relay("ws://127.0.0.1:8080") as bob:
        await bob.register("bob-laptop")
        chunk = await bob.fetch_chunk("chunk-7f3a", channel_id="channel-news")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import trio_websocket

from zajel.client._socket import DEFAULT_TIMEOUT_S, JsonSocket, open_json_socket


class RelayClient(JsonSocket):
    """One ``/relay`` connection, bound to a ``peerId`` once registered."""

    PUSHES: ClassVar[frozenset[str]] = frozenset(
        {"rendezvous_match", "chunk_pull", "chunk_data", "chunk_not_found"}
    )

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        super().__init__(ws, timeout=timeout)
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
        reply = await self._reply(("registered",))
        self.peer_id = peer_id
        return reply

    async def update_load(self, connected_count: int) -> dict[str, Any]:
        await self.send({"type": "update_load", "connectedCount": connected_count})
        return await self._reply(("load_updated",))

    async def get_relays(self, count: int = 10) -> list[dict[str, Any]]:
        await self.send({"type": "get_relays", "count": count})
        relays: list[dict[str, Any]] = (await self._reply(("relays",)))["relays"]
        return relays

    async def heartbeat(self) -> int:
        """Refresh this relay's entry; returns the server's timestamp (epoch ms)."""
        await self.send({"type": "heartbeat"})
        timestamp: int = (await self._reply(("heartbeat_ack",)))["timestamp"]
        return timestamp

    # -- rendezvous ----------------------------------------------------------------------

    async def register_rendezvous(
        self,
        *,
        daily_points: Sequence[str] = (),
        hourly_tokens: Sequence[str] = (),
        dead_drop: str | None = None,
        relay_id: str | None = None,
    ) -> dict[str, Any]:
        """Register meeting points and tokens; returns the ``rendezvous_result`` frame.

        ``rendezvous_match`` pushes that arrive before it (other peers' messages matching this
        peer's tokens) are set aside: ``wait_rendezvous_match`` returns them.
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
        return await self._reply(("rendezvous_result",))

    async def wait_rendezvous_match(self) -> dict[str, Any]:
        """The next ``rendezvous_match`` frame (``{"type", "match": {"peerId", "relayId"?}}``)."""
        return await self.wait_for("rendezvous_match")

    # -- chunks (docs/protocol/chunks.md) ------------------------------------------------

    async def announce_chunks(
        self, chunks: Mapping[str, str], *, channel_id: str | None = None
    ) -> int:
        """Announce the chunks this peer holds (chunk id → routing hash); returns how many the
        server registered (invalid entries are skipped, not refused)."""
        frame: dict[str, Any] = {
            "type": "chunk_announce",
            "chunks": [
                {"chunkId": chunk_id, "routingHash": routing_hash}
                for chunk_id, routing_hash in chunks.items()
            ],
        }
        if channel_id is not None:
            frame["channelId"] = channel_id
        await self.send(frame)
        registered: int = (await self._reply(("chunk_announce_ack",)))["registered"]
        return registered

    async def request_chunk(self, chunk_id: str, *, channel_id: str | None = None) -> None:
        """Ask for a chunk. The server answers when it has it: ``chunk_data`` at once from its
        cache, or after a source's push; ``chunk_not_found`` meanwhile if no source is online.
        Wait with ``wait_chunk_data``."""
        frame: dict[str, Any] = {"type": "chunk_request", "chunkId": chunk_id}
        if channel_id is not None:
            frame["channelId"] = channel_id
        await self.send(frame)

    async def wait_chunk_data(self, chunk_id: str | None = None) -> dict[str, Any]:
        """The next ``chunk_data`` frame (of ``chunk_id`` if given): ``{"type", "chunkId",
        "data", "source": "relay"|"cache", "channelId"?}``. A ``chunk_not_found`` meanwhile is
        set aside: the request keeps waiting for a source."""
        fields: dict[str, Any] = {} if chunk_id is None else {"chunkId": chunk_id}
        return await self.wait_for("chunk_data", **fields)

    async def fetch_chunk(self, chunk_id: str, *, channel_id: str | None = None) -> dict[str, Any]:
        """``request_chunk`` then ``wait_chunk_data``: the chunk's ``chunk_data`` frame."""
        await self.request_chunk(chunk_id, channel_id=channel_id)
        return await self.wait_chunk_data(chunk_id)

    async def wait_chunk_pull(self, chunk_id: str | None = None) -> dict[str, Any]:
        """The next ``chunk_pull`` frame (of ``chunk_id`` if given): the server asks this peer
        to push that chunk, with ``push_chunk``."""
        fields: dict[str, Any] = {} if chunk_id is None else {"chunkId": chunk_id}
        return await self.wait_for("chunk_pull", **fields)

    async def push_chunk(self, chunk_id: str, data: Any) -> dict[str, Any]:
        """Send a chunk's content (any JSON value but ``null``); returns ``chunk_push_ack``.

        Raises:
            ServerError: the push was refused (``not_a_source``, ``chunk_too_large``, ...).
        """
        await self.send({"type": "chunk_push", "chunkId": chunk_id, "data": data})
        return await self._reply(("chunk_push_ack",), {"chunkId": chunk_id})


@asynccontextmanager
async def connect_relay(
    base_url: str,
    *,
    path: str = "/relay",
    max_message_size: int = 1 << 20,
    timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 (see zajel.client._socket)
) -> AsyncIterator[RelayClient]:
    """Open a ``/relay`` connection to ``base_url`` (``ws://host:port`` or ``http://…``);
    ``timeout`` bounds each wait of the client (seconds)."""
    async with open_json_socket(base_url, path, max_message_size=max_message_size) as ws:
        yield RelayClient(ws, timeout=timeout)
