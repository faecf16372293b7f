"""Which connections ``zajel serve``'s own WebSocket transport (zajel/web/fastws.py) takes: a
WebSocket handshake on an endpoint path; everything else goes to hypercorn on the same port.
Bad input on the transport is in test_fast_bad_input.py; the flows run on both transports
through the ``server`` fixture."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._raw import handshake, port_of, read_reply
from zajel.web.fastws import is_endpoint_handshake

PATHS = ("/signal", "/relay")


@pytest.mark.parametrize(
    ("request_head", "ours"),
    [
        (handshake("/signal"), True),
        (handshake("/relay/x?y=1"), True),
        (handshake("/signalx"), False),
        (handshake("/health"), False),
        (handshake("/signal", upgrade=None), False),
        (handshake("/signal").replace(b"GET", b"POST"), False),
        (handshake("/signal")[:-4], False),  # the head is not complete
        (b"\x16\x03\x01\x00", False),  # a TLS hello
    ],
)
def test_which_requests_the_transport_takes(request_head, ours):
    assert is_endpoint_handshake(request_head, PATHS) is ours


@pytest.fixture
async def fast(nursery):
    running = await start_server(nursery, make_config(ws_transport="fast"))
    yield running
    running.stop.set()


async def test_http_shares_the_port(fast):
    with trio.fail_after(10):
        response = await _http.get(fast.url, "/health")
    assert response.status == 200


async def test_a_handshake_on_an_unknown_path_goes_to_hypercorn_and_is_404(fast):
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(fast.url))
        async with stream:
            await stream.send_all(handshake("/nope"))
            reply = await read_reply(stream)
    assert reply.status == 404
    assert reply.body == b'{"error":"Not Found"}'
