"""``MemoryStore``: the store in a dictionary, for unit tests of the services."""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_never

import trio

from zajel.protocol.attestation import Challenge, Device, Policy, Reference
from zajel.protocol.servers import ServerEntry
from zajel.storage.interface import (
    AttestationRecords,
    DeleteChallenge,
    DeleteDevice,
    DeleteServer,
    PutChallenge,
    PutDevice,
    PutPolicy,
    PutReference,
    PutServer,
    StoreError,
    Write,
)


class MemoryStore:
    """A ``Store`` that keeps everything in memory.

    Two switches fail it: ``fail`` makes every call raise ``StoreError`` until it is cleared, as
    a broken disk would; ``fail_writes`` makes only commits and write probes raise, as a full
    disk would (reads and pings still work). ``commits`` and ``probes`` count the successful
    ones.
    """

    def __init__(self) -> None:
        self.servers: dict[str, ServerEntry] = {}
        self.devices: dict[str, Device] = {}
        self.references: dict[tuple[str, str], Reference] = {}
        self.challenges: dict[str, Challenge] = {}
        self.policy: Policy | None = None
        self.commits = 0
        self.probes = 0
        self.fail = False
        self.fail_writes = False
        self._closed = False

    async def load_servers(self) -> list[ServerEntry]:
        await self._check()
        return list(self.servers.values())

    async def load_attestation(self) -> AttestationRecords:
        await self._check()
        return AttestationRecords(
            list(self.devices.values()),
            list(self.references.values()),
            list(self.challenges.values()),
            self.policy,
        )

    async def apply(self, writes: Sequence[Write]) -> None:
        await self._check(write=True)
        self.apply_nowait(writes)
        self.commits += 1

    def apply_nowait(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order, at once: what a committed ``apply`` leaves behind."""
        for write in writes:
            if isinstance(write, PutServer):
                self.servers[write.entry.server_id] = write.entry
            elif isinstance(write, DeleteServer):
                self.servers.pop(write.server_id, None)
            elif isinstance(write, PutDevice):
                self.devices[write.device.device_id] = write.device
            elif isinstance(write, DeleteDevice):
                self.devices.pop(write.device_id, None)
            elif isinstance(write, PutReference):
                reference = write.reference
                self.references[reference.version, reference.platform] = reference
            elif isinstance(write, PutChallenge):
                self.challenges[write.challenge.nonce] = write.challenge
            elif isinstance(write, DeleteChallenge):
                self.challenges.pop(write.nonce, None)
            elif isinstance(write, PutPolicy):
                self.policy = write.policy
            else:  # pragma: no cover - exhaustive
                assert_never(write)

    async def ping(self) -> None:
        await self._check()

    async def probe_write(self) -> None:
        await self._check(write=True)
        self.probes += 1

    async def aclose(self) -> None:
        self._closed = True

    async def _check(self, *, write: bool = False) -> None:
        await trio.lowlevel.checkpoint()  # a real store always yields to the scheduler
        if self._closed:
            raise StoreError("store is closed")
        if self.fail:
            raise StoreError("store failure (simulated)")
        if write and self.fail_writes:
            raise StoreError("database or disk is full (simulated)")
