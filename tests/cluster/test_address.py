"""The ``Address`` contract, on a ``LocalAddress`` and on a ``ClusterAddress`` whose service runs
on another node over a real Redis (docs/cluster.md, "Edges and owners"): the same requests give
the same replies, pushes and ``handled`` marks, in the same order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import pytest
import trio

from tests._redis import RedisServer, coredis_failed_connections
from tests.conftest import make_config
from tests.services.fakes import FakePeer
from zajel.cluster.address import ClusterAddress
from zajel.cluster.link import RedisAddress
from zajel.cluster.node import NODE_TTL_MS, ClusterUnavailable, Node
from zajel.cluster.services import redis_client
from zajel.protocol.signaling import decode
from zajel.services import Address
from zajel.services._mailbox import BUSY_WAIT_S, Busy, Envelope, LocalAddress, start_service
from zajel.services._peers import Attach, Detach, Inbound
from zajel.services.signaling import GetStats, SignalingRoom, SignalingStats

CALL_TIMEOUT_MS = 300


def frame(**fields: Any) -> Any:
    return decode(json.dumps(fields))


async def start_signaling(token: str, *, task_status: trio.TaskStatus[Any]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(start_service(nursery, SignalingRoom.from_config(make_config())))
        await trio.sleep_forever()


def make_node(
    client: coredis.Redis[bytes],
    url: str,
    node_id: str,
    number: int,
    *,
    signaling: Any = start_signaling,
    call_timeout_ms: int = CALL_TIMEOUT_MS,
) -> Node:
    return Node(
        node_id=node_id,
        number=number,
        client=client,
        address=RedisAddress.parse(url),
        services={"signaling": signaling},
        lease_ms=10_000,
        call_timeout_ms=call_timeout_ms,
    )


@asynccontextmanager
async def owner_and_edge(url: str, **settings: Any) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes on the Redis at ``url``: ``owner`` runs the SignalingRoom, ``edge`` reaches it
    over Redis. They stop (and leave the cluster) before their clients close. ``settings``: of
    both nodes (``make_node``)."""
    owner_client = redis_client(RedisAddress.parse(url))
    edge_client = redis_client(RedisAddress.parse(url))
    async with owner_client, edge_client, trio.open_nursery() as nodes:
        owner = make_node(owner_client, url, "owner", 1, **settings)
        edge = make_node(edge_client, url, "edge", 2, **settings)
        await nodes.start(owner.run)
        with trio.fail_after(5):
            while not owner.owns("signaling"):  # noqa: ASYNC110
                await trio.sleep(0.01)
        await nodes.start(edge.run)
        assert edge.route("signaling") == owner.instance
        yield owner, edge
        nodes.cancel_scope.cancel()


@pytest.fixture(params=["local", "redis"])
async def address(request, redis, nursery) -> AsyncIterator[Address]:
    if request.param == "local":
        yield start_service(nursery, SignalingRoom.from_config(make_config()))
        return
    async with owner_and_edge(redis.url) as (_, edge):
        yield ClusterAddress(edge, "signaling")


async def settle(peer: FakePeer, handled: int) -> None:
    """Wait until ``peer`` has seen ``handled`` frames handled (the reply crosses Redis)."""
    with trio.fail_after(5):
        while peer.handled_count < handled:  # noqa: ASYNC110
            await trio.sleep(0.005)


async def test_call_returns_the_services_reply(address):
    with trio.fail_after(5):
        assert await address.call(GetStats()) == SignalingStats(0, 0, 0)


async def test_frames_are_handled_in_order_with_answers_pushes_and_handled_marks(address):
    alice, bob = FakePeer(), FakePeer()
    with trio.fail_after(5):
        await address.cast(Attach(1, alice, "10.0.0.1"))
        await address.cast(Attach(2, bob, "10.0.0.2"))
        address.cast_nowait(Inbound(1, frame(type="register", pairingCode="ABCDEF")))
        address.cast_nowait(Inbound(2, frame(type="register", pairingCode="BCDEFG")))
        address.cast_nowait(Inbound(1, frame(type="pair_request", targetCode="BCDEFG")))
        await settle(alice, 2)
        await settle(bob, 1)
        assert alice.types() == ["registered"]
        assert alice.identity is not None
        assert bob.types() == ["registered", "pair_incoming"]
        stats = await address.call(GetStats())
        assert (stats.connections, stats.pairing_codes, stats.pending_pair_requests) == (2, 2, 1)
        await address.cast(Detach(2))
        await settle(alice, 2)
        with trio.fail_after(5):
            while (await address.call(GetStats())).connections != 1:  # noqa: ASYNC110
                await trio.sleep(0.005)


