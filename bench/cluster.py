"""Cluster mode's cost: server CPU per item of the signaling and chunk loads on one node and on a
cluster of nodes sharing one Redis.

Run from the repository root::

    python bench/cluster.py                 # both loads, single node / cluster / --reuse-port
    python bench/cluster.py --quick         # tiny numbers, a smoke run
    python bench/cluster.py --profile DIR   # every node under cProfile, summaries in DIR

Loads (the scenarios of ``bench/signaling.py`` and ``bench/chunk_multicast.py``, run by their
own code):

- ``signaling``: P = 10 pairs relay M = 2,000 messages each way, window 32; the item is one
  relayed frame (4PM of them).
- ``chunks``: one source, K = 32 chunks of S = 16 KiB, N = 500 subscribers requesting every
  chunk (window 4); the item is one delivery (NK of them). Each chunk must be pulled from the
  source exactly once and every delivery must arrive (checked: ``one_pull_per_chunk``,
  ``errors``).

Variants, each started afresh for each load and stopped after it:

- ``single``: one ``zajel serve`` without ``--cluster`` (the baseline).
- ``cluster``: one Redis (``--save '' --appendonly no``, a free port), an *owner* node started
  first with no clients, which takes every lease and only routes, then two *edge* nodes on
  ports of their own. Loading starts once every node's ``GET /stats`` names the owner as the
  owner of every service. Placement: the chunk source and the even-numbered subscribers on
  edge1, the odd-numbered ones on edge2; for signaling, by default (``split``) the first side
  of every pair on edge1 and the second on edge2, so that every relayed frame goes edge, owner,
  other edge; ``--signaling-placement alternate`` puts both sides of even pairs on edge1 and of
  odd pairs on edge2 (a frame goes edge, owner, same edge).
- ``reuse_port``: two nodes sharing one port with ``--reuse-port`` (node1, started first, owns
  every service) and every client on that port: the kernel spreads the connections.

Every node runs with the environment of its load's own benchmark (the rate limits and caps
raised, ``bench/_server.py``'s ``THROUGHPUT_ENV``; the chunk load's larger outbound queue), which
also lets the ``/stats`` polls through. CPU: utime + stime of every node and of redis-server
from ``/proc/<pid>/stat``, read right before and right after the measured phase of the load
(not its connecting, pairing and warm-up). Reported per variant: each process's CPU seconds and
µs per item, their sum, and for the cluster the ratios owner/single and total/single, against
the bars (reported, not asserted): the owner at most 40 % of the single node, the total (all
nodes and Redis) at most 1.5 times it. The hop between nodes, per node, from ``/stats``
(``cluster.hop``): its counters over the measured phase (messages, batches and bytes sent and
received, calls), batches per message, and the p50/p99 of its latency at the end of the phase
(its last 2048 samples).

Output: one JSON line on stdout, appended to ``--out``; the same figures, indented, in the
``.json`` file beside it (``bench/results/cluster.json`` by default). With ``--profile DIR``
every ``zajel serve`` runs under ``python -m cProfile`` (its CPU figures are then inflated:
compare them with each other only); DIR gets each node's ``.prof`` and a ``.txt`` with its top
functions by total and by cumulative time. Everything runs on 127.0.0.1 and every wait is
bounded (``--timeout`` per load and variant). Exit status 1 if a run failed, had errors or
pulled a chunk other than once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from bench import chunk_multicast, signaling  # noqa: E402
from bench._cluster import (  # noqa: E402
    PROFILE_START,
    PROFILE_STOP,
    free_port,
    owned_by,
    profiled,
    running_node,
    running_redis,
    wait_views,
)
from bench._server import emit, process_cpu_seconds, run_facts, running_server  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "cluster.jsonl"
LOADS = ("signaling", "chunks")
VARIANTS = ("single", "cluster", "reuse_port")
# The bars of the cluster (reported, not asserted): owner and total CPU per item over the
# single node's.
OWNER_BAR = 0.40
TOTAL_BAR = 1.5
HOP_COUNTERS = (
    "messages_out",
    "batches_out",
    "bytes_out",
    "messages_in",
    "batches_in",
    "bytes_in",
    "calls",
    "call_timeouts",
)
PROFILE_TOP = 30

# The figures of one load on one variant.
Figures = dict[str, Any]
# A load against running servers: (entry url, where client i goes or None, mark) -> figures.
Load = Callable[
    [str, Callable[[int], str] | None, Callable[[str], Awaitable[None]]], Awaitable[Figures]
]


class Meter:
    """CPU seconds of named processes and the hop counters of named nodes over the measured
    phases: ``mark("start")`` reads the hop then the CPU; ``mark("end")`` the CPU then the hop
    (so the ``/stats`` requests fall outside the CPU interval)."""

    def __init__(self, processes: dict[str, int], stats_urls: list[str], nodes: list[str]) -> None:
        self.processes = processes
        self.profiled: list[int] = []  # pids told to profile the measured phases only
        self.stats_urls = stats_urls
        self.nodes = nodes
        self.cpu_used = {name: 0.0 for name in processes}
        self._cpu_before: dict[str, float] | None = None
        self.hop_before: dict[str, dict[str, Any]] = {}
        self.views_after: dict[str, dict[str, Any]] = {}
        self.phases = 0

    def _cpu(self) -> dict[str, float]:
        return {name: process_cpu_seconds(pid) for name, pid in self.processes.items()}

    async def _hops(self) -> dict[str, dict[str, Any]]:
        if not self.nodes:
            return {}
        return await wait_views(self.stats_urls, self.nodes)

    async def mark(self, phase: str) -> None:
        if phase == "start":
            views = await self._hops()
            if not self.hop_before:
                self.hop_before = views
            self._cpu_before = self._cpu()
            for pid in self.profiled:
                os.kill(pid, PROFILE_START)
            return
        for pid in self.profiled:
            os.kill(pid, PROFILE_STOP)
        after = self._cpu()
        assert self._cpu_before is not None
        for name, seconds in after.items():
            self.cpu_used[name] += seconds - self._cpu_before[name]
        self._cpu_before = None
        self.phases += 1
        self.views_after = await self._hops()

    def hop(self, items: int) -> dict[str, Any]:
        """Per node: the hop's counters over the measured phases, batches per message, and its
        latency percentiles at the end."""
        out: dict[str, Any] = {}
        for node in self.nodes:
            before = self.hop_before[node]["cluster"]["hop"]
            after = self.views_after[node]["cluster"]["hop"]
            counted = {key: after[key] - before[key] for key in HOP_COUNTERS}
            counted["batches_per_message_out"] = (
                round(counted["batches_out"] / counted["messages_out"], 4)
                if counted["messages_out"]
                else None
            )
            counted["messages_out_per_item"] = round(counted["messages_out"] / items, 4)
            counted["bytes_out_per_item"] = round(counted["bytes_out"] / items, 1)
            counted["latency_ms"] = after["latency_ms"]
            out[node] = counted
        return out

    def connections(self) -> dict[str, int | None]:
        """WebSocket connections per node at the end of the load, from each node's own last
        heartbeat (written every 0.5 s)."""
        return {
            node: (view["cluster"].get("per_node") or {}).get(node, {}).get("connections")
            for node, view in self.views_after.items()
        }


def cpu_figures(meter: Meter, items: int) -> Figures:
    per_item = {
        name: round(seconds / items * 1e6, 2) if items else None
        for name, seconds in meter.cpu_used.items()
    }
    total = sum(meter.cpu_used.values())
    return {
        "cpu_s": {name: round(seconds, 3) for name, seconds in meter.cpu_used.items()},
        "cpu_us_per_item": per_item,
        "total_cpu_s": round(total, 3),
        "total_cpu_us_per_item": round(total / items * 1e6, 2) if items else None,
    }


# -- the loads ------------------------------------------------------------------------------


def signaling_load(options: argparse.Namespace) -> Load:
    args = signaling.parse_args(
        [
            f"--pairs={options.pairs}",
            f"--messages={options.messages}",
            f"--window={options.window}",
            f"--timeout={options.timeout}",
        ]
    )

    async def run(
        url: str, url_of: Callable[[int], str] | None, mark: Callable[[str], Awaitable[None]]
    ) -> Figures:
        measured = await signaling.measure(url, None, args, url_of=url_of, mark=mark)
        line = signaling.result_line(args, measured, "cluster")
        return {
            "items": line["relayed"],
            "expected_items": line["expected_relayed"],
            "seconds": line["seconds"],
            "throughput": line["msgs_per_s"],
            "throughput_unit": "msgs_per_s",
            "p50_ms": line["p50_ms"],
            "p99_ms": line["p99_ms"],
            "errors": line["errors"],
            "lost": line["lost"],
            "timed_out": line["timed_out"],
            "setup_error": line["setup_error"],
            "error_samples": line["error_samples"],
            "client_cpu_s": line["client_cpu_s"],
        }

    return run


def chunks_load(options: argparse.Namespace) -> Load:
    args = argparse.Namespace(
        subscribers=options.subscribers,
        chunks=options.chunks,
        size=options.size,
        window=4,
        waves=1,
        timeout=options.timeout,
    )

    async def run(
        url: str, url_of: Callable[[int], str] | None, mark: Callable[[str], Awaitable[None]]
    ) -> Figures:
        line = await chunk_multicast.run(
            args, url, lambda: None, None, subscriber_url=url_of, mark=mark
        )
        return {
            "items": line["deliveries"],
            "expected_items": line["expected_deliveries"],
            "seconds": line["seconds"],
            "throughput": line["deliveries_per_s"],
            "throughput_unit": "deliveries_per_s",
            "p50_ms": line["p50_ms"],
            "p99_ms": line["p99_ms"],
            "errors": line["errors"],
            "timed_out": line["timed_out"],
            "error_samples": [str(sample)[:300] for sample in line["error_samples"]],
            "pulls_per_chunk": line["pulls_per_chunk"],
            "max_pulls_of_one_chunk": line["max_pulls_of_one_chunk"],
            "one_pull_per_chunk": (
                line["pulls_per_chunk"] == 1.0 and line["max_pulls_of_one_chunk"] == 1
            ),
        }

    return run


# -- the variants -----------------------------------------------------------------------------


def load_env(load: str) -> dict[str, str]:
    return dict(signaling.SERVER_ENV if load == "signaling" else chunk_multicast.SERVER_ENV)


def profiler(options: argparse.Namespace, load: str, variant: str, node: str) -> list[str]:
    """``python_args`` that profile this node into the profile directory (none without one)."""
    if options.profile is None:
        return []
    return profiled(options.profile / f"{load}-{variant}-{node}.prof", options.profile_clock)


async def run_variant(options: argparse.Namespace, load: str, variant: str) -> Figures:
    """Start the variant's processes, run the load against them, stop them; the figures."""
    env = load_env(load)
    run = signaling_load(options) if load == "signaling" else chunks_load(options)
    placed: Callable[[int], str] | None = None
    async with AsyncExitStack() as stack:
        if variant == "single":
            server = await stack.enter_async_context(
                running_server(env, python_args=profiler(options, load, variant, "single"))
            )
            meter = Meter({"single": server.pid}, [], [])
            entry = server.url
        elif variant == "cluster":
            redis = await stack.enter_async_context(running_redis())
            owner = await stack.enter_async_context(
                running_node(
                    redis.url, "owner", env, python_args=profiler(options, load, variant, "owner")
                )
            )
            await wait_views([owner.url], ["owner"], owned_by("owner"))
            edges = []
            for name in ("edge1", "edge2"):
                edges.append(
                    await stack.enter_async_context(
                        running_node(
                            redis.url, name, env, python_args=profiler(options, load, variant, name)
                        )
                    )
                )
            nodes = {"owner": owner, "edge1": edges[0], "edge2": edges[1]}
            urls = [node.url for node in nodes.values()]
            await wait_views(urls, list(nodes), owned_by("owner"))
            meter = Meter(
                {**{name: node.pid for name, node in nodes.items()}, "redis": redis.pid},
                urls,
                list(nodes),
            )
            entry = edges[0].url
            if load == "chunks":
                placed = _by_parity(edges[0].url, edges[1].url)  # subscriber i: i % 2
            elif options.signaling_placement == "split":
                placed = _by_parity(edges[0].url, edges[1].url)  # client 2p, 2p + 1
            else:
                placed = _by_pair(edges[0].url, edges[1].url)
        else:
            redis = await stack.enter_async_context(running_redis())
            port = free_port()
            first = await stack.enter_async_context(
                running_node(
                    redis.url,
                    "node1",
                    env,
                    port=port,
                    reuse_port=True,
                    python_args=profiler(options, load, variant, "node1"),
                )
            )
            await wait_views([first.url], ["node1"], owned_by("node1"))
            second = await stack.enter_async_context(
                running_node(
                    redis.url,
                    "node2",
                    env,
                    port=port,
                    reuse_port=True,
                    python_args=profiler(options, load, variant, "node2"),
                )
            )
            await wait_views([first.url], ["node1", "node2"], owned_by("node1"))
            meter = Meter(
                {"node1": first.pid, "node2": second.pid, "redis": redis.pid},
                [first.url],
                ["node1", "node2"],
            )
            entry = first.url
        if options.profile is not None:
            meter.profiled = [pid for name, pid in meter.processes.items() if name != "redis"]
        figures = await run(entry, placed, meter.mark)
        if meter.phases:
            figures.update(cpu_figures(meter, figures["items"]))
            if meter.nodes:
                figures["hop"] = meter.hop(figures["items"] or 1)
                figures["connections"] = meter.connections()
    return figures


