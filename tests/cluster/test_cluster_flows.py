"""Three real nodes on one real Redis behave as one server (docs/cluster.md, "What clients
see"): pairing and signaling, peer_left, chunk multicast with one pull, rendezvous, the
registries, /stats and ``zajel cluster status``, with clients spread over the nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests._redis import RedisServer
from tests.cluster._nodes import NodeProcess, start_all, stats
from tests.integration import _http
from tests.integration._signal import assert_quiet, expect, pair, registered
from tests.integration.test_metrics import closes, moved, parse, scrape, value
from tests.integration.test_relay_flow import relays
from zajel.client import ServerError, connect_signal, generate_public_key


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Three nodes; the first of the list owns every service, so the other two are pure
    edges and every message of a client on them crosses Redis."""
    base = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(base / "redis")
    redis.start()
    started = [NodeProcess(base / f"n{i}", redis, f"n{i}") for i in range(3)]
    try:
        start_all(started)
        yield started
    finally:
        for node in started:
            node.stop()
        redis.stop()


async def test_pairing_and_signaling_between_clients_on_two_edges(nodes):
    _, b, c = nodes
    with trio.fail_after(10):
        async with (
            registered(b.ws_url, "AAAAAA") as (alice,),
            registered(c.ws_url, "BBBBBB") as (bob,),
        ):
            await pair(alice, bob)
            offer = {"type": "offer", "target": "BBBBBB", "payload": {"sdp": "v=0 offer"}}
            await alice.send(offer)
            await expect(bob, {"type": "offer", "from": "AAAAAA", "payload": {"sdp": "v=0 offer"}})
            await bob.send({"type": "answer", "target": "AAAAAA", "payload": {"sdp": "v=0 a"}})
            await expect(alice, {"type": "answer", "from": "BBBBBB", "payload": {"sdp": "v=0 a"}})
            for n in range(3):
                candidate = {"candidate": f"candidate:{n}", "sdpMid": "0"}
                await alice.send(
                    {"type": "ice_candidate", "target": "BBBBBB", "payload": candidate}
                )
                await expect(bob, {"type": "ice_candidate", "from": "AAAAAA", "payload": candidate})
            await assert_quiet(alice, bob)
        # Bob's node tells the owner, the owner tells Alice's node.
        async with (
            registered(b.ws_url, "CCCCCC") as (carol,),
            registered(c.ws_url, "DDDDDD") as (dave,),
        ):
            await pair(carol, dave)
            await dave.ws.aclose()
            got = await carol.receive()
            assert got == {"type": "peer_left", "pairingCode": "DDDDDD"}


async def test_a_code_is_one_namespace_over_every_node(nodes):
    a, b, _ = nodes
    with trio.fail_after(10):
        async with registered(a.ws_url, "EEEEEE"), connect_signal(b.ws_url) as other:
            with pytest.raises(ServerError) as refused:
                await other.register("EEEEEE", generate_public_key())
            assert refused.value.frame["code"] == "pairing_code_in_use"


async def test_chunk_multicast_is_one_pull_whatever_node_the_subscribers_are_on(nodes):
    a, b, c = nodes
    data = {"sealed": "x" * 2000}
    with trio.fail_after(15):
        async with (
            relays(b.ws_url, "source", "s1", "s2") as (source, *on_b),
            relays(c.ws_url, "s3", "s4", "s5") as on_c,
        ):
            before = (await stats(a))["chunks"]
            await source.send(
                {
                    "type": "chunk_announce",
                    "chunks": [{"chunkId": "multi-1", "routingHash": "r"}],
                }
            )
            await expect(source, {"type": "chunk_announce_ack", "registered": 1})
            requesters = [*on_b, *on_c]
            for requester in requesters:
                await requester.send({"type": "chunk_request", "chunkId": "multi-1"})
            await expect(source, {"type": "chunk_pull", "chunkId": "multi-1"})
            await assert_quiet(source)
            await source.send({"type": "chunk_push", "chunkId": "multi-1", "data": data})
            await expect(source, {"type": "chunk_push_ack", "chunkId": "multi-1"})
            for requester in requesters:
                await expect(
                    requester,
                    {"type": "chunk_data", "chunkId": "multi-1", "data": data, "source": "relay"},
                )
            # The cache is shared: a request through the third node is a hit, no pull.
            async with relays(a.ws_url, "late") as (late,):
                await late.send({"type": "chunk_request", "chunkId": "multi-1"})
                await expect(
                    late,
                    {"type": "chunk_data", "chunkId": "multi-1", "data": data, "source": "cache"},
                )
            await assert_quiet(source)
            after = (await stats(a))["chunks"]
            assert after["pullsSent"] - before["pullsSent"] == 1


async def test_rendezvous_live_match_across_nodes(nodes):
    _, b, c = nodes
    with trio.fail_after(10):
        async with relays(b.ws_url, "rv-alice") as (alice,), relays(c.ws_url, "rv-bob") as (bob,):
            first = await alice.register_rendezvous(hourly_tokens=["tok-1"])
            assert first["liveMatches"] == []
            second = await bob.register_rendezvous(hourly_tokens=["tok-1"])
            assert [m["peerId"] for m in second["liveMatches"]] == ["rv-alice"]
            match = await alice.wait_rendezvous_match()
            assert match["match"]["peerId"] == "rv-bob"


