"""Signaling throughput and latency: P matched pairs relay M messages each way over ``/signal``.

Run from the repository root::

    python bench/signaling.py --pairs 10 --messages 2000 --window 32

Scheme. Each pair is two connections that ``register`` and consent-pair (``pair_request`` /
``pair_response``). Then each side sends M ``ice_candidate`` frames (a candidate-like payload of
about ``--payload-bytes`` bytes of JSON carrying a run id, a sequence number and a
``time.perf_counter_ns()`` send time) to the other. The receiver of each relayed
``ice_candidate`` acknowledges it at once with an ``answer`` frame echoing the same payload,
which the server relays back. A side keeps at most W of its own messages unacknowledged
(a window per direction, so up to 2W messages and their acknowledgements are in flight per pair).
Latency is the round trip of one message: from just before its ``ice_candidate`` is sent to the
arrival of its ``answer`` at the sender, i.e. two relays through the server and two client
hops. Both ends run in this process and share the clock.

Counting. ``relayed`` counts every frame the server relayed from one peer to the other and a
client received in the measured phase: per pair that is 2 x M messages + 2 x M
acknowledgements = 4M, so P pairs relay 4PM frames. ``msgs_per_s`` is ``relayed / seconds``.
``errors`` counts error frames, unexpected or unmatched frames, connections that failed and
sides that stalled (nothing received for ``--stall-timeout`` seconds); ``lost`` counts messages
never acknowledged. Nothing waits without a bound: every loop is bounded in count, each
receive by the stall timeout, and the whole run by ``--timeout``.

Phases. Connect and pair every pair; a warm-up exchange (``--warmup`` messages per direction,
not counted); then the measured exchange, all pairs at once. Server CPU (utime + stime from
``/proc/<pid>/stat``) is read right before and right after the measured exchange, so start-up,
pairing and warm-up are not counted. By default the script starts its own server (port 0, the
rate limits and connection caps raised, log level ``warning``) and stops it with SIGTERM; with
``--url`` it uses an existing server and reports CPU only if ``--server-pid`` is given.

Output: one JSON line on stdout, also appended to ``--out``. Exit status 1 if there were errors
or the run timed out, 2 if the set-up (server start, connecting, pairing) failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402
import trio_websocket  # noqa: E402

from bench._server import (  # noqa: E402
    THROUGHPUT_ENV,
    emit,
    percentile_ms,
    process_cpu_seconds,
    run_facts,
    running_server,
)
from zajel.client import (  # noqa: E402
    ServerError,
    SignalClient,
    connect_signal,
    generate_public_key,
    pair,
    random_pairing_code,
)

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "signaling.jsonl"

SERVER_ENV = THROUGHPUT_ENV

MESSAGE = "ice_candidate"
ACK = "answer"
# A server-reflexive candidate as browsers write them; repeated and cut to the payload size.
CANDIDATE = (
    "candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx raddr 192.168.1.20 "
    "rport 54321 generation 0 ufrag EEtu network-id 3 network-cost 10 "
)
CONNECTION_ERRORS = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, OSError, ValueError)
MAX_ERROR_SAMPLES = 5


def build_payload_maker(payload_bytes: int, messages: int) -> Callable[[int, int], dict[str, Any]]:
    """A function ``(run, seq) -> payload`` whose JSON is about ``payload_bytes`` long."""

    def shaped(candidate: str, run: int, seq: int) -> dict[str, Any]:
        return {
            "candidate": candidate,
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "run": run,
            "seq": seq,
            "t": time.perf_counter_ns(),
        }

    overhead = len(json.dumps(shaped("", 1, max(messages - 1, 0)), separators=(",", ":")))
    length = max(0, payload_bytes - overhead)
    candidate = (CANDIDATE * (length // len(CANDIDATE) + 1))[:length]
    return lambda run, seq: shaped(candidate, run, seq)


class Side:
    """One end of a pair during one exchange: its window, what it counted, what went wrong."""

    def __init__(self, client: SignalClient, peer: str, window: int) -> None:
        self.client = client
        self.peer = peer
        self.window = trio.Semaphore(window)
        self.outstanding: dict[int, int] = {}  # seq -> perf_counter_ns at send
        self.sent = 0
        self.received = 0  # messages from the peer (each answered with an acknowledgement)
        self.acked = 0  # own messages acknowledged by the peer
        self.relayed = 0  # frames relayed by the server that this side received
        self.errors = 0
        self.stalled = False
        self.latencies_ns: list[int] = []
        self.error_samples: list[str] = []

    def error(self, what: Any) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(str(what)[:300])


async def send_messages(side: Side, run: int, messages: int, make_payload: Callable) -> None:
    for seq in range(messages):
        await side.window.acquire()
        payload = make_payload(run, seq)
        side.outstanding[seq] = payload["t"]
        await side.client.signal(MESSAGE, side.peer, payload)
        side.sent += 1


async def receive_frames(side: Side, run: int, messages: int, stall_timeout: float) -> None:
    # Bounded: every pass receives one frame or ends the loop; a relayed frame raises
    # ``received`` or ``acked``, and the peer sends at most 2M frames that are not errors.
    while side.acked < messages or side.received < messages:
        frame = None
        with trio.move_on_after(stall_timeout):
            frame = await side.client.receive()
        if frame is None:
            side.stalled = True
            side.error(f"stalled: nothing received for {stall_timeout} s")
            return
        kind, payload = frame.get("type"), frame.get("payload")
        if kind not in (MESSAGE, ACK) or frame.get("from") != side.peer:
            side.error(frame)
            continue
        side.relayed += 1
        if not isinstance(payload, dict) or payload.get("run") != run:
            side.error(frame)
            continue
        if kind == MESSAGE:
            side.received += 1
            await side.client.signal(ACK, side.peer, payload)
            continue
        sent_at = side.outstanding.pop(payload.get("seq"), None)
        if sent_at is None:
            side.error(frame)
            continue
        side.latencies_ns.append(time.perf_counter_ns() - sent_at)
        side.acked += 1
        side.window.release()


async def exchange(
    clients: tuple[SignalClient, SignalClient],
    run: int,
    messages: int,
    window: int,
    stall_timeout: float,
    make_payload: Callable,
    results: list[Side],
) -> None:
    """Both sides of one pair send ``messages`` each; a failure ends this pair only."""
    a, b = clients
    assert a.code is not None
    assert b.code is not None
    sides = (Side(a, b.code, window), Side(b, a.code, window))
    results.extend(sides)

    async with trio.open_nursery() as nursery:

        async def guarded(side: Side, work: Callable, *args: Any) -> None:
            try:
                await work(side, run, messages, *args)
            except CONNECTION_ERRORS as exc:
                side.error(f"{type(exc).__name__}: {exc}")
                nursery.cancel_scope.cancel()
            if side.stalled:
                nursery.cancel_scope.cancel()

        for side in sides:
            nursery.start_soon(guarded, side, send_messages, make_payload)
            nursery.start_soon(guarded, side, receive_frames, stall_timeout)


async def open_pairs(
    stack: AsyncExitStack,
    url: str,
    pairs: int,
    url_of: Callable[[int], str] | None = None,
) -> list[tuple[SignalClient, ...]]:
    """Connect, register and consent-pair ``pairs`` pairs of clients (kept open by ``stack``).

    Client ``i`` connects to ``url_of(i)`` if given (pair ``p`` is clients ``2p`` and
    ``2p + 1``), else to ``url``: several servers can share the clients (``bench/cluster.py``).
    """
    clients = [
        await stack.enter_async_context(connect_signal(url_of(i) if url_of else url))
        for i in range(2 * pairs)
    ]
    used: set[str] = set()

    async def register(client: SignalClient) -> None:
        for attempt in range(3):  # a random code may be taken on a shared server
            code = random_pairing_code()
            if code in used:
                continue
            used.add(code)
            try:
                await client.register(code, generate_public_key())
                return
            except ServerError:
                if attempt == 2:
                    raise

    async def setup(a: SignalClient, b: SignalClient) -> None:
        await register(a)
        await register(b)
        await pair(a, b)

    grouped = [(clients[2 * i], clients[2 * i + 1]) for i in range(pairs)]
    async with trio.open_nursery() as nursery:
        for a, b in grouped:
            nursery.start_soon(setup, a, b)
    return grouped


async def run_all(
    grouped: list[tuple[SignalClient, ...]],
    run: int,
    messages: int,
    args: argparse.Namespace,
    results: list[Side],
) -> None:
    """Every pair's exchange at once; ``results`` gets the sides as they start."""
    make_payload = build_payload_maker(args.payload_bytes, messages)
    async with trio.open_nursery() as nursery:
        for a, b in grouped:
            nursery.start_soon(
                exchange,
                (a, b),
                run,
                messages,
                args.window,
                args.stall_timeout,
                make_payload,
                results,
            )


