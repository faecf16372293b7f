"""WebSocket ``/relay`` over real sockets (docs/protocol/relay.md): identity binding, the relay
registry, rendezvous with dead drops and live matches, disconnect cleanup and ``/stats``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments, make_config, start_server
from tests.integration import _http
from tests.integration._signal import assert_quiet, error, expect
from zajel.client import RelayClient, connect_relay

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

HOUR = 3600.0
MISMATCH = error("peer_id_mismatch", "peerId does not match this connection's registration")


@asynccontextmanager
async def relays(url: str, *peer_ids: str, **register: int) -> AsyncIterator[list[RelayClient]]:
    """One ``/relay`` connection per peer id, each registered."""
    async with AsyncExitStack() as stack:
        clients = []
        for peer_id in peer_ids:
            client = await stack.enter_async_context(connect_relay(url))
            await client.register(peer_id, **register)
            clients.append(client)
        yield clients


async def test_register_returns_available_relays_never_the_caller(server):
    with trio.fail_after(10):
        async with relays(server.url, "alice") as (alice,), connect_relay(server.url) as bob:
            reply = await bob.register("bob", max_connections=5, public_key="bob-key")
            assert reply == {
                "type": "registered",
                "peerId": "bob",
                "relays": [{"peerId": "alice", "publicKey": None, "capacity": 0.0}],
            }
            assert await alice.get_relays() == [
                {"peerId": "bob", "publicKey": "bob-key", "capacity": 0.0}
            ]


async def test_load_decides_availability_and_half_capacity_is_excluded(server):
    with trio.fail_after(10):
        async with relays(server.url, "asker", "busy", "free", max_connections=4) as clients:
            asker, busy, free = clients
            assert await busy.update_load(2) == {
                "type": "load_updated",
                "peerId": "busy",
                "connectedCount": 2,
            }
            await free.update_load(1)
            assert await asker.get_relays(50) == [
                {"peerId": "free", "publicKey": None, "capacity": 0.25}
            ]
            # Re-registering keeps the load and replaces the capacity.
            await busy.register("busy", max_connections=10)
            listed = {relay["peerId"]: relay["capacity"] for relay in await asker.get_relays(50)}
            assert listed == {"busy": 0.2, "free": 0.25}
            assert len(await asker.get_relays(1)) == 1


async def test_heartbeat_ping_and_stats(server):
    with trio.fail_after(10):
        async with connect_relay(server.url) as unregistered:
            await unregistered.ping()  # ping needs no registration
            async with relays(server.url, "a", "b", max_connections=10) as (a, b):
                before = time.time() * 1000
                timestamp = await a.heartbeat()
                assert before - 1000 <= timestamp <= time.time() * 1000 + 1000
                await b.update_load(3)
                body = await _http.stats(server.url)
                assert body["relays"] == {
                    "totalPeers": 2,
                    "totalCapacity": 20,
                    "totalConnected": 3,
                    "availableRelays": 2,
                }
                assert body["connections"] == 3
                assert set(body) == {
                    "relays",
                    "rendezvous",
                    "chunks",
                    "channels",
                    "signaling",
                    "servers",
                    "attestation",
                    "connections",
                }


async def test_identity_is_bound_to_the_first_connection(server):
    with trio.fail_after(10):
        async with relays(server.url, "alice") as (alice,), connect_relay(server.url) as mallory:
            await mallory.send({"type": "update_load", "connectedCount": 1})
            await expect(mallory, error("not_registered", "Not registered: send register first"))
            await mallory.send({"type": "register", "peerId": "alice"})
            await expect(mallory, error("peer_id_in_use", "Peer ID already in use"))
            await mallory.register("mallory")
            for frame in (
                {"type": "update_load", "peerId": "alice", "connectedCount": 99},
                {"type": "get_relays", "peerId": "alice"},
                {"type": "heartbeat", "peerId": "alice"},
                {"type": "register_rendezvous", "peerId": "alice", "dailyPoints": ["p"]},
                {"type": "register", "peerId": "alice"},
            ):
                await mallory.send(frame)
                await expect(mallory, MISMATCH)
            # alice's entry is untouched; a message naming one's own peerId is fine.
            assert await mallory.get_relays() == [
                {"peerId": "alice", "publicKey": None, "capacity": 0.0}
            ]
            await alice.send({"type": "update_load", "peerId": "alice", "connectedCount": 1})
            await alice.expect("load_updated")
            await assert_quiet(alice, mallory)


async def test_rendezvous_dead_drop_and_live_match(server):
    with trio.fail_after(10):
        async with relays(server.url, "alice", "bob") as (alice, bob):
            first = await alice.register_rendezvous(
                daily_points=["day-1", "day-2"],
                hourly_tokens=["hour-1"],
                dead_drop="sealed-for-bob",
                relay_id="relay-a",
            )
            assert first == {"type": "rendezvous_result", "liveMatches": [], "deadDrops": []}
            await bob.send(
                {
                    "type": "register_rendezvous",
                    "daily_points": ["day-2", "day-1"],
                    "hourly_tokens": ["hour-1"],
                    "dead_drops": {"day-2": "sealed-for-alice"},
                }
            )
            result = await bob.expect("rendezvous_result")
            assert result == {
                "type": "rendezvous_result",
                "liveMatches": [{"peerId": "alice", "relayId": "relay-a"}],
                "deadDrops": [
                    {"peerId": "alice", "deadDrop": "sealed-for-bob", "relayId": "relay-a"}
                ],
            }
            # alice's push was queued before bob's result: it is already waiting for her.
            with trio.fail_after(1):
                await expect(alice, {"type": "rendezvous_match", "match": {"peerId": "bob"}})
            await assert_quiet(alice, bob)
            assert (await _http.stats(server.url))["rendezvous"] == {
                "dailyPoints": 2,
                "hourlyTokens": 1,
                "totalEntries": 6,
                "dailyEntries": 4,
                "hourlyEntries": 2,
            }


async def test_disconnect_removes_the_peer_everywhere(server):
    with trio.fail_after(10):
        async with relays(server.url, "carol") as (carol,):
            async with relays(server.url, "alice") as (alice,):
                await alice.register_rendezvous(
                    daily_points=["p"], hourly_tokens=["t"], dead_drop="d"
                )
            # alice is gone: from relays, points and tokens.
            await _http.wait_stats(server.url, "relays", totalPeers=1)
            assert await carol.get_relays() == []
            result = await carol.register_rendezvous(
                daily_points=["p"], hourly_tokens=["t"], dead_drop="c"
            )
            assert result == {"type": "rendezvous_result", "liveMatches": [], "deadDrops": []}
            # Her peerId is free again.
            async with relays(server.url, "alice"):
                pass


async def test_rendezvous_entries_expire_on_the_servers_clock(nursery, clock):
    running = await start_server(nursery, make_config(ws_idle_timeout=10.0**7))
    with trio.fail_after(60 + 49 * HOUR):  # the jumps advance this deadline's clock too
        async with relays(running.url, "alice", "bob", "carol") as (alice, bob, carol):
            await alice.register_rendezvous(daily_points=["p"], hourly_tokens=["t"], dead_drop="d")
            clock.jump(2 * HOUR)
            result = await bob.register_rendezvous(hourly_tokens=["t"])
            assert result["liveMatches"] == [{"peerId": "alice"}]
            await alice.expect("rendezvous_match")
            clock.jump(2 * HOUR)  # alice's token is 4 h old; bob's 2 h
            result = await carol.register_rendezvous(hourly_tokens=["t"])
            assert result["liveMatches"] == [{"peerId": "bob"}]
            await bob.expect("rendezvous_match")
            clock.jump(43 * HOUR)  # alice's dead drop is 47 h old
            result = await carol.register_rendezvous(daily_points=["p"])
            assert result["deadDrops"] == [{"peerId": "alice", "deadDrop": "d"}]
            clock.jump(2 * HOUR)  # 49 h
            result = await bob.register_rendezvous(daily_points=["p"])
            assert result["deadDrops"] == []
    running.stop.set()


async def test_relay_subpaths_reach_the_same_registry(server):
    with trio.fail_after(10):
        async with (
            relays(server.url, "alice") as (alice,),
            connect_relay(server.url, path="/relay/v1/anything") as bob,
        ):
            await bob.register("bob")
            assert [relay["peerId"] for relay in await alice.get_relays()] == ["bob"]
