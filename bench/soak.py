"""Soak: a bounded mixed load on one node or a 2-node cluster, watching the server for leaks.

Run from the repository root::

    python bench/soak.py --duration 600                # one node, 9000 idle + 1000 busy
    python bench/soak.py --duration 600 --nodes 2      # two nodes on a redis-server
    python bench/soak.py --quick                       # a smoke run: seconds, 200 + 50

Scheme. The script starts its own server(s) at the default caps (``bench/_server.py``; with
``--nodes 2``, a ``redis-server`` and two ``zajel serve --cluster`` nodes on their own ports,
``bench/_cluster.py``), with the keys the HTTP flows need, a shorter ping interval
(``--ping-interval``, so that liveness is exercised) and the log in JSON to a file of its own.
Every client socket is bound to one of 127.0.0.2 ... 127.0.0.250, so the per-IP caps hold
without being raised. Phases:

1. **baseline**: each server's RSS, open fds and trio tasks, idle.
2. **idle**: ``--idle`` WebSockets opened by ``--idle-processes`` client processes
   (``bench/_soak_idle.py``), half on ``/signal``, half on ``/relay``, spread over the nodes;
   they answer the server's pings and nothing else. RSS per idle connection is read here.
3. **load**: for ``--duration`` seconds, ``--busy`` connections of good and misbehaving clients
   (``bench/_soak_load.py`` names them and what each must get) plus HTTP registry heartbeats
   and attestation flows.
4. **drain**: the busy clients finish their cycle (bounded), then the idle ones close.
5. **settle**: bounded by ``--settle-timeout``, until every server shows no connection, empty
   registries, and fds and tasks back at the baseline.

Every ``--sample-every`` seconds each server's RSS and fds (``/proc/<pid>``), its trio tasks
(``GET /stats?process=1``) and its WebSocket connections are sampled.

Checks (each a boolean in ``checks``; ``pass`` is all of them):

- ``no_unexpected_errors``: no good client failed or got a wrong reply, no misbehaving client
  got anything but the contract's answer, no idle connection was ended by the server, no
  ``error`` line in any server's log, every server exited 0.
- ``rss_growth_under_10pct``: each server's RSS at the end of the load is less than 10 % above
  its RSS half-way through the load.
- ``fds_back``, ``tasks_back``: at the end, each server's fds and tasks are at most
  ``--fd-tolerance`` / ``--task-tolerance`` above the baseline.
- ``registries_empty``: every live registry in ``/stats`` is 0 (connections, codes, pair
  requests, relays, rendezvous entries, chunk sources and requests, channel owners and
  subscriptions, live streams, registered VPS servers, open challenges). What lives on by
  design is reported apart in ``persisting``: cached chunks (30 min), queued upstream messages,
  attestation devices and references (durable).
- ``idle_all_open``: every idle connection opened.

Output: one JSON line on stdout, also appended to ``--out``; a plot of RSS, fds, tasks and
connections over time, per node, to ``--plot-dir``/``soak-<variant>.png`` (needs matplotlib,
which ``make bench`` installs; skipped with a note on stderr without it). Exit status 0 if
every check passed, 1 otherwise, 2 if the set-up failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from bench._cluster import SERVICES, running_node, running_redis, wait_views  # noqa: E402
from bench._server import (  # noqa: E402
    ServerProcess,
    emit,
    process_cpu_seconds,
    run_facts,
    running_server,
)
from bench._soak_load import Load, Tally, actor_counts, busy_connections, run_load, server_env  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "soak.jsonl"
DEFAULT_PLOT_DIR = REPO_ROOT / "bench" / "results"
STATS_TIMEOUT_S = 5.0
IDLE_READY_TIMEOUT_S = 180.0
IDLE_DONE_TIMEOUT_S = 60.0
RSS_GROWTH_LIMIT = 0.10
# Trio tasks a pooled coredis connection holds (measured: 3 concurrent commands opened 2
# connections and 6 tasks, and the pool kept them).
TASKS_PER_POOLED = 3

# The registries that must be empty once every client is gone: (section, field).
MUST_BE_EMPTY = [
    ("signaling", "connections"),
    ("signaling", "pairingCodes"),
    ("signaling", "pendingPairRequests"),
    ("relays", "totalPeers"),
    ("relays", "totalCapacity"),
    ("relays", "totalConnected"),
    ("relays", "availableRelays"),
    ("rendezvous", "dailyPoints"),
    ("rendezvous", "hourlyTokens"),
    ("rendezvous", "totalEntries"),
    ("chunks", "trackedChunks"),
    ("chunks", "totalSources"),
    ("chunks", "pendingRequests"),
    ("channels", "owned"),
    ("channels", "subscriptions"),
    ("channels", "liveStreams"),
    ("servers", "totalServers"),
    ("servers", "liveServers"),
    ("attestation", "openChallenges"),
    ("attestation", "flaggedDevices"),
]
# What lives on by design after its clients left (docs/operations.md, "/stats").
PERSISTING = [
    ("chunks", "cachedChunks"),
    ("channels", "queuedUpstream"),
    ("attestation", "devices"),
    ("attestation", "references"),
]

# ``python -c LOG_TO LOGFILE -m MODULE ARGS...``: MODULE with its stderr (the server's log) in
# LOGFILE, so the soak can count the log's errors and warnings.
LOG_TO = """
import os, runpy, sys
log, flag, module = sys.argv[1:4]
assert flag == "-m", sys.argv
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(fd, 2)
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