async def test_the_server_registry_is_one_registry(nodes):
    a, b, c = nodes
    entry = {
        "serverId": "vps-1",
        "endpoint": "wss://vps-1.relay.example.com/ws",
        "publicKey": "pk-vps-1",
        "region": "eu",
    }
    with trio.fail_after(10):
        reply = await _http.post(b.url, "/servers", entry)
        assert reply.status == 200, reply.body
        listed = await _http.get(c.url, "/servers")
        assert [server["serverId"] for server in listed.json()["servers"]] == ["vps-1"]
        gone = await _http.request(a.url, "DELETE", "/servers/vps-1")
        assert gone.status == 200
        assert (await _http.get(b.url, "/servers")).json()["servers"] == []


async def test_stats_give_the_cluster_totals_and_owners(nodes):
    a, b, c = nodes
    with trio.fail_after(10):
        async with registered(b.ws_url, "FFFFFF"), registered(c.ws_url, "GGGGGG"):
            for node in nodes:
                view = await stats(node)
                assert view["cluster"]["node"] == node.node_id
                assert view["cluster"]["nodes"] == 3
                assert set(view["cluster"]["owners"].values()) == {a.node_id}
            # The heartbeats carry each node's connections (within a heartbeat).
            with trio.fail_after(5):
                while (await stats(a))["connections"] < 2:  # noqa: ASYNC110
                    await trio.sleep(0.1)


def test_cluster_status_lists_nodes_and_owners(nodes):
    redis_url = nodes[0].redis.url
    done = subprocess.run(
        [sys.executable, "-m", "zajel", "cluster", "status", "--cluster", redis_url, "--json"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert {row["node"] for row in status["nodes"] if row["alive"]} == {"n0", "n1", "n2"}
    assert set(status["owners"].values()) == {nodes[0].node_id}


def test_cluster_status_without_redis_is_one_line_and_exit_2(tmp_path: Path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zajel",
            "cluster",
            "status",
            "--cluster",
            "redis://:secret@127.0.0.1:1/0",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1
    assert b"secret" not in done.stderr


async def test_metrics_count_the_cross_node_hop(nodes):
    a, b, c = nodes
    with trio.fail_after(10):
        before = await scrape(b.url)
        async with registered(b.ws_url, "QQQQQQ"), registered(c.ws_url, "RRRRRR"):
            pass
        after = await scrape(b.url)
        while closes(after) - closes(before) < 1:  # counted once its cleanup has run
            await trio.sleep(0.01)
            after = await scrape(b.url)
        owner_before = await scrape(a.url)
        entry = {"serverId": "metrics-1", "endpoint": "wss://m.example.com", "publicKey": "k"}
        assert (await _http.post(b.url, "/servers", entry)).status == 200
        response = await _http.get(a.url, "/metrics")
    families, owner = parse(response.body.decode())
    # The registration was committed to Redis by the owner of the server registry.
    assert moved(owner_before, owner, "zajel_store_commit_seconds_count", store="redis") == 1
    assert [family.name for family in families if not family.documentation] == []
    assert value(after, "zajel_up") == 1
    assert value(after, "zajel_cluster_nodes") == 3
    assert value(after, "zajel_cluster_degraded") == 0
    assert value(after, "zajel_cluster_owned", service="signaling") == 0
    assert value(owner, "zajel_cluster_owned", service="signaling") == 1
    # The client on b: one frame in, one out, counted on b; its register crossed to the owner.
    frames = {"endpoint": "signal", "type": "register"}
    assert moved(before, after, "zajel_websocket_messages_in_total", **frames) == 1
    frames["type"] = "registered"
    assert moved(before, after, "zajel_websocket_messages_out_total", **frames) == 1
    assert moved(before, after, "zajel_cluster_hop_messages_out_total") > 0
    assert moved(before, after, "zajel_cluster_hop_messages_in_total") > 0
    assert value(after, "zajel_cluster_hop_latency_p99_seconds") >= 0
    # Services run on their owner: their inboxes and handling times are a's.
    assert ("zajel_service_inbox_depth", (("service", "signaling"),)) in owner
    assert not any(name == "zajel_service_inbox_depth" for name, _ in after)


SECRET_URL = "redis://user:secret@127.0.0.1:1/0"


def test_serve_with_an_unreachable_cluster_stops_with_one_line_and_exit_2(tmp_path: Path):
    done = subprocess.run(
        [*(sys.executable, "-m", "zajel", "serve", "--port", "0"), "--cluster", SECRET_URL],
        capture_output=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.decode().splitlines() if line.startswith("zajel:")]
    assert len(lines) == 1
    assert "cannot reach the cluster at redis://user:***@127.0.0.1:1/0" in lines[0]
    assert b"secret" not in done.stderr
