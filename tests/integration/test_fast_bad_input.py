"""Bad input on ``zajel serve``'s own WebSocket transport (``ZAJEL_WS_TRANSPORT=fast``,
zajel/web/fastws.py), sent by raw TCP clients byte by byte.

What every case checks (docs/protocol/conventions.md, "Frames", "Close codes", "Limits"):
- a malformed handshake gets an HTTP status (the one hypercorn's transport answers for the same
  bytes), a head that never ends is closed within a bound, and a refused handshake never becomes
  a WebSocket;
- a frame that breaks RFC 6455 gets exactly one close frame with its code (1002, 1007, 1009),
  then the server closes the TCP connection; a binary frame gets ``invalid_message`` and the
  connection goes on; a client's close is echoed; nothing sent after a close is acted on;
- afterwards the server holds nothing for the connection (no socket, no task, no WebSocket in
  ``/stats``), a fresh client can still register, and nothing was logged as an error.

Timeouts are passed by jumping the mock clock the in-process server shares, never by waiting.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer, make_config, start_server
from tests.integration import _http
from tests.integration._raw import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Reply,
    ServerFrame,
    client_frame,
    close_payload,
    handshake,
    port_of,
    read_reply,
    read_to_end,
    receive_or_end,
    send_ignoring_close,
    server_frames,
    server_sockets,
    task_count,
)
from zajel.client import connect_signal, generate_public_key, random_pairing_code
from zajel.server import hypercorn_config
from zajel.web.fastws import HEAD_MAX, HEAD_TIMEOUT_S
from zajel.web.transport import EOF_GRACE_S, STALL_CHECK_S

LIMIT = 4096  # ws_max_message_bytes of these servers: small, so fragments can pass it cheaply
PING_TEXT = b'{"type":"ping"}'
PONG_TEXT = b'{"type":"pong"}'
# How long a server gets, in real time, to release a connection that has ended.
SETTLE_S = 3.0


# -- the servers ---------------------------------------------------------------------------


def fast_config(**overrides: Any) -> Any:
    return make_config(ws_transport="fast", ws_max_message_bytes=LIMIT, **overrides)


@pytest.fixture
async def fast(nursery: trio.Nursery) -> Any:
    running = await start_server(nursery, fast_config())
    yield running
    running.stop.set()


@pytest.fixture(autouse=True)
def _no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No case may make the server log an error (an exception that escaped a handler)."""
    yield
    errors = [
        record.getMessage()
        for phase in ("setup", "call")
        for record in caplog.get_records(phase)
        if record.levelno >= logging.ERROR
    ]
    assert errors == []


async def websocket_count(server: RunningServer) -> int:
    response = await _http.get(server.url, "/stats")
    assert response.status == 200
    return int(response.json()["connections"])


