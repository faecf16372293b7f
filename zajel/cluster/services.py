"""``open_cluster_services``: this node's part of the cluster, behind the same ``Services`` the
front end uses on a single node (docs/cluster.md).

Each service gets a ``ClusterAddress``. While this node holds a service's lease it runs a fresh
instance of it: the durable ones load from the ``RedisStore`` and write through it, fenced by
that lease; the RelayService loads the rendezvous entries from Redis and mirrors every change
back. Live state (pairing codes, relay loads, chunk sources, the chunk cache) starts empty, and
the connections that held it are closed with 1012 by the nodes that serve them.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import coredis
import trio

from zajel.cluster import ClusterStartError
from zajel.cluster.address import ClusterAddress
from zajel.cluster.fence import PREFIX, Fence, lease_key
from zajel.cluster.link import RedisAddress
from zajel.cluster.node import Node
from zajel.cluster.rendezvous import RendezvousMirror
from zajel.config import Config
from zajel.logs import context
from zajel.services import Services
from zajel.services._durable import start_durable_service
from zajel.services._mailbox import start_service
from zajel.services.attestation import AttestationRegistry
from zajel.services.chunk_index import ChunkIndex
from zajel.services.relay import RelayService
from zajel.services.servers import ServerRegistry
from zajel.services.signaling import SignalingRoom
from zajel.storage.redis import RedisStore
from zajel.web.sockets import start_conn_ids

log = logging.getLogger("zajel.cluster")

INBOX_SIZE: Final = 1024
CONNECT_TIMEOUT_S: Final = 5.0
# Connection ids of one node: node number << CONN_ID_BITS, plus a counter.
CONN_ID_BITS: Final = 40


def redis_client(address: RedisAddress) -> coredis.Redis[bytes]:
    """A coredis client for ``address`` (open it with ``async with``)."""
    return coredis.Redis(
        host=address.host,
        port=address.port,
        db=address.db,
        username=address.username,
        password=address.password,
        ssl=address.tls,
        connect_timeout=CONNECT_TIMEOUT_S,
        stream_timeout=CONNECT_TIMEOUT_S,
    )


@asynccontextmanager
async def open_cluster_services(
    config: Config, *, listen_url: Callable[[], str] = lambda: ""
) -> AsyncIterator[tuple[Services, Node]]:
    """Join the cluster at ``config.cluster_url`` and yield the services' addresses and the
    node; leave (stop owning, stop heartbeating) when the block exits.

    Raises:
        ClusterStartError: Redis cannot be reached or refuses us.
    """
    assert config.cluster_url is not None
    address = RedisAddress.parse(config.cluster_url)
    client = redis_client(address)
    async with client:
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await client.ping()
                number = int(await client.incr(f"{PREFIX}node_seq"))
        except Exception as error:
            raise ClusterStartError(
                f"cannot reach the cluster at {address.redacted()}: {_reason(error)}"
            ) from None
        start_conn_ids(number << CONN_ID_BITS)
        node_id = config.node_id or f"node-{secrets.token_hex(4)}"

        async def run_plain(
            make: Callable[[], Any], token: str, *, task_status: trio.TaskStatus[Any]
        ) -> None:
            async with trio.open_nursery() as nursery:
                task_status.started(start_service(nursery, make(), inbox_size=INBOX_SIZE))
                await trio.sleep_forever()

        async def run_durable(
            make: Callable[[], Any], token: str, *, task_status: trio.TaskStatus[Any]
        ) -> None:
            service = make()
            store = await RedisStore.open(client, fence=Fence(lease_key(service.name), token))
            async with trio.open_nursery() as nursery:
                started = await start_durable_service(
                    nursery, service, store, inbox_size=INBOX_SIZE
                )
                task_status.started(started)
                await trio.sleep_forever()

        async def run_relay(token: str, *, task_status: trio.TaskStatus[Any]) -> None:
            mirror = RendezvousMirror()
            entries = await mirror.load(client)
            service = RelayService.from_config(config, mirror=mirror)
            restored = service.restore(entries, trio.current_time())
            log.info("rendezvous entries loaded", extra=context(entries=restored))
            async with trio.open_nursery() as nursery:
                await nursery.start(mirror.run, client, Fence(lease_key("relay"), token))
                task_status.started(start_service(nursery, service, inbox_size=INBOX_SIZE))
                await trio.sleep_forever()

        runners: dict[str, Callable[..., Awaitable[None]]] = {
            "signaling": functools.partial(run_plain, lambda: SignalingRoom.from_config(config)),
            "relay": run_relay,
            "chunks": functools.partial(run_plain, lambda: ChunkIndex.from_config(config)),
            "servers": functools.partial(run_durable, lambda: ServerRegistry.from_config(config)),
            "attestation": functools.partial(
                run_durable, lambda: AttestationRegistry.from_config(config)
            ),
        }
        node = Node(
            node_id=node_id,
            number=number,
            client=client,
            address=address,
            services=runners,
            lease_ms=config.cluster_lease_ms,
            call_timeout_ms=config.cluster_call_timeout_ms,
            linger_ms=config.cluster_linger_ms,
        )
        node.listen_url_of = listen_url
        log.info(
            "joining the cluster",
            extra=context(node=node_id, redis=address.redacted(), number=number),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                yield (
                    Services(
                        signaling=ClusterAddress(node, "signaling"),
                        relay=ClusterAddress(node, "relay"),
                        chunks=ClusterAddress(node, "chunks"),
                        servers=ClusterAddress(node, "servers"),
                        attestation=ClusterAddress(node, "attestation"),
                        cluster=node,
                    ),
                    node,
                )
            finally:
                nursery.cancel_scope.cancel()


def _reason(error: BaseException) -> str:
    if isinstance(error, trio.TooSlowError):
        return "no answer in time"
    text = str(error) or type(error).__name__
    return text.splitlines()[0]
