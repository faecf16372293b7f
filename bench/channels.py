"""Channel multicast on ``/signal``: one owner publishes K chunks of S bytes to N subscribers.

Run from the repository root::

    python bench/channels.py --subscribers 100 --chunks 64 --size 16384

Scheme (docs/protocol/channels.md). The owner registers on ``/signal`` and owns a channel; N
subscribers register and subscribe. Then the owner publishes: it announces the K chunks
(``chunk-0`` …), ``--batch`` per ``chunk_announce`` (all K by default, in announces of at most
100: one message of K chunks), back to back. Each announce sends ``chunk_available`` to every
subscriber; each subscriber requests every chunk it is told of, keeping at most ``--window``
requests unanswered (4 by default, as ``chunk_multicast.py`` does; 0 asks for all at once, as
the apps do). The first request of a chunk makes the server send one ``chunk_pull`` to the
owner; the owner answers with a ``chunk_push`` (``data``: the standard base64 of S random
bytes, the same payload as ``chunk_multicast.py``), which the server multicasts to every
waiting subscriber (each told ``chunk_pulling`` meanwhile) and caches for later requests. With
``--proactive`` the owner also pushes each chunk right after its announce, as the apps do.

Figures: ``deliveries`` (``chunk_data`` frames received), ``deliveries_per_s`` and
``delivered_mb_per_s`` over the publish phase, p50/p99 from the announce of a chunk to its
delivery to a subscriber (and ``request_p50_ms``/``request_p99_ms`` from a request to its
data, the latency ``chunk_multicast.py`` reports), ``pulls_per_chunk`` (``/stats``
``chunks.pullsSent`` over the phase, per chunk: 1.0 is the goal; 0 with ``--proactive`` unless
a request crossed a push), ``max_pulls_of_one_chunk`` (as the owner counted them),
``cache_share`` (deliveries served from the cache rather than by a push's multicast),
``pulling_per_delivery`` (``chunk_pulling`` frames per delivery), ``errors`` (error frames,
unexpected frames, missing deliveries), the server's CPU seconds over the phase and per
delivery (read from ``/proc`` as ``chunk_multicast.py`` does), and its peak RSS. One JSON
line on stdout, also appended to ``--out``. Every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import functools
import json
import math
import secrets
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._server import (  # noqa: E402
    cpu_figures,
    emit,
    measure_server,
    percentile_ms,
    run_facts,
)
from bench.chunk_multicast import SERVER_ENV, Counters, peak_rss_mb  # noqa: E402
from bench.registry import Connection  # noqa: E402
from zajel.client import SignalClient, connect_signal, generate_public_key  # noqa: E402
from zajel.protocol.channels import ANNOUNCE_MAX_DEFAULT  # noqa: E402
from zajel.protocol.fields import PAIRING_CODE_ALPHABET, PAIRING_CODE_LENGTH  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "channels.jsonl"
CHANNEL = "bench-channel"


def pairing_code(index: int) -> str:
    """The ``index``-th pairing code: distinct for distinct indexes."""
    base = len(PAIRING_CODE_ALPHABET)
    digits = []
    for _ in range(PAIRING_CODE_LENGTH):
        index, digit = divmod(index, base)
        digits.append(PAIRING_CODE_ALPHABET[digit])
    return "".join(reversed(digits))


async def pulls_sent(url: str) -> int:
    """``chunks.pullsSent`` of the server's ``/stats``."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    connection = Connection(parts.hostname, parts.port, parts.netloc)
    try:
        status, _, body = await connection.request("GET", "/stats")
    finally:
        await connection.aclose()
    if status != 200:
        raise RuntimeError(f"/stats answered {status}: {body[:200]!r}")
    count: int = json.loads(body)["chunks"]["pullsSent"]
    return count


class Figures(Counters):
    """``chunk_multicast.py``'s counters, and what only this scenario has."""

    def __init__(self, chunks: int) -> None:
        super().__init__(chunks)
        self.published_at: dict[str, int] = {}  # chunk id -> perf_counter_ns of its announce
        self.request_ns: list[int] = []  # from a chunk_request to its chunk_data
        self.from_cache = 0
        self.pulling = 0


async def publish(
    owner: SignalClient, payloads: dict[str, str], batch: int, proactive: bool, figures: Figures
) -> None:
    """Announce every chunk, ``batch`` per announce, back to back (the acknowledgements are
    read by the owner's ``serve_pulls``); with ``proactive``, push each chunk after its
    announce."""
    ids = list(payloads)
    for start in range(0, len(ids), batch):
        chunk_ids = ids[start : start + batch]
        now = time.perf_counter_ns()
        for chunk_id in chunk_ids:
            figures.published_at[chunk_id] = now
        entries = [{"chunkId": chunk_id} for chunk_id in chunk_ids]
        await owner.send({"type": "chunk_announce", "channelId": CHANNEL, "chunks": entries})
        if proactive:
            for chunk_id in chunk_ids:
                frame = {"chunkId": chunk_id, "channelId": CHANNEL, "data": payloads[chunk_id]}
                await owner.send({"type": "chunk_push", **frame})


