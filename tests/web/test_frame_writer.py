"""The WebSocket writer (zajel/web/sockets.py ``_write``, zajel/web/transport.py
``frame_text`` and ``GuardedStream.write_frames``): what is queued when the writer wakes leaves
in one write, as frames any client parses, a frame sent to many is framed once, and nothing
follows a close frame."""

from __future__ import annotations

import pytest
import trio
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.conftest import make_config
from zajel.web.outbox import WRITE_BATCH_BYTES
from zajel.web.sockets import SocketPeer, _write
from zajel.web.transport import (
    FRAME_MEMO_BYTES,
    FRAME_MEMO_SIZE,
    Connection,
    GuardedStream,
    frame_memo_bytes,
    frame_text,
    text_frame,
)


def parse(data: bytes) -> list[tuple[Opcode, str]]:
    """The frames of ``data`` as a client reads them (wsproto, no extension)."""
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(data)
    return [(frame.opcode, frame.payload) for frame in protocol.received_frames()]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_a_text_frame_of_every_length_class_parses(size):
    text = "é" * (size // 2) + "x" * (size % 2)
    assert parse(text_frame(text.encode("utf-8"))) == [(Opcode.TEXT, text)]
    assert parse(frame_text(text)) == [(Opcode.TEXT, text)]


def test_the_same_text_sent_to_many_is_framed_once():
    text = '{"type":"chunk_data","data":"' + "x" * 30_000 + '"}'
    first = frame_text(text)
    assert frame_text(text) is first
    others = [f'{{"type":"other","n":{n}}}' for n in range(FRAME_MEMO_SIZE)]
    for other in others:
        assert parse(frame_text(other)) == [(Opcode.TEXT, other)]
    # Framed long enough ago, it is framed again: the memo stays small.
    assert frame_text(text) is not first
    assert frame_text(text) == first


def test_the_memo_of_framed_texts_stays_under_its_byte_bound():
    """Large chunks (up to 16 MiB by configuration) never make the memo hold 32 of them."""
    big = [f'{{"n":{n},"data":"' + "x" * (1 << 20) + '"}' for n in range(FRAME_MEMO_SIZE)]
    for text in big:
        frame = frame_text(text)
        assert frame_text(text) is frame  # the newest is always remembered (a multicast)
        assert frame_memo_bytes() <= max(FRAME_MEMO_BYTES, 2 * len(frame))
    huge = "y" * (FRAME_MEMO_BYTES + 1)
    frame = frame_text(huge)
    assert frame_text(huge) is frame
    assert frame_memo_bytes() == len(huge) + len(frame)  # alone


async def stream_pair() -> tuple[GuardedStream, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    conn = Connection(("192.0.2.1", 1), "192.0.2.1", http_slot=False)
    guarded = GuardedStream(trio.SocketStream(left), conn)
    conn.stream = guarded
    return guarded, trio.SocketStream(right)


async def read_all(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive_some()
    return data


async def test_frames_are_written_whole_and_none_after_a_close_frame():
    guarded, client = await stream_pair()
    await guarded.write_frames([frame_text('{"type":"a"}'), frame_text('{"type":"b"}')])
    expected = text_frame(b'{"type":"a"}') + text_frame(b'{"type":"b"}')
    assert await read_all(client, len(expected)) == expected
    await guarded.send_all(b"\x88\x02\x03\xe8")  # hypercorn's close frame (1000)
    await guarded.write_frames([frame_text('{"type":"late"}')])
    await guarded.send_all(b"end")
    assert await read_all(client, 7) == b"\x88\x02\x03\xe8end"
    await guarded.aclose()
    await client.aclose()


class RecordingLink:
    """Stands in for a connection's ``Link``: records each write's frames."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []

    async def write(self, frames: list[str]) -> None:
        self.writes.append(list(frames))
        await trio.lowlevel.checkpoint()


async def test_what_is_queued_when_the_writer_wakes_leaves_in_one_write():
    peer = SocketPeer(1, make_config())
    link = RecordingLink()
    for name in ("a", "b", "c"):
        peer.answer_nowait(f'{{"type":"{name}"}}')
    big = "x" * (WRITE_BATCH_BYTES // 2)
    for _ in range(3):  # past the batch bound: a second write
        assert peer.send_nowait(big)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write, link, peer)
        await trio.testing.wait_all_tasks_blocked()
        peer.answer_nowait('{"type":"d"}')
        await trio.testing.wait_all_tasks_blocked()
        peer.outbox.close()
    assert [len(write) for write in link.writes] == [5, 1, 1]
    assert link.writes[0][:3] == ['{"type":"a"}', '{"type":"b"}', '{"type":"c"}']
    assert link.writes[2] == ['{"type":"d"}']
    assert len(peer.outbox) == 0
