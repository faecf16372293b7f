"""The client's IP behind a proxy (docs/operations.md, "Behind a TLS-terminating proxy"): the
``TRUST_PROXY`` header is believed only from ``TRUSTED_PROXIES``, so a client that sends it
itself cannot pick its own address, nor step past the per-IP caps; IPv6 clients are counted by
their /64."""

from __future__ import annotations

import ipaddress

import attrs
import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration._raw import RawClient, port_of
from zajel.config import Config

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


async def connect_all(port: int, forwarded: list[str]) -> tuple[list[RawClient], list[int]]:
    """One WebSocket per ``X-Forwarded-For`` value; the indexes the server refused."""
    clients, refused = [], []
    for index, value in enumerate(forwarded):
        try:
            clients.append(await RawClient.connect(port, headers={"X-Forwarded-For": value}))
        except AssertionError:
            refused.append(index)
    return clients, refused


async def test_a_header_from_an_untrusted_peer_cannot_step_past_the_per_ip_cap(nursery):
    # The header is trusted, but only from 10.0.0.0/8: the test's own 127.0.0.1 is a client.
    config = Config.from_env(
        {
            "ZAJEL_TRUST_PROXY": "X-Forwarded-For",
            "ZAJEL_TRUSTED_PROXIES": "10.0.0.0/8",
            "ZAJEL_WS_MAX_CONNECTIONS_PER_IP": "5",
        }
    )
    running = await start_server(nursery, attrs.evolve(config, port=0, ws_idle_timeout=86_400.0))
    with trio.fail_after(20):
        spoofed = [f"198.51.100.{n}" for n in range(8)]
        clients, refused = await connect_all(port_of(running.url), spoofed)
        assert refused == [5, 6, 7]  # all counted as 127.0.0.1
        for client in clients:
            await client.hang_up()
    running.stop.set()


@pytest.mark.parametrize(
    ("forwarded", "refused"),
    [
        ([f"198.51.100.{n}" for n in range(8)], []),  # eight clients behind the proxy
        (["198.51.100.7"] * 8, [5, 6, 7]),  # one client, eight connections
        (["6.6.6.6, 198.51.100.7"] * 3 + ["7.7.7.7, 198.51.100.7"] * 5, [5, 6, 7]),
        ([f"2001:db8:0:1::{n}" for n in range(1, 9)], [5, 6, 7]),  # one /64
        ([f"2001:db8:0:{n}::1" for n in range(1, 9)], []),  # eight /64s
    ],
)
async def test_a_trusted_proxy_names_its_clients(nursery, forwarded, refused):
    running = await start_server(
        nursery,
        make_config(
            trust_proxy="X-Forwarded-For",
            trusted_proxies=LOOPBACK,
            ws_max_connections_per_ip=5,
            ws_idle_timeout=86_400.0,
        ),
    )
    with trio.fail_after(20):
        clients, were_refused = await connect_all(port_of(running.url), forwarded)
        assert were_refused == refused
        for client in clients:
            await client.hang_up()
    running.stop.set()
