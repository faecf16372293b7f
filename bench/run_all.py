"""Every benchmark scenario, on both WebSocket transports, into ``bench/results/latest.json`` and
a plot.

Run from the repository root (``make bench`` does)::

    python bench/run_all.py

Scenarios (``SCENARIOS``; ``--quick`` runs each kind once with tiny numbers):

- the bar scenarios, each with its bar on server CPU per item on our transport
  (``ZAJEL_WS_TRANSPORT=fast``, ``zajel serve``'s default): signaling with 10 pairs, 2,000
  messages each way, window 32 (70 µs per relayed message); the chunk multicast at N = 100,
  K = 64, S = 16 KiB (80 µs per delivery), at N = 500, K = 32, S = 48,000 bytes (the largest raw
  size whose base64 fits the 64 KiB JSON limit; 140 µs), and at N = 500, K = 32, S = 16 KiB in 5
  waves of 100, most of them served from the cache (80 µs);
- the transport floor: a bare echo on each transport, 20 connections x 4,000 frames, window 32;
- the chunk multicast at N = 10, 100 and 500 for S = 16 KiB and 48,000 bytes, K = 64, each
  subscriber keeping 4 requests unanswered, and at N = 100 with every request sent at once;
- the same multicast on ``/signal`` as a channel (N = 100, K = 64, S = 16 KiB: window 4, all at
  once, and with the owner pushing each chunk proactively);
- the server registry with 1000 entries (50 clients, 100 heartbeats each, 200 signed lists):
  HTTP only, so it runs once.

Every WebSocket scenario (the floor included) runs once on each transport, hypercorn's first,
each as its own process with its own server, as the single benchmarks do. About 4 minutes on a
2-core machine.

Output: ``latest.json`` holds, per scenario, both transports' figures side by side (server CPU
per item, throughput, p99, errors, pulls per chunk, exit status) and its bar if it has one,
the two floors, and every benchmark's own result line (``results``); each of those lines is also
appended to ``history.jsonl``. The plot (``latest.png``) shows server CPU per item of every
WebSocket scenario on both transports, with the floors and the bars; it needs matplotlib, the
``bench`` extra (without it the figures are still written). Progress goes to stderr; stdout gets
one JSON line at the end, also appended to ``run_all.jsonl``. Exit status 1 if a scenario
failed (a bar missed is not a failure: speed is reported, not asserted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench._server import emit  # noqa: E402

RESULTS = BENCH / "results"
TRANSPORTS = ("hypercorn", "fast")
# Whose figures a bar holds: zajel serve's default transport.
BAR_TRANSPORT = "fast"
# The key of a scenario that does not speak WebSocket (its figures hold on either transport).
HTTP_ONLY = "http"
# The benchmarks that speak WebSocket to the server: each of their scenarios runs on every
# transport (ZAJEL_WS_TRANSPORT in its environment).
WEBSOCKET_BENCHMARKS = {"signaling.py", "transport_floor.py", "chunk_multicast.py", "channels.py"}
FLOOR = "floor"

# What a benchmark's result line calls its figures: the item its server CPU is counted per,
# its throughput and its p99 latency.
FIGURES = {
    "signaling": ("msg", "msgs_per_s", "p99_ms"),
    "transport_floor": ("frame", "frames_per_s", None),
    "chunk_multicast": ("delivery", "deliveries_per_s", "p99_ms"),
    "channels": ("delivery", "deliveries_per_s", "p99_ms"),
    "registry": ("heartbeat", "heartbeats_per_s", "heartbeat_p99_ms"),
}


@dataclass(frozen=True)
class Scenario:
    """One scenario: its name, the benchmark script and its arguments, and its bar (server CPU
    per item on ``BAR_TRANSPORT``, µs) if it has one."""

    name: str
    args: tuple[str, ...]
    bar_us: float | None = None

    @property
    def websocket(self) -> bool:
        return self.args[0] in WEBSOCKET_BENCHMARKS

    @property
    def command(self) -> str:
        return " ".join(["python", f"bench/{self.args[0]}", *self.args[1:]])


def _chunks(subscribers: int, chunks: int, size: int, *extra: str) -> tuple[str, ...]:
    return (
        "chunk_multicast.py",
        f"--subscribers={subscribers}",
        f"--chunks={chunks}",
        f"--size={size}",
        *extra,
    )


_CHANNEL = ("channels.py", "--subscribers=100", "--chunks=64", "--size=16384")

SCENARIOS = (
    Scenario(
        "signaling P=10 M=2000 W=32",
        ("signaling.py", "--pairs=10", "--messages=2000", "--window=32"),
        bar_us=70,
    ),
    Scenario(FLOOR, ("transport_floor.py", "--connections=20", "--frames=4000", "--window=32")),
    Scenario("chunks N=100 K=64 S=16384", _chunks(100, 64, 16_384), bar_us=80),
    Scenario("chunks N=500 K=32 S=48000", _chunks(500, 32, 48_000), bar_us=140),
    Scenario("chunks N=500 K=32 S=16384 5 waves", _chunks(500, 32, 16_384, "--waves=5"), bar_us=80),
    Scenario("chunks N=100 K=64 S=16384 all at once", _chunks(100, 64, 16_384, "--window=0")),
    Scenario("chunks N=10 K=64 S=16384", _chunks(10, 64, 16_384)),
    Scenario("chunks N=500 K=64 S=16384", _chunks(500, 64, 16_384)),
    Scenario("chunks N=10 K=64 S=48000", _chunks(10, 64, 48_000)),
    Scenario("chunks N=100 K=64 S=48000", _chunks(100, 64, 48_000)),
    Scenario("chunks N=500 K=64 S=48000", _chunks(500, 64, 48_000)),
    # The same multicast as a channel on /signal (docs/benchmarks.md, "Channels on /signal").
    Scenario("channels N=100 K=64 S=16384", _CHANNEL),
    Scenario("channels N=100 K=64 S=16384 all at once", (*_CHANNEL, "--window=0")),
    Scenario("channels N=100 K=64 S=16384 proactive", (*_CHANNEL, "--proactive")),
    # The server registry at its cap: heartbeats committed to the store, the signed list.
    Scenario(
        "registry 1000 servers",
        ("registry.py", "--clients=50", "--heartbeats=100", "--servers=1000", "--lists=200"),
    ),
)

# A smoke run: every kind of scenario with tiny numbers, and no bars (they hold for the full
# numbers only).
QUICK = (
    Scenario("signaling", ("signaling.py", "--pairs=2", "--messages=20", "--window=4")),
    Scenario(FLOOR, ("transport_floor.py", "--connections=2", "--frames=50", "--window=4")),
    Scenario("chunks", _chunks(3, 4, 2000)),
    Scenario("chunks in waves", _chunks(4, 4, 2000, "--waves=2")),
    Scenario("channels", ("channels.py", "--subscribers=3", "--chunks=4", "--size=2000")),
    Scenario(
        "registry",
        ("registry.py", "--clients=2", "--heartbeats=5", "--servers=6", "--lists=4"),
    ),
)


def run_one(scenario: Scenario, out: Path, timeout: float, transport: str | None) -> dict[str, Any]:
    """Run the scenario's benchmark (on ``transport``, if given) and return its result line,
    tagged with the scenario, the transport and the exit status; a run that printed no result
    is ``failed``."""
    env = dict(os.environ)
    if transport is not None:
        env["ZAJEL_WS_TRANSPORT"] = transport
    tags = {"scenario": scenario.name, "transport": transport}
    try:
        finished = subprocess.run(
            [sys.executable, str(BENCH / scenario.args[0]), *scenario.args[1:], f"--out={out}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {**tags, "command": scenario.command, "failed": True, "exit": None}
    lines = finished.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {
            **tags,
            "command": scenario.command,
            "failed": True,
            "exit": finished.returncode,
            "stderr": finished.stderr[-2000:],
        }
    return {**tags, **result, "exit": finished.returncode}


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of one result line that ``latest.json`` shows side by side."""
    item, throughput, p99 = FIGURES.get(result.get("benchmark", ""), (None, None, None))
    return {
        "server_cpu_us_per_item": result.get(f"server_cpu_us_per_{item}"),
        "throughput": result.get(throughput or ""),
        "throughput_unit": throughput,
        "p99_ms": result.get(p99 or ""),
        "errors": result.get("errors"),
        "pulls_per_chunk": result.get("pulls_per_chunk"),
        "exit": result.get("exit"),
        "failed": bool(result.get("failed") or result.get("exit")),
    }


