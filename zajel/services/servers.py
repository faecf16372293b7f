"""ServerRegistry: VPS relay servers register and heartbeat; clients read a signed list
(``docs/protocol/servers.md``).

``ServerRegistryState`` is pure state: no I/O; times are epoch milliseconds (entries are stored
and shown on the wire, and must mean the same after a restart). Every change it makes comes
back as store writes beside its reply. ``ServerRegistry`` is the durable service around it
(see ``_durable``): it turns trio's clock into epoch milliseconds, runs the sweep, and signs the
list.

Invariants:
- At most ``max_entries`` (1000) entries are kept. A new id at the cap first drops the entries
  that are no longer live; if the registry is still full it is refused. An existing id may
  always re-register.
- An entry is live while ``now_ms - last_seen < SERVER_TTL_MS`` (5 minutes): ``live``, the
  heartbeat's peers and ``GET /servers`` skip an entry from the moment it is 5 minutes old,
  even before the sweep deletes it, and a heartbeat for it is ``Server not registered``.
- The sweep runs every ``SWEEP_INTERVAL_S`` (5 minutes) of trio's clock and deletes every entry
  that is not live, from memory and from the store. Before it, the wall clock is read again: if
  it was stepped, epoch times follow it from then on (``WallClock.resynced``).
- Each entry is held with its compact JSON text, encoded once when the entry changes: a
  heartbeat's reply and ``GET /servers`` carry up to 999 entries, and joining their texts costs a
  small part of encoding them again for every request.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import attrs
from nacl.signing import SigningKey

from zajel import crypto
from zajel.clock import WallClock
from zajel.config import Config
from zajel.logs import context
from zajel.protocol.errors import ProtocolError
from zajel.protocol.frames import encode_ascii
from zajel.protocol.servers import (
    MAX_SERVERS,
    SERVER_TTL_MS,
    ListServers,
    RegisterServer,
    ServerEntry,
    ServerHeartbeat,
    UnregisterServer,
    not_registered,
    registry_full,
)
from zajel.services._durable import DurableServiceBase, signing_key_from
from zajel.storage import DeleteServer, PutServer, Store, Write

log = logging.getLogger("zajel.servers")

SWEEP_INTERVAL_S: Final = 300.0


@attrs.frozen
class Registered:
    """Reply to ``RegisterServer``."""

    entry: ServerEntry


@attrs.frozen
class HeartbeatAccepted:
    """Reply to ``ServerHeartbeat``: every other live entry, as a JSON array (text)."""

    peers_json: str


@attrs.frozen
class Unregistered:
    """Reply to ``UnregisterServer`` (also when there was no such entry)."""


@attrs.frozen
class SignedList:
    """Reply to ``ListServers``: the exact body bytes and their signature (standard base64)."""

    body: bytes
    signature: str


@attrs.frozen
class GetServerStats:
    """Request: reply with a ``dict`` of counters for ``/stats``."""


@attrs.frozen
class _Held:
    entry: ServerEntry
    text: str  # ``entry`` as compact JSON

    @classmethod
    def of(cls, entry: ServerEntry) -> _Held:
        return cls(entry, encode_ascii(entry.to_json()))


class ServerRegistryState:
    """The registered servers. No I/O; every method takes ``now_ms`` (epoch milliseconds)."""

    def __init__(self, *, max_entries: int = MAX_SERVERS, ttl_ms: int = SERVER_TTL_MS) -> None:
        self.max_entries = max_entries
        self.ttl_ms = ttl_ms
        self._entries: dict[str, _Held] = {}

    def load(self, entries: list[ServerEntry]) -> None:
        """Replace every entry with ``entries`` (oldest registration first)."""
        ordered = sorted(entries, key=lambda entry: (entry.registered_at, entry.server_id))
        self._entries = {entry.server_id: _Held.of(entry) for entry in ordered}

    def register(
        self, request: RegisterServer, now_ms: int
    ) -> tuple[ServerEntry | ProtocolError, list[Write]]:
        """Add or replace the entry of ``request.server_id``."""
        writes: list[Write] = []
        if request.server_id not in self._entries and len(self._entries) >= self.max_entries:
            writes = self.sweep(now_ms)
            if len(self._entries) >= self.max_entries:
                return registry_full(), writes
        entry = ServerEntry(
            server_id=request.server_id,
            endpoint=request.endpoint,
            public_key=request.public_key,
            region=request.region,
            counters=request.counters,
            registered_at=now_ms,
            last_seen=now_ms,
        )
        # Re-registering replaces the entry and moves it to the end, as a new one.
        self._entries.pop(entry.server_id, None)
        self._entries[entry.server_id] = _Held.of(entry)
        return entry, [*writes, PutServer(entry)]

    def heartbeat(
        self, request: ServerHeartbeat, now_ms: int
    ) -> tuple[ServerEntry | ProtocolError, list[Write]]:
        """Refresh a live entry: its ``lastSeen`` and the counters the heartbeat carries."""
        held = self._entries.get(request.server_id)
        if held is None or not self._is_live(held.entry, now_ms):
            return not_registered(), []
        entry = attrs.evolve(
            held.entry, counters=held.entry.counters.updated(request.counters), last_seen=now_ms
        )
        self._entries[entry.server_id] = _Held.of(entry)
        return entry, [PutServer(entry)]

    def unregister(self, server_id: str) -> list[Write]:
        """Remove the entry of ``server_id`` (idempotent)."""
        if self._entries.pop(server_id, None) is None:
            return []
        return [DeleteServer(server_id)]

    def live(self, now_ms: int) -> list[ServerEntry]:
        """Every live entry, oldest registration first."""
        return [held.entry for held in self._entries.values() if self._is_live(held.entry, now_ms)]

    def live_json(self, now_ms: int, *, excluding: str | None = None) -> str:
        """Every live entry but ``excluding``'s, as a compact JSON array (text)."""
        texts = [
            held.text
            for server_id, held in self._entries.items()
            if server_id != excluding and self._is_live(held.entry, now_ms)
        ]
        return "[" + ",".join(texts) + "]"

    def sweep(self, now_ms: int) -> list[Write]:
        """Delete every entry that is no longer live."""
        stale = [
            server_id
            for server_id, held in self._entries.items()
            if not self._is_live(held.entry, now_ms)
        ]
        for server_id in stale:
            del self._entries[server_id]
        return [DeleteServer(server_id) for server_id in stale]

    def statistics(self, now_ms: int) -> dict[str, int]:
        return {"totalServers": len(self._entries), "liveServers": len(self.live(now_ms))}

    def _is_live(self, entry: ServerEntry, now_ms: int) -> bool:
        return now_ms - entry.last_seen < self.ttl_ms


