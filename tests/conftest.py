"""Shared fixtures: an in-process server on 127.0.0.1:0 whose clock the test controls, and a
real redis-server per session, emptied before each test that uses it."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import hypercorn.trio
import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig

from tests._redis import RedisServer
from zajel.asgi import AsgiApp, settings_for_config
from zajel.config import Config
from zajel.server import serve


@attrs.define
class RunningServer:
    """A server started in the test's own trio run (so it shares the test's clock)."""

    url: str
    config: Config
    stop: trio.Event

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)


def make_config(**overrides: Any) -> Config:
    """A development config on a free port, with overrides."""
    values: dict[str, Any] = {
        "env": "development",
        "host": "127.0.0.1",
        "port": 0,
        # The apps send a message every 30 s; test clients do not, and many tests jump the
        # clock past the message idle rule (tests of the rule set it).
        "ws_message_idle_timeout": 10.0**7,
    }
    values.update(overrides)
    return Config(**values)


@pytest.fixture(autouse=True)
def _own_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in an empty directory of its own, so an in-process server's default
    data directory (``./data``, where its store lives) belongs to that test alone."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session, started by the first test that needs it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_session: RedisServer) -> RedisServer:
    """The session's redis-server, running and empty (started again if a test left it
    stopped)."""
    if redis_session.process is None or redis_session.process.poll() is not None:
        redis_session.start()
    redis_session.flush()
    return redis_session


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """A mock clock that runs at real speed; tests ``clock.jump(s)`` over TTLs."""
    return trio.testing.MockClock(rate=1.0)


async def start_server(nursery: trio.Nursery, config: Config) -> RunningServer:
    stop = trio.Event()
    url = await nursery.start(functools.partial(serve, config, shutdown_trigger=stop.wait))
    return RunningServer(url=url, config=config, stop=stop)


async def start_asgi_server(nursery: trio.Nursery, config: Config) -> RunningServer:
    """``zajel.asgi``'s app under ``hypercorn.trio.serve`` with ``config`` (the deployment
    ``hypercorn zajel.asgi:app --worker-class trio``), on 127.0.0.1:0."""
    settings = HypercornConfig.from_object(settings_for_config(config))
    settings.bind = ["127.0.0.1:0"]
    settings.errorlog = None
    stop = trio.Event()
    serving = functools.partial(
        hypercorn.trio.serve, AsgiApp({}, config), settings, shutdown_trigger=stop.wait
    )
    binds = await nursery.start(serving)
    return RunningServer(url=binds[0], config=config, stop=stop)


# Where ``server`` runs: ``zajel serve`` with each of its WebSocket transports (hypercorn's
# and our own); ``ALL_DEPLOYMENTS`` adds the plain ASGI app under hypercorn, for the modules
# that run there too (``server = deployments(ALL_DEPLOYMENTS)`` in the module).
ZAJEL_SERVE = ("hypercorn", "fast")
ALL_DEPLOYMENTS = (*ZAJEL_SERVE, "asgi")


def deployments(names: tuple[str, ...], name: str = "server") -> Any:
    """A fixture (``server`` unless ``name`` says otherwise) that runs each test once per
    deployment of ``names``."""

    @pytest.fixture(params=names, name=name)
    async def server(
        nursery: trio.Nursery, request: pytest.FixtureRequest
    ) -> AsyncIterator[RunningServer]:
        """The real app on 127.0.0.1:0, in-process. Idle timeout is long so that clock jumps
        over protocol timers do not close idle test connections."""
        if request.param == "asgi":
            request.getfixturevalue("restore_logging")  # the app configures zajel's logs
            config = make_config(ws_idle_timeout=86_400.0)
            running = await start_asgi_server(nursery, config)
        else:
            config = make_config(ws_idle_timeout=86_400.0, ws_transport=request.param)
            running = await start_server(nursery, config)
        yield running
        running.stop.set()

    return server


server = deployments(ZAJEL_SERVE)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``zajel.logs.configure`` changes process-wide loggers; put them back as they were."""
    saved = {}
    for name in ("", "zajel", "hypercorn.error"):  # "": the root logger
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
