"""The whole server as one ASGI app, for the ``hypercorn`` command (docs/operations.md)::

    hypercorn zajel.asgi:app --worker-class trio --config python:zajel.asgi.hypercorn_settings

``zajel serve`` is the fast deployment (its own accept loop and WebSocket transport); this one
uses only hypercorn's public interface, and serves every HTTP route and both WebSocket endpoints
with the same app (``create_app``) and the same ``SocketRouter``, on hypercorn's own WebSocket
stack.

- The configuration is the ``ZAJEL_*`` variables (``Config.from_env``), read when hypercorn
  starts the app's lifespan; ``ZAJEL_HOST``/``ZAJEL_PORT`` are where ``hypercorn_settings``
  binds (hypercorn's ``--bind`` wins), and ``ZAJEL_WS_TRANSPORT`` has no effect.
- The lifespan startup opens the store and the services; the lifespan shutdown stops them and
  flushes and closes the store before it reports complete. A configuration error, or a store
  that cannot be opened, fails the startup with one log line saying why, and hypercorn's worker
  exits (the ``hypercorn`` command of 0.18 then exits with status 0 all the same).
- ``hypercorn_settings`` is hypercorn's side of the settings (the message size limit, keep-alive
  pings, the idle timeout, the grace time, the trio worker, the bind), from the same variables:
  without it hypercorn's defaults apply (16 MiB messages, no pings, no idle timeout).
- What only ``zajel serve`` does (docs/operations.md): the per-IP HTTP connection cap, dropping
  a write that stalls, close codes 1007/1002 for frames wsproto refuses (hypercorn hangs up),
  and 1001 to every WebSocket at shutdown (hypercorn ends the connections that are still open
  after its grace time, before the lifespan shutdown).
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import trio

from zajel import logs
from zajel.cluster import ClusterStartError
from zajel.config import Config, ConfigError
from zajel.logs import context
from zajel.metrics import Metrics, serve_metrics
from zajel.server import (
    GRACEFUL_TIMEOUT_S,
    MetricsBindError,
    host_port,
    hypercorn_config,
    open_metrics_listener,
    open_state,
    raise_fd_limit,
)
from zajel.storage import StoreError
from zajel.web import create_app
from zajel.web.app import package_version
from zajel.web.sockets import ASGIApp, ASGIReceive, ASGISend
from zajel.web.transport import bound_url

log = logging.getLogger("zajel.server")

# What ``hypercorn_settings`` takes from ``zajel.server.hypercorn_config``: the protocol options
# ``zajel serve`` sets (its logging is left to the hypercorn command's own options).
PROTOCOL_SETTINGS = ("websocket_max_message_size", "websocket_ping_interval", "read_timeout")


class AsgiApp:
    """The ASGI app of ``zajel.asgi``: the lifespan opens what ``create_app`` serves, every
    request and WebSocket goes to that app."""

    def __init__(self, environ: Mapping[str, str], config: Config | None = None) -> None:
        """``config``: serve with it instead of reading ``environ`` (an embedding, a test)."""
        self._environ = environ
        self._config = config
        self._app: ASGIApp | None = None

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self._app is None:
            raise RuntimeError("zajel.asgi serves only between its lifespan startup and shutdown")
        await self._app(scope, receive, send)

    async def _lifespan(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Start up, serve until the lifespan shutdown, and stop, telling the server each step.

        The app's own lifespan (quart-trio's) runs inside: its startup completes before ours,
        and ours completes only once the services are stopped and the store closed.
        """
        startup = await receive()
        try:
            config = self._config or Config.from_env(self._environ)
        except ConfigError as exc:
            logs.configure("INFO")  # the line that says why, in the log format's default
            await _failed(send, f"configuration error: {exc}")
            return
        logs.configure(config.log_level, config.log_format)
        logs.log_start(config)
        try:
            if config.cluster_url is None:  # a cluster node keeps nothing on disk
                config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = f"ZAJEL_DATA_DIR: cannot create {config.data_dir}: {exc.strerror}"
            await _failed(send, f"configuration error: {reason}")
            return
        raise_fd_limit(config)
        try:
            metrics_listener = open_metrics_listener(config)
        except MetricsBindError as exc:
            assert config.metrics_bind is not None
            where = host_port(*config.metrics_bind)
            await _failed(send, f"cannot listen on {where} (ZAJEL_METRICS_BIND): {exc.strerror}")
            return
        metrics = Metrics(version=package_version())
        shutdown = trio.Event()
        completed: list[Any] = []
        async with AsyncExitStack() as stack:
            if metrics_listener is not None:
                stack.push_async_callback(metrics_listener.aclose)
            try:
                # The embedded store and this process's services, or a node of the cluster
                # (docs/cluster.md).
                _, services = await stack.enter_async_context(open_state(config, metrics=metrics))
            except Exception as exc:  # every start-up failure fails the startup, with its reason
                await _failed(send, _start_failure(exc))
                return
            served: ASGIApp = create_app(
                config,
                services,
                shutdown=shutdown,
                metrics=metrics,
                metrics_listener=metrics_listener is not None,
            )
            if metrics_listener is not None:
                nursery = await stack.enter_async_context(trio.open_nursery())
                stack.callback(nursery.cancel_scope.cancel)  # runs first: the task ends
                await nursery.start(serve_metrics, metrics, metrics_listener)
                log.info("metrics listening", extra=context(url=bound_url(metrics_listener)))
            replayed = False

            async def app_receive() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return startup
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    # A WebSocket still open closes with 1001 (under hypercorn none is: it
                    # ends them before the lifespan shutdown).
                    shutdown.set()
                return message

            async def app_send(message: Any) -> None:
                if message["type"] == "lifespan.shutdown.complete":
                    completed.append(message)  # reported once the store is closed
                    return
                if message["type"] == "lifespan.startup.complete":
                    self._app = served
                    log.info("serving under an ASGI server", extra=context(env=config.env))
                await send(message)

            try:
                await served(scope, app_receive, app_send)
            finally:
                self._app = None
        log.info("stopped")
        for message in completed:
            await send(message)


