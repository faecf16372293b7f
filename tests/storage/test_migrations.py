"""The versioned schema (docs/operations.md, "Storage"): numbered migrations, applied in order."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from zajel.storage import SqliteStore, StoreError
from zajel.storage.migrations import MIGRATIONS, Migration
from zajel.storage.sqlite import migrate

N = MIGRATIONS[-1].version
ATTESTATION_TABLES = {
    "attestation_devices",
    "attestation_references",
    "attestation_nonces",
    "attestation_policy",
}
EXTRA_COLUMN = Migration(
    N + 1, "test: an extra column", ("ALTER TABLE servers ADD COLUMN note TEXT",)
)


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    with connect(tmp_path / "x.db") as connection:
        yield connection


def tables(db: sqlite3.Connection) -> set[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def user_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


SERVER_ROW = ("vps-1", "wss://relay.example.com", "key", "eu", 1, 2, 3, 4, 1000, 2000)


def insert_server(db: sqlite3.Connection) -> None:
    db.execute(f"INSERT INTO servers VALUES ({', '.join('?' * len(SERVER_ROW))})", SERVER_ROW)


# -- the list ------------------------------------------------------------------------------------


def test_migrations_are_numbered_one_to_n_with_unique_names():
    assert [migration.version for migration in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    names = [migration.name for migration in MIGRATIONS]
    assert len(set(names)) == len(names)
    assert all(name for name in names)
    assert N >= 4


def test_the_first_four_mirror_the_original_durable_objects():
    v1, v2, v3, v4 = MIGRATIONS[:4]
    assert v1.statements == ()
    assert v2.statements == ()
    assert any("CREATE TABLE servers" in statement for statement in v3.statements)
    assert all("attestation_" in statement for statement in v4.statements)


def test_v1_and_v2_create_nothing_v3_servers_and_v4_the_attestation_tables(db):
    assert migrate(db, MIGRATIONS[:2]) == 2
    assert tables(db) == set()
    assert user_version(db) == 2
    assert migrate(db, MIGRATIONS[:3]) == 3
    assert tables(db) == {"servers"}
    assert columns(db, "servers") == [
        "server_id",
        "endpoint",
        "public_key",
        "region",
        "connections",
        "relay_connections",
        "signaling_connections",
        "active_codes",
        "registered_at",
        "last_seen",
    ]
    assert migrate(db, MIGRATIONS[:4]) == 4
    assert tables(db) == {"servers", *ATTESTATION_TABLES}


# -- migrate -------------------------------------------------------------------------------------


def test_a_fresh_database_gets_every_table(db):
    assert user_version(db) == 0
    assert migrate(db, MIGRATIONS) == N
    assert user_version(db) == N
    assert tables(db) >= {"servers", *ATTESTATION_TABLES}
    assert not db.in_transaction


def test_migrate_defaults_to_the_shipped_migrations(db):
    assert migrate(db) == N
    assert migrate(db) == N


def test_an_upgrade_keeps_the_data(db):
    assert migrate(db, MIGRATIONS[:3]) == 3
    insert_server(db)
    assert migrate(db, [*MIGRATIONS, EXTRA_COLUMN]) == N + 1
    assert user_version(db) == N + 1
    assert db.execute("SELECT * FROM servers").fetchall() == [(*SERVER_ROW, None)]
    assert columns(db, "servers")[-1] == "note"
    # Running it again is a no-op.
    assert migrate(db, [*MIGRATIONS, EXTRA_COLUMN]) == N + 1
    assert db.execute("SELECT * FROM servers").fetchall() == [(*SERVER_ROW, None)]


def test_an_upgrade_survives_closing_the_connection(tmp_path):
    path = tmp_path / "x.db"
    with connect(path) as first:
        migrate(first, MIGRATIONS[:3])
        insert_server(first)
    with connect(path) as second:
        assert user_version(second) == 3
        assert migrate(second, MIGRATIONS) == N
        assert second.execute("SELECT * FROM servers").fetchall() == [SERVER_ROW]


def test_a_database_newer_than_the_migrations_is_refused(db):
    db.execute(f"PRAGMA user_version = {N + 5}")
    with pytest.raises(StoreError) as info:
        migrate(db, MIGRATIONS)
    assert f"v{N + 5}" in str(info.value)
    assert f"v{N}" in str(info.value)
    assert user_version(db) == N + 5
    assert tables(db) == set()


async def test_sqlite_store_refuses_a_database_newer_than_it_knows(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with connect(data / "zajel.db") as setup:
        migrate(setup, MIGRATIONS)
        setup.execute(f"PRAGMA user_version = {N + 1}")
    with pytest.raises(StoreError) as info:
        await SqliteStore.open(data)
    assert f"v{N + 1}" in str(info.value)
    assert f"v{N}" in str(info.value)
    # It knows that version once it has the migration, and opening released the lock.
    store = await SqliteStore.open(data, migrations=[*MIGRATIONS, EXTRA_COLUMN])
    await store.aclose()


def test_a_failing_migration_is_rolled_back(db):
    assert migrate(db, MIGRATIONS) == N
    bad = Migration(N + 1, "bad", ("CREATE TABLE partial (x)", "CREATE TABLE servers (x)"))
    with pytest.raises(sqlite3.Error):
        migrate(db, [*MIGRATIONS, bad])
    assert user_version(db) == N
    assert "partial" not in tables(db)
    assert not db.in_transaction
    # The database is still usable and still migrates.
    assert migrate(db, [*MIGRATIONS, EXTRA_COLUMN]) == N + 1


def test_migrations_before_a_failing_one_stay_committed(db):
    assert migrate(db, MIGRATIONS[:2]) == 2
    bad = Migration(N + 1, "bad", ("CREATE TABLE servers (x)",))
    with pytest.raises(sqlite3.Error):
        migrate(db, [*MIGRATIONS, bad])
    assert user_version(db) == N
    assert tables(db) >= {"servers", *ATTESTATION_TABLES}
