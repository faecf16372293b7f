"""The durable service runtime (``_durable``): load before start, group commit, replies only
after the commit, failures answered and the state reloaded from the store."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from tests.services.fakes import captured_log
from zajel.protocol.servers import Counters, ServerEntry
from zajel.services._durable import (
    RELOAD_RETRY_S,
    CheckStore,
    StoreFailure,
    StoreOk,
    start_durable_service,
)
from zajel.services._mailbox import ServiceFailure
from zajel.storage import DeleteServer, MemoryStore, PutServer, Store, StoreError, Write


def entry(server_id: str) -> ServerEntry:
    return ServerEntry(server_id, "https://relay.example.com", "key", "eu", Counters(), 1, 1)


class Names:
    """A durable service holding a set of names, mirrored to the store as server entries.

    ``("add", name)`` and ``("remove", name)`` change it; ``"names"`` reads it; ``"boom"``
    raises after changing the state (a handler bug); a timer set by ``("timer", delay)`` removes
    every name when it fires.
    """

    name = "names"

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.loads = 0
        self.deadline = math.inf
        self._writes: list[Write] = []

    async def load(self, store: Store) -> None:
        self.names = {server.server_id for server in await store.load_servers()}
        self.loads += 1

    def handle(self, request: Any, now: float) -> Any:
        if request == "names":
            return sorted(self.names)
        if request == "boom":
            self.names.add("half-done")
            self._writes.append(PutServer(entry("half-done")))
            raise RuntimeError("handler exploded")
        verb, value = request
        if verb == "add":
            self.names.add(value)
            self._writes.append(PutServer(entry(value)))
        elif verb == "remove":
            self.names.discard(value)
            self._writes.append(DeleteServer(value))
        elif verb == "timer":
            self.deadline = now + value
        return ("ok", request)

    def next_deadline(self) -> float:
        return self.deadline

    def expire(self, now: float) -> None:
        self._writes += [DeleteServer(name) for name in sorted(self.names)]
        self.names.clear()
        self.deadline = math.inf

    def take_writes(self) -> list[Write]:
        writes, self._writes = self._writes, []
        return writes


class GatedStore(MemoryStore):
    """A MemoryStore whose commits wait for ``gate`` while it is set, recording each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.batches: list[list[Write]] = []
        self.committing = trio.Event()

    async def apply(self, writes: Sequence[Write]) -> None:
        self.committing.set()
        if self.gate is not None:
            await self.gate.wait()
        await super().apply(writes)
        self.batches.append(list(writes))


@pytest.fixture
def store() -> GatedStore:
    return GatedStore()


async def test_state_is_loaded_before_the_service_starts(store):
    await store.apply([PutServer(entry("a")), PutServer(entry("b"))])
    service = Names()
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, service, store)
        assert service.loads == 1
        assert await address.call("names") == ["a", "b"]
        nursery.cancel_scope.cancel()


