"""``SqliteStore``: the embedded store, one SQLite file in ``DATA_DIR``.

- Every call runs on a worker thread (``trio.to_thread.run_sync``), one at a time, so the trio
  thread never blocks on the disk. A call that is cancelled still finishes its transaction:
  trio waits for the thread.
- WAL journal with ``synchronous=FULL``: a transaction is on disk when ``COMMIT`` returns, so
  killing the process, or the machine, loses nothing that ``apply`` acknowledged.
- One process per data directory (``docs/operations.md``, "One process per node"): an
  exclusive lock on ``zajel.lock`` beside the database refuses a second server at start instead
  of letting two of them split the state.
- An empty (0-byte) ``zajel.db`` at start is used as a new database, with one warning: it most
  likely means a lost or truncated database.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, assert_never

import trio

from zajel.logs import context
from zajel.protocol.attestation import Challenge, Device, Policy, Reference
from zajel.protocol.servers import Counters, ServerEntry
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
from zajel.storage.migrations import MIGRATIONS, Migration

log = logging.getLogger("zajel.store")

DATABASE_NAME: Final = "zajel.db"
LOCK_NAME: Final = "zajel.lock"
BUSY_TIMEOUT_S: Final = 5.0

T = TypeVar("T")

_SERVER_COLUMNS: Final = (
    "server_id, endpoint, public_key, region, connections, relay_connections, "
    "signaling_connections, active_codes, registered_at, last_seen"
)
_PUT_SERVER: Final = (
    f"INSERT OR REPLACE INTO servers ({_SERVER_COLUMNS}) VALUES ({', '.join('?' * 10)})"
)
_DELETE_SERVER: Final = "DELETE FROM servers WHERE server_id = ?"
_SELECT_SERVERS: Final = f"SELECT {_SERVER_COLUMNS} FROM servers"
# Attestation rows hold their record as JSON beside the columns lookups and sweeps use (v4).
_PUT_DEVICE: Final = (
    "INSERT OR REPLACE INTO attestation_devices (device_id, last_seen, record) VALUES (?, ?, ?)"
)
_DELETE_DEVICE: Final = "DELETE FROM attestation_devices WHERE device_id = ?"
_PUT_REFERENCE: Final = (
    "INSERT OR REPLACE INTO attestation_references (version, platform, record) VALUES (?, ?, ?)"
)
_PUT_CHALLENGE: Final = (
    "INSERT OR REPLACE INTO attestation_nonces (nonce, device_id, created_at, record) "
    "VALUES (?, ?, ?, ?)"
)
_DELETE_CHALLENGE: Final = "DELETE FROM attestation_nonces WHERE nonce = ?"
_PUT_POLICY: Final = "INSERT OR REPLACE INTO attestation_policy (id, record) VALUES (1, ?)"


class SqliteStore:
    """A ``Store`` on one SQLite database. Make it with ``open`` (or ``open_store``)."""

    def __init__(self, db: sqlite3.Connection, lock: int, path: Path) -> None:
        self._db: sqlite3.Connection | None = db
        self._lock = lock
        self.path = path
        self._limiter = trio.CapacityLimiter(1)
        # Where the time of each successful commit goes (``zajel.metrics``), if anywhere.
        self.observe_commit: Callable[[float], None] | None = None

    @classmethod
    async def open(
        cls, data_dir: Path, *, migrations: Sequence[Migration] = MIGRATIONS
    ) -> SqliteStore:
        """Open (creating if needed) the database in ``data_dir`` and bring its schema up to
        date.

        Raises:
            StoreError: the directory is locked by another process, the file is not a database,
                the schema is newer than ``migrations``, or SQLite fails.
        """
        return await trio.to_thread.run_sync(_open_sync, Path(data_dir), tuple(migrations))

    async def load_servers(self) -> list[ServerEntry]:
        rows = await self._run(lambda db: db.execute(_SELECT_SERVERS).fetchall())
        return [_server_from_row(row) for row in rows]

    async def load_attestation(self) -> AttestationRecords:
        return await self._run(_load_attestation)

    async def apply(self, writes: Sequence[Write]) -> None:
        started = time.perf_counter()
        await self._run(_transaction, list(writes))
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - started)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def probe_write(self) -> None:
        await self._run(_probe_write)

    async def aclose(self) -> None:
        async with self._limiter:
            db, self._db = self._db, None
            if db is None:
                return
            await trio.to_thread.run_sync(_close_sync, db, self._lock)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        async with self._limiter:
            db = self._db
            if db is None:
                raise StoreError("store is closed")
            try:
                return await trio.to_thread.run_sync(function, db, *args)
            # Values SQLite cannot take are refused like any failed write: an int past 64 bits
            # (OverflowError), text that is not Unicode, such as a lone surrogate (UnicodeError),
            # a record that is not what the schema holds (ValueError, KeyError, TypeError).
            except (sqlite3.Error, OverflowError, ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"SQLite: {exc}") from exc


def _transaction(db: sqlite3.Connection, writes: list[Write]) -> None:
    if not writes:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for write in writes:
            sql, parameters = _statement(write)
            db.execute(sql, parameters)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _probe_write(db: sqlite3.Connection) -> None:
    """Rewrite the schema version with its own value: one page appended to the WAL and synced,
    so the probe fails where a commit would. (A write rolled back, or a read, would not reach
    the disk and so would not notice that it is full.)"""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute(f"PRAGMA user_version = {version}")  # PRAGMA takes no parameters
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statement(write: Write) -> tuple[str, tuple[Any, ...]]:
    if isinstance(write, PutServer):
        entry = write.entry
        counters = entry.counters
        return _PUT_SERVER, (
            entry.server_id,
            entry.endpoint,
            entry.public_key,
            entry.region,
            counters.connections,
            counters.relay_connections,
            counters.signaling_connections,
            counters.active_codes,
            entry.registered_at,
            entry.last_seen,
        )
    if isinstance(write, DeleteServer):
        return _DELETE_SERVER, (write.server_id,)
    if isinstance(write, PutDevice):
        device = write.device
        return _PUT_DEVICE, (device.device_id, device.last_seen, _json(device.to_record()))
    if isinstance(write, DeleteDevice):
        return _DELETE_DEVICE, (write.device_id,)
    if isinstance(write, PutReference):
        reference = write.reference
        record = _json(reference.to_json())
        return _PUT_REFERENCE, (reference.version, reference.platform, record)
    if isinstance(write, PutChallenge):
        challenge = write.challenge
        record = _json(challenge.to_record())
        return _PUT_CHALLENGE, (challenge.nonce, challenge.device_id, challenge.created_at, record)
    if isinstance(write, DeleteChallenge):
        return _DELETE_CHALLENGE, (write.nonce,)
    if isinstance(write, PutPolicy):
        return _PUT_POLICY, (_json(write.policy.to_json()),)
    assert_never(write)


def _json(record: Any) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def _load_attestation(db: sqlite3.Connection) -> AttestationRecords:
    def records(sql: str) -> list[Any]:
        return [json.loads(row[0]) for row in db.execute(sql)]

    policies = records("SELECT record FROM attestation_policy WHERE id = 1")
    return AttestationRecords(
        devices=[Device.from_record(r) for r in records("SELECT record FROM attestation_devices")],
        references=[
            Reference.from_json(r) for r in records("SELECT record FROM attestation_references")
        ],
        challenges=[
            Challenge.from_record(r) for r in records("SELECT record FROM attestation_nonces")
        ],
        policy=Policy.from_json(policies[0]) if policies else None,
    )


def _server_from_row(row: tuple[Any, ...]) -> ServerEntry:
    server_id, endpoint, public_key, region, *counts, registered_at, last_seen = row
    return ServerEntry(
        server_id, endpoint, public_key, region, Counters(*counts), registered_at, last_seen
    )


def _open_sync(data_dir: Path, migrations: tuple[Migration, ...]) -> SqliteStore:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {data_dir}: {exc.strerror}") from exc
    lock = _lock_directory(data_dir)
    path = data_dir / DATABASE_NAME
    _warn_if_empty(path)
    try:
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )
    except sqlite3.Error as exc:
        os.close(lock)
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a usable database: {exc}") from exc
        if mode != "wal":
            raise StoreError(f"{path}: the WAL journal is not available (got {mode})")
        try:
            migrate(db, migrations)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: schema migration failed: {exc}") from exc
    except BaseException:
        _close_sync(db, lock)
        raise
    return SqliteStore(db, lock, path)


def _warn_if_empty(path: Path) -> None:
    """An empty database file is not one SQLite ever leaves behind: most likely the database was
    lost or truncated (a failed copy or restore, a full disk). The server starts all the same,
    with an empty store, but says so once."""
    try:
        empty = path.stat().st_size == 0
    except OSError:  # not there yet (a first start), or unreadable: connect() reports it
        return
    if empty:
        log.warning(
            "the database file is empty: starting with an empty store (lost or truncated?)",
            extra=context(path=str(path)),
        )


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every migration newer than the database's version, each in its own transaction.

    Returns the version the database is at afterwards.

    Raises:
        StoreError: the database is at a version newer than the last of ``migrations``.
    """
    current: int = db.execute("PRAGMA user_version").fetchone()[0]
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise StoreError(
            f"the database is at schema v{current}, newer than this server knows (v{latest}); "
            "run a newer zajel"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.statements:
                db.execute(statement)
            # PRAGMA takes no parameters; the version is an int from our own table.
            db.execute(f"PRAGMA user_version = {int(migration.version)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info(
            "store migrated", extra=context(version=migration.version, migration=migration.name)
        )
        current = migration.version
    return current


def _lock_directory(data_dir: Path) -> int:
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"{data_dir} is in use by another zajel process (one process per data directory)"
        ) from None
    return fd


def _close_sync(db: sqlite3.Connection, lock: int) -> None:
    try:
        with contextlib.suppress(sqlite3.Error):
            # Fold the WAL back into the database so the directory holds one tidy file.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
    finally:
        os.close(lock)
