"""The connection table of ``zajel serve``'s accept loop (zajel/web/transport.py): the per-IP
HTTP cap, WebSockets leaving the HTTP count, trusted proxies, drop deadlines, and the
rate-limited accept warning."""

from __future__ import annotations

import errno
import ipaddress
import logging
import math

import trio

from tests.services.fakes import captured_log
from zajel.web.transport import AcceptWarnings, ConnectionTable, bound_url, open_listener


def peer(n: int, ip: str = "192.0.2.1") -> tuple[str, int]:
    return (ip, 40_000 + n)


def test_http_connections_are_capped_per_address():
    table = ConnectionTable(max_http_per_ip=3)
    conns = [table.open(peer(n)) for n in range(3)]
    assert all(conns)
    assert table.open(peer(9)) is None
    assert len(table) == 3  # a refused connection is not held
    assert table.open(peer(0, "192.0.2.2")) is not None  # another address
    assert len(table) == 4
    assert table.sizes() == {"connections": 4, "http_keys": 2}


def test_ipv6_peers_are_counted_by_their_64():
    table = ConnectionTable(max_http_per_ip=2)
    assert table.open(("2001:db8:0:1::1", 1))
    assert table.open(("2001:db8:0:1::2", 1))
    assert table.open(("2001:db8:0:1:ffff::3", 1)) is None
    assert table.open(("2001:db8:0:2::1", 1))


def test_a_websocket_leaves_the_http_count():
    table = ConnectionTable(max_http_per_ip=2)
    first, second = table.open(peer(0)), table.open(peer(1))
    assert first is not None
    assert second is not None
    table.mark_websocket(first)
    table.mark_websocket(first)  # once only: the slot is given back once
    assert table.open(peer(2)) is not None
    assert table.open(peer(3)) is None  # second and peer(2) hold the two slots
    table.close(first)  # a WebSocket closing gives back no HTTP slot
    assert table.open(peer(4)) is None
    assert len(table) == 2


def test_closing_every_connection_leaves_nothing():
    table = ConnectionTable(max_http_per_ip=5)
    conns = [table.open(peer(n, f"192.0.2.{n % 3}")) for n in range(9)]
    for conn in conns:
        assert conn is not None
        table.close(conn)
    assert len(table) == 0
    assert table.sizes() == {"connections": 0, "http_keys": 0}


def test_trusted_proxies_are_not_capped():
    table = ConnectionTable(max_http_per_ip=1, trusted_proxies=[ipaddress.ip_network("10.0.0.0/8")])
    assert all(table.open(peer(n, "10.1.2.3")) for n in range(10))
    assert table.open(peer(0, "192.0.2.1"))
    assert table.open(peer(1, "192.0.2.1")) is None


def test_a_connection_is_found_by_its_asgi_client_address():
    table = ConnectionTable(max_http_per_ip=5)
    conn = table.open(("192.0.2.1", 5555))
    assert table.find(["192.0.2.1", 5555]) is conn
    assert table.find(("192.0.2.1", 5556)) is None
    assert table.find(None) is None
    assert table.find(()) is None


async def test_drop_deadlines_fire_on_trio_time(autojump_clock):
    table = ConnectionTable(max_http_per_ip=5)
    conn = table.open(peer(0))
    assert conn is not None
    conn.drop_after(3)
    conn.drop_after(10)  # a later deadline never postpones an earlier one
    await trio.sleep(2.9)
    table.check_deadlines(trio.current_time())
    assert not conn.scope.cancel_called
    await trio.sleep(0.2)
    table.check_deadlines(trio.current_time())
    assert conn.scope.cancel_called
    assert conn.drop_at == -math.inf


async def test_the_accept_warning_is_one_line_per_ten_seconds(autojump_clock):
    warnings = AcceptWarnings()
    error = OSError(errno.EMFILE, "Too many open files")
    with captured_log("zajel.transport") as records:
        for _ in range(100):  # every 0.1 s for 10 s
            warnings.failed(error, trio.current_time())
            await trio.sleep(0.1)
        await trio.sleep(0.05)  # 10 s after the first warning
        warnings.failed(error, trio.current_time())
    assert [record.levelno for record in records] == [logging.WARNING] * 2
    assert records[0].context == {  # type: ignore[attr-defined]
        "error": "EMFILE",
        "suppressed": 0,
        "hint": "raise the file descriptor limit (LimitNOFILE)",
    }
    assert records[1].context["suppressed"] >= 98  # type: ignore[attr-defined]


class _Bound:
    """What ``bound_url`` reads of a listener: its socket's address."""

    def __init__(self, *address: object) -> None:
        self.socket = self
        self._address = address

    def getsockname(self) -> tuple[object, ...]:
        return self._address


async def test_the_listener_binds_the_configured_address_and_reports_its_url():
    listener = open_listener("localhost", 0, 8)  # a host name is resolved
    async with listener:
        host, port = listener.socket.getsockname()[:2]
        assert port > 0
        assert bound_url(listener) == f"http://{host}:{port}"
    assert bound_url(_Bound("::1", 8080, 0, 0)) == "http://[::1]:8080"  # type: ignore[arg-type]
    assert bound_url(_Bound("127.0.0.1", 9000)) == "http://127.0.0.1:9000"  # type: ignore[arg-type]
