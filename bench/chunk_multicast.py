"""Chunk multicast: one source, K chunks of S bytes, N subscribers that each request every chunk.

Run from the repository root::

    python bench/chunk_multicast.py --subscribers 100 --chunks 64 --size 16384
    python bench/chunk_multicast.py --subscribers 500 --chunks 32 --size 16384 --waves 5

Scheme. The source registers on ``/relay`` and announces K chunks (``chunk-0`` … in batches of
at most 100); it answers every ``chunk_pull`` with a ``chunk_push`` whose ``data`` is the
standard base64 of S random bytes. Then N subscribers connect, register, and each sends a
``chunk_request`` for every chunk at once. The server pulls each chunk from the source once and
multicasts the push to everyone waiting; later requests are served from its cache. Each
subscriber keeps at most ``--window`` requests unanswered (4 by default, as an app fetching a
channel does; 0 sends all K at once, which measures how long N x K deliveries take to drain
rather than the latency of one request).

Waves. With ``--waves W`` the N subscribers come in W equal waves (N must be a multiple of W),
one after the other: a wave connects and registers, then requests every chunk and receives all
of them before the next wave connects. The first wave's requests make the server pull every
chunk; every later wave is served from the cache (``pulls_per_chunk`` stays 1.0). The
subscribers of earlier waves stay connected. The request phases of all waves are measured
(time and server CPU summed over them); connecting and registering are not, as with one wave,
and are reported apart (``setup_server_cpu_s``).

Figures: ``deliveries`` (``chunk_data`` frames received), ``deliveries_per_s`` and
``delivered_mb_per_s`` over the request phases, p50/p99 request-to-data latency,
``pulls_per_chunk`` (pulls the source received, per chunk: 1.0 is the goal), ``errors``
(error frames, unexpected frames, missing deliveries), the server's CPU seconds during the
request phases and per delivery, and its peak RSS (``VmHWM``). One JSON line on stdout, also
appended to ``--out``. Every wait is bounded by ``--timeout`` (all waves together).
"""

from __future__ import annotations

import argparse
import base64
import functools
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._server import (  # noqa: E402
    THROUGHPUT_ENV,
    cpu_figures,
    emit,
    measure_server,
    percentile_ms,
    run_facts,
)
from zajel.client import RelayClient, connect_relay  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "chunk_multicast.jsonl"
# Every subscriber may have K chunk_data frames queued at once.
SERVER_ENV = {**THROUGHPUT_ENV, "ZAJEL_WS_OUTBOUND_QUEUE": "4096"}


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (``VmHWM``) in MB, from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Phases:
    """Wall-clock and server CPU seconds summed over measured phases (CPU ``None`` if the
    server's is not known)."""

    def __init__(self, cpu: Any) -> None:
        self._cpu = cpu
        self.seconds = 0.0
        self.cpu_seconds: float | None = None if cpu() is None else 0.0

    def start(self) -> tuple[float, float | None]:
        return time.perf_counter(), self._cpu()

    def stop(self, started: tuple[float, float | None]) -> None:
        wall, cpu_before = started
        self.seconds += time.perf_counter() - wall
        if self.cpu_seconds is not None and cpu_before is not None:
            self.cpu_seconds += self._cpu() - cpu_before


class Counters:
    def __init__(self, chunks: int) -> None:
        self.pulls = [0] * chunks
        self.deliveries = 0
        self.delivered_bytes = 0
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.error_samples: list[Any] = []

    def error(self, what: Any) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


async def serve_pulls(source: RelayClient, payloads: list[str], counters: Counters) -> None:
    """Answer every pull with the chunk's data, until cancelled."""
    while True:
        frame = await source.receive()
        if frame.get("type") == "chunk_pull":
            index = int(frame["chunkId"].rsplit("-", 1)[1])
            counters.pulls[index] += 1
            await source.send(
                {"type": "chunk_push", "chunkId": frame["chunkId"], "data": payloads[index]}
            )
        elif frame.get("type") not in ("chunk_push_ack", "chunk_announce_ack"):
            counters.error(frame)


async def subscribe(client: RelayClient, chunks: int, window: int, counters: Counters) -> None:
    """Request every chunk, keeping at most ``window`` requests unanswered (0: all at once)."""
    sent_at: dict[str, int] = {}
    next_index = 0
    limit = window or chunks
    while next_index < chunks or sent_at:
        while next_index < chunks and len(sent_at) < limit:
            chunk_id = f"chunk-{next_index}"
            next_index += 1
            sent_at[chunk_id] = time.perf_counter_ns()
            await client.send({"type": "chunk_request", "chunkId": chunk_id})
        frame = await client.receive()
        if frame.get("type") != "chunk_data" or frame.get("chunkId") not in sent_at:
            counters.error(frame)
            continue
        counters.latencies_ns.append(time.perf_counter_ns() - sent_at.pop(frame["chunkId"]))
        counters.deliveries += 1
        counters.delivered_bytes += len(frame["data"])