async def follow(client: SignalClient, chunks: int, window: int, figures: Figures) -> None:
    """Request every chunk ``chunk_available`` names, at most ``window`` unanswered (0: all at
    once), until K chunks are delivered or refused."""
    told: collections.deque[str] = collections.deque()
    asked: dict[str, int] = {}  # chunk id -> perf_counter_ns of its request
    limit = window or math.inf
    done = 0
    while done < chunks:
        while told and len(asked) < limit:
            chunk_id = told.popleft()
            asked[chunk_id] = time.perf_counter_ns()
            await client.send({"type": "chunk_request", "chunkId": chunk_id, "channelId": CHANNEL})
        frame = await client.receive()
        kind = frame.get("type")
        chunk_id = frame.get("chunkId")
        if kind == "chunk_available" and frame.get("channelId") == CHANNEL:
            told.extend(frame["chunkIds"])
        elif kind == "chunk_pulling" and chunk_id in asked:
            figures.pulling += 1
        elif kind == "chunk_data" and chunk_id in asked:
            now = time.perf_counter_ns()
            figures.request_ns.append(now - asked.pop(chunk_id))
            figures.latencies_ns.append(now - figures.published_at[chunk_id])
            done += 1
            figures.deliveries += 1
            figures.delivered_bytes += len(frame["data"])
            figures.from_cache += frame.get("source") == "cache"
        else:
            figures.error(frame)
            if kind == "chunk_error" and chunk_id in asked:
                del asked[chunk_id]
                done += 1  # refused: it will not come


async def run(
    args: argparse.Namespace, url: str, cpu: Callable[[], float | None], pid: int | None
) -> dict[str, Any]:
    payloads = {
        f"chunk-{index}": base64.b64encode(secrets.token_bytes(args.size)).decode()
        for index in range(args.chunks)
    }
    figures = Figures(args.chunks)
    batch = min(args.batch or args.chunks, ANNOUNCE_MAX_DEFAULT)
    pulled: collections.Counter[str] = collections.Counter()
    async with AsyncExitStack() as stack:

        async def connected(index: int) -> SignalClient:
            client = await stack.enter_async_context(
                connect_signal(url, max_message_size=1 << 22, timeout=args.timeout)
            )
            await client.register(pairing_code(index), generate_public_key())
            return client

        owner = await connected(0)
        await owner.own_channel(CHANNEL)
        subscribers = []
        for index in range(1, args.subscribers + 1):
            subscriber = await connected(index)
            await subscriber.subscribe(CHANNEL)
            subscribers.append(subscriber)
        pulls_before = await pulls_sent(url)
        cpu_before, started = cpu(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: owner.serve_pulls(payloads, pulled=pulled))
            with trio.move_on_after(args.timeout) as scope:
                async with trio.open_nursery() as phase:
                    for subscriber in subscribers:
                        phase.start_soon(follow, subscriber, args.chunks, args.window, figures)
                    await publish(owner, payloads, batch, args.proactive, figures)
            timed_out = scope.cancelled_caught
            nursery.cancel_scope.cancel()
        seconds = time.perf_counter() - started
        cpu_after = cpu()
        pulls = await pulls_sent(url) - pulls_before
        # What the owner read besides the pulls it served: the announce (and proactive push)
        # acknowledgements.
        registered = 0
        for frame in owner.set_aside:
            kind = frame.get("type")
            if kind == "chunk_announce_ack":
                registered += frame["registered"]
            elif kind != "chunk_push_ack":
                figures.error(frame)
    cpu_used = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    expected = args.subscribers * args.chunks
    missing = expected - figures.deliveries
    unregistered = args.chunks - registered if not timed_out else 0
    deliveries = figures.deliveries
    return {
        "benchmark": "channels",
        "subscribers": args.subscribers,
        "chunks": args.chunks,
        "size": args.size,
        "batch": batch,
        "window": args.window,
        "proactive": args.proactive,
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(deliveries / seconds, 1),
        "delivered_mb_per_s": round(figures.delivered_bytes / seconds / 1e6, 2),
        "p50_ms": percentile_ms(figures.latencies_ns, 50),
        "p99_ms": percentile_ms(figures.latencies_ns, 99),
        "request_p50_ms": percentile_ms(figures.request_ns, 50),
        "request_p99_ms": percentile_ms(figures.request_ns, 99),
        "pulls_per_chunk": round(pulls / args.chunks, 3),
        "max_pulls_of_one_chunk": max(pulled.values(), default=0),
        "cache_share": round(figures.from_cache / deliveries, 3) if deliveries else None,
        "pulling_per_delivery": round(figures.pulling / deliveries, 3) if deliveries else None,
        "errors": figures.errors + missing + unregistered,
        "error_samples": figures.error_samples,
        "timed_out": timed_out,
        **cpu_figures(cpu_used, deliveries, "delivery"),
        "server_peak_rss_mb": None if pid is None else peak_rss_mb(pid),
        **run_facts(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100, help="N")
    parser.add_argument("--chunks", type=int, default=64, help="K")
    parser.add_argument("--size", type=int, default=16_384, help="S: raw bytes per chunk")
    parser.add_argument(
        "--batch", type=int, default=0, help="chunks per announce (0: all K, at most 100 each)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=4,
        help="requests each subscriber keeps unanswered (0: all it is told of at once)",
    )
    parser.add_argument(
        "--proactive", action="store_true", help="push every chunk after its announce"
    )
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    result = trio.run(measure_server, args.url, SERVER_ENV, functools.partial(run, args))
    emit(result, Path(args.out))
    return 1 if result["errors"] or result["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
