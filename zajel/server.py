"""``serve``: the store, the services and the front end (our TCP accept loop, hypercorn's HTTP
and WebSocket protocol, the Quart-trio app) in one process."""

from __future__ import annotations

import functools
import gc
import logging
import os
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
from hypercorn.config import Config as HypercornConfig

from zajel.config import Config
from zajel.logs import context
from zajel.metrics import Metrics, as_current, serve_metrics
from zajel.services import Services, open_services
from zajel.storage import SqliteStore, Store, open_store
from zajel.web import create_app
from zajel.web.app import package_version
from zajel.web.fastws import FastTransport
from zajel.web.transport import (
    ConnectionTable,
    bound_url,
    open_listener,
    serve_tcp,
)

log = logging.getLogger("zajel.server")

# How long open connections get to finish after a shutdown starts (docs/operations.md,
# "Stopping"); what is still open then is dropped.
GRACEFUL_TIMEOUT_S = 5.0
# The watchdog of ``zajel serve`` exits this long after the grace time if shutdown is stuck.
WATCHDOG_MARGIN_S = 3.0
BACKLOG = 1024
# File descriptors beyond the WebSocket cap: HTTP connections, the store, the listener.
FD_HEADROOM = 1024
# The soft limit asked for when the hard limit is unlimited.
FD_CEILING = 1 << 20


class MetricsBindError(OSError):
    """``METRICS_BIND`` cannot be listened on (in use, not local)."""


def host_port(host: str, port: int) -> str:
    """``host:port`` as an operator writes it (``[host]:port`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_metrics_listener(config: Config) -> trio.SocketListener | None:
    """The listener of ``/metrics`` when ``METRICS_BIND`` moves it off the main port.

    Raises:
        MetricsBindError: the address cannot be bound.
    """
    if not config.metrics or config.metrics_bind is None:
        return None
    host, port = config.metrics_bind
    try:
        return open_listener(host, port, 64)
    except OSError as exc:
        raise MetricsBindError(exc.errno, exc.strerror or str(exc)) from exc


def hypercorn_config(config: Config) -> HypercornConfig:
    """hypercorn's protocol settings: frame limit, keep-alive pings and idle timeout. (Where to
    listen and the grace time are ``zajel.web.transport``'s.)"""
    hc = HypercornConfig()
    hc.websocket_max_message_size = config.ws_max_message_bytes
    hc.websocket_ping_interval = config.ws_ping_interval
    # Any byte from the client (a frame or a pong) resets the read timeout: it is the
    # idle timeout of docs/protocol/conventions.md, "Keep-alive".
    hc.read_timeout = config.ws_idle_timeout  # type: ignore[assignment]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


def raise_fd_limit(config: Config) -> None:
    """Raise the soft file-descriptor limit towards the hard one, and warn in one line when it
    stays below what the connection caps need (docs/operations.md, "File descriptors")."""
    need = config.ws_max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = FD_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "file descriptor limit below what the connection caps need",
            extra=context(limit=soft, need=need, hint="raise LimitNOFILE or WS_MAX_CONNECTIONS"),
        )


