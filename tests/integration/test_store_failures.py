"""A store that fails under a running server (docs/operations.md, "Storage" and
"Health checks and metrics"): writes are refused with 503 and never half-done, ``/health`` names
the store, and the server recovers by itself once the store answers again. The real app runs on a
``MemoryStore`` whose failures the test switches on and off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import zajel.server
from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration.test_attestation_http import attestation_config, register
from tests.integration.test_http import assert_json_error
from zajel.storage import MemoryStore


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    store = MemoryStore()

    @asynccontextmanager
    async def open_store(data_dir: Path) -> AsyncIterator[MemoryStore]:
        yield store

    monkeypatch.setattr(zajel.server, "open_store", open_store)
    return store


def server_body(server_id: str) -> dict[str, str]:
    return {"serverId": server_id, "endpoint": "wss://relay.example.com", "publicKey": "k"}


async def test_writes_are_refused_while_the_store_fails_and_nothing_half_done_remains(
    nursery, store
):
    running = await start_server(nursery, make_config())
    url = running.url
    with trio.fail_after(10):
        assert (await _http.post(url, "/servers", server_body("kept"))).status == 200

        store.fail = True
        refused = await _http.post(url, "/servers", server_body("lost"))
        assert_json_error(refused, 503, "Storage unavailable, try again")
        assert_json_error(await _http.get(url, "/servers"), 503, "Storage unavailable, try again")
        health = await _http.get(url, "/health")
        assert health.status == 503
        assert health.json()["status"] == "degraded"
        assert "store" in health.json()["failing"]

        store.fail = False
        assert (await _http.get(url, "/health")).json()["status"] == "ok"
        listed = (await _http.get(url, "/servers")).json()["servers"]
        assert [server["serverId"] for server in listed] == ["kept"]
        assert set(store.servers) == {"kept"}
        assert (await _http.post(url, "/servers", server_body("later"))).status == 200
        assert set(store.servers) == {"kept", "later"}


async def test_a_full_disk_makes_health_degraded_until_writes_work_again(nursery, store):
    """Reads work, commits fail: writes get 503, reads are answered, and ``/health`` names the
    store (a read alone would say ok) until a write probe succeeds."""
    running = await start_server(nursery, make_config())
    url = running.url
    with trio.fail_after(10):
        assert (await _http.post(url, "/servers", server_body("kept"))).status == 200
        assert (await _http.get(url, "/health")).status == 200

        store.fail_writes = True
        refused = await _http.post(url, "/servers", server_body("lost"))
        assert_json_error(refused, 503, "Storage unavailable, try again")
        listed = await _http.get(url, "/servers")
        assert listed.status == 200
        assert [server["serverId"] for server in listed.json()["servers"]] == ["kept"]
        for _ in range(2):  # it stays degraded: the probe fails as well
            health = await _http.get(url, "/health")
            assert health.status == 503
            assert health.json()["status"] == "degraded"
            assert health.json()["failing"] == ["store"]

        store.fail_writes = False
        health = await _http.get(url, "/health")
        assert health.status == 200
        assert health.json()["status"] == "ok"
        assert (await _http.post(url, "/servers", server_body("later"))).status == 200
        assert set(store.servers) == {"kept", "later"}


async def test_a_failed_attestation_commit_makes_health_degraded_too(nursery, store):
    running = await start_server(nursery, attestation_config())
    url = running.url
    with trio.fail_after(10):
        store.fail_writes = True
        refused = await register(url, "device-1")
        assert_json_error(refused, 503, "Storage unavailable, try again")
        health = await _http.get(url, "/health")
        assert health.status == 503
        assert health.json()["failing"] == ["store"]
        store.fail_writes = False
        assert (await _http.get(url, "/health")).status == 200
        assert (await register(url, "device-1")).status == 200
