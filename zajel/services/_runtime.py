"""``open_services``: the nursery that owns one task per service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from zajel.config import Config
from zajel.services._mailbox import Address, start_service
from zajel.services.relay import RelayService
from zajel.services.signaling import SignalingRoom

# Bounded inboxes: a flood of frames makes the connections that send them wait, not memory grow.
INBOX_SIZE = 1024


@attrs.frozen
class Services:
    """The addresses of the running services; the front end holds only this."""

    signaling: Address
    relay: Address


@asynccontextmanager
async def open_services(config: Config) -> AsyncIterator[Services]:
    """Start every service in a nursery of its own; stop them all when the block exits."""
    async with trio.open_nursery() as nursery:
        signaling = start_service(nursery, SignalingRoom.from_config(config), inbox_size=INBOX_SIZE)
        relay = start_service(nursery, RelayService.from_config(config), inbox_size=INBOX_SIZE)
        try:
            yield Services(signaling=signaling, relay=relay)
        finally:
            nursery.cancel_scope.cancel()
