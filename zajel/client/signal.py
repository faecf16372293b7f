"""Client for WebSocket ``/signal``: register, pair, and exchange signals.

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
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio_websocket
from nacl.public import PrivateKey

from zajel.client._socket import JsonSocket, open_json_socket
from zajel.protocol.fields import PAIRING_CODE_ALPHABET, PAIRING_CODE_LENGTH


def random_pairing_code() -> str:
    """A fresh random pairing code."""
    return "".join(secrets.choice(PAIRING_CODE_ALPHABET) for _ in range(PAIRING_CODE_LENGTH))


def generate_public_key() -> str:
    """A fresh X25519 public key in the form ``register`` expects (standard base64)."""
    return base64.b64encode(bytes(PrivateKey.generate().public_key)).decode("ascii")


class SignalClient(JsonSocket):
    """One ``/signal`` connection."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        super().__init__(ws)
        self.code: str | None = None
        # The secret that lets this device reclaim its code after a disconnect (the reconnect
        # grace, docs/protocol/signaling.md): keep it, and never log it.
        self.reconnect_token: str | None = None

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
    base_url: str, *, path: str = "/signal", max_message_size: int = 1 << 20
) -> AsyncIterator[SignalClient]:
    """Open a ``/signal`` connection to ``base_url`` (``ws://host:port`` or ``http://…``)."""
    async with open_json_socket(base_url, path, max_message_size=max_message_size) as ws:
        yield SignalClient(ws)