# The collector's youngest generation is collected after this many new container objects
# instead of Python's 700: every relayed frame allocates a few (dicts, lists, attrs values) that
# die young, and collecting every 700 cost about a tenth of the server's CPU under load
# (docs/benchmarks.md, "Collector").
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Once serving (``zajel serve``): what start-up built lives as long as the process, so the
    collector stops scanning it (``gc.freeze``), and young objects are collected less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("shutting down", extra=context(signal=signal.Signals(signum).name))
            return


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] = wait_for_signal,
    exit_when_stuck: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns; report the bound URL through ``task_status``.

    Shutdown stops accepting connections, closes every WebSocket with 1001, lets connections
    finish within ``GRACEFUL_TIMEOUT_S`` and drops what is still open, then stops the services
    and flushes and closes the store. With ``exit_when_stuck`` (the ``zajel serve`` command) a
    watchdog ends the process ``WATCHDOG_MARGIN_S`` after the grace time, once the store is
    closed, should anything still hold the shutdown.

    Raises:
        OSError: the address cannot be listened on.
        StoreError: the store in ``config.data_dir`` cannot be opened or read.
        ConfigError: a service refused its configuration.
    """
    raise_fd_limit(config)
    listener = open_listener(config.host, config.port, BACKLOG, reuse_port=config.reuse_port)
    try:
        metrics_listener = open_metrics_listener(config)
    except MetricsBindError:
        listener.socket.close()
        raise
    metrics = Metrics(version=package_version())
    shutdown = trio.Event()
    try:
        async with (
            open_state(config, lambda: bound_url(listener), metrics=metrics) as (
                store,
                services,
            ),
            trio.open_nursery() as outer,
        ):

            async def trigger() -> None:
                await shutdown_trigger()
                shutdown.set()

            outer.start_soon(trigger)
            if exit_when_stuck:
                outer.start_soon(_watchdog, shutdown, store)
            table = ConnectionTable(
                config.http_max_connections_per_ip,
                config.trusted_proxies,
                stall_timeout=config.ws_idle_timeout,
                metrics=metrics,
            )
            app = create_app(
                config,
                services,
                shutdown=shutdown,
                connections=table,
                metrics=metrics,
                metrics_listener=metrics_listener is not None,
            )
            if metrics_listener is not None:
                # Until the very end: the shutdown is worth watching too.
                await outer.start(serve_metrics, metrics, metrics_listener)
                log.info("metrics listening", extra=context(url=bound_url(metrics_listener)))
            async with trio.open_nursery() as front:
                await front.start(
                    functools.partial(
                        serve_tcp,
                        app,
                        hypercorn_config(config),
                        table,
                        listener,
                        shutdown=shutdown,
                        grace=GRACEFUL_TIMEOUT_S,
                        websockets=(
                            FastTransport(("/signal", "/relay"), config, metrics)
                            if config.ws_transport == "fast"
                            else None
                        ),
                    )
                )
                url = bound_url(listener)
                log.info("listening", extra=context(url=url, env=config.env))
                task_status.started(url)
            outer.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
            if metrics_listener is not None:
                await metrics_listener.aclose()
    log.info("stopped")


@asynccontextmanager
async def open_state(
    config: Config, listen_url: Callable[[], str] = lambda: "", *, metrics: Metrics | None = None
) -> AsyncIterator[tuple[Store | None, Services]]:
    """The store and the services: the embedded store and this process's services, or in
    cluster mode this node's part of the cluster (docs/cluster.md), whose store is Redis.

    ``metrics`` (a new one if not given) is the current ``zajel.metrics.Metrics`` within the
    block: the services, the store and an app made there count into it.
    """
    with as_current(metrics or Metrics(version=package_version())) as current:
        if config.cluster_url is None:
            async with open_store(config.data_dir) as store:
                if isinstance(store, SqliteStore):
                    store.observe_commit = current.store_timer("sqlite")
                async with open_services(config, store) as services:
                    yield store, services
            return
        # Imported here: the Redis client costs a third of a second to import, which a single
        # node never needs.
        from zajel.cluster.services import open_cluster_services

        async with open_cluster_services(config, listen_url=listen_url) as (services, _):
            yield None, services


async def _watchdog(shutdown: trio.Event, store: Store | None) -> None:
    """End the process if the shutdown is still not done well after its grace time: nothing
    acknowledged is lost (every write was committed before its reply), and the store is closed
    first."""
    await shutdown.wait()
    await trio.sleep(GRACEFUL_TIMEOUT_S + WATCHDOG_MARGIN_S)
    log.error("shutdown is stuck: closing the store and exiting")
    if store is not None:
        with trio.move_on_after(WATCHDOG_MARGIN_S) as scope:
            scope.shield = True
            await store.aclose()
    logging.shutdown()
    os._exit(0)
