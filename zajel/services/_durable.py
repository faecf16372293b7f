"""The runtime of a service whose state must outlive a restart (``docs/operations.md``, "Storage").

A durable service keeps its state in memory, where it answers from, and mirrors every change to
the store as typed writes (``zajel.storage``). Its task runs like ``run_service``'s, with three
differences:

- At start it loads its state from the store, before it reports itself started: a server that
  cannot read its store does not start.
- Requests are handled in batches (group commit): everything already queued is handled, the
  writes they made are committed in one transaction, and only then are the replies sent. A
  reply never acknowledges a write that is not on disk, and a read in the same batch waits for
  the commit too, so no caller ever sees state the store does not hold. One fsync serves the
  whole batch.
- When a commit fails, every request of the batch is answered with ``StoreFailure`` and the
  service reloads its state from the store, which holds exactly what was committed. While the
  store cannot be read, every request is answered with ``StoreFailure`` and the reload is tried
  again with the next batch. A handler that raises is answered with ``ServiceFailure``; its
  writes are dropped and the state is reloaded the same way.
- ``CheckStore`` (``/health``) answers from the store's own answer, never from memory: a read
  (``ping``) while the last commit succeeded; once a commit failed, a write probe
  (``probe_write``), because a full disk still serves reads. The store stays failing until a
  later commit or a probe succeeds.

``DurableServiceBase`` holds what the durable services share around their state (the writes
owed to the store, epoch milliseconds, the sweep), and ``signing_key_from`` their configured,
or in development ephemeral, signing key.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import attrs
import trio
from nacl.signing import SigningKey

from zajel import crypto
from zajel.clock import WallClock
from zajel.config import ConfigError
from zajel.logs import context
from zajel.services._mailbox import Envelope, LocalAddress, ServiceFailure, observed
from zajel.storage import Store, StoreError, Write

if TYPE_CHECKING:
    from zajel.metrics import Metrics, Observe

R = TypeVar("R")

# Requests handled (and committed) together at most; bounds the latency a batch adds.
MAX_BATCH: Final = 256
# How often a service whose state could not be reloaded tries again while nothing arrives.
RELOAD_RETRY_S: Final = 1.0


@attrs.frozen
class StoreFailure:
    """The reply to a request whose writes could not be committed, or that arrived while the
    store could not be read; nothing it asked for was done."""

    service: str


@attrs.frozen
class CheckStore:
    """Request, handled by the runtime: reply ``StoreOk`` once the store answers, and can take
    writes again if the last commit failed; else ``StoreFailure``."""


@attrs.frozen
class StoreOk:
    pass


class DurableService(Protocol):
    """What ``run_durable_service`` drives. Every method runs on the service's own task."""

    name: str

    async def load(self, store: Store) -> None:
        """Replace the in-memory state with what ``store`` holds. Raises ``StoreError``."""

    def handle(self, request: Any, now: float) -> Any:
        """Handle one request at ``now`` (trio seconds); the return value is the reply."""

    def next_deadline(self) -> float:
        """When ``expire`` next has work to do (``inf`` for never)."""

    def expire(self, now: float) -> None:
        """Run every timer due at ``now``."""

    def take_writes(self) -> list[Write]:
        """The writes made since the last call, in order; the service forgets them."""


