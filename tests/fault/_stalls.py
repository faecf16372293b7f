"""Services that stop keeping up, for the load-shedding tests: a service task stuck on one
message, and a store whose commits hang (a stalled disk)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import zajel.server
from zajel.services import _runtime
from zajel.services._mailbox import Envelope, LocalAddress, Service, run_service
from zajel.storage import MemoryStore, Write


class PausableInbox:
    """A service's inbox whose service can be stalled: while paused, the service takes one
    more envelope and then sits on it, as a handler stuck on one message would; everything
    after it stays in the bounded inbox."""

    def __init__(self, inner: trio.MemoryReceiveChannel[Envelope]) -> None:
        self.inner = inner
        self.running = trio.Event()
        self.running.set()

    def pause(self) -> None:
        self.running = trio.Event()

    def resume(self) -> None:
        self.running.set()

    async def receive(self) -> Envelope:
        await self.running.wait()
        envelope = await self.inner.receive()
        await self.running.wait()
        return envelope

    def receive_nowait(self) -> Envelope:
        if not self.running.is_set():
            raise trio.WouldBlock
        return self.inner.receive_nowait()

    async def __aenter__(self) -> PausableInbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.aclose()


class Stall:
    """The switch of one service's ``PausableInbox`` (there once the server has started)."""

    def __init__(self) -> None:
        self.inbox: PausableInbox | None = None

    def pause(self) -> None:
        assert self.inbox is not None, "the server has not started"
        self.inbox.pause()

    def resume(self) -> None:
        assert self.inbox is not None, "the server has not started"
        self.inbox.resume()


def stall_service(monkeypatch: pytest.MonkeyPatch, name: str) -> Stall:
    """Start the service ``name`` of the next in-process server on a ``PausableInbox``."""
    stall = Stall()

    def start_service(
        nursery: trio.Nursery, service: Service, *, inbox_size: int = 1024
    ) -> LocalAddress:
        send, receive = trio.open_memory_channel[Envelope](inbox_size)
        inbox: Any = receive
        if service.name == name:
            inbox = stall.inbox = PausableInbox(receive)
        nursery.start_soon(run_service, service, inbox, name=f"service:{service.name}")
        return LocalAddress(service.name, send)

    monkeypatch.setattr(_runtime, "start_service", start_service)
    return stall


class StallingStore(MemoryStore):
    """A store whose commits hang while ``stalled`` (a disk that stops answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = trio.Event()
        self.flowing.set()
        self.stuck = trio.Event()  # set once a commit is hanging

    def stall(self) -> None:
        self.flowing = trio.Event()
        self.stuck = trio.Event()

    def release(self) -> None:
        self.flowing.set()

    async def apply(self, writes: Sequence[Write]) -> None:
        if not self.flowing.is_set():
            self.stuck.set()
            await self.flowing.wait()
        await super().apply(writes)


def use_store(monkeypatch: pytest.MonkeyPatch, store: MemoryStore) -> None:
    """The next in-process server keeps its state in ``store``."""

    @asynccontextmanager
    async def open_store(data_dir: Path) -> AsyncIterator[MemoryStore]:
        yield store

    monkeypatch.setattr(zajel.server, "open_store", open_store)
