"""The idle connections of a soak, in a process of their own (``bench/soak.py`` starts one or
two): N WebSockets that answer the server's pings and otherwise say nothing.

Run by ``bench/soak.py``::

    python bench/_soak_idle.py --targets 127.0.0.1:8080 --count 4500 --first 0 --of 9000

Connection ``i`` (``first`` <= i < ``first + count``) goes to target ``i % len(targets)``, on
``/signal`` for even ``i`` and ``/relay`` for odd, from source address ``i % 249`` of
127.0.0.2 ... 127.0.0.250, so the connections of all idle processes spread evenly over the
addresses and the server's per-IP cap holds. Each is one raw socket (``bench/_soak_ws.py``) and
one task. With ``--app-ping S`` each also sends ``{"type":"ping"}`` every S seconds (the apps
send one every 30 s; without one a connection is closed after ``ZAJEL_WS_MESSAGE_IDLE_TIMEOUT``).

Protocol on the pipes (one JSON object a line on stdout): ``{"event":"ready",...}`` once every
connection was tried; then, when a line ``stop`` (or the end of stdin) comes, every connection
is closed with 1000 and ``{"event":"done",...}`` follows: pings answered, connections the server
ended (unexpected for an idle client), clean closes and a few samples of what went wrong.
Every wait is bounded: connecting by ``--connect-timeout``, closing by ``--close-timeout``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from bench._soak_ws import (  # noqa: E402
    CLOSE,
    HandshakeRefused,
    RawWebSocket,
    close_code,
    connect_ws,
    source_addresses,
)

MAX_SAMPLES = 10
PING_FRAME = b'{"type":"ping"}'


class Idle:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []
        self.sockets: list[RawWebSocket] = []
        self.stop = trio.Event()

    def fail(self, what: str) -> None:
        self.counts["unexpected"] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(what[:300])


async def hold(idle: Idle, ws: RawWebSocket, app_ping: float, index: int) -> None:
    """Answer pings (and send the app's ping) until the stop; then close with 1000."""
    next_ping = trio.current_time() + (random.uniform(0, app_ping) if app_ping else 0)
    try:
        while not idle.stop.is_set():
            deadline = next_ping if app_ping else float("inf")
            with trio.move_on_at(deadline):
                frames = await ws.frames()
                if not frames:
                    if not idle.stop.is_set():
                        idle.fail(f"#{index}: the server ended the connection")
                    return
                for opcode, payload in frames:
                    if opcode == CLOSE and not idle.stop.is_set():
                        idle.fail(f"#{index}: closed by the server with {close_code(payload)}")
                        ws.drop()
                        return
            if app_ping and trio.current_time() >= next_ping and not idle.stop.is_set():
                await ws.send_text(PING_FRAME)
                next_ping = trio.current_time() + app_ping
    except OSError as error:
        if not idle.stop.is_set():
            idle.fail(f"#{index}: {type(error).__name__}: {error}")
    finally:
        idle.counts["pings"] += ws.pings
        ws.pings = 0


async def run(args: argparse.Namespace) -> None:
    targets = [(host, int(port)) for host, _, port in (t.rpartition(":") for t in args.targets)]
    sources = source_addresses()
    idle = Idle()
    opened: list[tuple[int, RawWebSocket]] = []
    limit = trio.CapacityLimiter(args.connect_concurrency)

    async def open_one(index: int) -> None:
        host, port = targets[index % len(targets)]
        path = "/signal" if index % 2 == 0 else "/relay"
        async with limit:
            for attempt in range(3):
                try:
                    with trio.fail_after(args.connect_timeout):
                        ws = await connect_ws(host, port, path, sources[index % len(sources)])
                except HandshakeRefused as refused:
                    idle.fail(f"#{index}: {refused}")
                    return
                except (OSError, trio.TooSlowError) as error:
                    # A full listen backlog under a burst of connects: try again, bounded.
                    if attempt == 2:
                        idle.fail(f"#{index}: connect failed: {type(error).__name__}: {error}")
                        return
                    await trio.sleep(0.5 * (attempt + 1))
                    continue
                opened.append((index, ws))
                return

    async with trio.open_nursery() as nursery:
        for index in range(args.first, args.first + args.count):
            nursery.start_soon(open_one, index)
    print(
        json.dumps({"event": "ready", "open": len(opened), **idle.counts, "samples": idle.samples}),
        flush=True,
    )

    async def wait_for_stop() -> None:
        stdin = trio.lowlevel.FdStream(0)
        buffer = b""
        while b"stop" not in buffer:
            chunk = await stdin.receive_some(1024)
            if not chunk:
                break
            buffer += chunk
        idle.stop.set()

    async with trio.open_nursery() as holders:
        for index, ws in opened:
            holders.start_soon(hold, idle, ws, args.app_ping, index)
        await wait_for_stop()
        holders.cancel_scope.cancel()

    async def close_one(ws: RawWebSocket) -> None:
        async with limit:
            if ws.closed:
                return
            code = await ws.close(1000, args.close_timeout)
            idle.counts["clean_closes" if code == 1000 else "closes_without_reply"] += 1

    with trio.move_on_after(args.close_timeout * 3):
        async with trio.open_nursery() as nursery:
            for _, ws in opened:
                nursery.start_soon(close_one, ws)
    for _, ws in opened:
        ws.drop()
    print(json.dumps({"event": "done", **idle.counts, "samples": idle.samples}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", required=True, help="HOST:PORT of each node")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first connection")
    parser.add_argument("--app-ping", type=float, default=0.0, help="seconds; 0: never")
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    parser.add_argument("--close-timeout", type=float, default=5.0)
    trio.run(run, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