async def test_a_store_that_cannot_be_read_stops_the_start(store):
    store.fail = True
    with pytest.raises(ExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await start_durable_service(nursery, Names(), store)
    assert caught.group_contains(StoreError)


async def test_reply_waits_for_the_commit(store):
    store.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        replies: list[Any] = []

        async def add() -> None:
            replies.append(await address.call(("add", "a")))

        nursery.start_soon(add)
        await store.committing.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert replies == []  # handled, but not yet on disk: no acknowledgement
        assert store.servers == {}
        store.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert replies == [("ok", ("add", "a"))]
        assert set(store.servers) == {"a"}
        nursery.cancel_scope.cancel()


async def test_requests_queued_during_a_commit_share_the_next_commit(store):
    store.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        nursery.start_soon(address.call, ("add", "first"))
        await store.committing.wait()
        for index in range(50):
            nursery.start_soon(address.call, ("add", f"n{index}"))
        nursery.start_soon(address.call, "names")  # a read in the batch waits for it too
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [len(batch) for batch in store.batches] == [1, 50]
        assert len(store.servers) == 51
        nursery.cancel_scope.cancel()


async def test_reads_alone_do_not_touch_the_store(store):
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        for _ in range(5):
            assert await address.call("names") == []
        assert store.commits == 0
        nursery.cancel_scope.cancel()


async def test_a_failed_commit_answers_store_failure_and_reloads_what_was_committed(store):
    async with trio.open_nursery() as nursery:
        service = Names()
        address = await start_durable_service(nursery, service, store)
        await address.call(("add", "kept"))
        store.fail = True
        with captured_log("zajel.names") as records:
            assert await address.call(("add", "lost")) == StoreFailure("names")
        assert "commit failed" in [record.getMessage() for record in records]
        # While the store is down nothing is answered from unconfirmed state.
        assert await address.call("names") == StoreFailure("names")
        store.fail = False
        assert await address.call("names") == ["kept"]
        assert await address.call(("add", "later")) == ("ok", ("add", "later"))
        assert set(store.servers) == {"kept", "later"}
        nursery.cancel_scope.cancel()


async def test_a_handler_that_raises_is_answered_and_its_half_done_change_is_undone(store):
    async with trio.open_nursery() as nursery:
        service = Names()
        address = await start_durable_service(nursery, service, store)
        await address.call(("add", "a"))
        with captured_log("zajel.names") as records:
            assert await address.call("boom") == ServiceFailure("names")
        assert any(record.getMessage() == "request failed" for record in records)
        assert await address.call("names") == ["a"]
        assert "half-done" not in store.servers
        assert service.loads == 2
        nursery.cancel_scope.cancel()


async def test_timers_fire_on_trios_clock_and_their_writes_are_committed(store, autojump_clock):
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        await address.call(("add", "a"))
        await address.call(("add", "b"))
        await address.call(("timer", 300.0))
        await trio.sleep(299.0)
        assert set(store.servers) == {"a", "b"}
        await trio.sleep(2.0)
        assert store.servers == {}
        assert await address.call("names") == []
        nursery.cancel_scope.cancel()


async def test_a_stale_service_retries_its_reload_without_spinning(store, autojump_clock):
    async with trio.open_nursery() as nursery:
        service = Names()
        address = await start_durable_service(nursery, service, store)
        await address.call(("timer", 1.0))  # a due timer must not make a stale loop spin
        store.fail = True
        assert await address.call(("add", "x")) == StoreFailure("names")
        loads = service.loads
        await trio.sleep(10 * RELOAD_RETRY_S + 0.5)
        assert service.loads == loads  # every attempt failed and none succeeded...
        store.fail = False
        await trio.sleep(RELOAD_RETRY_S + 0.1)
        assert service.loads == loads + 1  # ...until the store healed
        assert await address.call("names") == []
        nursery.cancel_scope.cancel()


async def test_check_store_pings_the_store(store):
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        assert await address.call(CheckStore()) == StoreOk()
        store.fail = True
        assert await address.call(CheckStore()) == StoreFailure("names")
        nursery.cancel_scope.cancel()


async def test_the_service_ends_when_its_inbox_closes_after_answering_what_was_queued(store):
    service = Names()
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, service, store)
        await address.cast(("add", "a"))
        await address._inbox.aclose()
    assert set(store.servers) == {"a"}


async def test_a_failed_commit_leaves_the_store_degraded_until_a_write_succeeds(store):
    """A full disk: reads work, commits fail. ``CheckStore`` must not answer from a read."""
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        await address.call(("add", "kept"))
        assert await address.call(CheckStore()) == StoreOk()
        store.fail_writes = True
        assert await address.call(("add", "lost")) == StoreFailure("names")
        assert await address.call("names") == ["kept"]  # reads still work...
        assert await address.call(CheckStore()) == StoreFailure("names")  # ...the store is not ok
        assert await address.call(CheckStore()) == StoreFailure("names")  # its probe fails too
        store.fail_writes = False
        # The next check's write probe succeeds: the store is ok again, with no request needed.
        assert await address.call(CheckStore()) == StoreOk()
        assert await address.call(CheckStore()) == StoreOk()
        assert store.probes == 1  # the check after it reads again: no probe while commits work
        nursery.cancel_scope.cancel()


async def test_a_later_commit_that_succeeds_clears_the_degraded_store(store):
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        store.fail_writes = True
        assert await address.call(("add", "lost")) == StoreFailure("names")
        store.fail_writes = False
        assert await address.call(("add", "later")) == ("ok", ("add", "later"))
        assert await address.call(CheckStore()) == StoreOk()
        assert store.probes == 0
        nursery.cancel_scope.cancel()


async def test_a_failed_timer_commit_degrades_the_store_too(store, autojump_clock):
    async with trio.open_nursery() as nursery:
        address = await start_durable_service(nursery, Names(), store)
        await address.call(("add", "a"))
        await address.call(("timer", 10.0))
        store.fail_writes = True
        await trio.sleep(11.0)  # the timer's deletion cannot be committed
        assert await address.call(CheckStore()) == StoreFailure("names")
        nursery.cancel_scope.cancel()
