"""The store: durable state behind a small typed interface (``interface.Store``).

``open_store`` opens the embedded SQLite store in ``DATA_DIR``; ``MemoryStore`` stands in for it
in unit tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

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
    Store,
    StoreError,
    Write,
)
from zajel.storage.memory import MemoryStore
from zajel.storage.sqlite import SqliteStore

__all__ = [
    "AttestationRecords",
    "DeleteChallenge",
    "DeleteDevice",
    "DeleteServer",
    "MemoryStore",
    "PutChallenge",
    "PutDevice",
    "PutPolicy",
    "PutReference",
    "PutServer",
    "SqliteStore",
    "Store",
    "StoreError",
    "Write",
    "open_store",
]


@asynccontextmanager
async def open_store(data_dir: Path) -> AsyncIterator[SqliteStore]:
    """The SQLite store in ``data_dir``, flushed and closed when the block exits.

    Raises:
        StoreError: the store cannot be opened (see ``SqliteStore.open``).
    """
    store = await SqliteStore.open(data_dir)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