async def _failed(send: ASGISend, message: str) -> None:
    log.error("cannot start", extra=context(reason=message))
    await send({"type": "lifespan.startup.failed", "message": message})


def _start_failure(exc: Exception) -> str:
    """The reason a start-up failed, in the words of ``zajel serve``'s own messages."""
    inner: BaseException = exc
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    if isinstance(inner, StoreError):
        return f"cannot open the store (ZAJEL_DATA_DIR): {inner}"
    if isinstance(inner, ConfigError):
        return f"configuration error: {inner}"
    if isinstance(inner, ClusterStartError):
        return f"{inner} (ZAJEL_CLUSTER_URL)"
    log.error("start-up failed", exc_info=exc)
    return f"start-up failed: {inner!r}"


def settings_for_hypercorn(environ: Mapping[str, str]) -> types.SimpleNamespace:
    """hypercorn's settings from the ``ZAJEL_*`` variables in ``environ``: an object that
    ``hypercorn.config.Config.from_object`` (``--config python:…``) reads.

    Raises:
        ConfigError: naming the first invalid setting.
    """
    return settings_for_config(Config.from_env(environ))


def settings_for_config(config: Config) -> types.SimpleNamespace:
    """hypercorn's settings for ``config`` (see ``settings_for_hypercorn``)."""
    protocol = hypercorn_config(config)
    host = f"[{config.host}]" if ":" in config.host else config.host
    return types.SimpleNamespace(
        **{name: getattr(protocol, name) for name in PROTOCOL_SETTINGS},
        graceful_timeout=GRACEFUL_TIMEOUT_S,
        worker_class="trio",
        bind=[f"{host}:{config.port}"],
    )


def __getattr__(name: str) -> Any:
    # ``hypercorn_settings`` is read from the environment when hypercorn loads it, not when
    # this module is imported: an invalid setting then fails ``--config``, never the import.
    if name == "hypercorn_settings":
        return settings_for_hypercorn(os.environ)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


app = AsgiApp(os.environ)
