"""A service that raises on one message serves the next (docs/protocol/conventions.md,
"Errors"; docs/operations.md, "What is logged"): over real sockets, in process, each service's
handler is made to raise on one marked message. Its sender gets ``internal_error`` (WebSocket)
or 500 (HTTP) and nothing of the message is kept; the next message of that client and every
other client's are served, by the same service task, and ``/health`` stays ok.

The unit tests cover the runtimes one by one (``tests/services/test_mailbox.py``,
``test_signaling_room.py``, ``test_durable.py``); this runs them behind the real front end."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._signal import error, expect, pair
from tests.integration.test_servers_durability import body
from tests.services.fakes import captured_log
from zajel.client import connect_relay, connect_signal
from zajel.services.relay import RelayService
from zajel.services.servers import ServerRegistry
from zajel.services.signaling import SignalingState

INTERNAL = error("internal_error", "Internal server error")
MARK = "explode-here"


def explode_on_mark(
    monkeypatch: pytest.MonkeyPatch, cls: type, method: str, exploded: list[str]
) -> None:
    """Make ``cls.method`` raise on any call whose arguments mention ``MARK``; each call that
    raised is appended to ``exploded``."""
    real = getattr(cls, method)

    def handle(self: Any, *args: Any) -> Any:
        if MARK in repr(args):
            exploded.append(method)
            raise RuntimeError("a bug in the handler")
        return real(self, *args)

    monkeypatch.setattr(cls, method, handle)


async def test_each_service_survives_a_handler_that_raises(nursery, monkeypatch):
    exploded: list[str] = []
    explode_on_mark(monkeypatch, SignalingState, "handle", exploded)
    explode_on_mark(monkeypatch, RelayService, "_on_message", exploded)
    explode_on_mark(monkeypatch, ServerRegistry, "handle", exploded)
    running = await start_server(nursery, make_config(ws_idle_timeout=86_400.0))
    url = running.url
    with (
        trio.fail_after(10),
        captured_log("zajel") as records,
    ):
        async with connect_signal(url) as a, connect_signal(url) as b, connect_relay(url) as r:
            await a.register("AAAAAA")
            await b.register("BBBBBB")
            await pair(a, b)
            # /signal: the offer that breaks the room is answered with internal_error and not
            # relayed; the next offer from the same client is.
            await a.signal("offer", "BBBBBB", {"sdp": MARK})
            await expect(a, INTERNAL)
            await a.signal("offer", "BBBBBB", {"sdp": "fine"})
            await expect(b, {"type": "offer", "from": "AAAAAA", "payload": {"sdp": "fine"}})
            await b.signal("answer", "AAAAAA", {"sdp": "fine too"})
            await expect(a, {"type": "answer", "from": "BBBBBB", "payload": {"sdp": "fine too"}})

            # /relay: a register that breaks the relay service leaves no registration.
            await r.send({"type": "register", "peerId": MARK})
            await expect(r, INTERNAL)
            registered = await r.register("relay-1")
            assert registered["peerId"] == "relay-1"
            assert registered["relays"] == []

        # HTTP: the registration that breaks the registry is a 500 and is not kept; the
        # registry reloads its state from the store and serves the next request.
        assert (await _http.post(url, "/servers", body(1))).status == 200
        broken = await _http.post(url, "/servers", {**body(2), "region": MARK})
        assert broken.status == 500
        assert broken.json() == {"error": "Internal Server Error"}
        assert (await _http.post(url, "/servers", body(3))).status == 200
        listed = (await _http.get(url, "/servers")).json()["servers"]
        assert sorted(server["serverId"] for server in listed) == ["vps-1", "vps-3"]

        health = await _http.get(url, "/health")
        assert health.status == 200
        assert health.json()["status"] == "ok"
    assert exploded == ["handle", "_on_message", "handle"]  # once each, and only there
    failures = [r for r in records if r.getMessage() in ("message failed", "request failed")]
    assert [(r.name, r.getMessage()) for r in failures] == [
        ("zajel.signaling", "message failed"),
        ("zajel.relay", "message failed"),
        ("zajel.servers", "request failed"),
    ]
    assert all(r.exc_info is not None for r in failures)  # with the traceback