# -- the servers ---------------------------------------------------------------------------


class Node:
    """One server process of the soak: where it listens, its pid and its log."""

    def __init__(self, name: str, server: ServerProcess, log: Path) -> None:
        self.name = name
        self.server = server
        self.log = log
        host, _, port = server.url.removeprefix("http://").rpartition(":")
        self.address = (host, int(port))
        self.cpu_start = 0.0
        self.cpu_end = 0.0

    def rss_fds(self) -> tuple[int | None, int | None]:
        """RSS (bytes) and open fds from ``/proc``; ``None`` once the process is gone."""
        pid = self.server.pid
        try:
            rss = None
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
            fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        except (OSError, ValueError):
            return None, None
        return rss, fds


@asynccontextmanager
async def running_nodes(count: int, env: dict[str, str], logs: Path) -> AsyncIterator[list[Node]]:
    """One ``zajel serve``, or ``count`` cluster nodes and their ``redis-server``."""
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        if count == 1:
            log = logs / "node-1.log"
            server = await stack.enter_async_context(
                running_server(env, python_args=["-c", LOG_TO, str(log)])
            )
            nodes.append(Node("node-1", server, log))
        else:
            redis = await stack.enter_async_context(running_redis())
            for number in range(1, count + 1):
                log = logs / f"node-{number}.log"
                server = await stack.enter_async_context(
                    running_node(
                        redis.url, f"node-{number}", env, python_args=["-c", LOG_TO, str(log)]
                    )
                )
                nodes.append(Node(f"node-{number}", server, log))

            def ready(view: dict[str, Any]) -> bool:
                cluster = view.get("cluster") or {}
                owners = cluster.get("owners") or {}
                return not cluster.get("degraded", True) and all(owners.get(s) for s in SERVICES)

            await wait_views([n.server.url for n in nodes], {n.name for n in nodes}, ready)
        yield nodes


def _fetch(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=STATS_TIMEOUT_S) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as error:
        error.close()
        raise OSError(f"{url} answered {error.code}") from None


async def stats(node: Node) -> dict[str, Any]:
    """``GET /stats?process=1`` of ``node`` (bounded)."""
    with trio.fail_after(STATS_TIMEOUT_S + 1):
        return await trio.to_thread.run_sync(
            _fetch, node.server.url + "/stats?process=1", abandon_on_cancel=True
        )


