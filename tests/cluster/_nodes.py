"""Real ``zajel serve --cluster`` nodes for the cluster tests, as child processes on loopback.

Started without trio (``subprocess``), so a module's tests can share one cluster; the tests
themselves talk to the nodes over real WebSockets and HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

from tests._redis import RedisServer

LISTENING = re.compile(rb"zajel listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 20.0
# Short leases keep the failover tests short; the rules are the same at the default.
TEST_LEASE_MS = 2000
SERVICES = ("signaling", "relay", "chunks", "servers", "attestation")


class NodeProcess:
    """One node: ``start`` runs ``zajel serve --cluster`` and waits until it listens."""

    def __init__(
        self, directory: Path, redis: RedisServer, node_id: str, env: dict[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.redis = redis
        self.node_id = node_id
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def start(self, *args: str) -> None:
        """Start the node and wait until it listens."""
        self.spawn(*args)
        self.wait_listening()

    def spawn(self, *args: str) -> None:
        """Start the node; ``wait_listening`` waits for it."""
        environment = {
            name: value for name, value in os.environ.items() if not name.startswith("ZAJEL_")
        }
        environment.update(
            {
                "ZAJEL_CLUSTER_LEASE_MS": str(TEST_LEASE_MS),
                "ZAJEL_CLUSTER_CALL_TIMEOUT_MS": "2000",
                "ZAJEL_LOG_LEVEL": "info",
                # The tests poll /stats; the per-IP HTTP budget is not what they test.
                "ZAJEL_HTTP_RATE_PER_MINUTE": "1000000",
                **self.env,
            }
        )
        log = (self.directory / "stderr.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zajel",
                "serve",
                "--port",
                "0",
                "--cluster",
                self.redis.url,
                "--node-id",
                self.node_id,
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=self.directory,
            env=environment,
        )
        log.close()

    def wait_listening(self) -> None:
        """Block until the node prints the URL it listens on."""
        assert self.process is not None
        assert self.process.stdout is not None
        output = b""
        deadline = time.monotonic() + START_TIMEOUT_S
        while (match := LISTENING.search(output)) is None:
            line = self.process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.node_id} did not start: {self.log()}")
            output += line
        self.url = match.group(1).decode()

    def log(self) -> str:
        return (self.directory / "stderr.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no goodbye to Redis or the clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._release()

    def _release(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._release()

    def stats(self) -> dict[str, Any]:
        """``GET /stats`` (blocking; for set-up and polls)."""
        try:
            with urllib.request.urlopen(self.url + "/stats", timeout=5) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body
        except urllib.error.HTTPError as error:
            error.close()  # it holds the response's socket
            raise OSError(f"/stats answered {error.code}") from None


def start_all(nodes: list[NodeProcess]) -> None:
    """Start ``nodes`` at once; return when every one sees the cluster complete, with ``nodes``
    reordered so that the owner comes first. (Each keeper round takes every free lease in one
    script, so the node whose first round runs first owns every service.)"""
    for node in nodes:
        node.spawn()
    for node in nodes:
        node.wait_listening()
    wait_ready(nodes)
    owner = nodes[0].stats()["cluster"]["owners"]["signaling"]
    nodes.sort(key=lambda node: node.node_id != owner)


def wait_ready(nodes: list[NodeProcess], *, within: float = START_TIMEOUT_S) -> None:
    """Block until every node sees every service owned and every other node alive."""
    deadline = time.monotonic() + within
    while True:
        try:
            views = [node.stats()["cluster"] for node in nodes]
            if all(
                all(view["owners"].get(name) for name in SERVICES)
                and not view["degraded"]
                and view["nodes"] >= len(nodes)
                for view in views
            ):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("cluster not ready: " + " | ".join(n.log() for n in nodes))
        time.sleep(0.05)


async def stats(node: NodeProcess) -> dict[str, Any]:
    return await trio.to_thread.run_sync(node.stats)


async def owner_of(node: NodeProcess, service: str) -> str | None:
    try:
        owner: str | None = (await stats(node))["cluster"]["owners"].get(service)
    except OSError:
        return None
    return owner
