"""A full inbox sheds load (docs/operations.md, "Limits and back-pressure"): when a service
stops keeping up, the frames and requests its inbox has no room for are refused after a
bounded wait, on WebSockets with ``{"type":"error","code":"busy"}`` and over HTTP with 503 and
``Retry-After``; nothing is queued past the inbox, no request hangs, ``/health`` says which part
is failing, and everything is served again once the service catches up.

The real server runs in process with tiny inboxes and a short wait; the signaling room is
stalled on one message (``PausableInbox``), the server registry on a commit that hangs
(``StallingStore``)."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.fault._stalls import StallingStore, stall_service, use_store
from tests.integration import _http
from tests.integration._signal import assert_quiet, error, open_socket
from tests.integration.test_servers_durability import body
from tests.services.fakes import captured_log
from zajel.services import _mailbox, _runtime
from zajel.web import sockets

INBOX = 2
BUSY_WAIT_S = 0.1
BUSY = error("busy", "Server busy, try again")
PONG = {"type": "pong"}


@pytest.fixture(autouse=True)
def _small_inboxes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "INBOX_SIZE", INBOX)
    monkeypatch.setattr(_mailbox, "BUSY_WAIT_S", BUSY_WAIT_S)
    monkeypatch.setattr(sockets, "_busy_log", sockets._BusyLog())


@pytest.mark.parametrize("transport", ["fast", "hypercorn"])
async def test_a_full_inbox_answers_busy_on_websockets_and_serves_again(
    nursery, monkeypatch, transport
):
    stall = stall_service(monkeypatch, "signaling")
    running = await start_server(
        nursery, make_config(ws_transport=transport, ws_idle_timeout=86_400.0)
    )
    url = running.url
    with (
        trio.fail_after(10),
        captured_log("zajel.web") as records,
    ):
        async with open_socket(url) as a, open_socket(url) as b:
            await a.register("AAAAAA")
            await b.register("BBBBBB")

            stall.pause()
            for _ in range(6):
                await a.send({"type": "ping"})
            # One ping is on the stuck service, INBOX wait in its inbox; the rest are refused,
            # each after BUSY_WAIT_S, while nothing is answered.
            start = trio.current_time()
            assert [await a.receive() for _ in range(6 - 1 - INBOX)] == [BUSY] * 3
            await b.send({"type": "ping"})
            assert await b.receive() == BUSY
            assert trio.current_time() - start < 10 * BUSY_WAIT_S
            health = await _http.get(url, "/health")
            assert health.status == 503
            assert health.json()["failing"] == ["signaling"]

            stall.resume()
            # What was taken in is served, in order, and nothing more: a ping refused with
            # busy was not done.
            assert [await a.receive() for _ in range(1 + INBOX)] == [PONG] * 3
            await assert_quiet(a, b)
            assert (await _http.get(url, "/health")).status == 200
    busy_lines = [r for r in records if r.getMessage() == "service busy: frames refused"]
    assert len(busy_lines) == 1  # one line for the run, not one per refused frame
    assert busy_lines[0].context == {"refused": 1}  # refused since the last line, this one too


async def test_a_full_inbox_answers_503_with_retry_after_over_http_and_serves_again(
    nursery, monkeypatch
):
    store = StallingStore()
    use_store(monkeypatch, store)
    running = await start_server(nursery, make_config())
    url = running.url
    statuses: dict[str, int] = {}
    refused = trio.Event()  # set once every request the inbox has no room for is answered

    async def register(index: int) -> None:
        response = await _http.post(url, "/servers", body(index))
        statuses[f"vps-{index}"] = response.status
        if response.status == 503:
            assert response.json() == {"error": "Server busy, try again"}
            assert response.headers["retry-after"] == "1"
            if len(statuses) == 6 - INBOX:
                refused.set()
        else:
            assert response.status == 200, response.body

    with trio.fail_after(10):
        store.stall()
        async with trio.open_nursery() as writers:
            writers.start_soon(register, 0)
            await store.stuck.wait()  # the registry sits on this commit
            for index in range(1, 7):
                writers.start_soon(register, index)
            await refused.wait()  # the refusals come back while the disk hangs
            assert list(statuses.values()) == [503] * (6 - INBOX)
            reads = await _http.get(url, "/servers")
            assert reads.status == 503
            assert reads.headers["retry-after"] == "1"
            health = await _http.get(url, "/health")
            assert health.status == 503
            assert health.json()["failing"] == ["servers", "store"]
            store.release()
        accepted = {server_id for server_id, status in statuses.items() if status == 200}
        assert len(accepted) == 1 + INBOX
        assert "vps-0" in accepted
        # Only what got its 200 was done; the refused requests left nothing behind.
        assert set(store.servers) == accepted

        for server_id, status in statuses.items():
            if status == 503:
                index = int(server_id.removeprefix("vps-"))
                assert (await _http.post(url, "/servers", body(index))).status == 200
        assert len(store.servers) == 7
        assert (await _http.get(url, "/health")).status == 200
