"""The transport's own cost: a bare echo served by one WebSocket transport of ``zajel serve``.

Every frame the echo app receives it sends straight back from the same task: no decoding, no
service, no queue. Its server CPU per echoed frame (one frame in, one frame out, as for one
relayed signaling message) is the floor that no app on this transport can go below; compare
``server_cpu_us_per_msg`` of ``bench/signaling.py`` with it.

``--transport`` (default: ``ZAJEL_WS_TRANSPORT``, else ``fast``, as ``zajel serve``):

- ``hypercorn``: a bare ASGI echo app under hypercorn's own trio worker (``hypercorn.trio.serve``).
- ``fast``: our transport, served as ``zajel serve`` serves it (``zajel.web.transport.serve_tcp``
  with ``zajel.web.fastws.FastTransport`` on ``/echo``); the app drives the connection through
  the ``Link`` the transport offers (``receive_messages``, then one ``write`` of every message
  that read brought), as the front end does.

The server runs as a subprocess of this script (``--serve``), with ``zajel serve``'s collector
settings (``zajel.server.tune_gc``) on both transports.

Run from the repository root::

    python bench/transport_floor.py --transport fast --connections 20 --frames 4000 --window 32

Output: one JSON line on stdout (with ``transport``), also appended to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
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
from zajel.config import Config  # noqa: E402
from zajel.server import BACKLOG, GRACEFUL_TIMEOUT_S, hypercorn_config, tune_gc  # noqa: E402
from zajel.web.fastws import FastTransport  # noqa: E402
from zajel.web.sockets import LINK_EXTENSION  # noqa: E402
from zajel.web.transport import ConnectionTable, bound_url, open_listener, serve_tcp  # noqa: E402

FRAME = json.dumps(
    {"type": "ice_candidate", "target": "ABCDEF", "payload": {"candidate": "c" * 150}},
    separators=(",", ":"),
)
TRANSPORTS = ("hypercorn", "fast")
ECHO_PATH = "/echo"


async def echo_app(
    scope: dict[str, Any], receive: Any, send: Any, *, require_link: bool = False
) -> None:
    """Echo every text frame of a WebSocket, on a ``Link`` where the transport offers one.

    With ``require_link`` a WebSocket that comes without one (hypercorn served it: our
    transport declined it) is closed with 1011, so the benchmark fails instead of measuring
    the wrong transport.
    """
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    offered = scope.get("extensions", {}).get(LINK_EXTENSION)
    if offered is None and require_link:
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept"})
    if offered is not None:
        link = offered["link"]
        while messages := await link.receive_messages():
            await link.write([link.frame(text) for text in messages])
        return
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def on_signal(stop: trio.Event) -> None:
    """Set ``stop`` on the first SIGTERM or SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


async def serve_hypercorn() -> None:
    """The echo under hypercorn's own trio worker."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.websocket_ping_interval = 30.0
    config.read_timeout = 120  # the same per-read timeout the server configures
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal, stop)
        binds = await nursery.start(
            lambda task_status: serve(
                echo_app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        tune_gc()  # as zajel serve does once it is serving
        print(f"zajel listening on {binds[0]}", flush=True)
        await stop.wait()
        nursery.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT_S


async def serve_fast() -> None:
    """The echo on our transport, behind the accept loop of ``zajel serve`` (zajel.server)."""
    # zajel serve's defaults (frame limit, pings, idle timeout), on a free port.
    config = Config(port=0)
    listener = open_listener(config.host, config.port, BACKLOG)
    # Every client is 127.0.0.1, and the echo never moves a connection out of the HTTP count
    # (the front end does, in zajel serve): the per-IP cap is out of the way.
    table = ConnectionTable(1_000_000, stall_timeout=config.ws_idle_timeout)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal, stop)
        await nursery.start(
            functools.partial(
                serve_tcp,
                functools.partial(echo_app, require_link=True),
                hypercorn_config(config),
                table,
                listener,
                shutdown=stop,
                grace=GRACEFUL_TIMEOUT_S,
                websockets=FastTransport((ECHO_PATH,), config),
            )
        )
        tune_gc()
        print(f"zajel listening on {bound_url(listener)}", flush=True)


def serve_echo(transport: str) -> None:
    """The server process: the echo on ``transport`` until SIGTERM."""
    trio.run(serve_fast if transport == "fast" else serve_hypercorn)


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
    command = (str(SCRIPT), "--serve", f"--transport={args.transport}")
    async with running_server(command_args=command) as server:
        url = server.url.replace("http://", "ws://") + ECHO_PATH
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
        "transport": args.transport,
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
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=os.environ.get("ZAJEL_WS_TRANSPORT", "fast"),
        help="whose echo: hypercorn's or our transport's (default: ZAJEL_WS_TRANSPORT, else fast)",
    )
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--frames", type=int, default=4000, help="frames per connection")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "floor.jsonl"))
    args = parser.parse_args(argv)
    if args.transport not in TRANSPORTS:  # a default from the environment is not checked
        parser.error(f"--transport: one of {', '.join(TRANSPORTS)}")
    if args.serve:
        serve_echo(args.transport)
        return 0
    result = trio.run(main_async, args)
    emit(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
