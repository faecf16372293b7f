"""The transport's own cost: a bare ASGI echo app under the same hypercorn trio worker.

Every frame the echo app receives it sends straight back from the same task: no decoding, no
service, no queue. Its server CPU per echoed frame (one frame in, one frame out, as for one
relayed signaling message) is the floor that no app on this transport can go below; compare
``server_cpu_us_per_msg`` of ``bench/signaling.py`` with it.

Run from the repository root::

    python bench/transport_floor.py --connections 20 --frames 4000 --window 32

Output: one JSON line on stdout, also appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._server import emit, run_facts, running_server  # noqa: E402

FRAME = json.dumps(
    {"type": "ice_candidate", "target": "ABCDEF", "payload": {"candidate": "c" * 150}},
    separators=(",", ":"),
)


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def serve_echo() -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.websocket_ping_interval = 30.0
    config.read_timeout = 120  # the same per-read timeout the server configures
    stop = trio.Event()

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        binds = await nursery.start(
            lambda task_status: serve(
                echo_app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        print(f"zajel listening on {binds[0]}", flush=True)
        await stop.wait()
        nursery.cancel_scope.deadline = trio.current_time() + 5


async def drive(url: str, frames: int, window: int, counts: list[int]) -> None:
    import trio_websocket

    async with trio_websocket.open_websocket_url(url) as ws:
        sent = received = 0
        while received < frames:
            while sent < frames and sent - received < window:
                await ws.send_message(FRAME)
                sent += 1
            await ws.get_message()
            received += 1
        counts.append(received)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with running_server(command_args=(str(SCRIPT), "--serve")) as server:
        url = server.url.replace("http://", "ws://") + "/echo"
        counts: list[int] = []
        with trio.fail_after(args.timeout):
            async with trio.open_nursery() as nursery:  # warm-up
                for _ in range(args.connections):
                    nursery.start_soon(drive, url, 100, args.window, [])
            cpu_before, started = server.cpu_seconds(), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(args.connections):
                    nursery.start_soon(drive, url, args.frames, args.window, counts)
            seconds = time.perf_counter() - started
            cpu = server.cpu_seconds() - cpu_before
    echoed = sum(counts)
    return {
        "benchmark": "transport_floor",
        "connections": args.connections,
        "frames_per_connection": args.frames,
        "window": args.window,
        "echoed": echoed,
        "seconds": round(seconds, 3),
        "frames_per_s": round(echoed / seconds, 1),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_frame": round(cpu / echoed * 1e6, 2),
        **run_facts(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--frames", type=int, default=4000, help="frames per connection")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "floor.jsonl"))
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(serve_echo)
        return 0
    result = trio.run(main_async, args)
    emit(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
