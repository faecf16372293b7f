"""The owner of a cluster killed mid-load: what clients see, and how long until they pair again.

Usage (from the repository root)::

    python bench/cluster_failover.py [--pairs 10] [--messages 400] [--interval 0.05]
                                     [--lease-ms 10000]

A Redis, an owner node (started first, so it takes every lease, and given no clients) and two
edge nodes. Each pair has one side on each edge; it registers, pairs and relays ``offer``
messages, one every ``--interval`` seconds, so that the load outlasts the lease. Once every pair
is relaying, the owner is killed with SIGKILL. A matched pair's relays go edge to edge
(docs/cluster.md, "Direct relay") and go on until the lease moves; then every client
must see its connection closed with 1012 (service restart), reconnect (a refused handshake is
tried again every 100 ms, as the apps do), register, pair again and finish its messages.

Reported: the closes by code, the time from the kill to the first pairing that succeeds through
the new owner (docs/cluster.md: at most the lease plus 2 s), to the last pair's, and whether
every pair finished. One JSON line on stdout, also appended to
``bench/results/cluster_failover.jsonl``. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
import trio_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cluster import running_node, running_redis
from bench._server import THROUGHPUT_ENV, emit, run_facts
from zajel.client import (
    ServerError,
    SignalClient,
    connect_signal,
    generate_public_key,
    pair,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cluster_failover.jsonl"
RETRY_S = 0.1
CLIENT_TIMEOUT_S = 60.0


def code_for(pair_index: int, side: int, attempt: int) -> str:
    """A valid pairing code, fresh for every attempt (the old one may linger until detached)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    number = (attempt * 1000 + pair_index) * 2 + side
    digits = []
    for _ in range(6):
        number, rest = divmod(number, len(alphabet))
        digits.append(alphabet[rest])
    return "".join(digits)


class Stats:
    def __init__(self) -> None:
        self.closes: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self.errors: list[str] = []
        self.killed_at: float | None = None
        self.pairings_after_kill: list[float] = []
        self.finished = 0
        # Offers relayed after the kill on connections opened before it: edge to edge, with
        # no owner (docs/cluster.md, "Direct relay").
        self.relayed_without_owner = 0


async def run_pair(
    index: int,
    urls: tuple[str, str],
    messages: int,
    interval: float,
    stats: Stats,
    deadline: float,
) -> None:
    """Relay ``messages`` offers each way, starting again from registration after any close."""
    done = 0
    attempt = 0
    while done < messages and time.monotonic() < deadline:
        attempt += 1
        try:
            async with AsyncExitStack() as stack:
                # The apps wait for a peer's message as long as the connection is up: here,
                # longer than a lease, so what ends the wait is the server's 1012.
                alice: SignalClient = await stack.enter_async_context(
                    connect_signal(urls[0], timeout=CLIENT_TIMEOUT_S)
                )
                bob: SignalClient = await stack.enter_async_context(
                    connect_signal(urls[1], timeout=CLIENT_TIMEOUT_S)
                )
                await alice.register(code_for(index, 0, attempt), generate_public_key())
                await bob.register(code_for(index, 1, attempt), generate_public_key())
                await pair(alice, bob)
                after_kill = stats.killed_at is not None
                if after_kill:
                    stats.pairings_after_kill.append(time.monotonic() - stats.killed_at)
                assert bob.code is not None
                while done < messages:
                    await alice.send({"type": "offer", "target": bob.code, "payload": {"n": done}})
                    await bob.expect("offer")
                    done += 1
                    if stats.killed_at is not None and not after_kill:
                        stats.relayed_without_owner += 1
                    await trio.sleep(interval)
        except trio_websocket.ConnectionClosed as closed:
            code = None if closed.reason is None else closed.reason.code
            stats.closes[str(code)] += 1
            await trio.sleep(RETRY_S)
        except trio_websocket.HandshakeError:
            stats.refused += 1
            await trio.sleep(RETRY_S)
        except (ServerError, OSError, trio.TooSlowError) as error:
            # An unavailable error while the owner is gone, or a socket reset: try again.
            stats.errors.append(type(error).__name__)
            await trio.sleep(RETRY_S)
    if done >= messages:
        stats.finished += 1


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with running_redis() as redis:
        return await run_cluster(args, redis.url)


async def run_cluster(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    env = {
        **THROUGHPUT_ENV,
        "ZAJEL_CLUSTER_LEASE_MS": str(args.lease_ms),
        "ZAJEL_HTTP_RATE_PER_MINUTE": "1000000",
    }

    def node(name: str) -> Any:
        return running_node(redis_url, name, env)

    stats = Stats()
    kill = trio.Event()

    async def run_owner(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with node("owner") as owner:
                await trio.sleep(0.5)  # its first keeper round has taken every lease
                task_status.started()
                await kill.wait()
                owner.process.send_signal(signal.SIGKILL)
        except* RuntimeError:
            pass  # it exited with -9, as intended

    async with trio.open_nursery() as outer, AsyncExitStack() as stack:
        await outer.start(run_owner)
        edges = [await stack.enter_async_context(node(f"edge{i}")) for i in (1, 2)]
        urls = (edges[0].url, edges[1].url)
        deadline = time.monotonic() + args.timeout
        async with trio.open_nursery() as nursery:
            for index in range(args.pairs):
                nursery.start_soon(
                    run_pair, index, urls, args.messages, args.interval, stats, deadline
                )
            await trio.sleep(args.kill_after)
            stats.killed_at = time.monotonic()
            kill.set()
    after = sorted(stats.pairings_after_kill)
    bound = args.lease_ms / 1000 + 2
    return {
        "bench": "cluster_failover",
        **run_facts(),
        "pairs": args.pairs,
        "messages_each": args.messages,
        "interval_s": args.interval,
        "lease_ms": args.lease_ms,
        "closes": dict(stats.closes),
        "handshakes_refused": stats.refused,
        "retried_errors": dict(collections.Counter(stats.errors)),
        "relayed_without_owner": stats.relayed_without_owner,
        "first_pairing_after_kill_s": round(after[0], 3) if after else None,
        "last_pairing_after_kill_s": round(after[-1], 3) if after else None,
        "bound_s": bound,
        "within_bound": bool(after) and after[0] <= bound,
        "pairs_finished": stats.finished,
        "errors": args.pairs - stats.finished,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=400, help="offers per pair")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between a pair's offers"
    )
    parser.add_argument("--lease-ms", type=int, default=10_000)
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds of load first")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    os.environ.pop("ZAJEL_CLUSTER_URL", None)
    result = trio.run(main_async, args)
    emit(result, Path(args.out))
    return 0 if result["errors"] == 0 and result["within_bound"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
