"""Every benchmark scenario, one after another, into ``bench/results/latest.json`` and a plot.

Run from the repository root (``make bench`` does)::

    python bench/run_all.py

Scenarios: the signaling benchmark (10 pairs, 2,000 messages each way, window 32), the transport
floor, and the chunk multicast at N = 10, 100 and 500 subscribers for S = 16 KiB and
S = 48,000 bytes (the largest raw size whose base64 fits the 64 KiB JSON limit), K = 64 chunks,
each subscriber keeping 4 requests unanswered; and once with every request sent at once; the
same multicast on ``/signal`` as a channel (N = 100, K = 64, S = 16 KiB: window 4, all at
once, and with the owner pushing each chunk proactively); then the server registry with 1000
entries (50 clients, 100 heartbeats each, 200 signed lists).
Every WebSocket scenario runs once on each WebSocket transport of ``zajel serve``
(``ZAJEL_WS_TRANSPORT``: hypercorn's stack and our own), its result tagged with ``transport``;
the transport floor is hypercorn's echo.
Each scenario runs as its own process with its own server, as the single benchmarks do; their
JSON lines are collected into ``latest.json`` together with the machine they ran on. The plot
(``latest.png``: deliveries/s and p99 latency against N) needs matplotlib, the ``bench`` extra;
without it the figures are still written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SUBSCRIBERS = (10, 100, 500)
SIZES = (16_384, 48_000)
CHUNKS = 64
TRANSPORTS = ("hypercorn", "fast")
# The scenarios that speak WebSocket to zajel serve: each runs on every transport.
WEBSOCKET_BENCHMARKS = {"signaling.py", "chunk_multicast.py", "channels.py"}


def scenarios(quick: bool) -> list[tuple[str, list[str]]]:
    if quick:  # a smoke run: every scenario kind, tiny numbers
        return [
            ("signaling", ["signaling.py", "--pairs=2", "--messages=20", "--window=4"]),
            ("floor", ["transport_floor.py", "--connections=2", "--frames=50", "--window=4"]),
            ("chunks", ["chunk_multicast.py", "--subscribers=3", "--chunks=4", "--size=2000"]),
            ("channels", ["channels.py", "--subscribers=3", "--chunks=4", "--size=2000"]),
            (
                "registry",
                ["registry.py", "--clients=2", "--heartbeats=5", "--servers=6", "--lists=4"],
            ),
        ]
    runs = [
        ("signaling", ["signaling.py", "--pairs=10", "--messages=2000", "--window=32"]),
        ("floor", ["transport_floor.py", "--connections=20", "--frames=4000", "--window=32"]),
    ]
    # Every request at once: how long N x K deliveries take to drain.
    runs.append(
        (
            "chunks-burst",
            ["chunk_multicast.py", "--subscribers=100", f"--chunks={CHUNKS}", "--window=0"],
        )
    )
    for size in SIZES:
        for subscribers in SUBSCRIBERS:
            runs.append(
                (
                    "chunks",
                    [
                        "chunk_multicast.py",
                        f"--subscribers={subscribers}",
                        f"--chunks={CHUNKS}",
                        f"--size={size}",
                    ],
                )
            )
    # The same multicast as a channel on /signal (docs/benchmarks.md, "Channels on /signal").
    channel = ["channels.py", "--subscribers=100", f"--chunks={CHUNKS}", "--size=16384"]
    runs.append(("channels", channel))
    runs.append(("channels-burst", [*channel, "--window=0"]))
    runs.append(("channels-proactive", [*channel, "--proactive"]))
    # The server registry at its cap: heartbeats committed to the store, the signed list.
    runs.append(
        (
            "registry",
            ["registry.py", "--clients=50", "--heartbeats=100", "--servers=1000", "--lists=200"],
        )
    )
    return runs


def with_transports(
    runs: list[tuple[str, list[str]]],
) -> list[tuple[str, list[str], str | None]]:
    """Each WebSocket scenario once per transport, the others once (``None``)."""
    return [
        (name, command, transport)
        for name, command in runs
        for transport in (TRANSPORTS if command[0] in WEBSOCKET_BENCHMARKS else (None,))
    ]


def run_one(
    args: list[str], out: Path, timeout: float, transport: str | None = None
) -> dict[str, Any]:
    env = dict(os.environ)
    if transport is not None:
        env["ZAJEL_WS_TRANSPORT"] = transport
    finished = subprocess.run(
        [sys.executable, str(BENCH / args[0]), *args[1:], f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    lines = finished.stdout.strip().splitlines()
    if not lines:
        return {
            "command": args,
            "failed": True,
            "exit": finished.returncode,
            "stderr": finished.stderr[-2000:],
        }
    result: dict[str, Any] = json.loads(lines[-1])
    result["exit"] = finished.returncode
    if transport is not None:
        result["transport"] = transport
    return result


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted(
        {
            (r["size"], r.get("transport", "hypercorn"))
            for r in results
            if r.get("benchmark") == "chunk_multicast" and r["window"]
        }
    )
    for size, transport in series:
        rows = sorted(
            (
                r
                for r in results
                if r.get("benchmark") == "chunk_multicast"
                and r["size"] == size
                and r["window"]
                and r.get("transport", "hypercorn") == transport
            ),
            key=lambda r: r["subscribers"],
        )
        if not rows:
            continue
        label = f"S = {size:,} bytes, {transport}"
        ns = [r["subscribers"] for r in rows]
        throughput.plot(ns, [r["deliveries_per_s"] for r in rows], marker="o", label=label)
        latency.plot(ns, [r["p99_ms"] for r in rows], marker="o", label=label)
    for axes, title, unit in (
        (throughput, "Chunk deliveries per second", "deliveries/s"),
        (latency, "p99 request-to-data latency", "ms"),
    ):
        axes.set_xscale("log")
        axes.set_xlabel("subscribers (N), K = 64 chunks")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny numbers, for a smoke run")
    parser.add_argument("--results", default=str(RESULTS), help="where latest.json goes")
    parser.add_argument("--timeout", type=float, default=900.0, help="per scenario, seconds")
    args = parser.parse_args(argv)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    history = results_dir / "history.jsonl"
    results = []
    for name, command, transport in with_transports(scenarios(args.quick)):
        result = run_one(command, history, args.timeout, transport)
        results.append(result)
        print(json.dumps({"scenario": name, **result}, separators=(",", ":")), flush=True)
    summary = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "system": platform.system(),
            "release": platform.release(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
        },
        "results": results,
    }
    (results_dir / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    plotted = plot(results, results_dir / "latest.png")
    if not plotted:
        print("matplotlib not installed (the 'bench' extra): no plot", file=sys.stderr)
    failed = [r for r in results if r.get("failed") or r.get("exit")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
