"""``zajel serve``'s own WebSocket transport (zajel/web/fastws.py) on the real server: one port
for both paths (WebSocket handshakes on the endpoints here, everything else to hypercorn), and
what a malformed handshake or frame gets. The flows themselves run on both transports through
the ``server`` fixture."""

from __future__ import annotations

import contextlib
import zlib

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._raw import port_of
from zajel.web.fastws import is_endpoint_handshake

PATHS = ("/signal", "/relay")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def head(target: str, *extra: str, upgrade: bool = True) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"]
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("request_head", "ours"),
    [
        (head("/signal"), True),
        (head("/relay/x?y=1"), True),
        (head("/signalx"), False),
        (head("/health"), False),
        (head("/signal", upgrade=False), False),
        (head("/signal").replace(b"GET", b"POST"), False),
        (head("/signal")[:-4], False),  # the head is not complete
        (b"\x16\x03\x01\x00", False),  # a TLS hello
    ],
)
def test_which_requests_the_transport_takes(request_head, ours):
    assert is_endpoint_handshake(request_head, PATHS) is ours


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, return everything the server sends until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    received = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        received += chunk
    await stream.aclose()
    return received


@pytest.fixture
async def fast(nursery):
    running = await start_server(nursery, make_config(ws_transport="fast"))
    yield running
    running.stop.set()


async def test_http_shares_the_port(fast):
    with trio.fail_after(10):
        response = await _http.get(fast.url, "/health")
    assert response.status == 200


async def test_a_handshake_on_an_unknown_path_is_404_as_before(fast):
    with trio.fail_after(10):
        reply = await exchange(port_of(fast.url), head("/nope", f"Sec-WebSocket-Key: {KEY}"))
    assert reply.startswith(b"HTTP/1.1 404")


async def test_a_handshake_without_a_key_is_refused_and_closed(fast):
    with trio.fail_after(10):
        reply = await exchange(port_of(fast.url), head("/signal"))
    assert reply.startswith(b"HTTP/1.1 400")


async def test_a_frame_with_reserved_bits_closes_1002(fast):
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        await stream.send_all(head("/signal", f"Sec-WebSocket-Key: {KEY}"))
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += await stream.receive_some(65536)
        assert reply.startswith(b"HTTP/1.1 101")
        # FIN + RSV1 + text, masked, empty payload: no extension allows RSV1.
        await stream.send_all(bytes((0xC1, 0x80, 1, 2, 3, 4)))
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
        await stream.aclose()
    assert data[:1] == b"\x88"  # a close frame
    assert int.from_bytes(data[2:4], "big") == 1002


def masked_text(text: str) -> bytes:
    """A client's text frame (masked with a zero key, which leaves the payload as it is)."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def test_a_frame_sent_right_behind_the_handshake_is_not_lost(fast):
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        request = head("/signal", f"Sec-WebSocket-Key: {KEY}")
        await stream.send_all(request + masked_text('{"type":"ping"}'))
        reply = b""
        while b'{"type":"pong"}' not in reply:
            chunk = await stream.receive_some(65536)
            assert chunk, reply
            reply += chunk
        await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 101")


async def test_compression_is_declined_and_a_compressed_frame_is_never_inflated(fast):
    """The client offers permessage-deflate; the 101 agrees to no extension, so a frame marked
    compressed (RSV1) is a protocol error: a 200 KB deflate bomb (200 MB once inflated) closes
    the connection with 1002 without being inflated."""
    bomb = zlib.compress(b"\0" * (200 << 20), 9)[2:-4]  # raw deflate, as the extension sends it
    assert len(bomb) < 256 * 1024
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        await stream.send_all(head("/signal", f"Sec-WebSocket-Key: {KEY}", offer))
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += await stream.receive_some(65536)
        response, _, rest = reply.partition(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101")
        assert b"sec-websocket-extensions" not in response.lower()
        header = bytes((0xC1, 0x80 | 127)) + len(bomb).to_bytes(8, "big") + b"\0\0\0\0"
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(header + bomb)
        data = rest
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
        await stream.aclose()
    assert data[:1] == b"\x88"
    assert int.from_bytes(data[2:4], "big") == 1002