def _by_parity(even: str, odd: str) -> Callable[[int], str]:
    return lambda index: even if index % 2 == 0 else odd


def _by_pair(even: str, odd: str) -> Callable[[int], str]:
    return lambda index: even if (index // 2) % 2 == 0 else odd


def describe(error: BaseException) -> str:
    """One line for an error, looking inside exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"[:500]


def compare(single: Figures, other: Figures, variant: str) -> Figures:
    """The variant's CPU per item over the single node's (``None`` where either is unknown or
    zero), and for the cluster its bars."""
    base = single.get("total_cpu_us_per_item")

    def ratio(value: float | None) -> float | None:
        return round(value / base, 3) if base and value is not None else None

    def met(value: float | None, bar: float) -> bool | None:
        return None if value is None else value <= bar

    per_item = other.get("cpu_us_per_item") or {}
    out: Figures = {"total_over_single": ratio(other.get("total_cpu_us_per_item"))}
    if variant == "cluster":
        out["owner_over_single"] = ratio(per_item.get("owner"))
        out["edges_over_single"] = [ratio(per_item.get(name)) for name in ("edge1", "edge2")]
        out["bars"] = {
            "owner_at_most": OWNER_BAR,
            "owner_met": met(out["owner_over_single"], OWNER_BAR),
            "total_at_most": TOTAL_BAR,
            "total_met": met(out["total_over_single"], TOTAL_BAR),
        }
    return out


def run_failed(figures: Figures) -> bool:
    return bool(
        figures.get("failed")
        or figures.get("errors")
        or figures.get("timed_out")
        or figures.get("setup_error")
        or figures.get("one_pull_per_chunk") is False
        or figures.get("items") != figures.get("expected_items")
        or "cpu_s" not in figures
    )


async def main_async(options: argparse.Namespace) -> dict[str, Any]:
    loads: dict[str, Any] = {}
    for load in options.loads:
        scenario: Figures
        if load == "signaling":
            scenario = {
                "pairs": options.pairs,
                "messages_per_direction": options.messages,
                "window": options.window,
                "item": "relayed frame",
                "placement": (
                    "split: the first side of every pair on edge1, the second on edge2"
                    if options.signaling_placement == "split"
                    else "alternate: both sides of even pairs on edge1, of odd pairs on edge2"
                ),
            }
        else:
            scenario = {
                "subscribers": options.subscribers,
                "chunks": options.chunks,
                "size": options.size,
                "window": 4,
                "item": "delivery",
                "placement": "the source and even subscribers on edge1, odd ones on edge2",
            }
        row: dict[str, Any] = {"scenario": scenario}
        for variant in options.variants:
            print(f"{load} on {variant} ...", file=sys.stderr, flush=True)
            try:
                with trio.fail_after(options.timeout + 120):
                    figures = await run_variant(options, load, variant)
            except Exception as error:
                figures = {"failed": describe(error)}
            row[variant] = figures
            print(
                f"{load} on {variant}: {figures.get('total_cpu_us_per_item')} µs per item "
                f"{figures.get('cpu_us_per_item')}",
                file=sys.stderr,
                flush=True,
            )
        if "single" in row:
            for variant in ("cluster", "reuse_port"):
                if variant in row:
                    row[variant].update(compare(row["single"], row[variant], variant))
        loads[load] = row
    failed = [
        f"{load}/{variant}"
        for load, row in loads.items()
        for variant in options.variants
        if run_failed(row[variant])
    ]
    bars = {
        load: row["cluster"]["bars"]
        for load, row in loads.items()
        if "bars" in row.get("cluster", {})
    }
    return {
        "benchmark": "cluster",
        "quick": options.quick,
        "profiled": options.profile is not None,
        "loads": loads,
        "bars": bars,
        "errors": sum(
            (row[variant].get("errors") or 0)
            for row in loads.values()
            for variant in options.variants
        ),
        "one_pull_per_chunk": (
            all(loads["chunks"][v].get("one_pull_per_chunk") is True for v in options.variants)
            if "chunks" in loads
            else None
        ),
        "failed": failed,
        **run_facts(),
    }


def summarize_profiles(directory: Path) -> None:
    """Each ``.prof`` of ``directory``: its top functions by total and by cumulative time,
    into a ``.txt`` beside it."""
    for path in sorted(directory.glob("*.prof")):
        text = io.StringIO()
        try:
            stats = pstats.Stats(str(path), stream=text)
        except (OSError, TypeError, EOFError) as error:  # nothing was profiled
            path.with_suffix(".txt").write_text(f"{path.name}: {error}\n")
            continue
        stats.strip_dirs()
        for order in ("tottime", "cumulative"):
            print(f"== {path.name} by {order}", file=text)
            stats.sort_stats(order).print_stats(PROFILE_TOP)
        path.with_suffix(".txt").write_text(text.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny numbers, for a smoke run")
    parser.add_argument(
        "--loads", default=",".join(LOADS), help=f"comma-separated, of {','.join(LOADS)}"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {','.join(VARIANTS)}"
    )
    parser.add_argument("--pairs", type=int, help="signaling pairs (10; quick 2)")
    parser.add_argument("--messages", type=int, help="messages per direction (2000; quick 20)")
    parser.add_argument("--window", type=int, help="signaling window (32; quick 4)")
    parser.add_argument("--subscribers", type=int, help="chunk subscribers N (500; quick 4)")
    parser.add_argument("--chunks", type=int, help="chunks K (32; quick 4)")
    parser.add_argument("--size", type=int, help="raw bytes per chunk S (16384; quick 2000)")
    parser.add_argument(
        "--signaling-placement",
        choices=("split", "alternate"),
        default="split",
        help="split: a pair's sides on different edges (default); alternate: pairs by edge",
    )
    parser.add_argument(
        "--profile", type=Path, help="run every node under cProfile; .prof and .txt go here"
    )
    parser.add_argument(
        "--profile-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the profiles count: wall time (default, cheap) or the process's CPU time",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per load and variant, s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (JSON lines)")
    options = parser.parse_args(argv)
    full = {"pairs": 10, "messages": 2000, "window": 32, "subscribers": 500, "chunks": 32}
    quick = {"pairs": 2, "messages": 20, "window": 4, "subscribers": 4, "chunks": 4}
    sizes = {"size": 2000 if options.quick else 16_384}
    for name, value in {**(quick if options.quick else full), **sizes}.items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    options.loads = [load for load in options.loads.split(",") if load]
    options.variants = [variant for variant in options.variants.split(",") if variant]
    if not options.loads or not set(options.loads) <= set(LOADS):
        parser.error(f"--loads must name some of {', '.join(LOADS)}")
    if not options.variants or not set(options.variants) <= set(VARIANTS):
        parser.error(f"--variants must name some of {', '.join(VARIANTS)}")
    if min(options.pairs, options.messages, options.window, options.subscribers) < 1:
        parser.error("--pairs, --messages, --window and --subscribers must be at least 1")
    if options.chunks < 1 or options.size < 0:
        parser.error("--chunks must be at least 1 and --size not negative")
    if options.profile is not None:
        options.profile = options.profile.resolve()
        options.profile.mkdir(parents=True, exist_ok=True)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    result = trio.run(main_async, options)
    if options.profile is not None:
        summarize_profiles(options.profile)
    emit(result, options.out)
    options.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
