"""The signaling benchmark runs end to end with tiny numbers: it starts its own server, relays
every message, and reports one JSON line on stdout and in its results file. Speed is not
checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_signaling_benchmark_reports_every_relayed_message(tmp_path):
    out = tmp_path / "x.jsonl"
    pairs, messages, window = 2, 20, 4
    finished = subprocess.run(
        [
            sys.executable,
            "bench/signaling.py",
            f"--pairs={pairs}",
            f"--messages={messages}",
            f"--window={window}",
            "--timeout=60",
            f"--out={out}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1, finished.stdout
    result = json.loads(lines[0])

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
    assert out.read_text().splitlines() == [lines[0]]


def test_chunk_multicast_benchmark_pulls_each_chunk_once_and_delivers_everything(tmp_path):
    out = tmp_path / "chunks.jsonl"
    subscribers, chunks = 3, 4
    finished = subprocess.run(
        [
            sys.executable,
            "bench/chunk_multicast.py",
            f"--subscribers={subscribers}",
            f"--chunks={chunks}",
            "--size=2000",
            "--timeout=60",
            f"--out={out}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1, finished.stdout
    result = json.loads(lines[0])
    assert result["benchmark"] == "chunk_multicast"
    assert result["deliveries"] == subscribers * chunks
    assert result["pulls_per_chunk"] == 1.0
    assert result["errors"] == 0
    assert result["server_peak_rss_mb"] > 0
    assert out.read_text().splitlines() == [lines[0]]


def test_transport_floor_benchmark_echoes_every_frame(tmp_path):
    out = tmp_path / "floor.jsonl"
    finished = subprocess.run(
        [
            sys.executable,
            "bench/transport_floor.py",
            "--connections=2",
            "--frames=50",
            "--window=4",
            "--timeout=60",
            f"--out={out}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "transport_floor"
    assert result["echoed"] == 2 * 50


def test_run_all_writes_latest_json_with_every_scenario(tmp_path):
    finished = subprocess.run(
        [sys.executable, "bench/run_all.py", "--quick", f"--results={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    summary = json.loads((tmp_path / "latest.json").read_text())
    kinds = [result["benchmark"] for result in summary["results"]]
    assert kinds == ["signaling", "transport_floor", "chunk_multicast"]
    assert all(result["exit"] == 0 for result in summary["results"])
    assert summary["machine"]["cpus"] >= 1