# -- sampling -----------------------------------------------------------------------------


class Sampler:
    """The samples of every node over the run, and the phases' start times."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.start = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.phases: dict[str, float] = {}
        self.stats_failures = 0
        self.failure_samples: list[str] = []
        self.last_stats: list[dict[str, Any] | None] = [None] * len(nodes)

    def phase(self, name: str) -> None:
        self.phases[name] = round(time.monotonic() - self.start, 2)

    async def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": round(time.monotonic() - self.start, 2), "nodes": []}
        for index, node in enumerate(self.nodes):
            try:
                view: dict[str, Any] | None = await stats(node)
            except (OSError, trio.TooSlowError, ValueError) as error:
                self.stats_failures += 1
                if len(self.failure_samples) < 5:
                    self.failure_samples.append(f"{node.name}: {type(error).__name__}: {error}")
                view = None
            rss, fds = node.rss_fds()
            entry: dict[str, Any] = {
                "rss": rss,
                "fds": fds,
                "tasks": None,
                "connections": None,
                "redis_connections": 0,
            }
            if view is not None:
                self.last_stats[index] = view
                entry["tasks"] = (view.get("process") or {}).get("tasks")
                cluster = view.get("cluster")
                if cluster is None:
                    entry["connections"] = view.get("connections")
                else:
                    entry["redis_connections"] = cluster.get("redis_connections", 0)
                    own = cluster.get("per_node", {}).get(cluster.get("node"), {})
                    entry["connections"] = own.get("connections")
            row["nodes"].append(entry)
        self.samples.append(row)
        return row

    async def every(self, seconds: float) -> None:
        """Sample every ``seconds`` until cancelled."""
        while True:
            await self.sample()
            await trio.sleep(seconds)

    def series(self, index: int, key: str, since: float = 0, until: float = 1e18) -> list[Any]:
        return [
            s["nodes"][index][key]
            for s in self.samples
            if since <= s["t"] <= until and s["nodes"][index][key] is not None
        ]


# -- idle client processes ----------------------------------------------------------------


class IdleProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = b""

    async def event(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        with trio.fail_after(within):
            while b"\n" not in self.buffer:
                chunk = await self.process.stdout.receive_some(65536)
                if not chunk:
                    raise RuntimeError("an idle client process ended early")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        return event

    async def stop(self) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(b"stop\n")
            await self.process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def idle_processes(
    nodes: list[Node], idle: int, processes: int, app_ping: float
) -> AsyncIterator[list[IdleProcess]]:
    """``processes`` client processes holding ``idle`` connections between them."""
    targets = [f"{host}:{port}" for host, port in (n.address for n in nodes)]
    started: list[IdleProcess] = []
    try:
        share, first = -(-idle // processes), 0
        for _ in range(processes):
            count = min(share, idle - first)
            if count <= 0:
                break
            command = [sys.executable, str(REPO_ROOT / "bench" / "_soak_idle.py")]
            command += ["--targets", *targets, "--count", str(count), "--first", str(first)]
            command += ["--app-ping", str(app_ping)]
            process = await trio.lowlevel.open_process(
                command, stdin=-1, stdout=-1, cwd=str(REPO_ROOT)
            )
            started.append(IdleProcess(process))
            first += count
        yield started
    finally:
        with trio.CancelScope(shield=True):
            for child in started:
                await child.stop()
            with trio.move_on_after(IDLE_DONE_TIMEOUT_S):
                for child in started:
                    await child.process.wait()
            for child in started:
                if child.process.returncode is None:
                    child.process.kill()
                    await child.process.wait()


# -- the run ------------------------------------------------------------------------------


def pool_growth(base: dict[str, Any], now: dict[str, Any]) -> int:
    """Redis connections a cluster node's coredis pool opened since the baseline (a burst of
    concurrent writes opens them and the pool keeps them, up to its maximum): each holds an fd
    and ``TASKS_PER_POOLED`` tasks, which are not a leak (``redis_connections`` of ``/stats``'s
    ``cluster``)."""
    return max(0, (now.get("redis_connections") or 0) - (base.get("redis_connections") or 0))


def registries(view: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """The registries of a ``/stats`` view that are not empty, and what persists by design."""
    left = {
        f"{section}.{field}": view.get(section, {}).get(field, 0)
        for section, field in MUST_BE_EMPTY
        if view.get(section, {}).get(field, 0)
    }
    if view.get("connections"):
        left["connections"] = view["connections"]
    persisting = {f"{s}.{f}": view.get(s, {}).get(f, 0) for s, f in PERSISTING}
    return left, persisting


def scan_log(path: Path) -> dict[str, Any]:
    """Counts of a server log's lines by level, its warnings by message, and error samples."""
    levels: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    samples: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
            level, message = str(entry.get("level")), str(entry.get("message"))
        except (ValueError, AttributeError):
            level, message = "unformatted", line  # a traceback or a line from outside logging
        levels[level] += 1
        if level == "warning":
            warnings[message] += 1
        elif level in ("error", "critical", "unformatted") and len(samples) < 5:
            samples.append(line[:400])
    return {"levels": dict(levels), "warnings": dict(warnings), "error_samples": samples}


