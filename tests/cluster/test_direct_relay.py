"""Direct relay (docs/cluster.md, "Direct relay"): once two peers are matched, their relays go
from one edge to the other without the signaling owner, and give exactly what the owner would
have given: the frame in order, or ``peer_not_found`` once the route is no longer right.

Three nodes in this process on a real Redis: an owner that serves no client, and two edges.
The same set-up shows that a ``Detach`` refused while a node was degraded reaches the owner once
it is back (docs/cluster.md, "Failover").
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from tests.cluster.test_address import make_node
from tests.services.fakes import FakePeer
from zajel.cluster.address import ClusterAddress
from zajel.cluster.link import RedisAddress
from zajel.cluster.node import Node
from zajel.cluster.services import redis_client
from zajel.protocol.signaling import decode
from zajel.services._peers import Attach, Detach, Inbound
from zajel.services.signaling import GetStats

A, B = "AAAAAA", "BBBBBB"
KEY = base64.b64encode(b"\x0a" * 32).decode()
TOKENS: dict[str, str] = {}  # each code's reconnect token, from its last ``registered``


@attrs.define
class Edge:
    node: Node
    address: ClusterAddress

    async def join(self, conn: int, code: str, **fields: Any) -> FakePeer:
        peer = FakePeer()
        await self.address.cast(Attach(conn, peer, f"10.0.0.{conn}"))
        self.send(conn, type="register", pairingCode=code, publicKey=KEY, **fields)
        await until(lambda: "registered" in peer.types())
        TOKENS[code] = next(f for f in peer.frames if f["type"] == "registered")["reconnectToken"]
        return peer

    def send(self, conn: int, **frame: Any) -> None:
        self.address.cast_nowait(Inbound(conn, decode(json.dumps(frame))))


async def until(condition: Any) -> None:
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


@asynccontextmanager
async def cluster(url: str) -> AsyncIterator[tuple[Node, Edge, Edge]]:
    clients = [redis_client(RedisAddress.parse(url)) for _ in range(3)]
    async with clients[0], clients[1], clients[2], trio.open_nursery() as nodes:
        owner = make_node(clients[0], url, "owner", 1)
        await nodes.start(owner.run)
        await until(lambda: owner.owns("signaling"))
        edges = []
        for number in (2, 3):
            node = make_node(clients[number - 1], url, f"edge{number}", number)
            await nodes.start(node.run)
            edges.append(Edge(node, ClusterAddress(node, "signaling")))
        yield owner, edges[0], edges[1]
        nodes.cancel_scope.cancel()


async def matched(
    first: Edge, second: Edge, first_conn: int = 1, second_conn: int = 2
) -> tuple[FakePeer, FakePeer]:
    """``A`` on ``first`` and ``B`` on ``second``, matched, every frame handled (so both edges
    hold their routes)."""
    a = await first.join(first_conn, A)
    b = await second.join(second_conn, B)
    first.send(first_conn, type="pair_request", targetCode=B)
    await until(lambda: "pair_incoming" in b.types())
    second.send(second_conn, type="pair_response", targetCode=A, accepted=True)
    await until(lambda: "pair_matched" in a.types() and "pair_matched" in b.types())
    await until(lambda: a.handled_count == 2 and b.handled_count == 2)
    await until(
        lambda: (
            first.node._routes.get(first_conn) is not None
            and second.node._routes.get(second_conn) is not None
        )
    )
    a.take(), b.take()
    return a, b


def offer(sdp: str) -> dict[str, Any]:
    return {"type": "offer", "target": B, "payload": {"sdp": sdp}}


async def test_matched_peers_on_two_edges_relay_without_the_owner(redis):
    async with cluster(redis.url) as (owner, one, two):
        a, b = await matched(one, two)
        before = owner.hop.messages_in
        for index in range(5):
            one.send(1, **offer(f"o{index}"))
        two.send(2, type="answer", target=A, payload={"sdp": "a"})
        await until(lambda: len(b.frames) == 5 and len(a.frames) == 1)
        assert b.take() == [
            {"type": "offer", "from": A, "payload": {"sdp": f"o{index}"}} for index in range(5)
        ]
        assert a.take() == [{"type": "answer", "from": B, "payload": {"sdp": "a"}}]
        assert (one.node.hop.direct_out, two.node.hop.direct_in) == (5, 5)
        assert (two.node.hop.direct_out, one.node.hop.direct_in) == (1, 1)
        assert a.handled_count == 2 + 5  # handled on the edge: nothing waits for the owner
        assert owner.hop.messages_in == before  # the owner saw none of them


async def test_a_relay_that_crosses_its_peer_leaving_gets_peer_not_found(redis):
    async with cluster(redis.url) as (_, one, two):
        a, _ = await matched(one, two)
        # B's edge forgets it at once; A's edge still has the route until the owner's word
        # arrives, so this offer goes edge to edge and is refused there.
        await two.address.cast(Detach(2))
        one.send(1, **offer("late"))
        await until(lambda: len(a.frames) == 2)
        assert sorted(a.take(), key=lambda frame: frame["type"]) == [
            {"type": "error", "code": "peer_not_found", "message": f"Peer not found: {B}"},
            {"type": "peer_left", "pairingCode": B},
        ]
        assert two.node.hop.direct_refused == 1
        one.send(1, **offer("after"))  # no route now: the owner answers, as on one node
        await until(lambda: len(a.frames) == 1)
        assert a.take()[0]["code"] == "peer_not_found"
        assert one.node.hop.direct_out == 1


async def test_a_peer_registered_under_another_code_is_not_reached_by_its_old_one(redis):
    async with cluster(redis.url) as (_, one, two):
        a, b = await matched(one, two)
        two.send(2, type="register", pairingCode="CCCCCC", publicKey=KEY)
        await until(lambda: "peer_left" in a.types() and "registered" in b.types())
        a.take()
        one.send(1, **offer("stale"))
        await until(lambda: len(a.frames) == 1)
        assert a.take()[0] == {
            "type": "error",
            "code": "peer_not_found",
            "message": f"Peer not found: {B}",
        }
        assert [frame["type"] for frame in b.take()] == ["registered"]


async def test_a_code_reclaimed_on_the_senders_edge_is_relayed_there(redis):
    async with cluster(redis.url) as (_, one, two):
        a, _ = await matched(one, two)
        await two.address.cast(Detach(2))
        await until(lambda: "peer_left" in a.types())
        back = await one.join(3, B, reconnectToken=TOKENS[B])  # back within the grace time
        await until(lambda: "peer_joined" in a.types() and back.handled_count == 1)
        await until(lambda: B in one.node._routes.get(1, ("", {}))[1])
        a.take(), back.take()
        one.send(1, **offer("again"))
        one.send(3, type="answer", target=A, payload={"sdp": "a"})
        await until(lambda: len(back.frames) == 1 and len(a.frames) == 1)
        assert back.take() == [{"type": "offer", "from": A, "payload": {"sdp": "again"}}]
        assert a.take() == [{"type": "answer", "from": B, "payload": {"sdp": "a"}}]
        assert (one.node.hop.direct_out, one.node.hop.direct_in) == (2, 2)


async def test_a_frame_behind_one_at_the_owner_keeps_its_place(redis):
    """A frame sent while an earlier one of the same connection is at the owner goes through
    the owner too: no relay overtakes an earlier frame of its sender."""
    async with cluster(redis.url) as (_, one, two):
        a, b = await matched(one, two)
        one.send(1, **offer("o0"))  # direct
        one.send(1, type="ping")  # to the owner
        one.send(1, **offer("o1"))  # behind the ping: through the owner
        await until(lambda: len(b.frames) == 2 and a.handled_count == 2 + 3)
        assert [frame["payload"]["sdp"] for frame in b.take()] == ["o0", "o1"]
        assert one.node.hop.direct_out == 1
        one.send(1, **offer("o2"))  # the ping is handled: direct again
        await until(lambda: len(b.frames) == 1)
        assert b.take()[0]["payload"] == {"sdp": "o2"}
        assert one.node.hop.direct_out == 2
        assert a.take() == [{"type": "pong"}]


async def test_a_detach_refused_while_degraded_reaches_the_owner_once_back(redis):
    """A connection that closes while its node cannot reach Redis cannot send its ``Detach``;
    back from degraded, the node tells each owner which connections it still has, and the
    owner detaches the others (docs/cluster.md, "Failover")."""
    async with cluster(redis.url) as (owner, one, _):
        stay = await one.join(1, A)
        await one.join(2, B)
        one.node._keeper_ok = False  # as after a keeper round that failed
        one.node._set_degraded()
        await one.address.cast(Detach(2))  # refused: only forgotten here
        before = owner.hop.messages_in
        room = owner._running["signaling"][1]
        assert (await room.call(GetStats())).connections == 2
        one.node._keeper_ok = True
        one.node._set_degraded()
        await until(lambda: owner.hop.messages_in > before)
        with trio.fail_after(5):
            while (await room.call(GetStats())).connections != 1:  # noqa: ASYNC110
                await trio.sleep(0.005)
        one.send(1, type="ping")
        await until(lambda: "pong" in stay.types())
