"""The store's interface: what services keep across a restart, as typed operations.

Services never see SQL. They load their records once at start, and hand the store the writes a
batch of requests made (``PutServer``, ``DeleteServer``, ...); ``apply`` commits them as one
transaction and returns only after the commit, so a reply sent after ``apply`` returns is never
lost by a crash (``docs/operations.md``, "Storage"). A networked store can replace the
embedded one by implementing the same ``Store`` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

import attrs

from zajel.protocol.attestation import Challenge, Device, Policy, Reference
from zajel.protocol.servers import ServerEntry


class StoreError(Exception):
    """The store failed; nothing of the operation that raised it was committed."""


@attrs.frozen
class PutServer:
    """Add or replace one ServerRegistry entry."""

    entry: ServerEntry


@attrs.frozen
class DeleteServer:
    """Remove one ServerRegistry entry (nothing happens when there is none)."""

    server_id: str


@attrs.frozen
class PutDevice:
    """Add or replace one attested device."""

    device: Device


@attrs.frozen
class DeleteDevice:
    device_id: str


@attrs.frozen
class PutReference:
    """Add or replace the reference of one version and platform."""

    reference: Reference


@attrs.frozen
class PutChallenge:
    """Keep one open challenge (its nonce) until it is used or expires."""

    challenge: Challenge


@attrs.frozen
class DeleteChallenge:
    nonce: str


@attrs.frozen
class PutPolicy:
    """Replace the version policy."""

    policy: Policy


Write: TypeAlias = (
    PutServer
    | DeleteServer
    | PutDevice
    | DeleteDevice
    | PutReference
    | PutChallenge
    | DeleteChallenge
    | PutPolicy
)


@attrs.frozen
class AttestationRecords:
    """Everything the AttestationRegistry keeps; ``policy`` is None until one is set."""

    devices: list[Device]
    references: list[Reference]
    challenges: list[Challenge]
    policy: Policy | None


class Store(Protocol):
    """Durable state of the services. Every method may raise ``StoreError``."""

    async def load_servers(self) -> list[ServerEntry]:
        """Every stored ServerRegistry entry, live or not."""

    async def load_attestation(self) -> AttestationRecords:
        """Every stored device, reference, open challenge, and the version policy."""

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit ``writes``, in order, as one transaction: all of them or none.

        Returns once the transaction is durable.
        """

    async def ping(self) -> None:
        """Return when the store answers a read (for ``/health``)."""

    async def probe_write(self) -> None:
        """Commit a durable write that changes no record: whether a commit would succeed now
        (for ``/health`` once a commit failed, as on a full disk, where reads still work)."""

    async def aclose(self) -> None:
        """Flush and close; later calls raise ``StoreError``."""
