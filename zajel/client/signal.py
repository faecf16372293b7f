"""Client for WebSocket ``/signal``: register, pair, exchange signals, and speak the channel
dialect of the apps (docs/protocol/signaling.md, docs/protocol/channels.md).

The server pushes frames whenever other connections cause them (``pair_incoming``, relayed
signals, ``chunk_available``, ``chunk_pull``, ``chunk_data``, ``upstream-message``,
``stream-*``: ``SignalClient.PUSHES``), so they may arrive while a call waits for its reply.
The calls set them aside instead of dropping them, and the ``wait_*`` calls take them from
there first (see ``zajel.client._socket``). Every wait is bounded by the client's ``timeout``
(``DEFAULT_TIMEOUT_S`` unless given) and raises ``ReplyTimeout`` past it; an ``error`` frame in
place of a reply raises ``ServerError``, and a ``chunk_error`` raises ``ChunkUnavailable``.

Channel calls need a registered connection. ``peerId`` is optional on the wire: a client made
with ``send_peer_id=True`` sends its pairing code as ``peerId`` on every chunk message, as the
apps do; otherwise it is left out.

Example::

    key = generate_public_key()
    async with connect_signal("ws://127.0.0.1:8080") as alice:
        await alice.register("ABC234", key)
        await alice.pair_request("XYZ789")
        matched = await alice.expect("pair_matched")
        await alice.signal("offer", "XYZ789", {"sdp": "…"})
        token = alice.reconnect_token  # a secret: keep it, never log it

    # The connection dropped: within the 30 s reconnect grace, from any network, the same code,
    # key and token get the matches back (the partners get ``peer_joined``).
    async with connect_signal("ws://127.0.0.1:8080") as alice:
        await alice.register("ABC234", key, reconnect_token=token)

Channels: an owner publishes, a subscriber fetches (and answers upstream)::

    async with connect_signal(url) as owner, connect_signal(url) as reader:
        await owner.register(random_pairing_code(), generate_public_key())
        await owner.own_channel("news")
        await reader.register(random_pairing_code(), generate_public_key())
        await reader.subscribe("news")

        await owner.publish("news", {"c1": {"encrypted_payload": "…"}})
        available = await reader.wait_chunk_available("news")  # chunkIds ["c1"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner.serve_pulls, {"c1": {"encrypted_payload": "…"}}, count=1)
            chunk = await reader.fetch_chunk("c1", "news")  # chunk["data"], chunk["source"]

        await reader.upstream("news", {"id": "up_1", "type": "reply"}, ephemeral_key)
        forwarded = await owner.wait_upstream("news")

        await owner.start_stream("s1", "news", "Live")
        await owner.send_stream_frame("s1", "news", {"seq": 0, "data": "…"})
        event = await reader.wait_stream_event("news")  # stream-start, then stream-frame
        await owner.end_stream("s1", "news")
"""

from __future__ import annotations

import base64
import math
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import trio
import trio_websocket
from nacl.public import PrivateKey

from zajel.client._socket import (
    DEFAULT_TIMEOUT_S,
    JsonSocket,
    ReplyTimeout,
    ServerError,
    open_json_socket,
)
from zajel.protocol.channels import ANNOUNCE_MAX_DEFAULT
from zajel.protocol.fields import PAIRING_CODE_ALPHABET, PAIRING_CODE_LENGTH
from zajel.protocol.signaling import RELAY_TYPES

# The frames of a live stream, as a subscriber gets them.
STREAM_EVENTS = ("stream-start", "stream-frame", "stream-end")


def random_pairing_code() -> str:
    """A fresh random pairing code."""
    return "".join(secrets.choice(PAIRING_CODE_ALPHABET) for _ in range(PAIRING_CODE_LENGTH))


def generate_public_key() -> str:
    """A fresh X25519 public key in the form ``register`` expects (standard base64)."""
    return base64.b64encode(bytes(PrivateKey.generate().public_key)).decode("ascii")


