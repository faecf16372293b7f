"""HTTP routes of the AttestationRegistry (``docs/protocol/attestation.md``, "Requests").

Each route reads its body within the route's limit, decodes it with
``zajel.protocol.attestation`` and asks the ``attestation`` service; the reply becomes the
response. The release pipeline's routes (``upload-reference``, ``POST /attest/versions``) need
the bearer secret ``ZAJEL_CI_UPLOAD_SECRET`` and answer 503 while none is configured.
``POST /attest/register`` hands the registry the client's per-IP key, which new device ids are
counted by (docs/protocol/attestation.md, "Limits and timers").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from quart import Response
from quart_trio import QuartTrio

from zajel.config import Config
from zajel.protocol import attestation as protocol
from zajel.protocol.attestation import Policy
from zajel.services import Address
from zajel.services.attestation import (
    GetPolicy,
    Issued,
    PolicySet,
    ReferenceStored,
    Registered,
    Verified,
)
from zajel.web.http import authorize, json_response, read_body, serve_call


def add_attestation_routes(
    app: QuartTrio, config: Config, registry: Address, client_key: Callable[[], str]
) -> None:
    """``POST /attest/register``, ``/attest/upload-reference``, ``/attest/challenge``,
    ``/attest/verify``, and ``GET``/``POST /attest/versions``.

    ``client_key`` gives the requesting client's per-IP key (IPv6 by its /64).
    """

    def render(reply: Any) -> Response:
        if isinstance(reply, Registered):
            body: dict[str, Any] = {
                "status": "registered",
                "device": reply.device.to_json(),
                "version_status": reply.version_status,
            }
            if reply.recommended_version is not None:
                body["recommended_version"] = reply.recommended_version
            if reply.session_token is not None:
                body.update(attestation_mode="web_fallback", session_token=reply.session_token)
            return json_response(body)
        if isinstance(reply, Issued):
            regions = [
                {"index": index, "offset": offset, "length": length}
                for index, offset, length in reply.regions
            ]
            return json_response({"nonce": reply.nonce, "regions": regions})
        if isinstance(reply, Verified):
            if reply.session_token is not None:
                return json_response({"valid": True, "session_token": reply.session_token})
            return json_response({"valid": False, "error": reply.error})
        if isinstance(reply, ReferenceStored):
            return json_response({"success": True, "reference": reply.reference.to_json()})
        if isinstance(reply, PolicySet):
            return json_response({"success": True, "policy": reply.policy.to_json()})
        if isinstance(reply, Policy):
            return json_response(reply.to_json())
        raise TypeError(f"unexpected reply {type(reply).__name__}")

    @app.post("/attest/register")
    async def register() -> Response:
        async def decode() -> protocol.RegisterDevice:
            request = protocol.decode_register(await read_body(protocol.REGISTER_MAX_BYTES))
            return attrs.evolve(request, ip=client_key())

        return await serve_call(registry, decode, render)

    @app.post("/attest/upload-reference")
    async def upload_reference() -> Response:
        async def decode() -> protocol.UploadReference:
            authorize(config.ci_upload_secret, unset="CI upload not configured")
            body = await read_body(protocol.UPLOAD_MAX_BYTES)
            return protocol.decode_upload_reference(body)

        return await serve_call(registry, decode, render)

    @app.post("/attest/challenge")
    async def challenge() -> Response:
        async def decode() -> protocol.RequestChallenge:
            return protocol.decode_challenge(await read_body(protocol.CHALLENGE_MAX_BYTES))

        return await serve_call(registry, decode, render)

    @app.post("/attest/verify")
    async def verify() -> Response:
        async def decode() -> protocol.VerifyChallenge:
            return protocol.decode_verify(await read_body(protocol.VERIFY_MAX_BYTES))

        return await serve_call(registry, decode, render)

    @app.get("/attest/versions")
    async def get_versions() -> Response:
        async def decode() -> GetPolicy:
            return GetPolicy()

        return await serve_call(registry, decode, render)

    @app.post("/attest/versions")
    async def set_versions() -> Response:
        async def decode() -> Policy:
            authorize(config.ci_upload_secret, unset="Admin access not configured")
            return protocol.decode_policy(await read_body(protocol.VERSIONS_MAX_BYTES))

        return await serve_call(registry, decode, render)
