"""The store contract, over ``MemoryStore``, ``SqliteStore`` and ``RedisStore``
(docs/operations.md, "Storage")."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path

import attrs
import pytest

from tests.services.fakes import captured_log
from zajel.protocol.servers import COUNTER_MAX, Counters, ServerEntry
from zajel.storage import (
    DeleteServer,
    MemoryStore,
    PutServer,
    SqliteStore,
    StoreError,
    open_store,
)
from zajel.storage.migrations import MIGRATIONS
from zajel.storage.sqlite import LOCK_NAME

NOW_MS = 1_700_000_000_000


def entry(server_id: str, *, public_key: str = "key", connections: int = 1) -> ServerEntry:
    return ServerEntry(
        server_id=server_id,
        endpoint=f"wss://{server_id}.example.com/ws",
        public_key=public_key,
        region="eu-west",
        counters=Counters(connections, 2, 3, 4),
        registered_at=NOW_MS,
        last_seen=NOW_MS + 1000,
    )


def by_id(entries: list[ServerEntry]) -> list[ServerEntry]:
    return sorted(entries, key=lambda item: item.server_id)


def lock_is_free(data_dir: Path) -> bool:
    """True when no one holds the store's directory lock (taken and released here)."""
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


# -- the contract, every implementation --------------------------------------------------------


async def test_a_new_store_is_empty(store):
    assert await store.load_servers() == []


async def test_put_servers_are_loaded(store):
    one, two = entry("vps-1"), entry("vps-2")
    await store.apply([PutServer(one), PutServer(two)])
    assert by_id(await store.load_servers()) == [one, two]
    assert set(await store.load_servers()) == {one, two}


async def test_a_put_with_the_same_id_replaces(store):
    await store.apply([PutServer(entry("vps-1")), PutServer(entry("vps-2"))])
    newer = entry("vps-1", public_key="new key", connections=99)
    await store.apply([PutServer(newer)])
    assert by_id(await store.load_servers()) == [newer, entry("vps-2")]


async def test_delete_removes_and_an_unknown_id_is_fine(store):
    await store.apply([PutServer(entry("vps-1")), PutServer(entry("vps-2"))])
    await store.apply([DeleteServer("vps-1")])
    assert await store.load_servers() == [entry("vps-2")]
    await store.apply([DeleteServer("never-registered"), DeleteServer("vps-1")])
    assert await store.load_servers() == [entry("vps-2")]


async def test_writes_of_one_apply_are_applied_in_order(store):
    await store.apply([PutServer(entry("gone")), DeleteServer("gone")])
    assert await store.load_servers() == []
    await store.apply([DeleteServer("back"), PutServer(entry("back"))])
    assert await store.load_servers() == [entry("back")]
    last = entry("back", connections=7)
    await store.apply([PutServer(entry("back", connections=5)), PutServer(last)])
    assert await store.load_servers() == [last]


async def test_apply_of_nothing_changes_nothing(store):
    await store.apply([PutServer(entry("vps-1"))])
    await store.apply([])
    assert await store.load_servers() == [entry("vps-1")]


async def test_entries_come_back_exactly(store):
    entries = [
        ServerEntry(
            "a:b+c/d=e.f_g-h",
            "https://[2001:4860::8888]:8443/p?q=1",
            "k" * 1024,
            "unknown",
            Counters(0, COUNTER_MAX, 2**63 - 1, 0),
            0,
            2**63 - 1,
        ),
        ServerEntry("ünï", "wss://例え.jp", "🔑 ключ", "r" * 64, Counters(), NOW_MS, NOW_MS),
        ServerEntry("empty-strings", "", "", "", Counters(), -1, -(2**63)),
    ]
    await store.apply([PutServer(item) for item in entries])
    loaded = await store.load_servers()
    assert by_id(loaded) == by_id(entries)
    assert all(type(value) is int for item in loaded for value in list(item.to_json().values())[4:])


async def test_ping_answers(store):
    await store.ping()