class ChunkUnavailable(ServerError):
    """The server answered a chunk request with ``chunk_error``: no source is online for it, or
    the cached chunk belongs to another channel. ``chunk_id`` and ``reason`` (the frame's
    ``error``) say which and why; ``frame`` is the frame."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(frame, ("chunk_data",))
        self.chunk_id: Any = frame.get("chunkId")
        self.reason: Any = frame.get("error")
        self.args = (f"chunk {self.chunk_id!r} unavailable: {self.reason}",)


class SignalClient(JsonSocket):
    """One ``/signal`` connection.

    Args:
        ws: the open WebSocket.
        timeout: the bound of every wait in seconds; each ``wait_for``/``expect`` may give its
            own.
        send_peer_id: send the registered pairing code as ``peerId`` on chunk messages (as the
            apps do; the server only checks that it matches).
    """

    PUSHES: ClassVar[frozenset[str]] = frozenset(
        {
            # pairing and relayed signals (docs/protocol/signaling.md, "Server → client")
            "pair_incoming",
            "pair_matched",
            "pair_rejected",
            "pair_expiring",
            "pair_timeout",
            "pair_error",
            "peer_left",
            "peer_joined",
            *RELAY_TYPES,  # offer, answer, ice_candidate and the call_* signals
            # channels (docs/protocol/channels.md)
            "upstream-message",
            *STREAM_EVENTS,
            "chunk_available",
            "chunk_pull",
            "chunk_pulling",
            "chunk_data",
            "chunk_error",
        }
    )

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        send_peer_id: bool = False,
    ) -> None:
        super().__init__(ws, timeout=timeout)
        self.code: str | None = None
        # The secret that lets this device reclaim its code after a disconnect (the reconnect
        # grace, docs/protocol/signaling.md): keep it, and never log it.
        self.reconnect_token: str | None = None
        self.send_peer_id = send_peer_id

    async def register(
        self, code: str, public_key: str | None = None, *, reconnect_token: str | None = None
    ) -> dict[str, Any]:
        """Claim ``code``; the ``registered`` reply.

        To reclaim a code after a dropped connection, pass the same ``public_key`` and the
        ``reconnect_token`` the earlier connection kept. Raises ``ServerError`` when the server
        answers with anything else (``pairing_code_in_use``, ``invalid_field``).
        """
        frame: dict[str, Any] = {"type": "register", "pairingCode": code}
        if public_key is not None:
            frame["publicKey"] = public_key
        if reconnect_token is not None:
            frame["reconnectToken"] = reconnect_token
        await self.send(frame)
        reply = await self.expect("registered")
        self.code = code
        token = reply.get("reconnectToken")
        self.reconnect_token = token if isinstance(token, str) else None
        return reply

    async def pair_request(self, target: str, proposed_name: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "pair_request", "targetCode": target}
        if proposed_name is not None:
            frame["proposedName"] = proposed_name
        await self.send(frame)

    async def pair_response(self, requester: str, accepted: bool) -> None:
        await self.send({"type": "pair_response", "targetCode": requester, "accepted": accepted})

    async def signal(self, kind: str, target: str, payload: dict[str, Any]) -> None:
        """Send ``offer``/``answer``/``ice_candidate``/``call_*`` to a matched peer."""
        await self.send({"type": kind, "target": target, "payload": payload})

    # -- channels (docs/protocol/channels.md) -------------------------------------------------

    async def own_channel(self, channel_id: str) -> dict[str, Any]:
        """Become the owner of ``channel_id``; the ``channel-owner-registered`` reply.

        The upstream messages queued while the channel had no owner come before the reply: they
        are set aside, and ``wait_upstream`` returns them, oldest first.

        Raises:
            ServerError: ``channel_owned`` (another connection owns it, or it is held for its
                owner's key), ``rate_limited``, ``not_registered``.
        """
        await self.send({"type": "channel-owner-register", "channelId": channel_id})
        return await self._reply(("channel-owner-registered",), {"channelId": channel_id})

    async def subscribe(self, channel_id: str) -> dict[str, Any]:
        """Follow ``channel_id`` (idempotent); the ``channel-subscribed`` reply.

        A ``stream-start`` (a live stream) and a ``chunk_available`` (the cached chunks, oldest
        first) may follow it: ``wait_stream_event`` and ``wait_chunk_available`` return them.
        """
        await self.send({"type": "channel-subscribe", "channelId": channel_id})
        return await self._reply(("channel-subscribed",), {"channelId": channel_id})

    async def unsubscribe(self, channel_id: str) -> dict[str, Any]:
        """Stop following ``channel_id`` (idempotent); the ``channel-unsubscribed`` reply."""
        await self.send({"type": "channel-unsubscribe", "channelId": channel_id})
        return await self._reply(("channel-unsubscribed",), {"channelId": channel_id})

    async def announce_chunks(
        self, channel_id: str, chunks: Iterable[str | tuple[str, str]]
    ) -> dict[str, Any]:
        """Announce that this connection holds ``chunks`` of ``channel_id`` (chunk ids, or
        ``(chunkId, routingHash)`` pairs; at most 100 by default); the ``chunk_announce_ack``
        (``registered``: how many the server took). When this connection owns the channel,
        its other subscribers get ``chunk_available``."""
        entries = []
        for chunk in chunks:
            if isinstance(chunk, str):
                entries.append({"chunkId": chunk})
            else:
                entries.append({"chunkId": chunk[0], "routingHash": chunk[1]})
        await self.send(
            self._chunk_frame(
                {"type": "chunk_announce", "channelId": channel_id, "chunks": entries}
            )
        )
        return await self._reply(("chunk_announce_ack",))

    async def push_chunk(self, chunk_id: str, channel_id: str, data: Any) -> dict[str, Any]:
        """Send a chunk's content (a JSON object, or a JSON string); the ``chunk_push_ack``
        (``cached``, ``servedCount``: how many waiting requesters it reached).

        Raises:
            ServerError: ``not_a_source`` (neither announced nor pulled), ``chunk_too_large``.
        """
        frame = {"type": "chunk_push", "chunkId": chunk_id, "channelId": channel_id, "data": data}
        await self.send(self._chunk_frame(frame))
        return await self._reply(("chunk_push_ack",), {"chunkId": chunk_id})

    async def publish(
        self, channel_id: str, chunks: Mapping[str, Any], *, proactive: bool = False
    ) -> int:
        """Announce ``chunks`` (chunk id → data) of ``channel_id``, in announces of at most 100;
        how many the server registered. The data stays with this client: answer the pulls
        with ``serve_pulls``.

        With ``proactive``, also push each chunk at once, as the apps do so that the server
        caches it for late subscribers. A pull that crossed such a push is answered by it (the
        server ended the pull when it took the push), so it is not kept.

        Raises:
            ServerError: a refused announce or push.
        """
        ids = list(chunks)
        registered = 0
        for start in range(0, len(ids), ANNOUNCE_MAX_DEFAULT):
            ack = await self.announce_chunks(channel_id, ids[start : start + ANNOUNCE_MAX_DEFAULT])
            registered += ack["registered"]
        if proactive:
            for chunk_id in ids:
                await self.push_chunk(chunk_id, channel_id, chunks[chunk_id])
            pushed = set(ids)
            self.set_aside = deque(
                frame
                for frame in self.set_aside
                if not (frame.get("type") == "chunk_pull" and frame.get("chunkId") in pushed)
            )
        return registered

    async def request_chunk(self, chunk_id: str, channel_id: str) -> dict[str, Any]:
        """Ask for a chunk of ``channel_id``; the server's first answer, which is either the
        ``chunk_data`` itself (``"source": "cache"``) or ``chunk_pulling`` (a source is asked:
        the data follows, ``wait_chunk_data`` returns it). ``chunk_pulling`` comes just before
        the data, or a second after the request if the data takes longer.

        It waits for that answer so that a refusal is raised here, at the request it
        concerns. To have many requests in flight at once, as the apps do, send
        the ``chunk_request`` frames with ``send`` and read every answer with ``receive``.

        Raises:
            ChunkUnavailable: ``chunk_error``: no source online, or the cached chunk belongs
                to another channel.
            ServerError: ``rate_limited`` (too many requests waiting), ``not_registered``.
        """
        frame = {"type": "chunk_request", "chunkId": chunk_id, "channelId": channel_id}
        await self.send(self._chunk_frame(frame))
        answer = await self._reply(
            ("chunk_data", "chunk_pulling", "chunk_error"), {"chunkId": chunk_id}
        )
        if answer["type"] == "chunk_error":
            raise ChunkUnavailable(answer)
        return answer

    async def fetch_chunk(self, chunk_id: str, channel_id: str) -> dict[str, Any]:
        """``request_chunk``, then ``wait_chunk_data`` unless the answer was the data: the
        chunk's ``chunk_data`` frame (``{"type", "chunkId", "data", "source", "channelId"}``).

        Raises:
            ChunkUnavailable: the request was refused, or the chunk turned out to belong to
                another channel.
            ReplyTimeout: no answer, or no data, within the client's timeout (each).
        """
        answer = await self.request_chunk(chunk_id, channel_id)
        if answer["type"] == "chunk_data":
            return answer
        return await self.wait_chunk_data(chunk_id)

    async def wait_chunk_data(self, chunk_id: str | None = None) -> dict[str, Any]:
        """The next ``chunk_data`` (of ``chunk_id`` if given).

        Raises:
            ChunkUnavailable: a ``chunk_error`` (of ``chunk_id`` if given) came first.
        """
        fields = {} if chunk_id is None else {"chunkId": chunk_id}
        frame = await self._wait(("chunk_data", "chunk_error"), fields)
        if frame["type"] == "chunk_error":
            raise ChunkUnavailable(frame)
        return frame

    async def wait_chunk_available(self, channel_id: str | None = None) -> dict[str, Any]:
        """The next ``chunk_available`` (of ``channel_id`` if given): ``{"type", "channelId",
        "chunkIds"}``."""
        fields = {} if channel_id is None else {"channelId": channel_id}
        return await self._wait(("chunk_available",), fields)

    async def wait_chunk_pull(self, chunk_id: str | None = None) -> dict[str, Any]:
        """The next ``chunk_pull`` (of ``chunk_id`` if given): ``{"type", "chunkId",
        "channelId"}``; answer it with ``push_chunk``."""
        fields = {} if chunk_id is None else {"chunkId": chunk_id}
        return await self._wait(("chunk_pull",), fields)

    async def serve_pulls(
        self,
        chunks: Mapping[str, Any],
        *,
        count: int | None = None,
        pulled: Counter[str] | None = None,
    ) -> int:
        """Answer every ``chunk_pull`` of a chunk in ``chunks`` (chunk id → data) with its
        ``chunk_push``, as a source does; how many pulls it answered.

        Pulls set aside are answered first. The pushes go out without waiting for their
        acknowledgements (a source answers many pulls at once); the ``chunk_push_ack`` frames
        of its pushes are taken in as they come. Every other frame, pulls of other chunks
        included, is set aside. While it runs, nothing else may read from this client.

        Args:
            chunks: the data of each chunk this source holds.
            count: return once this many pulls are answered and their pushes acknowledged;
                each wait is then bounded by the client's timeout. Without it, it serves
                until cancelled (the acknowledgements of its last pushes may then stay unread).
            pulled: if given, counts the pulls answered, by chunk id.

        Raises:
            ServerError: an ``error`` frame (a push refused: ``chunk_too_large``, ...).
            ReplyTimeout: with ``count``, no frame came within the client's timeout.
        """
        served = 0
        unacked: Counter[str] = Counter()

        def wanted(frame: dict[str, Any]) -> bool:
            return (
                frame.get("type") == "chunk_pull"
                and frame.get("chunkId") in chunks
                and (count is None or served < count)
            )

        async def answer(pull: dict[str, Any]) -> None:
            nonlocal served
            chunk_id = pull["chunkId"]
            frame = {
                "type": "chunk_push",
                "chunkId": chunk_id,
                "channelId": pull.get("channelId"),
                "data": chunks[chunk_id],
            }
            await self.send(self._chunk_frame(frame))
            served += 1
            unacked[chunk_id] += 1
            if pulled is not None:
                pulled[chunk_id] += 1

        kept: deque[dict[str, Any]] = deque()
        while self.set_aside:
            earlier = self.set_aside.popleft()
            if wanted(earlier):
                await answer(earlier)
            else:
                kept.append(earlier)
        self.set_aside = kept
        limit = math.inf if count is None else self.timeout
        while count is None or served < count or unacked:
            frame: dict[str, Any] | None = None
            with trio.move_on_after(limit):
                frame = await self._read()
            if frame is None:
                raise ReplyTimeout("chunk_pull/chunk_push_ack", limit)
            kind = frame.get("type")
            if kind == "chunk_push_ack" and frame.get("chunkId") in unacked:
                chunk_id = frame["chunkId"]
                unacked[chunk_id] -= 1
                if not unacked[chunk_id]:
                    del unacked[chunk_id]
            elif wanted(frame):
                await answer(frame)
            elif kind == "error":
                raise ServerError(frame, ("chunk_push_ack",))
            else:
                self.set_aside.append(frame)
        return served

    async def upstream(
        self, channel_id: str, message: dict[str, Any], ephemeral_public_key: str
    ) -> dict[str, Any]:
        """Send ``message`` (an object; its ``id`` is echoed) to the owner of ``channel_id``,
        or to its queue while no owner is online; the ``upstream-ack``.

        Raises:
            ServerError: ``not_subscribed``, ``rate_limited`` (30 a minute per connection).
        """
        frame = {
            "type": "upstream-message",
            "channelId": channel_id,
            "message": message,
            "ephemeralPublicKey": ephemeral_public_key,
        }
        await self.send(frame)
        return await self._reply(("upstream-ack",), {"channelId": channel_id})

    async def wait_upstream(self, channel_id: str | None = None) -> dict[str, Any]:
        """The next ``upstream-message`` to this owner (of ``channel_id`` if given):
        ``{"type", "channelId", "message", "ephemeralPublicKey"}``."""
        fields = {} if channel_id is None else {"channelId": channel_id}
        return await self._wait(("upstream-message",), fields)

    async def start_stream(self, stream_id: str, channel_id: str, title: str) -> dict[str, Any]:
        """Start a live stream on an owned channel (replacing a live one); the
        ``stream-started`` reply (``subscriberCount``: how many got ``stream-start``).

        Raises:
            ServerError: ``not_owner``.
        """
        await self.send(
            {"type": "stream-start", "streamId": stream_id, "channelId": channel_id, "title": title}
        )
        return await self._reply(("stream-started",), {"channelId": channel_id})

    async def send_stream_frame(self, stream_id: str, channel_id: str, frame: Any) -> None:
        """Send one frame (any JSON value) of the live stream to every subscriber. The server
        never answers: a frame from anyone but the stream's owner is dropped without a word."""
        await self.send(
            {"type": "stream-frame", "streamId": stream_id, "channelId": channel_id, "frame": frame}
        )

    async def end_stream(self, stream_id: str, channel_id: str) -> dict[str, Any]:
        """End the live stream; the ``stream-ended`` reply.

        Raises:
            ServerError: ``not_owner`` (not the owner, or no live stream).
        """
        await self.send({"type": "stream-end", "streamId": stream_id, "channelId": channel_id})
        return await self._reply(("stream-ended",), {"channelId": channel_id})

    async def wait_stream_event(self, channel_id: str | None = None) -> dict[str, Any]:
        """The next ``stream-start``, ``stream-frame`` or ``stream-end`` to this subscriber (of
        ``channel_id`` if given), in the order the server sent them."""
        fields = {} if channel_id is None else {"channelId": channel_id}
        return await self._wait(STREAM_EVENTS, fields)

    def _chunk_frame(self, frame: dict[str, Any]) -> dict[str, Any]:
        """``frame`` with this connection's ``peerId`` when the client sends it."""
        if self.send_peer_id and self.code is not None:
            frame["peerId"] = self.code
        return frame


async def pair(requester: SignalClient, responder: SignalClient) -> None:
    """Run a full consent pairing between two registered clients."""
    if requester.code is None or responder.code is None:
        raise ValueError("both clients must register before pairing")
    await requester.pair_request(responder.code)
    await responder.expect("pair_incoming")
    await responder.pair_response(requester.code, True)
    await requester.expect("pair_matched")
    await responder.expect("pair_matched")


@asynccontextmanager
async def connect_signal(
    base_url: str,
    *,
    path: str = "/signal",
    max_message_size: int = 1 << 20,
    timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 (see zajel.client._socket)
    send_peer_id: bool = False,
) -> AsyncIterator[SignalClient]:
    """Open a ``/signal`` connection to ``base_url`` (``ws://host:port`` or ``http://…``);
    ``timeout`` bounds each wait of the client (seconds); ``send_peer_id`` see
    ``SignalClient``."""
    async with open_json_socket(base_url, path, max_message_size=max_message_size) as ws:
        yield SignalClient(ws, timeout=timeout, send_peer_id=send_peer_id)