async def measure(
    url: str,
    cpu: Callable[[], float] | None,
    args: argparse.Namespace,
    *,
    url_of: Callable[[int], str] | None = None,
    mark: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Pair, warm up, run the measured exchange; the numbers for the result line.

    ``url_of`` places the clients (see ``open_pairs``). ``mark`` is awaited with ``"start"``
    right before the measured exchange and with ``"end"`` right after it (not after a timeout),
    for a caller that measures more than ``cpu`` does (``bench/cluster.py``).
    """
    out: dict[str, Any] = {"timed_out": False, "setup_error": None}
    sides: list[Side] = []
    warm: list[Side] = []
    seconds = client_cpu = server_cpu = None
    with trio.move_on_after(args.timeout) as overall:
        async with AsyncExitStack() as stack:
            try:
                grouped = await open_pairs(stack, url, args.pairs, url_of)
            except (*CONNECTION_ERRORS, ServerError, trio_websocket.HandshakeError) as exc:
                out["setup_error"] = f"{type(exc).__name__}: {exc}"
                return out
            if args.warmup > 0:
                await run_all(grouped, 1, args.warmup, args, warm)
            if mark is not None:
                await mark("start")
            cpu_before = cpu() if cpu else None
            client_before = time.process_time()
            started = time.perf_counter()
            try:
                await run_all(grouped, 2, args.messages, args, sides)
            finally:
                seconds = time.perf_counter() - started
                client_cpu = time.process_time() - client_before
                if cpu is not None and cpu_before is not None:
                    server_cpu = cpu() - cpu_before
            if mark is not None:
                await mark("end")
    if overall.cancelled_caught:
        out["timed_out"] = True
    out.update(sides=sides, warm=warm, seconds=seconds, client_cpu=client_cpu)
    out["server_cpu"] = server_cpu
    return out


def result_line(args: argparse.Namespace, measured: dict[str, Any], server: str) -> dict[str, Any]:
    sides: list[Side] = measured.get("sides", [])
    warm: list[Side] = measured.get("warm", [])
    relayed = sum(side.relayed for side in sides)
    latencies = sorted(ns for side in sides for ns in side.latencies_ns)
    seconds = measured.get("seconds")
    server_cpu = measured.get("server_cpu")
    errors = sum(side.errors for side in (*sides, *warm))
    errors += int(measured["timed_out"]) + int(measured["setup_error"] is not None)
    samples = [sample for side in (*warm, *sides) for sample in side.error_samples]
    return {
        "benchmark": "signaling",
        "pairs": args.pairs,
        "messages_per_direction": args.messages,
        "window": args.window,
        "payload_bytes": args.payload_bytes,
        "warmup_per_direction": args.warmup,
        "relayed": relayed,
        "expected_relayed": 4 * args.pairs * args.messages,
        "warmup_relayed": sum(side.relayed for side in warm),
        "seconds": round(seconds, 4) if seconds is not None else None,
        "msgs_per_s": round(relayed / seconds, 1) if seconds else None,
        "latency": "round trip: message relayed out, acknowledgement relayed back",
        "samples": len(latencies),
        "p50_ms": percentile_ms(latencies, 50),
        "p90_ms": percentile_ms(latencies, 90),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": percentile_ms(latencies, 100),
        "mean_ms": round(sum(latencies) / len(latencies) / 1e6, 3) if latencies else None,
        "server_cpu_s": round(server_cpu, 3) if server_cpu is not None else None,
        "server_cpu_us_per_msg": (
            round(server_cpu / relayed * 1e6, 2) if server_cpu is not None and relayed else None
        ),
        "client_cpu_s": (
            round(measured["client_cpu"], 3) if measured.get("client_cpu") is not None else None
        ),
        "errors": errors,
        "lost": sum(side.sent - side.acked for side in sides),
        "timed_out": measured["timed_out"],
        "setup_error": measured["setup_error"],
        "error_samples": samples[:MAX_ERROR_SAMPLES],
        "server": server,
        **run_facts(),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        pid = args.server_pid
        cpu = (lambda: process_cpu_seconds(pid)) if pid is not None else None
        measured = await measure(args.url, cpu, args)
        return result_line(args, measured, "external")
    async with running_server(SERVER_ENV) as srv:
        measured = await measure(srv.url, srv.cpu_seconds, args)
    return result_line(args, measured, "spawned")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="matched pairs (default 10)")
    parser.add_argument(
        "--messages", type=int, default=2000, help="messages per direction per pair (2000)"
    )
    parser.add_argument(
        "--window", type=int, default=32, help="unacknowledged messages per direction (32)"
    )
    parser.add_argument("--payload-bytes", type=int, default=200, help="payload JSON size (200)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up messages per direction (min(M, 200))"
    )
    parser.add_argument("--url", help="use this running server (http://host:port) instead")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for CPU")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (JSON lines)")
    parser.add_argument("--timeout", type=float, default=300.0, help="overall bound, s (300)")
    parser.add_argument(
        "--stall-timeout", type=float, default=10.0, help="give up a pair after s of silence (10)"
    )
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.messages < 1 or args.window < 1 or args.payload_bytes < 0:
        parser.error("--pairs, --messages and --window must be at least 1, sizes not negative")
    if args.server_pid is not None and not args.url:
        parser.error("--server-pid needs --url (a server started here is measured anyway)")
    if args.warmup is None:
        args.warmup = min(args.messages, 200)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    line = trio.run(main_async, args)
    emit(line, args.out)
    if line["setup_error"] is not None:
        return 2
    return 1 if line["errors"] or line["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
