"""What taking one client frame costs: ``websockets``' parser against our transport's own path.

``FastWebSocket._feed`` (zajel/web/fastws.py) unmasks whole text and binary frames itself and
gives every other frame to ``websockets``' sans-IO protocol. This measures both on the same
bytes, in one process and without sockets: F masked text frames of B bytes (a signaling
message's size by default), fed in reads of R frames each,

- ``websockets``: ``Protocol.receive_data`` then ``events_received`` for each read, as every
  frame went before (the payload stays bytes: the UTF-8 check is not included);
- ``ours``: ``FastWebSocket._feed`` for each read, which also checks the UTF-8 and makes the
  messages ``str``.

Run from the repository root::

    python bench/frame_parse.py --frames 200000 --bytes 300 --per-read 2

Output: one JSON line on stdout, also appended to ``--out``: CPU µs per frame for each, the best
of ``--repeat`` passes (the machine's noise only ever adds).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.protocol import Protocol, Side  # noqa: E402

from bench._server import emit, run_facts  # noqa: E402
from zajel.config import Config  # noqa: E402
from zajel.web.fastws import FastWebSocket  # noqa: E402
from zajel.web.transport import ConnectionTable, GuardedStream  # noqa: E402

HANDSHAKE = (
    b"GET /signal HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def reads(frames: int, size: int, per_read: int) -> list[bytes]:
    """The bytes of ``frames`` masked text frames of ``size`` bytes, in reads of ``per_read``."""
    payload = b"x" * size
    frame = Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])
    read = frame * per_read
    return [read] * (frames // per_read)


def cpu_per_frame(
    work: Callable[[list[bytes]], int], data: list[bytes], frames: int, repeat: int
) -> float:
    """The least CPU time ``work`` took over ``repeat`` passes, per frame.

    Raises:
        SystemExit: ``work`` did not take all ``frames`` frames of ``data``.
    """
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        taken = work(data)
        best = min(best, time.process_time() - started)
        if taken != frames:
            raise SystemExit(f"{taken} frames taken of {frames}")
    return best / frames


def with_websockets(data: list[bytes]) -> int:
    protocol = Protocol(Side.SERVER, max_size=1 << 20)
    taken = 0
    for read in data:
        protocol.receive_data(read)
        taken += len(protocol.events_received())
    return taken


async def with_ours(data: list[bytes], frames: int, repeat: int) -> float:
    left, right = trio.socket.socketpair()
    table = ConnectionTable(max_http_per_ip=10)
    conn = table.open(("127.0.0.1", 1))
    assert conn is not None
    conn.stream = GuardedStream(trio.SocketStream(left), conn)
    websocket = FastWebSocket(conn.stream, conn, Config())
    assert await websocket.handshake(HANDSHAKE) is not None
    await websocket.send({"type": "websocket.accept"})

    def feed(data: list[bytes]) -> int:
        taken = 0
        for read in data:
            websocket._feed(read)
            taken += len(websocket.messages)
            websocket.messages.clear()
        return taken

    try:
        return cpu_per_frame(feed, data, frames, repeat)
    finally:
        websocket.stream.close_socket()
        right.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000, help="F (200000)")
    parser.add_argument("--bytes", type=int, default=300, help="B: payload bytes (300)")
    parser.add_argument("--per-read", type=int, default=2, help="R: frames per read (2)")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best counts (5)")
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "results" / "frame_parse.jsonl")
    args = parser.parse_args()
    data = reads(args.frames, args.bytes, args.per_read)
    frames = len(data) * args.per_read
    theirs = cpu_per_frame(with_websockets, data, frames, args.repeat)
    ours = trio.run(with_ours, data, frames, args.repeat)
    emit(
        {
            "benchmark": "frame_parse",
            "frames": frames,
            "bytes": args.bytes,
            "per_read": args.per_read,
            "websockets_us_per_frame": round(theirs * 1e6, 3),
            "ours_us_per_frame": round(ours * 1e6, 3),
            **run_facts(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
