"""Start a ``zajel serve`` process for a benchmark, read its CPU time, and stop it.

Usage::

    async with running_server({"ZAJEL_WS_MESSAGE_RATE": "1e9"}) as srv:
        ...  # connect to srv.url
        before = srv.cpu_seconds()
        ...  # the measured phase
        used = srv.cpu_seconds() - before
    srv.exit_code  # set once the server has exited after SIGTERM

The server runs as ``python -m zajel serve --port 0`` with the repository importable, its log
level at ``warning`` and a temporary data directory; ``env_overrides`` win over both the
inherited environment and these defaults. ``python_args`` go between the interpreter and
``-m zajel`` (e.g. ``["-m", "cProfile", "-o", "prof.out"]`` to profile it). Its stderr is
inherited so that a failed start explains itself; its stdout is read for the line
``zajel listening on http://HOST:PORT`` and then drained.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING_PREFIX = "zajel listening on "
MAX_STARTUP_OUTPUT = 64 * 1024  # bytes of stdout read while waiting for the listening line


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, from ``/proc/<pid>/stat`` (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A running server: where it listens, its pid, and its CPU time."""

    def __init__(self, process: trio.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


async def _read_listening_line(stdout: trio.abc.ReceiveStream) -> str:
    buffer = b""
    while len(buffer) < MAX_STARTUP_OUTPUT:
        chunk = await stdout.receive_some(4096)
        if not chunk:
            break
        buffer += chunk
        for raw in buffer.split(b"\n")[:-1]:  # complete lines only
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith(LISTENING_PREFIX):
                return line[len(LISTENING_PREFIX) :]
    raise RuntimeError(f"server did not report its address; stdout was {buffer[-2000:]!r}")


async def _drain(stdout: trio.abc.ReceiveStream) -> None:
    while await stdout.receive_some(65536):
        pass


@asynccontextmanager
async def running_server(
    env_overrides: Mapping[str, str] | None = None,
    *,
    python_args: Sequence[str] = (),
    command_args: Sequence[str] = ("-m", "zajel", "serve", "--port", "0"),
    startup_timeout: float = 30.0,
    stop_timeout: float = 15.0,
) -> AsyncIterator[ServerProcess]:
    """Run a server for the duration of the block; SIGTERM it at the end and check it exits.

    ``command_args`` follow the interpreter; the process must print the line
    ``zajel listening on URL`` and exit 0 on SIGTERM.

    Raises:
        RuntimeError: the server did not start within ``startup_timeout``, or did not exit
            within ``stop_timeout`` of SIGTERM (it is then killed).
    """
    with tempfile.TemporaryDirectory(prefix="zajel-bench-") as data_dir:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env.update({"ZAJEL_LOG_LEVEL": "warning", "ZAJEL_DATA_DIR": data_dir})
        env.update(env_overrides or {})
        command = [sys.executable, *python_args, *command_args]
        process = await trio.lowlevel.open_process(
            command, env=env, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(startup_timeout) as startup:
                    url = await _read_listening_line(process.stdout)
                if startup.cancelled_caught:
                    raise RuntimeError(f"server did not start within {startup_timeout} s")
                nursery.start_soon(_drain, process.stdout)
                server = ServerProcess(process, url)
                yield server
                server.exit_code = await _stop(process, stop_timeout)
                if server.exit_code != 0:
                    raise RuntimeError(f"server exited with code {server.exit_code}")
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if process.returncode is None:  # an error above: do not leave it running
                        await _stop(process, stop_timeout)
                finally:
                    await process.stdout.aclose()


async def _stop(process: trio.Process, grace_s: float) -> int:
    """SIGTERM, wait up to ``grace_s``; SIGKILL and raise if it is still running."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace_s):
        return await process.wait()
    process.kill()
    await process.wait()
    raise RuntimeError(f"server did not exit within {grace_s} s of SIGTERM; killed")


# What a throughput benchmark's server runs with: no per-connection rate limit or connection
# cap in the way (they are settings; a benchmark measures throughput, not limits).
THROUGHPUT_ENV = {
    "ZAJEL_WS_MESSAGE_RATE": "1000000000",
    "ZAJEL_WS_MESSAGE_BURST": "1000000000",
    "ZAJEL_WS_MAX_CONNECTIONS_PER_IP": "1000000",
    "ZAJEL_WS_MAX_CONNECTIONS": "1000000",
    "ZAJEL_HTTP_RATE_PER_MINUTE": "1000000000",
    # Every client of a benchmark is 127.0.0.1: the per-IP budgets would measure themselves.
    "ZAJEL_HTTP_MAX_CONNECTIONS_PER_IP": "1000000",
    "ZAJEL_PAIR_REQUESTS_PER_MINUTE_PER_IP": "1000000",
    "ZAJEL_CHUNK_SOURCES_PER_IP": "100000000",
    "ZAJEL_CHUNK_PENDING_PER_IP": "100000000",
    "ZAJEL_RENDEZVOUS_ENTRIES_PER_IP": "100000000",
    "ZAJEL_ATTEST_REGISTRATIONS_PER_IP_PER_HOUR": "1000000",
    "ZAJEL_LOG_LEVEL": "warning",
}


def emit(result: Mapping[str, Any], out: Path) -> None:
    """Print ``result`` as one JSON line and append the same line to ``out``."""
    line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as results:
        results.write(line + "\n")


def percentile_ms(samples_ns: Sequence[int], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` from 0 to 100) of nanosecond samples, in milliseconds."""
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[rank - 1] / 1e6, 3)


def run_facts() -> dict[str, Any]:
    """When and on what a benchmark ran, for its result line."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "machine": {
            "system": platform.system(),
            "release": platform.release(),
            "arch": platform.machine(),
            "processor": platform.processor() or None,
        },
        "cpus": os.cpu_count(),
    }


# A benchmark's measuring run: (url, server CPU seconds so far or None, server pid or None).
Measure = Callable[[str, Callable[[], float | None], int | None], Awaitable[dict[str, Any]]]


async def measure_server(
    url: str | None, env: Mapping[str, str], measure: Measure
) -> dict[str, Any]:
    """``measure`` against the server at ``url`` (whose CPU time is not known), or against a
    ``zajel serve`` started here with ``env`` and stopped afterwards."""
    if url:
        return await measure(url, lambda: None, None)
    async with running_server(env) as server:
        return await measure(server.url, server.cpu_seconds, server.pid)


def cpu_figures(cpu_used: float | None, items: int, item: str) -> dict[str, float | None]:
    """``server_cpu_s`` and ``server_cpu_us_per_<item>`` of a result line (``None`` where the
    server's CPU time is not known, or nothing was done)."""
    return {
        "server_cpu_s": None if cpu_used is None else round(cpu_used, 3),
        f"server_cpu_us_per_{item}": (
            None if cpu_used is None or not items else round(cpu_used / items * 1e6, 2)
        ),
    }
