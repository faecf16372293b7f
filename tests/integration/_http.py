"""A tiny HTTP/1.1 client over ``trio.open_tcp_stream``, enough for the integration tests.

One request per connection, sent with ``Connection: close``. The body is read by its
``Content-Length`` (or to the end of the stream when there is none), so a server that is slow
to close its side does not slow the tests down.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

MAX_HEAD_BYTES = 64 * 1024


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]  # names in lower case; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> HttpResponse:
    """Send one request to the server at ``url`` (``http://host:port``) and read the response."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(head + (body or b""))
        return await _read_response(stream, method)


async def get(url: str, path: str, **kwargs: Any) -> HttpResponse:
    return await request(url, "GET", path, **kwargs)


async def post(url: str, path: str, payload: Any = None, **kwargs: Any) -> HttpResponse:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return await request(url, "POST", path, headers=headers, body=body, **kwargs)


async def options(url: str, path: str, **kwargs: Any) -> HttpResponse:
    return await request(url, "OPTIONS", path, **kwargs)


async def _read_response(stream: trio.SocketStream, method: str) -> HttpResponse:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError(f"connection closed inside the response head: {buffer!r}")
        buffer += chunk
        if len(buffer) > MAX_HEAD_BYTES:
            raise ConnectionError("response head too large")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    assert "chunked" not in headers.get("transfer-encoding", ""), "chunked bodies unsupported"

    if method == "HEAD" or int(status) in (204, 304):
        return HttpResponse(int(status), headers, b"")
    length = headers.get("content-length")
    while length is None or len(rest) < int(length):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        rest += chunk
    if length is not None:
        assert len(rest) == int(length), (length, rest)
    return HttpResponse(int(status), headers, rest)


async def stats(url: str) -> dict[str, Any]:
    """The server's ``/stats`` body."""
    response = await get(url, "/stats")
    assert response.status == 200
    body: dict[str, Any] = response.json()
    return body


async def wait_stats(url: str, section: str, **expected: int) -> dict[str, Any]:
    """Poll ``/stats`` until ``section`` has the ``expected`` counts (a closed connection is
    cleaned up just after its socket closes); bounded by the caller's ``fail_after``."""
    while True:
        current: dict[str, Any] = (await stats(url))[section]
        if all(current[name] == value for name, value in expected.items()):
            return current
        await trio.sleep(0.01)
