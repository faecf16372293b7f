"""Failures of a cluster (docs/cluster.md, "Failover"): the owner killed, an edge killed, Redis
stopped and started again. Real nodes, real Redis, SIGKILL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from tests._redis import RedisServer
from tests.cluster._nodes import TEST_LEASE_MS, NodeProcess, owner_of, start_all, wait_ready
from tests.integration import _http
from tests.integration._signal import open_socket, pair, registered
from tests.integration.test_attestation_durability import ENV as ATTESTATION_ENV
from tests.integration.test_attestation_http import CI, build_token, reference_body
from tests.integration.test_relay_flow import relays
from zajel.client import RelayClient, SignalClient, generate_public_key

# Every node signs with the same keys and takes the pipeline's uploads (ATTESTATION_ENV).

# docs/cluster.md, "What clients see": the connections of the lost owner are closed within the
# lease plus 2 s.
FAILOVER_BOUND_S = TEST_LEASE_MS / 1000 + 2


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, list[NodeProcess]]]:
    """Redis with every write on disk before it answers, and two nodes; the first owns
    everything."""
    redis = RedisServer(tmp_path / "redis", durable=True)
    redis.start()
    nodes = [NodeProcess(tmp_path / f"n{i}", redis, f"n{i}", ATTESTATION_ENV) for i in range(2)]
    try:
        start_all(nodes)
        yield redis, nodes
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


async def closed_with(client: SignalClient) -> int | None:
    """Read until the server closes ``client``; its close code."""
    try:
        while True:
            await client.ws.get_message()
    except trio_websocket.ConnectionClosed as closed:
        return None if closed.reason is None else closed.reason.code


@asynccontextmanager
async def owned(url: str, *codes: str) -> AsyncIterator[list[SignalClient]]:
    """Registered ``/signal`` clients on sockets this test owns and always closes (the server
    closes them first here)."""
    async with AsyncExitStack() as stack:
        clients = []
        for code in codes:
            client = await stack.enter_async_context(open_socket(url))
            await client.register(code, generate_public_key())
            clients.append(client)
        yield clients


async def accepts(node: NodeProcess) -> bool:
    """Whether a ``/signal`` handshake is accepted now (a refused one is HTTP 503)."""
    refused = False
    try:
        async with open_socket(node.ws_url):
            pass
    except* trio_websocket.HandshakeError:
        refused = True
    return not refused


async def test_owner_killed_clients_get_1012_and_pair_again_through_the_new_owner(cluster):
    _, (owner, survivor) = cluster
    with trio.fail_after(30):
        async with owned(survivor.ws_url, "HHHHHH", "MMMMMM") as (alice, bob):
            await pair(alice, bob)
            killed_at = time.monotonic()
            await trio.to_thread.run_sync(owner.kill)
            codes: list[int | None] = []

            async def watch(client: SignalClient) -> None:
                codes.append(await closed_with(client))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, alice)
                nursery.start_soon(watch, bob)
            assert codes == [1012, 1012]
            assert time.monotonic() - killed_at <= FAILOVER_BOUND_S
        # They come back (a refused handshake is retried, as the apps do) and pair again.
        while not await accepts(survivor):  # noqa: ASYNC110 - another process
            await trio.sleep(0.05)
        async with registered(survivor.ws_url, "HHHHHH", "MMMMMM") as (alice, bob):
            await pair(alice, bob)
        assert time.monotonic() - killed_at <= FAILOVER_BOUND_S
        assert await owner_of(survivor, "signaling") == survivor.node_id


async def test_a_dead_drop_outlives_the_node_that_received_it(cluster):
    _, (owner, edge) = cluster
    with trio.fail_after(30):
        # Left through the edge, which is then killed: its owner keeps the entry.
        async with open_socket(edge.ws_url, "/relay", client_class=RelayClient) as alice:
            await alice.register("drop-alice")
            await alice.register_rendezvous(daily_points=["point-1"], dead_drop="sealed-1")
            await trio.to_thread.run_sync(edge.kill)
        # Left through the owner, which is then killed too (after a new edge joins): the entry
        # is in Redis, and the new owner loads it.
        async with open_socket(owner.ws_url, "/relay", client_class=RelayClient) as carol:
            await carol.register("drop-carol")
            await carol.register_rendezvous(daily_points=["point-2"], dead_drop="sealed-2")
            await trio.to_thread.run_sync(edge.start)
            await trio.to_thread.run_sync(wait_ready, [owner, edge])
            await trio.to_thread.run_sync(owner.kill)
        while await owner_of(edge, "relay") != edge.node_id:  # noqa: ASYNC110
            await trio.sleep(0.05)
        async with relays(edge.ws_url, "drop-bob") as (bob,):
            found = await bob.register_rendezvous(daily_points=["point-1", "point-2"])
        drops = {drop["peerId"]: drop["deadDrop"] for drop in found["deadDrops"]}
        assert drops == {"drop-alice": "sealed-1", "drop-carol": "sealed-2"}


SECRET = "registry-secret-for-tests"


def server_body(server_id: str) -> dict[str, Any]:
    return {
        "serverId": server_id,
        "endpoint": f"wss://{server_id}.relay.example.com/ws",
        "publicKey": f"pk-{server_id}",
    }


async def test_redis_down_then_back_degrades_and_recovers_losing_no_acknowledged_write(cluster):
    redis, (a, b) = cluster
    acknowledged: list[str] = []
    with trio.fail_after(60):
        for n in range(20):
            node = (a, b)[n % 2]
            reply = await _http.post(node.url, "/servers", server_body(f"vps-{n}"))
            assert reply.status == 200
            acknowledged.append(f"vps-{n}")
        uploaded = await _http.post(a.url, "/attest/upload-reference", reference_body(), headers=CI)
        assert uploaded.status == 200
        for n, node in enumerate((a, b)):
            device = {"device_id": f"device-{n}", "build_token": build_token()}
            assert (await _http.post(node.url, "/attest/register", device)).status == 200
        async with open_socket(b.ws_url) as early:
            await trio.to_thread.run_sync(redis.kill)
            # Both nodes notice within a keeper round or two.
            while (await _http.get(b.url, "/health")).status != 503:  # noqa: ASYNC110
                await trio.sleep(0.05)
            # A frame that needs a service is answered, not lost.
            await early.send({"type": "register", "pairingCode": "PPPPPP"})
            assert await early.receive() == {
                "type": "error",
                "code": "unavailable",
                "message": "Cluster unavailable",
            }
        for node in (a, b):
            while (health := await _http.get(node.url, "/health")).status != 503:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert health.json()["status"] == "degraded"
            assert "cluster" in health.json()["failing"]
            refused = await _http.post(node.url, "/servers", server_body("vps-never"))
            assert (refused.status, refused.json()) == (503, {"error": "Cluster unavailable"})
            assert not await accepts(node)
        await trio.to_thread.run_sync(redis.start)
        for node in (a, b):
            while (await _http.get(node.url, "/health")).status != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)
        # And they serve again, without a restart.
        async with (
            registered(a.ws_url, "KKKKKK") as (alice,),
            registered(b.ws_url, "NNNNNN") as (bob,),
        ):
            await pair(alice, bob)
        listed = (await _http.get(b.url, "/servers")).json()["servers"]
        assert sorted(server["serverId"] for server in listed) == sorted(acknowledged)
        attestation = (await _http.get(b.url, "/stats")).json()["attestation"]
        assert (attestation["devices"], attestation["references"]) == (2, 1)


async def test_an_owner_stopped_cleanly_hands_its_services_over_without_waiting_for_the_lease(
    cluster,
):
    _, (owner, survivor) = cluster
    with trio.fail_after(20):
        await trio.to_thread.run_sync(owner.stop)  # SIGTERM: it releases its leases
        stopped_at = time.monotonic()
        while await owner_of(survivor, "signaling") != survivor.node_id:  # noqa: ASYNC110
            await trio.sleep(0.02)
        # The next keeper round (every 0.5 s), well before the lease (2 s) would have expired.
        assert time.monotonic() - stopped_at < TEST_LEASE_MS / 1000
        assert "left the cluster" in owner.log()
