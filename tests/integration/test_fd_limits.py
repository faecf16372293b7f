"""File descriptors (docs/operations.md, "File descriptors"): ``zajel serve`` raises its soft
limit towards the hard one and says in one line when that is still below what its connection
caps need; running out of descriptors on accept is one rate-limited line in the log format, and
the server goes on serving the connections it has."""

from __future__ import annotations

import re

import trio

from tests.integration._process import zajel_serve
from tests.integration._raw import RawClient, port_of
from tests.integration.test_http_connections import raise_own_fd_limit

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ [\w.]+: ")


def soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files limit")


async def test_the_soft_limit_is_raised_and_a_low_one_is_one_warning(tmp_path):
    with trio.fail_after(30):
        async with zajel_serve(tmp_path, fd_limits=(256, 4096)) as (process, _):
            assert soft_limit(process.pid) == 4096
    warnings = [
        line
        for line in (tmp_path / "stderr.log").read_text().splitlines()
        if "file descriptor limit" in line
    ]
    # 4096 is below the 10,000 WebSockets of the default cap (and some headroom).
    assert len(warnings) == 1
    assert LOG_LINE.match(warnings[0])
    assert "WARNING zajel.server" in warnings[0]
    assert "limit=4096" in warnings[0]
    assert "need=11024" in warnings[0]


async def test_a_high_enough_limit_is_not_a_warning(tmp_path):
    env = {"ZAJEL_WS_MAX_CONNECTIONS": "100"}
    with trio.fail_after(30):
        async with zajel_serve(tmp_path, env=env, fd_limits=(256, 4096)) as (process, _):
            assert soft_limit(process.pid) == 4096
    assert "file descriptor limit" not in (tmp_path / "stderr.log").read_text()


async def test_running_out_of_descriptors_is_one_line_and_the_server_goes_on(tmp_path):
    assert raise_own_fd_limit(400) >= 300
    env = {"ZAJEL_WS_MAX_CONNECTIONS_PER_IP": "1000"}
    clients: list[RawClient] = []
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=env, fd_limits=(64, 64)) as (_, url):
            port = port_of(url)
            try:
                # Open WebSockets until the server cannot take more.
                for _ in range(150):
                    with trio.move_on_after(0.5) as refused:
                        clients.append(await RawClient.connect(port))
                    if refused.cancelled_caught:
                        break
                else:
                    raise AssertionError("never ran out of descriptors")
                await trio.sleep(1.5)  # the accept loop keeps failing meanwhile
                # Those it has are still served.
                await clients[0].send({"type": "ping"})
                assert await clients[0].receive() == {"type": "pong"}
            finally:
                for client in clients:
                    client.stream.socket.close()
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "cannot accept" in line]
    assert len(lines) == 1, lines  # at most one a 10 s
    assert LOG_LINE.match(lines[0])
    assert "WARNING zajel.transport" in lines[0]
    assert "error=EMFILE" in lines[0]
    assert all(LOG_LINE.match(line) for line in log.splitlines())
