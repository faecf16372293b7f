"""The plain ASGI app (``hypercorn zajel.asgi:app``) joins a cluster too (docs/cluster.md)."""

from __future__ import annotations

import trio

from tests.conftest import make_config, start_asgi_server
from tests.integration import _http
from tests.integration._signal import pair, registered


async def test_the_asgi_app_serves_as_a_cluster_node(redis, nursery):
    running = await start_asgi_server(nursery, make_config(cluster_url=redis.url, node_id="asgi"))
    with trio.fail_after(10):
        while (stats := await _http.get(running.url, "/stats")).status != 200:  # noqa: ASYNC110
            await trio.sleep(0.05)
        assert stats.json()["cluster"]["node"] == "asgi"
        assert set(stats.json()["cluster"]["owners"].values()) == {"asgi"}
        async with registered(running.ws_url, "SSSSSS", "TTTTTT") as (alice, bob):
            await pair(alice, bob)
    running.stop.set()
