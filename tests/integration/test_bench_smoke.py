"""Every benchmark runs end to end with tiny numbers: it starts its own server, does all of its
work without errors, and reports one JSON line on stdout and in its results file. Speed is not
checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python bench/<script> ARGS`` from the repository root; fails the test if it fails."""
    finished = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return finished


def reported(script: str, out: Path, *args: str) -> dict[str, Any]:
    """Run a benchmark; its one JSON line, checked to be the line appended to ``out``."""
    finished = run_bench(script, "--timeout=60", f"--out={out}", *args)
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1, finished.stdout
    assert out.read_text().splitlines() == lines
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_signaling_benchmark_reports_every_relayed_message(tmp_path):
    pairs, messages, window = 2, 20, 4
    result = reported(
        "signaling.py",
        tmp_path / "x.jsonl",
        f"--pairs={pairs}",
        f"--messages={messages}",
        f"--window={window}",
    )
    assert result["benchmark"] == "signaling"
    assert (result["pairs"], result["messages_per_direction"], result["window"]) == (
        pairs,
        messages,
        window,
    )
    # Each direction: M messages relayed out and M acknowledgements relayed back.
    assert result["relayed"] == 4 * pairs * messages
    assert result["errors"] == 0
    assert result["lost"] == 0
    assert result["samples"] == 2 * pairs * messages
    assert result["p50_ms"] <= result["p99_ms"]
    assert result["server_cpu_s"] is not None


def test_chunk_multicast_benchmark_pulls_each_chunk_once_and_delivers_everything(tmp_path):
    subscribers, chunks = 3, 4
    result = reported(
        "chunk_multicast.py",
        tmp_path / "chunks.jsonl",
        f"--subscribers={subscribers}",
        f"--chunks={chunks}",
        "--size=2000",
    )
    assert result["benchmark"] == "chunk_multicast"
    assert result["deliveries"] == subscribers * chunks
    assert result["pulls_per_chunk"] == 1.0
    assert result["errors"] == 0
    assert result["server_peak_rss_mb"] > 0


def test_chunk_multicast_benchmark_in_waves_serves_later_waves_from_the_cache(tmp_path):
    subscribers, chunks, waves = 6, 4, 3
    result = reported(
        "chunk_multicast.py",
        tmp_path / "chunks.jsonl",
        f"--subscribers={subscribers}",
        f"--chunks={chunks}",
        "--size=2000",
        f"--waves={waves}",
    )
    assert (result["subscribers"], result["waves"]) == (subscribers, waves)
    assert result["deliveries"] == subscribers * chunks
    # Only the first wave makes the server pull; the others are answered from its cache.
    assert result["pulls_per_chunk"] == 1.0
    assert result["max_pulls_of_one_chunk"] == 1
    assert result["errors"] == 0
    assert result["timed_out"] is False
    assert result["server_cpu_s"] is not None
    assert result["setup_server_cpu_s"] is not None


def test_chunk_multicast_benchmark_refuses_waves_that_do_not_divide_the_subscribers(tmp_path):
    finished = subprocess.run(
        [sys.executable, "bench/chunk_multicast.py", "--subscribers=5", "--waves=2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2
    assert "--waves must be at least 1 and divide --subscribers" in finished.stderr


def test_channels_benchmark_pulls_each_chunk_once_and_delivers_everything(tmp_path):
    subscribers, chunks = 3, 5
    result = reported(
        "channels.py",
        tmp_path / "channels.jsonl",
        f"--subscribers={subscribers}",
        f"--chunks={chunks}",
        "--size=2000",
        "--batch=2",
    )
    assert result["benchmark"] == "channels"
    assert (result["subscribers"], result["chunks"], result["batch"]) == (subscribers, chunks, 2)
    assert result["deliveries"] == subscribers * chunks
    assert result["pulls_per_chunk"] == 1.0
    assert result["max_pulls_of_one_chunk"] == 1
    assert result["errors"] == 0
    assert result["p50_ms"] <= result["p99_ms"]
    assert result["server_cpu_s"] is not None


def test_channels_benchmark_with_proactive_pushes_needs_no_pull(tmp_path):
    result = reported(
        "channels.py",
        tmp_path / "channels.jsonl",
        "--subscribers=2",
        "--chunks=3",
        "--size=2000",
        "--proactive",
    )
    assert result["deliveries"] == 2 * 3
    assert result["errors"] == 0
    # A request can cross a push (the server then pulls once), never more.
    assert result["max_pulls_of_one_chunk"] <= 1


@pytest.mark.parametrize("transport", ["hypercorn", "fast"])
def test_transport_floor_benchmark_echoes_every_frame(tmp_path, transport):
    # On "fast" the echo closes any WebSocket our transport did not serve (1011), so a run
    # that echoes every frame was served by it.
    result = reported(
        "transport_floor.py",
        tmp_path / "floor.jsonl",
        f"--transport={transport}",
        "--connections=2",
        "--frames=50",
        "--window=4",
    )
    assert result["benchmark"] == "transport_floor"
    assert result["transport"] == transport
    assert result["echoed"] == 2 * 50
    assert result["server_cpu_s"] is not None


def test_registry_benchmark_commits_every_heartbeat_and_verifies_the_list(tmp_path):
    result = reported(
        "registry.py",
        tmp_path / "registry.jsonl",
        "--clients=2",
        "--heartbeats=5",
        "--servers=6",
        "--lists=4",
    )
    assert result["benchmark"] == "registry"
    assert result["heartbeats"] == 2 * 5
    assert result["lists"] == 4
    assert result["listed"] == 6  # the list verified with the server's public key
    assert result["errors"] == 0
    assert result["heartbeat_p50_ms"] <= result["heartbeat_p99_ms"]


def test_run_all_writes_latest_json_with_every_scenario(tmp_path):
    run_bench("run_all.py", "--quick", f"--results={tmp_path}", timeout=240)
    summary = json.loads((tmp_path / "latest.json").read_text())
    kinds = [(r["benchmark"], r.get("transport")) for r in summary["results"]]
    assert kinds == [
        ("signaling", "hypercorn"),
        ("signaling", "fast"),
        ("transport_floor", None),
        ("chunk_multicast", "hypercorn"),
        ("chunk_multicast", "fast"),
        ("channels", "hypercorn"),
        ("channels", "fast"),
        ("registry", None),
    ]
    assert all(result["exit"] == 0 for result in summary["results"])
    assert summary["machine"]["cpus"] >= 1
