"""HTTP endpoints and admission (docs/operations.md, "Health checks and metrics";
docs/protocol/conventions.md, "Errors" and "Limits"): info, health, stats, errors, CORS and security
headers, the per-IP rate limit, and WebSocket handshakes that the server must refuse."""

from __future__ import annotations

import datetime
import json
from importlib import metadata

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._signal import expect, pair, refused_handshake, registered
from zajel.client import connect_signal

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
}
CORS_HEADERS = {
    "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
    "access-control-allow-headers": "Content-Type, Authorization",
    "access-control-expose-headers": "X-Bootstrap-Signature",
}
IDLE_RELAYS = {"totalPeers": 0, "totalCapacity": 0, "totalConnected": 0, "availableRelays": 0}
IDLE_RENDEZVOUS = {
    "dailyPoints": 0,
    "hourlyTokens": 0,
    "totalEntries": 0,
    "dailyEntries": 0,
    "hourlyEntries": 0,
}
IDLE_CHUNKS = {
    "trackedChunks": 0,
    "totalSources": 0,
    "cachedChunks": 0,
    "pendingRequests": 0,
    "cacheHits": 0,
    "cacheMisses": 0,
    "pullsSent": 0,
}
IDLE_STATS = {
    "relays": IDLE_RELAYS,
    "rendezvous": IDLE_RENDEZVOUS,
    "chunks": IDLE_CHUNKS,
    "channels": {"owned": 0, "subscriptions": 0, "queuedUpstream": 0, "liveStreams": 0},
    "signaling": {"connections": 0, "pairingCodes": 0, "pendingPairRequests": 0},
    "servers": {"totalServers": 0, "liveServers": 0},
    "attestation": {"devices": 0, "references": 0, "openChallenges": 0, "flaggedDevices": 0},
    "connections": 0,
}


def assert_common_headers(response: _http.HttpResponse) -> None:
    for name, value in {**SECURITY_HEADERS, **CORS_HEADERS}.items():
        assert response.headers.get(name) == value, (name, response.status, response.headers)


def assert_json_error(response: _http.HttpResponse, status: int, text: str) -> None:
    assert response.status == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": text}


async def wait_for_stats(url: str, expected: dict) -> None:
    """Poll ``/stats`` until it shows ``expected``: a closed socket is cleaned up just after
    its close handshake, not before."""
    for _ in range(200):
        stats = (await _http.get(url, "/stats")).json()
        if stats == expected:
            return
        await trio.sleep(0.01)
    raise AssertionError(f"/stats shows {stats}, expected {expected}")


@pytest.mark.parametrize("path", ["/", "/api/info"])
async def test_info(server, path):
    with trio.fail_after(10):
        response = await _http.get(server.url, path)
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.keys() == {"name", "version", "endpoints", "features"}
    assert body["name"] == "Zajel Server"
    assert body["version"] == metadata.version("zajel")
    assert isinstance(body["endpoints"], dict)
    assert "WebSocket /signal" in body["endpoints"].values()
    assert "GET /health" in body["endpoints"].values()
    assert body["features"]
    assert all(isinstance(feature, str) for feature in body["features"])


async def test_health(server):
    with trio.fail_after(10):
        response = await _http.get(server.url, "/health")
    assert response.status == 200
    body = response.json()
    assert body.keys() == {"status", "service", "timestamp"}
    assert (body["status"], body["service"]) == ("ok", "zajel")
    stamp = datetime.datetime.fromisoformat(body["timestamp"])
    assert stamp.tzinfo is not None
    assert abs(stamp - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)


async def test_stats_counts_connections_codes_and_pending_requests(server):
    with trio.fail_after(10):
        assert (await _http.get(server.url, "/stats")).json() == IDLE_STATS
        async with (
            registered(server.url, "AAAAAA", "BBBBBB") as (a, b),
            connect_signal(server.url) as unregistered,
        ):
            await unregistered.send({"type": "ping"})
            await expect(unregistered, {"type": "pong"})
            await a.pair_request("BBBBBB")
            await b.expect("pair_incoming")
            response = await _http.get(server.url, "/stats")
            assert response.status == 200
            assert response.json() == {
                "relays": IDLE_RELAYS,
                "rendezvous": IDLE_RENDEZVOUS,
                "chunks": IDLE_CHUNKS,
                "channels": IDLE_STATS["channels"],
                "signaling": {"connections": 3, "pairingCodes": 2, "pendingPairRequests": 1},
                "servers": IDLE_STATS["servers"],
                "attestation": IDLE_STATS["attestation"],
                "connections": 3,
            }
        await wait_for_stats(server.url, IDLE_STATS)


@pytest.mark.parametrize("path", ["/nope", "/api", "/health/x", "/signalx", "/stats/x"])
async def test_an_unknown_path_is_404(server, path):
    with trio.fail_after(10):
        response = await _http.get(server.url, path)
    assert_json_error(response, 404, "Not Found")


@pytest.mark.parametrize(("method", "path"), [("POST", "/health"), ("DELETE", "/stats")])
async def test_a_known_path_with_another_method_is_405_with_allow(server, method, path):
    with trio.fail_after(10):
        response = await _http.request(server.url, method, path, body=b"")
    assert_json_error(response, 405, "Method Not Allowed")
    allowed = {name.strip() for name in response.headers["allow"].split(",")}
    assert "GET" in allowed
    assert method not in allowed


