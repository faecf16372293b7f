"""The service runtime: envelopes, addresses, and the loop every service task runs.

A service is a plain object that owns its state alone. Its task receives ``Envelope``s on a
bounded trio memory channel; a request that wants an answer carries a one-slot reply channel,
and the service answers with ``send_nowait`` so it never waits on a caller. Callers hold an
``Address``, not the service: ``LocalAddress`` is a memory channel in this process, and a
networked address (another node) can implement the same three methods without any change to
the services, as long as requests and replies stay plain attrs values.

Periodic work (timers, sweeps) is driven by ``Service.next_deadline()`` on trio's clock, so a
test's mock clock controls it.

An inbox holds at most ``inbox_size`` envelopes. A caller that finds it full waits for room at
most ``BUSY_WAIT_S``, then is refused with ``Busy`` (HTTP 503 with ``Retry-After``, the
``busy`` error on WebSockets): load is shed, never queued without bound nor waited for without
end (docs/operations.md, "Limits and back-pressure").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from zajel import metrics as metrics_module
from zajel.logs import context
from zajel.metrics import HANDLING_SAMPLE

if TYPE_CHECKING:
    from zajel.metrics import Metrics, Observe

# How long a request waits for room in a full inbox before it is refused as ``Busy``: a burst
# is absorbed, a service that cannot keep up sheds the excess.
BUSY_WAIT_S: Final = 1.0


class Reply(Protocol):
    """Where a service's answer goes: a one-slot memory channel of the caller's, or the way
    back to a caller on another node (``zajel.cluster.node``)."""

    def send_nowait(self, value: Any) -> None: ...

    def close(self) -> None: ...


@attrs.frozen
class Envelope:
    """One request to a service; ``reply`` is set when the caller waits for an answer."""

    request: Any
    reply: Reply | None = None


@attrs.frozen
class Batch:
    """Requests that arrived together, handled in order one after another exactly as if each
    came alone in its own envelope (none with a reply): a cluster owner puts the client frames
    of one batch from an edge into one envelope (docs/cluster.md, "Batching")."""

    requests: tuple[Any, ...]


class Unavailable(Exception):
    """The service cannot be reached now (in cluster mode: Redis is down, the service has no
    owner, or its owner did not answer in time); the front end answers 503 or the
    ``unavailable`` error (docs/cluster.md, "What clients see")."""


class Busy(Unavailable):
    """The service's inbox stayed full for ``BUSY_WAIT_S``: the request was not queued and
    nothing of it was done. The front end answers 503 with ``Retry-After``, or the ``busy``
    error (docs/operations.md, "Limits and back-pressure"). A subclass of ``Unavailable``, so
    a caller that treats a service it cannot reach as failing (``/health``) counts it too."""


@attrs.frozen
class ServiceFailure:
    """The reply to a request whose handler raised; the service itself goes on."""

    service: str


class Service(Protocol):
    """What ``run_service`` drives. Every method runs on the service's own task."""

    name: str

    def handle(self, request: Any, now: float) -> Any:
        """Handle one request at ``now`` (trio seconds); the return value is the reply."""

    def next_deadline(self) -> float:
        """When ``expire`` next has work to do (``inf`` for never)."""

    def expire(self, now: float) -> None:
        """Run every timer due at ``now``."""


class Address(Protocol):
    """How the front end (or another service) reaches a service."""

    async def call(self, request: Any) -> Any:
        """Send ``request`` and wait for the reply.

        Raises:
            Busy: the inbox had no room for ``BUSY_WAIT_S`` (``LocalAddress``).
        """

    async def cast(self, request: Any) -> None:
        """Send ``request`` without waiting for a reply (waits only for inbox room)."""

    def cast_nowait(self, request: Any) -> None:
        """Send ``request`` now. Raises ``trio.WouldBlock`` when the inbox is full."""


class LocalAddress:
    """An address in this process: the send side of the service's inbox."""

    def __init__(self, name: str, inbox: trio.MemorySendChannel[Envelope]) -> None:
        self.name = name
        self._inbox = inbox

    async def call(self, request: Any) -> Any:
        reply_send, reply_receive = trio.open_memory_channel[Any](1)
        async with reply_receive:
            envelope = Envelope(request, reply_send)
            try:
                self._inbox.send_nowait(envelope)
            except trio.WouldBlock:
                with trio.move_on_after(BUSY_WAIT_S) as waited:
                    await self._inbox.send(envelope)
                if waited.cancelled_caught:
                    reply_send.close()
                    raise Busy(f"{self.name}: inbox full") from None
            # Once queued, the request is handled: its answer is waited for (a durable write
            # is answered only once it is on disk).
            return await reply_receive.receive()

    async def cast(self, request: Any) -> None:
        await self._inbox.send(Envelope(request))

    def cast_nowait(self, request: Any) -> None:
        self._inbox.send_nowait(Envelope(request))

    async def send(self, envelope: Envelope) -> None:
        """Queue ``envelope`` as it is (a request whose reply goes elsewhere)."""
        await self._inbox.send(envelope)

    def send_nowait(self, envelope: Envelope) -> None:
        """Queue ``envelope`` now. Raises ``trio.WouldBlock`` when the inbox is full."""
        self._inbox.send_nowait(envelope)


