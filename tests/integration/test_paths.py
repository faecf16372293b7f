"""Odd paths over real HTTP (docs/operations.md, "Health checks and metrics": an unknown path is
404 JSON): doubled, trailing and leading slashes and dot segments on every route get a JSON
answer, never a redirect or an HTML page."""

from __future__ import annotations

import json

import pytest
import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments, make_config, start_server
from tests.integration import _http
from tests.integration.test_http import assert_common_headers, assert_json_error
from zajel.web.app import ENDPOINTS

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)


def variants(path: str) -> list[str]:
    """``path`` written the ways a client, a proxy or an attacker may write it."""
    found = {path + "/", path + "//", "/" + path, path.replace("/", "//"), "/." + path}
    for index, char in enumerate(path):
        if char == "/" and index:
            found.add(path[:index] + "/" + path[index:])  # one inner slash doubled
            found.add(path[:index] + "/./" + path[index + 1 :])
    return sorted(found - {path})


ROUTES = [
    tuple(endpoint.replace("{serverId}", "vps-1").split(" ", 1))
    for endpoint in ENDPOINTS.values()
    if not endpoint.startswith("WebSocket")
]
ODD = sorted({(method, odd) for method, path in ROUTES for odd in variants(path)})


async def test_no_odd_path_gets_a_redirect_or_html(nursery):
    running = await start_server(nursery, make_config(http_rate_per_minute=100_000))
    assert len(ODD) > 60
    with trio.fail_after(30):
        for method, path in ODD:
            body = b"{}" if method == "POST" else None
            response = await _http.request(running.url, method, path, body=body)
            where = (method, path, response.status, response.body[:80])
            assert not 300 <= response.status < 400, where
            assert_common_headers(response)
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("text/plain"):  # /metrics itself, its slashes collapsed
                assert response.status == 200, where
                assert response.body.startswith(b"# HELP zajel_"), where
                continue
            assert content_type.startswith("application/json"), where
            json.loads(response.body)
    running.stop.set()


@pytest.mark.parametrize("path", ["/health/", "/health//", "/api//info", "/stats/", "//stats/"])
async def test_a_slash_too_many_is_404_json(server, path):
    with trio.fail_after(10):
        assert_json_error(await _http.get(server.url, path), 404, "Not Found")


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("POST", "/attest//verify", 404, "Not Found"),
        ("GET", "/attest/versions/", 404, "Not Found"),
        # Under /servers/ is DELETE /servers/{serverId}, here with the id "/heartbeat".
        ("POST", "/servers//heartbeat", 405, "Method Not Allowed"),
    ],
)
async def test_a_slash_too_many_on_a_route_is_json_not_a_redirect(
    server, method, path, status, error
):
    with trio.fail_after(10):
        response = await _http.request(server.url, method, path, body=b"{}")
    assert_json_error(response, status, error)
