"""HTTP routes of the ServerRegistry (``../shared/spec/http.md``, ServerRegistry).

Each route checks the bearer secret, reads the body within its limit, decodes it with
``zajel.protocol.servers`` and asks the ``servers`` service; the reply becomes the response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from zajel.bootstrap import SIGNATURE_HEADER
from zajel.config import Config
from zajel.protocol import errors
from zajel.protocol import servers as protocol
from zajel.protocol.errors import ProtocolError
from zajel.services import Address
from zajel.services.servers import HeartbeatAccepted, Registered, SignedList, Unregistered
from zajel.web.http import (
    bearer_matches,
    error_response,
    failure_response,
    json_response,
    read_body,
)


def add_server_routes(app: QuartTrio, config: Config, registry: Address) -> None:
    """``GET``/``POST /servers``, ``POST /servers/heartbeat``, ``DELETE /servers/{serverId}``."""
    development = config.env == "development"

    def authorize() -> None:
        """Raises ``ProtocolError`` unless the write may go ahead (http.md, Authentication)."""
        secret = config.server_registry_secret
        if secret is None:
            if development:
                return
            raise ProtocolError(
                errors.NOT_CONFIGURED, "Server registry authentication not configured"
            )
        if not bearer_matches(secret):
            raise errors.unauthorized()

    async def write(decode: Callable[[], Any]) -> Any:
        """Authorize, decode (which may read the body), and ask the registry."""
        authorize()
        return await registry.call(await decode())

    async def respond(decode: Callable[[], Any]) -> Response:
        try:
            reply = await write(decode)
        except ProtocolError as error:
            return error_response(error)
        failure = failure_response(reply)
        if failure is not None:
            return failure
        if isinstance(reply, Registered):
            return json_response({"success": True, "server": reply.entry.to_json()})
        if isinstance(reply, HeartbeatAccepted):
            body = f'{{"success":true,"peers":{reply.peers_json}}}'
            return Response(body, content_type="application/json")
        if isinstance(reply, Unregistered):
            return json_response({"success": True})
        raise TypeError(f"unexpected reply {type(reply).__name__}")

    @app.get("/servers")
    async def list_servers() -> Response:
        reply = await registry.call(protocol.ListServers())
        failure = failure_response(reply)
        if failure is not None:
            return failure
        assert isinstance(reply, SignedList)
        return Response(
            reply.body,
            content_type="application/json",
            headers={SIGNATURE_HEADER: reply.signature},
        )

    @app.post("/servers")
    async def register_server() -> Response:
        async def decode() -> protocol.RegisterServer:
            body = await read_body(protocol.REGISTER_MAX_BYTES)
            return protocol.decode_register(body, allow_private=development)

        return await respond(decode)

    @app.post("/servers/heartbeat")
    async def heartbeat() -> Response:
        async def decode() -> protocol.ServerHeartbeat:
            return protocol.decode_heartbeat(await read_body(protocol.HEARTBEAT_MAX_BYTES))

        return await respond(decode)

    # The id may hold an encoded "/", so the route takes the rest of the path and the id is
    # decoded from the raw path, strictly.
    @app.delete("/servers/<path:_server_id>")
    async def unregister_server(_server_id: str) -> Response:
        async def decode() -> protocol.UnregisterServer:
            raw: bytes = request.scope.get("raw_path") or request.path.encode()
            prefix = b"/servers/"
            segment = raw.partition(b"?")[0][len(prefix) :] if raw.startswith(prefix) else b""
            return protocol.UnregisterServer(protocol.decode_server_id_path(segment))

        return await respond(decode)
