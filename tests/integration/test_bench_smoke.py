"""Every benchmark runs end to end with tiny numbers: it starts its own server, does all of its
work without errors, and reports one JSON line on stdout and in its results file. Speed is not
checked here."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.parametrize(("subscribers", "waves"), [(3, 1), (6, 3)])
def test_chunk_multicast_benchmark_pulls_each_chunk_once_and_delivers_everything(
    tmp_path, subscribers, waves
):
    chunks = 4
    result = reported(
        "chunk_multicast.py",
        tmp_path / "chunks.jsonl",
        f"--subscribers={subscribers}",
        f"--chunks={chunks}",
        "--size=2000",
        f"--waves={waves}",
    )
    assert result["benchmark"] == "chunk_multicast"
    assert (result["subscribers"], result["waves"]) == (subscribers, waves)
    assert result["deliveries"] == subscribers * chunks
    # Only the first wave makes the server pull; later ones are answered from its cache.
    assert result["pulls_per_chunk"] == 1.0
    assert result["max_pulls_of_one_chunk"] == 1
    assert result["errors"] == 0
    assert result["timed_out"] is False
    assert result["server_cpu_s"] is not None
    assert result["setup_server_cpu_s"] is not None
    assert result["server_peak_rss_mb"] > 0


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


def test_frame_parse_benchmark_takes_every_frame_both_ways(tmp_path):
    out = tmp_path / "frame_parse.jsonl"
    finished = run_bench(
        "frame_parse.py", "--frames=300", "--per-read=3", "--repeat=2", f"--out={out}"
    )
    result = json.loads(finished.stdout)
    assert out.read_text().splitlines() == [finished.stdout.strip()]
    assert result["benchmark"] == "frame_parse"
    assert result["frames"] == 300
    assert result["websockets_us_per_frame"] > 0
    assert result["ours_us_per_frame"] > 0


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


def test_cluster_benchmark_loads_one_node_and_a_cluster_without_errors(tmp_path):
    # The single node and the cluster (owner, two edges, Redis); --reuse-port is left out to
    # keep this under ten seconds.
    out = tmp_path / "cluster.jsonl"
    result = reported("cluster.py", out, "--quick", "--variants=single,cluster")
    assert json.loads(out.with_suffix(".json").read_text()) == result
    assert result["benchmark"] == "cluster"
    assert result["failed"] == []
    assert result["errors"] == 0
    assert result["one_pull_per_chunk"] is True
    signaling, chunks = result["loads"]["signaling"], result["loads"]["chunks"]
    assert signaling["cluster"]["items"] == 4 * 2 * 20  # 2 pairs, 20 messages each way
    assert chunks["cluster"]["items"] == 4 * 4  # 4 subscribers, 4 chunks
    for row in (signaling, chunks):
        assert row["single"]["errors"] == row["cluster"]["errors"] == 0
        assert set(row["single"]["cpu_s"]) == {"single"}
        assert set(row["cluster"]["cpu_s"]) == {"owner", "edge1", "edge2", "redis"}
        # The edges sent every client frame to the owner, which answered them.
        hop = row["cluster"]["hop"]
        assert hop["owner"]["messages_in"] > 0
        assert hop["edge1"]["messages_in"] > 0
        assert hop["edge2"]["messages_in"] > 0
        assert "total_over_single" in row["cluster"]
    assert chunks["single"]["max_pulls_of_one_chunk"] == 1
    assert chunks["cluster"]["max_pulls_of_one_chunk"] == 1


def test_run_all_reports_every_scenario_on_both_transports_with_the_floors(tmp_path):
    finished = run_bench("run_all.py", "--quick", f"--results={tmp_path}", timeout=240)
    summary = json.loads((tmp_path / "latest.json").read_text())
    # One JSON line on stdout: the summary without the benchmarks' own result lines.
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {k: v for k, v in summary.items() if k != "results"}
    both = ["fast", "hypercorn"]
    assert [
        (row["scenario"], row["benchmark"], sorted(row["figures"])) for row in summary["scenarios"]
    ] == [
        ("signaling", "signaling", both),
        ("floor", "transport_floor", both),
        ("chunks", "chunk_multicast", both),
        ("chunks in waves", "chunk_multicast", both),
        ("channels", "channels", both),
        ("registry", "registry", ["http"]),
    ]
    for row in summary["scenarios"]:
        for shown in row["figures"].values():
            assert shown["exit"] == 0
            assert shown["failed"] is False
            assert shown["server_cpu_us_per_item"] is not None
            assert shown["throughput"] > 0
        if row["benchmark"] in ("chunk_multicast", "channels"):
            assert [shown["pulls_per_chunk"] for shown in row["figures"].values()] == [1.0, 1.0]
            assert [shown["errors"] for shown in row["figures"].values()] == [0, 0]
    floor = summary["scenarios"][1]["figures"]
    assert summary["floors"] == {
        transport: floor[transport]["server_cpu_us_per_item"] for transport in both
    }
    assert summary["failed"] == []
    assert summary["machine"]["cpus"] >= 1
    # Every run's own result line, tagged with its scenario and the transport it ran on.
    runs = [(r["scenario"], r["benchmark"], r["transport"]) for r in summary["results"]]
    assert runs[2:4] == [
        ("floor", "transport_floor", "hypercorn"),
        ("floor", "transport_floor", "fast"),
    ]
    assert len(runs) == 11
    assert [r["transport"] for r in summary["results"] if r["benchmark"] == "transport_floor"] == [
        "hypercorn",
        "fast",
    ]
    assert [r["waves"] for r in summary["results"] if r["scenario"] == "chunks in waves"] == [2, 2]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
    else:
        assert "no plot" in finished.stderr


def test_run_all_summary_sets_the_transports_side_by_side_and_checks_bars_on_ours():
    from bench.run_all import Scenario, summarize

    scenarios = (
        Scenario("floor", ("transport_floor.py",)),
        Scenario("signaling", ("signaling.py", "--pairs=10"), bar_us=70),
        Scenario("chunks", ("chunk_multicast.py",), bar_us=80),
        Scenario("registry", ("registry.py",)),
    )

    def line(scenario, transport, benchmark, exit_status=0, **figures):
        return {
            "scenario": scenario,
            "transport": transport,
            "benchmark": benchmark,
            "exit": exit_status,
            **figures,
        }

    results = [
        line("floor", "hypercorn", "transport_floor", server_cpu_us_per_frame=60.0),
        line("floor", "fast", "transport_floor", server_cpu_us_per_frame=30.0),
        # Under the bar on hypercorn, over it on ours: the bar holds for ours.
        line("signaling", "hypercorn", "signaling", server_cpu_us_per_msg=65.0, msgs_per_s=9e3),
        line("signaling", "fast", "signaling", server_cpu_us_per_msg=75.0, p99_ms=12.5),
        line("chunks", "hypercorn", "chunk_multicast", server_cpu_us_per_delivery=120.0),
        {"scenario": "chunks", "transport": "fast", "failed": True, "exit": 2},
        line("registry", None, "registry", server_cpu_us_per_heartbeat=900.0, errors=0),
    ]
    summary = summarize(scenarios, results)
    assert summary["floors"] == {"hypercorn": 60.0, "fast": 30.0}
    floor, signaling, chunks, registry = summary["scenarios"]
    assert floor["bar"] is None
    assert signaling["command"] == "python bench/signaling.py --pairs=10"
    assert signaling["item"] == "msg"
    assert signaling["bar"] == {"server_cpu_us_per_item": 70, "transport": "fast", "met": False}
    assert signaling["figures"]["hypercorn"]["server_cpu_us_per_item"] == 65.0
    assert signaling["figures"]["hypercorn"]["throughput"] == 9e3
    assert signaling["figures"]["fast"]["p99_ms"] == 12.5
    # A failed run on ours: the bar is neither met nor missed.
    assert chunks["bar"]["met"] is None
    assert chunks["figures"]["fast"]["failed"] is True
    assert chunks["figures"]["hypercorn"]["failed"] is False
    assert list(registry["figures"]) == ["http"]
    assert registry["figures"]["http"]["server_cpu_us_per_item"] == 900.0


def test_cluster_failover_benchmark_sees_1012_and_pairs_again_within_the_bound(tmp_path):
    out = tmp_path / "failover.jsonl"
    result = reported(
        "cluster_failover.py",
        out,
        "--pairs=2",
        "--messages=40",
        "--interval=0.05",  # still relaying when the lease moves
        "--lease-ms=1000",
        "--kill-after=0.3",
    )
    assert result["bench"] == "cluster_failover"
    assert result["closes"].get("1012", 0) >= 2
    assert result["within_bound"] is True
    assert result["errors"] == 0
    assert result["pairs_finished"] == 2


def test_soak_quick_run_ends_with_no_error_and_every_registry_empty(tmp_path):
    # One node, 200 idle and 50 busy connections for 4 s (bench/soak.py --quick): the good
    # clients' flows, the misbehaving clients' expected answers, then everything back.
    result = reported("soak.py", tmp_path / "soak.jsonl", "--quick", f"--plot-dir={tmp_path}")
    assert (result["benchmark"], result["variant"]) == ("soak", "1node-quick")
    assert result["unexpected_errors"] == 0, result["error_samples"]
    assert result["checks"] == dict.fromkeys(
        [
            "idle_all_open",
            "rss_growth_under_10pct",
            "fds_back",
            "tasks_back",
            "registries_empty",
            "no_unexpected_errors",
        ],
        True,
    )
    assert result["pass"] is True
    assert result["registries_left"] == {}
    assert result["idle_open"] == 200
    assert result["idle_pings_answered"] > 0
    assert result["good"]["pairs"] > 0
    assert result["good"]["signals_relayed"] > 0
    assert result["expected"]["garbage_error_replies"] > 0
    (node,) = result["per_node"]
    assert node["fds_end"] <= node["fds_baseline"] + 2
    assert node["tasks_end"] <= node["tasks_baseline"] + 2
    assert node["rss_per_idle_conn_kb"] > 0