async def soak(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    env = {**server_env(), "ZAJEL_WS_PING_INTERVAL": str(args.ping_interval)}
    env["ZAJEL_LOG_FORMAT"] = "json"
    env["ZAJEL_LOG_LEVEL"] = "warning"
    tally = Tally()
    result: dict[str, Any] = {}
    nodes: list[Node] = []
    exits: list[str] = []
    try:
        async with running_nodes(args.nodes, env, logs) as nodes:
            sampler = Sampler(nodes)
            with trio.fail_after(args.timeout):
                result = await measure(args, nodes, sampler, tally)
            for node in nodes:
                node.cpu_end = process_cpu_seconds(node.server.pid)
    except* RuntimeError as group:
        if not result:  # the set-up failed
            raise
        # A server that did not exit 0 on SIGTERM (bench/_server.py).
        exits += [str(error) for error in group.exceptions]
    # The servers have stopped: read their logs.
    logs_seen = [scan_log(node.log) for node in nodes]
    server_errors = sum(
        log["levels"].get(level, 0)
        for log in logs_seen
        for level in ("error", "critical", "unformatted")
    )
    result["server_logs"] = logs_seen
    result["server_exit_failures"] = exits
    result["unexpected_errors"] += server_errors + len(exits)
    result["error_kinds"].update(server_log=server_errors, server_exit=len(exits))
    for node, figures in zip(nodes, result["per_node"], strict=True):
        used = node.cpu_end - node.cpu_start
        figures["cpu_s"] = round(used, 1)
        figures["cpu_pct_of_run"] = round(100 * used / max(result["run_s"], 1e-9), 1)
    checks = result["checks"]
    checks["no_unexpected_errors"] = result["unexpected_errors"] == 0
    result["pass"] = all(checks.values())
    return result


async def measure(
    args: argparse.Namespace, nodes: list[Node], sampler: Sampler, tally: Tally
) -> dict[str, Any]:
    started = time.monotonic()
    for node in nodes:
        node.cpu_start = process_cpu_seconds(node.server.pid)
    own_cpu_start = process_cpu_seconds_self()
    sampler.phase("baseline")
    await trio.sleep(args.sample_every)
    await sampler.sample()
    await trio.sleep(args.sample_every)
    baseline = await sampler.sample()
    unexpected: Counter[str] = Counter()
    idle_report: dict[str, Any] = {"open": 0, "pings": 0, "unexpected": 0, "samples": []}
    load = Load([node.address for node in nodes], tally, quick=args.quick)
    counts = actor_counts(args.busy)
    async with trio.open_nursery() as sampling:
        sampling.start_soon(sampler.every, args.sample_every)
        sampler.phase("idle")
        idle_cpu: list[float] = []
        async with idle_processes(nodes, args.idle, args.idle_processes, args.app_ping) as idlers:
            for child in idlers:
                ready = await child.event(IDLE_READY_TIMEOUT_S)
                idle_report["open"] += ready.get("open", 0)
                idle_report["unexpected"] += ready.get("unexpected", 0)
                idle_report["samples"] += ready.get("samples", [])
            await trio.sleep(min(2, args.sample_every))  # the connect burst's garbage goes
            with_idle = await sampler.sample()
            sampler.phase("load")
            load_started = time.monotonic()
            async with trio.open_nursery() as loading:

                async def stop_after() -> None:
                    await trio.sleep(args.duration)
                    sampler.phase("drain")
                    load.stop.set()

                loading.start_soon(stop_after)
                await run_load(load, args.busy, args.http_actors, args.finish_timeout)
            load_s = time.monotonic() - load_started
            for child in idlers:
                idle_cpu.append(process_cpu_seconds(child.process.pid))
            sampler.phase("close_idle")
            for child in idlers:
                await child.stop()
            for child in idlers:
                try:
                    done = await child.event(IDLE_DONE_TIMEOUT_S)
                except (RuntimeError, trio.TooSlowError, ValueError) as error:
                    unexpected["idle_process"] += 1
                    idle_report["samples"].append(f"no report: {error}")
                    continue
                idle_report["pings"] += done.get("pings", 0)
                idle_report["unexpected"] += done.get("unexpected", 0)
                idle_report["clean_closes"] = idle_report.get("clean_closes", 0) + done.get(
                    "clean_closes", 0
                )
                idle_report["samples"] += done.get("samples", [])
        sampler.phase("settle")
        settled, final = await settle(args, sampler, baseline)
        sampling.cancel_scope.cancel()
    sampler.phase("end")
    idle_report["samples"] = idle_report["samples"][:10]
    unexpected.update(tally.errors)
    unexpected["idle"] += idle_report["unexpected"]
    per_node = []
    mid_t = sampler.phases["load"] + args.duration / 2
    end_t = sampler.phases.get("drain", sampler.phases["load"] + load_s)
    left_all: dict[str, int] = {}
    persisting_all: dict[str, int] = {}
    fds_back = tasks_back = True
    growth_ok = True
    for index, node in enumerate(nodes):
        base, idle_row, last = baseline["nodes"][index], with_idle["nodes"][index], final[index]
        # Idle connection i goes to node i % nodes (bench/_soak_idle.py).
        node_idle = len(range(index, args.idle, len(nodes)))
        rss_mid = sampler.series(index, "rss", mid_t, end_t)  # the load's second half
        growth = None
        if len(rss_mid) >= 2:
            growth = (rss_mid[-1] - rss_mid[0]) / rss_mid[0]
            growth_ok &= growth < RSS_GROWTH_LIMIT
        else:
            growth_ok = False
        pooled = pool_growth(base, last)
        fds_ok = last["fds"] is not None and last["fds"] <= base["fds"] + args.fd_tolerance + pooled
        tasks_ok = (
            last["tasks"] is not None
            and base["tasks"] is not None
            and last["tasks"] <= base["tasks"] + args.task_tolerance + TASKS_PER_POOLED * pooled
        )
        fds_back &= fds_ok
        tasks_back &= tasks_ok
        per_idle = (
            (idle_row["rss"] - base["rss"]) / node_idle if node_idle and idle_row["rss"] else None
        )
        mb = 1024 * 1024
        load_rows = sampler.series(index, "rss", sampler.phases["load"], end_t)
        per_node.append(
            {
                "node": node.name,
                "idle_connections": node_idle,
                "rss_baseline_mb": round(base["rss"] / mb, 1),
                "rss_with_idle_mb": round(idle_row["rss"] / mb, 1),
                "rss_per_idle_conn_kb": None if per_idle is None else round(per_idle / 1024, 2),
                "rss_load_peak_mb": round(max(load_rows) / mb, 1) if load_rows else None,
                "rss_mid_load_mb": round(rss_mid[0] / mb, 1) if rss_mid else None,
                "rss_end_load_mb": round(rss_mid[-1] / mb, 1) if rss_mid else None,
                "rss_growth_last_half_pct": None if growth is None else round(100 * growth, 2),
                "rss_end_mb": None if last["rss"] is None else round(last["rss"] / mb, 1),
                "fds_baseline": base["fds"],
                "fds_peak": max(sampler.series(index, "fds"), default=None),
                "fds_end": last["fds"],
                "redis_connections_added": pooled,
                "tasks_baseline": base["tasks"],
                "tasks_peak": max(sampler.series(index, "tasks"), default=None),
                "tasks_end": last["tasks"],
                "connections_peak": max(sampler.series(index, "connections"), default=None),
            }
        )
        view = sampler.last_stats[index] or {}
        left, persisting = registries(view)
        for key, value in left.items():
            left_all[key] = max(left_all.get(key, 0), value)
        for key, value in persisting.items():
            persisting_all[key] = max(persisting_all.get(key, 0), value)
    run_s = time.monotonic() - started
    client_cpu = process_cpu_seconds_self() - own_cpu_start
    variant = ("1node" if args.nodes == 1 else f"{args.nodes}nodes") + (
        "-quick" if args.quick else ""
    )
    plot = draw(sampler, args.plot_dir / f"soak-{variant}.png", variant)
    return {
        "benchmark": "soak",
        "variant": variant,
        "nodes": args.nodes,
        "duration_s": args.duration,
        "load_s": round(load_s, 1),
        "run_s": round(run_s, 1),
        "idle": args.idle,
        "busy": args.busy,
        "busy_ws_max": busy_connections(args.busy),
        "actors": {**counts, "http_each": args.http_actors},
        "ping_interval_s": args.ping_interval,
        "idle_open": idle_report["open"],
        "idle_pings_answered": idle_report["pings"],
        "idle_clean_closes": idle_report.get("clean_closes", 0),
        "idle_samples": idle_report["samples"],
        "good": dict(tally.good),
        "expected": dict(tally.expected),
        "unexpected_errors": sum(unexpected.values()),
        "error_kinds": dict(unexpected),
        "error_samples": tally.samples,
        "stats_failures": sampler.stats_failures,
        "stats_failure_samples": sampler.failure_samples,
        "settled_s": settled,
        "registries_left": left_all,
        "persisting": persisting_all,
        "per_node": per_node,
        "client_cpu_s": {
            "load_process": round(client_cpu, 1),
            "idle_processes": [round(c, 1) for c in idle_cpu],
        },
        "samples": len(sampler.samples),
        "phases_s": sampler.phases,
        "plot": plot,
        "checks": {
            "idle_all_open": idle_report["open"] == args.idle,
            "rss_growth_under_10pct": growth_ok,
            "fds_back": fds_back,
            "tasks_back": tasks_back,
            "registries_empty": not left_all,
        },
        **run_facts(),
    }


def process_cpu_seconds_self() -> float:
    return process_cpu_seconds(os.getpid())


async def settle(
    args: argparse.Namespace, sampler: Sampler, baseline: dict[str, Any]
) -> tuple[float | None, list[dict[str, Any]]]:
    """Sample (every second) until every node is back at its baseline with empty registries,
    at most ``--settle-timeout``; how long it took (``None``: it never did) and the last
    sample of each node."""
    began = time.monotonic()
    deadline = began + args.settle_timeout
    while True:
        row = await sampler.sample()
        done = True
        for index, entry in enumerate(row["nodes"]):
            base = baseline["nodes"][index]
            view = sampler.last_stats[index] or {}
            left, _ = registries(view)
            done &= not left and entry["fds"] is not None and entry["tasks"] is not None
            pooled = pool_growth(base, entry)
            done = done and entry["fds"] <= base["fds"] + args.fd_tolerance + pooled
            done = done and (
                entry["tasks"] <= base["tasks"] + args.task_tolerance + TASKS_PER_POOLED * pooled
            )
        if done:
            return round(time.monotonic() - began, 1), row["nodes"]
        if time.monotonic() > deadline:
            return None, row["nodes"]
        await trio.sleep(1.5)  # /stats counts against the per-IP HTTP rate (100 a minute)


# -- the plot -----------------------------------------------------------------------------


def draw(sampler: Sampler, path: Path, variant: str) -> str | None:
    """RSS, fds, tasks and connections over time, one line per node; the path, or ``None``
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "soak: no plot: matplotlib is not installed (make bench installs it)", file=sys.stderr
        )
        return None
    figure, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    panels = [
        ("rss", "RSS (MiB)", 1 / (1024 * 1024)),
        ("fds", "open fds", 1),
        ("tasks", "trio tasks", 1),
        ("connections", "WebSocket connections", 1),
    ]
    for axis, (key, label, scale) in zip(axes, panels, strict=True):
        for index, node in enumerate(sampler.nodes):
            points = [
                (s["t"], s["nodes"][index][key] * scale)
                for s in sampler.samples
                if s["nodes"][index][key] is not None
            ]
            if points:
                axis.plot(*zip(*points, strict=True), label=node.name, linewidth=1)
        for name, at in sampler.phases.items():
            axis.axvline(at, color="grey", linewidth=0.5, linestyle=":")
            if key == "rss":
                axis.text(at, 1.01, name, transform=axis.get_xaxis_transform(), fontsize=7)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("seconds")
    figure.suptitle(f"zajel soak ({variant})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


# -- the command --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds of load (600; quick: 4)")
    parser.add_argument("--idle", type=int, help="idle WebSockets (9000; quick: 200)")
    parser.add_argument("--busy", type=int, help="busy connections (1000; quick: 50)")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--sample-every", type=float, help="seconds (5; quick: 1)")
    parser.add_argument("--ping-interval", type=float, help="server's, seconds (10; quick: 1)")
    parser.add_argument("--app-ping", type=float, default=300.0, help="idle clients', seconds")
    parser.add_argument("--idle-processes", type=int, help="client processes (2; quick: 1)")
    parser.add_argument("--http-actors", type=int, help="of each HTTP flow (2; quick: 1)")
    parser.add_argument("--finish-timeout", type=float, help="for the busy clients' last cycle")
    parser.add_argument("--settle-timeout", type=float, help="seconds (60; quick: 15)")
    parser.add_argument("--fd-tolerance", type=int, default=2)
    parser.add_argument("--task-tolerance", type=int, default=2)
    parser.add_argument("--timeout", type=float, help="bound of the whole run (duration + 600)")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs to this directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot-dir", type=Path, default=DEFAULT_PLOT_DIR)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "duration": (600.0, 4.0),
        "idle": (9000, 200),
        "busy": (1000, 50),
        "sample_every": (5.0, 0.5),
        "ping_interval": (10.0, 1.0),
        "idle_processes": (2, 1),
        "http_actors": (2, 1),
        "finish_timeout": (30.0, 3.0),
        "settle_timeout": (60.0, 15.0),
    }
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.timeout is None:
        args.timeout = args.duration + 600
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="zajel-soak-") as logs:
        try:
            result = trio.run(soak, args, Path(logs))
        except* (RuntimeError, OSError, trio.TooSlowError) as group:
            print(f"soak: failed: {group.exceptions}", file=sys.stderr)
            for log in sorted(Path(logs).glob("*.log")):
                print(f"--- {log.name} (tail)", file=sys.stderr)
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in Path(logs).glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
    if not result:
        return 2
    emit(result, args.out)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