class ServerRegistry(DurableServiceBase):
    """The durable ServerRegistry service: the state, its sweep, and the signed list."""

    name = "servers"

    def __init__(
        self,
        state: ServerRegistryState,
        signing_key: SigningKey,
        *,
        wall_clock: WallClock | None = None,
    ) -> None:
        super().__init__(wall_clock=wall_clock)
        self.state = state
        self.signing_key = signing_key

    @classmethod
    def from_config(cls, config: Config) -> ServerRegistry:
        """The registry with the configured bootstrap signing key (an ephemeral one in
        development without it).

        Raises:
            ConfigError: no signing key outside development.
        """
        key = signing_key_from(
            config.bootstrap_signing_key,
            env=config.env,
            setting="BOOTSTRAP_SIGNING_KEY",
            purpose="bootstrap",
            log=log,
        )
        return cls(ServerRegistryState(), key)

    # -- the durable service protocol ------------------------------------------------------

    async def load(self, store: Store) -> None:
        entries = await store.load_servers()
        self.state.load(entries)
        self._loaded()
        log.info("loaded", extra=context(servers=len(entries)))

    def handle(self, request: Any, now: float) -> Any:
        now_ms = self._epoch_ms(now)
        if type(request) is ListServers:
            return self._signed_list(now_ms)
        if type(request) is ServerHeartbeat:
            entry = self._record(self.state.heartbeat(request, now_ms))
            if isinstance(entry, ProtocolError):
                return entry
            return HeartbeatAccepted(self.state.live_json(now_ms, excluding=entry.server_id))
        if type(request) is RegisterServer:
            registered = self._record(self.state.register(request, now_ms))
            if isinstance(registered, ProtocolError):
                log.warning("registry full", extra=context(server_id=request.server_id))
                return registered
            log.info(
                "server registered",
                extra=context(server_id=registered.server_id, region=registered.region),
            )
            return Registered(registered)
        if type(request) is UnregisterServer:
            removed = self.state.unregister(request.server_id)
            self._record((None, removed))
            if removed:
                log.info("server unregistered", extra=context(server_id=request.server_id))
            return Unregistered()
        if type(request) is GetServerStats:
            return self.state.statistics(now_ms)
        raise TypeError(f"unknown request {type(request).__name__}")

    def sweep(self, now_ms: int) -> list[Write]:
        return self.state.sweep(now_ms)

    # -- helpers -----------------------------------------------------------------------------

    def _signed_list(self, now_ms: int) -> SignedList:
        # Compact ASCII JSON, from the entries' texts encoded beforehand.
        servers = self.state.live_json(now_ms)
        body = f'{{"servers":{servers},"timestamp":{now_ms}}}'.encode("ascii")
        return SignedList(body, crypto.sign_b64(self.signing_key, body))
