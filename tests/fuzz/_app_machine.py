"""The part every state machine over the in-process app shares (``tests/fuzz/test_app_*.py``).

A machine is one fresh app (``zajel.asgi.AsgiApp`` with its own data directory) and the
clients the rules open on it. Each rule makes one settled step through the ``Bridge``; after
it:

- the app never failed: no task of it raised, no ASGI message was out of place, nothing was
  logged at ERROR;
- every frame a client got is well formed for its endpoint (``tests.fuzz._frames``), and the
  subclass's model takes it in (``on_frame``);
- a connection the server closed was closed with a code it may use: 1008 after a flood, 1013
  for a client that stopped reading (which under a plain ASGI server may also end without a
  close frame);
- ``GET /stats`` agrees with the clients that are connected (``check_stats`` of the subclass).

At the end every client leaves, the clock runs past every timer, and every registry in
``/stats`` is empty, with as many trio tasks living as before the first client came.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path
from typing import Any, ClassVar

import attrs
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.fuzz._frames import Schema, decode_frame
from tests.fuzz._inprocess import Bridge, InProcessApp, Socket, config_for

STATS_IP = "203.0.113.250"  # asks for /stats only, so the fuzzed addresses keep their budgets
FLOOD_CLOSE = 1008
SLOW_CONSUMER_CLOSE = 1013
# The registry counts of /stats that must be 0 once nobody is connected and every timer ran;
# the rest are counters since the start.
COUNTERS = {("chunks", "cacheHits"), ("chunks", "cacheMisses"), ("chunks", "pullsSent")}

clients = st.integers(min_value=0, max_value=1_000)  # an index into the open clients


@attrs.define
class Client:
    endpoint: str  # "signal" or "relay"
    socket: Socket
    schema: Schema
    frames: list[dict[str, Any]] = attrs.Factory(list)  # every frame it got, oldest first

    @property
    def open(self) -> bool:
        return self.socket.open


class AppMachine(RuleBasedStateMachine):
    """Subclasses add rules, ``on_frame`` and ``check_stats``; ``SETTINGS`` overrides the
    config."""

    SETTINGS: ClassVar[dict[str, Any]] = {}
    # The sections of /stats whose state outlives the connections (the durable registries).
    DURABLE: ClassVar[tuple[str, ...]] = ("servers", "attestation")
    SCHEMAS: ClassVar[dict[str, Schema]] = {}
    _runs = itertools.count()

    def __init__(self, bridge: Bridge, base: Path) -> None:
        super().__init__()
        self.bridge = bridge
        config = config_for(
            base / f"run-{next(self._runs)}",
            http_rate_per_minute=10**9,
            ws_message_idle_timeout=10.0**7,
            **self.SETTINGS,
        )
        self.app: InProcessApp = bridge.start_app(config)
        self.clients: dict[int, Client] = {}
        self.next_client = 1
        self.now = 0.0  # seconds the clock moved since the start
        self.tasks_at_start = self.tasks_living()

    # -- driving the app -------------------------------------------------------------------

    def tasks_living(self) -> int:
        return self.bridge.do(lambda: trio.lowlevel.current_statistics().tasks_living)

    def connect(self, endpoint: str, ip: str, path: str | None = None) -> int:
        socket = self.bridge.do(self.app.websocket, path or f"/{endpoint}", ip)
        assert socket.open, (socket.refused, socket.refusal)
        cid = self.next_client
        self.next_client += 1
        self.clients[cid] = Client(endpoint, socket, self.SCHEMAS[endpoint])
        return cid

    def send(self, cid: int, *data: str | bytes) -> None:
        """Frames from client ``cid``, one after the other, then the step settles."""
        socket = self.clients[cid].socket

        def deliver() -> None:
            for item in data:
                socket.send_nowait(item)

        self.bridge.do(deliver)
        self.collect()

    def disconnect(self, cid: int, code: int = 1000) -> None:
        client = self.clients.pop(cid)
        self.bridge.do(client.socket.disconnect, code)
        self.collect()
        self.on_gone(cid, client)

    def jump(self, seconds: float) -> None:
        self.now += seconds
        self.bridge.jump(seconds)
        self.collect()

    def stats(self) -> dict[str, Any]:
        reply = self.bridge.run(lambda: self.app.request("GET", "/stats", ip=STATS_IP))
        assert reply.status == 200, (reply.status, reply.body)
        return reply.json()  # type: ignore[no-any-return]

    def pick(self, index: int, endpoint: str | None = None) -> int | None:
        """An open client (of ``endpoint``) chosen by ``index``, or None if there is none."""
        cids = sorted(
            cid
            for cid, client in self.clients.items()
            if client.open and endpoint in (None, client.endpoint)
        )
        return cids[index % len(cids)] if cids else None

    def say(self, index: int, frame: dict[str, Any] | str | bytes) -> None:
        """The open client ``index`` picks (``pick``) sends ``frame``: an object as JSON, text
        or bytes as they are; nothing when no client is open."""
        cid = self.pick(index)
        if cid is not None:
            self.send(cid, json.dumps(frame) if isinstance(frame, dict) else frame)

    def collect(self) -> None:
        """Check and take in every frame the clients got; forget the clients the server
        closed, after checking how."""
        for cid, client in list(self.clients.items()):
            socket = client.socket
            for data in socket.take():
                frame = decode_frame(data, client.schema)
                client.frames.append(frame)
                self.on_frame(cid, client, frame)
            if socket.state == "handshake" or socket.open:
                continue
            if socket.paused and not socket.gone.is_set():
                continue  # closing while its last frames wait for it to read
            if socket.ended_without_close:
                assert socket.paused, "the app ended a connection without a close frame"
            else:
                assert socket.close_code in (FLOOD_CLOSE, SLOW_CONSUMER_CLOSE), socket.close_code
                if socket.close_code == SLOW_CONSUMER_CLOSE:
                    assert socket.paused
            del self.clients[cid]
            self.on_gone(cid, client)

    # -- hooks -----------------------------------------------------------------------------

    def on_frame(self, cid: int, client: Client, frame: dict[str, Any]) -> None:
        """The model takes in one frame that ``cid`` got."""

    def on_gone(self, cid: int, client: Client) -> None:
        """Client ``cid`` is gone (it left, or the server closed it)."""

    def check_stats(self, stats: dict[str, Any]) -> None:
        """``/stats`` agrees with the model."""

    # -- checks ----------------------------------------------------------------------------

    @invariant()
    def check_app(self) -> None:
        assert self.app.failures == [], self.app.failures
        assert self.app.errors == [], [record.getMessage() for record in self.app.errors]
        stats = self.stats()
        # A client that stopped reading may be closed by the server without knowing it yet.
        sure = [c for c in self.clients.values() if c.open and not c.socket.paused]
        assert len(sure) <= stats["connections"] <= len(self.clients), stats
        if len(sure) == len(self.clients):
            assert stats["connections"] == len(sure), stats
        self.check_stats(stats)

    def everyone_leaves(self) -> None:
        for cid in sorted(self.clients):
            self.disconnect(cid, 1006)
        # Past every timer: the reconnect grace, pair requests, the owner's hold (1 h), queued
        # upstream messages, chunk sources (1 h) and the cache (30 min), rendezvous (48 h).
        for _ in range(3):
            self.jump(24 * 3600.0)
        self.check_app()
        stats = self.stats()
        left = {
            (section, name): value
            for section, figures in stats.items()
            if isinstance(figures, dict)
            for name, value in figures.items()
            if value and (section, name) not in COUNTERS and section not in self.DURABLE
        }
        assert left == {}, left
        assert stats["connections"] == 0, stats
        assert self.tasks_living() == self.tasks_at_start

    def teardown(self) -> None:
        try:
            self.everyone_leaves()
        finally:
            self.bridge.stop_app(self.app)
        assert self.app.failures == [], self.app.failures


class HostileClients(AppMachine):
    """The rules of misbehaving WebSocket clients, shared by the endpoint machines: floods,
    clients that stop reading (and read again later), and clients that leave with or without a
    close frame."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # Set while clients take frames that waited for them: what those frames name may have
        # changed since they were sent (a subclass's checks may skip them).
        self.catching_up = False

    @rule(client=clients, extra=st.integers(min_value=0, max_value=80), now=st.integers(0, 3))
    def flood(self, client: int, extra: int, now: int) -> None:
        """A burst past the rate limit: 200 frames pass, then every frame is refused, and more
        than 50 refusals close the connection with 1008. (One draw in four: a flood leaves the
        client refused until time passes.)"""
        cid = self.pick(client)
        if cid is None or now:
            return
        paused = self.clients[cid].socket.paused
        self.send(cid, *[json.dumps({"type": "ping"})] * (200 + extra))
        if extra > 50 and not paused:
            assert cid not in self.clients, "a flood past 50 refusals was not closed"

    @rule(client=clients)
    def stop_reading(self, client: int) -> None:
        cid = self.pick(client)
        if cid is not None:
            self.bridge.do(self.clients[cid].socket.pause)

    @rule()
    def read_again(self) -> None:
        for client in self.clients.values():
            self.bridge.do(client.socket.resume)
        self.catching_up = True
        try:
            self.collect()
        finally:
            self.catching_up = False

    @rule(client=clients, code=st.sampled_from([1000, 1001, 1006]))
    def leave(self, client: int, code: int) -> None:
        cid = self.pick(client)
        if cid is not None:
            self.disconnect(cid, code)


async def drive(
    machine: type[AppMachine],
    clock: trio.testing.MockClock,
    base: Path,
    run_settings: settings,
) -> None:
    """Run ``machine``'s examples in a worker thread, each against a fresh app in this trio
    run (whose clock must be ``clock``, a ``MockClock`` that does not jump by itself)."""
    async with trio.open_nursery() as nursery:
        bridge = Bridge(clock, nursery)
        run = functools.partial(
            run_state_machine_as_test, lambda: machine(bridge, base), settings=run_settings
        )
        await trio.to_thread.run_sync(run)
        nursery.cancel_scope.cancel()
