"""The real command (docs/operations.md, "Stopping"): `zajel serve` stops cleanly on
SIGTERM and SIGINT, closing every WebSocket with 1001 and exiting 0; invalid configuration stops
it at start with one clear line naming the setting."""

from __future__ import annotations

import signal
import sys

import pytest
import trio

from tests.integration._process import clean_environment, zajel_serve
from tests.integration._raw import paired_sink, port_of
from tests.integration._signal import open_socket, pair, read_until_closed

TRANSPORTS = ["hypercorn", "fast"]  # ZAJEL_WS_TRANSPORT: every WebSocket stack of zajel serve


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_closes_websockets_with_1001_and_exits_0(tmp_path, signum, transport):
    with trio.fail_after(30):
        async with (
            zajel_serve(tmp_path, env={"ZAJEL_WS_TRANSPORT": transport}) as (process, url),
            open_socket(url) as a,
            open_socket(url) as b,
            open_socket(url) as idle,
        ):
            await a.register("AAAAAA")
            await b.register("BBBBBB")
            await pair(a, b)
            await idle.send({"type": "ping"})
            assert await idle.receive() == {"type": "pong"}

            process.send_signal(signum)
            with trio.fail_after(2):
                for client in (a, b, idle):
                    frames, close_code = await read_until_closed(client)
                    assert close_code == 1001
                    # A partner may hear that the other side left before its own close.
                    assert all(frame["type"] == "peer_left" for frame in frames), frames
            # The grace time is 5 s (docs/operations.md, "Stopping"); allow a little more.
            with trio.fail_after(8):
                assert await process.wait() == 0


async def test_an_invalid_setting_exits_2_with_one_line_naming_it(tmp_path):
    # No --port flag: flags win over the environment.
    with trio.fail_after(10):
        finished = await trio.run_process(
            [sys.executable, "-m", "zajel", "serve"],
            cwd=tmp_path,
            env={**clean_environment(), "ZAJEL_PORT": "abc"},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert finished.returncode == 2
    assert finished.stdout == b""
    lines = finished.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "ZAJEL_PORT" in lines[0]
    assert "Traceback" not in lines[0]


async def test_a_port_in_use_exits_2_with_one_line_naming_it(tmp_path):
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(10):
            finished = await trio.run_process(
                [sys.executable, "-m", "zajel", "serve", "--port", str(port)],
                cwd=tmp_path,
                env=clean_environment(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert finished.returncode == 2
    lines = finished.stderr.decode().splitlines()
    assert lines[-1] == (
        f"zajel: cannot listen on 127.0.0.1:{port} (ZAJEL_HOST/ZAJEL_PORT): Address already in use"
    )
    assert "Traceback" not in finished.stderr.decode()


async def test_a_shutdown_soon_after_a_close_does_not_wait_the_grace_time(tmp_path):
    """A closed WebSocket used to leave hypercorn's ping loop sleeping on, and every shutdown
    waited the full grace time (5 s) for it."""
    with trio.fail_after(30):
        async with zajel_serve(tmp_path) as (process, url):
            for _ in range(3):
                async with open_socket(url) as client:
                    await client.register("AAAAAA")
            start = trio.current_time()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            assert trio.current_time() - start < 3


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("sinks", "offers_each"), [(1, 150), (5, 40)], ids=["one", "five"])
async def test_clients_that_do_not_read_cannot_hold_the_shutdown(
    tmp_path, transport, sinks, offers_each
):
    """Their partner fills their sockets with offers (30 MB, or 8 MB each of five: far more than
    the sockets' buffers hold) until the server's writes to them block; the slow-consumer rule
    is set far away, so only the shutdown can end them, and the process still exits 0 within
    the grace time (hypercorn's writes are shielded: this used to hang for ever)."""
    env = {
        "ZAJEL_WS_SLOW_CONSUMER_MS": "3600000",
        "ZAJEL_WS_OUTBOUND_BYTES": str(1 << 30),
        "ZAJEL_WS_OUTBOUND_QUEUE": "100000",
        "ZAJEL_WS_TRANSPORT": transport,
    }
    offer = {"sdp": "o" * 200_000}
    codes = ["SSSSS" + letter for letter in "ABCDE"[:sinks]]
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=env) as (process, url), open_socket(url) as a:
            await a.register("AAAAAA")
            clients = [await paired_sink(port_of(url), a, "AAAAAA", code) for code in codes]
            for _ in range(offers_each):
                for code in codes:
                    await a.signal("offer", code, offer)
            await a.ping()  # every offer has been taken in and queued
            start = trio.current_time()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            # The grace time is 5 s; the sinks' sockets are dropped when it ends.
            assert trio.current_time() - start < 8
            for client in clients:
                await client.hang_up()
