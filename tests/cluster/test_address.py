"""The ``Address`` contract, on a ``LocalAddress`` and on a ``ClusterAddress`` whose service runs
on another node over a real Redis (docs/cluster.md, "Edges and owners"): the same requests give
the same replies, pushes and ``handled`` marks, in the same order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import coredis
import pytest
import trio

from tests.conftest import make_config
from tests.services.fakes import FakePeer
from zajel.cluster.address import ClusterAddress
from zajel.cluster.link import RedisAddress
from zajel.cluster.node import ClusterUnavailable, Node
from zajel.cluster.services import redis_client
from zajel.protocol.signaling import decode
from zajel.services import Address
from zajel.services._mailbox import start_service
from zajel.services._peers import Attach, Detach, Inbound
from zajel.services.signaling import GetStats, SignalingRoom, SignalingStats

CALL_TIMEOUT_MS = 300


def frame(**fields: Any) -> Any:
    return decode(json.dumps(fields))


async def start_signaling(token: str, *, task_status: trio.TaskStatus[Any]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(start_service(nursery, SignalingRoom.from_config(make_config())))
        await trio.sleep_forever()


def make_node(client: coredis.Redis[bytes], url: str, node_id: str, number: int) -> Node:
    return Node(
        node_id=node_id,
        number=number,
        client=client,
        address=RedisAddress.parse(url),
        services={"signaling": start_signaling},
        lease_ms=10_000,
        call_timeout_ms=CALL_TIMEOUT_MS,
    )


@pytest.fixture(params=["local", "redis"])
async def address(request, redis, nursery) -> AsyncIterator[Address]:
    if request.param == "local":
        yield start_service(nursery, SignalingRoom.from_config(make_config()))
        return
    url = redis.url
    owner_client = redis_client(RedisAddress.parse(url))
    edge_client = redis_client(RedisAddress.parse(url))
    # The nodes stop (and leave the cluster) before their clients close.
    async with owner_client, edge_client, trio.open_nursery() as nodes:
        owner = make_node(owner_client, url, "owner", 1)
        edge = make_node(edge_client, url, "edge", 2)
        await nodes.start(owner.run)
        with trio.fail_after(5):
            while not owner.owns("signaling"):  # noqa: ASYNC110
                await trio.sleep(0.01)
        await nodes.start(edge.run)
        assert edge.route("signaling") == owner.instance
        yield ClusterAddress(edge, "signaling")
        nodes.cancel_scope.cancel()


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
