"""How our transport takes the frames of a read (zajel/web/fastws.py ``FastWebSocket._feed``).

The frames the apps send (whole text or binary frames) are unmasked there, every other frame
goes through websockets' parser. Where a read ends never changes what is taken: the same bytes
split anywhere give the same messages, the same answers (pongs, close frames) and the same end as
the bytes in one read. The RFC's rules themselves are tested over real sockets in
tests/integration/test_fast_bad_input.py.
"""

from __future__ import annotations

import itertools
from typing import Any
from unittest import mock

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_config
from tests.integration._raw import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    client_frame,
    close_payload,
    handshake,
    server_frames,
)
from zajel.web.fastws import FastWebSocket
from zajel.web.transport import ConnectionTable, GuardedStream

LIMIT = 4096  # ws_max_message_bytes of these tests


def run_feeding(chunks: list[bytes], *, head: bytes | None = None) -> dict[str, Any]:
    """Accept a WebSocket (``head`` is the handshake, with whatever follows it), feed it
    ``chunks`` as reads (until it is disconnected), and return what it took."""

    async def main() -> dict[str, Any]:
        left, right = trio.socket.socketpair()
        table = ConnectionTable(max_http_per_ip=10)
        conn = table.open(("192.0.2.1", 1))
        assert conn is not None
        conn.stream = GuardedStream(trio.SocketStream(left), conn)
        websocket = FastWebSocket(conn.stream, conn, make_config(ws_max_message_bytes=LIMIT))
        assert await websocket.handshake(handshake() if head is None else head) is not None
        await websocket.send({"type": "websocket.accept"})  # writes the 101 to ``right``
        for chunk in chunks:
            if websocket.disconnected:
                break
            websocket._feed(chunk)
        taken = {
            "messages": websocket.messages,
            "answers": server_frames(b"".join(websocket.protocol.data_to_send())),
            "disconnected": websocket.disconnected,
            "close": websocket._close_code(),
        }
        websocket.stream.close_socket()
        right.close()
        return taken

    return trio.run(main)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:stop] for start, stop in itertools.pairwise(points)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[index : index + 1] for index in range(len(data))]


SIZES = [0, 1, 125, 126, 127, 1000, LIMIT]  # every length encoding, up to the limit


def test_whole_frames_of_every_length_are_taken_in_order_however_they_are_split():
    payloads = [b"t" * size for size in SIZES]
    data = b"".join(client_frame(TEXT, payload) for payload in payloads)
    expected = [payload.decode() for payload in payloads]
    for chunks in ([data], one_byte_at_a_time(data), split(data, [3, 700, 701, 5000])):
        taken = run_feeding(chunks)
        assert taken["messages"] == expected
        assert taken["answers"] == []
        assert not taken["disconnected"]


def test_binary_frames_are_taken_as_bytes():
    data = client_frame(BINARY, b"\x00\xff") + client_frame(TEXT, b"{}")
    assert run_feeding(one_byte_at_a_time(data))["messages"] == [b"\x00\xff", "{}"]


def test_a_ping_between_text_frames_is_answered_and_the_order_kept():
    data = (
        client_frame(TEXT, b"one")
        + client_frame(PING, b"hi")
        + client_frame(TEXT, b"two", fin=False)
        + client_frame(PING, b"again")
        + client_frame(CONT, b"!")
        + client_frame(TEXT, b"three")
    )
    for chunks in ([data], one_byte_at_a_time(data)):
        taken = run_feeding(chunks)
        assert taken["messages"] == ["one", "two!", "three"]
        assert [(frame.opcode, frame.payload) for frame in taken["answers"]] == [
            (PONG, b"hi"),
            (PONG, b"again"),
        ]


def test_a_frame_over_the_limit_is_refused_from_its_header():
    """Its header alone closes the connection with 1009: no byte of its payload is waited for
    (or kept)."""
    header = client_frame(TEXT, b"x" * (LIMIT + 1))[:8]  # 2 + 2 length bytes + 4 mask bytes
    taken = run_feeding(one_byte_at_a_time(header))
    assert taken["disconnected"]
    assert [(frame.opcode, frame.close_code) for frame in taken["answers"]] == [(CLOSE, 1009)]


def test_invalid_utf8_in_a_whole_frame_closes_1007_and_nothing_after_it_is_taken():
    data = client_frame(TEXT, b"\xff") + client_frame(TEXT, b"after")
    taken = run_feeding([data])
    assert taken["messages"] == []
    assert [(frame.opcode, frame.close_code) for frame in taken["answers"]] == [(CLOSE, 1007)]


@pytest.mark.parametrize("cut", [1, 2, 7, 10])
def test_a_frame_begun_behind_the_handshake_is_finished_by_the_next_read(cut):
    frame = client_frame(TEXT, b'{"type":"ping"}')
    taken = run_feeding([frame[cut:]], head=handshake() + frame[:cut])
    assert taken["messages"] == ['{"type":"ping"}']


any_frame = st.builds(
    client_frame,
    opcode=st.sampled_from([CONT, TEXT, TEXT, TEXT, BINARY, CLOSE, PING, PONG, 3, 11]),
    payload=st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"x" * LIMIT, b"x" * (LIMIT + 1), b"\xc3", close_payload(1000)]),
    ),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 0, 1, 4]),
    mask=st.one_of(st.binary(min_size=4, max_size=4), st.none()),
)


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(any_frame, max_size=6).map(b"".join), st.lists(st.integers(0, 10_000)))
def test_where_reads_end_never_changes_what_is_taken(data, cuts):
    assert run_feeding(split(data, cuts)) == run_feeding([data])


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(any_frame, max_size=6).map(b"".join), st.lists(st.integers(0, 10_000)))
def test_what_is_taken_without_websockets_parser_is_what_it_would_take(data, cuts):
    """With no frame taken by ``_feed`` itself, every frame goes through websockets: the
    outcome is the same."""
    with mock.patch("zajel.web.fastws._WHOLE_FRAMES", ()):
        through_websockets = run_feeding(split(data, cuts))
    assert run_feeding(split(data, cuts)) == through_websockets
