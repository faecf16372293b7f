"""What one PUBLISH costs this process: through coredis, and through the hop's own RESP link.

Usage (from the repository root)::

    python bench/redis_publish.py [--count 2000] [--size 300]

Starts a ``redis-server`` (``bench/_cluster.py``), then publishes ``count`` messages of ``size``
bytes three ways and reports the CPU time of this process per message (``time.process_time``):

- ``coredis``: ``await client.publish(...)`` one after the other, as a coredis caller would;
- ``coredis_pipelined``: the same in coredis pipelines of 20;
- ``link``: ``zajel.cluster.link.Publisher.publish_nowait`` (``docs/cluster.md``, "Why pub/sub,
  and why its own connection"), which queues the command and lets one task write many at once.

One JSON line on stdout, also appended to ``bench/results/redis_publish.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import coredis
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio.lowlevel

from bench._cluster import running_redis
from bench._server import emit, run_facts
from zajel.cluster.link import Publisher, RedisAddress, connect

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "redis_publish.jsonl"
PIPELINE = 20


def per_message_us(started: float, count: int) -> float:
    return round((time.process_time() - started) / count * 1e6, 2)


async def measure(url: str, count: int, size: int) -> dict[str, Any]:
    payload = b"x" * size
    figures: dict[str, Any] = {}
    async with coredis.Redis.from_url(url) as client:
        started = time.process_time()
        for _ in range(count):
            await client.publish("bench", payload)
        figures["coredis_us"] = per_message_us(started, count)
        started = time.process_time()
        for _ in range(count // PIPELINE):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(PIPELINE):
                    pipe.publish("bench", payload)
        figures["coredis_pipelined_us"] = per_message_us(started, count // PIPELINE * PIPELINE)
    publisher = Publisher(await connect(RedisAddress.parse(url)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run)
        started = time.process_time()
        for index in range(count):
            publisher.publish_nowait(b"bench", payload)
            if index % PIPELINE == PIPELINE - 1:
                await trio.lowlevel.checkpoint()  # the writer task sends what was queued
        with trio.fail_after(30):
            while publisher.sent < count:
                await trio.lowlevel.checkpoint()
        await trio.sleep(0.1)  # the replies read
        figures["link_us"] = per_message_us(started, count)
        nursery.cancel_scope.cancel()
    return figures


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with running_redis() as redis:
        figures = await measure(redis.url, args.count, args.size)
    return {
        "bench": "redis_publish",
        **run_facts(),
        "count": args.count,
        "size": args.size,
        **figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    emit(trio.run(main_async, args), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
