"""``zajel cluster status``: the nodes of a cluster and the owner of each service, read from
Redis (docs/cluster.md, "Operators")."""

from __future__ import annotations

import time
from typing import Any, Final

import attrs
import orjson
import trio

from zajel.cluster.fence import PREFIX, lease_key
from zajel.cluster.link import RedisAddress
from zajel.cluster.node import NODE_TTL_MS, node_of, owner_node
from zajel.cluster.services import CONNECT_TIMEOUT_S, redis_client

SERVICES: Final = ("signaling", "relay", "chunks", "servers", "attestation")


@attrs.frozen
class NodeRow:
    node: str
    url: str
    connections: int
    heartbeat_ms_ago: int
    alive: bool


@attrs.frozen
class ClusterStatus:
    nodes: list[NodeRow]
    owners: dict[str, str | None]

    @property
    def complete(self) -> bool:
        """Every service has an owner."""
        return all(owner is not None for owner in self.owners.values())

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [attrs.asdict(row) for row in self.nodes], "owners": self.owners}

    def lines(self) -> list[str]:
        out = [f"{'node':<24} {'alive':<5} {'heartbeat':>10} {'conns':>6}  url"]
        for row in self.nodes:
            out.append(
                f"{row.node:<24} {'yes' if row.alive else 'no':<5} "
                f"{row.heartbeat_ms_ago:>8}ms {row.connections:>6}  {row.url}"
            )
        out.append("")
        out.append(f"{'service':<12} owner")
        for service, owner in self.owners.items():
            out.append(f"{service:<12} {owner if owner is not None else '(none)'}")
        return out


async def read_status(url: str) -> ClusterStatus:
    """Read the status. Raises ``OSError``-like errors and ``trio.TooSlowError`` when Redis
    cannot be reached."""
    address = RedisAddress.parse(url)
    async with redis_client(address) as client:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            beats = await client.hgetall(f"{PREFIX}nodes")
            leases = await client.mget([lease_key(name) for name in SERVICES])
    now_ms = int(time.time() * 1000)
    rows = []
    for key, value in sorted(beats.items()):
        beat = orjson.loads(value)
        ago = now_ms - int(beat.get("at", 0))
        rows.append(
            NodeRow(
                node=bytes(key).decode(),
                url=str(beat.get("url", "")),
                connections=int(beat.get("connections", 0)),
                heartbeat_ms_ago=ago,
                alive=ago <= NODE_TTL_MS,
            )
        )
    owners = {
        name: node_of(owner_node(bytes(token).decode())) if token is not None else None
        for name, token in zip(SERVICES, leases, strict=True)
    }
    return ClusterStatus(rows, owners)
