"""``zajel.asgi:app`` under hypercorn's own trio worker: the deployment that uses only
hypercorn's public interface (``hypercorn zajel.asgi:app --worker-class trio``).

In-process, the app runs under ``hypercorn.trio.serve`` with the settings of
``zajel.asgi.hypercorn_settings`` bound to 127.0.0.1:0 and spoken to over real sockets: HTTP,
a ``/signal`` pair, ``/relay`` chunk multicast, the contract's errors, the store opened for the
lifespan and closed after it. One test runs the real ``hypercorn`` command in a subprocess.
"""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import hypercorn.trio
import pytest
import trio
from hypercorn.config import Config as HypercornConfig

from tests.integration import _http
from tests.integration._process import clean_environment
from tests.integration._signal import (
    assert_quiet,
    error,
    expect,
    open_socket,
    read_until_closed,
    refused_handshake,
)
from tests.integration.test_relay_flow import relays
from zajel.asgi import AsgiApp, settings_for_hypercorn
from zajel.client import connect_signal, generate_public_key
from zajel.storage import StoreError, open_store

pytestmark = pytest.mark.usefixtures("restore_logging")  # the app configures zajel's logs

A, B = "AAAAAA", "BBBBBB"


def environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """``ZAJEL_*`` variables for a development server storing in ``data_dir``.

    The ping interval is short: under hypercorn a closed WebSocket's ping loop lives on until
    its next ping, and the shutdown waits for it (up to hypercorn's grace time).
    """
    return {
        "ZAJEL_ENV": "development",
        "ZAJEL_DATA_DIR": str(data_dir),
        "ZAJEL_LOG_LEVEL": "warning",
        "ZAJEL_WS_PING_INTERVAL": "0.2",
        **{f"ZAJEL_{name.upper()}": value for name, value in settings.items()},
    }


@asynccontextmanager
async def asgi_server(environ: dict[str, str]) -> AsyncIterator[str]:
    """``AsgiApp(environ)`` under ``hypercorn.trio.serve`` with ``hypercorn_settings`` on
    127.0.0.1:0; yields its URL and shuts it down (lifespan shutdown included) on exit."""
    config = HypercornConfig.from_object(settings_for_hypercorn(environ))
    config.bind = ["127.0.0.1:0"]
    config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        # hypercorn reports where it listens once the lifespan startup is complete.
        binds = await nursery.start(
            functools.partial(
                hypercorn.trio.serve, AsgiApp(environ), config, shutdown_trigger=stop.wait
            )
        )
        yield binds[0]
        stop.set()


async def test_http_routes_are_served(tmp_path):
    with trio.fail_after(10):
        async with asgi_server(environment(tmp_path)) as url:
            health = await _http.get(url, "/health")
            assert (health.status, health.json()["status"]) == (200, "ok")
            info = await _http.get(url, "/api/info")
            assert info.json()["endpoints"]["relay"] == "WebSocket /relay"
            missing = await _http.get(url, "/nowhere")
            assert (missing.status, missing.json()) == (404, {"error": "Not Found"})


async def test_a_signal_pair_is_matched_and_an_offer_relayed(tmp_path):
    key_a, key_b = generate_public_key(), generate_public_key()
    with trio.fail_after(10):
        async with (
            asgi_server(environment(tmp_path)) as url,
            connect_signal(url) as a,
            connect_signal(url) as b,
        ):
            assert (await a.register(A, key_a))["pairingCode"] == A
            assert (await b.register(B, key_b))["pairingCode"] == B
            await a.pair_request(B, "phone")
            assert (await b.expect("pair_incoming"))["fromCode"] == A
            await b.pair_response(A, True)
            await expect(
                a, {"type": "pair_matched", "peerCode": B, "peerPublicKey": key_b,
                    "isInitiator": True}
            )  # fmt: skip
            await expect(
                b, {"type": "pair_matched", "peerCode": A, "peerPublicKey": key_a,
                    "isInitiator": False}
            )  # fmt: skip
            offer = {"type": "offer", "sdp": "v=0\r\n"}
            await a.signal("offer", B, offer)
            await expect(b, {"type": "offer", "from": A, "payload": offer})
            await assert_quiet(a, b)


async def test_relay_chunks_are_pulled_once_and_pushed_to_every_requester(tmp_path):
    data = {"sealed": "c2VhbGVk", "n": [1, 2]}
    with trio.fail_after(10):
        async with (
            asgi_server(environment(tmp_path)) as url,
            relays(url, "source", "r1", "r2") as (source, *requesters),
        ):
            await source.send(
                {"type": "chunk_announce", "chunks": [{"chunkId": "c1", "routingHash": "h"}]}
            )
            await expect(source, {"type": "chunk_announce_ack", "registered": 1})
            for requester in requesters:
                await requester.send({"type": "chunk_request", "chunkId": "c1"})
            await expect(source, {"type": "chunk_pull", "chunkId": "c1"})
            await source.send({"type": "chunk_push", "chunkId": "c1", "data": data})
            await expect(source, {"type": "chunk_push_ack", "chunkId": "c1"})
            for requester in requesters:
                await expect(
                    requester,
                    {"type": "chunk_data", "chunkId": "c1", "data": data, "source": "relay"},
                )
            await assert_quiet(source, *requesters)


