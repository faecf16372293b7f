"""The hand-off of an accepted connection to hypercorn (zajel/web/_hypercorn.py): every internal
it uses exists with the signature it is called with, and a connection handed over is served as
hypercorn's own worker serves one (HTTP with the lifespan state, a WebSocket on hypercorn's
stack, bad frames answered with their close code once ``install_close_codes`` is in)."""

from __future__ import annotations

import functools
import inspect
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import hypercorn.protocol.h11
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app
from packaging.requirements import Requirement
from wsproto.events import TextMessage

from tests.integration import _http
from tests.integration._raw import RawClient
from zajel.web import _hypercorn
from zajel.web._hypercorn import ReportingWSStream, install_close_codes, open_worker

ROOT = Path(__file__).resolve().parents[2]


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_installed_hypercorn_is_in_the_pinned_range():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if Requirement(d).name.lower() == "hypercorn"]
    assert str(pin.specifier) == "<0.19,>=0.18"  # the range the module docstring names
    assert pin.specifier.contains(metadata.version("hypercorn"))
    assert ">=0.18,<0.19" in (_hypercorn.__doc__ or "")


def test_the_internals_exist_with_the_signatures_used():
    assert parameters(TCPServer.__init__) == ["self", "app", "config", "context", "state", "stream"]
    assert hasattr(TCPServer, "__await__")
    assert parameters(WorkerContext.__init__) == ["self", "max_requests"]
    assert inspect.iscoroutinefunction(WorkerContext(None).terminated.set)
    assert parameters(Lifespan.__init__) == ["self", "app", "config", "state"]
    assert "task_status" in parameters(Lifespan.handle_lifespan)
    assert inspect.iscoroutinefunction(Lifespan.wait_for_startup)
    assert inspect.iscoroutinefunction(Lifespan.wait_for_shutdown)
    assert parameters(wrap_app) == ["app", "wsgi_max_body_size", "mode"]
    assert parameters(WSStream._accept) == ["self", "message"]
    assert inspect.iscoroutinefunction(WSStream._accept)
    # _accept sets the wsproto connection that ReportingWSStream wraps after it.
    assert "self.connection" in inspect.getsource(WSStream._accept)
    # The HTTP/1.1 protocol builds its WebSocket stream from the module's name WSStream, which
    # install_close_codes rebinds.
    assert hypercorn.protocol.h11.WSStream in (WSStream, ReportingWSStream)
    assert "WSStream(" in inspect.getsource(hypercorn.protocol.h11.H11Protocol)


class EchoApp:
    """A bare ASGI app: its lifespan puts a value in the lifespan state and records the
    shutdown; HTTP answers with that value; a WebSocket echoes every text message."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["greeting"] = "hello"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await receive()
            body = f"{scope['state']['greeting']} {scope['path']}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message["text"]})


@asynccontextmanager
async def handed_over(app: Any) -> AsyncIterator[int]:
    """A listener on 127.0.0.1 whose connections we accept and hand to ``open_worker``'s
    worker, as ``zajel serve`` does; yields its port."""
    config = HypercornConfig()
    config.errorlog = None
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener, open_worker(app, config) as worker, trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(trio.serve_listeners, handler_nursery=nursery),
            worker.serve,
            [listener],
        )
        yield listener.socket.getsockname()[1]
        await worker.close_idle()
        nursery.cancel_scope.cancel()


async def test_a_connection_handed_over_serves_http_within_the_lifespan():
    app = EchoApp()
    with trio.fail_after(10):
        async with handed_over(app) as port:
            assert app.events == ["lifespan.startup"]  # started before the first connection
            response = await _http.get(f"http://127.0.0.1:{port}", "/some/path")
            assert (response.status, response.body) == (200, b"hello /some/path")
        assert app.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_a_connection_handed_over_serves_a_websocket_on_hypercorns_stack():
    with trio.fail_after(10):
        async with handed_over(EchoApp()) as port:
            client = await RawClient.connect(port, "/echo")
            await client.send({"n": 1}, {"n": 2})
            assert [await client.receive(), await client.receive()] == [{"n": 1}, {"n": 2}]
            await client.hang_up()


def invalid_utf8_frame(client: RawClient) -> bytes:
    """A masked text frame whose payload is not UTF-8."""
    masked = client.ws.send(TextMessage(data="ok"))
    header, mask = masked[:2], masked[2:6]
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(b"\xff\xfe"))


@pytest.mark.parametrize(("installed", "code"), [(False, 1006), (True, 1007)])
async def test_a_bad_frame_gets_its_close_code_once_installed(monkeypatch, installed, code):
    """hypercorn itself hangs up on a frame wsproto refuses (no close frame: 1006);
    ``ReportingWSStream`` answers it with the code (invalid UTF-8: 1007)."""
    monkeypatch.setattr(hypercorn.protocol.h11, "WSStream", WSStream)  # undone after the test
    if installed:
        install_close_codes()
        assert hypercorn.protocol.h11.WSStream is ReportingWSStream
    with trio.fail_after(10):
        async with handed_over(EchoApp()) as port:
            client = await RawClient.connect(port, "/echo")
            await client.stream.send_all(invalid_utf8_frame(client))
            assert await client.read_until_closed() == ([], code)
            await client.hang_up()
