"""The real command (operations.md, Deployment and Configuration): `zajel serve` stops cleanly on
SIGTERM and SIGINT, closing every WebSocket with 1001 and exiting 0; invalid configuration stops
it at start with one clear line naming the setting."""

from __future__ import annotations

import signal
import sys

import pytest
import trio

from tests.integration._process import clean_environment, zajel_serve
from tests.integration._signal import open_socket, pair, read_until_closed


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_closes_websockets_with_1001_and_exits_0(tmp_path, signum):
    with trio.fail_after(30):
        async with (
            zajel_serve(tmp_path) as (process, url),
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
            # The grace time is 5 s (operations.md, Deployment); allow a little more.
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