@pytest.mark.parametrize("path", ["/health", "/nope", "/signal", "/servers/x"])
async def test_options_on_any_path_is_200_empty_with_cors_headers(server, path):
    with trio.fail_after(10):
        response = await _http.options(
            server.url, path, headers={"Access-Control-Request-Method": "POST"}
        )
    assert response.status == 200
    assert response.body == b""
    assert_common_headers(response)


async def test_common_headers_on_every_http_response(server):
    with trio.fail_after(10):
        responses = [
            await _http.get(server.url, "/"),
            await _http.get(server.url, "/health"),
            await _http.get(server.url, "/stats"),
            await _http.get(server.url, "/nope"),
            await _http.post(server.url, "/health", {}),
            await _http.options(server.url, "/anything"),
        ]
    assert [response.status for response in responses] == [200, 200, 200, 404, 405, 200]
    for response in responses:
        assert_common_headers(response)
        assert "access-control-allow-origin" not in response.headers


async def test_cors_echoes_only_allowlisted_origins(nursery):
    running = await start_server(
        nursery, make_config(allowed_origins=("https://app.example", "http://localhost:*"))
    )
    allowed = ["https://app.example", "http://localhost:3000", "http://localhost:8"]
    refused = [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil",
        "http://localhost",
        "http://localhost:",
        "http://localhost:80x",
        "http://localhost:3000.evil",
        "http://localhost.evil:3000",
        "https://localhost:3000",
        "null",
    ]
    with trio.fail_after(10):
        for origin in allowed:
            for response in (
                await _http.get(running.url, "/health", headers={"Origin": origin}),
                await _http.options(running.url, "/servers", headers={"Origin": origin}),
                await _http.get(running.url, "/nope", headers={"Origin": origin}),
            ):
                assert response.headers.get("access-control-allow-origin") == origin
                assert "origin" in response.headers.get("vary", "").lower()
                assert_common_headers(response)
        for origin in refused:
            response = await _http.get(running.url, "/health", headers={"Origin": origin})
            assert response.status == 200
            assert "access-control-allow-origin" not in response.headers, origin
    running.stop.set()


async def test_the_http_rate_limit_is_per_ip_per_minute(nursery, clock):
    running = await start_server(
        nursery, make_config(http_rate_per_minute=5, ws_idle_timeout=86_400.0)
    )
    with trio.fail_after(100):
        statuses = [(await _http.get(running.url, path)).status for path in ["/"] * 3 + ["/x"] * 2]
        assert statuses == [200, 200, 200, 404, 404]  # every request counts

        limited = await _http.get(running.url, "/stats")
        assert_json_error(limited, 429, "Too Many Requests")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert_common_headers(limited)
        assert (await _http.options(running.url, "/stats")).status == 429
        # /health and /metrics are outside the budget (tests/integration/test_metrics.py).

        # WebSocket handshakes count only against the connection caps.
        async with connect_signal(running.url) as client:
            await client.register("AAAAAA")

        clock.jump(61)
        response = await _http.get(running.url, "/api/info")
        assert response.status == 200
        assert response.json()["name"] == "Zajel Server"
    running.stop.set()


@pytest.mark.parametrize(
    "path", ["/nope", "/signalx", "/signa", "/api/info/signal", "/ws", "/", "/health", "/stats"]
)
async def test_a_websocket_handshake_on_an_unknown_path_is_refused_with_404(server, path):
    """Paths that serve only HTTP are unknown paths for a WebSocket handshake."""
    with trio.fail_after(10):
        refusal = await refused_handshake(server.url, path)
    assert refusal.status_code == 404
    assert json.loads(refusal.body) == {"error": "Not Found"}
    headers = {name.lower(): value for name, value in refusal.headers}
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"x-frame-options"] == b"DENY"


@pytest.mark.parametrize("path", ["/signal/", "/signal/anything", "/signal/a/b?x=1"])
async def test_signal_subpaths_serve_the_same_room(server, path):
    with trio.fail_after(10):
        async with (
            connect_signal(server.url) as a,
            connect_signal(server.url, path=path) as b,
        ):
            await a.register("AAAAAA")
            await b.register("BBBBBB")
            await pair(a, b)
            await b.signal("offer", "AAAAAA", {"sdp": "x"})
            await expect(a, {"type": "offer", "from": "BBBBBB", "payload": {"sdp": "x"}})


@pytest.mark.parametrize(
    "caps", [{"ws_max_connections_per_ip": 2}, {"ws_max_connections": 2}], ids=["per-ip", "total"]
)
async def test_connections_over_a_cap_are_refused_with_503(nursery, caps):
    running = await start_server(
        nursery, make_config(ws_idle_timeout=86_400.0, http_rate_per_minute=100_000, **caps)
    )
    url = running.url
    with trio.fail_after(10):
        async with connect_signal(url) as first:
            async with connect_signal(url) as second:
                await second.register("BBBBBB")
                refusal = await refused_handshake(url, "/signal")
                assert refusal.status_code == 503
                assert refusal.body is not None
                assert json.loads(refusal.body) == {"error": "Too many connections"}
                assert (await _http.get(url, "/stats")).json()["connections"] == 2
            await wait_for_stats(
                url,
                {
                    **IDLE_STATS,
                    "signaling": {"connections": 1, "pairingCodes": 0, "pendingPairRequests": 0},
                    "connections": 1,
                },
            )
            async with connect_signal(url) as third:
                await third.register("CCCCCC")
                await first.register("AAAAAA")
    running.stop.set()