async def test_a_cluster_call_nobody_answers_is_unavailable_not_a_hang(redis):
    url = redis.url
    client = redis_client(RedisAddress.parse(url))
    async with client, trio.open_nursery() as nodes:
        edge = make_node(client, url, "edge", 7)
        await nodes.start(edge.run)
        # The lease names an owner that is gone: nothing answers on its channel.
        with trio.fail_after(5), pytest.raises(ClusterUnavailable):
            await edge.call("ghost@9", "signaling", GetStats())
        nodes.cancel_scope.cancel()


async def test_a_call_the_owners_full_inbox_has_no_room_for_is_refused_busy(redis, clock):
    """docs/cluster.md, "Messages between nodes": the owner waits BUSY_WAIT_S for room, as a
    local call does, then answers busy; the caller does not wait for its deadline."""
    inbox, _unread = trio.open_memory_channel[Envelope](1)
    inbox.send_nowait(Envelope("a request the stuck service never takes"))

    async def stuck(token: str, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started(LocalAddress("signaling", inbox))
        await trio.sleep_forever()

    async with owner_and_edge(redis.url, signaling=stuck, call_timeout_ms=60_000) as (owner, edge):
        refused = []

        async def ask() -> None:
            with pytest.raises(Busy) as failure:
                await ClusterAddress(edge, "signaling").call(GetStats())
            refused.append(failure.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            with trio.fail_after(5):
                while inbox.statistics().tasks_waiting_send == 0:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            clock.jump(BUSY_WAIT_S)
        assert len(refused) == 1
        assert owner.hop.busy_refused == 1
        assert inbox.statistics().current_buffer_used == 1  # nothing of the call was queued


async def test_a_node_back_after_missing_its_heartbeat_closes_its_connections(tmp_path, clock):
    """The owners may have detached its connections while it was away (docs/cluster.md,
    "Failover"): they are closed with 1012, to register again. And an owner away for longer
    than its lease comes back under a new epoch."""
    redis = RedisServer(tmp_path / "redis", durable=True)  # the lease survives the restart
    await trio.to_thread.run_sync(redis.start)
    try:
        async with owner_and_edge(redis.url) as (owner, edge):
            token = edge.current_token("signaling")
            peer = FakePeer()
            await ClusterAddress(edge, "signaling").cast(Attach(5, peer, "10.0.0.5"))
            with coredis_failed_connections():
                await trio.to_thread.run_sync(redis.stop)
                with trio.fail_after(10):
                    while edge.heartbeat_ok:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                # Away for longer than a heartbeat, on trio's clock.
                clock.jump(NODE_TTL_MS / 1000 + 1)
                await trio.to_thread.run_sync(redis.start)
                with trio.fail_after(10):
                    while not edge.available:  # noqa: ASYNC110
                        await trio.sleep(0.02)
            assert peer.closed == [1012]
            assert edge.current_token("signaling") == token  # the same owner all along

            # Away for longer than a lease: the owner stops its service before the lease can
            # expire, then finds its own lease still in Redis and takes it under a new epoch,
            # so the edges see the state as new.
            later = FakePeer()
            await ClusterAddress(edge, "signaling").cast(Attach(6, later, "10.0.0.6"))
            with coredis_failed_connections():
                await trio.to_thread.run_sync(redis.stop)
                with trio.fail_after(10):
                    while owner.heartbeat_ok or edge.heartbeat_ok:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                clock.jump(10)  # the lease, on trio's clock; Redis' own clock keeps it
                with trio.fail_after(10):
                    while owner.owns("signaling"):  # noqa: ASYNC110
                        await trio.sleep(0.02)
                await trio.to_thread.run_sync(redis.start)
                with trio.fail_after(10):
                    while not (owner.owns("signaling") and edge.available):  # noqa: ASYNC110
                        await trio.sleep(0.02)
            renewed = owner.current_token("signaling")
            assert renewed.rpartition(":")[0] == token.rpartition(":")[0]  # the same run
            assert int(renewed.rpartition(":")[2]) > int(token.rpartition(":")[2])
            with trio.fail_after(5):
                while edge.current_token("signaling") != renewed:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert later.closed == [1012]
    finally:
        redis.stop()


def test_answers_of_one_text_in_a_row_cross_as_one_op():
    """Every cache hit of a chunk answers its requester with the same text: in a row, they
    cross to the edge once, with the list of connections (docs/cluster.md, "Messages between
    nodes"); anything between keeps its place."""
    node = make_node(
        redis_client(RedisAddress.parse("redis://127.0.0.1:1/0")),
        "redis://127.0.0.1:1/0",
        "owner",
        1,
    )
    chunk, other = "x" * 100, "y"
    for conn in (1, 2, 3):
        node.answer("edge@2", conn, chunk)
    node.push("edge@2", 4, chunk)
    node.answer("edge@2", 5, chunk)
    node.answer("edge@2", 6, other)
    assert node._outgoing["edge@2"] == [
        ["n", chunk, [1, 2, 3]],
        ["p", chunk, [4]],
        ["n", chunk, [5]],
        ["n", other, [6]],
    ]