async def test_a_write_probe_commits_and_changes_no_record(store):
    await store.apply([PutServer(entry("vps-1"))])
    await store.probe_write()
    await store.probe_write()
    assert await store.load_servers() == [entry("vps-1")]


async def test_every_call_after_close_raises_and_a_second_close_is_harmless(store):
    await store.apply([PutServer(entry("vps-1"))])
    await store.aclose()
    with pytest.raises(StoreError):
        await store.load_servers()
    with pytest.raises(StoreError):
        await store.apply([PutServer(entry("vps-2"))])
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.probe_write()
    await store.aclose()
    await store.aclose()


async def test_apply_of_nothing_after_close_raises(store):
    # interface.py: "aclose: Flush and close; later calls raise StoreError".
    await store.aclose()
    with pytest.raises(StoreError):
        await store.apply([])


async def test_a_lone_surrogate_is_stored_or_refused_with_a_store_error(store):
    # JSON text may hold "\ud800"; decode_register keeps it in publicKey (any string of at most
    # 1024 characters). The store must keep it or refuse it with StoreError, committing nothing:
    # "Every method may raise StoreError" (interface.py), and nothing else.
    odd = entry("vps-odd", public_key="\ud800")
    try:
        await store.apply([PutServer(entry("vps-1")), PutServer(odd)])
    except StoreError:
        assert await store.load_servers() == []
    else:
        assert by_id(await store.load_servers()) == [entry("vps-1"), odd]


# -- SQLite ------------------------------------------------------------------------------------


async def test_sqlite_entries_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    first = await SqliteStore.open(data)
    try:
        await first.apply([PutServer(entry("vps-1")), PutServer(entry("vps-2"))])
        await first.apply([DeleteServer("vps-2"), PutServer(entry("vps-3"))])
    finally:
        await first.aclose()
    second = await SqliteStore.open(data)
    try:
        assert by_id(await second.load_servers()) == [entry("vps-1"), entry("vps-3")]
    finally:
        await second.aclose()


async def test_sqlite_apply_is_all_or_nothing(tmp_path):
    store = await SqliteStore.open(tmp_path / "data")
    try:
        await store.apply([PutServer(entry("before"))])
        too_big = attrs.evolve(entry("too-big"), counters=Counters(connections=2**64))
        with pytest.raises(StoreError):
            await store.apply([PutServer(entry("ok")), DeleteServer("before"), PutServer(too_big)])
        assert await store.load_servers() == [entry("before")]
        # The failed transaction left the store usable.
        await store.apply([PutServer(entry("ok"))])
        assert by_id(await store.load_servers()) == [entry("before"), entry("ok")]
    finally:
        await store.aclose()


async def test_sqlite_refuses_a_second_open_of_the_same_directory(tmp_path):
    data = tmp_path / "data"
    first = await SqliteStore.open(data)
    try:
        with pytest.raises(StoreError, match="in use"):
            await SqliteStore.open(data)
        await first.apply([PutServer(entry("vps-1"))])  # the first is unharmed
    finally:
        await first.aclose()
    assert lock_is_free(data)
    second = await SqliteStore.open(data)
    try:
        assert await second.load_servers() == [entry("vps-1")]
    finally:
        await second.aclose()


