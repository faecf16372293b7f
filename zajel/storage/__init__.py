"""The store: durable state behind a small typed interface (``interface.Store``).

``open_store`` opens the embedded SQLite store in ``DATA_DIR``; ``RedisStore`` is the store of
cluster mode, in the Redis the nodes share; ``MemoryStore`` stands in for them in unit tests.
``RedisStore`` and ``FencedStoreError`` are imported on first use: a single node never loads the
Redis client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from zajel.storage.redis import FencedStoreError, RedisStore

__all__ = [
    "AttestationRecords",
    "DeleteChallenge",
    "DeleteDevice",
    "DeleteServer",
    "FencedStoreError",
    "MemoryStore",
    "PutChallenge",
    "PutDevice",
    "PutPolicy",
    "PutReference",
    "PutServer",
    "RedisStore",
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


def __getattr__(name: str) -> Any:
    """``RedisStore`` and ``FencedStoreError``, from ``zajel.storage.redis`` on first use."""
    if name in ("RedisStore", "FencedStoreError"):
        from zajel.storage import redis

        return getattr(redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