def summarize(scenarios: tuple[Scenario, ...], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario, every transport's figures side by side and its bar; and the floors."""
    rows = []
    for scenario in scenarios:
        mine = [result for result in results if result["scenario"] == scenario.name]
        benchmark = next((r["benchmark"] for r in mine if "benchmark" in r), None)
        row: dict[str, Any] = {
            "scenario": scenario.name,
            "benchmark": benchmark,
            "command": scenario.command,
            "item": FIGURES.get(benchmark or "", (None,))[0],
            "figures": {r["transport"] or HTTP_ONLY: figures(r) for r in mine},
            "bar": None,
        }
        if scenario.bar_us is not None:
            measured = row["figures"].get(BAR_TRANSPORT, {}).get("server_cpu_us_per_item")
            row["bar"] = {
                "server_cpu_us_per_item": scenario.bar_us,
                "transport": BAR_TRANSPORT,
                "met": None if measured is None else measured <= scenario.bar_us,
            }
        rows.append(row)
    floor = next((row for row in rows if row["scenario"] == FLOOR), None)
    floors = {
        transport: (floor or {}).get("figures", {}).get(transport, {}).get("server_cpu_us_per_item")
        for transport in TRANSPORTS
    }
    return {"floors": floors, "scenarios": rows}


def plot(summary: dict[str, Any], path: Path) -> bool:
    """Server CPU per item of every WebSocket scenario, both transports side by side, with the
    floors and the bars; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [
        row
        for row in summary["scenarios"]
        if row["scenario"] != FLOOR and HTTP_ONLY not in row["figures"]
    ]
    colors = {"hypercorn": "tab:blue", "fast": "tab:orange"}
    width = 0.38
    figure, axes = plt.subplots(figsize=(max(8.0, 1.05 * len(rows) + 2), 6.0))
    offsets = dict(zip(TRANSPORTS, (-width / 2, width / 2), strict=True))
    for transport in TRANSPORTS:
        xs, heights = [], []
        for x, row in enumerate(rows):
            value = row["figures"].get(transport, {}).get("server_cpu_us_per_item")
            if value is not None:
                xs.append(x + offsets[transport])
                heights.append(value)
        bars = axes.bar(xs, heights, width, label=transport, color=colors[transport])
        axes.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        floor = summary["floors"].get(transport)
        if floor is not None:
            axes.axhline(
                floor,
                color=colors[transport],
                linestyle="--",
                linewidth=1,
                label=f"{transport} echo floor: {floor:.0f} µs/frame",
            )
    barred = [(x, row) for x, row in enumerate(rows) if row["bar"] is not None]
    bar_offset = offsets[BAR_TRANSPORT]
    for index, (x, row) in enumerate(barred):
        axes.hlines(  # over the bar of the transport it holds for
            row["bar"]["server_cpu_us_per_item"],
            x + bar_offset - width / 2,
            x + bar_offset + width / 2,
            color="red",
            linewidth=2.5,
            label=f"bar ({BAR_TRANSPORT})" if index == 0 else None,
        )
    axes.set_xticks(
        range(len(rows)),
        [textwrap.fill(f"{row['scenario']} (per {row['item']})", 15) for row in rows],
        fontsize=7,
    )
    axes.set_ylabel("server CPU per item (µs)")
    axes.set_title("Server CPU per relayed message or delivered chunk, by WebSocket transport")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8)
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
    scenarios = QUICK if args.quick else SCENARIOS
    runs = [
        (scenario, transport)
        for scenario in scenarios
        for transport in (TRANSPORTS if scenario.websocket else (None,))
    ]
    started = time.monotonic()
    results = []
    for number, (scenario, transport) in enumerate(runs, 1):
        result = run_one(scenario, history, args.timeout, transport)
        results.append(result)
        shown = figures(result)
        print(
            f"[{number}/{len(runs)}] {scenario.name} on {transport or HTTP_ONLY}: "
            f"{shown['server_cpu_us_per_item']} µs server CPU per item, exit {result['exit']}",
            file=sys.stderr,
            flush=True,
        )
    summary = {
        "benchmark": "run_all",
        "quick": args.quick,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "machine": {
            "system": platform.system(),
            "release": platform.release(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
        },
        **summarize(scenarios, results),
    }
    failed = [r["scenario"] for r in results if figures(r)["failed"]]
    summary["failed"] = failed
    (results_dir / "latest.json").write_text(
        json.dumps({**summary, "results": results}, indent=2, ensure_ascii=False) + "\n"
    )
    if not plot(summary, results_dir / "latest.png"):
        print("matplotlib not installed (the 'bench' extra): no plot", file=sys.stderr)
    emit(summary, results_dir / "run_all.jsonl")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
