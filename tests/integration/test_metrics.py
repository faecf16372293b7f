"""``/metrics`` over real HTTP (docs/operations.md, "Metrics"): scraped with prometheus_client's
own parser, its counters move by exactly what the clients did; every family has HELP; ``/health``
and ``/metrics`` are outside the per-IP HTTP budget; ``METRICS_BIND`` moves ``/metrics`` to an
address of its own."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._process import clean_environment
from tests.integration._signal import (
    open_socket,
    pair,
    read_until_closed,
    refused_handshake,
    registered,
)
from zajel.client import connect_relay, connect_signal

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[list[Any], Samples]:
    """The families of a scrape, and every sample by (name, sorted labels)."""
    families = list(text_string_to_metric_families(text))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    return families, samples


async def scrape(url: str) -> Samples:
    response = await _http.get(url, "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.body.decode())[1]


def closes(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "zajel_websocket_closes_total")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.mark.parametrize("transport", ["fast", "hypercorn"])
async def test_counters_move_by_exactly_what_the_clients_did(nursery, transport):
    config = make_config(ws_idle_timeout=86_400.0, ws_transport=transport)
    running = await start_server(nursery, config)
    offers = 7
    with trio.fail_after(20):
        before = await scrape(running.url)
        async with registered(running.url, "AAAAAA", "BBBBBB") as (a, b):
            await pair(a, b)
            for n in range(offers):
                await a.signal("offer", "BBBBBB", {"sdp": f"v={n}"})
                await b.expect("offer")
            await a.ws.send_message("not json")
            assert (await a.expect("error"))["code"] == "invalid_message"
            await a.send({"type": "no_such_type_" + "x" * 40})
            assert (await a.expect("error"))["code"] == "unknown_type"
            async with connect_relay(running.url) as relay:
                await relay.register("relay-1")
                during = await scrape(running.url)
            await b.ws.aclose()
            await a.expect("peer_left")
        registered_server = await _http.post(
            running.url,
            "/servers",
            {"serverId": "s1", "endpoint": "wss://relay.example.com", "publicKey": "k"},
        )
        assert registered_server.status == 200
        # Every connection's end is counted once its cleanup has run.
        scrapes = 2
        after = await scrape(running.url)
        while closes(after) - closes(before) < 3:
            await trio.sleep(0.01)
            scrapes += 1
            after = await scrape(running.url)

    signal_in = {
        "register": 2,
        "pair_request": 1,
        "pair_response": 1,
        "offer": offers,
        "invalid": 1,
        "other": 1,
    }
    for kind, count in signal_in.items():
        assert (
            moved(before, after, "zajel_websocket_messages_in_total", endpoint="signal", type=kind)
            == count
        ), kind
    signal_out = {
        "registered": 2,
        "pair_incoming": 1,
        "pair_matched": 2,
        "offer": offers,
        "error": 2,
        "peer_left": 1,
    }
    for kind, count in signal_out.items():
        assert (
            moved(before, after, "zajel_websocket_messages_out_total", endpoint="signal", type=kind)
            == count
        ), kind
    for code in ("invalid_message", "unknown_type"):
        assert (
            moved(before, after, "zajel_websocket_errors_total", endpoint="signal", code=code) == 1
        )
    assert (
        moved(before, after, "zajel_websocket_messages_in_total", endpoint="relay", type="register")
        == 1
    )
    assert (
        moved(
            before, after, "zajel_websocket_messages_out_total", endpoint="relay", type="registered"
        )
        == 1
    )
    # The clients closed with 1000 (under zajel serve, on either stack: docs/operations.md,
    # "Metrics").
    normal = "1000"
    assert moved(before, after, "zajel_websocket_closes_total", endpoint="signal", code=normal) == 2
    assert moved(before, after, "zajel_websocket_closes_total", endpoint="relay", code=normal) == 1
    assert closes(after) - closes(before) == 3

    # Nothing else moved: every frame is counted once, under one type.
    def total(samples: Samples, name: str) -> float:
        return sum(v for (n, _), v in samples.items() if n == name)

    assert (
        total(after, "zajel_websocket_messages_in_total")
        - total(before, "zajel_websocket_messages_in_total")
        == sum(signal_in.values()) + 1
    )
    assert (
        total(after, "zajel_websocket_messages_out_total")
        - total(before, "zajel_websocket_messages_out_total")
        == sum(signal_out.values()) + 1
    )
    assert (
        total(after, "zajel_websocket_errors_total") - total(before, "zajel_websocket_errors_total")
        == 2
    )
    assert total(after, "zajel_refusals_total") == 0
    assert total(after, "zajel_websocket_slow_consumer_drops_total") == 0
    # A client's type never becomes a label value.
    assert not any("no_such_type" in str(labels) for _, labels in after)

    assert value(during, "zajel_websocket_connections", endpoint="signal") == 2
    assert value(during, "zajel_websocket_connections", endpoint="relay") == 1
    assert value(after, "zajel_websocket_connections", endpoint="signal") == 0
    assert value(during, "zajel_signaling_pairing_codes") == 2
    assert value(during, "zajel_relays_total_peers") == 1

    # HTTP: each scrape counts (once its response is made), and so does the registration,
    # whose commit is timed.
    metrics_route = {"route": "/metrics", "status": "200"}
    assert moved(before, after, "zajel_http_responses_total", **metrics_route) == scrapes
    assert (
        moved(before, after, "zajel_http_request_duration_seconds_count", route="/metrics")
        == scrapes
    )
    assert moved(before, after, "zajel_http_responses_total", route="/servers", status="200") == 1
    assert moved(before, after, "zajel_store_commit_seconds_count", store="sqlite") == 1
    # Services time one request in 16; this test made far more than 16 of them.
    assert moved(before, after, "zajel_service_handling_seconds_count", service="signaling") >= 1
    assert value(after, "zajel_service_inbox_depth", service="signaling") == 0
    assert value(after, "zajel_up") == 1
    assert value(after, "zajel_trio_tasks") > 0
    assert value(after, "process_open_fds") > 0
    running.stop.set()


async def test_every_family_has_help_and_every_counter_ends_in_total(nursery):
    running = await start_server(nursery, make_config())
    with trio.fail_after(10):
        async with registered(running.url, "AAAAAA"):
            response = await _http.get(running.url, "/metrics")
    families, samples = parse(response.body.decode())
    assert len(families) > 40
    assert [family.name for family in families if not family.documentation] == []
    for family in families:
        if family.type == "counter":
            assert all(sample.name.endswith("_total") for sample in family.samples), family.name
    assert (
        "zajel_build_info",
        (
            ("python", f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"),
            ("version", _version()),
        ),
    ) in samples
    running.stop.set()


def _version() -> str:
    from zajel.web.app import package_version

    return package_version()


async def test_health_and_metrics_are_outside_the_http_budget_and_refusals_are_counted(nursery):
    config = make_config(
        http_rate_per_minute=2,
        ws_max_connections_per_ip=1,
        ws_message_rate=0.1,
        ws_message_burst=1,
        ws_idle_timeout=86_400.0,
    )
    running = await start_server(nursery, config)
    with trio.fail_after(20):
        assert [(await _http.get(running.url, "/")).status for _ in range(2)] == [200, 200]
        assert (await _http.get(running.url, "/stats")).status == 429
        for _ in range(3):
            assert (await _http.get(running.url, "/health")).status == 200
            assert (await _http.get(running.url, "/metrics")).status == 200
        assert (await _http.get(running.url, "/stats")).status == 429
        async with connect_signal(running.url) as client:
            refusal = await refused_handshake(running.url, "/signal")
            assert refusal.status_code == 503
            for _ in range(3):
                await client.send({"type": "ping"})
            assert (await client.expect("pong"))["type"] == "pong"
            for _ in range(2):
                assert (await client.expect("error"))["code"] == "rate_limited"
            samples = await scrape(running.url)
    assert value(samples, "zajel_refusals_total", reason="http_rate_limit") == 2
    assert value(samples, "zajel_refusals_total", reason="ws_connection_cap") == 1
    assert value(samples, "zajel_refusals_total", reason="rate_limit") == 2
    assert (
        value(samples, "zajel_websocket_errors_total", endpoint="signal", code="rate_limited") == 2
    )
    assert value(samples, "zajel_websocket_messages_in_total", endpoint="signal", type="ping") == 1
    assert value(samples, "zajel_http_responses_total", route="/stats", status="429") == 2
    assert value(samples, "zajel_http_responses_total", route="/health", status="200") == 3
    running.stop.set()


async def test_a_close_the_server_chooses_counts_under_its_code(nursery):
    running = await start_server(nursery, make_config(ws_max_message_bytes=1024))
    with trio.fail_after(10):
        async with open_socket(running.url) as client:
            await client.ws.send_message("x" * 2048)
            assert (await read_until_closed(client))[1] == 1009
        samples = await scrape(running.url)
        while closes(samples) < 1:
            await trio.sleep(0.01)
            samples = await scrape(running.url)
    assert value(samples, "zajel_websocket_closes_total", endpoint="signal", code="1009") == 1
    assert closes(samples) == 1
    running.stop.set()


async def test_a_slow_consumer_drop_is_counted_once(nursery):
    config = make_config(
        ws_outbound_queue=4,
        ws_outbound_bytes=65_536,
        ws_slow_consumer_ms=10,
        ws_message_rate=100_000,
        ws_message_burst=100_000,
        ws_idle_timeout=86_400.0,
    )
    running = await start_server(nursery, config)
    offer = {"sdp": "x" * 30_000}
    with trio.fail_after(20):
        # trio-websocket stops reading the socket while its one-message queue is full: S never
        # calls receive() after pairing, so the server's writes to it soon stall.
        async with (
            registered(running.url, "AAAAAA") as (a,),
            open_socket(running.url, message_queue_size=1) as sink,
        ):
            await sink.register("SSSSSS")
            await pair(a, sink)
            dropped = False
            for _ in range(200):
                for _ in range(8):
                    await a.signal("offer", "SSSSSS", offer)
                await a.send({"type": "ping"})
                while (frame := await a.receive())["type"] != "pong":
                    dropped = dropped or frame["type"] == "peer_left"
                if dropped:
                    break
            assert dropped
            samples = await scrape(running.url)
            while (
                value(samples, "zajel_websocket_closes_total", endpoint="signal", code="1013") < 1
            ):
                await trio.sleep(0.01)
                samples = await scrape(running.url)
    assert value(samples, "zajel_websocket_slow_consumer_drops_total", endpoint="signal") == 1
    running.stop.set()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_metrics_bind_serves_metrics_on_its_own_address_only(nursery):
    port = free_port()
    running = await start_server(nursery, make_config(metrics_bind=("127.0.0.1", port)))
    own = f"http://127.0.0.1:{port}"
    with trio.fail_after(10):
        main = await _http.get(running.url, "/metrics")
        assert main.status == 404
        assert main.json() == {"error": "Not Found"}
        response = await _http.get(own, "/metrics?x=1")
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        families, samples = parse(response.body.decode())
        assert value(samples, "zajel_up") == 1
        assert all(family.documentation for family in families)
        assert (await _http.get(own, "/health")).status == 404
        not_allowed = await _http.post(own, "/metrics", {})
        assert not_allowed.status == 405
        assert not_allowed.headers["allow"] == "GET"
        assert (await _http.get(running.url, "/health")).status == 200
    running.stop.set()


def test_serve_stops_with_one_line_when_metrics_bind_is_taken(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "zajel", "serve", "--port", "0"],
            env={**clean_environment(), "ZAJEL_METRICS_BIND": f"127.0.0.1:{port}"},
            capture_output=True,
            timeout=30,
            check=False,
            cwd=tmp_path,
        )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert lines[-1].startswith(f"zajel: cannot listen on 127.0.0.1:{port} (ZAJEL_METRICS_BIND): ")
