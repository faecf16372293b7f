"""``open_services``: the nursery that owns one task per service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from zajel.config import Config
from zajel.services._durable import start_durable_service
from zajel.services._mailbox import Address, start_service
from zajel.services.attestation import AttestationRegistry
from zajel.services.chunk_index import ChunkIndex
from zajel.services.relay import RelayService
from zajel.services.servers import ServerRegistry
from zajel.services.signaling import SignalingRoom
from zajel.storage import Store

# Bounded inboxes: a flood of frames makes the connections that send them wait, not memory grow.
INBOX_SIZE = 1024


class ClusterView(Protocol):
    """What the front end asks of this node's cluster (docs/cluster.md)."""

    @property
    def available(self) -> bool:
        """False while Redis cannot be reached: new connections and work are refused."""

    def status(self) -> dict[str, Any]:
        """The ``"cluster"`` section of ``/stats``."""

    def count_connections(self, count: Callable[[], int]) -> None:
        """Where this node's open WebSocket count is read (the cluster's totals)."""


@attrs.frozen
class Services:
    """The addresses of the running services; the front end holds only this. ``cluster`` is
    set in cluster mode."""

    signaling: Address
    relay: Address
    chunks: Address
    servers: Address
    attestation: Address
    cluster: ClusterView | None = None


@asynccontextmanager
async def open_services(config: Config, store: Store) -> AsyncIterator[Services]:
    """Start every service in a nursery of its own; stop them all when the block exits.

    Durable services load their state from ``store`` before this returns.

    Raises:
        StoreError: a durable service could not load its state.
        ConfigError: a service refused its configuration.
    """
    async with trio.open_nursery() as nursery:
        signaling = start_service(nursery, SignalingRoom.from_config(config), inbox_size=INBOX_SIZE)
        relay = start_service(nursery, RelayService.from_config(config), inbox_size=INBOX_SIZE)
        chunks = start_service(nursery, ChunkIndex.from_config(config), inbox_size=INBOX_SIZE)
        servers = await start_durable_service(
            nursery, ServerRegistry.from_config(config), store, inbox_size=INBOX_SIZE
        )
        attestation = await start_durable_service(
            nursery, AttestationRegistry.from_config(config), store, inbox_size=INBOX_SIZE
        )
        try:
            yield Services(
                signaling=signaling,
                relay=relay,
                chunks=chunks,
                servers=servers,
                attestation=attestation,
            )
        finally:
            nursery.cancel_scope.cancel()