async def test_a_malformed_frame_gets_the_contracts_error_and_the_connection_goes_on(tmp_path):
    with trio.fail_after(10):
        async with asgi_server(environment(tmp_path)) as url, connect_signal(url) as client:
            await client.ws.send_message('{"type":"ping"')
            await expect(client, error("invalid_message", "Invalid message format"))
            await client.send({"type": "ping"})
            await expect(client, {"type": "pong"})


async def test_a_handshake_on_an_unknown_path_is_refused_404(tmp_path):
    with trio.fail_after(10):
        async with asgi_server(environment(tmp_path)) as url:
            refusal = await refused_handshake(url, "/nope")
    assert (refusal.status_code, refusal.body) == (404, b'{"error":"Not Found"}')


async def test_the_message_size_limit_comes_from_hypercorn_settings(tmp_path):
    with trio.fail_after(10):
        environ = environment(tmp_path, ws_max_message_bytes="2048")
        async with asgi_server(environ) as url, open_socket(url) as client:
            await client.ws.send_message('{"type":"ping","pad":"' + "p" * 1900 + '"}')
            await expect(client, {"type": "pong"})
            await client.ws.send_message("x" * 2049)
            assert await read_until_closed(client) == ([], 1009)


def test_hypercorn_settings_are_the_zajel_settings():
    settings = settings_for_hypercorn(
        {"ZAJEL_HOST": "::1", "ZAJEL_PORT": "9000", "ZAJEL_WS_PING_INTERVAL": "7",
         "ZAJEL_WS_IDLE_TIMEOUT": "40", "ZAJEL_WS_MAX_MESSAGE_BYTES": "4096"}
    )  # fmt: skip
    config = HypercornConfig.from_object(settings)
    assert (config.bind, config.worker_class) == (["[::1]:9000"], "trio")
    assert (config.websocket_ping_interval, config.read_timeout) == (7.0, 40.0)
    assert config.websocket_max_message_size == 4096
    assert config.graceful_timeout == 5.0


async def test_the_store_is_held_from_startup_to_shutdown(tmp_path):
    with trio.fail_after(10):
        async with asgi_server(environment(tmp_path)):
            with pytest.raises(StoreError, match="in use"):
                async with open_store(tmp_path):
                    pass
        async with open_store(tmp_path):  # closed (and its lock released) by the shutdown
            pass


async def test_a_configuration_error_fails_the_startup_with_its_reason(tmp_path):
    environ = environment(tmp_path, ws_max_connections="0")
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.errorlog = None
    with trio.fail_after(10), pytest.RaisesGroup(Exception, flatten_subgroups=True) as failed:
        await hypercorn.trio.serve(AsgiApp(environ), config, shutdown_trigger=trio.sleep_forever)
    assert "configuration error: ZAJEL_WS_MAX_CONNECTIONS" in str(failed.value.exceptions[0])


async def test_metrics_bind_serves_metrics_on_its_own_address(tmp_path):
    """docs/operations.md, "Metrics": ``ZAJEL_METRICS_BIND`` under the plain ASGI app too."""
    port = free_port()
    own = f"http://127.0.0.1:{port}"
    with trio.fail_after(10):
        async with asgi_server(environment(tmp_path, metrics_bind=f"127.0.0.1:{port}")) as url:
            assert (await _http.get(url, "/metrics")).status == 404
            scraped = await _http.get(own, "/metrics")
            assert scraped.status == 200
            assert b"zajel_up 1.0" in scraped.body
            assert (await _http.get(own, "/health")).status == 404
        with pytest.raises(OSError, match="connect"):  # the listener is closed with the app
            await _http.get(own, "/metrics")


async def test_a_metrics_bind_that_is_taken_fails_the_startup(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = environment(tmp_path, metrics_bind=f"127.0.0.1:{port}")
        config = HypercornConfig()
        config.bind = ["127.0.0.1:0"]
        config.errorlog = None
        with trio.fail_after(10), pytest.RaisesGroup(Exception, flatten_subgroups=True) as failed:
            await hypercorn.trio.serve(
                AsgiApp(environ), config, shutdown_trigger=trio.sleep_forever
            )
    assert f"cannot listen on 127.0.0.1:{port} (ZAJEL_METRICS_BIND)" in str(
        failed.value.exceptions[0]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_hypercorn_command_serves_the_app(tmp_path):
    """The documented command, as a process: HTTP and a WebSocket on one port, and SIGTERM
    stops it (the lifespan shutdown closes the store)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "hypercorn"),
        *("zajel.asgi:app", "--worker-class", "trio", "--bind", f"127.0.0.1:{port}"),
    ]
    env = {**clean_environment(), "ZAJEL_DATA_DIR": str(tmp_path / "data")}
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path, env=env
        )
        try:
            with trio.fail_after(20):
                while True:
                    try:
                        health = await _http.get(url, "/health")
                        break
                    except OSError:  # not listening yet
                        await trio.sleep(0.1)
                assert health.status == 200
                async with connect_signal(url) as client:
                    await client.send({"type": "ping"})
                    await expect(client, {"type": "pong"})
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
    log = (tmp_path / "stderr.log").read_text()
    assert "zajel.server: stopped" in log, log
    wal = tmp_path / "data" / "zajel.db-wal"  # folded into the database when the store closes
    assert not wal.exists() or wal.stat().st_size == 0