async def run_durable_service(
    service: DurableService,
    store: Store,
    inbox: trio.MemoryReceiveChannel[Envelope],
    *,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load ``service`` from ``store``, then serve batches until the inbox is closed.

    ``metrics`` (else the server's current one, ``zajel.metrics.current``) gets the handling
    time of every request (these are few, so none is skipped) and the inbox's depth.

    Raises:
        StoreError: the first load failed (the service never started).
    """
    log = logging.getLogger(f"zajel.{service.name}")
    await service.load(store)
    with observed(service.name, inbox, metrics) as observe:
        task_status.started()
        await _serve_batches(service, store, inbox, log, observe)


async def _serve_batches(
    service: DurableService,
    store: Store,
    inbox: trio.MemoryReceiveChannel[Envelope],
    log: logging.Logger,
    observe: Observe | None,
) -> None:
    stale = False  # the in-memory state may hold writes the store does not have
    writes_fail = False  # the last commit failed, and no commit or probe has succeeded since
    async with inbox:
        while True:
            # While stale, timers wait: the next reload attempt comes with the next request, or
            # after RELOAD_RETRY_S.
            deadline = trio.current_time() + RELOAD_RETRY_S if stale else service.next_deadline()
            batch, closed = await _next_batch(inbox, deadline)
            if stale:
                stale = not await _reload(service, store, log)
            if stale:
                replies: list[tuple[Envelope, Any]] = [
                    (envelope, StoreFailure(service.name)) for envelope in batch
                ]
            else:
                replies, writes, broken = _handle_batch(service, batch, log, observe)
                stale = broken
                if writes:
                    committed = await _commit(store, writes, log)
                    if committed and writes_fail:
                        log.info("store takes writes again")
                    writes_fail = not committed
                    if not committed:
                        replies = [(envelope, StoreFailure(service.name)) for envelope in batch]
                        stale = True
                if stale:
                    stale = not await _reload(service, store, log)
            for envelope, reply in replies:
                if type(envelope.request) is CheckStore:
                    reply, writes_fail = await _check_store(service, store, writes_fail, log)
                _reply(envelope, reply)
            if closed:
                return


async def _next_batch(
    inbox: trio.MemoryReceiveChannel[Envelope], deadline: float
) -> tuple[list[Envelope], bool]:
    """What the inbox holds, waiting until ``deadline`` for the first; and whether it closed."""
    batch: list[Envelope] = []
    with trio.move_on_at(deadline):
        try:
            batch.append(await inbox.receive())
        except trio.EndOfChannel:
            return batch, True
    while len(batch) < MAX_BATCH:
        try:
            batch.append(inbox.receive_nowait())
        except trio.WouldBlock:
            break
        except trio.EndOfChannel:
            return batch, True
    return batch, False


def _handle_batch(
    service: DurableService,
    batch: Sequence[Envelope],
    log: logging.Logger,
    observe: Observe | None = None,
) -> tuple[list[tuple[Envelope, Any]], list[Write], bool]:
    """Run due timers, then every request: the replies, the writes to commit, and whether a
    failure left the state to be reloaded."""
    writes: list[Write] = []
    broken = False
    now = trio.current_time()
    if service.next_deadline() <= now:
        try:
            service.expire(now)
            writes += service.take_writes()
        except Exception:
            log.exception("timer failed", extra=context(service=service.name))
            service.take_writes()
            broken = True
    replies: list[tuple[Envelope, Any]] = []
    for envelope in batch:
        if type(envelope.request) is CheckStore:
            replies.append((envelope, None))  # answered by the runtime once the batch is done
            continue
        started = time.perf_counter()
        try:
            reply = service.handle(envelope.request, now)
            writes += service.take_writes()
        except Exception:
            log.exception("request failed", extra=context(request=type(envelope.request).__name__))
            service.take_writes()
            reply = ServiceFailure(service.name)
            broken = True
        if observe is not None:
            observe(time.perf_counter() - started)
        replies.append((envelope, reply))
    return replies, writes, broken


async def _commit(store: Store, writes: list[Write], log: logging.Logger) -> bool:
    try:
        await store.apply(writes)
    except StoreError as exc:
        log.error("commit failed", extra=context(error=str(exc), writes=len(writes)))
        return False
    except Exception:  # a store bug must not stop the service either
        log.exception("commit failed", extra=context(writes=len(writes)))
        return False
    return True


async def _reload(service: DurableService, store: Store, log: logging.Logger) -> bool:
    try:
        await service.load(store)
    except StoreError as exc:
        log.error("reload from the store failed", extra=context(error=str(exc)))
        return False
    log.warning("state reloaded from the store")
    return True


async def _check_store(
    service: DurableService, store: Store, writes_fail: bool, log: logging.Logger
) -> tuple[StoreOk | StoreFailure, bool]:
    """The answer to ``CheckStore``, and whether writes still fail: a read while commits work,
    a write probe once one failed."""
    try:
        if writes_fail:
            await store.probe_write()
        else:
            await store.ping()
    except StoreError:
        return StoreFailure(service.name), writes_fail
    except Exception:  # a store bug must not stop the service either
        log.exception("store check failed")
        return StoreFailure(service.name), writes_fail
    if writes_fail:
        log.info("store takes writes again")
    return StoreOk(), False


def _reply(envelope: Envelope, reply: Any) -> None:
    if envelope.reply is not None:
        # A caller that has gone away is ignored: nobody is waiting for this answer.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            envelope.reply.send_nowait(reply)
        envelope.reply.close()


async def start_durable_service(
    nursery: trio.Nursery, service: DurableService, store: Store, *, inbox_size: int = 1024
) -> LocalAddress:
    """Start ``service`` as one task in ``nursery`` once it has loaded; returns its address.

    Raises:
        StoreError: the service could not load its state.
    """
    send, receive = trio.open_memory_channel[Envelope](inbox_size)
    await nursery.start(
        run_durable_service, service, store, receive, name=f"service:{service.name}"
    )
    return LocalAddress(service.name, send)


class DurableServiceBase:
    """What the durable services share around their state: the store writes their requests
    made, epoch milliseconds from trio's clock (a ``WallClock`` started at the first load), and a
    sweep every ``SWEEP_INTERVAL_S`` seconds, before which the wall clock is read again.

    A subclass sets ``name``, implements ``load`` (calling ``_loaded`` at its end), ``handle``
    (adding writes with ``_record``) and ``sweep``.
    """

    name: str
    SWEEP_INTERVAL_S: float = 300.0

    def __init__(self, *, wall_clock: WallClock | None = None) -> None:
        self._wall_clock = wall_clock
        self._next_sweep = math.inf
        self._writes: list[Write] = []

    def sweep(self, now_ms: int) -> list[Write]:
        """Remove what has expired at ``now_ms``; the store writes that mirror it."""
        raise NotImplementedError

    def next_deadline(self) -> float:
        return self._next_sweep

    def expire(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_INTERVAL_S
        self._resync_wall_clock(now)
        writes = self.sweep(self._epoch_ms(now))
        self._writes += writes
        if writes:
            self._log.info("swept", extra=context(removed=len(writes)))

    def take_writes(self) -> list[Write]:
        writes, self._writes = self._writes, []
        return writes

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(f"zajel.{self.name}")

    def _loaded(self) -> None:
        """End of every load: nothing is owed to the store; the clock and the sweep run."""
        self._writes.clear()
        if self._wall_clock is None:
            self._wall_clock = WallClock.start()
        if self._next_sweep == math.inf:
            self._next_sweep = trio.current_time() + self.SWEEP_INTERVAL_S

    def _record(self, outcome: tuple[R, list[Write]]) -> R:
        """The reply of a state method's ``(reply, writes)``; the writes are owed to the store."""
        reply, writes = outcome
        self._writes += writes
        return reply

    def _epoch_ms(self, now: float) -> int:
        assert self._wall_clock is not None, "load() runs before any request"
        return self._wall_clock.epoch_ms(now)

    def _resync_wall_clock(self, now: float) -> None:
        assert self._wall_clock is not None, "load() runs before any timer"
        before = self._wall_clock.epoch_ms(now)
        self._wall_clock = self._wall_clock.resynced(now)
        step = self._wall_clock.epoch_ms(now) - before
        if step:
            self._log.warning(
                "wall clock stepped: epoch times follow it again", extra=context(step_ms=step)
            )


def signing_key_from(
    seed_hex: str | None, *, env: str, setting: str, purpose: str, log: logging.Logger
) -> SigningKey:
    """The signing key a service is configured with; in development without one, an ephemeral
    key whose public key is logged (docs/operations.md, "Environments").

    Raises:
        ConfigError: no key outside development.
    """
    if seed_hex is not None:
        return crypto.signing_key(bytes.fromhex(seed_hex))
    if env != "development":
        raise ConfigError(f"ZAJEL_{setting}: required in {env}")
    key = crypto.signing_key(crypto.generate_seed())
    log.warning(
        f"{purpose} signing key is ephemeral: it changes at every restart",
        extra=context(setting=f"ZAJEL_{setting}", public_key=crypto.public_key_b64(key)),
    )
    return key
