"""The whole app in the test's own trio run, spoken to through ASGI messages, and a bridge that
lets a Hypothesis state machine (which is synchronous) drive it one settled step at a time.

``InProcessApp`` is ``zajel.asgi.AsgiApp``, the app ``hypercorn zajel.asgi:app`` serves: its
lifespan opens the store and the services and ``create_app`` serves every HTTP route and both
WebSocket endpoints. The ASGI server's part is played here, as hypercorn's WebSocket stream
plays it: a message the app may not send in the connection's state fails the test, a send after
the client has gone is ignored, a close from the server is answered with the disconnect.

``Bridge`` runs the state machine in a worker thread while the app runs in the trio thread
under a ``MockClock`` that moves only when told. Each call runs one coroutine in the trio
thread and returns once every task is blocked again, so everything the step caused (frames to
every client, timers the jump crossed) has happened when the step's checks run. Nothing here
waits on real time.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import trio.testing

from zajel.asgi import AsgiApp
from zajel.config import Config

T = TypeVar("T")
ASGI = {"version": "3.0", "spec_version": "2.3"}


class ProtocolViolation(AssertionError):
    """The app sent an ASGI message its connection's state does not allow."""


@attrs.frozen
class HttpReply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Socket:
    """One WebSocket client as the app sees it through ASGI.

    ``received`` holds the frames the app sent, oldest first (``take`` empties it);
    ``close_code`` is the code of the app's close, ``refused`` the HTTP status of a refused
    handshake; ``gone`` is set once the app's task for the connection has returned, and
    ``ended_without_close`` if it returned with the connection open (hypercorn would then close
    it with 1011).
    """

    path: str
    ip: str
    _to_app: trio.MemorySendChannel[dict[str, Any]]
    state: str = "handshake"  # handshake, connected, closed (by the app), gone (client left)
    received: list[str | bytes] = attrs.Factory(list)
    close_code: int | None = None
    refused: int | None = None
    refusal: Any = None
    gone: trio.Event = attrs.Factory(trio.Event)
    # A client that stopped reading: the app's sends wait until it reads again.
    paused: bool = False
    ended_without_close: bool = False
    _reading: trio.Event = attrs.Factory(trio.Event)

    @property
    def open(self) -> bool:
        return self.state == "connected"

    def take(self) -> list[str | bytes]:
        frames, self.received = self.received, []
        return frames

    def send_nowait(self, data: str | bytes) -> None:
        """A frame from the client (ignored once either side closed, as on a real socket)."""
        if self.state != "connected":
            return
        key = "text" if isinstance(data, str) else "bytes"
        self._to_app.send_nowait({"type": "websocket.receive", key: data})

    def disconnect(self, code: int = 1000) -> None:
        """The client goes away (a close frame, or the network's end of the socket: 1006)."""
        self.resume()
        if self.state in ("connected", "handshake"):
            self.state = "gone"
            self._to_app.send_nowait({"type": "websocket.disconnect", "code": code})

    def pause(self) -> None:
        """Stop reading: the app's next send waits."""
        if not self.paused:
            self.paused = True
            self._reading = trio.Event()

    def resume(self) -> None:
        self.paused = False
        self._reading.set()

    async def app_send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.state == "gone":
            return  # hypercorn lets the app finish after the client has gone
        if self.state == "handshake" and kind == "websocket.accept":
            self.state = "connected"
        elif self.state in ("handshake", "response") and kind == "websocket.http.response.start":
            self.state = "response"
            self.refused = message["status"]
        elif self.state == "response" and kind == "websocket.http.response.body":
            self.refusal = json.loads(message["body"])
            self.state = "gone"
        elif self.state == "connected" and kind == "websocket.send":
            while self.paused:
                await self._reading.wait()
            if self.state != "connected":
                return  # the client went away meanwhile
            text, data = message.get("text"), message.get("bytes")
            if not isinstance(text, str) and data is None:
                raise ProtocolViolation(f"a send without text or bytes: {message!r}")
            self.received.append(text if text is not None else data)
        elif self.state == "connected" and kind == "websocket.close":
            self.state = "closed"
            self.close_code = int(message.get("code", 1000))
            # The client answers the close frame; the app's next receive is the disconnect.
            self._to_app.send_nowait({"type": "websocket.disconnect", "code": self.close_code})
        else:
            raise ProtocolViolation(f"{kind} in state {self.state} on {self.path}")


