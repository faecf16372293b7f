"""What every JSON route shares: bounded bodies, bearer secrets, and error replies rendered
from one table (``docs/protocol/conventions.md``, "Errors")."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from quart import Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.errors import ProtocolError
from zajel.services import Address, ServiceFailure, StoreFailure
from zajel.services._mailbox import Busy

log = logging.getLogger("zajel.web")

# The HTTP status of each error code: the one place the two meet.
HTTP_STATUS: Final = {
    errors.INVALID_BODY: 400,
    errors.INVALID_FIELD: 400,
    errors.UNAUTHORIZED: 401,
    errors.FORBIDDEN: 403,
    errors.NOT_FOUND: 404,
    errors.BODY_TOO_LARGE: 413,
    errors.TOO_MANY: 429,
    errors.REGISTRY_FULL: 503,
    errors.NOT_CONFIGURED: 503,
    errors.STORE_UNAVAILABLE: 503,
    errors.BUSY: 503,
}
# Seconds a client is asked to wait before it tries again after a ``busy`` 503.
BUSY_RETRY_AFTER_S: Final = 1


def json_response(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def error_response(error: ProtocolError) -> Response:
    """``{"error": <message>}`` with the status of ``error.code``; the refusal is logged."""
    status = HTTP_STATUS.get(error.code, 400)
    log.info(
        "request refused",
        extra=context(method=request.method, path=request.path, status=status, error=error.message),
    )
    response = json_response({"error": error.message}, status)
    if error.code == errors.BUSY:
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
    return response


def failure_response(reply: Any) -> Response | None:
    """The response for a service that could not do the work, or ``None`` for a real reply."""
    if isinstance(reply, ProtocolError):
        return error_response(reply)
    if isinstance(reply, StoreFailure):
        return error_response(errors.store_unavailable())
    if isinstance(reply, ServiceFailure):
        return json_response({"error": "Internal Server Error"}, 500)
    return None


async def read_body(limit: int) -> bytes:
    """The request body, refused before it is read when it announces more than ``limit`` bytes.

    Raises:
        ProtocolError: ``body_too_large`` past ``limit``.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise errors.body_too_large()
    try:
        data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    except RequestEntityTooLarge:  # past the app's own limit, without a Content-Length
        raise errors.body_too_large() from None
    if len(data) > limit:
        raise errors.body_too_large()
    return data


def bearer_matches(secret: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <secret>``, compared in constant
    time."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given = token.strip().encode("utf-8", "replace")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, secret.encode("utf-8"))


def authorize(secret: str | None, *, unset: str | None) -> None:
    """Let a write through only with ``Authorization: Bearer <secret>``.

    Without a secret configured, ``unset`` is the 503 message, or ``None`` to let every
    request through (the server registry in development).

    Raises:
        ProtocolError: ``not_configured`` (503) or ``unauthorized`` (401).
    """
    if secret is None:
        if unset is not None:
            raise ProtocolError(errors.NOT_CONFIGURED, unset)
        return
    if not bearer_matches(secret):
        raise errors.unauthorized()


async def serve_call(
    service: Address,
    decode: Callable[[], Awaitable[Any]],
    render: Callable[[Any], Response],
) -> Response:
    """The shape of every JSON route: ``decode`` (checks, reads and decodes the request; raises
    ``ProtocolError``), ask ``service``, and ``render`` its reply unless it is a refusal.
    A service whose inbox stays full answers 503 ``busy`` with ``Retry-After`` (docs/
    operations.md, "Limits and back-pressure")."""
    try:
        message = await decode()
    except ProtocolError as error:
        return error_response(error)
    try:
        reply = await service.call(message)
    except Busy:
        return error_response(errors.busy())
    failure = failure_response(reply)
    return failure if failure is not None else render(reply)