async def settle(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` for up to ``SETTLE_S`` (what the server holds outside trio signals
    nothing); the caller asserts what is left, so a failure shows it."""
    with trio.move_on_after(SETTLE_S):
        while not condition():  # noqa: ASYNC110 - polling state that nothing signals
            await trio.sleep(0.02)


async def assert_healthy(server: RunningServer, tasks: int) -> None:
    """Nothing is left of the bad connections (the test has closed its own sockets): no server
    socket, no task, no WebSocket counted; and a fresh client can register and ping."""
    port = port_of(server.url)
    await settle(lambda: not server_sockets(port))
    assert server_sockets(port) == Counter()
    await settle(lambda: task_count() <= tasks)
    assert task_count() <= tasks
    assert await websocket_count(server) == 0
    async with connect_signal(server.url) as client:
        await client.register(random_pairing_code(), generate_public_key())
        await client.ping()


# -- raw HTTP and WebSocket ----------------------------------------------------------------


async def upgraded(server: RunningServer, path: str = "/signal") -> trio.SocketStream:
    """A TCP stream whose WebSocket handshake on ``path`` was accepted."""
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server.url))
    await stream.send_all(handshake(path))
    reply = await read_reply(stream)
    assert reply.status == 101, reply
    assert reply.rest == b""
    return stream


async def frames_until_closed(stream: trio.SocketStream) -> list[ServerFrame]:
    """Every frame the server sends until it closes the TCP connection."""
    return server_frames(await read_to_end(stream))


async def next_frames(stream: trio.SocketStream, count: int) -> list[ServerFrame]:
    """The next ``count`` frames the server sends (no more than these may be in flight)."""
    data = b""
    while len(frames := server_frames_so_far(data)) < count:
        chunk = await receive_or_end(stream)
        assert chunk, f"the server closed after {frames}"
        data += chunk
    assert len(frames) == count, frames
    return frames


def server_frames_so_far(data: bytes) -> list[ServerFrame]:
    """The whole frames at the start of ``data``."""
    for end in range(len(data), -1, -1):
        try:
            return server_frames(data[:end])
        except (AssertionError, struct.error):
            continue
    return []


def text(payload: bytes, **options: Any) -> bytes:
    return client_frame(TEXT, payload, **options)


def ping_padded_to(size: int) -> bytes:
    """A ``ping`` message of exactly ``size`` bytes."""
    prefix, suffix = b'{"type":"ping","pad":"', b'"}'
    return prefix + b"p" * (size - len(prefix) - len(suffix)) + suffix


def fragments(message: bytes, opcode: int = TEXT, *, size: int = 1000) -> bytes:
    """``message`` as a fragmented message of ``size``-byte frames (RFC 6455, section 5.4)."""
    pieces = [message[at : at + size] for at in range(0, len(message), size)] or [b""]
    return b"".join(
        client_frame(opcode if index == 0 else CONT, piece, fin=index == len(pieces) - 1)
        for index, piece in enumerate(pieces)
    )


# -- malformed handshakes ------------------------------------------------------------------


async def status_of(port: int, data: bytes) -> int | None:
    """The status a server answers ``data`` with, sent as a connection's first bytes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send_ignoring_close, stream, data)
        return (await read_reply(stream)).status


async def exchange(port: int, data: bytes, clock: trio.testing.MockClock) -> tuple[Reply, bool]:
    """Send ``data`` as a connection's first bytes: the reply, and whether the server then
    closed the connection (past hypercorn's keep-alive timeout for a request it served)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send_ignoring_close, stream, data)
        reply = await read_reply(stream)
        closed = trio.Event()

        async def watch() -> None:
            if not reply.rest:
                await read_to_end(stream)
            closed.set()

        nursery.start_soon(watch)
        await trio.testing.wait_all_tasks_blocked()
        if not closed.is_set():
            clock.jump(hypercorn_config(make_config()).keep_alive_timeout + 1)
            with trio.move_on_after(SETTLE_S):
                await closed.wait()
        nursery.cancel_scope.cancel()
    return reply, closed.is_set()


@pytest.fixture
async def both(nursery: trio.Nursery) -> Any:
    """A server on each transport (the hypercorn one says what the answer should be)."""
    servers = {
        "fast": await start_server(nursery, fast_config()),
        "hypercorn": await start_server(
            nursery, make_config(ws_transport="hypercorn", data_dir="hypercorn-data")
        ),
    }
    yield servers
    for running in servers.values():
        running.stop.set()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(handshake(key=None), 400, id="no Sec-WebSocket-Key"),
        pytest.param(handshake(version="8"), 400, id="Sec-WebSocket-Version 8"),
        pytest.param(handshake(version=None), 400, id="no Sec-WebSocket-Version"),
        # Not a WebSocket handshake for either transport: a GET of /signal, which is 404.
        pytest.param(handshake(upgrade="foo"), 404, id="Upgrade foo"),
        pytest.param(
            handshake("/signal", *[f"X-Pad-{n}: {'a' * 1000}" for n in range(100)]),
            431,
            id="100 KiB of headers",
        ),
        pytest.param(handshake("/signal", "X-Pad : 1"), 400, id="a space before a colon"),
        pytest.param(b"\x00\x01\x02 not HTTP\r\n\r\n", 400, id="not HTTP"),
    ],
)
async def test_a_malformed_handshake_gets_what_hypercorn_answers(
    both: dict[str, RunningServer], clock: trio.testing.MockClock, request_bytes, status
):
    fast = both["fast"]
    tasks = task_count()
    with trio.fail_after(30):
        assert await status_of(port_of(both["hypercorn"].url), request_bytes) == status
        reply, closed = await exchange(port_of(fast.url), request_bytes, clock)
        assert (reply.status, closed) == (status, True), reply
        await assert_healthy(fast, tasks)


def padded(*headers: str) -> bytes:
    return handshake("/signal", *headers)


# About 20 KiB: over HEAD_MAX, within what hypercorn parses from one read (64 KiB).
TWENTY_KIB = padded(*[f"X-Pad-{n}: {'a' * 1000}" for n in range(HEAD_MAX // 1000 + 4)])


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([TWENTY_KIB], id="20 KiB of headers in one write"),
        pytest.param([TWENTY_KIB[:10_000], TWENTY_KIB[10_000:]], id="20 KiB in two writes"),
        pytest.param([padded("Cookie: " + "c=" * 4500)], id="a 9 KiB Cookie header"),
    ],
)
async def test_a_large_head_that_hypercorn_serves_is_served(both, clock, parts):
    """A head over ``HEAD_MAX`` but within hypercorn's own limit (64 KiB in one read) is a
    valid handshake on either transport: the fast one does not refuse what the other serves."""
    tasks = task_count()
    with trio.fail_after(10):
        statuses = {}
        for name, server in both.items():
            stream = await trio.open_tcp_stream("127.0.0.1", port_of(server.url))
            async with stream:
                for part in parts:
                    await stream.send_all(part)
                    # Each part arrives apart: the server reads it before the next is sent.
                    await trio.testing.wait_all_tasks_blocked()
                statuses[name] = (await read_reply(stream)).status
        assert statuses == {"fast": 101, "hypercorn": 101}
        # A connection whose client has gone is dropped after EOF_GRACE_S (hypercorn's too).
        clock.jump(EOF_GRACE_S + STALL_CHECK_S)
        await assert_healthy(both["fast"], tasks)


async def test_a_handshake_with_a_body_is_answered_400(fast, clock):
    """A handshake is a GET without a body (RFC 6455, section 4.1): one that announces a body is
    a bad request, answered 400 (hypercorn's own transport answers 400 as well)."""
    tasks = task_count()
    with trio.fail_after(30):
        request_bytes = handshake("/signal", "Content-Length: 5") + b"hello"
        reply, closed = await exchange(port_of(fast.url), request_bytes, clock)
        assert (reply.status, closed) == (400, True), reply
        await assert_healthy(fast, tasks)


REFUSED = [
    pytest.param(handshake(key=None), 400, id="no key"),
    pytest.param(handshake(version="8"), 400, id="version 8"),
    pytest.param(handshake(key="abc"), 400, id="a key that is not 16 bytes"),
]


@pytest.mark.parametrize(("request_bytes", "status"), REFUSED)
async def test_a_refused_handshake_never_becomes_a_websocket(fast, request_bytes, status):
    """docs/protocol/conventions.md, "Close codes": a refused handshake never becomes a WebSocket.
    The client here reads the refusal and keeps its socket open: the server must not hold the
    connection (or count it in ``/stats``) until the idle timeout."""
    tasks = task_count()
    with trio.fail_after(15):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        async with stream:
            await stream.send_all(request_bytes)
            reply = await read_reply(stream)
            assert reply.status == status
            assert await read_to_end(stream) == b""
            # The server has closed its side; what it ran for the connection must be gone
            # too (its socket may stay in FIN_WAIT2 without an owner until this one closes).
            await settle(lambda: task_count() <= tasks)
            assert task_count() <= tasks, "the refused connection's tasks still run"
            assert await websocket_count(fast) == 0
        await assert_healthy(fast, tasks)


@pytest.mark.parametrize(("request_bytes", "status"), REFUSED)
async def test_shutdown_with_a_refused_handshake_still_open(request_bytes, status):
    """Shutting down while the socket of a refused handshake is still open ends cleanly."""
    with trio.fail_after(15):
        streams = []
        try:
            async with trio.open_nursery() as nursery:
                server = await start_server(nursery, fast_config())
                streams.append(await trio.open_tcp_stream("127.0.0.1", port_of(server.url)))
                await streams[0].send_all(request_bytes)
                assert (await read_reply(streams[0])).status == status
                server.stop.set()
            # Reaching here means the server's nursery ended without an exception.
        finally:
            for stream in streams:
                await stream.aclose()


async def test_a_head_that_never_ends_is_closed(nursery, clock):
    """A client sends part of a handshake and stalls: after ``HEAD_TIMEOUT_S`` the head goes to
    hypercorn, whose keep-alive timeout closes the connection, as it does on its own transport."""
    partial = handshake()[:-20]
    servers = {
        "fast": await start_server(nursery, fast_config()),
        "hypercorn": await start_server(
            nursery, make_config(ws_transport="hypercorn", data_dir="hypercorn-data")
        ),
    }
    keep_alive = hypercorn_config(make_config()).keep_alive_timeout
    tasks = task_count()
    with trio.fail_after(HEAD_TIMEOUT_S + keep_alive + 30):
        received = {}
        for name, server in servers.items():
            stream = await trio.open_tcp_stream("127.0.0.1", port_of(server.url))
            async with stream, trio.open_nursery() as watching:
                await stream.send_all(partial)

                async def watch(name: str = name, stream: trio.SocketStream = stream) -> None:
                    received[name] = await read_to_end(stream)

                watching.start_soon(watch)
                await trio.testing.wait_all_tasks_blocked()
                clock.jump(HEAD_TIMEOUT_S + 0.5)
                await trio.testing.wait_all_tasks_blocked()
                clock.jump(keep_alive + 0.5)
                with trio.move_on_after(SETTLE_S):
                    while name not in received:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                assert name in received, f"{name}: the connection is still open"
        assert received["fast"] == received["hypercorn"] == b""
        await assert_healthy(servers["fast"], tasks)
    for server in servers.values():
        server.stop.set()


async def test_a_head_sent_one_byte_a_second_is_closed_within_a_bound(fast, clock):
    """A slow-loris head (a byte a second, never ending) is closed within the head timeout plus
    hypercorn's keep-alive timeout: sending does not extend either."""
    keep_alive = hypercorn_config(make_config()).keep_alive_timeout
    bound = HEAD_TIMEOUT_S + keep_alive + 2
    tasks = task_count()
    with trio.fail_after(bound + 30):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        start = trio.current_time()
        closed_at = None
        async with stream, trio.open_nursery() as watching:
            await stream.send_all(b"GET /signal HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

            async def watch() -> None:
                nonlocal closed_at
                await read_to_end(stream)
                closed_at = trio.current_time()

            watching.start_soon(watch)
            for _ in range(int(bound) + 5):
                await trio.testing.wait_all_tasks_blocked()
                if closed_at is not None:
                    break
                await send_ignoring_close(stream, b"a")
                await trio.testing.wait_all_tasks_blocked()
                clock.jump(1)
            with trio.move_on_after(SETTLE_S):
                while closed_at is None:  # noqa: ASYNC110
                    await trio.sleep(0.02)
        assert closed_at is not None
        assert closed_at - start <= bound
        await assert_healthy(fast, tasks)


# -- bad frames after a valid handshake ----------------------------------------------------

PROTOCOL_ERRORS = [
    ("reserved bit RSV1", text(PING_TEXT, rsv=4)),
    ("reserved bits RSV2 and RSV3", text(PING_TEXT, rsv=3)),
    ("an unmasked text frame", text(PING_TEXT, mask=None)),
    ("an unmasked ping", client_frame(PING, b"x", mask=None)),
    ("opcode 3 (reserved, data)", client_frame(3, b"x")),
    ("opcode 11 (reserved, control)", client_frame(11, b"x")),
    ("a ping of 126 bytes", client_frame(PING, b"p" * 126)),
    ("a close of 126 bytes", client_frame(CLOSE, close_payload(1000, b"r" * 124))),
    ("a fragmented ping", client_frame(PING, b"x", fin=False)),
    ("a fragmented pong", client_frame(PONG, b"x", fin=False)),
    ("a continuation without a start", client_frame(CONT, PING_TEXT)),
    ("a first continuation without a start", client_frame(CONT, b"{", fin=False)),
    ("a text frame inside a fragmented message", text(b"{", fin=False) + text(PING_TEXT)),
    ("a binary frame inside a fragmented text", text(b"{", fin=False) + client_frame(BINARY)),
    ("a close frame of one byte", client_frame(CLOSE, b"\x03")),
    ("a close code 1005 (never sent)", client_frame(CLOSE, close_payload(1005))),
    ("a close code 999", client_frame(CLOSE, close_payload(999))),
    ("a close code 5000", client_frame(CLOSE, close_payload(5000))),
]
INVALID_UTF8 = [
    ("0xff in a text frame", text(b'{"type":"ping","x":"\xff\xfe"}')),
    ("a surrogate (ED A0 80)", text(b'{"type":"ping","x":"\xed\xa0\x80"}')),
    ("an overlong slash (C0 AF)", text(b'{"type":"ping","x":"\xc0\xaf"}')),
    ("a text ending mid-character", text(b'{"type":"ping"}\xc3')),
    (
        "a character broken across fragments",
        text(b'{"type":"ping","x":"\xc3', fin=False) + client_frame(CONT, b'("}'),
    ),
    (
        "invalid bytes in a middle fragment",
        text(b'{"type":"ping","x":"', fin=False)
        + client_frame(CONT, b"\xff", fin=False)
        + client_frame(CONT, b'"}'),
    ),
    ("a close reason that is not UTF-8", client_frame(CLOSE, close_payload(1000, b"\xff"))),
]
TOO_BIG = [
    ("one frame of limit + 1 bytes", text(ping_padded_to(LIMIT + 1))),
    ("fragments of limit + 1 bytes in all", fragments(ping_padded_to(LIMIT + 1))),
    (
        "fragments over the limit, binary",
        fragments(b"b" * (LIMIT + 1), BINARY, size=LIMIT // 2),
    ),
    (
        "a frame that declares 1 MiB and never sends it",
        struct.pack("!BBQ", 0x81, 0xFF, 1 << 20) + b"\x00" * 4,
    ),
]


@pytest.mark.parametrize(
    ("frames", "code"),
    [pytest.param(data, 1002, id=name) for name, data in PROTOCOL_ERRORS]
    + [pytest.param(data, 1007, id=name) for name, data in INVALID_UTF8]
    + [pytest.param(data, 1009, id=name) for name, data in TOO_BIG],
)
async def test_a_bad_frame_gets_one_close_frame_then_the_connection_ends(fast, frames, code):
    tasks = task_count()
    with trio.fail_after(10):
        async with await upgraded(fast) as stream:
            await send_ignoring_close(stream, frames)
            received = await frames_until_closed(stream)
        assert [frame.opcode for frame in received] == [CLOSE], received
        assert received[0].close_code == code
        await assert_healthy(fast, tasks)


@pytest.mark.parametrize("path", ["/signal", "/relay"])
async def test_reserved_bits_on_either_endpoint_close_1002(fast, path):
    tasks = task_count()
    with trio.fail_after(10):
        async with await upgraded(fast, path) as stream:
            await stream.send_all(text(PING_TEXT, rsv=4))
            received = await frames_until_closed(stream)
        assert [(frame.opcode, frame.close_code) for frame in received] == [(CLOSE, 1002)]
        await assert_healthy(fast, tasks)


# What the frame builder and the limits allow: the same shapes, within the rules, are served.
# (name, frames, the payloads of the pongs that answer its pings)
SERVED = [
    ("a masked text frame", text(PING_TEXT), []),
    ("a ping of 125 bytes first", client_frame(PING, b"p" * 125) + text(PING_TEXT), [b"p" * 125]),
    ("a fragmented message with a ping inside", (
        text(b'{"type":', fin=False) + client_frame(PING, b"hi")
        + client_frame(CONT, b'"ping"', fin=False) + client_frame(CONT, b"}")
    ), [b"hi"]),
    ("a character split across fragments", (
        text(b'{"type":"ping","x":"\xc3', fin=False) + client_frame(CONT, b'\xa9"}')
    ), []),
    ("exactly the limit in one frame", text(ping_padded_to(LIMIT)), []),
    ("exactly the limit in fragments", fragments(ping_padded_to(LIMIT)), []),
    ("an empty first fragment", text(b"", fin=False) + client_frame(CONT, PING_TEXT), []),
    ("an unsolicited pong first", client_frame(PONG, b"x") + text(PING_TEXT), []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frames", "pongs"), [pytest.param(data, pongs, id=name) for name, data, pongs in SERVED]
)
async def test_frames_within_the_rules_are_served(fast, frames, pongs):
    tasks = task_count()
    with trio.fail_after(10):
        async with await upgraded(fast) as stream:
            await stream.send_all(frames)
            received = await next_frames(stream, len(pongs) + 1)
        assert received == [
            *(ServerFrame(True, PONG, payload) for payload in pongs),
            ServerFrame(True, TEXT, PONG_TEXT),
        ]
        await assert_healthy(fast, tasks)


@pytest.mark.parametrize("path", ["/signal", "/relay"])
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(client_frame(BINARY, PING_TEXT), id="a binary frame"),
        pytest.param(fragments(PING_TEXT, BINARY, size=4), id="a fragmented binary message"),
        pytest.param(client_frame(BINARY), id="an empty binary frame"),
    ],
)
async def test_a_binary_frame_gets_invalid_message_and_the_connection_goes_on(fast, path, frames):
    """docs/protocol/conventions.md, "Frames": a binary frame is answered ``invalid_message``
    and the connection stays open (as on hypercorn's transport, tests/integration/
    test_bad_input.py)."""
    tasks = task_count()
    with trio.fail_after(10):
        async with await upgraded(fast, path) as stream:
            await stream.send_all(frames + text(PING_TEXT))
            error, pong = await next_frames(stream, 2)
            assert error == ServerFrame(
                True,
                TEXT,
                b'{"type":"error","code":"invalid_message","message":"Invalid message format"}',
            )
            assert pong == ServerFrame(True, TEXT, PONG_TEXT)
        await assert_healthy(fast, tasks)


# -- how a connection ends -----------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(close_payload(1000), id="1000"),
        pytest.param(close_payload(1001, b"going away"), id="1001 with a reason"),
        pytest.param(close_payload(4321, "é".encode()), id="4321 with a UTF-8 reason"),
        pytest.param(b"", id="no code"),
    ],
)
async def test_a_client_close_is_echoed_then_the_connection_ends(fast, payload):
    tasks = task_count()
    with trio.fail_after(10):
        async with await upgraded(fast) as stream:
            await stream.send_all(client_frame(CLOSE, payload))
            received = await frames_until_closed(stream)
        assert received == [ServerFrame(True, CLOSE, payload)]
        await assert_healthy(fast, tasks)


async def test_a_close_inside_a_fragmented_message_fails_the_connection_1002(fast):
    """Control frames may come between the fragments of a message (RFC 6455, section 5.4), but a
    close there leaves the message incomplete: websockets fails the connection with 1002 where
    hypercorn's stack echoes the close. Either way the connection ends at once and nothing of
    the message is handled."""
    tasks = task_count()
    with trio.fail_after(10):
        async with await upgraded(fast) as stream:
            await stream.send_all(
                text(b'{"type":', fin=False) + client_frame(CLOSE, close_payload(1000))
            )
            received = await frames_until_closed(stream)
        assert [(frame.opcode, frame.close_code) for frame in received] == [(CLOSE, 1002)]
        await assert_healthy(fast, tasks)


@pytest.mark.parametrize(
    "before_eof",
    [
        pytest.param(b"", id="right after the handshake"),
        pytest.param(text(PING_TEXT)[:3], id="inside a frame header"),
        pytest.param(text(PING_TEXT)[:-3], id="inside a payload"),
        pytest.param(text(b'{"type":', fin=False), id="inside a fragmented message"),
    ],
)
async def test_eof_without_a_close_ends_the_connection(fast, before_eof):
    """The client half-closes without a close frame: the server sends no frame (the client can
    no longer read a close handshake's answer anyway, RFC 6455 section 7.1.5's 1006) and ends
    the connection, keeping nothing."""
    tasks = task_count()
    with trio.fail_after(10):
        async with await upgraded(fast) as stream:
            await stream.send_all(before_eof)
            await stream.send_eof()
            received = await frames_until_closed(stream)
        assert received == []
        await assert_healthy(fast, tasks)


async def test_a_reset_ends_the_connection(fast):
    """The client's socket is reset (SO_LINGER 0) while registered: the server ends the
    connection and keeps nothing."""
    tasks = task_count()
    with trio.fail_after(10):
        stream = await upgraded(fast)
        await stream.send_all(text(b'{"type":"register","pairingCode":"RSTRST"}'))
        (registered,) = await next_frames(stream, 1)
        assert b'"registered"' in registered.payload
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()
        await assert_healthy(fast, tasks)


# -- nothing is acted on after a close -----------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        pytest.param(client_frame(CLOSE, close_payload(1000)), 1000, id="a client close"),
        pytest.param(text(PING_TEXT, rsv=4), 1002, id="a protocol error"),
        pytest.param(text(ping_padded_to(LIMIT + 1)), 1009, id="a message too big"),
        pytest.param(text(b'{"type":"ping","x":"\xff"}'), 1007, id="invalid UTF-8"),
    ],
)
async def test_nothing_sent_after_a_close_is_acted_on(fast, bad, code):
    """fastws.py: "nothing more is read after a close". A registered client sends, in one
    write, a frame that ends its connection and then a ``pair_request``: the target must not
    hear of it."""
    tasks = task_count()
    with trio.fail_after(10):
        async with connect_signal(fast.url) as target:
            await target.register("TTTTTT", generate_public_key())
            async with await upgraded(fast) as stream:
                await stream.send_all(text(b'{"type":"register","pairingCode":"SSSSSS"}'))
                (registered,) = await next_frames(stream, 1)
                assert b'"registered"' in registered.payload
                pair_request = b'{"type":"pair_request","targetCode":"TTTTTT"}'
                await send_ignoring_close(stream, bad + text(pair_request))
                received = await frames_until_closed(stream)
            assert [(frame.opcode, frame.close_code) for frame in received] == [(CLOSE, code)]
            # The target's next frames are the answers to its own pings: no pair_incoming.
            for _ in range(2):
                await target.send({"type": "ping"})
                assert await target.receive() == {"type": "pong"}
        await assert_healthy(fast, tasks)


async def test_a_frame_sent_with_the_handshake_is_served(fast):
    """A client that sends its first frame in the same write as its handshake (before the
    101) gets it served, before its next frame: it is never dropped."""
    tasks = task_count()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        async with stream:
            register = b'{"type":"register","pairingCode":"EEEEEE"}'
            await stream.send_all(handshake() + text(register))
            reply = await read_reply(stream)
            assert reply.status == 101
            await stream.send_all(text(PING_TEXT))
            data = reply.rest
            while not (received := server_frames_so_far(data)):
                chunk = await receive_or_end(stream)
                assert chunk, "the server closed without a frame"
                data += chunk
            first = received[0]
            assert first.opcode == TEXT, received
            assert first.payload.startswith(b'{"type":"registered"'), received
        await assert_healthy(fast, tasks)


async def test_compression_is_declined_and_a_compressed_frame_is_never_inflated(nursery):
    """The client offers permessage-deflate; the 101 agrees to no extension, so a frame marked
    compressed (RSV1) is a protocol error: a 200 KB deflate bomb (200 MB once inflated), within
    the message size limit, closes the connection with 1002 without being inflated."""
    bomb = zlib.compress(b"\0" * (200 << 20), 9)[2:-4]  # raw deflate, as the extension sends it
    size_limit = 256 * 1024
    assert len(bomb) < size_limit
    fast = await start_server(
        nursery, make_config(ws_transport="fast", ws_max_message_bytes=size_limit)
    )
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    tasks = task_count()
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        async with stream:
            await stream.send_all(handshake("/signal", offer))
            reply = await read_reply(stream)
            assert reply.status == 101
            assert b"sec-websocket-extensions" not in reply.head.lower()
            await send_ignoring_close(stream, text(bomb, rsv=4))
            received = await frames_until_closed(stream)
        assert [(frame.opcode, frame.close_code) for frame in received] == [(CLOSE, 1002)]
        await assert_healthy(fast, tasks)
    fast.stop.set()


# -- random bytes --------------------------------------------------------------------------

any_frame = st.builds(
    client_frame,
    opcode=st.sampled_from([CONT, TEXT, BINARY, CLOSE, PING, PONG, 3, 11]),
    payload=st.one_of(
        st.binary(max_size=200),
        st.sampled_from([PING_TEXT, b'{"type":"pair_request","targetCode":"ZZZZZZ"}', b"\xc3"]),
    ),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1, 4]),
    mask=st.one_of(st.just(b"\x37\xfa\x21\x3d"), st.binary(min_size=4, max_size=4), st.none()),
)
any_bytes = st.one_of(
    st.binary(max_size=2048),
    st.lists(any_frame, max_size=6).map(b"".join),
    st.tuples(st.lists(any_frame, max_size=3), st.binary(max_size=64)).map(
        lambda parts: b"".join(parts[0]) + parts[1]
    ),
)


async def test_random_bytes_after_a_handshake_never_hurt_the_server(fast):
    """Whatever bytes follow a valid handshake, the server answers with whole frames (a close
    frame last, if any), ends the connection once the client half-closes, keeps nothing, and a
    fresh client can register; no exception escapes (the server's nursery would raise it) and
    nothing is logged as an error."""
    tasks = task_count()

    async def one(data: bytes) -> None:
        with trio.fail_after(10):
            async with await upgraded(fast) as stream:
                await send_ignoring_close(stream, data)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_eof()
                received = await frames_until_closed(stream)
            closes = [index for index, frame in enumerate(received) if frame.opcode == CLOSE]
            assert closes in ([], [len(received) - 1]), received
            async with connect_signal(fast.url) as client:
                await client.register(random_pairing_code(), generate_public_key())

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(any_bytes)
    def examples(data: bytes) -> None:
        trio.from_thread.run(one, data)

    with trio.fail_after(60):
        # Hypothesis drives the examples from a worker thread; each one runs here, in the
        # test's own trio run, against the one server.
        await trio.to_thread.run_sync(examples)
        await assert_healthy(fast, tasks)