async def run(
    args: argparse.Namespace,
    url: str,
    cpu: Any,
    pid: int | None,
    *,
    subscriber_url: Callable[[int], str] | None = None,
    mark: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """The whole scenario against the server at ``url``; its result line.

    ``subscriber_url(i)``, if given, is where subscriber ``i`` connects (the source always
    connects to ``url``): several servers can share the clients (``bench/cluster.py``).
    ``mark`` is awaited with ``"start"`` right before each measured request phase and with
    ``"end"`` right after it (not after a timeout).
    """
    payloads = [
        base64.b64encode(secrets.token_bytes(args.size)).decode() for _ in range(args.chunks)
    ]
    counters = Counters(args.chunks)
    async with AsyncExitStack() as stack:
        source = await stack.enter_async_context(connect_relay(url, max_message_size=1 << 22))
        await source.register("bench-source")
        for start in range(0, args.chunks, 100):
            entries = [
                {"chunkId": f"chunk-{index}", "routingHash": f"route-{index}"}
                for index in range(start, min(start + 100, args.chunks))
            ]
            await source.send({"type": "chunk_announce", "chunks": entries})
            await source.expect("chunk_announce_ack")
        measured, setup = Phases(cpu), Phases(cpu)
        wave_size = args.subscribers // args.waves
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_pulls, source, payloads, counters)
            with trio.move_on_after(args.timeout) as scope:
                # Every wave's subscribers stay connected until the last wave is done.
                async with AsyncExitStack() as connected:
                    for wave in range(args.waves):
                        started = setup.start()
                        subscribers = []
                        for index in range(wave * wave_size, (wave + 1) * wave_size):
                            where = subscriber_url(index) if subscriber_url else url
                            client = await connected.enter_async_context(
                                connect_relay(where, max_message_size=1 << 22)
                            )
                            await client.register(f"bench-subscriber-{index}")
                            subscribers.append(client)
                        setup.stop(started)
                        if mark is not None:
                            await mark("start")
                        started = measured.start()
                        try:
                            async with trio.open_nursery() as requests:
                                for client in subscribers:
                                    requests.start_soon(
                                        subscribe, client, args.chunks, args.window, counters
                                    )
                        finally:
                            measured.stop(started)
                        if mark is not None:
                            await mark("end")
            timed_out = scope.cancelled_caught
            nursery.cancel_scope.cancel()
        seconds = measured.seconds
    expected = args.subscribers * args.chunks
    missing = expected - counters.deliveries
    return {
        "benchmark": "chunk_multicast",
        "subscribers": args.subscribers,
        "chunks": args.chunks,
        "size": args.size,
        "window": args.window,
        "waves": args.waves,
        "deliveries": counters.deliveries,
        "expected_deliveries": expected,
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(counters.deliveries / seconds, 1),
        "delivered_mb_per_s": round(counters.delivered_bytes / seconds / 1e6, 2),
        "p50_ms": percentile_ms(counters.latencies_ns, 50),
        "p99_ms": percentile_ms(counters.latencies_ns, 99),
        "pulls_per_chunk": round(sum(counters.pulls) / args.chunks, 3),
        "max_pulls_of_one_chunk": max(counters.pulls),
        "errors": counters.errors + missing,
        "error_samples": counters.error_samples,
        "timed_out": timed_out,
        **cpu_figures(measured.cpu_seconds, counters.deliveries, "delivery"),
        "setup_server_cpu_s": (None if setup.cpu_seconds is None else round(setup.cpu_seconds, 3)),
        "server_peak_rss_mb": None if pid is None else peak_rss_mb(pid),
        **run_facts(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100, help="N")
    parser.add_argument("--chunks", type=int, default=64, help="K")
    parser.add_argument("--size", type=int, default=16_384, help="S: raw bytes per chunk")
    parser.add_argument(
        "--window",
        type=int,
        default=4,
        help="requests each subscriber keeps unanswered (0: all K at once)",
    )
    parser.add_argument(
        "--waves",
        type=int,
        default=1,
        help="subscribers come in this many equal waves, one after the other (default 1)",
    )
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if args.waves < 1 or args.subscribers % args.waves:
        parser.error("--waves must be at least 1 and divide --subscribers")
    result = trio.run(measure_server, args.url, SERVER_ENV, functools.partial(run, args))
    emit(result, Path(args.out))
    return 1 if result["errors"] or result["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
