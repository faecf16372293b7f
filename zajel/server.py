"""``serve``: the services plus the front end under hypercorn's trio worker, in one process."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from zajel.config import Config
from zajel.logs import context
from zajel.services import open_services
from zajel.storage import open_store
from zajel.web import create_app

log = logging.getLogger("zajel.server")

# How long open connections get to finish after a shutdown starts (operations.md, Deployment).
GRACEFUL_TIMEOUT_S = 5.0


def hypercorn_config(config: Config) -> HypercornConfig:
    """The transport settings: bind address, frame limit, keep-alive pings and idle timeout."""
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.websocket_max_message_size = config.ws_max_message_bytes
    hc.websocket_ping_interval = config.ws_ping_interval
    # Any byte from the client (a frame or a pong) resets the read timeout: it is the
    # idle timeout of conventions.md, "Keep-alive and dead connections".
    hc.read_timeout = config.ws_idle_timeout  # type: ignore[assignment]
    hc.graceful_timeout = GRACEFUL_TIMEOUT_S
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


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
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns; report the bound URL through ``task_status``.

    Shutdown stops accepting connections, closes every WebSocket with 1001, lets requests in
    flight finish within ``GRACEFUL_TIMEOUT_S``, then stops the services and flushes and closes
    the store.

    Raises:
        StoreError: the store in ``config.data_dir`` cannot be opened or read.
        ConfigError: a service refused its configuration.
    """
    shutdown = trio.Event()

    async def trigger() -> None:
        await shutdown_trigger()
        shutdown.set()

    async with open_store(config.data_dir) as store, open_services(config, store) as services:
        app = create_app(config, services, shutdown=shutdown)

        async def serve_app(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn_serve(
                app,
                hypercorn_config(config),
                shutdown_trigger=trigger,
                task_status=task_status,
            )

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_app)
            url = binds[0]
            log.info("listening", extra=context(url=url, env=config.env))
            task_status.started(url)
    log.info("stopped")
