"""HTTP routes of the ServerRegistry (``docs/protocol/servers.md``, "Requests").

Each write route checks the bearer secret, reads the body within its limit, decodes it with
``zajel.protocol.servers`` and asks the ``servers`` service; the reply becomes the response.
"""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.routing import PathConverter

from zajel.bootstrap import SIGNATURE_HEADER
from zajel.config import Config
from zajel.protocol import servers as protocol
from zajel.services import Address
from zajel.services.servers import HeartbeatAccepted, Registered, SignedList, Unregistered
from zajel.web.http import authorize, json_response, read_body, serve_call


def add_server_routes(app: QuartTrio, config: Config, registry: Address) -> None:
    """``GET``/``POST /servers``, ``POST /servers/heartbeat``, ``DELETE /servers/{serverId}``."""
    development = config.env == "development"

    def check_secret() -> None:
        # docs/protocol/servers.md, "Authentication and environments": open only in development when
        # no secret is set.
        unset = None if development else "Server registry authentication not configured"
        authorize(config.server_registry_secret, unset=unset)

    def render(reply: Any) -> Response:
        if isinstance(reply, Registered):
            return json_response({"success": True, "server": reply.entry.to_json()})
        if isinstance(reply, HeartbeatAccepted):
            body = f'{{"success":true,"peers":{reply.peers_json}}}'
            return Response(body, content_type="application/json")
        if isinstance(reply, Unregistered):
            return json_response({"success": True})
        if isinstance(reply, SignedList):
            headers = {SIGNATURE_HEADER: reply.signature}
            return Response(reply.body, content_type="application/json", headers=headers)
        raise TypeError(f"unexpected reply {type(reply).__name__}")

    @app.get("/servers")
    async def list_servers() -> Response:
        async def decode() -> protocol.ListServers:
            return protocol.ListServers()

        return await serve_call(registry, decode, render)

    @app.post("/servers")
    async def register_server() -> Response:
        async def decode() -> protocol.RegisterServer:
            check_secret()
            body = await read_body(protocol.REGISTER_MAX_BYTES)
            return protocol.decode_register(body, allow_private=development)

        return await serve_call(registry, decode, render)

    @app.post("/servers/heartbeat")
    async def heartbeat() -> Response:
        async def decode() -> protocol.ServerHeartbeat:
            check_secret()
            return protocol.decode_heartbeat(await read_body(protocol.HEARTBEAT_MAX_BYTES))

        return await serve_call(registry, decode, render)

    # The id may hold an encoded "/", so the route takes all the rest of the path, and the id is
    # decoded from the raw path, strictly: an empty id, or one with a raw "/" (even a leading
    # one, "/servers//x"), gets the route's own 400, never a redirect or a 404.
    app.url_map.converters["rest_of_path"] = RestOfPath

    @app.delete("/servers/<rest_of_path:_server_id>")
    async def unregister_server(_server_id: str) -> Response:
        async def decode() -> protocol.UnregisterServer:
            check_secret()
            raw: bytes = request.scope.get("raw_path") or request.path.encode()
            # Leading slashes are folded into one, as werkzeug does for routing.
            raw = b"/" + raw.partition(b"?")[0].lstrip(b"/")
            prefix = b"/servers/"
            segment = raw[len(prefix) :] if raw.startswith(prefix) else b""
            return protocol.UnregisterServer(protocol.decode_server_id_path(segment))

        return await serve_call(registry, decode, render)


class RestOfPath(PathConverter):
    """All the rest of a path, whatever it holds: nothing, slashes (leading ones too), line
    breaks. The route checks it itself."""

    regex = r"[\s\S]*"
    part_isolating = False  # it spans "/": werkzeug would guess otherwise from the regex