class InProcessApp:
    """``AsgiApp`` with ``config``, its lifespan run in ``nursery``."""

    def __init__(self, config: Config, nursery: trio.Nursery) -> None:
        self.config = config
        self.app = AsgiApp({}, config)
        self.nursery = nursery
        self._shutdown = trio.Event()
        self._started = trio.Event()
        self._stopped = trio.Event()
        self._failure: str | None = None
        self._port = 40_000
        # What went wrong inside the app's tasks (a raised exception, an ASGI message out of
        # place): recorded for the machine's invariant rather than left to end the trio run.
        self.failures: list[BaseException] = []
        self._errors = _Recorder(logging.ERROR)

    async def start(self) -> None:
        self.nursery.start_soon(self._lifespan)
        await self._started.wait()
        if self._failure is not None:
            raise RuntimeError(f"the app did not start: {self._failure}")
        # After the lifespan's ``logs.configure``, which replaces the zajel logger's handlers.
        for name in ("zajel", ""):
            logging.getLogger(name).addHandler(self._errors)

    @property
    def errors(self) -> list[logging.LogRecord]:
        """Records logged at ERROR or above (by the server, or a library under it)."""
        return self._errors.records

    async def stop(self) -> None:
        self._shutdown.set()
        await self._stopped.wait()

    async def _lifespan(self) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "lifespan.startup"}
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                self._failure = message.get("message", "")
                self._started.set()
            elif message["type"] == "lifespan.startup.complete":
                self._started.set()
            elif message["type"] == "lifespan.shutdown.complete":
                self._stopped.set()

        try:
            await self.app({"type": "lifespan", "asgi": ASGI}, receive, send)
        finally:
            self._started.set()
            self._stopped.set()

    def _client(self, ip: str) -> tuple[str, int]:
        self._port += 1
        return (ip, self._port)

    def _scope(
        self, kind: str, path: str, ip: str, headers: list[tuple[str, str]]
    ) -> dict[str, Any]:
        raw_path, _, query = path.partition("?")
        return {
            "type": kind,
            "asgi": ASGI,
            "http_version": "1.1",
            "scheme": "ws" if kind == "websocket" else "http",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"zajel.test")]
            + [(name.lower().encode(), value.encode()) for name, value in headers],
            "client": self._client(ip),
            "server": ("127.0.0.1", 80),
            "extensions": {"websocket.http.response": {}} if kind == "websocket" else {},
        }

    def websocket(self, path: str, ip: str) -> Socket:
        """Start a handshake on ``path`` from ``ip``; the app's task for it runs in the
        nursery (run the trio side until blocked to see it accepted or refused)."""
        to_app, from_client = trio.open_memory_channel[dict[str, Any]](math.inf)
        socket = Socket(path, ip, to_app)
        to_app.send_nowait({"type": "websocket.connect"})
        scope = self._scope("websocket", path, ip, [])

        async def run() -> None:
            try:
                await self.app(scope, from_client.receive, socket.app_send)
                if socket.state == "handshake":
                    raise ProtocolViolation(f"the app left a handshake on {path} unanswered")
                socket.ended_without_close = socket.state == "connected"
            except Exception as exc:
                self.failures.append(exc)
            finally:
                socket.state = "gone"
                socket.gone.set()

        self.nursery.start_soon(run)
        return socket

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        ip: str = "127.0.0.1",
        headers: list[tuple[str, str]] | None = None,
    ) -> HttpReply:
        """One HTTP request, answered in full."""
        given = list(headers or [])
        if body:
            given.append(("content-length", str(len(body))))
        scope = {**self._scope("http", path, ip, given), "method": method}
        status: int | None = None
        reply_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        done = trio.Event()
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and status is None:
                status = message["status"]
                for name, value in message.get("headers", ()):
                    reply_headers[name.decode("latin-1").lower()] = value.decode("latin-1")
            elif message["type"] == "http.response.body" and status and not done.is_set():
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()
            else:
                raise ProtocolViolation(f"{message['type']} out of order on {method} {path}")

        await self.app(scope, receive, send)
        if status is None or not done.is_set():
            raise ProtocolViolation(f"{method} {path}: the app returned without a full response")
        return HttpReply(status, reply_headers, b"".join(chunks))


class _Recorder(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def config_for(data_dir: Path, **overrides: Any) -> Config:
    """A development config storing in ``data_dir``."""
    values: dict[str, Any] = {"env": "development", "data_dir": data_dir, "log_level": "ERROR"}
    values.update(overrides)
    return Config(**values)


class Bridge:
    """Runs coroutines in the trio thread for the state machine's thread, each until the whole
    app is blocked again; ``jump`` moves the mock clock."""

    def __init__(self, clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
        self.clock = clock
        self.nursery = nursery

    def run(self, step: Callable[[], Awaitable[T]]) -> T:
        """Await ``step()`` in the trio thread; return its result once everything is blocked."""

        async def settled() -> T:
            result = await step()
            await trio.testing.wait_all_tasks_blocked()
            return result

        return trio.from_thread.run(settled)

    def do(self, action: Callable[..., T], *args: Any) -> T:
        """Call ``action(*args)`` in the trio thread (anything that touches the app's channels
        or tasks must); return its result once everything is blocked."""

        async def step() -> T:
            return action(*args)

        return self.run(step)

    def settle(self) -> None:
        self.do(lambda: None)

    def jump(self, seconds: float) -> None:
        """Move the mock clock, and let every timer it crossed run."""
        self.do(self.clock.jump, seconds)

    def start_app(self, config: Config) -> InProcessApp:
        app = InProcessApp(config, self.nursery)

        async def start() -> InProcessApp:
            await app.start()
            return app

        return self.run(start)

    def stop_app(self, app: InProcessApp) -> None:
        self.run(app.stop)