async def test_sqlite_refuses_a_file_that_is_not_a_database_and_releases_the_lock(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    garbage = bytes(range(256)) * 16
    assert len(garbage) == 4096
    (data / "zajel.db").write_bytes(garbage)
    with pytest.raises(StoreError, match="not a usable database"):
        await SqliteStore.open(data)
    assert lock_is_free(data)
    assert (data / "zajel.db").read_bytes() == garbage  # never overwritten
    (data / "zajel.db").unlink()
    store = await SqliteStore.open(data)
    try:
        await store.ping()
        assert await store.load_servers() == []
    finally:
        await store.aclose()


async def test_sqlite_uses_wal_and_the_latest_schema(tmp_path):
    data = tmp_path / "data"
    store = await SqliteStore.open(data)
    try:
        await store.apply([PutServer(entry("vps-1"))])
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(data / "zajel.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (MIGRATIONS[-1].version,)
        assert db.execute("SELECT server_id FROM servers").fetchall() == [("vps-1",)]


async def test_sqlite_creates_a_missing_directory(tmp_path):
    data = tmp_path / "a" / "b" / "c"
    store = await SqliteStore.open(data)
    try:
        await store.ping()
        assert (data / "zajel.db").is_file()
        assert store.path == data / "zajel.db"
    finally:
        await store.aclose()


async def test_sqlite_refuses_a_data_dir_that_is_a_file(tmp_path):
    data = tmp_path / "data"
    data.write_text("not a directory")
    with pytest.raises(StoreError):
        await SqliteStore.open(data)


async def test_open_store_closes_the_store_when_the_block_exits(tmp_path):
    data = tmp_path / "data"
    async with open_store(data) as store:
        await store.apply([PutServer(entry("vps-1"))])
        assert not lock_is_free(data)
    assert lock_is_free(data)
    with pytest.raises(StoreError):
        await store.ping()


async def test_sqlite_write_probe_is_a_durable_write_that_keeps_the_schema_version(tmp_path):
    """The probe rewrites the schema version with its own value: one page into the WAL, so it
    fails where a commit would (a full disk), unlike a read or a rolled-back write."""
    store = await SqliteStore.open(tmp_path / "data")
    try:
        wal = store.path.with_name(store.path.name + "-wal")
        before = wal.stat().st_size
        await store.probe_write()
        assert wal.stat().st_size > before
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "zajel.db")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1].version


async def test_sqlite_warns_once_about_an_empty_database_file_and_starts(tmp_path):
    """A 0-byte zajel.db is most likely a lost or truncated database: say so, then go on."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "zajel.db").touch()
    with captured_log("zajel.store") as records:
        store = await SqliteStore.open(data)
    try:
        warnings = [record for record in records if record.levelno >= logging.WARNING]
        assert len(warnings) == 1
        assert "empty" in warnings[0].getMessage()
        assert warnings[0].context == {"path": str(data / "zajel.db")}  # type: ignore[attr-defined]
        await store.apply([PutServer(entry("vps-1"))])
        assert await store.load_servers() == [entry("vps-1")]
    finally:
        await store.aclose()


@pytest.mark.parametrize("existing", [False, True])
async def test_sqlite_opens_a_new_or_a_used_database_without_a_warning(tmp_path, existing):
    data = tmp_path / "data"
    if existing:
        await (await SqliteStore.open(data)).aclose()
    with captured_log("zajel.store") as records:
        store = await SqliteStore.open(data)
    await store.aclose()
    assert [record for record in records if record.levelno >= logging.WARNING] == []


# -- MemoryStore -------------------------------------------------------------------------------


async def test_memory_store_fail_flag_makes_every_call_raise():
    store = MemoryStore()
    await store.apply([PutServer(entry("vps-1"))])
    store.fail = True
    with pytest.raises(StoreError):
        await store.load_servers()
    with pytest.raises(StoreError):
        await store.apply([PutServer(entry("vps-2"))])
    with pytest.raises(StoreError):
        await store.apply([])
    with pytest.raises(StoreError):
        await store.ping()
    store.fail = False
    assert await store.load_servers() == [entry("vps-1")]  # the failed apply wrote nothing
    await store.ping()
    await store.aclose()


async def test_memory_store_fail_writes_flag_fails_commits_and_probes_only():
    """A full disk: reads and pings work, commits and write probes raise."""
    store = MemoryStore()
    await store.apply([PutServer(entry("vps-1"))])
    store.fail_writes = True
    with pytest.raises(StoreError):
        await store.apply([PutServer(entry("vps-2"))])
    with pytest.raises(StoreError):
        await store.probe_write()
    assert await store.load_servers() == [entry("vps-1")]
    await store.load_attestation()
    await store.ping()
    store.fail_writes = False
    await store.probe_write()
    assert store.probes == 1
    assert store.commits == 1