async def run_service(
    service: Service,
    inbox: trio.MemoryReceiveChannel[Envelope],
    *,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``service`` until its inbox is closed: requests in order, timers when due.

    An exception in one request is logged and answered with ``ServiceFailure``; it never stops
    the service. Cancellation is never caught. ``metrics`` (else the server's current one,
    ``zajel.metrics.current``) gets the handling time of requests and the inbox's depth.
    """
    log = logging.getLogger(f"zajel.{service.name}")
    with observed(service.name, inbox, metrics) as observe:
        task_status.started()
        await _serve_inbox(service, inbox, log, observe)


@contextlib.contextmanager
def observed(
    name: str, inbox: trio.MemoryReceiveChannel[Envelope], metrics: Metrics | None
) -> Iterator[Observe | None]:
    """While the block runs, ``metrics`` (else the server's current one) reports ``inbox``'s
    depth as service ``name``'s; yields the ``observe`` of its handling time (None: no metrics).
    """
    metrics = metrics if metrics is not None else metrics_module.current()
    if metrics is None:
        yield None
        return
    with metrics.watch_inbox(name, inbox):
        yield metrics.service_timer(name)


async def _serve_inbox(
    service: Service,
    inbox: trio.MemoryReceiveChannel[Envelope],
    log: logging.Logger,
    observe: Observe | None,
) -> None:
    # One request in ``HANDLING_SAMPLE`` is timed (docs/operations.md, "Metrics"): timing every
    # one would cost a relayed frame more than the counting of it.
    mask = HANDLING_SAMPLE - 1
    handled = 0
    async with inbox:
        while True:
            # One cancel scope per timer firing, not per request: creating a scope costs more
            # than handling a relay, while moving its deadline is cheap.
            with trio.CancelScope(deadline=service.next_deadline()) as wait:
                while True:
                    try:
                        envelope = await inbox.receive()
                    except trio.EndOfChannel:
                        return
                    # What is already queued is handled now, at one time, without a checkpoint
                    # per request.
                    now = trio.current_time()
                    handled += 1
                    _dispatch(service, envelope, log, now, None if handled & mask else observe)
                    while True:
                        try:
                            envelope = inbox.receive_nowait()
                        except trio.WouldBlock:
                            break
                        except trio.EndOfChannel:
                            return
                        handled += 1
                        _dispatch(service, envelope, log, now, None if handled & mask else observe)
                    deadline = service.next_deadline()
                    if deadline != wait.deadline:
                        wait.deadline = deadline
            try:
                service.expire(trio.current_time())
            except Exception:
                log.exception("timer failed", extra=context(service=service.name))
            # A timer that keeps failing must not starve the inbox: take one request first.
            await trio.lowlevel.checkpoint()
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                _dispatch(service, inbox.receive_nowait(), log, trio.current_time(), observe)


def _dispatch(
    service: Service,
    envelope: Envelope,
    log: logging.Logger,
    now: float,
    observe: Observe | None = None,
) -> None:
    started = time.perf_counter() if observe is not None else 0.0
    request = envelope.request
    if type(request) is Batch:
        for item in request.requests:
            try:
                service.handle(item, now)
            except Exception:
                log.exception("request failed", extra=context(request=type(item).__name__))
        if observe is not None and request.requests:
            # One sample for the batch: the mean time of its requests.
            observe((time.perf_counter() - started) / len(request.requests))
        return
    try:
        reply = service.handle(request, now)
    except Exception:
        log.exception("request failed", extra=context(request=type(request).__name__))
        reply = ServiceFailure(service.name)
    if observe is not None:
        observe(time.perf_counter() - started)
    if envelope.reply is not None:
        # A caller that has gone away is ignored: nobody is waiting for this answer.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            envelope.reply.send_nowait(reply)
        envelope.reply.close()


def start_service(
    nursery: trio.Nursery,
    service: Service,
    *,
    inbox_size: int = 1024,
    metrics: Metrics | None = None,
) -> LocalAddress:
    """Start ``service`` as one task in ``nursery``; returns its address. ``metrics``: see
    ``run_service``."""
    send, receive = trio.open_memory_channel[Envelope](inbox_size)
    nursery.start_soon(
        functools.partial(run_service, service, receive, metrics=metrics),
        name=f"service:{service.name}",
    )
    return LocalAddress(service.name, send)
