"""Server registry: heartbeats through the durable store, and the signed list at the cap.

Run from the repository root::

    python bench/registry.py --clients 50 --heartbeats 100 --servers 1000 --lists 200

Scheme. ``--servers`` VPS entries are registered over ``--clients`` keep-alive HTTP connections
(the most the registry holds is 1000). Then each client sends ``--heartbeats`` heartbeats, one
after another, for the servers it registered: every one is a write that is committed to the
SQLite store (WAL, ``synchronous=FULL``) before its 200 is sent, so this measures how group
commit carries concurrent writers. Then the clients fetch ``GET /servers`` ``--lists`` times in
all: the whole list as compact JSON, signed with Ed25519; one answer is verified with
``zajel.bootstrap.verify_server_list``.

Figures: heartbeats per second with p50/p99 latency and the server's CPU per heartbeat; lists
per second with p50/p99, the list's size and the server's CPU per list; ``errors`` (any status
but 200, or a list that does not verify). One JSON line on stdout, also appended to ``--out``.
Every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._server import THROUGHPUT_ENV, emit, percentile_ms, run_facts, running_server  # noqa: E402
from zajel import bootstrap, crypto  # noqa: E402
from zajel.clock import epoch_ms  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "registry.jsonl"
SEED = bytes(range(32))
SERVER_ENV = {**THROUGHPUT_ENV, "ZAJEL_BOOTSTRAP_SIGNING_KEY": SEED.hex()}


class Connection:
    """A keep-alive HTTP/1.1 client connection (h11 over a trio stream), opened again when the
    server ends one (hypercorn closes a connection after 1000 requests by default)."""

    def __init__(self, hostname: str, port: int, netloc: str) -> None:
        self.address = (hostname, port)
        self.host = netloc
        self.stream: trio.SocketStream | None = None
        self.h11 = h11.Connection(h11.CLIENT)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
        if self.stream is None or self.h11.our_state is not h11.IDLE:
            await self.aclose()
            self.stream = await trio.open_tcp_stream(*self.address)
            self.h11 = h11.Connection(h11.CLIENT)
        headers = [("Host", self.host), ("Content-Length", str(len(body)))]
        if body:
            headers.append(("Content-Type", "application/json"))
        data = self.h11.send(h11.Request(method=method, target=path, headers=headers))
        data += self.h11.send(h11.Data(data=body)) if body else b""
        data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status, response_headers, chunks = 0, {}, []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return status, response_headers, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("server closed the connection")


class Results:
    def __init__(self) -> None:
        self.errors = 0
        self.error_samples: list[Any] = []

    def check(self, status: int, what: str, body: bytes) -> None:
        if status != 200:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append({"what": what, "status": status, "body": body[:200]})


def server_body(index: int) -> bytes:
    return json.dumps(
        {
            "serverId": f"bench-{index}",
            "endpoint": f"wss://bench-{index}.relay.example.com/ws",
            "publicKey": f"pk-{index:0>40}",
            "region": "eu-west",
            "connections": index % 100,
        }
    ).encode()


async def phase(
    connections: list[Connection], work: Callable[[int, Connection], Any]
) -> tuple[float, list[int]]:
    """Run ``work(client_index, connection)`` on every connection at once; seconds and the
    latencies (ns) it recorded."""
    latencies: list[int] = []

    async def one(index: int, connection: Connection) -> None:
        latencies.extend(await work(index, connection))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index, connection in enumerate(connections):
            nursery.start_soon(one, index, connection)
    return time.perf_counter() - started, latencies


async def timed(connection: Connection, method: str, path: str, body: bytes, results: Results):
    started = time.perf_counter_ns()
    status, headers, response = await connection.request(method, path, body)
    elapsed = time.perf_counter_ns() - started
    results.check(status, f"{method} {path}", response)
    return elapsed, headers, response


async def run(args: argparse.Namespace, url: str, cpu: Callable[[], float | None]) -> dict:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    results = Results()
    connections = [
        Connection(parts.hostname, parts.port, parts.netloc) for _ in range(args.clients)
    ]
    mine = [list(range(i, args.servers, args.clients)) for i in range(args.clients)]
    try:

        async def register(index: int, connection: Connection) -> list[int]:
            return [
                (await timed(connection, "POST", "/servers", server_body(s), results))[0]
                for s in mine[index]
            ]

        await phase(connections, register)

        async def heartbeats(index: int, connection: Connection) -> list[int]:
            own = mine[index] or [0]
            samples = []
            for n in range(args.heartbeats):
                body = json.dumps({"serverId": f"bench-{own[n % len(own)]}", "connections": n})
                samples.append(
                    (await timed(connection, "POST", "/servers/heartbeat", body.encode(), results))[
                        0
                    ]
                )
            return samples

        cpu_before = cpu()
        beat_s, beat_ns = await phase(connections, heartbeats)
        cpu_after_beats = cpu()

        per_client = [
            args.lists // args.clients + (i < args.lists % args.clients)
            for i in range(args.clients)
        ]
        sample: dict[str, Any] = {}

        async def lists(index: int, connection: Connection) -> list[int]:
            samples = []
            for _ in range(per_client[index]):
                elapsed, headers, body = await timed(connection, "GET", "/servers", b"", results)
                samples.append(elapsed)
                sample.setdefault("response", (headers, body))
            return samples

        list_s, list_ns = await phase(connections, lists)
        cpu_after_lists = cpu()
    finally:
        for connection in connections:
            await connection.aclose()

    listed = 0
    list_bytes = 0
    if "response" in sample:
        headers, body = sample["response"]
        list_bytes = len(body)
        try:
            key = crypto.public_key_b64(crypto.signing_key(SEED))
            listed = len(
                bootstrap.verify_server_list(
                    body, headers.get("x-bootstrap-signature"), key, now_ms=epoch_ms()
                )
            )
        except bootstrap.BootstrapError as exc:
            results.errors += 1
            results.error_samples.append(str(exc))

    def per(used: float | None, count: int, scale: float) -> float | None:
        return None if used is None or not count else round(used / count * scale, 2)

    beat_cpu = None if cpu_before is None else cpu_after_beats - cpu_before
    list_cpu = None if cpu_after_beats is None else cpu_after_lists - cpu_after_beats
    return {
        "benchmark": "registry",
        "clients": args.clients,
        "servers": args.servers,
        "listed": listed,
        "heartbeats": len(beat_ns),
        "heartbeats_per_s": round(len(beat_ns) / beat_s, 1),
        "heartbeat_p50_ms": percentile_ms(beat_ns, 50),
        "heartbeat_p99_ms": percentile_ms(beat_ns, 99),
        "server_cpu_us_per_heartbeat": per(beat_cpu, len(beat_ns), 1e6),
        "lists": len(list_ns),
        "list_bytes": list_bytes,
        "lists_per_s": round(len(list_ns) / list_s, 1) if list_ns else None,
        "list_p50_ms": percentile_ms(list_ns, 50),
        "list_p99_ms": percentile_ms(list_ns, 99),
        "server_cpu_ms_per_list": per(list_cpu, len(list_ns), 1e3),
        "errors": results.errors,
        "error_samples": [repr(sample) for sample in results.error_samples],
        **run_facts(),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with trio.fail_after(args.timeout):
        if args.url:
            return await run(args, args.url, lambda: None)
        async with running_server(SERVER_ENV) as server:
            return await run(args, server.url, server.cpu_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="keep-alive connections")
    parser.add_argument("--heartbeats", type=int, default=100, help="per client")
    parser.add_argument("--servers", type=int, default=1000, help="entries (at most 1000)")
    parser.add_argument("--lists", type=int, default=200, help="GET /servers in all")
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if not 1 <= args.servers <= 1000 or args.clients < 1:
        parser.error("--servers must be 1-1000 and --clients at least 1")
    result = trio.run(main_async, args)
    emit(result, Path(args.out))
    return 1 if result["errors"] or result["listed"] != args.servers else 0


if __name__ == "__main__":
    sys.exit(main())
