"""The store fixture the contract tests share: one test, every implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import coredis
import pytest

from tests._redis import RedisServer
from zajel.storage import MemoryStore, RedisStore, SqliteStore, Store


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each kind, closed at teardown (a second close if the test closed it).
    The Redis one is on an empty redis-server, its client open for the whole test."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        async with coredis.Redis.from_url(server.url) as client:
            redis_store = await RedisStore.open(client)
            yield redis_store
            await redis_store.aclose()
        return
    opened: Store
    if request.param == "memory":
        opened = MemoryStore()
    else:
        opened = await SqliteStore.open(tmp_path / "data")
    yield opened
    await opened.aclose()
