"""SIGTERM under load (docs/operations.md, "Stopping"): a real ``zajel serve`` stopped while
matched pairs relay offers and answers as fast as they can and HTTP writes and reads are in
flight closes every WebSocket with 1001, answers or closes every HTTP request (none hangs),
and exits 0 well within the grace time, with every write it acknowledged kept.

``tests/integration/test_shutdown.py`` stops idle clients and clients that do not read; here
the signal lands in the middle of traffic."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio
import trio_websocket

from tests.integration import _http
from tests.integration._process import zajel_serve
from tests.integration._signal import open_socket, pair, read_until_closed
from tests.integration.test_servers_durability import ENV as SERVERS_ENV
from tests.integration.test_servers_durability import body, listed
from zajel.server import GRACEFUL_TIMEOUT_S

PAIRS = 4
HTTP_CLIENTS = 4
ROUNDS = 2000  # the most each loop runs; the signal comes long before
SIGNAL_AFTER = 200  # relayed round trips before the signal
HTTP_ERRORS = (OSError, ConnectionError, trio.BrokenResourceError)


class Load:
    def __init__(self) -> None:
        self.round_trips = 0
        self.started = trio.Event()
        self.http_answers: list[int] = []
        self.http_cut = 0
        self.acked: dict[str, int] = {}  # serverId -> the highest acknowledged counter

    def round_trip(self) -> None:
        self.round_trips += 1
        if self.round_trips >= SIGNAL_AFTER:
            self.started.set()


async def relay(a: Any, b: Any, code_a: str, code_b: str, load: Load) -> None:
    """Offer from ``a``, answer from ``b``, until the server closes them."""
    with pytest.raises(trio_websocket.ConnectionClosed):  # noqa: PT012 - the loop ends so
        for _ in range(ROUNDS):
            await a.signal("offer", code_b, {"sdp": "o" * 500})
            assert (await b.receive())["type"] == "offer"
            await b.signal("answer", code_a, {"sdp": "a" * 500})
            assert (await a.receive())["type"] == "answer"
            load.round_trip()


async def http_load(url: str, client: int, load: Load) -> None:
    """Heartbeats with a growing counter and ``/stats`` reads, until the server is gone."""
    server_id = f"vps-{client}"
    try:
        for index in range(1, ROUNDS):
            beat = {"serverId": server_id, "connections": index}
            response = await _http.post(url, "/servers/heartbeat", beat)
            load.http_answers.append(response.status)
            if response.status != 200:
                return
            load.acked[server_id] = index
            response = await _http.get(url, "/stats")
            load.http_answers.append(response.status)
    except HTTP_ERRORS:
        load.http_cut += 1  # refused or closed by the stopping server: no answer, no hang


@pytest.mark.parametrize("transport", ["fast", "hypercorn"])
async def test_sigterm_under_load_drains_and_exits_0_within_the_grace_time(tmp_path, transport):
    env = {**SERVERS_ENV, "ZAJEL_WS_TRANSPORT": transport}
    load = Load()
    codes = [(f"AAAAA{n}", f"BBBBB{n}") for n in "23456789"[:PAIRS]]
    with trio.fail_after(30):
        async with zajel_serve(tmp_path, env=env) as (process, url):
            for client in range(HTTP_CLIENTS):
                assert (await _http.post(url, "/servers", body(client))).status == 200
            async with trio.open_nursery() as clients:
                sockets = []
                for code_a, code_b in codes:
                    a = await clients.start(_client, url, code_a)
                    b = await clients.start(_client, url, code_b)
                    await pair(a, b)
                    sockets += [a, b]
                async with trio.open_nursery() as traffic:
                    for (code_a, code_b), index in zip(codes, range(0, 2 * PAIRS, 2), strict=True):
                        a, b = sockets[index], sockets[index + 1]
                        traffic.start_soon(relay, a, b, code_a, code_b, load)
                    for client in range(HTTP_CLIENTS):
                        traffic.start_soon(http_load, url, client, load)
                    await load.started.wait()
                    start = trio.current_time()
                    process.send_signal(signal.SIGTERM)
                    # The grace time (5 s) bounds what still runs; a drain under this load
                    # needs a fraction of it.
                    with trio.fail_after(GRACEFUL_TIMEOUT_S):
                        assert await process.wait() == 0
                    stopped_in = trio.current_time() - start
                for socket in sockets:
                    frames, code = await read_until_closed(socket)
                    assert code == 1001
                    assert {frame["type"] for frame in frames} <= {"offer", "answer", "peer_left"}
                clients.cancel_scope.cancel()

        # Nothing held the drain: it did not need the grace time at all.
        assert stopped_in < GRACEFUL_TIMEOUT_S / 2
        assert load.http_cut == HTTP_CLIENTS  # every HTTP loop ran until the server went away
        assert set(load.http_answers) == {200}  # an answered request was answered in full
        logs = (tmp_path / "stderr.log").read_text()
        assert "shutting down" in logs
        assert "stopped" in logs
        assert "shutdown is stuck" not in logs
        assert "Traceback" not in logs

        async with zajel_serve(tmp_path, env=env) as (_, url):
            servers = await listed(url)
    for server_id, counter in load.acked.items():
        assert servers[server_id]["connections"] >= counter


async def _client(url: str, code: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A registered ``/signal`` client, open until its nursery is cancelled."""
    async with open_socket(url, message_queue_size=4) as client:
        await client.register(code)
        task_status.started(client)
        await trio.sleep_forever()
